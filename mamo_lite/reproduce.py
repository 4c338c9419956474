"""The paper's Table 1 as resumable runs into ``results/`` (MAMO §3.3, Table 1; appendix A.2).

A *cell* is one (row, dataset, seed): a method trained on the training users with its budget chosen on
the validation users (patience on the validation MAE, never the test users), then scored on the test
users per scenario (W-W, W-C, C-W, C-C, all; MAE, RMSE, NDCG@3). Every cell is one small JSON file,

    results/table1/<dataset>/<row>/seed<k>.json

holding the tidy rows (``method, dataset, scenario, metric, seed, value, n``), each test user's MAE and
NDCG@3 (the per-user terms of Eqs. 13–14, for paired comparisons between rows), what the run did
(selected epoch, epochs run, divergence as an event, wall time) and where the numbers come from (commit,
device, versions, data release and checksums, budget, configuration). A finished cell is never
recomputed unless its *key* (row, budget, data identity, configuration) changed; files are written
atomically, so an interrupted run restarts cleanly where it stopped. :func:`table1` gathers the cells
into ``results/table1/table1.csv`` and a provenance file ``table1.json``.

Rows (:data:`ROWS`): the trivial baselines (global median, global mean, item mean, user support mean),
the trained non-meta baselines of :mod:`mamo_lite.methods.baselines` and :mod:`mamo_lite.methods.rum`
(the plain DNN with and without fine-tuning, NMF, item- and feature-level RUM) and the meta-learners of
:mod:`mamo_lite.methods` (MeLU, MetaCS-DNN, MAML, MAMO and MAMO as its authors' code runs it). Every cell also records the
*within-user spread* of its predictions (metric ``spread``: the standard deviation of a user's query
predictions, averaged over users), so a model that collapsed to one rating per user is visible at once
(its NDCG@3 then measures nothing).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mamo_lite.data.tasks import TaskBatch
from mamo_lite.evaluate import COLUMNS, clip_predictions, per_user_metrics, scenario_metrics
from mamo_lite.methods import build_learner
from mamo_lite.methods.baselines import global_mean, global_median, item_mean, user_support_mean
from mamo_lite.models.recommender import GROUPS
from mamo_lite.train import NonFinitePredictionError, adapted_predictions, fit, subset_users
from mamo_lite.utils import atomic_write_text, json_safe, progress, resolve_device, seed_everything, versions

__all__ = ["BUDGETS", "ROWS", "Budget", "Row", "cell_predictions", "run_cell", "table1", "within_user_spread"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("results") / "table1"


@dataclass(frozen=True)
class Budget:
    """How long a cell may train and on how many users; epochs are chosen on the validation users."""

    name: str
    max_epochs: int  # high enough that the validation curve is flat when patience stops it
    patience: int  # epochs without a lower validation MAE before stopping
    max_train_users: int | None = None
    max_val_users: int | None = None
    max_test_users: int | None = None
    eval_chunk: int = 256
    per_row_epochs: bool = True  # honour a row's own (max_epochs, patience), e.g. MeLU's slow Adam 5e-5


BUDGETS: dict[str, Budget] = {
    b.name: b for b in (
        Budget("smoke", max_epochs=2, patience=1, max_train_users=48, max_val_users=16, max_test_users=64,
               eval_chunk=64, per_row_epochs=False),
        Budget("book", max_epochs=30, patience=3),
        Budget("full", max_epochs=100, patience=5),
    )
}


@dataclass(frozen=True)
class Row:
    """One row of the table: ``kind`` says how it is computed, ``method``/``overrides`` what exactly."""

    kind: str  # "constant", "plain" (a trained non-meta baseline) or "meta"
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    grid: dict[str, tuple] = field(default_factory=dict)  # hyper-parameters chosen on validation users
    search: str = ""  # a staged search of mamo_lite.methods.baselines.select_hyperparameters ("rum")
    epochs: tuple[int, int] | None = None  # (max_epochs, patience) instead of the budget's (cheap epochs)


# MAMO as its authors' code runs it (../shared/notes/reference-code.md §1.10-1.12, book/errata.md): the
# classification head, τ = 0.01, 9 local steps with every group local, M_U holding weight matrices only,
# Eq. 12's sum over users. (The code's Adam local optimiser and its random attention layer are not offered.)
MAMO_AS_CODED = {"head": "classification", "tau": 0.01, "inner_steps": 9, "local_groups": GROUPS,
                 "gradient_params": "weights", "reduction": "sum"}

ROWS: dict[str, Row] = {
    "global median": Row("constant", "global-median", note="the median training rating (minimises MAE)"),
    "global mean": Row("constant", "global-mean"),
    "item mean": Row("constant", "item-mean"),
    "user support mean": Row("constant", "user-mean"),
    "DNN": Row("plain", "dnn", note="the recommender trained on every training rating (chapter 2)"),
    "DNN + fine-tuning": Row("plain", "dnn", {"finetune_steps": 5, "finetune_lr": 0.01},
                             note="5 SGD steps on each test user's support set"),
    "NMF": Row("plain", "nmf", {"dim": 10, "fold_in_steps": 10}, epochs=(150, 10),
               note="non-negative MF through profile fields, the user folded in on its support set"),
    "RUM (item)": Row("plain", "rum", {"variant": "item"}, search="rum", note="A.2.2 grid on validation users"),
    "RUM (feature)": Row("plain", "rum", {"variant": "feature"}, search="rum", note="A.2.2 grid on validation users"),
    "MeLU": Row("meta", "melu", epochs=(150, 5),
                note="MeLU's published code defaults, as MAMO's Table 1 used them; Adam 5e-5 needs many epochs"),
    "MetaCS-DNN": Row("meta", "metacs-dnn", {"global_lr": 0.4},
                      note="SGD 0.4 as MAMO's appendix A.2.2 gives (diverges on MovieLens)"),
    "MetaCS-DNN (λ validated)": Row("meta", "metacs-dnn", grid={"global_lr": (0.4, 0.05, 0.01)},
                                    note="λ chosen on validation users"),
    "s²Meta": Row("meta", "s2meta", note="learned optimiser and stop rule (baselines.md §4); GPU recommended: "
                                         "an ML-1M epoch takes about 70 minutes on 2 CPU cores"),
    "GreatMeta": Row("meta", "greatmeta", note="the code's settings (ρ 5e-6, Adam 5e-5), support-conditioned FiLM"),
    "MAML": Row("meta", "maml", grid={"local_lr": (1e-2, 3e-3, 1e-3)}, note="ρ chosen on validation users"),
    "MAMO": Row("meta", "mamo"),
    "MAMO (as coded)": Row("meta", "mamo", MAMO_AS_CODED),
}
"""Table 1's rows by label: how each is computed (:class:`Row`), in the order the chapter shows them."""


