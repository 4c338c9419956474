"""Evaluation tables: predictions in, tidy per-scenario metrics out (MAMO §3.1.4, Eqs. 13–15, A.2.3).

Evaluation is method-agnostic: it takes the query predictions ``pred[B, Q]`` of any method together
with the :class:`~mamo_lite.data.tasks.TaskBatch` they belong to, and never imports a model or the
training engine. Everything downstream (tables, plots, the comparison with the paper) reads one tidy
format, one row per number (STYLE lesson 4):

    method, dataset, scenario, metric, seed, value, n, ratings, users

``scenario`` is one of ``W-W, W-C, C-W, C-C`` (:data:`~mamo_lite.data.tasks.SCENARIOS`) or ``all``;
``metric`` is ``MAE``, ``RMSE`` or ``NDCG@k``. Three counts say what a value rests on:

* ``n``: how many things the value averages, whose unit depends on the row: ratings for the pooled
  per-scenario MAE/RMSE, NDCG clips for the per-scenario NDCG, users for the ``all`` rows (Eqs.
  13–14 average per user), see :func:`mamo_lite.metrics.aggregate`;
* ``ratings``: the query ratings of the scenario (for ``all``: every query rating), the same in
  every metric's row;
* ``users``: the users with at least one of those ratings.

Tables meant for reading (:func:`scenario_table`, the command line) show ``ratings`` and ``users``,
whose meaning does not change from row to row.

Predictions are **clipped** to the rating scale before any metric (a regression head may overshoot
1–5), and **not rounded**.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import pandas as pd
import torch
from torch import Tensor

from mamo_lite.data.tasks import SCENARIOS, FeatureSpec, TaskBatch
from mamo_lite.metrics import aggregate, mae, ndcg_at_k, rmse

COLUMNS: tuple[str, ...] = ("method", "dataset", "scenario", "metric", "seed", "value", "n", "ratings", "users")
"""Columns of every tidy metrics table, in order (extra columns follow)."""

ALL = "all"
"""Scenario label of the rows computed over every query rating."""

RatingRange = tuple[float, float] | FeatureSpec | None


def clip_predictions(pred: Tensor, rating_range: RatingRange) -> Tensor:
    """Clamp ``pred`` to ``[rating_min, rating_max]`` (no rounding); ``None`` leaves it unchanged.

    ``rating_range`` is a ``(min, max)`` pair or a :class:`~mamo_lite.data.tasks.FeatureSpec` (its ``rating_min/max``).
    """
    if rating_range is None:
        return pred
    if isinstance(rating_range, FeatureSpec):
        lo, hi = rating_range.rating_min, rating_range.rating_max
    else:
        lo, hi = rating_range
    if lo > hi:
        raise ValueError(f"rating_range must be (min, max) with min ≤ max, got {(lo, hi)}")
    return pred.clamp(float(lo), float(hi))


def _prepare(pred: Tensor, batch: TaskBatch, rating_range: RatingRange) -> tuple[Tensor, Tensor, Tensor]:
    if tuple(pred.shape) != tuple(batch.query_y.shape):
        raise ValueError(f"pred shape {tuple(pred.shape)} != query shape {tuple(batch.query_y.shape)}")
    pred = clip_predictions(pred.detach().to("cpu", torch.float64), rating_range)
    y = batch.query_y.detach().to("cpu", torch.float64)
    return pred, y, batch.query_mask.detach().cpu().to(torch.bool)


def pooled_errors(pred: Tensor, batch: TaskBatch, rating_range: RatingRange) -> dict[str, float]:
    """MAE and RMSE pooled over ``batch``'s real query ratings, predictions clipped to the scale first.

    What best-epoch selection reads on the validation users (:func:`mamo_lite.train.fit` and the
    trained baselines' :func:`mamo_lite.methods.baselines.fit_baseline`).
    """
    p = clip_predictions(pred.detach().cpu(), rating_range)
    y, mask = batch.query_y.detach().cpu(), batch.query_mask.detach().cpu()
    return {m: aggregate(m, p, y, mask, average="rating").value for m in ("MAE", "RMSE")}


def scenario_metrics(pred: Tensor, batch: TaskBatch, *, method: str, dataset: str, seed: int,
                     rating_range: RatingRange, k: int = 3, clip: int = 5,
                     average: Literal["paper", "rating", "user"] = "paper", ndcg_min_items: int = 2,
                     extra: Mapping[str, object] | None = None) -> pd.DataFrame:
    """MAE, RMSE and NDCG@k per cold-start scenario and over all query ratings, as a tidy table.

    Args:
        pred: query predictions ``[B, Q]`` aligned with ``batch.query_y`` (any device, any float).
        batch: the evaluated users; ``query_mask`` selects real ratings and ``query_scenario``
            labels each one W-W, W-C, C-W or C-C (§3.1.4, A.2.3).
        method, dataset, seed: copied into every row.
        rating_range: ``(min, max)`` or a ``FeatureSpec``: predictions are clipped to it first, never
            rounded. Required so that no caller forgets it; pass ``None`` to evaluate raw outputs.
        k: NDCG cut-off (the paper's NDCG@3). clip: the clip length of A.2.3 (default 5, the query
            size; see :func:`mamo_lite.metrics.ndcg_clips`).
        average: how values are averaged.

            * ``"paper"`` (default): the ``all`` rows follow Eqs. 13–14 (per-user value, then the
              mean over users); the scenario rows follow appendix A.2.3 (MAE/RMSE pooled over the
              scenario's ratings, NDCG the mean over clips).
            * ``"user"``: per user everywhere. Inside a scenario a user counts for MAE/RMSE when
              they have ≥ 1 rating in it, for NDCG when they have ≥ ``ndcg_min_items`` (default 2:
              a single item scores 1 whatever the model predicts). ``all`` is Eqs. 13–14.
            * ``"rating"``: pooled ratings / clips everywhere, ``all`` included.
        extra: more constant columns (e.g. ``{"preset": "small"}``), appended after ``users``.

    Returns:
        Columns :data:`COLUMNS` (+ ``extra``): one row per (scenario, metric); scenarios in the
        order W-W, W-C, C-W, C-C, all; metrics MAE, RMSE, NDCG@k. A scenario without ratings has
        no rows (not NaN rows); a scenario with fewer than ``k`` ratings under clip averaging has
        MAE/RMSE rows but no NDCG row.
    """
    if average not in ("paper", "rating", "user"):
        raise ValueError(f"average must be 'paper', 'rating' or 'user', got {average!r}")
    extra = dict(extra or {})
    clash = set(extra) & set(COLUMNS)
    if clash:
        raise ValueError(f"extra columns {sorted(clash)} clash with the standard columns")
    p, y, mask = _prepare(pred, batch, rating_range)
    scenario = batch.query_scenario.detach().cpu()

    groups = [(name, mask & (scenario == i)) for i, name in enumerate(SCENARIOS)] + [(ALL, mask)]
    rows = []
    for name, sel in groups:
        if not bool(sel.any()):
            continue
        ratings, users = int(sel.sum()), int(sel.any(-1).sum())
        if average == "paper":
            how = "user" if name == ALL else "rating"
        else:
            how = average
        for metric in ("MAE", "RMSE", "NDCG"):
            min_items = ndcg_min_items if (metric == "NDCG" and name != ALL) else 1
            agg = aggregate(metric, p, y, sel, average=how, k=k, clip=clip, min_items=min_items)
            if agg.n == 0:
                continue
            label = f"NDCG@{k}" if metric == "NDCG" else metric
            rows.append({"method": method, "dataset": dataset, "scenario": name, "metric": label,
                         "seed": seed, "value": agg.value, "n": agg.n, "ratings": ratings,
                         "users": users, **extra})
    df = pd.DataFrame(rows, columns=[*COLUMNS, *extra])
    return df.astype({"value": "float64", "n": "int64", "ratings": "int64", "users": "int64"})


def per_user_metrics(pred: Tensor, batch: TaskBatch, *, rating_range: RatingRange,
                     k: int = 3) -> pd.DataFrame:
    """One row per user: ``user, user_cold, MAE, RMSE, NDCG@k, n`` (n = valid query ratings).

    Per-user values are the inner terms of Eqs. 13–14 (see :mod:`mamo_lite.metrics`), computed on
    clipped predictions, as for :func:`scenario_metrics`. Meant for plots (distributions, warm vs
    cold users); users with no valid query rating have NaN metrics.
    """
    p, y, mask = _prepare(pred, batch, rating_range)
    return pd.DataFrame({
        "user": batch.user_ids.detach().cpu().numpy().copy(),
        "user_cold": batch.user_cold.detach().cpu().numpy().copy(),
        "MAE": mae(p, y, mask).numpy(),
        "RMSE": rmse(p, y, mask).numpy(),
        f"NDCG@{k}": ndcg_at_k(p, y, mask, k=k).numpy(),
        "n": mask.sum(-1).numpy().astype("int64"),
    })


def scenario_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One run's tidy metrics as a wide table: a row per scenario (W-W, W-C, C-W, C-C, all), a column
    per metric (MAE, RMSE, NDCG@k), then ``ratings`` (the query ratings scored in that row) and
    ``users`` (the users they belong to). Both counts mean the same in every row, ``all`` included.

    Every scenario gets a row: one with no ratings among the evaluated users (absent from the tidy
    table) shows ``ratings = 0`` and NaN metrics, so it can be told apart from a scenario that was
    dropped.

    Why the ``all`` NDCG can lie below every scenario's: the ``all`` row ranks each user's whole query
    set (5 items) at cut-off 3 (Eqs. 14–15), a scenario row ranks only that scenario's items of a user
    (appendix A.2.3), usually 2 or 3 of them, and NDCG@3 over 3 items or fewer is high even for a
    poor ranking. The two are different measurements, not an average and its parts.
    """
    one = metrics[["scenario", "metric", "value"]].drop_duplicates(["scenario", "metric"])
    wide = one.pivot(index="scenario", columns="metric", values="value")
    metric_cols = [c for c in ("MAE", "RMSE") if c in wide.columns] + sorted(c for c in wide.columns
                                                                           if c.startswith("NDCG"))
    order = [*SCENARIOS, ALL]
    counts = metrics.drop_duplicates("scenario").set_index("scenario")[["ratings", "users"]]
    table = wide.reindex(index=order, columns=metric_cols)
    for col in ("ratings", "users"):
        table[col] = counts[col].reindex(order).fillna(0).astype("int64")
    table.index.name = "scenario"
    return table


def _ordered(values: pd.Series, first: tuple[str, ...] = ()) -> list:
    seen = list(dict.fromkeys(values))
    return [v for v in first if v in seen] + [v for v in seen if v not in first]


def summarise(df: pd.DataFrame, *, digits: int | None = 4) -> pd.DataFrame:
    """Mean ± standard deviation over seeds, wide: rows ``method``, columns (dataset, scenario, metric).

    Rows and datasets keep their order of first appearance in ``df``; scenarios are ordered
    W-W, W-C, C-W, C-C, all and metrics MAE, RMSE, then NDCG. The std is the sample std (ddof=1)
    over seeds. Rows must be unique per (method, dataset, scenario, metric, seed).

    With ``digits`` (default 4) the cells are strings ``"0.8725 ± 0.0123"`` (just ``"0.8725"``
    when there is a single seed, e.g. the paper's values); with ``digits=None`` the frame is numeric
    with a fourth column level ``mean, std, seeds``.
    """
    keys = ["method", "dataset", "scenario", "metric"]
    if df.duplicated([*keys, "seed"]).any():
        raise ValueError("several rows share (method, dataset, scenario, metric, seed): runs that differ "
                         "in another column (preset, variant…) must be told apart in `method` first")
    stats = (df.groupby(keys, sort=False)["value"]
             .agg(mean="mean", std="std", seeds="count").reset_index())
    wide = stats.pivot(index="method", columns=["dataset", "scenario", "metric"],
                       values=["mean", "std", "seeds"])
    wide = wide.reorder_levels([1, 2, 3, 0], axis=1)
    datasets = _ordered(df["dataset"])
    scenarios = _ordered(df["scenario"], (*SCENARIOS, ALL))
    metrics = _ordered(df["metric"], ("MAE", "RMSE"))
    cols = [(d, s, m, st) for d in datasets for s in scenarios for m in metrics
            for st in ("mean", "std", "seeds") if (d, s, m, st) in wide.columns]
    wide = wide.reindex(index=_ordered(df["method"]), columns=pd.MultiIndex.from_tuples(cols))
    wide.columns.names = ["dataset", "scenario", "metric", "stat"]
    wide.index.name = "method"
    if digits is None:
        seeds = [c for c in wide.columns if c[3] == "seeds"]
        return wide.astype(dict.fromkeys(seeds, "Int64"))

    def fmt(mean: float, std: float) -> str:
        if pd.isna(mean):
            return ""
        return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    cells = {col[:3]: [fmt(mu, sd) for mu, sd in zip(wide[(*col[:3], "mean")], wide[(*col[:3], "std")],
                                                     strict=True)]
             for col in cols if col[3] == "mean"}
    out = pd.DataFrame(cells, index=wide.index)
    out.columns = pd.MultiIndex.from_tuples(list(cells), names=["dataset", "scenario", "metric"])
    return out


def ndcg_variants(pred: Tensor, batch: TaskBatch, *, rating_range: RatingRange, k: int = 3,
                  clips: tuple[int, ...] = (5, 10, 20, 50), scenarios: tuple[str, ...] = (*SCENARIOS, ALL)
                  ) -> pd.DataFrame:
    """NDCG@k of one set of predictions computed every way the paper's text allows (A.2.3 leaves it open).

    The paper's per-scenario NDCG pools a scenario's (prediction, rating) pairs, cuts them into clips
    and averages NDCG over the clips; it gives neither the clip length, nor the gain (Eq. 15 reads
    ``2^rel − 1``; ``rel`` itself is common), nor how tied predictions are ranked, and the authors'
    released ``utils.ndcg`` (never called) re-sorts the true ratings of the predicted top k before
    discounting. This evaluates each combination: ``average`` ∈ {``user`` (Eq. 14: per user, users
    with ≥ 2 items in the scenario), ``clip=c`` for each ``c`` in ``clips``}, ``gain`` ∈
    {exponential, linear}, ``ties`` ∈ {position, optimistic, pessimistic}, ``top`` ∈ {ranked,
    sorted}. Returns tidy rows ``scenario, average, gain, ties, top, NDCG, n``. Predictions are
    clipped to ``rating_range`` first, as everywhere.
    """
    p, y, mask = _prepare(pred, batch, rating_range)
    scenario = batch.query_scenario.detach().cpu()
    rows = []
    for name in scenarios:
        sel = mask if name == ALL else mask & (scenario == SCENARIOS.index(name))
        if not bool(sel.any()):
            continue
        for gain in ("exponential", "linear"):
            for ties in ("position", "optimistic", "pessimistic"):
                for top in ("ranked", "sorted"):
                    how = {"gain": gain, "ties": ties, "top": top}
                    agg = aggregate("NDCG", p, y, sel, average="user", k=k, min_items=2, **how)
                    rows.append({"scenario": name, "average": "user", **how, "NDCG": agg.value, "n": agg.n})
                    for c in clips:
                        agg = aggregate("NDCG", p, y, sel, average="rating", k=k, clip=c, **how)
                        rows.append({"scenario": name, "average": f"clip={c}", **how, "NDCG": agg.value,
                                     "n": agg.n})
    return pd.DataFrame(rows, columns=["scenario", "average", "gain", "ties", "top", "NDCG", "n"])


# MAMO Table 1 (KDD 2020), as printed: per method, the MAE and NDCG@3 rows over
# MovieLens-1M W-W, W-C, C-W, C-C, then Book-crossing W-W, W-C, C-W, C-C.
_TABLE1: dict[str, dict[str, tuple[float, ...]]] = {
    "MeLU": {
        "MAE": (0.7661, 0.9361, 0.7884, 0.9299, 0.7799, 2.1047, 1.8701, 2.1475),
        "NDCG@3": (0.8904, 0.7990, 0.8810, 0.8011, 0.9572, 0.8441, 0.8527, 0.8410),
    },
    "MetaCS-DNN": {
        "MAE": (0.9047, 1.1694, 1.0625, 1.2012, 1.6206, 2.1457, 2.2648, 2.3088),
        "NDCG@3": (0.9090, 0.7715, 0.8559, 0.7680, 0.8860, 0.8365, 0.8202, 0.8160),
    },
    "s2Meta": {
        "MAE": (0.7567, 0.8860, 0.8443, 0.9130, 1.5147, 1.9767, 1.8738, 2.0921),
        "NDCG@3": (0.8870, 0.8323, 0.8401, 0.8148, 0.8781, 0.8463, 0.8490, 0.8422),
    },
    "Item-level RUM": {
        "MAE": (0.8874, 1.3424, 1.2655, 1.3509, 1.4611, 2.2857, 2.2608, 2.3197),
        "NDCG@3": (0.9102, 0.7692, 0.7420, 0.7680, 0.8920, 0.8265, 0.8202, 0.8160),
    },
    "Feature-level RUM": {
        "MAE": (0.8739, 1.2439, 1.2488, 1.2773, 1.3945, 2.0837, 2.0322, 2.1260),
        "NDCG@3": (0.9120, 0.7721, 0.7642, 0.7547, 0.8909, 0.8430, 0.8338, 0.8273),
    },
    "MAMO": {
        "MAE": (0.8725, 0.9306, 0.8967, 0.8894, 1.4879, 1.7379, 1.6217, 1.8188),
        "NDCG@3": (0.8866, 0.8315, 0.8799, 0.8709, 0.8879, 0.8402, 0.8565, 0.8384),
    },
}
PAPER_DATASETS: tuple[str, ...] = ("movielens-1m", "book-crossing")
"""Dataset labels used by :func:`paper_table1` (and expected of our own runs, to line up)."""


def paper_table1() -> pd.DataFrame:
    """MAMO's Table 1 (Dong et al., KDD 2020) in the tidy format: 6 methods × 2 datasets × 4 scenarios
    × {MAE, NDCG@3} = 96 rows, values exactly as printed.

    ``seed``, ``n``, ``ratings`` and ``users`` are missing (``<NA>``, nullable ``Int64``): the paper reports one number per
    cell with no seeds or counts. Concatenate with :func:`scenario_metrics` output and pass both to
    :func:`summarise` to put our numbers next to the paper's. The paper's method "s2 Meta" is
    labelled ``s2Meta`` here.
    """
    rows = []
    for method, by_metric in _TABLE1.items():
        for metric, values in by_metric.items():
            for j, value in enumerate(values):
                rows.append({"method": method, "dataset": PAPER_DATASETS[j // 4],
                             "scenario": SCENARIOS[j % 4], "metric": metric, "seed": pd.NA,
                             "value": value, "n": pd.NA, "ratings": pd.NA, "users": pd.NA})
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype({"seed": "Int64", "n": "Int64", "ratings": "Int64",
                                                            "users": "Int64", "value": "float64"})
