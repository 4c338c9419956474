"""Batched users: Algorithm 1 for a whole meta-batch as batched tensor operations, without ``vmap``.

The engine's reference paths run one user's algorithm at a time (a Python loop) or map it over the batch
with ``torch.func.vmap``. Both give each user, at every local step, a dense fast copy of every local weight,
built as ``θ − ρ·g`` from an autograd weight gradient ``g``: three passes over per-user memory per step, and
every operation of every step dispatched through ``vmap``'s and ``torch.func.grad``'s transform layers. This
module computes the same quantities for the whole batch with ordinary batched tensors and plain
``torch.autograd``:

* the per-user initialisation and ``user_aux`` run for the whole batch through the learner's
  ``init_fast_batch`` / ``user_aux_batch`` where it has them (MAML: ``θ ← φ``; MAMO: Eqs. 3–4, 7, 9–10 and
  what the writes need), else ``init_fast`` / ``user_aux`` under ``vmap`` (one call each). A local weight that
  is still ``φ`` itself stays one shared tensor, so its products with the batch's rows are one matrix product
  for all users. MAMO's personalised weights stay in factored form: ``θ_u = φ_u − τ Σ_k a_uk M_U[k]`` and
  ``M_{u,I} = Σ_k a_uk M_{U,I}[k]`` as a :class:`~mamo_lite.meta.factored.Mixture` of shared matrices (one
  matrix product with the stacked slots instead of ``B`` per-user ``[150, 300]`` and ``[100, 200]`` copies),
  and the gradients and adapted matrices its memories write (Eqs. 6, 8) as
  :class:`~mamo_lite.meta.factored.LowRank` factors that the writes sum without forming them. Gathered
  embedding rows are each user's distinct rows (:func:`gather_rows`);
* each local step (Eq. 11) takes the loss gradient w.r.t. each local linear layer's *output* (``Δ``, via a
  zero "tap", as :mod:`mamo_lite.meta.factored` does) and the layer's input ``X`` from one forward and one
  backward pass: ``∇_θ L_S = Δᵀ X`` is the weight gradient the reference path gets from autograd, never
  materialised on its own. A layer whose factors stay small (:data:`FACTOR_RANK`: MAML's and the book's
  MAMO's single step) keeps them, ``θ̂ = θ_0 − ρ Σ_j Δ_jᵀ X_j``, with no per-user copy at all; any other is a
  dense per-user weight updated in one fused kernel, ``θ ← θ − ρ Δᵀ X`` (``torch.baddbmm``, in place at first
  order). Biases and embedding rows take ``θ ← θ − ρ g`` as before;
* the users of a batch are independent, so the gradient of the *sum* of their support losses w.r.t. a
  per-user tensor is each user's own gradient: one backward pass gives all of them;
* torch runs on one intra-op thread (:func:`one_intra_op_thread`); the parallelism is over groups of users,
  ``MetaLearner.batched_threads`` Python threads.

The maths is the reference path's (tests compare query losses, meta-gradients, memory writes and predictions
with it to float rounding, first and second order, ``"batch"`` and ``"per-item"`` local updates, with and
without gathered rows). Only the order of floating-point operations differs, so it is an engine option
(``MetaLearner.batched_users``, opt-in, on with :meth:`~mamo_lite.meta.engine.MetaLearner.use_fast_paths`),
used by the ``"vmap"`` path when it applies (:func:`applies`); the ``"loop"`` path stays the reference.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.func import vmap

from mamo_lite.data.tasks import TaskBatch
from mamo_lite.meta import factored
from mamo_lite.models.recommender import EmbeddingRecommender, lookup, prediction_from_output, rating_loss

Params = dict[str, Tensor]


def applies(learner) -> bool:
    """Whether the batched path can run ``learner``: the engine's default per-user algorithm (``user_objective``,
    ``user_predictions``; not s²Meta's learned optimiser nor GreatMeta's FiLM network) on an
    :class:`~mamo_lite.models.recommender.EmbeddingRecommender`."""
    from mamo_lite.meta.engine import MetaLearner

    default = all(getattr(type(learner), f) is getattr(MetaLearner, f) for f in ("user_objective", "user_predictions"))
    return default and type(learner.model) is EmbeddingRecommender


def _per_user(fn, inputs: dict, params: Params) -> tuple:
    """``vmap(fn)(inputs)`` (a tuple of dicts), with each output that does not depend on the user (``vmap`` gives an
    expanded view, stride 0 over users) given back as one shared tensor: the parameter itself where it is one
    (so the meta-gradient reaches ``φ`` without a per-user zero-filled gradient summed over users)."""
    by_storage = {(p.data_ptr(), tuple(p.shape), p.stride()): p for p in params.values()}

    def shared(v):
        if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] == 0 or v.stride(0) != 0:
            return v
        return by_storage.get((v.data_ptr(), tuple(v.shape[1:]), v.stride()[1:]), v[0])

    return tuple({k: shared(v) for k, v in t.items()} for t in vmap(fn)(inputs))


def _per_user_copy(t: Tensor, users: int, like: Tensor) -> Tensor:
    """``t`` with a leading user dimension: itself if it has one (same rank as ``like``), else expanded (a view)."""
    return t if t.dim() == like.dim() + 1 else t.expand(users, *t.shape)


def _parts(local_update: str, task: dict) -> list[dict]:
    """What one local step sees (batched ``_support_parts``): the whole support set, or each rating alone."""
    if local_update != "per-item":
        return [task]
    n = task["support_y"].shape[1]
    return [{**task, "support_y": task["support_y"][:, j:j + 1], "support_mask": task["support_mask"][:, j:j + 1],
             "support_x": {k: v[:, j:j + 1] for k, v in task["support_x"].items()}} for j in range(n)]


def _losses(model: EmbeddingRecommender, weights: Params, factors: factored.Factors, lr: float, task: dict, which: str,
            taps: Params | None = None, inputs: Params | None = None) -> Tensor:
    """Each user's masked loss on its ``support`` or ``query`` set, ``[B]`` (the batched ``factored.loss``)."""
    out = factored.forward(model, weights, factors, lr, task["user_x"], task[f"{which}_x"], taps, inputs)
    return rating_loss(out, task[f"{which}_y"], task[f"{which}_mask"], head=model.config.head,
                       rating_min=model.spec.rating_min, per_user=True)


