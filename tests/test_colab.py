"""The Colab path, checked without Colab: the released package, its install cell, its data download.

* Every chapter's first cell (the Colab install cell) installs ``mamo-lite==<version>`` with
  pyproject's version and falls back to the repository named in ``_config.yml``; the package's
  ``__version__`` is pyproject's too (the version lives in one place).
* ``python -m build`` makes a wheel and an sdist, and ``twine check`` passes on both.
* **A Colab reader, played** (marked ``slow``): a fresh virtual environment *outside* the repository
  with Colab's preinstalled libraries (torch and the book's pins, no ``mamo_lite``); a fake
  ``google.colab`` module so that each chapter's first cell really runs ``pip install
  mamo-lite==<version>`` (from the freshly built wheel: ``PIP_FIND_LINKS``, no index); MovieLens
  served from 127.0.0.1 and fetched by the package's own download path (``ensure_files`` →
  ``download`` → sha256 check → extraction) into an empty cache; no Book-Crossing. Chapters 1 and 3
  run under papermill with ``PRESET="smoke"``, and chapter 1 once more with ``PRESET="book"``, which
  downloads MovieLens-1M and -100K from the local server and skips its Book-Crossing sections.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from functools import partial
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DATA = Path(os.environ.get("MAMO_LITE_DATA", "") or "/nonexistent")
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _repository_url() -> str:
    m = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.MULTILINE)
    assert m, "_config.yml names no repository url"
    return m.group(1)


def _first_code_cell(path: Path) -> str:
    return next(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_installs_the_released_version_then_the_repository(path: Path) -> None:
    src = _first_code_cell(path)
    assert "google.colab" in src
    m = re.search(r'^MAMO_LITE_VERSION = "([^"]+)"', src, re.MULTILINE)
    assert m and m.group(1) == VERSION, f"the install cell's version must be pyproject's {VERSION}"
    assert 'f"mamo-lite=={MAMO_LITE_VERSION}"' in src
    m = re.search(r'^REPO = "([^"]+)"', src, re.MULTILINE)
    assert m and m.group(1) == _repository_url(), "the fallback must be _config.yml's repository url"
    assert "git+{REPO}" in src and "GPU" in src


def test_package_version_is_pyprojects() -> None:
    import mamo_lite

    assert mamo_lite.__version__ == VERSION


# -- build, check, install as a Colab user ----------------------------------------------------------

@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], check=True,
                   capture_output=True, text=True, timeout=600)
    return out


@pytest.mark.slow
def test_build_makes_a_wheel_and_an_sdist_that_twine_accepts(dist: Path) -> None:
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"mamo_lite-{VERSION}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"mamo_lite-{VERSION}.tar.gz"]
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
    assert "mamo_lite/methods/memories.py" in names and not any(n.startswith(("tests/", "notebooks/")) for n in names)
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


# Imported by the fresh venv's interpreter at start-up (sitecustomize): plays Colab's google.colab module
# and points the registry's MovieLens sources at the local server, with the served files' checksums.
SITECUSTOMIZE = r'''
import importlib.abc, importlib.util, json, os, sys, types

if os.environ.get("MAMO_LITE_FAKE_COLAB"):
    google = sys.modules.setdefault("google", types.ModuleType("google"))
    google.colab = sys.modules["google.colab"] = types.ModuleType("google.colab")

_MIRROR = json.loads(os.environ.get("MAMO_LITE_TEST_MIRROR", "{}"))


def _patch(registry):
    import dataclasses
    for name, spec in list(registry.REGISTRY.items()):
        files = []
        for f in spec.files:
            m = _MIRROR.get(f.source.relpath)
            if m:
                f = dataclasses.replace(f, source=dataclasses.replace(
                    f.source, url=m["url"], sha256=m["sha256"], nbytes=m["nbytes"], md5=None))
            files.append(f)
        registry.REGISTRY[name] = dataclasses.replace(spec, files=tuple(files))


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "mamo_lite.data.registry":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            _patch(module)
        spec.loader.exec_module = exec_module
        return spec


if _MIRROR:
    sys.meta_path.insert(0, _Hook())
'''


def _zip(folder: Path, prefix: str, out: Path) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{prefix}/{f.name}")


def _colab_pins() -> list[str]:
    """What Colab has preinstalled, at the book's pins: the package's dependencies (torch, NumPy, pandas,
    tqdm, SciPy...) and the plotting stack, plus papermill to run the chapters. The package itself is not
    among them: the chapter's first cell installs it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ci_pins", ROOT / ".ci" / "pins.py")
    pins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pins)
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    keep = {Requirement(r).name for r in project["dependencies"]} | {"matplotlib", "seaborn", "ipykernel", "papermill"}
    return [p for p in pins.read_pins() if p.split("==")[0] in keep]


