"""Reading ``results/`` back: Table 1 as mean ± std over seeds, the best row per column, paired intervals.

:mod:`mamo_lite.reproduce` writes one JSON file per (row, dataset, seed) cell; the functions here gather
them (:func:`load_cells`), summarise them like the paper's Table 1 (:func:`table`, :func:`best_rows`) and
compare two rows on the same test users with a paired bootstrap (:func:`paired_interval`), which is
what a claim such as "MAML beats MAMO on C-W" needs: the test users are shared, so the per-user
differences carry the comparison, not the two means' separate spreads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mamo_lite.evaluate import summarise

__all__ = ["PAPER_NAMES", "Cells", "best_rows", "coverage", "intervals", "load_cells", "paired_interval", "ranks",
           "side_by_side", "table", "targets"]

LOWER_IS_BETTER = {"MAE": True, "RMSE": True, "NDCG@3": False}

PAPER_NAMES: dict[str, str] = {"MeLU": "MeLU", "MetaCS-DNN": "MetaCS-DNN", "s²Meta": "s2Meta",
                               "RUM (item)": "Item-level RUM", "RUM (feature)": "Feature-level RUM", "MAMO": "MAMO"}
"""Our Table-1 row → the paper's row label in :func:`mamo_lite.evaluate.paper_table1` (the rows it printed)."""

SCENARIOS_ALL: tuple[str, ...] = ("W-W", "W-C", "C-W", "C-C", "all")


@dataclass
class Cells:
    """Everything ``results/table1`` holds, as three tidy frames."""

    metrics: pd.DataFrame  # method, dataset, scenario, metric, seed, value, n (+ counts)
    per_user: pd.DataFrame  # method, dataset, seed, user, MAE, NDCG@3
    runs: pd.DataFrame  # method, dataset, seed, best_epoch, epochs_run, diverged, seconds, chosen


def load_cells(folder: str | Path) -> Cells:
    """Read every ``<dataset>/<row>/seed<k>.json`` below ``folder`` (as :func:`mamo_lite.reproduce.table1` writes)."""
    folder = Path(folder)
    paths = sorted(folder.glob("*/*/seed*.json"))
    if not paths:
        raise FileNotFoundError(f"no result cells (<dataset>/<row>/seed<k>.json) under {folder}; "
                                "compute them with `python -m mamo_lite reproduce table1`")
    metrics, users, runs = [], [], []
    for path in paths:
        cell = json.loads(path.read_text(encoding="utf-8"))
        key = {"method": cell["row"], "dataset": cell["dataset"], "seed": cell["seed"]}
        metrics += cell["rows"]
        per_user = cell.get("per_user") or {}
        if per_user:
            users.append(pd.DataFrame(per_user).assign(**key))
        info = cell.get("info", {})
        runs.append({**key, **{k: info.get(k) for k in ("best_epoch", "epochs_run", "diverged", "seconds")},
                     "chosen": json.dumps(info.get("chosen") or {}, sort_keys=True)})
    per_user_df = pd.concat(users, ignore_index=True) if users else pd.DataFrame(
        columns=["user", "MAE", "NDCG@3", "method", "dataset", "seed"])
    return Cells(pd.DataFrame(metrics), per_user_df, pd.DataFrame(runs))


def table(metrics: pd.DataFrame, *, which: tuple[str, ...] = ("MAE", "NDCG@3"), digits: int = 3,
          scenarios: tuple[str, ...] = ("W-W", "W-C", "C-W", "C-C")) -> pd.DataFrame:
    """Table 1's layout: rows = methods, columns = (dataset, scenario, metric), cells ``mean ± std`` over seeds."""
    shown = metrics[metrics["metric"].isin(which) & metrics["scenario"].isin(scenarios)]
    return summarise(shown[["method", "dataset", "scenario", "metric", "seed", "value"]], digits=digits)


def best_rows(metrics: pd.DataFrame, *, exclude: tuple[str, ...] = (), complete_only: bool = True) -> pd.DataFrame:
    """Per (dataset, scenario, metric): the row with the best mean over seeds (lowest MAE/RMSE, highest NDCG).

    With ``complete_only`` (default) a row competes only where it has every seed the dataset's other
    rows have: a method that diverged in some seeds has no number for them, and the mean of its
    surviving seeds is not comparable (MetaCS-DNN's published λ survives 1 seed of 5 on MovieLens).
    """
    df = metrics[~metrics["method"].isin(exclude) & metrics["metric"].isin(LOWER_IS_BETTER)]
    if complete_only and not df.empty:
        seeds = df.groupby(["dataset", "method"])["seed"].nunique()
        full = seeds[seeds == seeds.groupby(level="dataset").transform("max")].index
        df = df.set_index(["dataset", "method"]).loc[lambda d: d.index.isin(full)].reset_index()
    means = df.groupby(["dataset", "scenario", "metric", "method"], sort=False)["value"].mean().reset_index()
    out = []
    for (dataset, scenario, metric), group in means.groupby(["dataset", "scenario", "metric"], sort=False):
        pick = group["value"].idxmin() if LOWER_IS_BETTER[metric] else group["value"].idxmax()
        out.append({"dataset": dataset, "scenario": scenario, "metric": metric,
                    "best": group.loc[pick, "method"], "value": group.loc[pick, "value"]})
    return pd.DataFrame(out)


