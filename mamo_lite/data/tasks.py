"""Feature schema and padded task batches: the contract between data, models and the engine.

A *task* is one user (MAMO §2.1.1): a profile ``p_u``, a support set ``S_u`` of rated items and a
query set ``Q_u``. Every task of a dataset is stored in one :class:`TaskBatch` whose leading
dimension runs over users, so the per-user loop indexes it and the ``vmap`` path maps over it.

Encoding rules (shared by every dataset):

* every vocabulary reserves index 0 for "unknown / padding"; real values start at 1;
* user fields are all single-valued categorical: ``user_x`` is ``[B, F_u]`` (long);
* item fields are either categorical (gathered into ``item_x["cat"]``, ``[..., F_c]``) or
  multi-valued (``item_x[name]``, ``[..., L_name]``, padded with 0): genres, directors;
* ratings are floats on the dataset's own scale (1–5 MovieLens, 1–10 Book-Crossing);
* ``query_scenario`` holds ``SCENARIOS`` indices: ``2 * user_is_cold + item_is_cold``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import torch
from torch import Tensor

SCENARIOS: tuple[str, ...] = ("W-W", "W-C", "C-W", "C-C")
"""Scenario names, indexed by ``2 * user_is_cold + item_is_cold`` (MAMO §3.1.4)."""


@dataclass(frozen=True)
class Field:
    """One profile field. ``vocab_size`` counts index 0 (unknown/padding)."""

    name: str
    kind: Literal["categorical", "multi"]
    vocab_size: int


@dataclass(frozen=True)
class FeatureSpec:
    """The profile schema of a dataset: what Eq. 1 embeds.

    ``user_fields`` are all categorical (their order is the column order of ``user_x``);
    ``item_fields`` mixes categorical fields (column order of ``item_x["cat"]``) and multi-valued
    ones (one padded index tensor each, keyed by field name).
    """

    user_fields: tuple[Field, ...]
    item_fields: tuple[Field, ...]
    rating_min: float
    rating_max: float

    @property
    def item_categorical(self) -> tuple[Field, ...]:
        return tuple(f for f in self.item_fields if f.kind == "categorical")

    @property
    def item_multi(self) -> tuple[Field, ...]:
        return tuple(f for f in self.item_fields if f.kind == "multi")

    def to_dict(self) -> dict:
        return {
            "user_fields": [vars(f) for f in self.user_fields],
            "item_fields": [vars(f) for f in self.item_fields],
            "rating_min": self.rating_min,
            "rating_max": self.rating_max,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> FeatureSpec:
        return cls(
            user_fields=tuple(Field(**f) for f in d["user_fields"]),
            item_fields=tuple(Field(**f) for f in d["item_fields"]),
            rating_min=float(d["rating_min"]),
            rating_max=float(d["rating_max"]),
        )


def _map(x, fn):
    if isinstance(x, dict):
        return {k: _map(v, fn) for k, v in x.items()}
    return fn(x)


@dataclass
class TaskBatch:
    """Padded, device-ready tasks for ``B`` users (``S`` support and ``Q`` query slots each).

    Masks mark real ratings (all ``True`` under MAMO's fixed 15/5 protocol, but the engine and
    metrics always honour them). ``user_ids``/``*_item_ids`` are the dataset's raw ids, kept for
    tables and plots; models never see them.
    """

    user_ids: Tensor  # [B] long
    user_x: Tensor  # [B, F_u] long
    support_x: dict[str, Tensor]  # "cat": [B, S, F_c]; multi field: [B, S, L]
    support_y: Tensor  # [B, S] float
    support_mask: Tensor  # [B, S] bool
    support_item_ids: Tensor  # [B, S] long
    query_x: dict[str, Tensor]
    query_y: Tensor  # [B, Q] float
    query_mask: Tensor  # [B, Q] bool
    query_item_ids: Tensor  # [B, Q] long
    query_scenario: Tensor  # [B, Q] long, index into SCENARIOS
    user_cold: Tensor = field(default=None)  # [B] bool

    def __post_init__(self) -> None:
        if self.user_cold is None:
            self.user_cold = self.query_scenario[:, 0] >= 2 if self.query_scenario.numel() else (
                torch.zeros(len(self.user_ids), dtype=torch.bool))

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.support_y.device

    def _apply(self, fn) -> TaskBatch:
        return TaskBatch(**{f.name: _map(getattr(self, f.name), fn) for f in fields(self)})

    def to(self, device: str | torch.device) -> TaskBatch:
        """Move every tensor to ``device``."""
        return self._apply(lambda t: t.to(device))

    def select(self, idx: Tensor | slice | list[int]) -> TaskBatch:
        """The sub-batch of users ``idx`` (keeps the batch dimension)."""
        if isinstance(idx, list):
            idx = torch.as_tensor(idx, dtype=torch.long)
        if isinstance(idx, Tensor):
            idx = idx.to(self.user_ids.device)
        return self._apply(lambda t: t[idx])

    def trim_support(self) -> TaskBatch:
        """The batch with its support slots cut after the last real one of any user (a batch padded to the
        dataset's longest support set carries columns that no user of the batch fills); masked
        computations give the same numbers on fewer columns."""
        real = self.support_mask.any(0).nonzero()
        width = int(real[-1]) + 1 if len(real) else 0
        if width == self.support_mask.shape[1]:
            return self
        cut = lambda t: t[:, :width]
        return replace(self, support_x=_map(self.support_x, cut), support_y=cut(self.support_y),
                       support_mask=cut(self.support_mask), support_item_ids=cut(self.support_item_ids))

    def inputs(self) -> dict:
        """The model-facing pytree (batched over dim 0): what ``vmap`` maps over."""
        return {
            "user_x": self.user_x,
            "support_x": self.support_x,
            "support_y": self.support_y,
            "support_mask": self.support_mask,
            "query_x": self.query_x,
            "query_y": self.query_y,
            "query_mask": self.query_mask,
        }

    def task(self, i: int) -> dict:
        """User ``i``'s inputs without the batch dimension: what the per-user loop consumes."""
        return _map(self.inputs(), lambda t: t[i])

    def batches(self, size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[TaskBatch]:
        """Yield sub-batches of at most ``size`` users (seeded shuffle via ``generator``)."""
        if size <= 0:
            raise ValueError(f"batch size must be positive, got {size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, size):
            yield self.select(order[start:start + size])

    def replace(self, **changes) -> TaskBatch:
        """A copy with some fields replaced (``dataclasses.replace``)."""
        return replace(self, **changes)


def tree_index(tree, i: int):
    """Index every tensor of a (nested dict) pytree along dim 0."""
    return _map(tree, lambda t: t[i])
