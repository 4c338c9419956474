"""The embedding recommender of MAMO §2.2 (Eqs. 1–2), shared by every method in the book.

``p_u``/``p_i`` (profile vectors) come from per-field embeddings (§3.1.2: one table per
categorical field, multi-valued fields projected to the same width); the towers ``f_θu``/``f_θi``
map them to ``e_u``/``e_i`` (Eq. 1); the recommender ``f_θr`` predicts the rating from
``[e_u, e_i]`` through the preference matrix ``M_{u,I}`` and fully connected layers (Eq. 2).

Parameters are grouped as in the paper so that methods can say which ones adapt per user:

==============  =====================================  ======================
group           parameters                             paper
==============  =====================================  ======================
``profile``     field embedding tables                 ``p_u``, ``p_i`` inputs
``user``        user tower                             ``θ_u`` (``φ_u``)
``item``        item tower                             ``θ_i`` (``φ_i``)
``preference``  ``M_{u,I}`` slot (no bias)             fast weights of Eq. 2
``decision``    fully connected head                   ``θ_r`` (``φ_r``)
==============  =====================================  ======================
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamo_lite.data.tasks import FeatureSpec
from mamo_lite.utils import check_literal_fields, check_range

GROUPS: tuple[str, ...] = ("profile", "user", "item", "preference", "decision")
_GROUP_OF = {"user_profile": "profile", "item_profile": "profile", "user_tower": "user", "item_tower": "item",
             "preference": "preference", "decision": "decision", "out": "decision"}


@dataclass(frozen=True)
class RecommenderConfig:
    """Architecture of the embedding recommender.

    Defaults are the paper's MovieLens setting (appendix A.3: ``d_e = 100``, 2 layers, LeakyReLU).
    ``preference="paper"`` gives ``M_{u,I} ∈ R^{d_e×2d_e}``; ``"code"`` the authors' ``2d_e×2d_e``;
    ``"none"`` drops the slot (the plain DNN of §3.4.2, and MeLU's network).
    ``output_bias_init="midpoint"`` starts the regression output at the middle of the rating scale;
    ``"zero"`` is PyTorch's default (MeLU's code), which spends its first epochs learning the offset.
    """

    embed_dim: int = 100  # d_e
    field_dim: int | None = None  # width of each field embedding (default: d_e)
    tower_layers: int = 2  # fully connected layers in each tower (0: e = p, as MeLU)
    decision_hidden: tuple[int, ...] | None = None  # hidden widths of f_θr (default: (d_e,))
    preference: Literal["paper", "code", "none"] = "paper"
    activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    negative_slope: float = 0.1  # the authors' slope; the paper only says "LeakyReLU"
    multi_pooling: Literal["mean", "sum"] = "mean"
    head: Literal["regression", "classification"] = "regression"
    output_bias_init: Literal["midpoint", "zero"] = "midpoint"

    def __post_init__(self) -> None:
        check_range(self, "embed_dim", 1, integer=True)
        check_range(self, "tower_layers", 0, integer=True)
        if self.field_dim is not None:
            check_range(self, "field_dim", 1, integer=True)
        widths = self.decision_hidden
        if widths is not None and (not isinstance(widths, tuple) or not widths or not all(
                isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)):
            raise ValueError(f"RecommenderConfig.decision_hidden must be None or a non-empty tuple of layer "
                             f"widths ≥ 1, e.g. (64, 64); got {widths!r}")
        check_range(self, "negative_slope", 0.0)
        check_literal_fields(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decision_hidden"] = list(d["decision_hidden"]) if d["decision_hidden"] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RecommenderConfig:
        d = dict(d)
        if d.get("decision_hidden") is not None:
            d["decision_hidden"] = tuple(d["decision_hidden"])
        return cls(**d)


def _tower_widths(n_in: int, d_out: int, layers: int) -> list[int]:
    """Widths of an Eq. 1 tower: halve per layer (the authors' 300→150→100), end at ``d_e``."""
    widths = [n_in]
    for j in range(1, layers):
        widths.append(max(d_out, n_in // 2**j))
    widths.append(d_out)
    return widths


class EmbeddingRecommender(nn.Module):
    """``ŷ_{u,i} = f_θr(M_{u,I}·[f_θu(p_u), f_θi(p_i)])`` (MAMO Eqs. 1–2).

    ``forward(user_x, item_x)`` scores the items of *one* user: ``user_x`` is ``[F_u]`` (or
    ``[B, F_u]``) and each ``item_x`` tensor is ``[N, ...]`` (or ``[B, N, ...]``). Under
    ``torch.func.vmap`` the leading user dimension disappears, so one code path serves the per-user
    loop, the batched engine and plain (non-meta) training.
    """

    def __init__(self, spec: FeatureSpec, config: RecommenderConfig | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.config = cfg = config or RecommenderConfig()
        d = cfg.embed_dim
        fd = cfg.field_dim or d
        act = nn.LeakyReLU(cfg.negative_slope) if cfg.activation == "leaky_relu" else nn.ReLU()

        self.user_profile = nn.ModuleDict({f.name: nn.Embedding(f.vocab_size, fd) for f in spec.user_fields})
        self.item_profile = nn.ModuleDict({f.name: nn.Embedding(f.vocab_size, fd) for f in spec.item_fields})
        self.user_dim = fd * len(spec.user_fields)  # d_u
        self.item_dim = fd * len(spec.item_fields)  # d_i

        def tower(n_in: int) -> tuple[nn.Sequential, int]:
            if cfg.tower_layers == 0:
                return nn.Sequential(), n_in
            widths = _tower_widths(n_in, d, cfg.tower_layers)
            layers: list[nn.Module] = []
            for a, b in itertools.pairwise(widths):
                lin = nn.Linear(a, b)
                nn.init.zeros_(lin.bias)
                layers += [lin, act]
            return nn.Sequential(*layers), d

        self.user_tower, du = tower(self.user_dim)
        self.item_tower, di = tower(self.item_dim)
        x_dim = du + di
        if cfg.preference == "none":
            self.preference = None
        else:
            out = d if cfg.preference == "paper" else x_dim
            self.preference = nn.Linear(x_dim, out, bias=False)  # the M_{u,I} slot of Eq. 2
            x_dim = out
        hidden = cfg.decision_hidden if cfg.decision_hidden is not None else (d,)
        layers = []
        for h in hidden:
            layers += [nn.Linear(x_dim, h), act]
            x_dim = h
        self.decision = nn.Sequential(*layers)
        self.n_classes = round(spec.rating_max - spec.rating_min) + 1
        self.out = nn.Linear(x_dim, 1 if cfg.head == "regression" else self.n_classes)
        if cfg.head == "regression" and cfg.output_bias_init == "midpoint":
            # Start predictions at the middle of the rating scale (3 on 1-5) instead of ≈ 0: uses only
            # the scale, no training data, and keeps plain-SGD meta-training (λ = 0.05) from diverging.
            nn.init.constant_(self.out.bias, (spec.rating_min + spec.rating_max) / 2)

    # -- parameter groups -------------------------------------------------------------------
    @staticmethod
    def group_of(name: str) -> str:
        """The paper's parameter group (``GROUPS``) of a parameter name."""
        head = name.split(".", 1)[0]
        if head not in _GROUP_OF:
            raise ValueError(f"parameter {name!r} belongs to no group; known prefixes: {sorted(_GROUP_OF)}")
        return _GROUP_OF[head]

    def names_in(self, groups: tuple[str, ...] | list[str] | set[str]) -> list[str]:
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; choose from {GROUPS}")
        return [n for n, _ in self.named_parameters() if self.group_of(n) in groups]

    # -- Eq. 1 ------------------------------------------------------------------------------
    def user_profile_vector(self, user_x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """``p_u``: the concatenated user field embeddings, ``[..., d_u]``.

        ``params`` (a functional parameter dict) overrides the module's own tables, so the
        engine can compute ``p_u`` from ``φ`` inside ``vmap``/``grad``.
        """
        parts = []
        for j, (name, emb) in enumerate(self.user_profile.items()):
            w = emb.weight if params is None else params[f"user_profile.{name}.weight"]
            parts.append(lookup(user_x[..., j], w))
        return torch.cat(parts, -1)

    def item_profile_vector(self, item_x: dict[str, Tensor], params: dict[str, Tensor] | None = None) -> Tensor:
        """``p_i``: categorical embeddings and pooled multi-hot projections, ``[..., N, d_i]``.

        A multi-valued field is given by its indices (``[..., N, slots]``, 0 is padding), or, with one table per user
        (``[B, L, d]``), by a float "bag" ``[B, N, L]`` of pooling weights over the table's rows (what
        :func:`mamo_lite.meta.batched.gather_rows` builds): then ``p_i``'s part is ``bag @ table``.

        ``params`` overrides the module's own tables, as in :meth:`user_profile_vector`.
        """
        parts = []
        cat = item_x.get("cat")
        j = 0
        for f in self.spec.item_fields:
            emb = self.item_profile[f.name]
            w = emb.weight if params is None else params[f"item_profile.{f.name}.weight"]
            if f.kind == "categorical":
                parts.append(lookup(cat[..., j], w))
                j += 1
            elif item_x[f.name].is_floating_point():
                # a bag (mamo_lite.meta.batched): each item's pooling weights over the rows of ``w`` ([B, L, d])
                parts.append(item_x[f.name] @ w)
            else:
                idx = item_x[f.name]
                mask = (idx > 0).unsqueeze(-1).to(w.dtype)
                pooled = (lookup(idx, w) * mask).sum(-2)
                if self.config.multi_pooling == "mean":
                    pooled = pooled / mask.sum(-2).clamp(min=1.0)
                parts.append(pooled)
        return torch.cat(parts, -1)

    def embed(self, user_x: Tensor, item_x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(e_u, e_i)`` of Eq. 1; ``e_u`` is ``[..., d_e]``, ``e_i`` is ``[..., N, d_e]``."""
        return self.user_tower(self.user_profile_vector(user_x)), self.item_tower(self.item_profile_vector(item_x))

    # -- Eq. 2 ------------------------------------------------------------------------------
    def forward(self, user_x: Tensor, item_x: dict[str, Tensor]) -> Tensor:
        """Scores ``[..., N]`` (regression) or logits ``[..., N, n_classes]`` (classification)."""
        x = joint_input(*self.embed(user_x, item_x))
        if self.preference is not None:
            x = self.preference(x)
        out = self.out(self.decision(x))
        return out.squeeze(-1) if self.config.head == "regression" else out

    def predict(self, user_x: Tensor, item_x: dict[str, Tensor]) -> Tensor:
        """Predicted ratings ``[..., N]`` on the dataset's scale (classification: arg-max class)."""
        out = self(user_x, item_x)
        if self.config.head == "regression":
            return out
        return prediction_from_output(out, head="classification", rating_min=self.spec.rating_min)


def joint_input(e_u: Tensor, e_i: Tensor) -> Tensor:
    """Eq. 2's input ``[e_u, e_i]`` for each item: ``e_u`` (``[..., d_u]``) repeated over the items of ``e_i``
    (``[..., N, d_i]``) and concatenated with them, ``[..., N, d_u + d_i]``."""
    return torch.cat([e_u.unsqueeze(-2).expand(*e_i.shape[:-1], e_u.shape[-1]), e_i], -1)


def lookup(idx: Tensor, w: Tensor) -> Tensor:
    """Rows of an embedding table: ``F.embedding(idx, w)`` for one table ``w`` (``[V, d]``), or, for one table per
    user (``w`` ``[B, V, d]``, what :mod:`mamo_lite.meta.batched` adapts), user ``b``'s rows ``w[b, idx[b]]``."""
    if w.dim() == 2:
        return F.embedding(idx, w)
    users, rows = w.shape[0], w.shape[1]
    offset = torch.arange(users, device=idx.device, dtype=idx.dtype).reshape(users, *([1] * (idx.dim() - 1)))
    return F.embedding(idx + offset * rows, w.reshape(users * rows, w.shape[-1]))


def rating_loss(out: Tensor, y: Tensor, mask: Tensor, *, head: str, rating_min: float,
                per_user: bool = False) -> Tensor:
    """Masked mean loss of one task: MSE (regression) or cross-entropy over rating classes.

    With ``per_user`` the leading dimension of ``out``, ``y`` and ``mask`` is a batch of users and the result is
    each user's own masked mean (``[B]``). The cross-entropy is applied to logits, once; the authors' code
    applied it to softmax outputs (a double softmax, see the errata).
    """
    m = mask.to(y.dtype)
    if head == "regression":
        per = (out - y) ** 2
    else:
        target = (y - rating_min).round().long().clamp(min=0, max=out.shape[-1] - 1)
        per = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1), reduction="none").reshape(y.shape)
    if per_user:
        dims = tuple(range(1, y.dim()))
        return (per * m).sum(dims) / m.sum(dims).clamp(min=1.0)
    return (per * m).sum() / m.sum().clamp(min=1.0)


def prediction_from_output(out: Tensor, *, head: str, rating_min: float) -> Tensor:
    """Turn raw outputs into ratings (regression: identity; classification: arg-max class)."""
    if head == "regression":
        return out
    return out.argmax(-1).to(out.dtype) + rating_min
