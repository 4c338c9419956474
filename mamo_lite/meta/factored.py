"""Factored fast weights: Eq. 11's local updates of the fully connected layers without per-user dense copies.

A local step changes a linear layer's weight by ``−ρ ∇_W L_S = −ρ Δᵀ X``, where ``X`` (``[n, in]``) holds the
layer's inputs on the ``n`` support rows and ``Δ`` (``[n, out]``) the loss gradient w.r.t. its outputs. After
``k`` steps (or ``k`` per-item steps) the adapted weight is therefore

    ``θ̂ = θ_0 − ρ Σ_j Δ_jᵀ X_j``,  so  ``z θ̂ᵀ = z θ_0ᵀ − ρ (z X_allᵀ) Δ_all``

for any input ``z``, with ``X_all``, ``Δ_all`` the steps' factors stacked (rank ≤ ``k·n``: 135 for MAMO's
authors' 9 steps on 15 support ratings). :func:`adapt` keeps each local layer as its initial weight ``θ_0``
plus these factors, never forming a per-user ``[out, in]`` gradient or copy; the shared part ``z θ_0ᵀ`` of a
layer whose initialisation is ``φ`` itself (every layer of MAML; MAMO's item tower and decision layers) is,
under ``vmap``, one matrix product for the whole batch of users instead of one per user. ``Δ`` is read as
the gradient w.r.t. a zero "tap" added to the layer's output, ``X`` is the layer's input: both come from the
one forward/backward pass the plain path runs too. Biases and (gathered) embedding rows stay dense tensors
updated as in :func:`mamo_lite.meta.engine.adapt`.

The maths is Eq. 11's, unchanged: query losses, meta-gradients (Eq. 12, first and second order: with
``first_order`` the factors are detached, exactly as the plain path detaches ``∇_θ L_S``), memory writes and
predictions equal the plain path's to float rounding (tests). Only the order of the floating-point
operations differs, so it is an engine option (``MetaLearner.factored_updates``, opt-in), not a
hyper-parameter, and the book's chapters run the plain path, which stays the reference.

It applies to the engine's default per-user algorithm on :class:`~mamo_lite.models.recommender.EmbeddingRecommender`
(MAML, MeLU, MetaCS-DNN, MAMO); s²Meta and GreatMeta replace that algorithm and ignore the option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad

from mamo_lite.models.recommender import EmbeddingRecommender, joint_input, rating_loss

Params = dict[str, Tensor]
Factors = dict[str, tuple[Tensor, Tensor]]
"""``layer name → (X_all [r, in], Δ_all [r, out])``: the stacked inputs and output gradients of its local steps."""


def linear_layers(model: EmbeddingRecommender) -> list[str]:
    """The recommender's linear layers (``user_tower.0``, …, ``preference``, ``decision.0``, ``out``), in the order
    ``EmbeddingRecommender.__init__`` registers them, which is the forward order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def factored_layers(model: EmbeddingRecommender, fast: Params) -> list[str]:
    """The linear layers whose weight is local (in ``fast``): these get factors instead of dense updates."""
    return [n for n in linear_layers(model) if f"{n}.weight" in fast]


def check_model(model: nn.Module) -> None:
    """Factored updates need the engine's recommender (the layer structure :func:`forward` mirrors)."""
    if type(model) is not EmbeddingRecommender:
        raise TypeError(f"factored_updates needs an EmbeddingRecommender, got {type(model).__name__}; "
                        "turn MetaLearner.factored_updates off for this learner")