FACTOR_RANK = 0.5
"""A local layer ``[out, in]`` is adapted in factored form when its final rank ``r`` (support rows × local steps)
keeps ``r·(in + out) ≤ FACTOR_RANK · in·out``, and as a dense per-user weight otherwise (measured on 2 CPU
cores, MovieLens-1M's shapes: factors win with MAML's one step, dense weights with MAMO's authors' nine)."""


def _factored(rank: int, weight: Tensor) -> bool:
    out_f, in_f = weight.shape[-2:]
    return rank * (in_f + out_f) <= FACTOR_RANK * in_f * out_f


def adapt(model: EmbeddingRecommender, params: Params, fast: Params, task: dict, users: int, *, steps: int,
          lr: float, first_order: bool, local_update: str = "batch") -> tuple[Params, factored.Factors]:
    """Eq. 11 for a batch of users: ``steps`` passes of ``θ ← θ − ρ ∇_θ L_S(θ)`` over each user's support set.

    ``fast`` holds each local tensor either shared (still ``φ``: the shape of the parameter) or per user
    (a leading dimension of ``users``). Returns ``(dense, factors)`` as :func:`mamo_lite.meta.factored.adapt`
    does, with a leading user dimension. A local linear layer whose final rank is small (:data:`FACTOR_RANK`)
    stays ``θ_0 − ρ Δ_allᵀ X_all`` (its factors, no per-user copy: a shared ``θ_0 = φ`` stays one matrix
    product for the whole batch); any other is a dense per-user weight that each step updates as
    ``θ − ρ Δᵀ X`` in one ``baddbmm`` (in place at first order, after the first). Biases and embedding rows take
    ``θ ← θ − ρ g``. With ``first_order`` the inner gradients are detached (FOMAML), otherwise the graph through
    every step is kept.
    """
    names = factored.factored_layers(model, fast)
    weight_keys = {f"{n}.weight" for n in names}
    shapes = dict(model.named_parameters())
    dense = dict(fast)
    factors: factored.Factors = {}
    parts = _parts(local_update, task)
    rows = [factored._output_shapes(model, names, part) for part in parts]  # each layer's output shape per part
    ranks = {n: steps * sum(math.prod(r[n][1:-1]) for r in rows) for n in names}  # the factors' final rank
    dense_layers = {n for n in names if not _factored(ranks[n], fast[f"{n}.weight"])}
    own: set[str] = set()  # dense weights this loop made: nothing else reads their old values
    for _ in range(steps):
        for part, part_rows in zip(parts, rows):
            taps = {n: shapes[f"{n}.weight"].new_zeros(part_rows[n]).requires_grad_() for n in names}
            per_user = {k: _per_user_copy(v, users, shapes[k]) for k, v in dense.items() if k not in weight_keys}
            if first_order:  # the support pass needs no graph to φ: its gradients are detached anyway
                movable = {k: v.detach().requires_grad_() for k, v in per_user.items()}
                weights = {**{k: v.detach() for k, v in {**params, **dense}.items()}, **movable}
                current = {k: (x.detach(), d.detach()) for k, (x, d) in factors.items()}
            else:
                movable = per_user
                weights = {**params, **dense, **movable}
                current = factors
            seen: Params = {}
            total = _losses(model, weights, current, lr, part, "support", taps, seen).sum()
            grads = torch.autograd.grad(total, [*taps.values(), *movable.values()], create_graph=not first_order,
                                        allow_unused=True, materialize_grads=True)
            deltas, g = dict(zip(taps, grads[:len(taps)])), dict(zip(movable, grads[len(taps):]))
            dense.update({k: torch.add(per_user[k], g[k], alpha=-lr) for k in per_user})
            for n in names:
                key = f"{n}.weight"
                w = dense[key]
                x = seen[n].detach() if first_order else seen[n]
                x = x.reshape(users, -1, w.shape[-1])
                delta = deltas[n].reshape(users, -1, w.shape[-2])
                if n not in dense_layers:
                    if n in factors:
                        x0, d0 = factors[n]
                        x, delta = torch.cat([x0, x], 1), torch.cat([d0, delta], 1)
                    factors[n] = (x, delta)
                elif first_order and n in own:
                    w.baddbmm_(delta.mT, x, alpha=-lr)
                else:
                    w = factored.dense_weight(w)
                    w = w if w.dim() == 3 else w.expand(users, *w.shape)
                    dense[key] = torch.baddbmm(w, delta.mT, x, alpha=-lr)
                    own.add(n)
    return dense, factors