@pytest.mark.slow
def test_a_colab_reader_runs_chapters_1_and_3(dist: Path, tmp_path: Path) -> None:
    if not (DATA / "ml-1m" / "ratings.dat").is_file() or not (DATA / "ml-100k" / "u.data").is_file():
        why = "MovieLens raw files are needed to serve them locally: set MAMO_LITE_DATA"
        if IN_CI:
            pytest.fail(f"CI=true and {why}")
        pytest.skip(why)
    # The files a GroupLens mirror would serve, and their checksums.
    served = tmp_path / "served"
    served.mkdir()
    _zip(DATA / "ml-1m", "ml-1m", served / "ml-1m.zip")
    _zip(DATA / "ml-100k", "ml-100k", served / "ml-100k.zip")
    shutil.copy(DATA / "ml-1m-extra" / "movies_extrainfos.dat", served / "movies_extrainfos.dat")
    handler = partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                           {"log_message": lambda *a: None}), directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    mirror = {
        relpath: {"url": f"{base}/{name}", "sha256": hashlib.sha256((served / name).read_bytes()).hexdigest(),
                  "nbytes": (served / name).stat().st_size}
        for relpath, name in (("ml-1m/ml-1m.zip", "ml-1m.zip"), ("ml-100k/ml-100k.zip", "ml-100k.zip"),
                              ("ml-1m-extra/movies_extrainfos.dat", "movies_extrainfos.dat"))
    }
    try:
        # A fresh venv outside the repository, with Colab's libraries but no mamo_lite.
        venv = tmp_path / "colab-venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        py = str(venv / "bin" / "python")
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--progress-bar", "off", *_colab_pins()],
                       check=True, timeout=900, cwd=tmp_path)
        site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        Path(site, "sitecustomize.py").write_text(SITECUSTOMIZE)

        work = tmp_path / "work"
        work.mkdir()
        for nb in ("01_data_preparation", "03_maml_vs_mamo"):
            shutil.copy(ROOT / "notebooks" / f"{nb}.ipynb", work)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MAMO_LITE", "PYTHON", "VIRTUAL_ENV", "JUPYTER", "CI"))}
        env |= {
            "MAMO_LITE_FAKE_COLAB": "1",
            "MAMO_LITE_TEST_MIRROR": json.dumps(mirror),
            "MAMO_LITE_CACHE": str(tmp_path / "cache"),  # empty: everything is downloaded
            "PIP_FIND_LINKS": str(dist),  # `pip install mamo-lite==VERSION` finds the wheel just built
            "PIP_NO_INDEX": "1",
            "JUPYTER_DATA_DIR": str(tmp_path / "jupyter"),  # no kernel of this machine's user
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        }
        runs = [("01_data_preparation", "smoke"), ("03_maml_vs_mamo", "smoke"), ("01_data_preparation", "book")]
        for nb, preset in runs:
            out = work / f"{nb}-{preset}.out.ipynb"
            result = subprocess.run(
                [py, "-m", "papermill", f"{nb}.ipynb", out.name, "-k", "python3", "-p", "PRESET", preset,
                 "-p", "DEVICE", "cpu", "--no-progress-bar"],
                cwd=work, env=env, capture_output=True, text=True, timeout=900, check=False)
            assert result.returncode == 0, f"{nb} ({preset}) failed in the Colab venv:\n{result.stderr[-4000:]}"
            first = nbformat.read(out, as_version=4).cells
            text = "".join(o.get("text", "") for c in first if c.cell_type == "code" for o in c.outputs)
            assert f"mamo-lite {VERSION} installed" in text
        where = subprocess.run([py, "-c", "import mamo_lite; print(mamo_lite.__file__, mamo_lite.__version__)"],
                               env=env, cwd=work, check=True, capture_output=True, text=True).stdout
        assert where.startswith(site) and where.split()[-1] == VERSION, where
        text = "".join(o.get("text", "") for c in nbformat.read(work / "01_data_preparation-book.out.ipynb", 4).cells
                       if c.cell_type == "code" for o in c.outputs)
        assert "Book-Crossing: not on this machine, its sections are skipped" in text
        assert "release: subset; rating users: 2999" in text  # the served MovieLens-1M, downloaded and parsed
        cache = tmp_path / "cache"  # what the package downloaded and verified, and nothing of Book-Crossing
        assert (cache / "ml-1m" / "ml-1m.zip").is_file() and (cache / "ml-100k" / "ml-100k.zip").is_file()
        assert (cache / "ml-1m-extra" / "movies_extrainfos.dat").is_file() and not (cache / "book-crossing").exists()
    finally:
        server.shutdown()
        server.server_close()