_SPELLED = {"+": "plus", "λ": "lambda", "ρ": "rho", "τ": "tau", "²": "2"}


def slug(label: str) -> str:
    """An ASCII file name for a row label (``"MAMO (as coded)"`` → ``mamo-as-coded``, ``s²Meta`` → ``s2meta``)."""
    for symbol, word in _SPELLED.items():
        label = label.replace(symbol, word)
    out = "".join(c.lower() if c.isascii() and c.isalnum() else "-" for c in label)
    return "-".join(p for p in out.split("-") if p)


def within_user_spread(pred: torch.Tensor, batch: TaskBatch, rating_range) -> float:
    """Mean over users of the standard deviation of a user's (clipped) query predictions.

    Users with fewer than two real query ratings are left out. Near 0 means the model predicts one
    rating per user, whatever the item: its MAE is that of a per-user constant and its NDCG is noise.
    """
    p = clip_predictions(pred.detach().cpu().double(), rating_range)
    mask = batch.query_mask.cpu()
    n = mask.sum(1)
    keep = n >= 2
    if not bool(keep.any()):
        return float("nan")
    m = mask.double()
    mean = (p * m).sum(1) / n.clamp(min=1)
    var = (((p - mean[:, None]) ** 2) * m).sum(1) / n.clamp(min=1)
    return float(var[keep].sqrt().mean())


