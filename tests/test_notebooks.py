"""Checks on the book's chapters (``notebooks/*.ipynb``); see ../shared/notes/toolchain.md §4-5.

nbval (``pytest --nbval``) replays every chapter with its default parameters and compares the outputs
with the committed ones. The tests here add what nbval cannot see:

* a papermill *smoke run* of every chapter with ``PRESET="smoke"`` and ``DEVICE="cpu"``;
* the committed notebook is executed (nbval silently skips cells with no ``execution_count``);
* the conventions every chapter follows: the ``python3`` kernel, a ``parameters`` cell, the Colab
  install cell first, and a place in ``_toc.yml``.

With no notebooks yet, every parametrised test is reported as skipped ("got empty parameter set").
The kernel inherits this process's environment, so ``MAMO_LITE_DATA`` reaches the chapters.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMOKE_PARAMS = {"PRESET": "smoke", "DEVICE": "cpu"}
REQUIRED_PARAMETERS = {"PRESET", "DEVICE", "SEED", "DATA_DIR"}
RAISES_TAGS = {"raises-exception", "nbval-raises-exception"}
# Output text that differs between checkouts and that the rendered book would show (toolchain.md §8.7).
LOCAL_PATH = re.compile(r"site-packages|/tmp/ipykernel_\d+|/home/[^/\s]+/|/Users/[^/\s]+/|/root/")

by_name = pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def _tags(cell: nbformat.NotebookNode) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def _parameter_names(nb: nbformat.NotebookNode) -> set[str]:
    """Names assigned in the cell tagged ``parameters`` (papermill's convention)."""
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in _tags(c)]
    assert len(cells) == 1, f"expected exactly one cell tagged 'parameters', found {len(cells)}"
    names: set[str] = set()
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _has_error(cell: nbformat.NotebookNode) -> bool:
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))


@pytest.mark.slow
@by_name
def test_notebook_runs_with_small_parameters(path: Path, tmp_path: Path) -> None:
    """The chapter runs top to bottom with the smoke preset on CPU (in its own folder, like nbval)."""
    declared = _parameter_names(_read(path))
    params = {k: v for k, v in SMOKE_PARAMS.items() if k in declared}
    out = tmp_path / path.name
    try:
        pm.execute_notebook(
            str(path),
            str(out),
            parameters=params,
            kernel_name="python3",
            cwd=str(path.parent),
            progress_bar=False,
            execution_timeout=600,
        )
    except pm.PapermillExecutionError:
        # papermill ignores the raises-exception tag; accept errors only from cells that carry it.
        failing = [c for c in _code_cells(_read(out)) if _has_error(c)]
        if not failing or any(not (_tags(c) & RAISES_TAGS) for c in failing):
            raise


@by_name
def test_notebook_outputs_are_committed(path: Path) -> None:
    """Every code cell was executed (nbval compares nothing in a cell without ``execution_count``)."""
    code = _code_cells(_read(path))
    assert code, "notebook has no code cells"
    unexecuted = [i for i, c in enumerate(code) if c.execution_count is None]
    assert not unexecuted, (
        f"code cells {unexecuted} (0-based) have no execution_count: commit the executed notebook"
    )
    assert any(c.outputs for c in code), "no code cell has outputs: commit the executed notebook"


@by_name
def test_only_tagged_cells_show_errors(path: Path) -> None:
    """A committed error output is only allowed in a cell tagged ``raises-exception``."""
    bad = [
        i for i, c in enumerate(_code_cells(_read(path))) if _has_error(c) and not (_tags(c) & RAISES_TAGS)
    ]
    assert not bad, f"code cells {bad} (0-based) have error outputs but no 'raises-exception' tag"


@by_name
def test_outputs_show_no_local_paths(path: Path) -> None:
    """Committed outputs (tracebacks included, which the book shows) contain no machine-specific paths.

    For an expected error, ``%xmode Minimal`` keeps the venv's path out of the traceback.
    """
    for i, cell in enumerate(_code_cells(_read(path))):
        texts = [
            {k: v for k, v in out.items() if k != "data"}
            | {mime: v for mime, v in out.get("data", {}).items() if not mime.startswith("image/")}
            for out in cell.get("outputs", [])
        ]
        m = LOCAL_PATH.search(json.dumps(texts))
        assert m is None, f"code cell {i} (0-based) output contains a local path: {m.group(0)!r}"


@by_name
def test_kernelspec_is_python3(path: Path) -> None:
    """``python3`` is the kernel every venv's ipykernel provides (toolchain.md §5)."""
    assert _read(path).metadata.get("kernelspec", {}).get("name") == "python3"


@by_name
def test_parameters_cell_declares_the_standard_knobs(path: Path) -> None:
    """One ``parameters`` cell declares PRESET, DEVICE, SEED and DATA_DIR (house style, lesson 7)."""
    missing = REQUIRED_PARAMETERS - _parameter_names(_read(path))
    assert not missing, f"the parameters cell does not assign {sorted(missing)}"


@by_name
def test_first_code_cell_is_the_colab_install_cell(path: Path) -> None:
    """The first code cell installs the package only when running in Colab (house style, lesson 12)."""
    first = _code_cells(_read(path))[0]
    assert "google.colab" in first.source, "the first code cell must be the Colab install cell"


@by_name
def test_notebook_is_in_the_table_of_contents(path: Path) -> None:
    """``only_build_toc_files: true`` silently leaves out a chapter that ``_toc.yml`` does not list."""
    listed = set(
        re.findall(r"^\s*-?\s*file:\s*(\S+?)\s*$", (ROOT / "_toc.yml").read_text(), flags=re.MULTILINE)
    )
    entry = path.relative_to(ROOT).with_suffix("").as_posix()
    assert entry in listed, f"{entry} is not listed in _toc.yml"
