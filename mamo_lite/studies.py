"""The paper's parameter studies as resumable runs into ``results/``: Fig. 2 and Fig. 4 (MAMO §3.2, §3.4.2).

**Fig. 2** (:data:`FIG2`, :func:`fig2`) is MAMO's sensitivity on MovieLens-1M to one setting at a time,
the others at the paper's defaults (appendix A.3): (a) the share of users used for training, (b) the
support-set size (the query set stays the last 5 of a user's 20 kept ratings, §3.2.1), (c) the number of
embedding layers, (d) the embedding size :math:`d_e`, (e) α and (f) β, the memory rates of Eqs. 5–6, (g)
the local rate ρ (Eq. 11) and (h) the global rate λ (Eq. 12). A ninth panel, *local update*, is ours: the
one full-batch local step of the package's default against the paper's Algorithm 1 (one step per support
rating) and five batch steps. Every point is one MAMO trained with its epoch chosen on validation users
and scored on the test users, exactly as a Table-1 cell (:func:`mamo_lite.reproduce.run_cell`), so each
point also carries the within-user spread of its predictions: a collapsed model shows up as spread ≈ 0.

**Fig. 4** (:func:`fig4`) is the convergence of the plain DNN, NMF and MAMO at support sizes 5 and 10:
the validation users' query MAE after every training epoch (the paper's "training process") and the test
users' query MAE after ``s`` local steps on their support set, ``s = 0 … 10`` (its "testing process"):
fine-tuning SGD steps for the DNN (Eq. 11 with every group local, rate 0.01 as in Table 1's
*DNN + fine-tuning*), multiplicative fold-in steps for NMF, MAMO's own local update for MAMO. Here every
model trains a fixed number of epochs (no early stop, so the curves are complete); the test curve uses the
epoch with the best validation MAE.

Both studies use :data:`STUDY_BUDGETS`: ``"book"`` trains on 1000 of MovieLens-1M's training users for at
most 8 epochs (patience 2) — a reduced budget, stated wherever the results are shown, that keeps a study of
~20 configurations × 3 seeds within about an hour on two CPU cores; ``"smoke"`` is a few dozen users.

Files: ``results/fig2/<panel>/<value>/seed<k>.json`` and ``results/fig4/<method>/s<support>/seed<k>.json``,
each with a key (what its numbers depend on): a finished point is never recomputed unless its key changed,
and every file is written atomically, so an interrupted study restarts where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mamo_lite.reproduce import (
    BUDGETS,
    Budget,
    Row,
    _commit,
    _data_identity,
    payload_key,
    resolve_budget,
    run_cell,
    slug,
)
from mamo_lite.utils import atomic_write_text, json_safe, progress, resolve_device, seed_everything, versions

__all__ = ["FIG2", "FIG4_METHODS", "STUDY_BUDGETS", "Point", "fig2", "fig2_key", "fig4", "fig4_key", "load_fig2",
           "load_fig4"]

DATASET = "movielens-1m"  # the paper's parameter studies are on MovieLens (§3.2)


@dataclass(frozen=True)
class Point:
    """One x-value of a Fig. 2 panel: MAMO with ``overrides`` (config fields) on data cut by ``protocol``."""

    panel: str
    value: Any
    overrides: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    default: bool = False  # the paper's setting: the point every panel shares


def _panel(name: str, values: Iterable[Any], default: Any, make: Callable[[Any], tuple[dict, dict]]) -> list[Point]:
    """The panel's points; the paper's default value is the untouched default learner (no overrides), so the
    one default configuration has one key and is trained once per seed for all panels."""
    return [Point(name, v, default=True) if v == default else Point(name, v, *make(v)) for v in values]


FIG2: dict[str, list[Point]] = {p[0].panel: p for p in (
    # (a) §3.2.1: share of users in training (the rest are test users; 10 % of training users validate)
    _panel("train ratio", (0.5, 0.7, 0.8, 0.9), 0.8, lambda r: ({}, {"test_fraction": round(1 - r, 2)})),
    # (b) §3.2.1: support size, the query set stays the last 5 of 20 kept ratings
    _panel("support size", (5, 10, 15), 15, lambda s: ({}, {"n_support": s})),
    # (c), (d) §3.2.2: embedding layers and size d_e
    _panel("layers", (1, 2, 3), 2, lambda n: ({"tower_layers": n}, {})),
    _panel("embedding size", (50, 100, 200), 100, lambda d: ({"embed_dim": d}, {})),
    # (e)-(h) §3.2.3: memory rates of Eqs. 5-6 and the local/global learning rates of Eqs. 11-12
    _panel("alpha", (0.1, 0.5, 0.9), 0.5, lambda a: ({"alpha": a}, {})),
    _panel("beta", (0.01, 0.05, 0.1, 0.5), 0.05, lambda b: ({"beta": b}, {})),
    _panel("rho", (0.001, 0.01, 0.1), 0.01, lambda r: ({"local_lr": r}, {})),
    _panel("lambda", (0.005, 0.05, 0.5), 0.05, lambda g: ({"global_lr": g}, {})),
    # ours: Algorithm 1's per-item local update against the default single full-batch step
    _panel("local update", ("1 batch step", "5 batch steps", "per item"), "1 batch step",
           lambda u: ({"1 batch step": {}, "5 batch steps": {"inner_steps": 5},
                       "per item": {"local_update": "per-item"}}[u], {})),
)}
"""Fig. 2's panels (a)–(h) plus *local update*; values as in the paper's axes where it shows them."""

FIG4_METHODS: tuple[str, ...] = ("DNN", "NMF", "MAMO")
FIG4_SUPPORT: tuple[int, ...] = (5, 10)
FIG4_STEPS: tuple[int, ...] = tuple(range(11))
FIG4_NMF_EPOCH_FACTOR = 10  # NMF's multiplicative epochs are cheap and slow to converge: 10x the budget's

STUDY_BUDGETS: dict[str, Budget] = {
    "smoke": BUDGETS["smoke"],
    "book": Budget("study", max_epochs=8, patience=2, max_train_users=1000),
}
"""The studies' budgets: ``"book"`` (1000 training users, at most 8 epochs, patience 2) and ``"smoke"``."""


