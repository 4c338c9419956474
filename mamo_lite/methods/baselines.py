"""Non-meta baselines: what chapter 2 measures before any meta-learning (MAMO §3.4.2's "DNN").

Three constant predictors, fitted on the *training* users' ratings and scored on an evaluation
batch's query ratings (each returns predictions ``[B, Q]`` aligned with ``eval_batch.query_y``):

* :func:`global_mean` — one number for everyone: the mean training rating;
* :func:`item_mean` — each item's mean training rating (the global mean for items no training user
  rated: cold items);
* :func:`user_support_mean` — each evaluated user's own support-set mean (the only thing a new user
  has told us).

And the plain supervised recommender: :func:`train_plain` fits an
:class:`~mamo_lite.models.recommender.EmbeddingRecommender` (Eqs. 1–2) to every training rating,
support and query alike, with Adam on the MSE, one global model for all users; and
:func:`finetune_predict` scores it with or without a few gradient steps on each evaluated user's
support set. Fine-tuning *is* the engine's local update (Eq. 11) with every parameter group local,
so it runs through :func:`mamo_lite.meta.engine.predict`: there is one inner loop in the package.
"""

from __future__ import annotations

import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from mamo_lite.data.tasks import TaskBatch
from mamo_lite.meta.engine import MetaConfig, MetaLearner, Path, predict
from mamo_lite.models.recommender import GROUPS, EmbeddingRecommender, rating_loss
from mamo_lite.utils import progress as progress_bar
from mamo_lite.utils import resolve_device, seed_everything

__all__ = ["finetune_predict", "global_mean", "item_mean", "rating_rows", "train_plain", "user_support_mean"]


