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

__all__ = ["Cells", "best_rows", "load_cells", "paired_interval", "table"]

LOWER_IS_BETTER = {"MAE": True, "RMSE": True, "NDCG@3": False}


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
    difference means ``a`` is better; for NDCG@3 a positive one.
    """
    from scipy.stats import bootstrap

    sel = per_user[(per_user["dataset"] == dataset) & per_user["method"].isin([a, b])]
    wide = sel.pivot_table(index=["seed", "user"], columns="method", values=metric)
    if a not in wide or b not in wide:
        raise ValueError(f"{dataset}: no per-user {metric} for {a!r} and {b!r} together")
    diff = (wide[a] - wide[b]).dropna().to_numpy()
    if len(diff) < 2:
        raise ValueError(f"{dataset}: fewer than two shared users for {a!r} and {b!r}")
    res = bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
                    random_state=np.random.default_rng(seed))
    return {"a": a, "b": b, "dataset": dataset, "metric": metric, "mean_difference": float(diff.mean()),
            "low": float(res.confidence_interval.low), "high": float(res.confidence_interval.high),
            "units": len(diff), "seeds": int(sel["seed"].nunique())}