# -- one cell -------------------------------------------------------------------------------------------

def _constant(method: str, train: TaskBatch, test: TaskBatch) -> torch.Tensor:
    if method == "global-median":
        return global_median(train, test)
    if method == "global-mean":
        return global_mean(train, test)
    if method == "item-mean":
        return item_mean(train, test)
    if method == "user-mean":
        return user_support_mean(test)
    raise ValueError(f"unknown constant predictor {method!r}")


def _epochs(row: Row, budget: Budget) -> tuple[int, int]:
    """``(max_epochs, patience)``: the row's own where it has them and the budget allows, else the budget's."""
    if row.epochs is not None and budget.per_row_epochs:
        return row.epochs
    return budget.max_epochs, budget.patience


def _baseline_class(method: str):
    from mamo_lite.methods import baselines, rum

    return {"dnn": baselines.PlainDNN, "nmf": baselines.NMF, "rum": rum.RUM}[method]


def _plain(row: Row, data, train: TaskBatch, test: TaskBatch, seed: int, budget: Budget, device) -> tuple:
    """A trained non-meta baseline (:func:`mamo_lite.methods.baselines.fit_baseline`): epochs on validation users."""
    from mamo_lite.methods.baselines import fit_baseline

    val = subset_users(data.tasks("val"), budget.max_val_users, seed)
    max_epochs, patience = _epochs(row, budget)
    f = fit_baseline(_baseline_class(row.method), train, val, spec=data.spec, seed=seed, max_epochs=max_epochs,
                     patience=patience, device=device, progress=False, **row.overrides)
    info = {"best_epoch": f.best_epoch, "epochs_run": f.epochs_run, "diverged": f.diverged, "val": f.best_val,
            "history": f.history.query("metric != 'seconds'").to_dict(orient="records")}
    if f.best_epoch == 0:
        return None, info
    dev = resolve_device(device)
    return f.predict(test.to(dev)).cpu(), info


def _meta(row: Row, dataset: str, data, test: TaskBatch, seed: int, budget: Budget, device) -> tuple:
    seed_everything(seed)
    learner = build_learner(row.method, data.spec, dataset, overrides=row.overrides)
    max_epochs, patience = _epochs(row, budget)
    result = fit(learner, data, epochs=max_epochs, seed=seed, device=device, patience=patience,
                 max_train_users=budget.max_train_users, max_val_users=budget.max_val_users,
                 eval_chunk=budget.eval_chunk, progress=False)
    info = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "diverged": result.diverged,
            "stopped_early": result.stopped_early, "val": result.best_val,
            "history": result.history.query("metric != 'seconds'").to_dict(orient="records")}
    if result.best_epoch == 0:
        return None, info
    return adapted_predictions(learner, test, chunk=budget.eval_chunk), info


def _search(row: Row, data, budget: Budget, device) -> tuple[dict[str, Any], list[dict]]:
    """The staged grid search of a trained baseline (RUM: A.2.2's grid), on seed 0's validation users."""
    from mamo_lite.methods import rum
    from mamo_lite.methods.baselines import select_hyperparameters

    if row.search != "rum":
        raise ValueError(f"unknown search {row.search!r}")
    train = subset_users(data.tasks("train"), budget.max_train_users, 0)
    val = subset_users(data.tasks("val"), budget.max_val_users, 0)
    max_epochs, patience = _epochs(row, budget)
    chosen, table = select_hyperparameters(rum.RUM, rum.RUM_SEARCH, train, val, spec=data.spec, start=rum.DEFAULTS,
                                           seed=0, max_epochs=max_epochs, patience=patience, device=device,
                                           **row.overrides)
    return dict(chosen), table.to_dict(orient="records")