def gather_rows(model: EmbeddingRecommender, fast: Params, task: dict) -> tuple[Params, dict]:
    """:func:`mamo_lite.meta.engine.gather_rows` for a batch of users: each user's fast rows of each local embedding
    table are its *distinct* rows only, padded to the batch's largest count (``[B, L, d]``), not one per index.

    The same semantics (every read of a row shares one fast row, a row never read keeps ``θ = φ``, index 0 stays
    at position 0 so the padding mask ``idx > 0`` holds), found by sorting each user's indices instead of the
    ``L × L`` comparison ``vmap`` needs: on MovieLens-1M a user's 20 items list 240 director slots, ~25 of them
    distinct, so every local step updates ~10× fewer rows.
    """
    from mamo_lite.meta.engine import _embedding_sites, _site, reindexed

    tables = [(name, sites) for name, sites in _embedding_sites(model) if name in fast]
    if not tables:
        return fast, task
    fast = dict(fast)
    local = {}
    for name, sites in tables:
        pieces = [_site(task, s) for s in sites]
        users = pieces[0].shape[0]
        idx = torch.cat([pieces[0].new_zeros(users, 1)] + [p.reshape(users, -1) for p in pieces], 1)
        ordered, order = idx.sort(dim=1, stable=True)
        new = torch.ones_like(ordered, dtype=torch.bool)
        new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        slot_ordered = new.cumsum(1) - 1  # the distinct row each sorted index reads
        rows = int(slot_ordered[:, -1].max()) + 1
        slot = torch.empty_like(slot_ordered).scatter_(1, order, slot_ordered)
        row_ids = ordered.new_zeros(users, rows).scatter_(1, slot_ordered, ordered)  # padding slots read row 0
        fast[name] = lookup(row_ids, fast[name])
        start = 1
        for s, p in zip(sites, pieces):
            width = p[0].numel()
            local[s] = slot[:, start:start + width].reshape(p.shape)
            start += width
            if s[2] is None:  # a multi-valued field: its pooling as weights over the rows (one bmm per pass)
                local[s] = _bag(local[s], p > 0, rows, fast[name].dtype, model.config.multi_pooling)
    return fast, reindexed(task, local)


