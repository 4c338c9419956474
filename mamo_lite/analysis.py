"""Diagnostics for chapters 3–4: per-user meta-gradients, gradient agreement, adaptation curves.

MAMO's motivation (§1, §2.1.2) is that one shared initialisation ``φ`` serves users whose
gradients "show different gradient descent directions comparing with the majority of users" badly.
These functions measure exactly that on real users, with the same engine that trains the models.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.func import grad, vmap

from mamo_lite.data.tasks import TaskBatch
from mamo_lite.meta.engine import MetaLearner, predict, user_query_loss

if TYPE_CHECKING:
    from mamo_lite.methods.mamo import MAMOLearner


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
        rows.append(pd.DataFrame({"user": batch.user_ids.cpu().numpy(), "step": s, "MAE": mae.cpu().numpy(),
                                  "user_cold": batch.user_cold.cpu().numpy()}))
    return pd.concat(rows, ignore_index=True)


# -- chapter 4: the memories -------------------------------------------------------------------

MEMORY_SYMBOLS: dict[str, str] = {"profile": "M_P", "gradient": "M_U", "preference": "M_{U,I}"}
"""The paper's symbol of each memory group; ``gradient`` gathers every ``gradient:<param>`` buffer."""

_MEMORY_EQUATIONS = {"profile": ("Eq. 3", "Eq. 5", "alpha"), "gradient": ("Eq. 4", "Eq. 6", "beta"),
                     "preference": ("Eq. 7", "Eq. 8", "gamma")}


def _memory_groups(learner: MAMOLearner) -> dict[str, list[Tensor]]:
    """``memory_state()`` grouped by memory: ``{"profile": [M_P], "gradient": [M_U slots...], ...}``."""
    groups: dict[str, list[Tensor]] = {}
    for key, t in learner.memory_state().items():
        groups.setdefault(key.split(":")[0], []).append(t.detach())
    return groups


