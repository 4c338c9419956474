"""One functional adaptation engine for every meta-learner in the book (MAMO §2.3.3–2.3.4).

For a user ``u`` the engine runs Algorithm 1's inner loop on the support set and the query loss:

* personalised initialisation ``θ ← init(φ, memories, p_u)`` (MAML: ``θ ← φ``; MAMO: Eqs. 9–10),
* ``inner_steps`` local updates ``θ ← θ − ρ ∇_θ L_S(θ)`` (Eq. 11) on the *local* parameter groups:
  one step on the whole support set per pass (``local_update="batch"``), or one step per support
  rating, in order (``local_update="per-item"``, the paper's Algorithm 1, lines 7–10),
* the query loss ``L_Q(θ̂)``, whose gradient w.r.t. the global parameters ``φ`` is the
  meta-gradient of Eq. 12 (exact second order, or first order with the inner gradients detached).

Everything is written with ``torch.func`` (``functional_call``, ``grad``, ``vmap``): parameters are
never swapped with ``load_state_dict`` (that cuts the graph: hoyeoplee/MeLU#9). There are two
paths with identical maths: a plain per-user Python loop (the reference) and ``vmap`` over a
padded, masked batch of users.

Where embedding tables are local (MAML, MetaCS-DNN, MAMO with every group local), the plain path gives
each user, at each step, a full copy of every table. ``MetaLearner.gather_rows = True`` (opt-in) gives a
user only the rows its own inputs touch (:func:`gather_rows`); the results equal the plain path's to
float rounding. ``MetaLearner.batched_users = True`` (opt-in) runs the ``"vmap"`` path's meta-batch as
batched tensor operations instead (:mod:`mamo_lite.meta.batched`), with the same results to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mamo_lite.data.tasks import TaskBatch, tree_index
from mamo_lite.meta import batched, factored
from mamo_lite.models.recommender import (
    GROUPS,
    EmbeddingRecommender,
    prediction_from_output,
    rating_loss,
)
from mamo_lite.utils import check_literal_fields, check_range

Path = Literal["vmap", "loop"]

_CONFIG_KINDS: dict[str, type] = {}  # MetaConfig subclasses by ``kind`` (for ``MetaConfig.from_dict``)
_IN_VMAP: ContextVar[bool] = ContextVar("mamo_lite_in_vmap", default=False)
AUX_TAPS = "aux_taps"
"""The per-user input key under which :func:`meta_gradient` passes the zero taps of :meth:`MetaLearner.aux_taps`."""


def in_vmap() -> bool:
    """True while :func:`map_users` runs a per-user function under ``vmap``.

    A per-user algorithm must then not branch on data (it masks instead); on the per-user loop path it
    may stop early (s²Meta's learned stop rule).
    """
    return _IN_VMAP.get()


@dataclass(frozen=True)
class MetaConfig:
    """How a learner adapts locally and updates globally.

    ``local_lr`` is ρ (Eq. 11), ``global_lr`` is λ (Eq. 12). ``reduction`` combines the users of a
    meta-batch: Eq. 12 writes a sum; MeLU and most MAML code take the mean (then λ does not
    depend on the batch size). ``local_groups`` names the parameter groups adapted per user
    (see ``mamo_lite.models.recommender.GROUPS``).

    ``inner_steps`` counts passes over the support set; ``local_update`` says what one pass is:
    ``"batch"``, one step on the mean loss of the whole support set (MeLU's and the authors' MAMO
    code, which take 5 and 9 such steps), or ``"per-item"``, one step per support rating in order
    (the paper's Algorithm 1: "for each item in the support set"; 15 steps per pass at |S| = 15).

    A method with more hyper-parameters subclasses this dataclass and names itself in ``kind``;
    ``to_dict`` records the kind and ``MetaConfig.from_dict`` rebuilds that subclass (checkpoints).
    """

    kind: ClassVar[str | None] = None

    local_groups: tuple[str, ...] = GROUPS
    local_lr: float = 0.01
    inner_steps: int = 1
    first_order: bool = True
    global_optimizer: Literal["sgd", "adam"] = "adam"
    global_lr: float = 1e-3
    users_per_batch: int = 32
    reduction: Literal["mean", "sum"] = "mean"
    local_update: Literal["batch", "per-item"] = "batch"

    def __post_init__(self) -> None:
        if isinstance(self.local_groups, str):
            raise TypeError(f"MetaConfig.local_groups must be a tuple of group names, got the string "
                             f"{self.local_groups!r}; write ({self.local_groups!r},)")
        bad = set(self.local_groups) - set(GROUPS)
        if bad:
            raise ValueError(f"MetaConfig.local_groups has unknown group(s) {sorted(bad)}; choose from {GROUPS}")
        check_range(self, "local_lr", 0.0, symbol="ρ")
        check_range(self, "global_lr", 0.0, strict=True, symbol="λ")
        check_range(self, "inner_steps", 0, integer=True)
        check_range(self, "users_per_batch", 1, integer=True)
        if not isinstance(self.first_order, bool):
            raise TypeError(f"MetaConfig.first_order must be True or False, got {self.first_order!r}")
        check_literal_fields(self)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            _CONFIG_KINDS[cls.kind] = cls

    def to_dict(self) -> dict:
        d = asdict(self)
        d["local_groups"] = list(self.local_groups)
        if self.kind is not None:
            d["kind"] = self.kind
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MetaConfig:
        d = dict(d)
        d["local_groups"] = tuple(d["local_groups"])
        kind = d.pop("kind", None)
        if kind is None:
            return cls(**d)
        if kind not in _CONFIG_KINDS:
            raise ValueError(f"unknown MetaConfig kind {kind!r}; known: {sorted(_CONFIG_KINDS)}")
        return _CONFIG_KINDS[kind].from_dict(d)


Params = dict[str, Tensor]


class MetaLearner(nn.Module):
    """A recommender plus the rule that initialises, adapts and meta-updates it.

    Subclasses override :meth:`init_fast` (personalised initialisation), :meth:`memory_state`,
    :meth:`user_aux` and :meth:`write_memories` (MAMO), and :meth:`aux_taps` to take per-user gradients
    at the adapted weights from the main pass instead of a pass of their own (MAMO's opt-in
    ``fused_memory_write``). The engine functions below only call these
    hooks, so MAML, MeLU, MetaCS-DNN and MAMO share one inner loop and one meta-gradient.

    A method whose inner loop is not Eq. 11 (s²Meta's learned optimiser) overrides the per-user
    algorithm itself: :meth:`user_objective` (training: the loss whose gradient is the meta-gradient),
    :meth:`user_predictions` (Algorithm 2), :meth:`batch_inputs` (per-user inputs, e.g. random draws made
    outside ``vmap``), :meth:`configure_optimizer` and :meth:`before_optimizer_step` (e.g. clipping).
    A method that weights users by their gradients (GreatMeta) overrides the batch update itself,
    :meth:`meta_update`.

    ``gather_rows`` (an engine option, default ``False``; not a hyper-parameter, so it is not in
    :class:`MetaConfig` or checkpoints) switches the default per-user algorithm (:func:`user_query_loss`,
    :func:`user_predictions`) to :func:`gather_rows`: each user's fast copy of a *local* embedding table
    holds only the rows its profile, support and query items touch, instead of the whole table.
    Predictions, query losses and meta-gradients equal the plain path's to float rounding (tests), first
    and second order. Turn it on when embedding tables are local and large next to what one user touches:
    MAML and MetaCS-DNN (every group local) and MAMO with ``"profile"`` in ``local_groups`` (the authors'
    configuration); on MovieLens-1M a user touches at most 61 of the director table's 2,187 rows, and
    ``bench/floor.py`` times both paths (``--gather off,on``). With one local step the gain is the copy and
    the dense table gradient a user no longer makes; it grows with ``inner_steps``. It changes
    nothing where no table is local (MeLU, the book's MAMO), and nothing for a method that replaces the
    per-user algorithm (s²Meta, GreatMeta). The book's chapters run with it off: their committed outputs
    come from the plain path, which stays the reference.

    ``factored_updates`` (an engine option like ``gather_rows``, default ``False``) keeps each local linear
    layer as its initial weight plus the factors of its local steps, ``θ̂ = θ_0 − ρ Σ_j Δ_jᵀ X_j``
    (:mod:`mamo_lite.meta.factored`), instead of a per-user dense copy updated at every step; a learner
    whose :meth:`user_aux` reads adapted weights names them in :meth:`aux_reads`, and only those are
    materialised. Results equal the plain path's to float rounding (tests), first and second order,
    ``"batch"`` and ``"per-item"`` local updates, with or without ``gather_rows``. It pays where the factors
    stay small next to the layers: one local step (MAML's, the book's MAMO's); with nine (MAMO's authors'
    configuration) their rank reaches 135 and it gains nothing (``bench/results/floor-cpu.json``).

    ``batched_threads`` (default 1) cuts the batched path's meta-batch into that many groups of users, each run
    in its own thread, torch on one intra-op thread; :meth:`use_fast_paths` sets it to torch's thread count where
    a user's work is more than one first-order local step (:meth:`fast_path_threads`).

    ``batched_users`` (an engine option like ``gather_rows``, default ``False``) has the ``"vmap"`` path run the
    whole meta-batch as batched tensor operations with plain autograd instead of a per-user function under
    ``vmap`` (:mod:`mamo_lite.meta.batched`): each local linear layer in factored form or as a dense per-user
    weight updated by one fused ``baddbmm``, whichever costs less, and ``φ`` shared until a step changes it.
    Same results to float rounding (tests), first and second order; it applies where the default per-user
    algorithm runs on an :class:`~mamo_lite.models.recommender.EmbeddingRecommender` (MAML, MeLU, MetaCS-DNN,
    MAMO), takes precedence over ``factored_updates`` there, and leaves the ``"loop"`` path (the reference)
    alone. On a CPU it is the fastest path measured for MAML, MetaCS-DNN and MAMO, first and second order
    (``bench/results/engine-paths-cpu.json``, ``floor-cpu.json``).
    """

    gather_rows: bool = False
    factored_updates: bool = False
    batched_users: bool = False
    batched_threads: int = 1

    def __init__(self, model: EmbeddingRecommender, config: MetaConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self._local = model.names_in(config.local_groups)

    def use_fast_paths(self, on: bool = True) -> MetaLearner:
        """Turn the engine's equivalent faster paths on (or off): ``gather_rows`` and ``factored_updates`` here,
        plus what a subclass adds (MAMO: ``fused_memory_write``). Results equal the reference path's to float
        rounding, not bitwise, so the book's chapters and ``reproduce`` keep them off. Returns ``self``."""
        self.gather_rows = self.factored_updates = self.batched_users = bool(on)
        self.batched_threads = self.fast_path_threads() if on else 1
        return self

    def fast_path_threads(self) -> int:
        """The ``batched_threads`` that :meth:`use_fast_paths` sets: torch's thread count where a user's work is more
        than one first-order local step, else 1 (the batched path always runs torch on one intra-op thread, its
        parallelism being over groups of users). Measured on 2 CPU cores, ML-1M's shapes, every fast path on, ms
        per user in one group → two (``bench/floor.py --groups 1,2``, ``bench/results/floor-groups-cpu.json``):
        MAMO's authors' configuration, 9 steps, 3.51 → 2.32; second order, MAML 0.60 → 0.56 and MAMO 0.57 → 0.60
        (a tie within the rounds' spread); one first-order step, MAML 0.36 → 0.44 and MAMO 0.31 → 0.48."""
        cfg = self.config
        heavy = cfg.inner_steps > 1 or cfg.local_update == "per-item" or not cfg.first_order
        return max(1, torch.get_num_threads()) if heavy else 1

    # -- which parameters ------------------------------------------------------------------
    def local_names(self) -> list[str]:
        """Parameters that get a per-user fast copy (θ)."""
        return list(self._local)

    def global_names(self) -> list[str]:
        """Parameters meta-learned by Eq. 12 (φ)."""
        return [n for n, _ in self.model.named_parameters()]

    def params(self) -> Params:
        """Every trainable tensor by name: the recommender's (and, for s²Meta, its controllers')."""
        return {n: p for n, p in self.model.named_parameters()}

    # -- hooks -----------------------------------------------------------------------------
    def memory_state(self) -> dict[str, Tensor]:
        """Read-only state the initialisation depends on (MAMO's memories). Empty for MAML."""
        return {}

    def init_fast(self, params: Params, memories: dict[str, Tensor], task: dict) -> tuple[Params, dict]:
        """``θ ← φ`` on the local parameters (MAML); returns ``(fast, context)``."""
        return {n: params[n] for n in self._local}, {}

    def init_fast_batch(self, params: Params, memories: dict[str, Tensor], task: dict) -> tuple[Params, dict] | None:
        """:meth:`init_fast` for a whole batch of users at once (``task`` tensors with a leading user dimension), for
        the batched path (``batched_users``), or ``None`` to have that path map :meth:`init_fast` over the users with
        ``vmap``. Each fast tensor may be shared by the users (the parameter's shape), one per user (a leading user
        dimension) or, for a local linear layer's weight, a :class:`~mamo_lite.meta.factored.Mixture`; the context
        values have a leading user dimension. Default: ``θ ← φ`` where :meth:`init_fast` is this class's, else ``None``.
        """
        if type(self).init_fast is MetaLearner.init_fast:
            return self.init_fast(params, memories, task)
        return None

    def user_aux(self, params: Params, fast: Params, context: dict, task: dict) -> dict[str, Tensor]:
        """Per-user values a learner needs after adaptation (MAMO: what its memories write)."""
        return {}

    def user_aux_batch(self, params: Params, adapted: Params, context: dict, task: dict) -> dict | None:
        """:meth:`user_aux` for a whole batch of users at once, for the batched path (``batched_users``), or ``None``
        to have that path run :meth:`user_aux` per user under ``vmap`` on dense copies. ``adapted`` holds the adapted
        tensors :meth:`aux_reads` names as that path keeps them (shared, per user, or a factored form:
        :class:`~mamo_lite.meta.factored.Mixture`, :class:`~mamo_lite.meta.factored.LowRank`); values returned may
        be a :class:`~mamo_lite.meta.factored.LowRank` where :meth:`write_memories` accepts one. Default: ``{}``
        where :meth:`user_aux` is this class's, else ``None``."""
        return {} if type(self).user_aux is MetaLearner.user_aux else None

    def aux_taps(self) -> dict[str, str]:
        """Per-user gradients the engine takes from the main pass's graph: ``{aux key: local parameter}``.

        For each entry the engine adds a zero "tap" to the user's adapted fast copy of the parameter just
        before the query loss (:func:`user_query_loss`) and differentiates the meta-objective w.r.t. the taps
        as well as ``φ`` (:func:`meta_gradient`); the tap's gradient, rescaled by the batch reduction, is
        ``∂L_Q/∂θ̂`` of that user at its adapted weights and lands in ``aux[key]``. One backward pass then
        gives both the meta-gradient and these gradients. Default: none (MAMO's opt-in
        ``fused_memory_write`` names the ``M_U`` gradients of Eq. 6). Only the default per-user algorithm
        applies the taps: a learner that overrides :meth:`user_objective` must return ``{}`` here. The batched
        path (``batched_users``) taps a linear layer's *output* on the query pass instead and returns its weight's
        gradient ``Δᵀ X`` as a :class:`~mamo_lite.meta.factored.LowRank` (the same values, never formed).
        """
        return {}

    def aux_reads(self) -> list[str] | None:
        """The adapted fast tensors :meth:`user_aux` reads (``None``: all of them). With ``factored_updates`` only
        these are materialised as dense ``θ̂``; default none (MAML's ``user_aux`` reads nothing)."""
        return []

    @torch.no_grad()
    def write_memories(self, aux: dict[str, Tensor]) -> None:
        """Update memories from a batch of users' ``aux`` (no-op for MAML)."""

    # -- the per-user algorithm and the global update (overridable) ------------------------
    def batch_inputs(self, batch: TaskBatch) -> dict:
        """The per-user inputs the engine maps over (``batch.inputs()``)."""
        return batch.inputs()

    def user_objective(self, params: Params, memories: dict, task: dict, with_aux: bool) -> tuple[Tensor, dict]:
        """Algorithm 1 for one user; default :func:`user_query_loss` (init, Eq. 11, query loss)."""
        return user_query_loss(self, params, memories, task, with_aux)

    def user_predictions(self, params: Params, memories: dict, task: dict, steps: int | None) -> Tensor:
        """Algorithm 2 for one user; default :func:`user_predictions`."""
        return user_predictions(self, params, memories, task, steps)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The global optimiser of Eq. 12 over :meth:`global_names` (SGD as in the paper, or Adam)."""
        names = set(self.global_names())
        params = [p for n, p in self.params().items() if n in names]
        cfg = self.config
        if cfg.global_optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.global_lr)
        return torch.optim.Adam(params, lr=cfg.global_lr)

    def before_optimizer_step(self) -> None:
        """Called with the meta-gradients in ``.grad``, before the optimiser steps (no-op)."""

    def meta_update(self, batch: TaskBatch, optimizer: torch.optim.Optimizer, path: Path) -> Tensor:
        """One meta-update over a batch, what :func:`meta_step` runs; returns the per-user query losses.

        Default :func:`uniform_meta_update` (Eq. 12 with every user counted alike). A method that weights
        its users by something computed from their gradients (GreatMeta's scheduler) overrides it.
        """
        return uniform_meta_update(self, batch, optimizer, path=path)

    # -- the recommender, functionally -----------------------------------------------------
    def output(self, params: Params, fast: Params, user_x: Tensor, item_x: dict) -> Tensor:
        return functional_call(self.model, {**params, **fast}, (user_x, item_x))

    def task_loss(self, params: Params, fast: Params, task: dict, which: str) -> Tensor:
        """Masked loss of one user on its ``support`` or ``query`` set."""
        out = self.output(params, fast, task["user_x"], task[f"{which}_x"])
        return rating_loss(out, task[f"{which}_y"], task[f"{which}_mask"],
                           head=self.model.config.head, rating_min=self.model.spec.rating_min)


# -- the per-user algorithm ---------------------------------------------------------------------

def _support_item(task: dict, j: int) -> dict:
    """``task`` with its support set cut to the single rating ``j`` (a padded slot gives a zero loss)."""
    cut = {"support_y": task["support_y"][j:j + 1], "support_mask": task["support_mask"][j:j + 1],
           "support_x": {k: v[j:j + 1] for k, v in task["support_x"].items()}}
    return {**task, **cut}


def adapt(learner: MetaLearner, params: Params, fast: Params, task: dict, *,
          steps: int | None = None, lr: float | None = None, first_order: bool | None = None) -> Params:
    """Local update of Eq. 11: ``steps`` passes of ``θ ← θ − ρ ∇_θ L_S(θ)`` over the support set.

    With ``local_update="batch"`` a pass is one step on the whole support set; with ``"per-item"`` it
    is one step per support rating, in order (Algorithm 1), each on that rating's loss alone. With
    ``first_order`` the inner gradients are detached, so the meta-gradient ignores the second-order
    term (FOMAML); otherwise the graph through every step is kept.
    """
    cfg = learner.config
    steps = cfg.inner_steps if steps is None else steps
    lr = cfg.local_lr if lr is None else lr
    first_order = cfg.first_order if first_order is None else first_order
    parts = _support_parts(learner, task)
    for _ in range(steps):
        for part in parts:
            g = grad(lambda f, part=part: learner.task_loss(params, f, part, "support"))(fast)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            fast = {k: fast[k] - lr * g[k] for k in fast}
    return fast


def _embedding_sites(model: nn.Module) -> list[tuple[str, list[tuple[str, str | None, int | None]]]]:
    """Each embedding table of the recommender and where the task holds the indices that read it.

    A site is ``(input, key, column)``: ``("user_x", None, j)`` is column ``j`` of ``task["user_x"]``,
    ``("support_x", "cat", j)`` column ``j`` of the categorical item features, ``("query_x", "genre", None)``
    a whole multi-valued field. The order follows ``EmbeddingRecommender.user_profile_vector`` and
    ``item_profile_vector``.
    """
    spec = model.spec
    sites = [(f"user_profile.{f.name}.weight", [("user_x", None, j)]) for j, f in enumerate(spec.user_fields)]
    j = 0
    for f in spec.item_fields:
        if f.kind == "categorical":
            where = [(which, "cat", j) for which in ("support_x", "query_x")]
            j += 1
        else:
            where = [(which, f.name, None) for which in ("support_x", "query_x")]
        sites.append((f"item_profile.{f.name}.weight", where))
    return sites


def _site(task: dict, site: tuple[str, str | None, int | None]) -> Tensor:
    which, key, col = site
    t = task[which] if key is None else task[which][key]
    return t if col is None else t[..., col]


def gather_rows(model: nn.Module, fast: Params, task: dict) -> tuple[Params, dict]:
    """One user's fast embedding rows: only the rows its inputs touch, and the task re-indexed to them.

    For each embedding table ``W`` in ``fast`` (a local table, ``θ ← φ``), the indices the user's profile,
    support and query items read are listed (``idx``, length ``L``, with a leading 0), ``fast`` gets the
    gathered rows ``W[idx]`` (``[L, d]`` instead of ``[V, d]``), and every index is replaced by the position
    of its *first* occurrence in ``idx``. So the forward pass reads the same values, all reads of one row
    share one fast row (its Eq. 11 gradient sums over them, as for the full table), and a row never read
    keeps ``θ = φ``, as in the plain path. The meta-gradient of Eq. 12 reaches ``W`` through the gather,
    first and second order. Index 0 (the padding of multi-valued fields) stays 0, so the recommender's
    padding mask (``idx > 0``) is unchanged.

    Shapes do not depend on the data (the first occurrence is an ``L × L`` comparison, not ``unique``),
    so it runs under ``vmap``. Tables not in ``fast`` (global ones) keep their indices.
    """
    tables = [(name, sites) for name, sites in _embedding_sites(model) if name in fast]
    if not tables:
        return fast, task
    fast = dict(fast)
    local: dict[tuple[str, str | None, int | None], Tensor] = {}
    for name, sites in tables:
        pieces = [_site(task, s) for s in sites]
        idx = torch.cat([torch.zeros(1, dtype=pieces[0].dtype, device=pieces[0].device)]
                        + [p.reshape(-1) for p in pieces])
        first = (idx.unsqueeze(-1) == idx.unsqueeze(-2)).to(torch.uint8).argmax(-1).to(idx.dtype)
        fast[name] = F.embedding(idx, fast[name])
        start = 1
        for s, p in zip(sites, pieces):
            local[s] = first[start:start + p.numel()].reshape(p.shape)
            start += p.numel()
    return fast, reindexed(task, local)


def reindexed(task: dict, local: dict[tuple[str, str | None, int | None], Tensor]) -> dict:
    """``task`` with the indices of each embedding site (``_embedding_sites``) replaced by ``local[site]`` (the
    positions of its rows in a gathered table); sites not in ``local`` keep theirs. Any leading dimensions."""
    task = dict(task)
    for which in ("user_x", "support_x", "query_x"):
        mine = {s: v for s, v in local.items() if s[0] == which}
        if not mine:
            continue
        if which == "user_x":
            x = task["user_x"]
            task["user_x"] = torch.stack([mine.get((which, None, j), x[..., j]) for j in range(x.shape[-1])], -1)
            continue
        items = dict(task[which])
        for key in {s[1] for s in mine}:
            if key == "cat":
                x = items["cat"]
                items["cat"] = torch.stack([mine.get((which, "cat", j), x[..., j]) for j in range(x.shape[-1])], -1)
            else:
                items[key] = mine[(which, key, None)]
        task[which] = items
    return task


def _support_parts(learner: MetaLearner, task: dict) -> list[dict]:
    """What one local step sees: the whole support set, or (``"per-item"``) each support rating alone."""
    if learner.config.local_update == "per-item":
        return [_support_item(task, j) for j in range(task["support_y"].shape[0])]
    return [task]


def _adapt_factored(learner: MetaLearner, params: Params, fast: Params, task: dict, *, steps: int | None = None,
                    first_order: bool | None = None) -> tuple[Params, factored.Factors]:
    """:func:`adapt` with factored linear layers (``learner.factored_updates``, :mod:`mamo_lite.meta.factored`)."""
    cfg = learner.config
    factored.check_model(learner.model)
    return factored.adapt(learner.model, params, fast, _support_parts(learner, task),
                          steps=cfg.inner_steps if steps is None else steps, lr=cfg.local_lr,
                          first_order=cfg.first_order if first_order is None else first_order)


def user_query_loss(learner: MetaLearner, params: Params, memories: dict, task: dict,
                    with_aux: bool = False) -> tuple[Tensor, dict]:
    """Algorithm 1 for one user: personalised init, local updates, query loss (+ aux).

    With ``learner.gather_rows`` the local embedding tables are cut to the user's rows (:func:`gather_rows`)
    after the initialisation; with ``learner.factored_updates`` the local linear layers are adapted in factored
    form (:mod:`mamo_lite.meta.factored`). If ``task`` carries zero taps under :data:`AUX_TAPS`
    (``{parameter: zeros}``, put there by :func:`meta_gradient` for :meth:`MetaLearner.aux_taps`), they are
    added to the adapted weights before the query loss.
    """
    fast, context = learner.init_fast(params, memories, task)
    if learner.gather_rows:
        fast, task = gather_rows(learner.model, fast, task)
    taps = task.get(AUX_TAPS)
    if learner.factored_updates:
        dense, factors = _adapt_factored(learner, params, fast, task)
        if taps:  # a zero added to θ_0 is a zero added to θ̂ = θ_0 − ρ Δᵀ X
            dense = {**dense, **{n: dense[n] + z for n, z in taps.items()}}
        lr = learner.config.local_lr
        loss = factored.loss(learner.model, {**params, **dense}, factors, lr, task, "query")
        if not with_aux:
            return loss, {}
        reads = learner.aux_reads()
        names = list(dense) if reads is None else reads
        fast = {**dense, **factored.materialise(dense, factors, lr, names)}
        return loss, learner.user_aux(params, fast, context, task)
    fast = adapt(learner, params, fast, task)
    if taps:  # zero taps whose gradients are ∂L_Q/∂θ̂ (MetaLearner.aux_taps): values unchanged
        fast = {**fast, **{n: fast[n] + z for n, z in taps.items()}}
    loss = learner.task_loss(params, fast, task, "query")
    aux = learner.user_aux(params, fast, context, task) if with_aux else {}
    return loss, aux


def user_predictions(learner: MetaLearner, params: Params, memories: dict, task: dict,
                     steps: int | None = None) -> Tensor:
    """Algorithm 2 for one user: personalised init, local updates, query predictions (options as above)."""
    fast, _ = learner.init_fast(params, memories, task)
    if learner.gather_rows:
        fast, task = gather_rows(learner.model, fast, task)
    if learner.factored_updates:
        dense, factors = _adapt_factored(learner, params, fast, task, steps=steps, first_order=True)
        out = factored.forward(learner.model, {**params, **dense}, factors, learner.config.local_lr,
                               task["user_x"], task["query_x"])
    else:
        fast = adapt(learner, params, fast, task, steps=steps, first_order=True)
        out = learner.output(params, fast, task["user_x"], task["query_x"])
    return prediction_from_output(out, head=learner.model.config.head, rating_min=learner.model.spec.rating_min)


def _stack(trees: list[dict]) -> dict:
    if not trees or not trees[0]:
        return {}
    return {k: torch.stack([t[k] for t in trees]) for k in trees[0]}


def map_users(fn: Callable, batch_inputs: dict, path: Path, n_users: int):
    """Apply a per-user function over a batch: ``vmap`` or a Python loop (identical results)."""
    if path == "vmap":
        token = _IN_VMAP.set(True)
        try:
            return vmap(fn)(batch_inputs)
        finally:
            _IN_VMAP.reset(token)
    if path != "loop":
        raise ValueError(f"path must be 'vmap' or 'loop', got {path!r}")
    outs = [fn(tree_index(batch_inputs, i)) for i in range(n_users)]
    if isinstance(outs[0], tuple):
        return tuple(
            torch.stack([o[j] for o in outs]) if isinstance(outs[0][j], Tensor) else _stack([o[j] for o in outs])
            for j in range(len(outs[0])))
    return torch.stack(outs)


def _runs_batched(learner: MetaLearner, path: Path) -> bool:
    """Whether ``path`` runs on :mod:`mamo_lite.meta.batched` (``batched_users`` on the ``"vmap"`` path, where it applies)."""
    return path == "vmap" and learner.batched_users and batched.applies(learner)


def meta_gradient(learner: MetaLearner, batch: TaskBatch, *, path: Path = "vmap",
                  with_aux: bool = False) -> tuple[Params, Tensor, dict]:
    """Meta-gradient of Eq. 12 over a batch of users.

    Returns ``(grads, per_user_query_losses, aux)``; ``grads`` are w.r.t. ``learner.global_names()``
    of the reduced (mean or sum) query loss. Nothing is modified. With ``with_aux`` and a learner that
    names :meth:`MetaLearner.aux_taps`, the same backward pass also gives those per-user gradients. On the
    batched path (``batched_users``) an aux value may be a :class:`~mamo_lite.meta.factored.LowRank`
    (``.dense()`` gives the tensor), which :meth:`MetaLearner.write_memories` receives as it is.
    """
    if _runs_batched(learner, path):
        return batched.meta_gradient(learner, batch, with_aux=with_aux)
    all_params = {n: p.detach() for n, p in learner.params().items()}
    names = learner.global_names()
    fixed = {n: v for n, v in all_params.items() if n not in names}
    memories = {k: v.detach() for k, v in learner.memory_state().items()}
    inputs = learner.batch_inputs(batch)

    def total(phi: Params, zeros: Params | None = None):
        params = {**fixed, **phi}
        losses, aux = map_users(lambda task: learner.user_objective(params, memories, task, with_aux),
                                {**inputs, AUX_TAPS: zeros} if zeros else inputs, path, len(batch))
        red = losses.sum() if learner.config.reduction == "sum" else losses.mean()
        return red, (losses, aux)

    phi0 = {n: all_params[n] for n in names}
    taps = learner.aux_taps() if with_aux else {}
    if not taps:
        grads, (losses, aux) = grad(total, has_aux=True)(phi0)
        return grads, losses.detach(), {k: v.detach() for k, v in aux.items()}
    # fused: the same backward pass also differentiates w.r.t. zero taps on the adapted weights (aux_taps)
    zeros = {n: all_params[n].new_zeros(len(batch), *all_params[n].shape) for n in dict.fromkeys(taps.values())}
    (grads, tap_grads), (losses, aux) = grad(total, argnums=(0, 1), has_aux=True)(phi0, zeros)
    scale = 1.0 if learner.config.reduction == "sum" else float(len(batch))  # d(mean)/dL_u = 1/B
    aux = {k: v.detach() for k, v in aux.items()}
    aux.update({key: (tap_grads[n] * scale).detach() for key, n in taps.items()})
    return grads, losses.detach(), aux


def predict(learner: MetaLearner, batch: TaskBatch, *, path: Path = "vmap", chunk: int = 256,
            steps: int | None = None) -> Tensor:
    """Query predictions ``[B, Q]`` after per-user adaptation (Algorithm 2; memories only read).

    Functional: the learner's parameters and memories are never modified, so test users cannot
    leak into the global parameters. ``steps`` overrides the number of local updates (0: no
    adaptation).
    """
    params = {n: p.detach() for n, p in learner.params().items()}
    memories = {k: v.detach() for k, v in learner.memory_state().items()}
    outs = []
    with torch.enable_grad():
        for sub in batch.batches(chunk):
            if _runs_batched(learner, path):
                outs.append(batched.predict(learner, params, memories, sub, steps).detach())
                continue
            outs.append(map_users(lambda task: learner.user_predictions(params, memories, task, steps),
                                  learner.batch_inputs(sub), path, len(sub)).detach())
    return torch.cat(outs) if outs else batch.query_y.new_zeros(batch.query_y.shape)


def make_optimizer(learner: MetaLearner) -> torch.optim.Optimizer:
    """The global optimiser of Eq. 12 (``learner.configure_optimizer()``: SGD as in the paper, or Adam)."""
    return learner.configure_optimizer()


def meta_step(learner: MetaLearner, batch: TaskBatch, optimizer: torch.optim.Optimizer, *,
              path: Path = "vmap") -> Tensor:
    """One meta-update (Algorithm 1 lines 4–17 for a batch of users); returns per-user query losses.

    Runs ``learner.meta_update`` (by default :func:`uniform_meta_update`).
    """
    return learner.meta_update(batch, optimizer, path)


def uniform_meta_update(learner: MetaLearner, batch: TaskBatch, optimizer: torch.optim.Optimizer, *,
                        path: Path = "vmap") -> Tensor:
    """Eq. 12 over a batch: the reduced meta-gradient, memory writes, one optimiser step.

    Memories are read with their pre-batch values by every user of the batch, then written
    (``write_memories``), then ``φ`` takes the optimiser step.
    """
    grads, losses, aux = meta_gradient(learner, batch, path=path, with_aux=True)
    params = learner.params()
    for n, g in grads.items():
        params[n].grad = g
    with batched.one_intra_op_thread() if _runs_batched(learner, path) else contextlib.nullcontext():
        learner.write_memories(aux)
        learner.before_optimizer_step()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses
