"""Rating and ranking metrics of MAMO's evaluation (§3.2, Eqs. 13–15; appendix A.2.3).

Every function takes padded, batched tensors: predictions ``pred`` and true ratings ``y`` of shape
``[B, Q]`` (``B`` users, ``Q`` query slots) and an optional boolean ``mask`` marking real ratings.
Masked-out slots never count: their values may be anything (padding, ``NaN``).

Two layers:

* **per user** — :func:`mae`, :func:`rmse`, :func:`ndcg_at_k` return one value per user
  (``Tensor[B]``): the inner terms of Eqs. 13 and 14. A user with no valid rating gets ``NaN``
  (there is nothing to measure); aggregation skips such users by their *count*, never by
  ``isnan``, so a ``NaN`` prediction still poisons the aggregate instead of silently vanishing.
* **aggregated** — :func:`aggregate` turns a (masked) batch into one number, either per user then
  averaged over users (``average="user"``, Eqs. 13–14 as printed) or pooled over the ratings
  (``average="rating"``, appendix A.2.3: MAE pooled over a scenario's ratings, NDCG over fixed-size
  *clips* of the concatenated ratings, :func:`ndcg_clips`).

Per-scenario selection is just a mask: ``mask & (scenario == s)``. The tidy tables built from these
numbers live in :mod:`mamo_lite.evaluate`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Average = Literal["rating", "user"]
MetricName = Literal["MAE", "RMSE", "NDCG"]
Gain = Literal["exponential", "linear"]
Ties = Literal["position", "optimistic", "pessimistic"]
Top = Literal["ranked", "sorted"]


def _mask(mask: Tensor | None, y: Tensor) -> Tensor:
    if mask is None:
        return torch.ones_like(y, dtype=torch.bool)
    if mask.shape != y.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != ratings shape {tuple(y.shape)}")
    return mask.to(torch.bool)


def _check(pred: Tensor, y: Tensor) -> None:
    if pred.shape != y.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != ratings shape {tuple(y.shape)}")


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the last dim where ``mask``; ``NaN`` where no slot is valid."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum(-1)
    return total / mask.sum(-1)  # 0 / 0 = NaN for users with no valid rating


def mae(pred: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-user mean absolute error, the inner mean of Eq. 13: ``1/|I_Q_u| Σ_i |y_ui − ŷ_ui|``.

    Returns ``Tensor[...]`` (the last dim reduced); ``NaN`` for users without a valid rating.
    """
    _check(pred, y)
    m = _mask(mask, y)
    return _masked_mean((pred - y).abs(), m)


