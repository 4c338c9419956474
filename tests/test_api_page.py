"""The API page (book/api.md, Sphinx autodoc) documents every module of the package.

A module missing from the page is missing from the index and from the notation page's links, and a
docstring that refers to it breaks the strict book build (``-n``). Modules count once committed to git
(``git ls-files``), so work in progress does not fail the suite.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_API = {"mamo_lite.__main__", "mamo_lite.cli"}  # the command line: documented by its --help


def _tracked_modules() -> set[str]:
    try:
        files = subprocess.run(["git", "ls-files", "mamo_lite"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = {f.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for f in files if f.endswith(".py")}
    return names - NOT_API


def test_every_module_is_on_the_api_page() -> None:
    page = (ROOT / "book" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. (?:automodule|py:module):: (\S+)", page, flags=re.MULTILINE))
    modules = _tracked_modules()
    missing = modules - documented
    assert not missing, f"add these modules to book/api.md: {sorted(missing)}"
    unknown = documented - modules
    assert not unknown, f"book/api.md documents modules that do not exist: {sorted(unknown)}"
