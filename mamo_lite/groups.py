"""Minority and majority users, from ratings alone (chapter 6: GreatMeta's imbalance, measured).

GreatMeta's abstract (Du et al. 2025) claims that uniform meta-training favours the majority
preference and hurts "minority" cold users. To test that, a user must be labelled minority or
majority by a rule that does not depend on the model under test. This module gives two model-free
profile distances, a labelling rule and the per-group summary of per-user metrics; the model-based
label (cosine of a user's meta-gradient to the population mean at a fixed checkpoint) is
:func:`mamo_lite.methods.greatmeta.minority_users`.

**Taste distance** (:func:`taste_distance`, the preference profile). A user's profile is their
mean-centred ratings on the items they rated, ``c_ui = r_ui − r̄_u``; the population's profile of item
``i`` is the mean centred rating of the *other* reference users who rated it,
``c̄_i = mean_{v ≠ u} c_vi``. The distance is the root mean square of the difference over the user's
items that someone else rated::

    d_u = sqrt( mean_{i ∈ I_u, N_i^{−u} ≥ 1} (c_ui − c̄_i^{−u})² )

Why this profile: (1) it is about *which* items a user likes more than others do, the abstract's
"preference", and not about how generous a rater they are: centring removes the user's own offset,
which one bias step of any inner loop learns; (2) it works on every dataset (Book-Crossing has no
genres, so a genre profile could not be compared across the three datasets); (3) leaving the user
out of the item means keeps a user from agreeing with themselves on items few others rated; (4) it
is in rating units and squared, like the MSE the meta-models are trained on. Missing ratings are not
filled in: a user is compared only on what they rated.

**Histogram distance** (:func:`histogram_distance`, rating-scale use). The total-variation
distance ``½ ‖h_u − h̄‖₁`` between the user's histogram over the scale's values and the mean
histogram of the reference users: a user who gives only 1s is far from a population that mostly
gives 4s, whatever the items. It measures what centring removes from the taste distance.

**Which ratings to use.** Label the users you evaluate from what is known about them when they are
evaluated, their *support* ratings, against the *training* users as the population
(:func:`profiles`'s defaults). Labels built from the query ratings that are scored would make a
gap between the groups partly tautological (a user whose query ratings are unusual is both
"minority" and hard to predict).

Per-group reporting: :func:`label_groups` turns a distance into ``majority`` / ``minority`` labels
by a quantile threshold, and :func:`group_metrics` averages
:func:`mamo_lite.evaluate.per_user_metrics` within each group (a tidy frame, one row per group and
metric, as Eq. 13 averages per user).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mamo_lite.data.dataset import ColdStartData
    from mamo_lite.data.tasks import TaskBatch

__all__ = ["GROUPS", "batch_ratings", "group_metrics", "histogram_distance", "label_groups", "profiles",
           "taste_distance", "user_profiles"]

GROUPS: tuple[str, ...] = ("majority", "minority", "unscored")
"""Group labels of :func:`label_groups`, in table order (``unscored``: no distance, e.g. no comparable item)."""

_KEYS = ("method", "dataset", "seed")


def _check_ratings(ratings: pd.DataFrame, name: str) -> None:
    if not isinstance(ratings, pd.DataFrame):  # one exception type for every bad input of this module
        raise ValueError(f"{name} must be a DataFrame with columns user, item, rating (e.g. "  # noqa: TRY004
                         f"ColdStartData.ratings), got {type(ratings).__name__}")
    missing = [c for c in ("user", "item", "rating") if c not in ratings.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}: it needs user, item and rating "
                         f"(e.g. ColdStartData.ratings or batch_ratings(batch))")
    if ratings.empty:
        raise ValueError(f"{name} has no rows: select at least one rating")


def batch_ratings(batch: TaskBatch) -> pd.DataFrame:
    """The real (masked-in) ratings of a :class:`~mamo_lite.data.tasks.TaskBatch` as a frame:
    ``user, item, rating, set`` (support rows of each user, then query rows)."""
    parts = []
    for which in ("support", "query"):
        mask = getattr(batch, f"{which}_mask").cpu()
        users = batch.user_ids.cpu().unsqueeze(1).expand_as(mask)
        parts.append(pd.DataFrame({
            "user": users[mask].numpy(), "item": getattr(batch, f"{which}_item_ids").cpu()[mask].numpy(),
            "rating": getattr(batch, f"{which}_y").cpu()[mask].double().numpy(), "set": which,
            "slot": np.nonzero(mask.numpy())[1]}))
    frame = pd.concat(parts, ignore_index=True)
    # per user: support slots, then query slots
    order = np.lexsort((frame["slot"].to_numpy(), (frame["set"] == "query").to_numpy(),
                        pd.Index(batch.user_ids.cpu().numpy()).get_indexer(frame["user"])))
    return frame.iloc[order].drop(columns="slot").reset_index(drop=True)


def taste_distance(ratings: pd.DataFrame, *, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each user's distance from the population's taste (module docstring), sorted by user.

    Args:
        ratings: the ratings that describe the users to score (``user, item, rating``).
        reference: the population's ratings (default: ``ratings`` itself). A user who is also in
            ``reference`` is left out of every item mean they would enter.

    Returns:
        ``user, taste_distance, taste_items`` (the number of the user's items compared, those rated
        by at least one other reference user); ``taste_distance`` is NaN when ``taste_items`` is 0.
    """
    _check_ratings(ratings, "ratings")
    reference = ratings if reference is None else reference
    _check_ratings(reference, "reference")
    r = ratings[["user", "item", "rating"]].astype({"rating": "float64"})
    ref = reference[["user", "item", "rating"]].astype({"rating": "float64"})
    r = r.assign(c=r["rating"] - r.groupby("user")["rating"].transform("mean"))
    ref = ref.assign(c=ref["rating"] - ref.groupby("user")["rating"].transform("mean"))
    item = ref.groupby("item")["c"].agg(["sum", "count"])
    own = ref.groupby(["user", "item"])["c"].agg(["sum", "count"])  # what each user adds to an item's mean
    key = pd.MultiIndex.from_frame(r[["user", "item"]])
    own_sum = own["sum"].reindex(key).fillna(0.0).to_numpy()
    own_n = own["count"].reindex(key).fillna(0).to_numpy()
    others_sum = item["sum"].reindex(r["item"]).fillna(0.0).to_numpy() - own_sum
    others_n = item["count"].reindex(r["item"]).fillna(0).to_numpy() - own_n
    ok = others_n >= 1
    consensus = np.divide(others_sum, others_n, out=np.zeros_like(others_sum), where=ok)
    sq = np.where(ok, (r["c"].to_numpy() - consensus) ** 2, 0.0)
    per = pd.DataFrame({"user": r["user"].to_numpy(), "sq": sq, "ok": ok}).groupby("user")[["sq", "ok"]].sum()
    n = per["ok"].astype("int64")
    dist = np.sqrt(per["sq"] / n.where(n > 0))
    return pd.DataFrame({"user": per.index.to_numpy(), "taste_distance": dist.to_numpy(dtype=float),
                         "taste_items": n.to_numpy()})