class Mixture:
    """A weight per user kept as a mixture of shared matrices, ``W_u = Σ_s c_us S_s``, never formed as ``[B, out, in]``.

    ``coef`` is ``[B, S]``, ``slots`` ``[S, out, in]``. MAMO's personalised initialisation (Eqs. 4, 9)
    ``θ_u = φ_u − τ Σ_k a_uk M_U[k]`` is one: slots ``[φ_u, M_U[1..K]]``, coefficients ``[1, −τ a_u]``
    (:meth:`of`). Its product with inputs ``z`` is ``Σ_s c_us (z S_sᵀ)``: one matrix product with the stacked
    slots for the whole batch, instead of building each user's matrix and multiplying user by user; the
    gradient reaches ``φ_u`` and ``a_u`` through the same two operations.
    """

    def __init__(self, coef: Tensor, slots: Tensor) -> None:
        if coef.dim() != 2 or slots.dim() != 3 or coef.shape[1] != slots.shape[0]:
            raise ValueError(f"Mixture needs coef [B, S] and slots [S, out, in]; got {tuple(coef.shape)} and "
                             f"{tuple(slots.shape)}")
        self.coef, self.slots = coef, slots

    @classmethod
    def of(cls, base: Tensor, coef: Tensor, slots: Tensor) -> Mixture:
        """``base + Σ_k coef[:, k] slots[k]`` (``base`` ``[out, in]`` shared by the users, ``coef`` ``[B, K]``)."""
        ones = coef.new_ones(coef.shape[0], 1)
        return cls(torch.cat([ones, coef], 1), torch.cat([base.unsqueeze(0), slots.to(base.dtype)]))

    @property
    def shape(self) -> torch.Size:
        """One user's weight shape, ``(out, in)``."""
        return self.slots.shape[1:]

    def detach(self) -> Mixture:
        return Mixture(self.coef.detach(), self.slots.detach())

    def dense(self) -> Tensor:
        """The users' weights ``[B, out, in]`` (where a dense per-user copy is needed after all)."""
        return (self.coef @ self.slots.flatten(1)).view(self.coef.shape[0], *self.shape)

    def apply(self, z: Tensor) -> Tensor:
        """``z W_uᵀ`` for ``z`` ``[B, ..., in]``: ``[B, ..., out]``, as ``[c_u1 z, …, c_uS z] [S_1, …, S_S]ᵀ``, one
        matrix product over the stacked slots for all users."""
        users, (n_slots, out_f, in_f) = z.shape[0], self.slots.shape
        rows = z.reshape(users, -1, 1, in_f) * self.coef[:, None, :, None].to(z.dtype)  # [B, n, S, in]
        stacked = self.slots.permute(1, 0, 2).reshape(out_f, n_slots * in_f)
        return F.linear(rows.reshape(users, -1, n_slots * in_f), stacked).reshape(*z.shape[:-1], out_f)


