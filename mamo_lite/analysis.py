"""Diagnostics for chapters 3–4: per-user meta-gradients, gradient agreement, adaptation curves.

MAMO's motivation (§1, §2.1.2) is that one shared initialisation ``φ`` serves users whose
gradients "show different gradient descent directions comparing with the majority of users" badly.
These functions measure exactly that on real users, with the same engine that trains the models.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor
from torch.func import grad, vmap

from mamo_lite.data.tasks import TaskBatch
from mamo_lite.meta.engine import MetaLearner, predict, user_query_loss


def per_user_meta_gradients(learner: MetaLearner, batch: TaskBatch, *, chunk: int = 128) -> Tensor:
    """Each user's meta-gradient ``∇_φ L_Q(θ̂_u)`` (Eq. 12's summand), flattened: ``[B, P]``.

    Computed with ``vmap(grad(...))`` over users; the learner is not modified.
    """
    params = {n: p.detach() for n, p in learner.params().items()}
    names = learner.global_names()
    fixed = {n: v for n, v in params.items() if n not in names}
    memories = {k: v.detach() for k, v in learner.memory_state().items()}

    def one(phi, task):
        return user_query_loss(learner, {**fixed, **phi}, memories, task)[0]

    out = []
    for sub in batch.batches(chunk):
        g = vmap(grad(one), in_dims=(None, 0))({n: params[n] for n in names}, sub.inputs())
        out.append(torch.cat([g[n].reshape(len(sub), -1) for n in names], 1))
    return torch.cat(out)


def gradient_agreement(grads: Tensor) -> Tensor:
    """Cosine between each user's meta-gradient and the mean over all users: ``[B]``.

    Negative or small values mark users whose descent direction disagrees with the majority.
    """
    mean = grads.mean(0, keepdim=True)
    return torch.nn.functional.cosine_similarity(grads, mean, dim=1)


def adaptation_curve(learner: MetaLearner, batch: TaskBatch, steps: range | list[int] = range(6),
                     ) -> pd.DataFrame:
    """Per-user query MAE after ``s`` local steps (Eq. 11) for each ``s``: tidy (user, step, MAE)."""
    rows = []
    mask = batch.query_mask.to(batch.query_y.dtype)
    lo, hi = learner.model.spec.rating_min, learner.model.spec.rating_max
    for s in steps:
        pred = predict(learner, batch, steps=s).clamp(lo, hi)
        mae = ((pred - batch.query_y).abs() * mask).sum(1) / mask.sum(1).clamp(min=1)
        rows.append(pd.DataFrame({"user": batch.user_ids.numpy(), "step": s, "MAE": mae.numpy(),
                                  "user_cold": batch.user_cold.numpy()}))
    return pd.concat(rows, ignore_index=True)