def _budget(budget: Budget | str) -> Budget:
    return resolve_budget(budget, STUDY_BUDGETS)


_key = payload_key


def fig2_key(point: Point, seed: int, budget: Budget, data) -> str:
    """What a Fig. 2 point's numbers depend on, hashed (its file is recomputed when this changes)."""
    return _key({"study": "fig2", "method": "mamo", "overrides": point.overrides, "protocol": point.protocol,
                 "seed": seed, "budget": asdict(budget), "data": _data_identity(data)})


def fig4_key(method: str, support: int, seed: int, budget: Budget, data) -> str:
    """What a Fig. 4 curve's numbers depend on, hashed."""
    return _key({"study": "fig4", "method": method, "protocol": {"n_support": support}, "seed": seed,
                 "budget": asdict(budget), "steps": FIG4_STEPS, "nmf_factor": FIG4_NMF_EPOCH_FACTOR,
                 "data": _data_identity(data)})


def _cached(path: Path, key: str, compute: Callable[[], dict], meta: dict) -> dict:
    """The stored result at ``path`` if its key matches, else ``compute()`` written there atomically."""
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("key") == key:
                return stored
        except (OSError, ValueError):
            pass
    result = {"key": key, **meta, **compute()}
    atomic_write_text(path, json.dumps(json_safe(result), indent=1, sort_keys=True))
    return result


def _provenance(device, data, budget: Budget) -> dict:
    return {**_commit(), "device": str(device), "versions": versions(device), "data": _data_identity(data),
            "budget": asdict(budget)}


# -- Fig. 2 ---------------------------------------------------------------------------------------------

def fig2(panels: Iterable[str] | None = None, seeds: Iterable[int] = range(3), budget: Budget | str = "book", *,
         out: str | Path = Path("results") / "fig2", device: str | torch.device = "cpu",
         show_progress: bool | None = None, loader: Callable[..., Any] | None = None) -> pd.DataFrame:
    """Every point of Fig. 2's ``panels`` (default: all of :data:`FIG2`) × ``seeds``; returns the tidy rows.

    A point shared by several panels (the paper's defaults) is computed once per seed and stored under
    each panel. Returns ``panel, value, default, seed, scenario, metric, value`` rows (column ``x`` holds
    the panel's value) for everything under ``out`` that belongs to the requested panels and seeds.
    """
    from mamo_lite.data import load

    loader = loader or load
    _commit()  # the checkout as this run found it (cached for every cell)
    budget = _budget(budget)
    names = list(panels) if panels is not None else list(FIG2)
    unknown = [n for n in names if n not in FIG2]
    if unknown:
        raise ValueError(f"unknown Fig. 2 panel(s) {unknown}; choose from {list(FIG2)}")
    seeds = list(seeds)
    out, dev = Path(out), resolve_device(device)
    todo = [(p, s) for s in seeds for n in names for p in FIG2[n]]
    bar = progress(total=len(todo), enabled=show_progress, desc="fig 2", unit="point")
    done: dict[tuple, dict] = {}
    rows = []
    try:
        for point, seed in todo:
            data = loader(DATASET, seed=seed, protocol=point.protocol or None)
            key = fig2_key(point, seed, budget, data)
            path = out / slug(point.panel) / slug(str(point.value)) / f"seed{seed}.json"
            if key in done:  # the shared default point: the same numbers, stored again under this panel
                cell = _cached(path, key, lambda c=done[key]: {k: c[k] for k in ("rows", "info", "provenance")},
                               {"panel": point.panel, "value": point.value, "seed": seed})
            else:
                row = Row("meta", "mamo", dict(point.overrides))
                cell = _cached(path, key, lambda row=row, data=data, seed=seed: {
                    **_strip(run_cell("MAMO", DATASET, seed, budget, data=data, device=dev, row=row)),
                    "provenance": _provenance(dev, data, budget)},
                    {"panel": point.panel, "value": point.value, "seed": seed})
                done[key] = cell
            for r in cell["rows"]:
                rows.append({"panel": point.panel, "x": point.value, "default": point.default, "seed": seed,
                             "scenario": r["scenario"], "metric": r["metric"], "value": r["value"]})
            bar.update(1)
    finally:
        bar.close()
    return pd.DataFrame(rows, columns=["panel", "x", "default", "seed", "scenario", "metric", "value"])


