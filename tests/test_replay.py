"""The book's replay (``tests/nbval_replay.py``): tolerant where training is, exact elsewhere, honest about data.

The comparison is tested on strings first, then end to end: ``pytest --nbval`` runs in a subprocess on
small notebooks written here (a kernel starts in ~2 s), and on a real chapter whose learning rate is
changed (marked ``slow``), which must fail the replay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbval_replay import TOLERANCES, Tolerance, compare_text, split_numbers

ROOT = Path(__file__).resolve().parents[1]
TRAINED = TOLERANCES["trained"]


# -- the comparison ---------------------------------------------------------------------------------

def test_split_numbers_cuts_out_every_number_and_keeps_labels():
    words, numbers = split_numbers("W-W MAE 0.812  NDCG@3 -1.5e-03 users 600 nan")
    assert numbers == ["0.812", "3", "-1.5e-03", "600", "nan"]
    assert words == ["W-W MAE ", " NDCG@", " ", " users ", " ", ""]
    assert split_numbers("M_U2 x1 v1.2.3")[1] == []  # digits inside names and versions are not numbers


def test_numbers_within_the_tolerance_pass_and_layout_may_shift():
    old = "method   MAE\nDNN    0.799\nMAML   0.812"
    new = "method    MAE\nDNN     0.801\nMAML    0.809"  # columns re-aligned, numbers moved a little
    assert compare_text(old, new, TRAINED) == []


def test_a_number_outside_the_tolerance_fails_with_the_reason():
    problems = compare_text("MAE 0.812", "MAE 0.900", TRAINED)
    assert len(problems) == 1 and "0.812 → 0.900" in problems[0] and "atol" in problems[0]


def test_drift_is_measured_for_the_summary():
    from nbval_replay import max_drift

    assert max_drift("a 0.812 b 3 c 1.5", "a 0.809 b 3 c 1.504") == (pytest.approx(0.004), 2)
    assert max_drift("x 1", "x 1") == (0.0, 0)


def test_integers_labels_and_nan_are_exact():
    assert compare_text("600 users", "601 users", TRAINED) == ["600 → 601: integers must match exactly"]
    assert compare_text("MAE 0.8", "RMSE 0.8", TRAINED)  # a changed label
    assert compare_text("0.8 0.9", "0.8", TRAINED)  # a number missing
    assert compare_text("nan", "nan", TRAINED) == [] and compare_text("nan", "0.5", TRAINED)
    assert compare_text("1.0", "inf", TRAINED)
    lenient = Tolerance(atol=0, rtol=0.1, integers=True, why="test")
    assert compare_text("600", "650", lenient) == [] and compare_text("600", "700", lenient)


def test_every_tolerance_states_why():
    for name, tol in TOLERANCES.items():
        assert tol.why and tol.atol >= 0 and tol.rtol >= 0, name


# -- end to end: pytest --nbval on small notebooks ------------------------------------------------

@pytest.fixture
def nb_dir() -> Iterator[Path]:
    """A scratch folder inside the repository: the root conftest.py (the plugin) applies only below it."""
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".replay-test-") as d:
        yield Path(d)


def _notebook(path: Path, cells: list[tuple[str, str, dict]], datasets: list[str] | None = None) -> Path:
    """A committed notebook: each cell is (source, its committed stdout, its metadata)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if datasets is not None:
        nb.metadata["mamo_lite"] = {"datasets": datasets}
    for i, (source, stdout, meta) in enumerate(cells, start=1):
        cell = nbformat.v4.new_code_cell(source, metadata=meta, execution_count=i)
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stdout)] if stdout else []
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def _replay(notebook: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "MAMO_LITE_DATA")} | env
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "-p", "no:cacheprovider", "-rs", "-q",
         "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"), str(notebook)],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300, check=False)


TRAINED_CELL = {"mamo_lite": {"tolerance": "trained"}}


def test_replay_accepts_a_trained_number_within_tolerance_and_rejects_one_outside(nb_dir):
    nb = _notebook(nb_dir / "ok.ipynb", [("print(f'MAE {0.8:.3f}')", "MAE 0.812\n", TRAINED_CELL)])
    run = _replay(nb)
    assert run.returncode == 0 and "passed within tolerance with numbers that moved" in run.stdout, run.stdout
    nb = _notebook(nb_dir / "far.ipynb", [("print(f'MAE {0.8:.3f}')", "MAE 0.900\n", TRAINED_CELL)])
    run = _replay(nb)
    assert run.returncode == 1 and "outside the 'trained' replay tolerance" in run.stdout, run.stdout
    nb = _notebook(nb_dir / "exact.ipynb", [("print(f'MAE {0.8:.3f}')", "MAE 0.801\n", {})])
    assert _replay(nb).returncode == 1  # no tolerance: exact, as nbval always compares


