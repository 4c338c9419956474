"""Tiny feature schemas, task batches and learners for fast tests (shared by test files).

``tiny_spec()`` mixes every field kind in a deliberately interleaved order (categorical, multi,
categorical, multi), so a model that assumes "categorical fields first" gets its columns wrong.
``tiny_batch()`` builds a valid :class:`~mamo_lite.data.tasks.TaskBatch` in the default dtype;
padded slots carry random (but valid) features and ratings, so anything that ignores the masks
gets a different answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

from mamo_lite.data.tasks import FeatureSpec, Field, TaskBatch

MULTI_LEN = 3  # padded length of every multi-valued field in tiny batches

# Tiny networks for every method: ~150 parameters, so second order and vmap stay cheap. MeLU's
# network keeps its shape (no towers, no M_{u,I}, two hidden layers) but uses LeakyReLU: a ReLU MLP
# this small is often dead at initialisation, and a dead unit has zero gradient, which would make
# gradient comparisons vacuous.
TINY_NETS: dict[str, dict] = {
    "maml": {"embed_dim": 3, "field_dim": 2, "tower_layers": 1, "decision_hidden": (4,), "preference": "code"},
    "melu": {"embed_dim": 2, "decision_hidden": (5, 3), "activation": "leaky_relu"},
    "metacs-dnn": {"embed_dim": 2, "decision_hidden": (5, 3), "activation": "leaky_relu"},
    "s2meta": {"embed_dim": 2, "field_dim": 2, "tower_layers": 1, "decision_hidden": (4, 3),
               "activation": "leaky_relu"},
    # GreatMeta's FiLM network: rows are the raw field embeddings (no towers), two FiLM layers.
    "greatmeta": {"embed_dim": 2, "field_dim": 2, "decision_hidden": (3, 2)},
}


def tiny_spec(rating_min: float = 1.0, rating_max: float = 5.0) -> FeatureSpec:
    """Two user fields, four item fields (two of them multi-valued). Vocab sizes count index 0."""
    return FeatureSpec(
        user_fields=(Field("gender", "categorical", 3), Field("age", "categorical", 4)),
        item_fields=(
            Field("rate", "categorical", 4),
            Field("genre", "multi", 6),
            Field("year", "categorical", 5),
            Field("director", "multi", 5),
        ),
        rating_min=rating_min,
        rating_max=rating_max,
    )


def _items(spec: FeatureSpec, shape: tuple[int, ...], g: torch.Generator) -> dict[str, Tensor]:
    """Random item features ``[*shape, ...]``: real categorical indices ≥ 1, multi-hot padded with 0."""
    cats = spec.item_categorical
    x = {"cat": torch.stack([torch.randint(1, f.vocab_size, shape, generator=g) for f in cats], -1)}
    for f in spec.item_multi:
        idx = torch.randint(1, f.vocab_size, (*shape, MULTI_LEN), generator=g)
        keep = torch.rand((*shape, MULTI_LEN), generator=g) < 0.6
        keep[..., 0] = True
        idx = idx * keep
        # the very first item of every user has no value at all for this field (0/0 guard)
        idx[..., 0, :] = 0
        x[f.name] = idx
    return x


def _mask(spec: str | Sequence[int] | Tensor, n_users: int, n: int, g: torch.Generator) -> Tensor:
    if isinstance(spec, Tensor):
        if spec.shape != (n_users, n):
            raise ValueError(f"mask must be [{n_users}, {n}], got {list(spec.shape)}")
        return spec.bool()
    if isinstance(spec, str):
        if spec == "full":
            counts = [n] * n_users
        elif spec == "ragged":  # user 0 full, the others 1..n real ratings
            counts = [n] + torch.randint(1, n + 1, (n_users - 1,), generator=g).tolist()
        else:
            raise ValueError(f"masks must be 'full', 'ragged', counts or tensors, got {spec!r}")
    else:
        counts = list(spec)
    if len(counts) != n_users or not all(0 <= c <= n for c in counts):
        raise ValueError(f"need {n_users} counts in [0, {n}], got {counts}")
    return torch.arange(n).unsqueeze(0) < torch.as_tensor(counts).unsqueeze(1)


def tiny_batch(spec: FeatureSpec | None = None, n_users: int = 3, n_support: int = 4, n_query: int = 3,
               seed: int = 0, masks="full") -> TaskBatch:
    """A valid ``TaskBatch`` of ``n_users`` users with random profiles, items and ratings.

    ``masks`` is ``"full"``, ``"ragged"`` (user 0 full, the others a random number ≥ 1 of real
    ratings, real slots first), a pair of per-user counts ``(support_counts, query_counts)`` or a
    pair of ``[B, S]``/``[B, Q]`` bool tensors. Ratings use the default dtype.
    """
    spec = spec or tiny_spec()
    g = torch.Generator().manual_seed(seed)
    if isinstance(masks, str):
        s_spec = q_spec = masks
    else:
        s_spec, q_spec = masks
    support_mask = _mask(s_spec, n_users, n_support, g)
    query_mask = _mask(q_spec, n_users, n_query, g)
    lo, hi = int(spec.rating_min), int(spec.rating_max)

    def ratings(n: int) -> Tensor:
        return torch.randint(lo, hi + 1, (n_users, n), generator=g).to(torch.get_default_dtype())

    return TaskBatch(
        user_ids=torch.arange(100, 100 + n_users),
        user_x=torch.stack([torch.randint(1, f.vocab_size, (n_users,), generator=g) for f in spec.user_fields], -1),
        support_x=_items(spec, (n_users, n_support), g),
        support_y=ratings(n_support),
        support_mask=support_mask,
        support_item_ids=torch.randint(0, 1000, (n_users, n_support), generator=g),
        query_x=_items(spec, (n_users, n_query), g),
        query_y=ratings(n_query),
        query_mask=query_mask,
        query_item_ids=torch.randint(0, 1000, (n_users, n_query), generator=g),
        query_scenario=torch.randint(0, 4, (n_users, n_query), generator=g),
    )


def tiny_learner(method: str = "maml", spec: FeatureSpec | None = None, seed: int = 0, **overrides):
    """``build_learner(method)`` with a tiny network (``TINY_NETS``); ``overrides`` win."""
    from mamo_lite.methods import build_learner

    torch.manual_seed(seed)
    return build_learner(method, spec or tiny_spec(), overrides={**TINY_NETS[method], **overrides})


def _have(name: str) -> bool:
    from mamo_lite.data import available

    return available(name)


needs_movielens_1m = pytest.mark.skipif(not _have("movielens-1m"),
                                        reason="needs MovieLens-1M: set MAMO_LITE_DATA (e.g. ../shared/data)")
"""Mark for a real-data test: skipped in one line where MovieLens-1M's files are not on this machine."""


def overall_mae(table) -> float:
    """The ``all`` row's MAE of a tidy per-scenario table (:func:`mamo_lite.evaluate.scenario_metrics`)."""
    return float(table.query("metric == 'MAE' and scenario == 'all'")["value"].iloc[0])
