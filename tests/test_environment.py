"""The pins in environment.yml and the extras in pyproject.toml tell one story.

environment.yml's ``pip:`` block is what CI installs (``.ci/setup`` reads it with ``.ci/pins.py``);
pyproject's ``book`` and ``dev`` extras are the same toolchain for ``pip install -e ".[book,dev]"``.
The package's own dependencies stay loose lower bounds, so it installs next to Colab's torch.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
ENV_YML = ROOT / "environment.yml"


def _load_pins_module():
    spec = importlib.util.spec_from_file_location("ci_pins", ROOT / ".ci" / "pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENV_PINS = _load_pins_module().read_pins(ENV_YML)


def _pinned(lines: list[str]) -> dict[str, str]:
    """``{canonical name: version}`` for ``name==version`` lines; fails on any other form."""
    out: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{line!r} is not pinned with =="
        name = canonicalize_name(req.name)
        assert out.get(name, specs[0].version) == specs[0].version, f"{name} pinned twice, differently"
        out[name] = specs[0].version
    return out


def _env_pins() -> dict[str, str]:
    return _pinned([line for line in ENV_PINS if line != "-e ."])


def test_environment_installs_the_package_editable_last() -> None:
    """``-e .`` comes in the same pip command as the torch pin (toolchain.md §1), never alone."""
    assert ENV_PINS[-1] == "-e ."
    assert ENV_PINS.count("-e .") == 1
    assert "torch" in _env_pins()


def test_environment_uses_python_311_from_conda_forge() -> None:
    text = ENV_YML.read_text(encoding="utf-8")
    assert re.search(r"^channels:\s*\[conda-forge\]\s*$", text, flags=re.MULTILINE)
    assert re.search(r"^\s+-\s+python=3\.11\s*$", text, flags=re.MULTILINE)


def test_extras_pin_exactly_the_environment() -> None:
    """book ∪ dev extras == environment.yml pins minus torch, with the same versions."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) >= {"book", "dev"}
    pinned = _pinned(extras["book"] + extras["dev"])
    env = _env_pins()
    env.pop("torch")
    assert pinned == env


def test_jupyter_book_is_pinned_below_2() -> None:
    """jupyter-book 2.x ignores _config.yml/_toc.yml and needs the network (toolchain.md §3)."""
    assert Version(_env_pins()["jupyter-book"]).major == 1


def test_core_dependencies_are_loose_lower_bounds() -> None:
    """No ``==`` in the package itself: Colab keeps its own torch (house style, lesson 12)."""
    deps = {
        canonicalize_name(Requirement(d).name): Requirement(d) for d in PYPROJECT["project"]["dependencies"]
    }
    assert "torch" in deps
    for name, req in deps.items():
        ops = {s.operator for s in req.specifier}
        assert ops == {">="}, f"core dependency {name} should be a plain lower bound, got {req}"


def test_pins_satisfy_the_core_lower_bounds() -> None:
    env = _env_pins()
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        if name in env:
            assert req.specifier.contains(env[name]), f"pinned {name}=={env[name]} violates {dep}"


def test_torch_is_not_a_build_requirement() -> None:
    requires = [canonicalize_name(Requirement(r).name) for r in PYPROJECT["build-system"]["requires"]]
    assert "torch" not in requires


def test_python_version() -> None:
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert sys.version_info >= (3, 11)


@pytest.mark.parametrize("name", ["torch", "jupyter-book", "nbval", "pandas", "numpy"])
def test_installed_versions_match_the_pins(name: str) -> None:
    """The running venv is the pinned one (torch may carry a local tag such as ``+cpu``)."""
    from importlib.metadata import version

    assert Version(version(name)).public == Version(_env_pins()[name]).public


def test_package_imports_without_the_plotting_stack() -> None:
    """matplotlib/seaborn are only in the ``book`` extra, so ``mamo_lite.plots`` imports them lazily."""
    code = (
        "import sys, mamo_lite, mamo_lite.plots\n"
        "loaded = sorted(m for m in ('matplotlib', 'seaborn') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