def _bag(positions: Tensor, valid: Tensor, rows: int, dtype: torch.dtype, pooling: str) -> Tensor:
    """``[B, N, rows]`` pooling weights: item ``n`` of user ``b`` puts ``1`` (``"sum"``) or ``1/count`` (``"mean"``)
    on the row of each of its valid slots, so ``bag @ rows`` is the masked pooling of
    :meth:`~mamo_lite.models.recommender.EmbeddingRecommender.item_profile_vector`."""
    weight = valid.to(dtype)
    if pooling == "mean":
        weight = weight / weight.sum(-1, keepdim=True).clamp(min=1.0)
    return weight.new_zeros(*positions.shape[:-1], rows).scatter_add_(-1, positions, weight)


def _start(learner, params: Params, memories: dict, inputs: dict) -> tuple[Params, dict, dict]:
    """The per-user initialisation (the learner's ``init_fast_batch``, else ``init_fast`` under ``vmap``), then
    (``gather_rows``) the gathered rows: ``(fast, context, task)``."""
    start = learner.init_fast_batch(params, memories, inputs)
    if start is None:
        start = _per_user(lambda task: learner.init_fast(params, memories, task), inputs, params)
    fast, context = start
    if learner.gather_rows:
        fast, inputs = gather_rows(learner.model, fast, inputs)
    return fast, context, inputs


def _adapted_losses(learner, params: Params, fast: Params, task: dict, taps: Params, outputs: Params,
                    reads: list[str] | None) -> tuple[Tensor, Params, Params]:
    """Eq. 11 and the query loss for a batch of users (no ``vmap``): ``(losses [B], adapted tensors to read, inputs)``.

    ``taps`` (``{parameter: zeros [B, *shape]}``, parameters outside the linear layers, so never a
    :class:`~mamo_lite.meta.factored.Mixture`) are added to the adapted weights before the query loss and
    ``outputs`` (``{layer: zeros like its query output}``) to layer outputs, whose inputs land in ``inputs``
    (``MetaLearner.aux_taps``, see :func:`_tap_gradient`); ``reads`` names the adapted tensors ``user_aux`` reads
    (``None``: all; ``[]``: none).
    """
    cfg = learner.config
    users = task["support_y"].shape[0]
    fast, factors = adapt(learner.model, params, fast, task, users, steps=cfg.inner_steps, lr=cfg.local_lr,
                          first_order=cfg.first_order, local_update=cfg.local_update)
    shapes = dict(learner.model.named_parameters())
    if taps:  # a zero added to θ_0 is a zero added to θ̂ = θ_0 − ρ Δᵀ X
        fast = {**fast, **{n: _per_user_copy(fast[n], users, shapes[n]) + z for n, z in taps.items()}}
    inputs: Params = {}
    losses = _losses(learner.model, {**params, **fast}, factors, cfg.local_lr, task, "query", outputs, inputs)
    names = list(fast) if reads is None else reads
    return losses, factored.adapted_forms(fast, factors, cfg.local_lr, names), inputs


def _tapped_layers(model: EmbeddingRecommender, names) -> dict[str, str]:
    """``{parameter: layer}`` for the tapped parameters that are a linear layer's weight or bias: their gradient at
    ``θ̂`` comes from the layer's output gradient ``Δ`` and input ``X`` of the query pass (:func:`_tap_gradient`)."""
    layers = set(factored.linear_layers(model))
    out = {}
    for n in names:
        layer, _, kind = n.rpartition(".")
        if layer in layers and kind in ("weight", "bias"):
            out[n] = layer
    return out


