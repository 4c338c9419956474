"""The book's replay (``pytest --nbval``): portable across CPUs, strict where numbers are facts.

Registered by the repository's root ``conftest.py``. nbval re-executes every chapter and compares each
cell's fresh outputs with the committed ones. This plugin adds four things:

1. **Pinned arithmetic.** Each chapter's kernel starts under :data:`mamo_lite.runtime.PINNED_ENV`
   (baseline x86-64 kernels, MKL's reproducible mode, 2 threads, ``DEVICE="auto"`` → CPU), the same
   settings ``.ci/regenerate`` produces the committed outputs with. ``MAMO_LITE_REPLAY_PIN=0`` turns
   the pinning off (CI does, in its rounding-perturbation step, to prove the tolerances below hold).
2. **Trained numbers within a stated tolerance.** A cell whose metadata holds
   ``"mamo_lite": {"tolerance": NAME}`` shows numbers that come out of training. Its text is compared
   with every number cut out: the words, labels and layout must match exactly, and each number must lie
   within the tolerance :data:`TOLERANCES` ``[NAME]`` states of the committed one (integers exactly,
   unless the tolerance covers them). Every other cell is compared exactly, as nbval does: counts, data
   facts, hand-computed values and anything deterministic. Nothing is masked.
3. **Missing data is a skip, not 80 failures.** A chapter lists the datasets it needs in its notebook
   metadata (``"mamo_lite": {"datasets": [...]}``). Where one is not on this machine, the chapter's
   cells are skipped with one line naming the dataset and how to provide it; under ``CI=true`` that is
   an error instead, so CI can never skip the real chapters silently.
4. **CPU replay.** The committed outputs are CPU outputs; ``$MAMO_LITE_DEVICE=cpu`` keeps a GPU
   machine's ``DEVICE="auto"`` on the CPU. The CUDA path has its own tests (marker ``gpu``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mamo_lite.runtime import PINNED_ENV

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Tolerance:
    """How far a replayed number may lie from the committed one: ``|new − old| ≤ atol + rtol·|old|``."""

    atol: float
    rtol: float
    integers: bool  # also integers (else they must match exactly)
    why: str

    def allows(self, old: float, new: float) -> bool:
        if math.isnan(old) or math.isnan(new):
            return math.isnan(old) and math.isnan(new)
        if math.isinf(old) or math.isinf(new):
            return old == new
        return abs(new - old) <= self.atol + self.rtol * abs(old)

    def describe(self) -> str:
        return f"atol {self.atol:g} + rtol {self.rtol:g}·|committed|" + (", integers too" if self.integers else "")


TOLERANCES: dict[str, Tolerance] = {
    "trained": Tolerance(
        atol=0.015, rtol=0.01, integers=False,
        why="numbers that come out of training (metrics, losses, memory statistics; one seed, book preset). "
            "About one seed-to-seed standard deviation of the book's test MAEs (0.006-0.019 over three "
            "seeds, chapter 3): a replay that moves a number by less is the same result. Other CPUs' "
            "kernels moved them by at most 0.013 (book/reproducing.md)",
    ),
    "float": Tolerance(
        atol=1e-3, rtol=1e-3, integers=False,
        why="untrained float computations (initial predictions, gradients at initialisation) whose last "
            "printed digit may flip with another CPU's rounding",
    ),
}

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w])|(?<![\w])-?(?:nan|NaN|inf)(?![\w])")


def split_numbers(text: str) -> tuple[list[str], list[str]]:
    """``(words, numbers)``: the text with every number cut out (whitespace runs collapsed), and the numbers."""
    numbers = NUMBER.findall(text)
    words = [re.sub(r"\s+", " ", part) for part in NUMBER.split(text)]
    return words, numbers


def _is_int(token: str) -> bool:
    return re.fullmatch(r"[-+]?\d+", token) is not None


# How far replayed numbers moved in cells that passed within their tolerance: (cell id, max |Δ|, count).
DRIFT: list[tuple[str, float, int]] = []


def max_drift(old: str, new: str) -> tuple[float, int]:
    """The largest |new − old| over the numbers of two texts that ``compare_text`` accepted, and how many moved."""
    pairs = [(float(a), float(b)) for a, b in zip(split_numbers(old)[1], split_numbers(new)[1], strict=True)
             if a != b]
    return max((abs(b - a) for a, b in pairs), default=0.0), len(pairs)


def compare_text(old: str, new: str, tol: Tolerance) -> list[str]:
    """Why ``new`` does not match ``old`` under ``tol`` (an empty list if it does)."""
    old_words, old_nums = split_numbers(old)
    new_words, new_nums = split_numbers(new)
    if old_words != new_words or len(old_nums) != len(new_nums):
        return ["the text around the numbers differs (labels, layout or the count of numbers)"]
    problems = []
    for a, b in zip(old_nums, new_nums, strict=True):
        if a == b:
            continue
        if _is_int(a) and _is_int(b) and not tol.integers:
            problems.append(f"{a} → {b}: integers must match exactly")
        elif not tol.allows(float(a), float(b)):
            problems.append(f"{a} → {b}: |Δ| = {abs(float(b) - float(a)):.3g} > {tol.describe()}")
    return problems


# -- nbval hooks ----------------------------------------------------------------------------------

def _cell_tolerance(cell) -> Tolerance | None:
    name = cell.get("metadata", {}).get("mamo_lite", {}).get("tolerance")
    if name is None:
        return None
    if name not in TOLERANCES:
        raise pytest.UsageError(f"unknown replay tolerance {name!r} in a cell's metadata; known: {sorted(TOLERANCES)}")
    return TOLERANCES[name]


def _flatten(item, outputs: list, skip: tuple) -> dict[str, list]:
    """nbval's view of a cell's outputs: ``{field or MIME type: [sanitised values]}``."""
    from nbval.plugin import transform_streams_for_comparison

    flat: dict[str, list] = defaultdict(list)
    for out in transform_streams_for_comparison(outputs):
        for key, value in out.items():
            if key in skip:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in skip:
                        flat[mime].append(item.sanitize(data))
            else:
                flat[key].append(item.sanitize(value))
    return flat


def _tolerant_compare(item, test: list, ref: list, tol: Tolerance) -> bool:
    skip = item.parent.skip_compare
    new, old = _flatten(item, test, skip), _flatten(item, ref, skip)
    item.comparison_traceback = []
    if old.keys() != new.keys():
        item.comparison_traceback.append(f"output fields differ: committed {sorted(old)}, replayed {sorted(new)}")
        return False
    for key in old:
        if len(old[key]) != len(new[key]):
            item.comparison_traceback.append(f"{key}: {len(old[key])} committed outputs, {len(new[key])} replayed")
            return False
        for a, b in zip(old[key], new[key], strict=True):
            problems = compare_text(a, b, tol) if isinstance(a, str) and isinstance(b, str) else (
                [] if a == b else ["outputs differ"])
            if not problems and isinstance(a, str) and a != b:
                drift, moved = max_drift(a, b)
                DRIFT.append((item.nodeid, drift, moved))
            if problems:
                item.comparison_traceback += [
                    f"{key}: outside the '{_name(tol)}' replay tolerance ({tol.describe()}):",
                    *[f"    {p}" for p in problems[:20]],
                    "committed:", _short(a), "replayed:", _short(b)]
                return False
    return True


def _name(tol: Tolerance) -> str:
    return next(k for k, v in TOLERANCES.items() if v is tol)


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) < 3000 else text[:3000] + " …"


@contextmanager
def _environ(settings: dict[str, str]):
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pinning_enabled() -> bool:
    return os.environ.get("MAMO_LITE_REPLAY_PIN", "1").strip() not in ("0", "false", "no")


def pytest_configure(config) -> None:
    try:
        from nbval.plugin import IPyNbCell, IPyNbFile
    except ImportError:  # pragma: no cover - nbval is a dev dependency
        return
    if getattr(IPyNbCell, "_mamo_lite_patched", False):
        return
    original_compare = IPyNbCell.compare_outputs
    original_setup = IPyNbFile.setup

    def compare_outputs(self, test, ref, skip_compare=None):
        tol = _cell_tolerance(self.cell)
        if tol is None:
            return original_compare(self, test, ref, skip_compare)
        return _tolerant_compare(self, test, ref, tol)

    def setup(self):
        # The kernel inherits os.environ when it starts: pin its arithmetic (unless disabled).
        settings = dict(PINNED_ENV) if pinning_enabled() else {"MAMO_LITE_DEVICE": "cpu"}
        with _environ(settings):
            original_setup(self)

    IPyNbCell.compare_outputs = compare_outputs
    IPyNbFile.setup = setup
    IPyNbCell._mamo_lite_patched = True


# -- datasets -------------------------------------------------------------------------------------

HOW_TO_GET = {
    "movielens-1m": "set MAMO_LITE_DATA to a folder holding ml-1m/ and ml-1m-extra/, or download it once "
                    "with `python -m mamo_lite data movielens-1m`",
    "movielens-100k": "set MAMO_LITE_DATA to a folder holding ml-100k/, or download it once with "
                      "`python -m mamo_lite data movielens-100k`",
    "book-crossing": "put BX-CSV-Dump.zip (or its three CSV files) into <data folder>/book-crossing/ "
                     "(it cannot be downloaded any more; see the README's Data section)",
}


def missing_datasets(names: list[str]) -> list[str]:
    """The datasets of ``names`` whose raw files are not on this machine (looked up, never downloaded)."""
    from mamo_lite.data import available
    from mamo_lite.data.registry import REGISTRY

    return [n for n in names if n in REGISTRY and not available(n)]


def notebook_datasets(path: Path) -> list[str]:
    meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    return list(meta.get("mamo_lite", {}).get("datasets", []))


def _skip_gpu_tests_without_cuda(items) -> None:
    """Tests marked ``gpu`` need a CUDA GPU: elsewhere they are skipped with one reason."""
    marked = [item for item in items if item.get_closest_marker("gpu")]
    if not marked:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason=f"no CUDA GPU (torch {torch.__version__}): the gpu-marked tests need one")
        for item in marked:
            item.add_marker(skip)


def pytest_collection_modifyitems(session, config, items) -> None:
    _skip_gpu_tests_without_cuda(items)
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # pragma: no cover
        return
    notebooks = {Path(str(item.parent.fspath)) for item in items if isinstance(item, IPyNbCell)}
    verdict: dict[Path, str] = {}
    for nb in sorted(notebooks):
        missing = missing_datasets(notebook_datasets(nb))
        if not missing:
            continue
        why = "; ".join(f"{n}: {HOW_TO_GET.get(n, 'see the README Data section')}" for n in missing)
        message = f"{nb.relative_to(ROOT) if nb.is_relative_to(ROOT) else nb.name} needs data this machine lacks — {why}"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            raise pytest.UsageError(f"CI=true and {message}. CI must replay every chapter on real data.")
        verdict[nb] = message
    # One skipped item per chapter (its first cell, with the reason); its other cells are deselected,
    # so the summary says it in one line instead of once per cell.
    keep, dropped, seen = [], [], set()
    for item in items:
        nb = Path(str(item.parent.fspath)) if isinstance(item, IPyNbCell) else None
        if nb in verdict:
            if nb in seen:
                dropped.append(item)
                continue
            seen.add(nb)
            item.add_marker(pytest.mark.skip(reason=verdict[nb]))
        keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how far trained numbers moved in the cells that passed within their tolerance."""
    if DRIFT:
        worst = max(DRIFT, key=lambda d: d[1])
        terminalreporter.write_line(
            f"mamo_lite replay: {len(DRIFT)} cell output(s) passed within tolerance with numbers that moved "
            f"({sum(d[2] for d in DRIFT)} numbers); largest |Δ| {worst[1]:.3g} in {worst[0]}")


def pytest_report_header(config) -> list[str]:
    pin = "pinned (mamo_lite.runtime.PINNED_ENV)" if pinning_enabled() else "NOT pinned (MAMO_LITE_REPLAY_PIN=0)"
    return [f"mamo_lite replay: notebook kernels {pin}; trained cells compared within stated tolerances"]