def _training_ratings(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """``(item_ids, ratings)`` of every real support and query rating of ``batch`` (flat)."""
    ids = torch.cat([batch.support_item_ids[batch.support_mask], batch.query_item_ids[batch.query_mask]])
    y = torch.cat([batch.support_y[batch.support_mask], batch.query_y[batch.query_mask]])
    return ids, y


def global_mean(train_batch: TaskBatch, eval_batch: TaskBatch) -> Tensor:
    """Predict the mean of all training ratings (support and query) for every query slot: ``[B, Q]``."""
    _, y = _training_ratings(train_batch)
    if y.numel() == 0:
        raise ValueError("global_mean needs at least one training rating")
    return torch.full_like(eval_batch.query_y, float(y.to(torch.float64).mean()))


def item_mean(train_batch: TaskBatch, eval_batch: TaskBatch) -> Tensor:
    """Predict each query item's mean training rating; items without training ratings get the global mean."""
    ids, y = _training_ratings(train_batch)
    if y.numel() == 0:
        raise ValueError("item_mean needs at least one training rating")
    y = y.to(torch.float64)
    items, inverse = torch.unique(ids, return_inverse=True)  # sorted
    sums = torch.zeros(len(items), dtype=torch.float64, device=y.device).index_add_(0, inverse, y)
    means = sums / torch.bincount(inverse, minlength=len(items)).to(torch.float64)
    q = eval_batch.query_item_ids.to(items.device)
    pos = torch.searchsorted(items, q).clamp(max=len(items) - 1)
    pred = torch.where(items[pos] == q, means[pos], y.mean())
    return pred.to(eval_batch.query_y.dtype).to(eval_batch.query_y.device)


def user_support_mean(eval_batch: TaskBatch, fallback: float | None = None) -> Tensor:
    """Predict each user's mean support rating for all of their query slots: ``[B, Q]``.

    A user with an empty support set gets ``fallback`` (default: the mean of all support ratings
    of ``eval_batch``).
    """
    m = eval_batch.support_mask.to(torch.float64)
    y = eval_batch.support_y.to(torch.float64) * m
    count = m.sum(-1)
    if fallback is None:
        fallback = float(y.sum() / count.sum()) if count.sum() > 0 else float("nan")
    mean = torch.where(count > 0, y.sum(-1) / count.clamp(min=1.0), torch.full_like(count, fallback))
    return mean.unsqueeze(-1).expand_as(eval_batch.query_y).to(eval_batch.query_y.dtype).contiguous()


def rating_rows(batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Every real (support and query) rating of ``batch`` as one row: ``(user_x [N, F_u], item_x, y [N])``.

    ``item_x`` tensors are ``[N, 1, ...]`` (one item per row), the shape ``EmbeddingRecommender``
    scores as ``N`` one-item users. Multi-valued fields are padded with 0 to a common length.
    """
    parts_u, parts_y, parts_x = [], [], []
    for x, y, mask in ((batch.support_x, batch.support_y, batch.support_mask),
                       (batch.query_x, batch.query_y, batch.query_mask)):
        parts_u.append(batch.user_x.unsqueeze(1).expand(-1, mask.shape[1], -1)[mask])
        parts_y.append(y[mask])
        parts_x.append({k: v[mask] for k, v in x.items()})
    item_x = {}
    for k in parts_x[0]:
        tensors = [p[k] for p in parts_x]
        if k != "cat":  # multi-valued: support and query may be padded to different lengths
            width = max(t.shape[-1] for t in tensors)
            tensors = [F.pad(t, (0, width - t.shape[-1])) for t in tensors]
        item_x[k] = torch.cat(tensors).unsqueeze(1)
    return torch.cat(parts_u), item_x, torch.cat(parts_y)


def train_plain(model: EmbeddingRecommender, train_batch: TaskBatch, *, epochs: int, lr: float = 1e-3,
                batch_size: int = 256, seed: int = 0, device: str | torch.device = "auto",
                progress: bool | None = None) -> pd.DataFrame:
    """Ordinary supervised training: Adam on the MSE of every training rating, one global model.

    Every real support *and* query rating of the training users is one example (there is no
    per-user adaptation, so there is nothing to hold out). Rows are reshuffled every epoch with a
    generator seeded by ``seed``. ``model`` is moved to ``device`` and trained in place; returns a
    tidy history (``epoch, split, metric, value``: the mean training loss and seconds per epoch).
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    generator = seed_everything(seed)
    dev = resolve_device(device)
    model.to(dev).train()
    user_x, item_x, y = rating_rows(train_batch.to(dev))
    n = len(y)
    if n == 0:
        raise ValueError("train_plain needs at least one training rating")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    head, rating_min = model.config.head, model.spec.rating_min
    rows = []
    n_batches = -(-n // batch_size)
    bar = progress_bar(total=epochs * n_batches, enabled=progress, desc="plain training", unit="batch")
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            total = 0.0
            for idx in torch.randperm(n, generator=generator).to(dev).split(batch_size):
                yb = y[idx].unsqueeze(1)
                out = model(user_x[idx], {k: v[idx] for k, v in item_x.items()})
                loss = rating_loss(out, yb, torch.ones_like(yb, dtype=torch.bool), head=head, rating_min=rating_min)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                bar.update(1)
            rows += [(epoch, "train", "loss", total / n), (epoch, "train", "seconds", time.perf_counter() - t0)]
    finally:
        bar.close()
    model.eval()
    return pd.DataFrame(rows, columns=["epoch", "split", "metric", "value"])


def finetune_predict(model: EmbeddingRecommender, batch: TaskBatch, steps: int, lr: float, *,
                     path: Path = "vmap", chunk: int = 256) -> Tensor:
    """Query predictions ``[B, Q]`` of ``model`` after ``steps`` SGD steps (rate ``lr``) on each user's support.

    ``steps=0`` scores the plain model. Fine-tuning is the engine's local update (Eq. 11) with every
    parameter group local; it is functional, so ``model`` itself is never changed.
    """
    learner = MetaLearner(model, MetaConfig(local_groups=GROUPS, local_lr=lr, inner_steps=steps))
    dev = next(model.parameters()).device
    return predict(learner, batch.to(dev), path=path, chunk=chunk, steps=steps)