def _tap_gradient(name: str, delta: Tensor, x: Tensor) -> Tensor | factored.LowRank:
    """A layer parameter's per-user gradient from the query pass: ``Δᵀ X`` for the weight, kept as its factors
    (:class:`~mamo_lite.meta.factored.LowRank`: one outer product per user for the user tower), ``Σ Δ`` over rows
    for the bias; ``Δ`` ``[B, ..., out]``, ``X`` ``[B, ..., in]``."""
    users = delta.shape[0]
    delta = delta.reshape(users, -1, delta.shape[-1])
    if name.endswith(".bias"):
        return delta.sum(1)
    return factored.LowRank(delta, x.detach().reshape(users, -1, x.shape[-1]))


def _aux(learner, params: Params, adapted: Params, context: dict, task: dict) -> dict:
    """``user_aux`` of each user: the learner's ``user_aux_batch`` on the adapted tensors as they are (factored forms
    included), else ``user_aux`` under ``vmap`` on dense per-user copies."""
    users = task["support_y"].shape[0]
    context = _batched(context, users)
    aux = learner.user_aux_batch(params, adapted, context, task)
    if aux is not None:
        return aux
    shapes = dict(learner.model.named_parameters())
    dense = {n: _per_user_copy(v.dense() if isinstance(v, (factored.LowRank, factored.Mixture)) else v, users,
                               shapes[n]) for n, v in adapted.items()}
    return vmap(lambda f, c, t: learner.user_aux(params, f, c, t))(dense, context, task)


def _batched(context: dict, users: int) -> dict:
    return {k: (v if v.dim() > 0 and v.shape[0] == users else v.expand(users, *v.shape)) for k, v in context.items()}


def _groups(learner, batch: TaskBatch) -> list[TaskBatch]:
    """``batch`` cut into ``learner.batched_threads`` contiguous groups of users (one on a GPU)."""
    groups = min(learner.batched_threads, len(batch))
    if groups <= 1 or batch.user_x.device.type != "cpu":
        return [batch]
    bounds = [round(k * len(batch) / groups) for k in range(groups + 1)]
    return [batch.select(list(range(a, b))) for a, b in itertools.pairwise(bounds)]


