"""RUM: recommendation with user memory networks (Chen et al., WSDM 2018), a Table 1 baseline of MAMO.

RUM is matrix factorisation whose user vector is the sum of an intrinsic vector and a vector read
from a per-user external memory, ``p_u = p*_u + α·p^m_u`` (MERGE), and whose score is the product
``p_u·q_i`` (MAMO §3.2: "neural matrix factorization as the recommender model"). Two memories:

* **item-level** — the memory holds the vectors of the user's most recent items, first in, first
  out, ``K`` slots; it is read with attention keyed by the target item over the stored items:
  ``z_k = softmax_k(q_i·m_k)``, ``p^m = Σ_k z_k m_k`` (:func:`item_memory_write`,
  :func:`item_memory_read`);
* **feature-level** — ``K`` slots hold the user's preference on ``K`` global latent features with
  keys ``F = [f_1..f_K]`` shared by all users; read ``p^m = Σ_k z_k m_k`` with
  ``z_k = softmax_k(q_i·f_k)``; written NTM-style, ``m_k ← m_k ⊙ (1 − z_k e) + z_k a`` with erase
  ``e = σ(W_e v + b_e)`` and add ``a = tanh(W_a v + b_a)`` (:func:`feature_memory_write`).

RUM is not meta-learned: the towers, ``F``, ``W_e, b_e, W_a, b_a``, ``e_r`` and ``μ`` are trained
by SGD on the training users; per user there is only the memory, built by forward passes over the
support set. No gradient step is ever taken on an evaluated user.

Adaptation to MAMO's protocol (MAMO §3.1.3, §3.3.1, A.2.2; ../shared/notes/baselines.md §5). The
RUM paper has no public code and MAMO does not say how it adapted it, so every choice below is a
**[decision]**, most of them exposed as arguments of :class:`RUM`:

1. *Cold users and cold items get vectors from their profiles*, not from ids (every test user is
   unseen, many query items are cold): ``p*_u = W_u·FE(p_u) + b_u`` and ``q_i = W_i·FE(p_i) + b_i``
   in ``R^dim``, FE being MeLU's field embedding (one table of width ``dim`` per field, a
   multi-valued field the mean of its active rows; :class:`FieldEmbedding`). The same ``q_i`` is
   the read key, the write input and the score's item vector.
2. *Rating head and loss*: ``ŷ = p_u·q_i + μ`` with ``μ`` a learned scalar initialised at the
   middle of the rating scale (the sigmoid of the paper's implicit-feedback score is dropped);
   loss: the mean squared error of the real ratings, plus ``reg·‖Θ‖²`` over every parameter but
   ``μ``, applied as SGD weight decay ``2·reg`` (the same gradient). No negative sampling: MAMO's
   task is rating prediction on the observed ratings.
3. *What is written*: ``v = q_i`` (the paper's, ``rating_aware=False``, the Table 1 setting): the
   memory records *which* items the user rated, not how. ``rating_aware=True`` writes
   ``v = q_i + e_r`` with ``e_r`` a learned vector per rating value (an ablation).
4. *Order*: a user's 20 ratings in protocol order (support then query: time order on MovieLens).
   Training predicts every position ``t`` from the memory built from positions ``< t``, then writes
   position ``t``; the loss averages all real positions (position 1 reads an empty memory).
   Gradients flow through the writes (back-propagation through ≤ 20 steps), otherwise the
   erase/add weights would never learn. Padded positions are neither scored nor written.
5. *An evaluated user's support set* is written into the memory (all of it, in order), then every
   query rating is predicted from that memory, with no write between query predictions: no query
   rating is ever written before it is predicted.
6. *Initial memory*: item-level empty (the read returns ``p^m = 0`` until something is stored: a
   softmax over no slot is undefined); feature-level zeros, as alimamarankgroup/HPMN's
   feature_level_rum.py.
7. ``K = 20`` slots (MAMO A.2.2). With 20 ratings per user the item-level FIFO never evicts here
   (at most 19 items are stored before a prediction), so item-level RUM is attention over the
   user's history; eviction is implemented and tested all the same.
8. *Learned erase/add transforms* (``W_e, W_a``), and no read strength (sharpening) parameter: the
   paper is read this way; HPMN's version uses ``σ(q)``/``tanh(q)`` with no weights.
9. *Optimisation*: plain SGD at rate ``lr`` (MAMO A.2.2) on mini-batches of ``users_per_batch``
   users (32, MeLU's), reshuffled every epoch; epochs with early stopping on validation MAE
   (:func:`mamo_lite.methods.baselines.fit_baseline`).
10. *Initialisation*: field tables and feature keys ``N(0, 0.1²)`` (small vectors: the first
    predictions sit near ``μ``), linear layers PyTorch's default.
11. *Hyper-parameters*: :data:`RUM_GRID` holds MAMO A.2.2's grid (learning rate, α, embedding
    size, regularisation), searched per variant and dataset on validation users, never test users;
    :data:`RUM_SEARCH` is the recorded coordinate-wise order (dim and reg at α = 0.2, then the
    learning rate, then α), since the full grid is 1,100 runs; the search itself is the generic
    :func:`mamo_lite.methods.baselines.select_hyperparameters` (a method module imports no other
    method's module, so the runner passes :class:`RUM` to it).

Usage (the same interface as every trained non-meta baseline, see
:mod:`mamo_lite.methods.baselines`)::

    from mamo_lite.methods import baselines, rum
    fitted = baselines.fit_baseline(rum.RUM, train, val, spec=data.spec, seed=0, max_epochs=50,
                                    patience=5, variant="feature", **rum.DEFAULTS)
    pred = fitted.predict(test)                                      # [B, Q]
    chosen, table = baselines.select_hyperparameters(
        rum.RUM, rum.RUM_SEARCH, train, val, spec=data.spec, start=rum.DEFAULTS, seed=0,
        max_epochs=30, patience=3, variant="item")                   # validation users only
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamo_lite.data.tasks import FeatureSpec, TaskBatch
from mamo_lite.models.recommender import EmbeddingRecommender, RecommenderConfig

__all__ = ["DEFAULTS", "RUM", "RUM_GRID", "RUM_SEARCH", "VARIANTS", "FieldEmbedding", "feature_memory_read",
           "feature_memory_write", "feature_weights", "item_memory_read", "item_memory_write", "merge", "mf_score"]

VARIANTS: tuple[str, ...] = ("item", "feature")

RUM_GRID: dict[str, tuple[float | int, ...]] = {
    "lr": (1.0, 0.1, 0.01, 0.001, 0.0001),
    "alpha": tuple(round(0.1 * k, 1) for k in range(11)),
    "dim": (10, 20, 30, 40, 50),
    "reg": (0.1, 0.01, 0.001, 0.0001),
}
"""MAMO appendix A.2.2's grid for RUM: SGD learning rate, MERGE weight α, embedding size, regularisation."""