class LowRank:
    """Per-user matrices kept as a base plus sums of outer products, ``G_u = B_u + Σ_r L_urᵀ R_ur`` (``left``
    ``[B, r, out]``, ``right`` ``[B, r, in]``; ``base`` none, one matrix ``[out, in]`` shared by the users, one per
    user ``[B, out, in]``, or a :class:`Mixture`), never formed as ``[B, out, in]`` unless asked (:meth:`dense`).

    A linear layer's per-user gradient at the adapted weights is one, ``∇_θ L = Δᵀ X`` (``r`` rows: one for a
    user-tower layer), and so is a factored adapted weight, ``θ̂ = θ_0 − ρ Δᵀ X`` (base ``θ_0``): the batched
    path gives MAMO's ``M_U`` gradients of Eq. 6 (``fused_memory_write``) and adapted ``M_{u,I}`` of Eq. 8 in
    this form, and the writes need only :meth:`weighted_sum`.
    """

    def __init__(self, left: Tensor, right: Tensor, base: Tensor | Mixture | None = None) -> None:
        if left.dim() != 3 or right.dim() != 3 or left.shape[:2] != right.shape[:2]:
            raise ValueError(f"LowRank needs left [B, r, out] and right [B, r, in]; got {tuple(left.shape)} and "
                             f"{tuple(right.shape)}")
        self.left, self.right, self.base = left, right, base

    @property
    def shape(self) -> torch.Size:
        """``(B, out, in)``, the shape of :meth:`dense`."""
        return torch.Size((self.left.shape[0], self.left.shape[2], self.right.shape[2]))

    def dense(self) -> Tensor:
        """``[B, out, in]``: each user's ``B_u + Σ_r L_urᵀ R_ur``."""
        if self.base is None:
            return torch.bmm(self.left.mT, self.right)
        base = dense_weight(self.base)
        return torch.baddbmm(base if base.dim() == 3 else base.expand(self.shape), self.left.mT, self.right)

    def detach(self) -> LowRank:
        return LowRank(self.left.detach(), self.right.detach(), None if self.base is None else self.base.detach())

    def weighted_sum(self, weights: Tensor) -> Tensor:
        """``Σ_u w_uk G_u`` for ``weights`` ``[B, K]``: ``[K, out, in]``, the outer products as one matrix product
        over the ``B·r`` rows (``(B·r)·out·K·in`` multiply-adds, never the ``B`` dense matrices)."""
        users, rank, out_f = self.left.shape
        in_f, k = self.right.shape[2], weights.shape[1]
        weights = weights.to(self.right.dtype)
        scaled = self.right.unsqueeze(2) * weights[:, None, :, None]  # [B, r, K, in]
        total = self.left.reshape(users * rank, out_f).mT @ scaled.reshape(users * rank, k * in_f)
        total = total.view(out_f, k, in_f).transpose(0, 1)
        if self.base is None:
            return total
        if isinstance(self.base, Mixture):  # Σ_u w_uk Σ_s c_us S_s = Σ_s (wᵀ c)_ks S_s
            part = (weights.mT @ self.base.coef) @ self.base.slots.flatten(1)
        elif self.base.dim() == 2:  # shared: (Σ_u w_uk) θ_0
            part = weights.sum(0)[:, None] * self.base.flatten()[None]
        else:
            part = weights.mT @ self.base.flatten(1)
        return total + part.view(k, out_f, in_f)

    @staticmethod
    def cat(pieces: list[LowRank]) -> LowRank:
        """The users of several :class:`LowRank` (the same ``r``, bases of one kind) in order."""
        bases = [p.base for p in pieces]
        if all(b is None for b in bases):
            base = None
        elif all(isinstance(b, Mixture) and b.slots is bases[0].slots for b in bases):
            base = Mixture(torch.cat([b.coef for b in bases]), bases[0].slots)
        elif all(isinstance(b, Tensor) and b.dim() == 2 and b is bases[0] for b in bases):
            base = bases[0]
        else:
            base = torch.cat([p.base.dense() if isinstance(p.base, Mixture) else p.base.expand(len(p), *p.shape[1:])
                              for p in pieces])
        return LowRank(torch.cat([p.left for p in pieces]), torch.cat([p.right for p in pieces]), base)

    def __len__(self) -> int:
        return self.left.shape[0]


def adapted_forms(dense: Params, factors: Factors, lr: float, names: list[str]) -> Params:
    """:func:`materialise` without forming anything: a factored weight as the :class:`LowRank` ``θ_0 − ρ Δᵀ X``
    (base ``θ_0``), every other tensor as it is (shared, per user or a :class:`Mixture`)."""
    out = {}
    for n in names:
        layer = n.removesuffix(".weight")
        if n.endswith(".weight") and layer in factors:
            x_all, d_all = factors[layer]
            out[n] = LowRank(d_all * -lr, x_all, dense[n])
        else:
            out[n] = dense[n]
    return out


def dense_weight(w: Tensor | Mixture) -> Tensor:
    """``w`` itself, or a :class:`Mixture`'s per-user weights ``[B, out, in]``."""
    return w.dense() if isinstance(w, Mixture) else w