def test_replay_kernel_runs_pinned_on_the_cpu(nb_dir):
    source = "import os; print(os.environ.get('ATEN_CPU_CAPABILITY'), os.environ.get('MAMO_LITE_DEVICE'))"
    nb = _notebook(nb_dir / "env.ipynb", [(source, "default cpu\n", {})])
    assert _replay(nb).returncode == 0
    nb = _notebook(nb_dir / "env.ipynb", [(source, "None cpu\n", {})])
    assert _replay(nb, MAMO_LITE_REPLAY_PIN="0").returncode == 0  # the perturbation step's switch


def test_a_chapter_without_its_data_is_one_skip_line_and_an_error_under_ci(nb_dir):
    empty = nb_dir / "no-data"
    empty.mkdir()
    cells = [("print(1)", "1\n", {}), ("print(2)", "2\n", {})]
    nb = _notebook(nb_dir / "needs.ipynb", cells, datasets=["movielens-1m", "book-crossing"])
    run = _replay(nb, MAMO_LITE_DATA=str(empty))
    assert run.returncode == 0, run.stdout
    assert "1 skipped, 1 deselected" in run.stdout
    skip_lines = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skip_lines) == 1 and "movielens-1m" in skip_lines[0] and "book-crossing" in skip_lines[0]
    assert str(nb_dir) not in skip_lines[0]  # names no path outside the repository
    run = _replay(nb, MAMO_LITE_DATA=str(empty), CI="true")
    assert run.returncode == 4 and "CI must replay every chapter on real data" in run.stderr + run.stdout


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_chapters_declare_the_datasets_they_load(path):
    """Every registry dataset a chapter names in its code is declared in its metadata (for the skip)."""
    from mamo_lite.data.registry import REGISTRY

    nb = json.loads(path.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    named = {name for name in REGISTRY if f'"{name}"' in code or f"'{name}'" in code}
    declared = set(nb["metadata"].get("mamo_lite", {}).get("datasets", []))
    assert named <= declared, f"declare {sorted(named - declared)} in the notebook metadata mamo_lite.datasets"
    assert declared <= set(REGISTRY), f"unknown datasets declared: {sorted(declared - set(REGISTRY))}"


# -- a real chapter: a changed learning rate must fail the replay ----------------------------------

CHAPTER = ROOT / "notebooks" / "03_maml_vs_mamo.ipynb"
LR_CELL = 'overrides={"reduction": reduction}'  # chapter 3's Eq. 12 demo: six meta-updates of MAMO


def _chapter_until_first_trained_cell(path: Path, dest: Path, change: tuple[str, str] | None) -> int:
    """Chapter 3 up to its first trained cell (optionally edited); returns that cell's code index."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    target = next(c for c in code if LR_CELL in c.source)
    assert target.metadata.get("mamo_lite", {}).get("tolerance") == "trained"
    if change:
        target.source = target.source.replace(*change)
    nb.cells = nb.cells[: nb.cells.index(target) + 1]
    nbformat.write(nb, dest)
    return code.index(target)


@pytest.mark.slow
def test_a_changed_learning_rate_in_a_chapter_fails_the_replay(nb_dir):
    """λ = 0.02 instead of 0.05 in chapter 3: its trained cell must fail; unchanged, the same cells pass."""
    from nbval_replay import missing_datasets, notebook_datasets

    if missing_datasets(notebook_datasets(CHAPTER)):
        pytest.skip("needs MovieLens-1M (set MAMO_LITE_DATA)")
    same = nb_dir / "same.ipynb"
    _chapter_until_first_trained_cell(CHAPTER, same, None)
    run = _replay(same, MAMO_LITE_DATA=os.environ.get("MAMO_LITE_DATA", ""))
    assert run.returncode == 0, run.stdout[-3000:]

    changed = nb_dir / "changed.ipynb"
    index = _chapter_until_first_trained_cell(
        CHAPTER, changed, (LR_CELL, 'overrides={"reduction": reduction, "global_lr": 0.02}'))
    run = _replay(changed, MAMO_LITE_DATA=os.environ.get("MAMO_LITE_DATA", ""))
    assert run.returncode == 1, run.stdout[-3000:]
    assert f"changed.ipynb::Cell {index}" in run.stdout and "1 failed" in run.stdout, run.stdout[-3000:]
    assert "outside the 'trained' replay tolerance" in run.stdout