def _histograms(ratings: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
    """Users × scale values: each user's share of ratings at each value (ratings rounded to the scale)."""
    col = np.searchsorted(values, ratings["rating"].to_numpy(dtype=float).round())
    bad = (col >= len(values)) | (values[np.minimum(col, len(values) - 1)] != ratings["rating"].round().to_numpy())
    if bad.any():
        raise ValueError(f"rating {float(ratings['rating'].to_numpy()[bad][0])!r} is not on the scale values={values.tolist()}: "
                         f"pass the dataset's values (e.g. 1…5 for MovieLens, 1…10 for Book-Crossing)")
    counts = pd.crosstab(ratings["user"].to_numpy(), col).reindex(columns=range(len(values)), fill_value=0)
    return counts.div(counts.sum(axis=1), axis=0)


def _scale(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) < 2 or not np.isfinite(v).all() or (np.diff(v) <= 0).any():
        raise ValueError(f"values must be the rating scale's values in increasing order, at least two "
                         f"(e.g. range(1, 6) for MovieLens), got {list(values)!r}")
    return v


def histogram_distance(ratings: pd.DataFrame, *, values: Sequence[float],
                       reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each user's total-variation distance ``½ ‖h_u − h̄‖₁`` from the mean rating histogram (module docstring).

    Args:
        ratings: the ratings that describe the users to score (``user, item, rating``; ``item`` unused).
        values: the rating scale's values, e.g. ``range(1, 6)``; ratings are rounded to them.
        reference: the population's ratings (default: ``ratings``); ``h̄`` is the unweighted mean of
            its users' histograms (each user counts once, whatever their number of ratings).

    Returns:
        ``user, histogram_distance`` (in [0, 1]), sorted by user.
    """
    _check_ratings(ratings, "ratings")
    if reference is not None:
        _check_ratings(reference, "reference")
    v = _scale(values)
    h = _histograms(ratings, v)
    mean = (h if reference is None else _histograms(reference, v)).mean(axis=0)
    return pd.DataFrame({"user": h.index.to_numpy(), "histogram_distance": 0.5 * (h - mean).abs().sum(axis=1).to_numpy()})


def user_profiles(ratings: pd.DataFrame, *, values: Sequence[float],
                  reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Both distances and the basic counts, one row per user of ``ratings`` (sorted by user).

    Columns: ``user, n_ratings, mean_rating, taste_distance, taste_items, histogram_distance``
    (:func:`taste_distance`, :func:`histogram_distance`, with the same ``reference``).
    """
    _check_ratings(ratings, "ratings")
    basic = ratings.groupby("user")["rating"].agg(n_ratings="count", mean_rating="mean").reset_index()
    out = basic.merge(taste_distance(ratings, reference=reference), on="user")
    return out.merge(histogram_distance(ratings, values=values, reference=reference), on="user")


def profiles(data: ColdStartData, split: str = "test", *, sets: Sequence[str] = ("support",),
             reference_split: str | None = "train") -> pd.DataFrame:
    """:func:`user_profiles` of a dataset's ``split`` users from their ``sets`` ratings, against the
    ``reference_split`` users' ratings (support and query; ``None``: the scored ratings themselves).

    The defaults label test users from what is known at test time (module docstring). The scale is
    the dataset's integer values ``rating_min … rating_max``.
    """
    splits = ("train", "val", "test", "all")
    if split not in splits:
        raise ValueError(f"split must be one of {splits}, got {split!r}")
    if reference_split is not None and reference_split not in splits:
        raise ValueError(f"reference_split must be one of {splits} or None, got {reference_split!r}")
    bad = sorted(set(sets) - {"support", "query"})
    if bad or not len(sets):
        raise ValueError(f"sets must name 'support' and/or 'query', got {list(sets)!r}")
    r = data.ratings
    scored = r[r["set"].isin(list(sets))]
    if split != "all":
        scored = scored[scored["split"] == split]
    ref = None if reference_split is None else (
        r if reference_split == "all" else r[r["split"] == reference_split])
    values = np.arange(math.ceil(data.spec.rating_min), math.floor(data.spec.rating_max) + 1, dtype=float)
    return user_profiles(scored, values=values, reference=ref)


def label_groups(scores: pd.DataFrame | pd.Series, column: str | None = None, *, quantile: float = 0.2,
                 minority: Literal["high", "low"] = "high") -> pd.DataFrame:
    """Label users ``minority`` (the most extreme ``quantile`` of a score) or ``majority``.

    Args:
        scores: a frame with a ``user`` column and the score ``column`` (e.g. :func:`profiles`), or a
            Series indexed by user.
        column: the score's column of a frame (e.g. ``"taste_distance"``); ignored for a Series.
        quantile: the minority's share, in (0, 1). The threshold is the score's ``1 − quantile``
            (``minority="high"``) or ``quantile`` (``"low"``) quantile over the scored users (pandas'
            linear interpolation); users *at* the threshold count as minority.
        minority: ``"high"`` for distances (far from the population), ``"low"`` for similarities
            (e.g. the meta-gradient cosine of :func:`~mamo_lite.methods.greatmeta.minority_users`).

    Returns:
        ``user, score, group``: ``group`` one of :data:`GROUPS` (``unscored`` where the score is NaN).
    """
    if isinstance(scores, pd.Series):
        frame = pd.DataFrame({"user": scores.index.to_numpy(), "score": scores.to_numpy(dtype=float)})
    elif isinstance(scores, pd.DataFrame):
        if column is None or column not in scores.columns or "user" not in scores.columns:
            raise ValueError(f"label_groups needs a frame with a 'user' column and column= naming the score "
                             f"(one of {[c for c in scores.columns if c != 'user']}), got column={column!r}")
        frame = pd.DataFrame({"user": scores["user"].to_numpy(), "score": scores[column].to_numpy(dtype=float)})
    else:
        raise ValueError(f"scores must be a DataFrame (with column=) or a Series indexed by user, "  # noqa: TRY004
                         f"got {type(scores).__name__}")
    ok = isinstance(quantile, int | float) and not isinstance(quantile, bool) and 0.0 < quantile < 1.0
    if not ok:
        raise ValueError(f"quantile must be the minority's share, a number in (0, 1) such as 0.2, got {quantile!r}")
    if minority not in ("high", "low"):
        raise ValueError(f"minority must be 'high' (distances) or 'low' (similarities), got {minority!r}")
    if frame["user"].duplicated().any():
        raise ValueError(f"scores has several rows for user {frame['user'][frame['user'].duplicated()].iloc[0]}: "
                         f"one score per user")
    s = frame["score"]
    scored = s.notna()
    if not scored.any():
        raise ValueError("every score is NaN: nothing to label")
    if minority == "high":
        is_minority = s >= s[scored].quantile(1.0 - quantile)
    else:
        is_minority = s <= s[scored].quantile(quantile)
    frame["group"] = np.where(~scored, "unscored", np.where(is_minority, "minority", "majority"))
    return frame


def group_metrics(per_user: pd.DataFrame, groups: pd.DataFrame, *, metrics: Sequence[str] | None = None,
                  overall: bool = True) -> pd.DataFrame:
    """Per-group means of per-user metrics, tidy: one row per (``method, dataset, seed`` if present, group, metric).

    Args:
        per_user: :func:`mamo_lite.evaluate.per_user_metrics` (``user``, the metrics, ``n``), possibly
            several runs stacked with ``method``/``dataset``/``seed`` columns.
        groups: :func:`label_groups`'s frame (``user, group``); every user of ``per_user`` needs a label.
        metrics: the metric columns to summarise (default: ``MAE``, ``RMSE`` and every ``NDCG@k`` present).
        overall: add a group ``all`` (every labelled user), to read the groups against.

    Returns:
        Columns ``[method, dataset, seed,] group, metric, value, users, ratings``: ``value`` is the
        mean over the group's users with a finite value (each user counts once, as in Eq. 13),
        ``users`` how many they are, ``ratings`` their query ratings (the sum of ``n``). Groups in the
        order majority, minority, unscored, all; empty groups are left out.
    """
    for name, frame, cols in (("per_user", per_user, ("user",)), ("groups", groups, ("user", "group"))):
        if not isinstance(frame, pd.DataFrame) or any(c not in frame.columns for c in cols):
            raise ValueError(f"{name} must be a DataFrame with column(s) {list(cols)} "
                             f"({'per_user_metrics' if name == 'per_user' else 'label_groups'}'s output)")
    if groups["user"].duplicated().any():
        raise ValueError(f"groups labels user {groups['user'][groups['user'].duplicated()].iloc[0]} twice: one label per user")
    if metrics is None:
        metrics = [c for c in per_user.columns if c in ("MAE", "RMSE") or str(c).startswith("NDCG@")]
    missing = [m for m in metrics if m not in per_user.columns]
    if missing or not len(metrics):
        raise ValueError(f"metrics {missing or list(metrics)} are not columns of per_user "
                         f"({[c for c in per_user.columns if c not in ('user', 'n', *_KEYS)]})")
    label = groups.set_index("user")["group"]
    unlabelled = ~per_user["user"].isin(label.index)
    if unlabelled.any():
        raise ValueError(f"groups has no label for {int(unlabelled.sum())} user(s) of per_user (e.g. user "
                         f"{per_user['user'][unlabelled].iloc[0]}): label the users you evaluated")
    keys = [k for k in _KEYS if k in per_user.columns]
    df = per_user.assign(group=label.reindex(per_user["user"]).to_numpy())
    if overall:
        df = pd.concat([df, df.assign(group="all")], ignore_index=True)
    n = df["n"] if "n" in df.columns else pd.Series(np.nan, index=df.index)
    rows = []
    for metric in metrics:
        finite = np.isfinite(df[metric].to_numpy(dtype=float))
        part = df[finite].assign(_n=n[finite])
        agg = part.groupby([*keys, "group"], sort=False).agg(value=(metric, "mean"), users=("user", "size"),
                                                             ratings=("_n", "sum"))
        rows.append(agg.reset_index().assign(metric=metric))
    out = pd.concat(rows, ignore_index=True)
    order = {g: i for i, g in enumerate((*GROUPS, "all"))}
    out["_g"] = out["group"].map(lambda g: order.get(g, len(order)))
    out["_m"] = out["metric"].map({m: i for i, m in enumerate(metrics)})
    out = out.sort_values([*keys, "_g", "_m"], kind="stable").drop(columns=["_g", "_m"]).reset_index(drop=True)
    out["users"] = out["users"].astype("int64")
    if "n" in df.columns:
        out["ratings"] = out["ratings"].astype("int64")
    return out[[*keys, "group", "metric", "value", "users", "ratings"]]