def rmse(pred: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-user root mean squared error ``sqrt(1/|I_Q_u| Σ_i (y_ui − ŷ_ui)²)`` (not in the paper).

    Returns ``Tensor[...]``; ``NaN`` for users without a valid rating.
    """
    _check(pred, y)
    m = _mask(mask, y)
    return _masked_mean((pred - y).square(), m).sqrt()


def _rank(scores: Tensor, mask: Tensor, tiebreak: Tensor | None = None) -> Tensor:
    """Item indices by descending score: valid items first; ties by descending ``tiebreak``, then position."""
    if tiebreak is None:
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    else:  # sort by the tie-break first, then stably by score: equal scores keep the tie-break order
        first = torch.sort(tiebreak, dim=-1, descending=True, stable=True).indices
        order = first.gather(-1, torch.sort(scores.gather(-1, first), dim=-1, descending=True, stable=True).indices)
    valid_first = torch.sort(mask.gather(-1, order).to(torch.int8), dim=-1, descending=True,
                             stable=True).indices
    return order.gather(-1, valid_first)


def _dcg(scores: Tensor, gains: Tensor, mask: Tensor, k: int, tiebreak: Tensor | None = None,
         top: Top = "ranked") -> Tensor:
    """Eq. 15: ``Σ_{n=1..k} gain_n / log2(n + 1)`` over the items ranked by ``scores``.

    Masked items are ranked after every valid one and carry gain 0, so when fewer than ``k`` items
    are valid the sum simply runs over all of them. ``top="sorted"`` re-sorts the gains of the top
    ``k`` items in descending order before discounting, as MAMO's released ``utils.ndcg`` does: only
    *which* items reach the top ``k`` counts, not their order among themselves.
    """
    order = _rank(scores, mask, tiebreak)
    g = torch.where(mask, gains, torch.zeros_like(gains)).gather(-1, order)[..., :k]
    if top == "sorted":
        g = torch.sort(g, dim=-1, descending=True).values
    n = torch.arange(1, g.shape[-1] + 1, dtype=g.dtype, device=g.device)
    return (g / torch.log2(n + 1)).sum(-1)


def ndcg_at_k(pred: Tensor, y: Tensor, mask: Tensor | None = None, k: int = 3, *,
              gain: Gain = "exponential", ties: Ties = "position", top: Top = "ranked") -> Tensor:
    """Per-user graded NDCG@k, Eqs. 14–15 (the inner ratio ``DCG@k / IDCG@k``).

    * **Gain** ``2^y − 1`` of the true rating ``y``; **discount** ``log2(n + 1)`` for rank
      ``n = 1..k``. DCG sums over the ``k`` items with the highest *predicted* score, IDCG over the
      ``k`` items with the highest *true* rating (the best achievable DCG).
    * **Ties** in the prediction are broken by position in the query set (a stable sort: the
      earlier item ranks higher). Deterministic, but neither optimistic nor pessimistic; a model
      that predicts a constant gets the DCG of the query set's own (time) order.
    * **Masked** items are never ranked. **k larger than the number of valid items**: the sums run
      over all valid items (for a user with ``m ≤ k`` items only their order matters).
    * A user with valid items but **IDCG = 0** (every gain zero — impossible with ratings ≥ 1, but
      possible with 0-based labels) gets **1.0**: DCG = IDCG = 0, so every ranking is ideal.
      (scikit-learn's ``ndcg_score`` returns 0 in that case.) A user with **no** valid item gets
      ``NaN``. A ``NaN`` among a user's valid predictions makes that user's value ``NaN``.

    Gains assume ratings ≥ 0. Returns ``Tensor[...]`` (the last dim reduced), in the promoted
    floating dtype of ``pred`` (at least float32).

    Variants, for finding out how the paper computed its numbers (it does not say): ``gain="linear"``
    uses the rating itself as the gain (Eq. 15 with ``rel = y``), which compresses the differences
    between ratings and raises every NDCG; ``ties="optimistic"`` / ``"pessimistic"`` break ties in the
    prediction by the true rating, best / worst first (a constant predictor then scores 1 / its worst);
    ``top="sorted"`` ignores the order *within* the predicted top ``k`` (MAMO's released ``utils.ndcg``
    re-sorts those items' true ratings before discounting), which raises every NDCG below 1.
    """
    _check(pred, y)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if gain not in ("exponential", "linear"):
        raise ValueError(f"gain must be 'exponential' or 'linear', got {gain!r}")
    if ties not in ("position", "optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'position', 'optimistic' or 'pessimistic', got {ties!r}")
    if top not in ("ranked", "sorted"):
        raise ValueError(f"top must be 'ranked' or 'sorted', got {top!r}")
    m = _mask(mask, y)
    dtype = torch.promote_types(pred.dtype, torch.float32)
    pred, y = pred.to(dtype), y.to(dtype)
    gains = torch.pow(2.0, y) - 1.0 if gain == "exponential" else y.clone()
    tiebreak = None if ties == "position" else (y if ties == "optimistic" else -y)
    dcg = _dcg(pred, gains, m, k, tiebreak, top)
    idcg = _dcg(y, gains, m, k)
    out = torch.where(idcg > 0, dcg / torch.where(idcg > 0, idcg, torch.ones_like(idcg)),
                      torch.ones_like(dcg))
    n_valid = m.sum(-1)
    nan = torch.full_like(out, math.nan)
    out = torch.where(n_valid > 0, out, nan)
    bad_pred = (torch.isnan(pred) & m).any(-1)
    return torch.where(bad_pred, nan, out)


def pool(pred: Tensor, y: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Concatenate the valid ``(prediction, rating)`` pairs of all users into two flat tensors.

    Deterministic order: user order of the batch, then position in the query set (row-major), the
    "concatenate the results" step of appendix A.2.3.
    """
    _check(pred, y)
    m = _mask(mask, y)
    return pred[m], y[m]


def ndcg_clips(pred: Tensor, y: Tensor, mask: Tensor | None = None, *, k: int = 3,
               clip: int = 5, gain: Gain = "exponential", ties: Ties = "position", top: Top = "ranked") -> Tensor:
    """Per-clip NDCG@k of appendix A.2.3 (the paper's per-scenario NDCG); returns ``Tensor[n_clips]``.

    The valid pairs are concatenated over users (:func:`pool`: batch order, then query position),
    cut into consecutive clips of ``clip`` items, and NDCG@k (:func:`ndcg_at_k`) is computed on each
    clip as if it were one query set; the paper then averages over the clips.

    * **Default** ``clip = 5``: MAMO's query size, so a clip is as large as one user's query set and
      NDCG@3 over a clip is on the same footing as the per-user value of Eq. 14. (The paper does not
      give its clip length.)
    * **The last, shorter clip** is kept only if it holds at least ``k`` items: a clip of fewer than
      ``k`` items fills no top-k and a one-item clip scores 1 whatever the model predicts. Only that
      one clip is affected, so the choice barely moves the mean. ``clip < k`` is rejected.
    * A clip mixes items of different users (consecutive users share clips), so it also rewards
      ranking *users* by their rating level, not only items within a user; compare with
      ``aggregate("NDCG", ..., average="user")``. When every user has exactly ``clip`` valid
      items (MAMO's fixed 5-item queries, ``clip=5``) the clips *are* the users and the two
      averages coincide; they part inside a scenario, where users contribute 1–5 items.

    ``gain``, ``ties`` and ``top`` as in :func:`ndcg_at_k`. Empty selection → an empty tensor.
    """
    if clip < k:
        raise ValueError(f"clip ({clip}) must be ≥ k ({k}) so that a full clip fills the top-k")
    p, t = pool(pred, y, mask)
    n_full, rest = divmod(p.numel(), clip)
    n_clips = n_full + (1 if rest >= k else 0)
    size = n_clips * clip
    keep = min(p.numel(), size)
    padded_p = p.new_zeros(size)
    padded_t = t.new_zeros(size)
    padded_p[:keep], padded_t[:keep] = p[:keep], t[:keep]
    valid = torch.arange(size, device=p.device) < keep
    shape = (n_clips, clip)
    return ndcg_at_k(padded_p.view(shape), padded_t.view(shape), valid.view(shape), k=k, gain=gain, ties=ties,
                     top=top)


class Aggregate(NamedTuple):
    """One aggregated metric: its ``value`` and the number ``n`` of things averaged, named by ``unit``."""

    value: float
    n: int
    unit: Literal["ratings", "users", "clips"]


def aggregate(metric: MetricName, pred: Tensor, y: Tensor, mask: Tensor | None = None, *,
              average: Average = "user", k: int = 3, clip: int = 5, min_items: int = 1,
              gain: Gain = "exponential", ties: Ties = "position", top: Top = "ranked") -> Aggregate:
    """Aggregate ``metric`` ("MAE", "RMSE" or "NDCG" = NDCG@k) over a masked batch.

    ``average="user"`` (default: Eqs. 13–14 as printed): the per-user value, then the mean over the
    users with at least ``min_items`` valid ratings (``n`` counts those users). For NDCG inside a
    scenario, ``min_items=2`` is sensible: a user with one item scores 1 whatever the model does.

    ``average="rating"`` (appendix A.2.3, the paper's per-scenario numbers): MAE is "the mean value
    for the ratings", i.e. pooled over all valid ratings (``n`` = ratings; RMSE likewise, the root
    of the pooled mean squared error); NDCG is the mean over the clips of :func:`ndcg_clips`
    (``n`` = clips). ``min_items`` is ignored.

    The two differ whenever users contribute different numbers of ratings: pooled MAE weights each
    rating equally, the per-user mean weights each user equally. Nothing to average → ``NaN``, n=0.
    ``gain``, ``ties`` and ``top`` select NDCG variants (:func:`ndcg_at_k`).
    """
    _check(pred, y)
    m = _mask(mask, y)
    if metric not in ("MAE", "RMSE", "NDCG"):
        raise ValueError(f"unknown metric {metric!r}; expected 'MAE', 'RMSE' or 'NDCG'")
    if average == "rating":
        if metric == "NDCG":
            values = ndcg_clips(pred, y, m, k=k, clip=clip, gain=gain, ties=ties, top=top)
            unit = "clips"
        else:
            p, t = pool(pred, y, m)
            values = (p - t).abs() if metric == "MAE" else (p - t).square()
            unit = "ratings"
        if values.numel() == 0:
            return Aggregate(math.nan, 0, unit)
        value = values.mean()
        if metric == "RMSE":
            value = value.sqrt()
        return Aggregate(float(value), int(values.numel()), unit)
    if average == "user":
        if metric == "NDCG":
            per_user = ndcg_at_k(pred, y, m, k=k, gain=gain, ties=ties, top=top)
        else:
            per_user = (mae if metric == "MAE" else rmse)(pred, y, m)
        counted = m.sum(-1) >= max(min_items, 1)
        n = int(counted.sum())
        value = float(per_user[counted].mean()) if n else math.nan
        return Aggregate(value, n, "users")
    raise ValueError(f"average must be 'rating' or 'user', got {average!r}")