def _frobenius(tensors: list[Tensor]) -> float:
    """Frobenius norm of several tensors taken together: ``sqrt(Σ ||T||²)``."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def memory_table(learner: MAMOLearner) -> pd.DataFrame:
    """One row per memory buffer: key, symbol, shape, number of values, read/write equations, rate.

    ``key`` is the ``memory_state()`` key (``gradient:<param>`` for each tensor of ``M_U``).
    """
    mc = learner.mamo_config
    rows = []
    for key, t in learner.memory_state().items():
        group = key.split(":")[0]
        read_eq, write_eq, rate = _MEMORY_EQUATIONS[group]
        rows.append({"memory": key, "symbol": MEMORY_SYMBOLS[group], "shape": tuple(t.shape),
                     "values": t.numel(), "read": read_eq, "write": write_eq,
                     "rate": f"{rate} = {getattr(mc, rate)}"})
    return pd.DataFrame(rows)


def attention_entropy(attention: Tensor) -> Tensor:
    """Entropy ``-Σ_k a_k log a_k`` of each attention row ``a_u`` (nats): ``[..., K] -> [...]``.

    0 when a user reads one slot only; ``log K`` when the attention is uniform (every user reads
    the same mixture of slots, so the memory does not personalise at all).
    """
    a = attention.detach().double()
    return -(a * a.clamp_min(1e-300).log()).sum(-1)


def memory_snapshot(learner: MAMOLearner, batch: TaskBatch | None = None) -> dict[str, float]:
    """Scalar summary of MAMO's memories now.

    Always: the Frobenius norm of each memory present (``norm M_P``, ``norm M_U`` over all its
    tensors, ``norm M_{U,I}``) and ``M_P slot cosine``, the mean cosine similarity between distinct
    slots of ``M_P`` (1: every slot points the same way, so Eq. 3 cannot tell users apart).
    With ``batch``: the mean attention entropy over its users (``attention entropy``, nats), the
    same divided by ``log K`` (``attention entropy / log K``, 1 = uniform), and the mean largest
    attention weight (``max attention``).
    """
    out = {f"norm {MEMORY_SYMBOLS[g]}": _frobenius(ts) for g, ts in _memory_groups(learner).items()}
    mp = learner.profile_memory.detach().double()
    K = mp.shape[0]
    if K > 1:
        unit = torch.nn.functional.normalize(mp, dim=1)
        cos = unit @ unit.T
        out["M_P slot cosine"] = float((cos.sum() - cos.diagonal().sum()) / (K * (K - 1)))
    else:
        out["M_P slot cosine"] = float("nan")
    if batch is not None:
        a = learner.attention_of(batch)
        h = attention_entropy(a)
        out["attention entropy"] = float(h.mean())
        out["attention entropy / log K"] = float(h.mean() / math.log(K)) if K > 1 else float("nan")
        out["max attention"] = float(a.max(-1).values.double().mean())
    return out


def memory_change(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, float]:
    """Relative Frobenius change ``||after − before|| / ||before||`` of each memory (``M_U``: all its
    tensors together), keyed by symbol. ``before``/``after`` are ``memory_state()`` dicts (cloned)."""
    groups: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
    for key, b in before.items():
        g = groups.setdefault(key.split(":")[0], ([], []))
        g[0].append(b.detach())
        g[1].append(after[key].detach() - b.detach())
    return {MEMORY_SYMBOLS[g]: _frobenius(diff) / _frobenius(base) for g, (base, diff) in groups.items()}


class MemoryTracker:
    """A :func:`mamo_lite.train.fit` callback that records how MAMO's memories evolve, epoch by epoch.

    Built before training, it takes an epoch-0 snapshot; after every epoch it records, per memory,
    its norm and its relative Frobenius change since the previous epoch (:func:`memory_change`),
    and, with ``batch``, the attention statistics of :func:`memory_snapshot`. ``history`` is tidy:
    ``epoch, memory, metric, value`` (``memory`` is ``M_P``, ``M_U`` or ``M_{U,I}``; the attention
    rows belong to ``M_P``, which the attention reads). Note that :func:`~mamo_lite.train.fit` restores the best
    validation epoch at the end; the history shows every epoch as it was trained.

        >>> tracker = MemoryTracker(learner, batch=data.tasks("val"))
        >>> fit(learner, data, epochs=5, seed=0, callback=tracker)
        >>> tracker.history.pivot_table(index="epoch", columns=["memory", "metric"], values="value")
    """

    def __init__(self, learner: MAMOLearner, batch: TaskBatch | None = None) -> None:
        self.batch = batch
        self.rows: list[tuple[int, str, str, float]] = []
        self._previous = self._clone(learner)
        self._record(0, learner, change=None)

    @staticmethod
    def _clone(learner: MAMOLearner) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in learner.memory_state().items()}

    def _record(self, epoch: int, learner: MAMOLearner, change: dict[str, float] | None) -> None:
        batch = self.batch.to(learner.profile_memory.device) if self.batch is not None else None
        snap = memory_snapshot(learner, batch)
        for key, value in snap.items():
            if key.startswith("norm "):
                self.rows.append((epoch, key.removeprefix("norm "), "norm", value))
            else:
                self.rows.append((epoch, "M_P", key, value))
        for symbol, value in (change or {}).items():
            self.rows.append((epoch, symbol, "relative change", value))

    def __call__(self, epoch: int, metrics: dict[str, float], learner: MAMOLearner) -> bool:
        current = self._clone(learner)
        self._record(epoch, learner, memory_change(self._previous, current))
        self._previous = current
        return False

    @property
    def history(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=["epoch", "memory", "metric", "value"])
        return df.astype({"epoch": "int64", "value": "float64"})


def profile_slot_similarity(learner: MAMOLearner, batch: TaskBatch) -> Tensor:
    """``cos(p_u, M_P[k])`` for every user of ``batch`` and slot ``k`` (``[B, K]``): Eq. 3 before the softmax."""
    params = {n: p.detach() for n, p in learner.params().items()}
    mp = learner.profile_memory.detach()
    with torch.no_grad():
        p_u = learner.model.user_profile_vector(batch.user_x.to(mp.device), params)
        return torch.nn.functional.cosine_similarity(p_u.unsqueeze(-2), mp, dim=-1, eps=1e-8)


def representative_users(learner: MAMOLearner, batch: TaskBatch, *, top: int = 100,
                         profiles: pd.DataFrame | None = None, exclusive: bool = True) -> pd.DataFrame:
    """The users most similar to each profile-memory slot (the paper's Fig. 5b, §3.4.3).

    For each slot ``k`` the ``top`` users of ``batch`` with the highest ``cos(p_u, M_P[k])``, best
    first. With ``exclusive`` (default) a slot only ranks the users who "belong" to it, i.e. whose
    largest attention weight is on ``k`` (each user then appears at most once); without it every
    user is a candidate for every slot. Columns: ``slot`` (1-based), ``rank`` (1 = the slot's
    representative user), ``user`` (the dataset id), ``cosine``, ``attention`` (``a_{u,k}``), plus
    the columns of ``profiles`` (e.g. ``data.users``: gender, age, occupation…) merged on ``user``.
    """
    cos = profile_slot_similarity(learner, batch).cpu()
    dominant = cos.argmax(-1)  # softmax is monotone: the slot of largest attention
    attn = torch.softmax(cos, -1)
    ids = batch.user_ids.cpu()
    parts = []
    for k in range(cos.shape[1]):
        cand = torch.nonzero(dominant == k).flatten() if exclusive else torch.arange(len(ids))
        order = cand[torch.argsort(cos[cand, k], descending=True, stable=True)][:top]
        parts.append(pd.DataFrame({"slot": k + 1, "rank": np.arange(1, len(order) + 1), "user": ids[order].numpy(),
                                   "cosine": cos[order, k].double().numpy(),
                                   "attention": attn[order, k].double().numpy()}))
    out = pd.concat(parts, ignore_index=True).astype({"slot": "int64", "rank": "int64", "user": "int64"})
    if profiles is not None:
        extra = profiles.drop(columns=[c for c in profiles.columns if c in out.columns and c != "user"])
        out = out.merge(extra, on="user", how="left", validate="many_to_one")
    return out


def slot_type_table(attention: Tensor, true_types: Tensor | np.ndarray | pd.Series) -> pd.DataFrame:
    """Cross-table of each user's dominant slot (``argmax_k a_{u,k}``) against a known user type.

    Rows ``slot 1 … slot K`` (every slot, used or not) and ``all``; columns one per type (counts of
    users), ``users`` and ``purity``: the share of the slot's users that belong to its most common
    type (NaN for an unused slot). The ``all`` row's purity is the clustering purity
    ``Σ_k max_t n_{k,t} / N``: 1 when every slot holds a single type; the share of the largest type
    when one slot takes everybody.
    """
    a = torch.as_tensor(attention).detach().cpu()
    types = np.asarray(true_types).astype(np.int64).reshape(-1)
    if a.ndim != 2 or a.shape[0] != types.shape[0]:
        raise ValueError(f"attention must be [n_users, K] with one type per user, got {tuple(a.shape)} "
                         f"and {types.shape[0]} types")
    K = a.shape[1]
    slot = a.argmax(-1).numpy()
    labels = sorted(set(types.tolist()))
    counts = np.zeros((K, len(labels)), dtype=np.int64)
    np.add.at(counts, (slot, np.searchsorted(labels, types)), 1)
    table = pd.DataFrame(counts, index=[f"slot {k + 1}" for k in range(K)],
                         columns=[f"type {t}" for t in labels])
    table.loc["all"] = counts.sum(0)
    users = table.sum(axis=1)
    top = table.max(axis=1).astype("float64")
    top["all"] = counts.max(1).sum()
    table["users"] = users
    table["purity"] = (top / users.where(users > 0)).astype("float64")
    table.index.name = "dominant slot"
    return table


def memory_trajectory(learner: MAMOLearner, batch: TaskBatch, *, n_batches: int, seed: int = 0,
                      probe: TaskBatch | None = None) -> pd.DataFrame:
    """Meta-train ``learner`` in place for ``n_batches`` meta-batches, snapshotting the memories after each.

    The users of ``batch`` are shuffled and cut into meta-batches exactly as the first epoch of
    :func:`mamo_lite.train.fit` with the same ``seed`` does, and each takes one
    :func:`~mamo_lite.meta.engine.meta_step` with a fresh global optimiser. Returns one row per step
    (``step`` 0 is the state before training, then the number of meta-batches done, ``users`` the
    users seen so far) with the columns of :func:`memory_snapshot` (attention statistics on
    ``probe`` when given): the memories at a finer grain than the per-epoch :class:`MemoryTracker`.
    """
    from mamo_lite.meta.engine import make_optimizer, meta_step
    from mamo_lite.utils import seed_everything

    if n_batches < 0:
        raise ValueError(f"n_batches must be ≥ 0, got {n_batches}")
    generator = seed_everything(seed)
    optimizer = make_optimizer(learner)
    device = learner.profile_memory.device
    batch = batch.to(device)
    probe = probe.to(device) if probe is not None else None
    rows = [{"step": 0, "users": 0, **memory_snapshot(learner, probe)}]
    users = 0
    for step, sub in enumerate(batch.batches(learner.config.users_per_batch, shuffle=True,
                                             generator=generator), start=1):
        if step > n_batches:
            break
        learner.train()
        meta_step(learner, sub, optimizer)
        users += len(sub)
        rows.append({"step": step, "users": users, **memory_snapshot(learner, probe)})
    return pd.DataFrame(rows)