def cell_predictions(label: str, dataset: str, seed: int, budget: Budget | str = "book", *, data=None,
                     device: str | torch.device = "cpu", chosen: dict[str, Any] | None = None,
                     row: Row | None = None) -> tuple[torch.Tensor | None, TaskBatch, Any, dict]:
    """Train (or compute) one cell's row and predict its test users: ``(pred, test, data, info)``.

    ``pred`` is ``None`` when the run diverged before a healthy epoch (``info["diverged"]`` says how).
    :func:`run_cell` scores exactly these predictions; use this function to look at them (e.g. the
    NDCG variants of :func:`mamo_lite.evaluate.ndcg_variants`). Arguments as :func:`run_cell`.
    """
    from mamo_lite.data import load

    row = row if row is not None else ROWS[label]
    if (row.grid or row.search) and chosen is None:
        raise ValueError(f"row {label!r} has a grid: pass the validated values (chosen=, see tune())")
    if chosen:
        row = Row(row.kind, row.method, {**row.overrides, **chosen}, row.note, epochs=row.epochs)
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    data = data if data is not None else load(dataset, seed=seed)
    train = subset_users(data.tasks("train"), budget.max_train_users, seed)
    test = subset_users(data.tasks("test"), budget.max_test_users, seed)
    start = time.perf_counter()
    info: dict[str, Any] = {}
    try:
        if row.kind == "constant":
            pred = _constant(row.method, train, test)
        elif row.kind == "plain":
            pred, info = _plain(row, data, train, test, seed, budget, device)
        elif row.kind == "meta":
            pred, info = _meta(row, dataset, data, test, seed, budget, device)
        else:
            raise ValueError(f"unknown row kind {row.kind!r}")
    except NonFinitePredictionError as e:
        pred, info = None, {**info, "diverged": f"diverged ({e})"}
    info["seconds"] = time.perf_counter() - start
    if pred is None:
        info.setdefault("diverged", "diverged")
    return pred, test, data, info


def run_cell(label: str, dataset: str, seed: int, budget: Budget | str = "book", *, data=None,
             device: str | torch.device = "cpu", chosen: dict[str, Any] | None = None,
             row: Row | None = None) -> dict:
    """Compute one cell: ``{"rows": tidy metric rows, "info": what the run did}`` (see the module doc).

    ``chosen``: the values of the row's ``grid`` picked on validation users (:func:`tune`). ``row``: run
    this :class:`Row` under the name ``label`` instead of ``ROWS[label]`` (the parameter studies of
    :mod:`mamo_lite.studies` vary one setting of a row this way).
    """
    pred, test, data, info = cell_predictions(label, dataset, seed, budget, data=data, device=device,
                                              chosen=chosen, row=row)
    if pred is None:
        return {"rows": [], "per_user": {}, "info": info}
    table = scenario_metrics(pred, test, method=label, dataset=dataset, seed=seed, rating_range=data.spec)
    spread = {"method": label, "dataset": dataset, "scenario": "all", "metric": "spread", "seed": seed,
              "value": within_user_spread(pred, test, data.spec), "n": int((test.query_mask.sum(1) >= 2).sum())}
    rows = [*table.to_dict(orient="records"), spread]
    users = per_user_metrics(pred, test, rating_range=data.spec)  # Eqs. 13-14's per-user terms: paired tests
    per_user = {"user": users["user"].tolist(), "MAE": users["MAE"].round(6).tolist(),
                "NDCG@3": users["NDCG@3"].round(6).tolist()}
    return {"rows": json_safe(rows), "per_user": json_safe(per_user), "info": json_safe({**info, "chosen": chosen or {}})}