RUM_SEARCH: tuple[dict[str, tuple], ...] = (
    {"dim": RUM_GRID["dim"], "reg": RUM_GRID["reg"]},
    {"lr": RUM_GRID["lr"]},
    {"alpha": RUM_GRID["alpha"]},
)
"""The coordinate-wise search order (baselines.md §5): dim × reg at α = 0.2, then lr, then α."""

DEFAULTS: dict[str, Any] = {"lr": 0.1, "alpha": 0.2, "dim": 20, "reg": 0.0001}
"""Where the search starts; α = 0.2 is HPMN's fixed merge weight and RecBoard's default."""


# -- the pieces, each a tested function -----------------------------------------------------------

def mf_score(p_u: Tensor, q_i: Tensor, mu: Tensor | float) -> Tensor:
    """The matrix-factorisation rating ``ŷ = p_u·q_i + μ`` (dot product over the last dim)."""
    return (p_u * q_i).sum(-1) + mu


def merge(p_star: Tensor, p_memory: Tensor, alpha: float) -> Tensor:
    """RUM's MERGE: ``p_u = p*_u + α·p^m_u``."""
    return p_star + alpha * p_memory


def item_memory_write(memory: Tensor, count: Tensor, v: Tensor, write: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Push ``v [B, D]`` into the FIFO ``memory [B, K, D]`` holding ``count [B]`` items (oldest in slot 0).

    Below ``K`` items, ``v`` fills slot ``count``; at ``K`` the oldest leaves (slots shift down) and
    ``v`` takes slot ``K − 1``. Users with ``write`` False are left unchanged. Returns
    ``(memory, count)``.
    """
    k = memory.shape[-2]
    full = count >= k
    slot = F.one_hot(count.clamp(max=k - 1), k).to(memory.dtype).unsqueeze(-1)  # [B, K, 1]
    filled = memory * (1 - slot) + slot * v.unsqueeze(-2)
    shifted = torch.cat([memory[..., 1:, :], v.unsqueeze(-2)], -2)
    new = torch.where(full[:, None, None], shifted, filled)
    new_count = (count + 1).clamp(max=k)
    if write is not None:
        new = torch.where(write[:, None, None], new, memory)
        new_count = torch.where(write, new_count, count)
    return new, new_count


def item_memory_read(memory: Tensor, count: Tensor, q: Tensor) -> Tensor:
    """``p^m = Σ_k softmax_k(q·m_k) m_k`` over the ``count`` stored slots; 0 for an empty memory.

    ``memory [B, K, D]``, ``count [B]``, ``q [B, D]`` or ``[B, N, D]`` (N target items); returns
    ``q``'s shape.
    """
    single = q.dim() == 2
    q = q.unsqueeze(1) if single else q
    logits = q @ memory.transpose(-1, -2)  # [B, N, K]
    stored = torch.arange(memory.shape[-2], device=memory.device) < count.unsqueeze(-1)  # [B, K]
    logits = logits.masked_fill(~stored.unsqueeze(1), float("-inf"))
    z = torch.softmax(logits.masked_fill((count == 0)[:, None, None], 0.0), -1)
    out = (z @ memory) * (count > 0).to(memory.dtype)[:, None, None]
    return out.squeeze(1) if single else out


def feature_weights(q: Tensor, keys: Tensor) -> Tensor:
    """``z_k = softmax_k(q·f_k)``: ``q [..., D]``, ``keys [K, D]`` → ``[..., K]``."""
    return torch.softmax(q @ keys.T, -1)


def feature_memory_read(memory: Tensor, keys: Tensor, q: Tensor) -> Tensor:
    """``p^m = Σ_k z_k m_k`` with ``z = softmax(q·F)``: ``memory [B, K, D]``, ``q [B, D]`` or ``[B, N, D]``."""
    single = q.dim() == 2
    q = q.unsqueeze(1) if single else q
    out = feature_weights(q, keys) @ memory
    return out.squeeze(1) if single else out


def feature_memory_write(memory: Tensor, z: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """The erase/add write ``m_k ← m_k ⊙ (1 − z_k e) + z_k a``: ``memory [B, K, D]``, ``z [B, K]``, ``e, a [B, D]``."""
    z = z.unsqueeze(-1)
    return memory * (1 - z * erase.unsqueeze(-2)) + z * add.unsqueeze(-2)


class FieldEmbedding(nn.Module):
    """MeLU's field embedding (FE): the profile lookup of :class:`EmbeddingRecommender`, without its towers.

    One table of width ``width`` per field; ``user_vector``/``item_vector`` concatenate them (a
    multi-valued field is the mean of its active rows). The lookup code is the recommender's own
    (borrowed methods), so there is one way to embed profiles in the package.
    """

    user_profile_vector = EmbeddingRecommender.user_profile_vector
    item_profile_vector = EmbeddingRecommender.item_profile_vector

    def __init__(self, spec: FeatureSpec, width: int, init_std: float = 0.1) -> None:
        super().__init__()
        self.spec = spec
        self.config = RecommenderConfig(embed_dim=width, field_dim=width)  # multi_pooling="mean"
        self.user_profile = nn.ModuleDict({f.name: nn.Embedding(f.vocab_size, width) for f in spec.user_fields})
        self.item_profile = nn.ModuleDict({f.name: nn.Embedding(f.vocab_size, width) for f in spec.item_fields})
        for emb in [*self.user_profile.values(), *self.item_profile.values()]:
            nn.init.normal_(emb.weight, std=init_std)


def _sequence(batch: TaskBatch) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Support then query as one sequence per user: ``(item_x [B, S+Q, ...], y [B, S+Q], mask)``."""
    item_x = {}
    for k in batch.support_x:
        s, q = batch.support_x[k], batch.query_x[k]
        if k != "cat":  # multi-valued: padded to different lengths
            width = max(s.shape[-1], q.shape[-1])
            s, q = F.pad(s, (0, width - s.shape[-1])), F.pad(q, (0, width - q.shape[-1]))
        item_x[k] = torch.cat([s, q], 1)
    return (item_x, torch.cat([batch.support_y, batch.query_y], 1),
            torch.cat([batch.support_mask, batch.query_mask], 1))


class RUM(nn.Module):
    """Item-level (``variant="item"``) or feature-level (``"feature"``) RUM on profile vectors.

    ``dim`` is the embedding size ``D``, ``slots`` the memory size ``K``, ``alpha`` the MERGE weight,
    ``lr`` and ``reg`` the SGD rate and L2 weight, ``users_per_batch`` the users per SGD step,
    ``rating_aware`` writes ``q_i + e_r`` instead of ``q_i``. See the module docstring for every
    choice. Implements the baseline interface (``train_epoch``, ``predict``).
    """

    def __init__(self, spec: FeatureSpec, *, variant: Literal["item", "feature"] = "feature", dim: int = 20,
                 slots: int = 20, alpha: float = 0.2, lr: float = 0.1, reg: float = 0.0001,
                 users_per_batch: int = 32, rating_aware: bool = False, init_std: float = 0.1) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        for name, value in (("dim", dim), ("slots", slots), ("users_per_batch", users_per_batch)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (lr > 0 and reg >= 0 and 0 <= alpha):
            raise ValueError(f"need lr > 0, reg ≥ 0 and alpha ≥ 0, got lr={lr!r}, reg={reg!r}, alpha={alpha!r}")
        self.spec, self.variant, self.dim, self.slots = spec, variant, dim, slots
        self.alpha, self.lr, self.reg = float(alpha), float(lr), float(reg)
        self.users_per_batch, self.rating_aware = users_per_batch, rating_aware
        self.fields = FieldEmbedding(spec, dim, init_std)
        self.user_tower = nn.Linear(len(spec.user_fields) * dim, dim)  # p*_u = W_u FE(p_u) + b_u
        self.item_tower = nn.Linear(len(spec.item_fields) * dim, dim)  # q_i = W_i FE(p_i) + b_i
        self.mu = nn.Parameter(torch.tensor((spec.rating_min + spec.rating_max) / 2))
        if variant == "feature":
            self.feature_keys = nn.Parameter(init_std * torch.randn(slots, dim))  # F
            self.erase = nn.Linear(dim, dim)  # W_e, b_e
            self.add = nn.Linear(dim, dim)  # W_a, b_a
        if rating_aware:
            n_values = round(spec.rating_max - spec.rating_min) + 1
            self.rating_vectors = nn.Embedding(n_values, dim)  # e_r
            nn.init.normal_(self.rating_vectors.weight, std=init_std)
        self._optimizer: torch.optim.Optimizer | None = None

    # -- vectors and memory ---------------------------------------------------------------------
    def user_vector(self, user_x: Tensor) -> Tensor:
        """``p*_u``, ``[B, dim]``."""
        return self.user_tower(self.fields.user_profile_vector(user_x))

    def item_vector(self, item_x: dict[str, Tensor]) -> Tensor:
        """``q_i``, ``[..., N, dim]``."""
        return self.item_tower(self.fields.item_profile_vector(item_x))

    def empty_memory(self, n_users: int) -> tuple[Tensor, Tensor]:
        """``(memory [B, K, D], count [B])``: zeros (feature-level) or an empty FIFO (item-level)."""
        dev = self.mu.device
        return (torch.zeros(n_users, self.slots, self.dim, device=dev, dtype=self.mu.dtype),
                torch.zeros(n_users, dtype=torch.long, device=dev))

    def read(self, state: tuple[Tensor, Tensor], q: Tensor) -> Tensor:
        """``p^m_u`` for target item(s) ``q``."""
        memory, count = state
        if self.variant == "item":
            return item_memory_read(memory, count, q)
        return feature_memory_read(memory, self.feature_keys, q)

    def write(self, state: tuple[Tensor, Tensor], v: Tensor, q: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``v [B, D]`` (rated item ``q``) for the users where ``mask``."""
        memory, count = state
        if self.variant == "item":
            return item_memory_write(memory, count, v, mask)
        new = feature_memory_write(memory, feature_weights(q, self.feature_keys), torch.sigmoid(self.erase(v)),
                                   torch.tanh(self.add(v)))
        return torch.where(mask[:, None, None], new, memory), count + mask.long()

    def score(self, p_star: Tensor, q: Tensor, state: tuple[Tensor, Tensor]) -> Tensor:
        """``ŷ = (p*_u + α·p^m_u)·q_i + μ`` for ``q [B, D]`` or ``[B, N, D]``."""
        p = merge(p_star if q.dim() == 2 else p_star.unsqueeze(1), self.read(state, q), self.alpha)
        return mf_score(p, q, self.mu)

    def _values(self, q: Tensor, y: Tensor) -> Tensor:
        if not self.rating_aware:
            return q
        idx = (y - self.spec.rating_min).round().long().clamp(0, self.rating_vectors.num_embeddings - 1)
        return q + self.rating_vectors(idx)

    def sequence_predictions(self, batch: TaskBatch) -> Tensor:
        """Training-time predictions ``[B, S+Q]``: position ``t`` from the memory of positions ``< t``."""
        item_x, y, mask = _sequence(batch)
        p_star, q = self.user_vector(batch.user_x), self.item_vector(item_x)
        v = self._values(q, y)
        state = self.empty_memory(len(batch))
        out = []
        for t in range(y.shape[1]):
            out.append(self.score(p_star, q[:, t], state))
            state = self.write(state, v[:, t], q[:, t], mask[:, t])
        return torch.stack(out, 1)

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query predictions ``[B, Q]``: write the whole support set, then score every query item."""
        with torch.no_grad():
            p_star = self.user_vector(batch.user_x)
            q_s, q_q = self.item_vector(batch.support_x), self.item_vector(batch.query_x)
            v = self._values(q_s, batch.support_y)
            state = self.empty_memory(len(batch))
            for t in range(q_s.shape[1]):
                state = self.write(state, v[:, t], q_s[:, t], batch.support_mask[:, t])
            return self.score(p_star, q_q, state)

    # -- training -------------------------------------------------------------------------------
    def optimizer(self) -> torch.optim.Optimizer:
        """Plain SGD at ``lr``; ``reg·‖Θ‖²`` as weight decay ``2·reg`` on every parameter but ``μ``."""
        if self._optimizer is None:
            rest = [p for n, p in self.named_parameters() if n != "mu"]
            self._optimizer = torch.optim.SGD([{"params": rest, "weight_decay": 2 * self.reg},
                                               {"params": [self.mu], "weight_decay": 0.0}], lr=self.lr)
        return self._optimizer

    def train_epoch(self, train: TaskBatch, generator: torch.Generator) -> float:
        """One pass of SGD over the training users (shuffled); returns the mean squared error of the pass."""
        opt = self.optimizer()
        total, count = 0.0, 0.0
        for batch in train.batches(self.users_per_batch, shuffle=True, generator=generator):
            _, y, mask = _sequence(batch)
            m = mask.to(y.dtype)
            sq = (self.sequence_predictions(batch) - y).square() * m
            loss = sq.sum() / m.sum().clamp(min=1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(sq.detach().sum())
            count += float(m.sum())
        return total / max(count, 1.0)