def apply_linear(z: Tensor, w: Tensor | Mixture, b: Tensor | None) -> Tensor:
    """``z wᵀ + b`` for one weight ``w`` (``[out, in]``, ``F.linear``) or one per user (``[B, out, in]`` or a
    :class:`Mixture`, ``z`` then ``[B, ..., in]``, what :mod:`mamo_lite.meta.batched` adapts); a bias ``[B, out]``
    is one per user too."""
    if isinstance(w, Mixture):
        h = w.apply(z)
        if b is None:
            return h
        if b.dim() == 1:
            return h + b
    elif w.dim() == 2:
        if b is None or b.dim() == 1:
            return F.linear(z, w, b)
        h = F.linear(z, w)
    else:
        rows = z.reshape(z.shape[0], -1, z.shape[-1])
        h = torch.bmm(rows, w.mT).reshape(*z.shape[:-1], w.shape[-2])
        if b is None:
            return h
        if b.dim() == 1:
            return h + b
    return h + b.reshape(b.shape[0], *([1] * (z.dim() - 2)), b.shape[-1])


def low_rank(z: Tensor, x_all: Tensor, d_all: Tensor) -> Tensor:
    """``(z X_allᵀ) Δ_all``: what the factors change in a layer's output; factors ``[B, r, ·]`` with a leading user
    dimension (:mod:`mamo_lite.meta.batched`) apply to ``z`` ``[B, ..., in]`` user by user."""
    if x_all.dim() == 2:
        return (z @ x_all.mT) @ d_all
    rows = z.reshape(z.shape[0], -1, z.shape[-1])
    return torch.bmm(torch.bmm(rows, x_all.mT), d_all).reshape(*z.shape[:-1], d_all.shape[-1])