def tune(label: str, dataset: str, budget: Budget | str, data, *, device: str | torch.device = "cpu"
         ) -> tuple[dict[str, Any], list[dict]]:
    """Pick the row's grid values by the best validation MAE (seed 0's split, never the test users).

    Returns ``(chosen, table)``: the winning values and one entry per grid point (validation MAE,
    selected epoch, divergence). A diverged grid point never wins.
    """
    import itertools

    row = ROWS[label]
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    if row.search:
        return _search(row, data, budget, device)
    names = list(row.grid)
    table = []
    for values in itertools.product(*(row.grid[n] for n in names)):
        point = dict(zip(names, values, strict=True))
        started = time.perf_counter()
        seed_everything(0)
        learner = build_learner(row.method, data.spec, dataset, overrides={**row.overrides, **point})
        max_epochs, patience = _epochs(row, budget)
        result = fit(learner, data, epochs=max_epochs, seed=0, device=device, patience=patience,
                     max_train_users=budget.max_train_users, max_val_users=budget.max_val_users,
                     eval_chunk=budget.eval_chunk, progress=False)
        table.append({**point, "val_MAE": result.best_val.get("MAE") if result.best_epoch else None,
                      "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "diverged": result.diverged,
                      "seconds": time.perf_counter() - started})
    healthy = [t for t in table if t["val_MAE"] is not None and math.isfinite(t["val_MAE"])]
    if not healthy:
        raise RuntimeError(f"every grid point of {label!r} on {dataset} diverged: {table}")
    best = min(healthy, key=lambda t: t["val_MAE"])
    return {n: best[n] for n in names}, table


# -- the table ------------------------------------------------------------------------------------------

