"""MAMO's memories as explicit, tested functions (Dong et al., KDD 2020, §2.3.1–2.3.2).

* profile memory ``M_P ∈ R^{K×d_u}`` — read by the attention of Eq. 3, written by Eq. 5;
* fast-gradient memory ``M_U``: ``K`` slots each shaped like the user-embedding parameters
  ``θ_u`` — read as the personal bias ``b_u`` (Eq. 4), written with the user's gradient (Eq. 6);
* preference memory ``M_{U,I} ∈ R^{K×d_e×2d_e}`` — read as the user's preference matrix
  ``M_{u,I}`` (Eq. 7), written with the locally adapted matrix (Eq. 8).

All three writes have one form, ``M ← c·(a_u ⊗ x) + (1 − c)·M`` with ``c ∈ {α, β, γ}``.
Writes of a batch of users are *sequential in batch order*: the result equals writing the users
one after another (Algorithm 1's per-user loop), computed in closed form by
:func:`attentive_write_sequence`. Reads inside a batch all see the pre-batch memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mamo_lite.meta.factored import LowRank


def attention(profile: Tensor, profile_memory: Tensor, eps: float = 1e-8) -> Tensor:
    """Eq. 3: ``a_u = softmax_k(cos(p_u, M_P[k]))``.

    ``profile`` is ``p_u`` (``[d_u]`` or ``[B, d_u]``), ``profile_memory`` is ``M_P`` (``[K, d_u]``);
    returns ``a_u`` (``[K]`` or ``[B, K]``), non-negative and summing to one.
    """
    cos = F.cosine_similarity(profile.unsqueeze(-2), profile_memory, dim=-1, eps=eps)
    return torch.softmax(cos, dim=-1)


def read(a: Tensor, memory: Tensor) -> Tensor:
    """Attentive read ``a_uᵀ M = Σ_k a_k M[k]`` — Eq. 4 (``b_u`` from ``M_U``) and Eq. 7 (``M_{u,I}``)."""
    return torch.tensordot(a, memory, dims=([-1], [0]))


def personal_bias(a: Tensor, gradient_memory: dict[str, Tensor]) -> dict[str, Tensor]:
    """Eq. 4: ``b_u = a_uᵀ M_U``, one tensor per user-embedding parameter."""
    return {name: read(a, slot) for name, slot in gradient_memory.items()}


def attentive_write(memory: Tensor, a: Tensor, x: Tensor, rate: float) -> Tensor:
    """One write of Eqs. 5, 6 and 8: ``M ← rate·(a ⊗ x) + (1 − rate)·M``.

    ``memory`` is ``[K, *x.shape]``, ``a`` is ``[K]``. Returns a new tensor (no autograd history
    when called on detached inputs, as the learner does).
    """
    outer = a.reshape(a.shape + (1,) * x.dim()) * x
    return rate * outer + (1.0 - rate) * memory


def attentive_write_sequence(memory: Tensor, a: Tensor, x: Tensor | LowRank, rate: float) -> Tensor:
    """``n`` writes in order (``a``: ``[n, K]``, ``x``: ``[n, ...]``) in closed form.

    Unrolling ``M_j = c·(a_j ⊗ x_j) + (1 − c)·M_{j−1}`` gives
    ``M_n = (1 − c)^n M_0 + Σ_j c (1 − c)^{n−j} a_j ⊗ x_j`` — identical to calling
    :func:`attentive_write` for ``j = 1..n``, in one batched contraction. ``x`` may be a
    :class:`~mamo_lite.meta.factored.LowRank` (the batched path's Eq. 6 gradients), whose sum is taken
    without forming the ``n`` matrices.
    """
    n = a.shape[0]
    if n == 0:
        return memory
    keep = 1.0 - rate
    powers = keep ** torch.arange(n - 1, -1, -1, dtype=torch.float64, device=memory.device)
    w = (rate * powers).to(memory.dtype)  # weight of user j's write after the last user
    if isinstance(x, LowRank):
        contrib = x.weighted_sum(w.unsqueeze(-1) * a)
    else:
        contrib = torch.tensordot(w.unsqueeze(-1) * a, x, dims=([0], [0]))  # Σ_j w_j a_j ⊗ x_j -> [K, ...]
    return (keep**n) * memory + contrib