def _in_threads(fn, items: list) -> list:
    """``[fn(x) for x in items]``: one Python thread per item when there are several (the caller holds torch to one
    intra-op thread, :func:`one_intra_op_thread`). ``fn`` must not use ``torch.func`` transforms: they are not
    thread-safe, and a ``vmap`` in one thread next to tensor operations in another can fail or deadlock. So the
    ``vmap`` parts (initialisation, gathered rows, ``user_aux``) run in the calling thread, before and after; the
    threads run Eq. 11, the query loss and autograd."""
    if len(items) == 1:
        return [fn(items[0])]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """torch on one intra-op thread for the batched path (restored after), and for the memory writes and optimiser
    step that follow it in a meta-update: its parallelism is over groups of users (``batched_threads``). On 2 CPU
    cores a light meta-step's many small operations also run faster on one thread than shared out
    (``MetaLearner.fast_path_threads``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def meta_gradient(learner, batch: TaskBatch, *, with_aux: bool = False) -> tuple[Params, Tensor, dict]:
    """:func:`mamo_lite.meta.engine.meta_gradient` on the batched path (plain ``torch.autograd``): ``(grads, losses,
    aux)`` with the same meaning, grads w.r.t. ``learner.global_names()`` of the reduced query loss.

    The users are cut into ``learner.batched_threads`` groups; each group's summed query loss is differentiated in
    its own thread (the ``vmap`` parts stay in the calling thread) and the gradients are added in group order;
    torch runs on one intra-op thread throughout.
    """
    all_params = {n: p.detach() for n, p in learner.params().items()}
    names = learner.global_names()
    phi = {n: all_params[n].detach().requires_grad_() for n in names}
    params = {**{n: v for n, v in all_params.items() if n not in phi}, **phi}
    memories = {k: v.detach() for k, v in learner.memory_state().items()}
    aux_taps = learner.aux_taps() if with_aux else {}
    tapped = dict.fromkeys(aux_taps.values())
    reads = learner.aux_reads() if with_aux else []
    by_layer = _tapped_layers(learner.model, tapped)
    with torch.enable_grad(), one_intra_op_thread():
        starts = [_start(learner, params, memories, learner.batch_inputs(sub)) for sub in _groups(learner, batch)]

        def run(start: tuple) -> tuple:
            fast, _, task = start
            users = task["support_y"].shape[0]
            zeros = {n: params[n].new_zeros(users, *params[n].shape).requires_grad_() for n in tapped
                     if n not in by_layer}
            query = factored._output_shapes(learner.model, sorted(set(by_layer.values())), task, "query")
            outputs = {layer: params[f"{layer}.weight"].new_zeros(query[layer]).requires_grad_() for layer in query}
            with torch.enable_grad():
                losses, adapted, inputs = _adapted_losses(learner, params, fast, task, zeros, outputs, reads)
                grads = torch.autograd.grad(losses.sum(), [*phi.values(), *zeros.values(), *outputs.values()],
                                            allow_unused=True, materialize_grads=True)
            taps = dict(zip(zeros, grads[len(phi):len(phi) + len(zeros)]))
            deltas = dict(zip(outputs, grads[len(phi) + len(zeros):]))
            taps.update({n: _tap_gradient(n, deltas[layer], inputs[layer]) for n, layer in by_layer.items()})
            return list(grads[:len(phi)]), losses.detach(), adapted, taps

        parts = _in_threads(run, starts)
        auxes = [_aux(learner, params, part[2], start[1], start[2]) if with_aux else {}
                 for part, start in zip(parts, starts)]
    grads = [sum(g) for g in zip(*(p[0] for p in parts))] if len(parts) > 1 else parts[0][0]
    if learner.config.reduction != "sum":  # d(mean)/dL_u = 1/B
        grads = [g / len(batch) for g in grads]
    aux = {k: _joined([a[k] for a in auxes]).detach() for k in auxes[0]}
    for key, name in aux_taps.items():
        aux[key] = _joined([p[3][name] for p in parts]).detach()
    return dict(zip(phi, grads)), _joined([p[1] for p in parts]), aux


def _joined(pieces: list) -> Tensor | factored.LowRank:
    """The groups' tensors (or :class:`~mamo_lite.meta.factored.LowRank`) concatenated along the users (the one
    itself, uncopied, for one group)."""
    if len(pieces) == 1:
        return pieces[0]
    return factored.LowRank.cat(pieces) if isinstance(pieces[0], factored.LowRank) else torch.cat(pieces)


def predict(learner, params: Params, memories: dict, batch: TaskBatch, steps: int | None = None) -> Tensor:
    """Algorithm 2 for a batch of users (the batched :func:`~mamo_lite.meta.engine.user_predictions`): query
    predictions ``[B, Q]``, the users cut into ``learner.batched_threads`` groups as in :func:`meta_gradient`."""
    with one_intra_op_thread():
        return _predict(learner, params, memories, batch, steps)


def _predict(learner, params: Params, memories: dict, batch: TaskBatch, steps: int | None) -> Tensor:
    cfg = learner.config
    starts = [_start(learner, params, memories, learner.batch_inputs(sub)) for sub in _groups(learner, batch)]

    def run(start: tuple) -> Tensor:
        fast, _, task = start
        with torch.enable_grad():
            fast, factors = adapt(learner.model, params, fast, task, task["support_y"].shape[0],
                                  steps=cfg.inner_steps if steps is None else steps, lr=cfg.local_lr,
                                  first_order=True, local_update=cfg.local_update)
        out = factored.forward(learner.model, {**params, **fast}, factors, cfg.local_lr, task["user_x"],
                               task["query_x"])
        return prediction_from_output(out, head=learner.model.config.head, rating_min=learner.model.spec.rating_min)

    return _joined(_in_threads(run, starts))