@functools.cache
def _commit() -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout, read once per process (every entry point, :func:`table1`,
    :func:`~mamo_lite.imbalance.groups_study` and the figures of :mod:`mamo_lite.studies`, reads it before it
    computes or writes anything), so that a cell records the code that ran, not the tree or the ``HEAD`` of
    the moment it was written."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, check=True, timeout=10).stdout.strip())
        return {"commit": head, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _data_identity(data) -> dict[str, Any]:
    files = {k: {"sha256": f.get("sha256")} for k, f in (data.provenance.get("files") or {}).items()}
    return {"name": data.name, "release": data.release, "files": files}


def _row_identity(row: Row) -> dict[str, Any]:
    """What of a row changes its numbers (its ``note`` does not)."""
    ident = {"kind": row.kind, "method": row.method, "overrides": row.overrides, "grid": row.grid}
    if row.search:
        ident["search"] = row.search
    return ident


def _budget_identity(row: Row, budget: Budget) -> dict[str, Any]:
    """The budget as it applies to ``row`` (its own epochs, where it has them)."""
    ident = {k: v for k, v in asdict(budget).items() if k != "per_row_epochs"}
    if row.epochs is not None:
        ident["max_epochs"], ident["patience"] = _epochs(row, budget)
    return ident


def resolve_budget(budget: Budget | str, budgets: dict[str, Budget]) -> Budget:
    """``budget`` itself, or the entry of ``budgets`` it names (a clear error for any other name)."""
    if isinstance(budget, Budget):
        return budget
    if budget not in budgets:
        raise ValueError(f"budget must be one of {list(budgets)} or a Budget, got {budget!r}")
    return budgets[budget]


def payload_key(payload: dict) -> str:
    """A short hash of what a stored result depends on (``format`` 1): the studies' and the imbalance cells' key."""
    blob = json.dumps(json_safe({**payload, "format": 1}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_key(label: str, dataset: str, seed: int, budget: Budget, data, chosen: dict | None = None) -> str:
    """What a cell's numbers depend on, hashed: a finished cell with the same key is not recomputed."""
    row = ROWS[label]
    blob = json.dumps(json_safe({"row": _row_identity(row), "dataset": dataset, "seed": seed,
                                 "budget": _budget_identity(row, budget),
                                 "data": _data_identity(data), "chosen": chosen or {}, "format": 2}),
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tuned(label: str, dataset: str, budget: Budget, out: Path, loader, device) -> dict[str, Any]:
    """The row's validated grid values: read from ``out/<dataset>/<row>/grid.json`` or computed there."""
    row = ROWS[label]
    path = out / dataset / slug(label) / "grid.json"
    data = loader(dataset, seed=0)
    key = hashlib.sha256(json.dumps(json_safe({"row": _row_identity(row), "budget": _budget_identity(row, budget),
                                               "data": _data_identity(data)}), sort_keys=True).encode()).hexdigest()[:16]
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("key") == key:
                return stored["chosen"]
        except (OSError, ValueError, KeyError):
            pass
    chosen, table = tune(label, dataset, budget, data, device=device)
    atomic_write_text(path, json.dumps(json_safe({
        "key": key, "row": label, "dataset": dataset, "chosen": chosen, "grid": table,
        "selected_on": "validation users of seed 0's split (best validation MAE; diverged points excluded)",
        "provenance": {**_commit(), "device": str(device), "versions": versions(device), "budget": asdict(budget),
                       "data": _data_identity(data)}}), indent=1, sort_keys=True))
    return chosen


def table1(datasets: Iterable[str] = ("movielens-1m", "book-crossing"), rows: Iterable[str] | None = None,
           seeds: Iterable[int] = range(5), budget: Budget | str = "book", *, out: str | Path = DEFAULT_OUT,
           device: str | torch.device = "cpu", show_progress: bool | None = None,
           loader: Callable[..., Any] | None = None) -> pd.DataFrame:
    """Every (row × dataset × seed) cell, computed or read back from ``out``; returns the tidy table.

    Writes ``out/<dataset>/<row>/seed<k>.json`` per cell (atomically, as it finishes) and then
    ``out/table1.csv`` (the metric rows of every cell in ``out``, this run's and earlier ones) and
    ``out/table1.json`` (provenance and every cell's run facts). Returns this run's rows.
    """
    from mamo_lite.data import load

    loader = loader or load
    _commit()  # the checkout as this run found it (cached for every cell)
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    labels = list(rows) if rows is not None else list(ROWS)
    unknown = [label for label in labels if label not in ROWS]
    if unknown:
        raise ValueError(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    seeds = list(seeds)
    out = Path(out)
    dev = resolve_device(device)
    cells = [(d, label, s) for d in datasets for s in seeds for label in labels]
    bar = progress(total=len(cells), enabled=show_progress, desc="table 1", unit="cell")
    collected, facts, cache = [], [], {}
    try:
        for dataset, label, seed in cells:
            if (dataset, seed) not in cache:
                cache = {(dataset, seed): loader(dataset, seed=seed)}  # one dataset split in memory at a time
            data = cache[(dataset, seed)]
            chosen = None
            if ROWS[label].grid or ROWS[label].search:
                chosen = _tuned(label, dataset, budget, out, loader, dev)
            key = cell_key(label, dataset, seed, budget, data, chosen)
            path = out / dataset / slug(label) / f"seed{seed}.json"
            cell = None
            if path.is_file():
                try:
                    stored = json.loads(path.read_text(encoding="utf-8"))
                    cell = stored if stored.get("key") == key else None
                except (OSError, ValueError):
                    cell = None
            if cell is None:
                result = run_cell(label, dataset, seed, budget, data=data, device=dev, chosen=chosen)
                cell = {"key": key, "row": label, "dataset": dataset, "seed": seed, **result,
                        "provenance": {**_commit(), "device": str(dev), "versions": versions(dev),
                                       "data": _data_identity(data), "budget": asdict(budget),
                                       "row_spec": asdict(ROWS[label])}}
                atomic_write_text(path, json.dumps(json_safe(cell), indent=1, sort_keys=True))
            collected += cell["rows"]
            facts.append({"dataset": dataset, "row": label, "seed": seed,
                          **{k: cell["info"].get(k) for k in ("best_epoch", "epochs_run", "diverged", "seconds")}})
            bar.update(1)
    finally:
        bar.close()
    table = pd.DataFrame(collected, columns=list(COLUMNS))
    # The folder's summary covers every cell in it, also those of earlier runs with other rows or seeds.
    from mamo_lite.results import load_cells

    everything = load_cells(out)
    atomic_write_text(out / "table1.csv", everything.metrics.to_csv(index=False))
    atomic_write_text(out / "table1.json", json.dumps(json_safe({
        "budget": asdict(budget), "this_run": {"datasets": list(datasets), "rows": labels, "seeds": seeds,
                                              "cells": facts},
        "cells": everything.runs.to_dict(orient="records"), **_commit(), "versions": versions(dev)}),
        indent=1, sort_keys=True))
    return table