def forward(model: EmbeddingRecommender, weights: Params, factors: Factors, lr: float, user_x: Tensor,
            item_x: dict[str, Tensor], taps: Params | None = None,
            inputs: dict[str, Tensor] | None = None) -> Tensor:
    """``EmbeddingRecommender.forward`` (Eqs. 1–2) with each factored layer applied as ``z θ_0ᵀ + b − ρ (z Xᵀ) Δ``.

    ``weights`` holds every tensor the pass reads (global ``φ`` and dense fast ones, ``θ_0`` of factored
    layers); ``taps`` (``{layer: zeros like its output}``) are added to layer outputs, so their gradient is
    ``Δ``; ``inputs``, if given, receives each tapped layer's input ``X``.
    """

    def linear(name: str, z: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        w, b = weights[f"{name}.weight"], weights.get(f"{name}.bias")
        if isinstance(z, tuple):  # z = [e_u, e_i] per item: e_u's share of z wᵀ once per user, not once per item
            e_u, e_i = z
            d = e_u.shape[-1]
            h = apply_linear(e_i, _columns(w, d, None), b) + apply_linear(e_u, _columns(w, 0, d), None).unsqueeze(-2)
            z = _whole(z) if name in factors or (taps is not None and name in taps) else None
        else:
            h = apply_linear(z, w, b)
        if name in factors:
            h = h - lr * low_rank(z, *factors[name])
        if taps is not None and name in taps:
            h = h + taps[name]
            if inputs is not None:
                inputs[name] = z
        return h

    def sequence(prefix: str, modules: nn.Sequential, z: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        for i, m in enumerate(modules):
            z = linear(f"{prefix}.{i}", z) if isinstance(m, nn.Linear) else m(_whole(z))
        return _whole(z)

    e_u = sequence("user_tower", model.user_tower, model.user_profile_vector(user_x, weights))
    e_i = sequence("item_tower", model.item_tower, model.item_profile_vector(item_x, weights))
    x = (e_u, e_i)  # Eq. 2's input [e_u, e_i], concatenated only where a pass needs it whole
    if model.preference is not None:
        x = linear("preference", x)
    out = linear("out", sequence("decision", model.decision, x))
    return out.squeeze(-1) if model.config.head == "regression" else out


def _whole(z: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    """``[e_u, e_i]`` per item (``joint_input``) for the pair ``(e_u, e_i)``, or ``z`` itself if it is a tensor."""
    return joint_input(*z) if isinstance(z, tuple) else z


def _columns(w: Tensor | Mixture, start: int, stop: int | None) -> Tensor | Mixture:
    """Input columns ``start:stop`` of a weight (shared ``[out, in]``, per user ``[B, out, in]`` or a :class:`Mixture`)."""
    if isinstance(w, Mixture):
        return Mixture(w.coef, w.slots[..., start:stop])
    return w[..., start:stop]


def _output_shapes(model: EmbeddingRecommender, names: list[str], task: dict,
                   which: str = "support") -> dict[str, tuple[int, ...]]:
    """The output shape of each layer on ``task``'s ``support`` or ``query`` set (user-tower layers see one row,
    ``p_u``)."""
    rows_u = tuple(task["user_x"].shape[:-1])
    rows_i = tuple(task[f"{which}_y"].shape)
    modules = dict(model.named_modules())
    return {n: (rows_u if n.startswith("user_tower") else rows_i) + (modules[n].out_features,) for n in names}


def loss(model: EmbeddingRecommender, weights: Params, factors: Factors, lr: float, task: dict, which: str,
         taps: Params | None = None, inputs: dict[str, Tensor] | None = None) -> Tensor:
    """Masked loss of one user on its ``support`` or ``query`` set (as ``MetaLearner.task_loss``)."""
    out = forward(model, weights, factors, lr, task["user_x"], task[f"{which}_x"], taps, inputs)
    return rating_loss(out, task[f"{which}_y"], task[f"{which}_mask"], head=model.config.head,
                       rating_min=model.spec.rating_min)


def adapt(model: EmbeddingRecommender, params: Params, fast: Params, parts: list[dict], *, steps: int, lr: float,
          first_order: bool) -> tuple[Params, Factors]:
    """Eq. 11 with factored linear layers: ``steps`` passes over ``parts`` (the support set, or its single ratings).

    Returns ``(dense, factors)``: ``dense`` is ``fast`` with the factored layers' weights left at ``θ_0`` and every
    other local tensor (biases, embedding rows) updated as ``θ ← θ − ρ g``; ``factors`` the stacked ``(X, Δ)``.
    """
    names = factored_layers(model, fast)
    weight_keys = {f"{n}.weight" for n in names}
    dense = dict(fast)
    factors: Factors = {}
    for _ in range(steps):
        for part in parts:
            shapes = _output_shapes(model, names, part)
            zeros = {n: fast[f"{n}.weight"].new_zeros(shapes[n]) for n in names}
            movable = {k: v for k, v in dense.items() if k not in weight_keys}

            def support_loss(mov: Params, taps: Params, part: dict = part) -> tuple[Tensor, dict]:
                seen: dict[str, Tensor] = {}
                value = loss(model, {**params, **dense, **mov}, factors, lr, part, "support", taps, seen)
                return value, seen

            (g, d), xs = grad(support_loss, argnums=(0, 1), has_aux=True)(movable, zeros)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
                d = {k: v.detach() for k, v in d.items()}
                xs = {k: v.detach() for k, v in xs.items()}
            dense.update({k: movable[k] - lr * g[k] for k in movable})
            for n in names:
                x = xs[n].reshape(-1, xs[n].shape[-1])
                delta = d[n].reshape(-1, d[n].shape[-1])
                if n in factors:
                    x0, d0 = factors[n]
                    x, delta = torch.cat([x0, x]), torch.cat([d0, delta])
                factors[n] = (x, delta)
    return dense, factors


def materialise(dense: Params, factors: Factors, lr: float, names: list[str]) -> Params:
    """Dense adapted weights ``θ̂ = θ_0 − ρ Δᵀ X`` for the parameter ``names`` (what a learner's ``user_aux`` reads)."""
    out = {}
    for n in names:
        layer = n.removesuffix(".weight")
        if n.endswith(".weight") and layer in factors:
            x_all, d_all = factors[layer]
            out[n] = dense[n] - lr * (d_all.mT @ x_all)
        else:
            out[n] = dense[n]
    return out