def _strip(cell: dict) -> dict:
    """A Table-1 cell without its per-user lists (a study needs the aggregates and the run facts)."""
    return {"rows": cell["rows"], "info": cell["info"]}


def load_fig2(folder: str | Path = Path("results") / "fig2") -> pd.DataFrame:
    """Read every stored Fig. 2 point under ``folder``: tidy ``panel, x, default, seed, scenario, metric, value``
    plus ``best_epoch`` and ``diverged`` (a diverged point has no metric rows, one row with ``metric="diverged"``)."""
    folder = Path(folder)
    paths = sorted(folder.glob("*/*/seed*.json"))
    if not paths:
        raise FileNotFoundError(f"no Fig. 2 points (<panel>/<value>/seed<k>.json) under {folder}; "
                                "compute them with `python -m mamo_lite reproduce fig2`")
    defaults = {(p.panel, str(p.value)): p.default for pts in FIG2.values() for p in pts}
    rows = []
    for path in paths:
        c = json.loads(path.read_text(encoding="utf-8"))
        info = c.get("info", {})
        base = {"panel": c["panel"], "x": c["value"], "default": defaults.get((c["panel"], str(c["value"])), False),
                "seed": c["seed"], "best_epoch": info.get("best_epoch"), "diverged": info.get("diverged")}
        if not c["rows"]:
            rows.append({**base, "scenario": "all", "metric": "diverged", "value": float("nan")})
        rows += [{**base, "scenario": r["scenario"], "metric": r["metric"], "value": r["value"]} for r in c["rows"]]
    return pd.DataFrame(rows)


# -- Fig. 4 ---------------------------------------------------------------------------------------------

def _query_mae(pred: torch.Tensor, batch, spec) -> dict[str, float]:
    from mamo_lite.evaluate import pooled_errors

    p = pred.detach().cpu()
    b = batch.to("cpu")
    out = {"all": pooled_errors(p, b, spec)["MAE"]}
    for name, sel in (("warm users", ~b.user_cold), ("cold users", b.user_cold)):
        if bool(sel.any()):
            out[name] = pooled_errors(p[sel], b.select(torch.nonzero(sel).flatten()), spec)["MAE"]
    return out