def paired_interval(per_user: pd.DataFrame, a: str, b: str, metric: str, dataset: str, *,
                    confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> dict:
    """Mean per-user difference ``a − b`` of ``metric`` on shared test users, with a bootstrap interval.

    The units are (seed, user) pairs that both rows scored: each seed's split has its own test users,
    and within a seed both rows predicted the same users, so the difference is paired. The interval is
    ``scipy.stats.bootstrap`` (BCa) of the mean difference over those units. For MAE a negative
    difference means ``a`` is better; for NDCG@3 a positive one. When every unit's difference is the
    same number (e.g. two per-user constants ranked alike), there is no interval: ``low`` and
    ``high`` are NaN.
    """
    from scipy.stats import bootstrap

    sel = per_user[(per_user["dataset"] == dataset) & per_user["method"].isin([a, b])]
    wide = sel.pivot_table(index=["seed", "user"], columns="method", values=metric)
    if a not in wide or b not in wide:
        raise ValueError(f"{dataset}: no per-user {metric} for {a!r} and {b!r} together")
    diff = (wide[a] - wide[b]).dropna().to_numpy()
    if len(diff) < 2:
        raise ValueError(f"{dataset}: fewer than two shared users for {a!r} and {b!r}")
    if np.ptp(diff) == 0:  # every unit differs by the same number (two constants): nothing to resample
        low = high = float("nan")
    else:
        res = bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
                        random_state=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"a": a, "b": b, "dataset": dataset, "metric": metric, "mean_difference": float(diff.mean()),
            "low": low, "high": high,
            "units": len(diff), "seeds": int(sel["seed"].nunique())}


def _seed_counts(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics.groupby(["dataset", "method"], sort=False)["seed"].nunique()


def coverage(cells: Cells, seeds: int = 5) -> pd.DataFrame:
    """Which cells exist: per row (index) and dataset (columns), ``"k/N"`` seeds with numbers, then
    ``", d diverged"`` for seeds whose run diverged (they have no numbers) — "" when nothing was run."""
    runs = cells.runs
    out = {}
    for dataset in dict.fromkeys(runs["dataset"]):
        col = {}
        for method in dict.fromkeys(runs["method"]):
            r = runs[(runs["dataset"] == dataset) & (runs["method"] == method)]
            if r.empty:
                col[method] = ""
                continue
            bad = int(r["diverged"].notna().sum())
            col[method] = f"{len(r) - bad}/{seeds}" + (f", {bad} diverged" if bad else "")
        out[dataset] = col
    return pd.DataFrame(out)


def side_by_side(metrics: pd.DataFrame, dataset: str, metric: str = "MAE", *, paper: pd.DataFrame | None = None,
                 digits: int = 3, scenarios: tuple[str, ...] = SCENARIOS_ALL, seeds: int = 5,
                 order: list[str] | None = None) -> pd.DataFrame:
    """One dataset's ``metric`` in Table 1's layout with the paper's printed value beside ours.

    Rows: our methods (order of appearance). Columns per scenario: ``ours`` (``mean ± std`` over seeds,
    ``*`` marking the best row of the column among the rows that have every seed, see :func:`best_rows`)
    and, where ``paper`` (:func:`mamo_lite.evaluate.paper_table1`) has the row (:data:`PAPER_NAMES`),
    ``paper``; then ``spread`` (the within-user spread of the predictions, mean over seeds: ≈ 0 means a
    collapsed model) and ``seeds`` (``k/N``: a row with fewer seeds has diverged or is still running).
    ``order``: the rows first in this order (e.g. ``list(mamo_lite.reproduce.ROWS)``), others after.
    """
    m = metrics[metrics["dataset"] == dataset]
    if m.empty:
        raise ValueError(f"no results for dataset {dataset!r}; have {sorted(metrics['dataset'].unique())}")
    shown = m[(m["metric"] == metric) & m["scenario"].isin(scenarios)]
    stats = shown.groupby(["method", "scenario"], sort=False)["value"].agg(["mean", "std"])
    best = best_rows(m[m["metric"] == metric])
    best = {r.scenario: r.best for r in best.itertuples()}
    methods = list(dict.fromkeys(m["method"]))
    if order is not None:
        methods = [x for x in order if x in methods] + [x for x in methods if x not in order]
    lookup = {}
    if paper is not None:
        p = paper[(paper["dataset"] == dataset) & (paper["metric"] == metric)]
        lookup = {(r.method, r.scenario): r.value for r in p.itertuples()}
    counts = _seed_counts(m)
    spread = m[m["metric"] == "spread"].groupby("method")["value"].mean()
    rows = {}
    for method in methods:
        row = {}
        for sc in scenarios:
            if (method, sc) in stats.index:
                mu, sd = stats.loc[(method, sc)]
                text = f"{mu:.{digits}f}" + ("" if pd.isna(sd) else f" ± {sd:.{digits}f}")
                row[(sc, "ours")] = text + (" *" if best.get(sc) == method else "")
            else:
                row[(sc, "ours")] = ""
            if lookup:
                v = lookup.get((PAPER_NAMES.get(method, ""), sc))
                row[(sc, "paper")] = "" if v is None else f"{v:.{digits}f}"
        row[("spread", "")] = f"{spread[method]:.{digits}f}" if method in spread.index else ""
        row[("seeds", "")] = f"{counts.get((dataset, method), 0)}/{seeds}"
        rows[method] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["scenario", ""])
    out.index.name = "method"
    return out