def _fig4_cell(method: str, data, seed: int, budget: Budget, device) -> dict:
    """Train ``method`` for a fixed number of epochs; its validation curve and its test curve over local steps."""
    from mamo_lite.meta import predict
    from mamo_lite.methods import build_learner
    from mamo_lite.methods.baselines import NMF, PlainDNN, finetune_predict, fit_baseline
    from mamo_lite.train import fit, subset_users

    train = subset_users(data.tasks("train"), budget.max_train_users, seed)
    val = subset_users(data.tasks("val"), budget.max_val_users, seed)
    test = subset_users(data.tasks("test"), budget.max_test_users, seed).to(device)
    started = time.perf_counter()
    if method == "MAMO":
        seed_everything(seed)
        learner = build_learner("mamo", data.spec, DATASET)
        res = fit(learner, data, epochs=budget.max_epochs, seed=seed, device=device, patience=None,
                  max_train_users=budget.max_train_users, max_val_users=budget.max_val_users,
                  eval_chunk=budget.eval_chunk, progress=False)
        history, best, diverged = res.history, res.best_epoch, res.diverged
        curve = {s: predict(learner, test, chunk=budget.eval_chunk, steps=s) for s in FIG4_STEPS}
    else:
        make, hyper, epochs = ((PlainDNN, {}, budget.max_epochs) if method == "DNN" else
                               (NMF, {"dim": 10}, budget.max_epochs * FIG4_NMF_EPOCH_FACTOR))
        f = fit_baseline(make, train, val, spec=data.spec, seed=seed, max_epochs=epochs, patience=None,
                         device=device, progress=False, **hyper)
        history, best, diverged = f.history, f.best_epoch, f.diverged
        model = f.model
        with torch.no_grad():
            if method == "DNN":
                curve = {s: finetune_predict(model.model, test, steps=s, lr=0.01) for s in FIG4_STEPS}
            else:
                q = model.item_vectors(test.query_x)
                curve = {s: (model.fold_in(test, steps=s).unsqueeze(1) * q).sum(-1) for s in FIG4_STEPS}
    training = history[history["split"] == "val"].query("metric == 'MAE'")[["epoch", "value"]]
    testing = [{"step": s, "group": g, "MAE": v} for s, pred in curve.items()
               for g, v in _query_mae(pred, test, data.spec).items()]
    return {"training": training.to_dict(orient="records"), "testing": testing,
            "info": {"best_epoch": best, "diverged": diverged, "seconds": time.perf_counter() - started,
                     "epochs": int(training["epoch"].max()) if len(training) else 0}}


def fig4(methods: Iterable[str] = FIG4_METHODS, support: Iterable[int] = FIG4_SUPPORT, seeds: Iterable[int] = range(3),
         budget: Budget | str = "book", *, out: str | Path = Path("results") / "fig4",
         device: str | torch.device = "cpu", show_progress: bool | None = None,
         loader: Callable[..., Any] | None = None) -> pd.DataFrame:
    """Fig. 4's curves for ``methods`` × support sizes × seeds into ``out``; returns :func:`load_fig4`'s frames' ``testing``."""
    from mamo_lite.data import load

    loader = loader or load
    _commit()  # the checkout as this run found it (cached for every cell)
    budget = _budget(budget)
    methods, support, seeds = list(methods), list(support), list(seeds)
    bad = [m for m in methods if m not in FIG4_METHODS]
    if bad:
        raise ValueError(f"unknown Fig. 4 method(s) {bad}; choose from {list(FIG4_METHODS)}")
    for s in support:
        if not isinstance(s, int) or not 1 <= s <= 15:
            raise ValueError(f"support sizes must be integers 1-15 (the query set is the last 5 of 20), got {s!r}")
    out, dev = Path(out), resolve_device(device)
    todo = [(m, s, k) for k in seeds for s in support for m in methods]
    bar = progress(total=len(todo), enabled=show_progress, desc="fig 4", unit="curve")
    try:
        for method, size, seed in todo:
            protocol = {"n_support": size}
            data = loader(DATASET, seed=seed, protocol=protocol)
            _cached(out / slug(method) / f"s{size}" / f"seed{seed}.json", fig4_key(method, size, seed, budget, data),
                    lambda m=method, d=data, k=seed: {**_fig4_cell(m, d, k, budget, dev),
                                                      "provenance": _provenance(dev, d, budget)},
                    {"method": method, "support": size, "seed": seed})
            bar.update(1)
    finally:
        bar.close()
    return load_fig4(out)["testing"]


def load_fig4(folder: str | Path = Path("results") / "fig4") -> dict[str, pd.DataFrame]:
    """Every stored Fig. 4 curve under ``folder``: ``{"training": method, support, seed, epoch, MAE;
    "testing": method, support, seed, step, group, MAE; "runs": method, support, seed, best_epoch, diverged}``."""
    folder = Path(folder)
    paths = sorted(folder.glob("*/s*/seed*.json"))
    if not paths:
        raise FileNotFoundError(f"no Fig. 4 curves (<method>/s<support>/seed<k>.json) under {folder}; "
                                "compute them with `python -m mamo_lite reproduce fig4`")
    training, testing, runs = [], [], []
    for path in paths:
        c = json.loads(path.read_text(encoding="utf-8"))
        key = {"method": c["method"], "support": c["support"], "seed": c["seed"]}
        training += [{**key, "epoch": r["epoch"], "MAE": r["value"]} for r in c["training"]]
        testing += [{**key, **r} for r in c["testing"]]
        runs.append({**key, **{k: c["info"].get(k) for k in ("best_epoch", "diverged", "seconds", "epochs")}})
    return {"training": pd.DataFrame(training), "testing": pd.DataFrame(testing), "runs": pd.DataFrame(runs)}