def targets(metrics: pd.DataFrame, paper: pd.DataFrame, dataset: str, *, metric: str = "MAE",
            scenarios: tuple[str, ...] = ("W-W", "W-C", "C-W", "C-C")) -> pd.DataFrame:
    """Per scenario: the paper's best printed entry, our best row (every seed present) and whether
    ours is at least as good (``met``). The issue's target: our best at or below the paper's best MAE."""
    lower = LOWER_IS_BETTER[metric]
    ours = best_rows(metrics[(metrics["dataset"] == dataset) & (metrics["metric"] == metric)])
    ours = ours.set_index("scenario")
    p = paper[(paper["dataset"] == dataset) & (paper["metric"] == metric)]
    out = []
    for sc in scenarios:
        ps = p[p["scenario"] == sc]
        pick = ps.loc[ps["value"].idxmin() if lower else ps["value"].idxmax()]
        if sc not in ours.index:
            continue
        mine = ours.loc[sc]
        sel = metrics[(metrics["dataset"] == dataset) & (metrics["metric"] == metric) & (metrics["scenario"] == sc)
                      & (metrics["method"] == mine["best"])]["value"]
        met = mine["value"] <= pick["value"] if lower else mine["value"] >= pick["value"]
        out.append({"scenario": sc, "paper best": pick["method"], "paper": pick["value"], "our best": mine["best"],
                    "ours": mine["value"], "std": sel.std(), "met": bool(met)})
    return pd.DataFrame(out).set_index("scenario")


def intervals(per_user: pd.DataFrame, dataset: str, reference: str, others: list[str], *,
              metrics: tuple[str, ...] = ("MAE", "NDCG@3"), confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """:func:`paired_interval` of ``reference`` against each of ``others``, one row per (other, metric).

    Columns: ``other, metric, difference`` (reference − other, mean over shared (seed, user) units),
    ``low, high`` (the BCa interval), ``units``, ``seeds`` and ``verdict``: "reference better",
    "other better", "no difference shown" (the interval contains 0) or, when every per-user difference
    is the same number (two constant predictors), "no interval (every difference equal)".
    """
    rows = []
    for other in others:
        for metric in metrics:
            r = paired_interval(per_user, reference, other, metric, dataset, confidence=confidence, seed=seed)
            lower = LOWER_IS_BETTER[metric]
            if not (np.isfinite(r["low"]) and np.isfinite(r["high"])):
                verdict = "no interval (every difference equal)"
            elif r["low"] <= 0 <= r["high"]:
                verdict = "no difference shown"
            elif (r["high"] < 0) == lower:
                verdict = "reference better"
            else:
                verdict = "other better"
            rows.append({"other": other, "metric": metric, "difference": r["mean_difference"], "low": r["low"],
                         "high": r["high"], "units": r["units"], "seeds": r["seeds"], "verdict": verdict})
    return pd.DataFrame(rows)


def ranks(metrics: pd.DataFrame, dataset: str, metric: str = "MAE", *,
          scenarios: tuple[str, ...] = SCENARIOS_ALL) -> pd.DataFrame:
    """Rank of every row per scenario by its mean over seeds (1 = best), among the rows with every seed.

    Rows that lack a seed (diverged or unfinished) are left out, as in :func:`best_rows`. Ties share the
    lower rank. Index: method; columns: scenarios; values: ``Int64`` ranks.
    """
    m = metrics[(metrics["dataset"] == dataset) & (metrics["metric"] == metric) & metrics["scenario"].isin(scenarios)]
    counts = m.groupby("method")["seed"].nunique()
    m = m[m["method"].isin(counts[counts == counts.max()].index)]
    means = m.groupby(["method", "scenario"])["value"].mean().unstack("scenario")
    out = means.rank(ascending=LOWER_IS_BETTER[metric], method="min").astype("Int64")
    return out.reindex(columns=[s for s in scenarios if s in out.columns])
