"""s²Meta (Du et al., KDD 2019; THUDM/ScenarioMeta), adapted to MAMO's rating protocol (MAMO §3.2, A.2).

Three things are meta-learned (Du et al. §4): the initialisation ``θ₀`` of the recommender's
interaction MLP, an **update controller** (a learned optimiser) and a **stop controller**. For a user
``u`` (a task) the adaptation on the support set ``S_u`` is::

    θ = θ₀;  controller states = their learned initial values
    for t = 0 .. T_max − 1:
        L_t = L_S(θ);  g = ∇_θ L_t, detached             # first order by construction
        p_t = StopCtl(ℓ(‖g_j‖) for each tensor j, ℓ(L_t))  # before the update of step t
        if t ≥ T_min and draw_t < p_t: stop               # θ_t is final, T_u = t
        g = clamp(g, −1, 1)
        (i, f) = UpdateCtl_j(P(g_j), P(sg θ_j), ℓ(L_t)) per coordinate;  θ_j ← f ⊙ θ_j − i ⊙ g_j

and the outer objective of one user (THUDM/ScenarioMeta:src/main.py) is the query MSE plus REINFORCE
for the "continue" decisions::

    J_u = L_Q(θ_u) + Σ_{t < T_u} −log(1 − p_t) · sg[L_Q(θ_t) − L_Q(θ_u) − (T_u − t)·c]

* :func:`preprocess` is the gradient preprocessing ``P(x) = (ℓ(x), s(x))`` of Andrychowicz et al.
  (2016, §3.2) with ``p = 10``.
* :class:`UpdateController`: one per adapted tensor, ``LSTMCell(5 → 16)`` shared by the tensor's
  coordinates (each coordinate has its own ``(h, c)``), ``LayerNorm(16)`` on ``h`` (the normalised
  ``h`` is the recurrent state, as in the code), heads ``i = σ(w_i·h + b_i)`` (input gate: a step size)
  and ``f = σ(w_f·h + b_f)`` (forget gate: a weight decay); Xavier-normal heads, ``b_i = 0`` (i ≈ 0.5),
  ``b_f = 5`` (f ≈ 0.993), learnable ``h₀, c₀ ~ N(0, 1)``. The code's LSTM bias initialisation writes
  1 into slice ``[H/4, H/2)`` of ``bias_ih`` (inside the *input*-gate block, not the forget gate): kept.
* :class:`StopController`: ``LSTMCell(n + 1 → 2(n + 1))`` on the ``n`` (= 8) gradient norms, taken
  before clamping, and the loss, both through ``ℓ``; ``p_t = σ(w·h + b)``, ``b = 0``.
* :class:`S2MetaLearner` plugs this into the engine (:mod:`mamo_lite.meta.engine`) through its hooks:
  ``user_objective`` (training), ``user_predictions`` (Algorithm 2), ``batch_inputs`` (the random stop
  draws, made outside ``vmap``), ``configure_optimizer`` (three Adam groups) and
  ``before_optimizer_step`` (clipping by value). The controllers are submodules of the learner:
  ``params()``/``global_names()`` include them, so the engine's meta-gradient and the optimiser cover
  them, and ``output()`` hands the recommender only its own tensors.

Gradient paths: ``g`` and every controller input are detached, so ``θ₀`` reaches ``J`` only through the
chain of forget gates, the update controllers through ``i`` and ``f``, the profile towers and field
embeddings through the query loss, and the stop controller only through the REINFORCE term. The
REINFORCE term ``R`` enters the per-user loss as ``R − sg[R]``: its value is zero, so the loss the
engine reports (and ``fit`` checks for divergence) is the query MSE ``L_Q(θ_u)``, while the gradient is
that of ``J_u``.

**Loop and ``vmap`` paths.** On the per-user loop a user's adaptation stops at its stop decision. Under
``vmap`` (:func:`mamo_lite.meta.engine.in_vmap`) every user runs ``T_max`` steps and an ``active`` mask
freezes the weights once it has stopped, ``θ_{t+1} = where(active, update, θ_t)``; the REINFORCE sum
runs over active steps only. The uniform draws come in with the batch, so both paths take the same
decisions and give the same losses and meta-gradients (tests/test_s2meta.py).

**Randomness.** Training draws come from a generator seeded by the buffer ``stop_seed`` (drawn from the
global RNG when the learner is built, i.e. from ``fit``'s / the CLI's seed) plus the count of optimiser
steps taken (buffer ``draw_count``): checkpoints carry both, so a resumed run draws what an
uninterrupted one would. At test time the stop decision is random too (as in the original code); its
draws are seeded per user by ``(eval_seed, user id)``, so predictions do not depend on the chunking,
the order of users or the path. ``eval_stop_rule="threshold"`` stops deterministically when
``p_t > 0.5`` (an ablation, baselines.md §4 pitfall 2).

Decisions (baselines.md §4, "[decision]"; defaults are the Table-1 preset):

=========================  =====================================================  ==========================
decision                   this module                                            Table-1 preset default
=========================  =====================================================  ==========================
task, inner batch, loss    a task is a user; every inner step uses all support    ``rating_loss`` (MSE)
                           ratings; MSE for the inner loss, the outer loss and
                           the REINFORCE advantages
inputs                     Eq. 1 profile towers (FE of width 32, 2 layers) with   ``embed_dim=64``,
                           output 64, so the MLP input stays 128; outer-trained   ``field_dim=32``,
                           in θ₀'s Adam group; not adapted                        ``tower_layers=2``
validation                 held-out training users (``fit``'s ``val`` split) for  ``fit(val=True)``
                           checkpoint selection; the plateau scheduler on
                           validation MAE is :func:`plateau_callback`
tasks per step             the mean of ``J_u`` over a meta-batch (a recorded      ``users_per_batch=1``
                           speed-up when > 1; the original takes one task per
                           step, 100,000 steps ≈ 23 epochs of ML-1M)
deterministic stop         ``eval_stop_rule="threshold"`` (p_t > 0.5); the        ``eval_stop_rule="sample"``
                           default samples, seeded by ``eval_seed``
=========================  =====================================================  ==========================

Settings kept from ``config-movielens.json`` on every dataset: MLP 128 → 64 → 32 → 16 → 1 with ReLU and
zero biases, T_max 20 (``inner_steps``), T_min 4 (``min_steps``), controller width 16 with LayerNorm,
Adam learning rates 1e-4 (``global_lr``: θ₀ and the towers) / 1e-4 (``update_lr``) / 5e-5
(``stop_lr``), weight decay 1e-5 on all three groups, gradient clipping by value ±0.25
(``clip_value``), inner gradient clamp ±1 (``grad_clamp``), step penalty c = 0. The towers use the MLP's
ReLU (``RecommenderConfig`` has one activation; MAMO A.3's towers use LeakyReLU). The zero output bias
was free under the original's shift-invariant hinge loss; under MSE on 1–5 ratings it is not (the
untrained learner predicts ≈ 0; baselines.md §2, pitfall 5): ``output_bias_init="midpoint"`` starts the
output at the middle of the rating scale (a recorded deviation, off in the Table-1 preset).

``users_per_batch=1`` is the original's one task per optimiser step. The cost is per user, not per
step: every adapted coordinate (10,881) carries its own LSTM state through 4–20 steps. Measured on
MovieLens-1M (2,159 training users, 2 CPU cores shared with other jobs, load ≈ 5): ≈ 2 s per training
user on the loop path (≈ 70 minutes per epoch), ≈ 2.3 s with ``vmap`` over 8 users (which runs all
T_max steps for every user), ≈ 0.6 s per user to predict. Averaging over more users does not make an
epoch cheaper on a CPU; on a GPU the ``vmap`` path over larger batches is the way to scale.

Ablations: ``update_rule="sgd"`` replaces the update controllers by constants ``f = 1``, ``i = local_lr``;
with ``stop_rule="never"`` (exactly ``inner_steps`` updates, no REINFORCE term) and ``grad_clamp=None``
s²Meta is first-order MAML with ``inner_steps`` SGD steps of size ``local_lr`` (a test checks it).
Not implemented: the original's ranking task setup (scenarios, sampled pairs, hinge loss, Recall@K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from mamo_lite.data.tasks import TaskBatch
from mamo_lite.meta.engine import MetaConfig, MetaLearner, Params, in_vmap
from mamo_lite.models.recommender import EmbeddingRecommender, RecommenderConfig, prediction_from_output
from mamo_lite.utils import check_range

__all__ = ["NAME", "S2MetaConfig", "S2MetaLearner", "StopController", "UpdateController", "build", "configs",
           "plateau_callback", "preprocess"]

NAME = "s2meta"

PREPROCESS_P = 10.0  # p of Andrychowicz et al.'s preprocessing (THUDM/ScenarioMeta:src/meta.py)

# The "interaction" recommender of config-movielens.json: 128 → 64 → 32 → 16 → 1, ReLU, no output activation;
# its 128 inputs are [e_u, e_i] from Eq. 1 towers of width 64 over field embeddings of width 32 (MeLU's FE).
NETWORK = {"embed_dim": 64, "field_dim": 32, "tower_layers": 2, "decision_hidden": (64, 32, 16),
           "preference": "none", "activation": "relu", "output_bias_init": "zero"}


def preprocess(x: Tensor, p: float = PREPROCESS_P) -> tuple[Tensor, Tensor]:
    """``P(x) = (ℓ(x), s(x))``, Andrychowicz et al. (2016) §3.2, as s²Meta's controllers read their inputs.

    ``ℓ(x) = log|x| / p`` and ``s(x) = sign(x)`` if ``|x| ≥ e^{−p}``; else ``ℓ(x) = −1`` and
    ``s(x) = e^p·x``. Written as ``ℓ(x) = log(max(|x|, e^{−p}))/p`` and ``s(x) = clamp(e^p·x, −1, 1)``,
    which are the same functions, continuous at ``|x| = e^{−p}`` and branch-free (``vmap``-safe).
    """
    log_part = torch.log(x.abs().clamp(min=math.exp(-p))) / p
    sign_part = (math.exp(p) * x).clamp(-1.0, 1.0)
    return log_part, sign_part


def _lstm_cell(p: Params, prefix: str, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``nn.LSTMCell``'s maths on a functional parameter dict (gate order i, f, g, o, as PyTorch)."""
    gates = (F.linear(x, p[prefix + "weight_ih"], p[prefix + "bias_ih"])
             + F.linear(h, p[prefix + "weight_hh"], p[prefix + "bias_hh"]))
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class UpdateController(nn.Module):
    """The learned optimiser of one adapted tensor (Du et al. §4.2): input and forget gates per coordinate.

    Inputs per coordinate (5): ``P(g)``, ``P(sg θ)``, ``ℓ(sg L_t)``; ``g`` is the clamped support
    gradient. :meth:`step` returns the new tensor ``f ⊙ θ − i ⊙ g`` and the new ``(h, c)``.
    """

    def __init__(self, hidden: int = 16, input_bias: float = 0.0, forget_bias: float = 5.0) -> None:
        super().__init__()
        self.lstm = nn.LSTMCell(5, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.input_gate = nn.Linear(hidden, 1)
        self.forget_gate = nn.Linear(hidden, 1)
        self.h0 = nn.Parameter(torch.randn(hidden))
        self.c0 = nn.Parameter(torch.randn(hidden))
        nn.init.xavier_normal_(self.input_gate.weight)
        nn.init.constant_(self.input_gate.bias, input_bias)
        nn.init.xavier_normal_(self.forget_gate.weight)
        nn.init.constant_(self.forget_gate.bias, forget_bias)
        with torch.no_grad():  # the code's slice [H/4, H/2): inside the input-gate block (baselines.md §4, pitfall 5)
            self.lstm.bias_ih[hidden // 4: hidden // 2] = 1.0
            self.lstm.bias_hh[hidden // 4: hidden // 2] = 0.0

    @staticmethod
    def step(p: Params, prefix: str, theta: Tensor, g: Tensor, loss_log: Tensor, h: Tensor,
             c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One update ``θ ← f ⊙ θ − i ⊙ g`` with the controller's parameters ``p[prefix + ...]``."""
        n = theta.numel()
        x = torch.stack([*preprocess(g.reshape(n)), *preprocess(theta.detach().reshape(n)), loss_log.expand(n)], -1)
        h, c = _lstm_cell(p, prefix + "lstm.", x, h, c)
        h = F.layer_norm(h, h.shape[-1:], p[prefix + "norm.weight"], p[prefix + "norm.bias"])
        i = torch.sigmoid(F.linear(h, p[prefix + "input_gate.weight"], p[prefix + "input_gate.bias"]))
        f = torch.sigmoid(F.linear(h, p[prefix + "forget_gate.weight"], p[prefix + "forget_gate.bias"]))
        return f.reshape(theta.shape) * theta - i.reshape(theta.shape) * g, h, c


class StopController(nn.Module):
    """The stop policy (Du et al. §4.3): ``p_t = σ(w·LSTM(ℓ(‖∇_j L_t‖) per tensor j, ℓ(L_t)) + b)``."""

    def __init__(self, n_tensors: int) -> None:
        super().__init__()
        size = n_tensors + 1
        self.lstm = nn.LSTMCell(size, 2 * size)
        self.output_layer = nn.Linear(2 * size, 1)
        nn.init.zeros_(self.output_layer.bias)
        self.h0 = nn.Parameter(torch.randn(2 * size))
        self.c0 = nn.Parameter(torch.randn(2 * size))

    @staticmethod
    def step(p: Params, prefix: str, norms: Tensor, loss: Tensor, h: Tensor,
             c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(p_t, h, c)`` from the detached gradient norms ``[n]`` and support loss."""
        x = preprocess(torch.cat([norms, loss.reshape(1)]).detach())[0]
        h, c = _lstm_cell(p, prefix + "lstm.", x, h, c)
        prob = torch.sigmoid(F.linear(h, p[prefix + "output_layer.weight"], p[prefix + "output_layer.bias"]))
        return prob.squeeze(-1), h, c


StopRule = Literal["sample", "threshold", "never"]


@dataclass(frozen=True)
class S2MetaConfig(MetaConfig):
    """s²Meta's hyper-parameters (THUDM/ScenarioMeta:configs/config-movielens.json; module docstring).

    Engine fields keep their meaning: ``local_groups`` (the adapted tensors: the interaction MLP),
    ``inner_steps`` (T_max), ``global_lr`` (Adam rate of θ₀ and the towers, ``init_lr``),
    ``users_per_batch`` (users averaged per optimiser step). ``local_lr`` is the constant input gate of
    the ``update_rule="sgd"`` ablation only. ``first_order`` must stay True and ``local_update`` "batch".
    ``stop_rule`` is the training rule, ``eval_stop_rule`` Algorithm 2's: ``"sample"`` (stop when a
    uniform draw is below ``p_t``), ``"threshold"`` (when ``p_t > 0.5``), ``"never"`` (exactly
    ``inner_steps`` updates; no REINFORCE term).
    """

    kind: ClassVar[str | None] = "s2meta"

    local_groups: tuple[str, ...] = ("decision",)
    local_lr: float = 0.01
    inner_steps: int = 20  # T_max
    global_lr: float = 1e-4  # init_lr
    users_per_batch: int = 1
    min_steps: int = 4  # T_min
    update_lr: float = 1e-4
    stop_lr: float = 5e-5
    weight_decay: float = 1e-5
    clip_value: float | None = 0.25
    grad_clamp: float | None = 1.0
    controller_hidden: int = 16
    input_gate_bias: float = 0.0  # b_i; the recorded deviation if training explodes is −4.6 (pitfall 3)
    forget_gate_bias: float = 5.0  # b_f
    step_penalty: float = 0.0  # c
    update_rule: Literal["learned", "sgd"] = "learned"
    stop_rule: StopRule = "sample"
    eval_stop_rule: StopRule = "sample"
    eval_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.first_order:
            raise ValueError("S2MetaConfig.first_order must be True: s²Meta's controllers read detached gradients, "
                             "so the method is first order by construction (baselines.md §4, pitfall 7)")
        if self.local_update != "batch":
            raise ValueError("S2MetaConfig.local_update must be 'batch': every inner step uses the whole support set")
        check_range(self, "inner_steps", 1, integer=True, symbol="T_max")
        check_range(self, "min_steps", 0, integer=True, symbol="T_min")  # ≥ T_max: never stops early
        for name in ("update_lr", "stop_lr"):
            check_range(self, name, 0.0, strict=True)
        for name in ("weight_decay", "step_penalty"):
            check_range(self, name, 0.0)
        for name in ("clip_value", "grad_clamp"):
            if getattr(self, name) is not None:
                check_range(self, name, 0.0, strict=True)
        check_range(self, "controller_hidden", 1, integer=True)
        for name in ("input_gate_bias", "forget_gate_bias"):
            check_range(self, name, -math.inf)
        check_range(self, "eval_seed", 0, integer=True)


class S2MetaLearner(MetaLearner):
    """s²Meta on the engine: learned initialisation, update controllers and stop controller (module docstring)."""

    config: S2MetaConfig

    def __init__(self, model: EmbeddingRecommender, config: S2MetaConfig) -> None:
        if not isinstance(config, S2MetaConfig):
            raise TypeError(f"S2MetaLearner needs an S2MetaConfig, got {type(config).__name__}")
        super().__init__(model, config)
        if not self._local:
            raise ValueError(f"s²Meta adapts no tensor: the groups {config.local_groups} of this network are empty")
        named = dict(model.named_parameters())
        for name in self._local:  # the original MLP's biases start at zero (src/modules.py) ...
            if name.endswith("bias") and not (name == "out.bias" and model.config.output_bias_init == "midpoint"):
                nn.init.zeros_(named[name])  # ... except an output bias asked to start at the midpoint
        self._model_names = [n for n, _ in model.named_parameters()]
        self.update_controllers = nn.ModuleList(
            UpdateController(config.controller_hidden, config.input_gate_bias, config.forget_gate_bias)
            for _ in self._local)
        self.stop_controller = StopController(len(self._local))
        # Training stop draws: seed (from the global RNG at build time) + optimiser steps taken.
        self.register_buffer("stop_seed", torch.randint(0, 2**62, ()))
        self.register_buffer("draw_count", torch.zeros((), dtype=torch.long))

    # -- which parameters ------------------------------------------------------------------
    def params(self) -> Params:
        """The recommender's tensors (by their own names) and the controllers' (``update_controllers.*``,
        ``stop_controller.*``)."""
        return {n.removeprefix("model."): p for n, p in self.named_parameters()}

    def global_names(self) -> list[str]:
        """Everything is meta-learned: θ₀, the towers and embeddings, and both controllers."""
        return list(self.params())

    def output(self, params: Params, fast: Params, user_x: Tensor, item_x: dict) -> Tensor:
        """The recommender on its own tensors only (the controllers' are not its parameters)."""
        return functional_call(self.model, {**{n: params[n] for n in self._model_names}, **fast}, (user_x, item_x))

    # -- random stop draws (outside vmap) ---------------------------------------------------
    def stop_draws(self, batch: TaskBatch) -> Tensor:
        """Training draws ``[B, T_max]``: seeded by ``stop_seed`` and the optimiser steps taken so far."""
        g = torch.Generator().manual_seed((int(self.stop_seed) + int(self.draw_count)) % 2**63)
        return torch.rand(len(batch), self.config.inner_steps, generator=g)

    def eval_draws(self, batch: TaskBatch) -> Tensor:
        """Test-time draws ``[B, T_max]``: one generator per user, seeded by ``(eval_seed, user id)``."""
        seed = self.config.eval_seed
        rows = [torch.rand(self.config.inner_steps, generator=torch.Generator().manual_seed(
            (seed * 1_000_003 + int(u)) % 2**63)) for u in batch.user_ids.tolist()]
        return torch.stack(rows) if rows else torch.zeros(0, self.config.inner_steps)

    def batch_inputs(self, batch: TaskBatch) -> dict:
        """``batch.inputs()`` plus the uniform draws of the training and the test-time stop rules."""
        dtype, device = batch.support_y.dtype, batch.support_y.device
        return {**batch.inputs(), "stop_draws": self.stop_draws(batch).to(device, dtype),
                "eval_draws": self.eval_draws(batch).to(device, dtype)}

    # -- the per-user algorithm -----------------------------------------------------------------
    def adapt(self, params: Params, task: dict, draws: Tensor, *, rule: StopRule, steps: int,
              track: bool) -> tuple[Params, dict[str, Tensor]]:
        """Run the learned optimiser on the support set (module docstring); returns ``(θ_u, trace)``.

        ``trace`` holds, per step ``t < steps``: ``updated`` (1 if step t updated θ), ``stop_prob``
        (``p_t``) and, with ``track``, ``query_loss`` (``L_Q(θ_t)``, no gradient), all zero after the stop.
        Under ``vmap`` every step runs and a mask freezes θ after the stop; on the loop path the loop ends.
        """
        cfg = self.config
        masked = in_vmap()
        consts = {n: params[n].detach() for n in self._model_names}
        fast = {n: params[n] for n in self._local}
        learned = cfg.update_rule == "learned"
        states = {}
        if learned:
            for j, n in enumerate(self._local):
                pre = f"update_controllers.{j}."
                k = fast[n].numel()
                states[n] = (params[pre + "h0"].expand(k, -1), params[pre + "c0"].expand(k, -1))
        stop_h, stop_c = params["stop_controller.h0"], params["stop_controller.c0"]
        one = draws.new_ones(())
        active = one
        updated, probs, query = [], [], []
        for t in range(steps):
            frozen = {n: v.detach() for n, v in fast.items()}
            g, loss = grad_and_value(lambda f: self.task_loss(consts, f, task, "support"))(frozen)
            g, loss = {n: v.detach() for n, v in g.items()}, loss.detach()
            prob = one * 0
            if rule != "never":
                norms = torch.stack([g[n].norm() for n in self._local])
                prob, stop_h, stop_c = StopController.step(params, "stop_controller.", norms, loss, stop_h, stop_c)
                if t >= cfg.min_steps:
                    stop = draws[t] < prob if rule == "sample" else prob > 0.5
                    if not masked and bool(stop):
                        break
                    active = torch.where(stop, one * 0, active)
            updated.append(active)
            probs.append(prob)
            if track:
                query.append(self.task_loss(consts, frozen, task, "query").detach())
            if cfg.grad_clamp is not None:
                g = {n: v.clamp(-cfg.grad_clamp, cfg.grad_clamp) for n, v in g.items()}
            for j, n in enumerate(self._local):
                if learned:
                    h, c = states[n]
                    new, h, c = UpdateController.step(params, f"update_controllers.{j}.", fast[n], g[n],
                                                      preprocess(loss)[0], h, c)
                    if masked:
                        h, c = torch.where(active > 0, h, states[n][0]), torch.where(active > 0, c, states[n][1])
                    states[n] = (h, c)
                else:
                    new = fast[n] - cfg.local_lr * g[n]
                fast[n] = torch.where(active > 0, new, fast[n]) if masked else new
        pad = steps - len(updated)  # loop path after a stop: the masked path's zeros
        zeros = [one * 0] * pad
        trace = {"updated": torch.stack(updated + zeros) if steps else one.new_zeros(0),
                 "stop_prob": torch.stack(probs + zeros) if steps else one.new_zeros(0)}
        if track:
            trace["query_loss"] = torch.stack(query + zeros) if steps else one.new_zeros(0)
        trace["stop_prob"] = trace["stop_prob"] * trace["updated"]
        return fast, trace

    def user_objective(self, params: Params, memories: dict, task: dict, with_aux: bool) -> tuple[Tensor, dict]:
        """``J_u`` with the value of ``L_Q(θ_u)`` (module docstring).

        aux: ``steps`` (T_u), ``stop_prob`` (p_t) and ``advantage`` per step (zero after the stop).
        """
        cfg = self.config
        track = cfg.stop_rule != "never"
        fast, trace = self.adapt(params, task, task["stop_draws"], rule=cfg.stop_rule, steps=cfg.inner_steps,
                                 track=track)
        loss = self.task_loss(params, fast, task, "query")
        upd = trace["updated"]
        n_steps = upd.sum()
        advantage = torch.zeros_like(upd)
        if track:
            t = torch.arange(cfg.inner_steps, device=upd.device, dtype=upd.dtype)
            advantage = (trace["query_loss"] - loss.detach() - (n_steps - t) * cfg.step_penalty) * upd
            log_continue = torch.log1p(-torch.where(upd > 0, trace["stop_prob"], torch.zeros_like(upd)))
            reinforce = (-log_continue * advantage).sum()
            loss = loss + (reinforce - reinforce.detach())  # value L_Q(θ_u), gradient of J_u
        aux = {"steps": n_steps, "stop_prob": trace["stop_prob"], "advantage": advantage} if with_aux else {}
        return loss, aux

    def user_predictions(self, params: Params, memories: dict, task: dict, steps: int | None) -> Tensor:
        """Algorithm 2: adapt with ``eval_stop_rule`` (or exactly ``steps`` updates), predict the query set."""
        cfg = self.config
        rule, n = (cfg.eval_stop_rule, cfg.inner_steps) if steps is None else ("never", steps)
        fast, _ = self.adapt(params, task, task["eval_draws"], rule=rule, steps=n, track=False)
        out = self.output(params, fast, task["user_x"], task["query_x"])
        return prediction_from_output(out, head=self.model.config.head, rating_min=self.model.spec.rating_min)

    # -- the global update ------------------------------------------------------------------------
    def configure_optimizer(self) -> torch.optim.Optimizer:
        """Three groups (src/main.py): θ₀ and the towers at ``global_lr``, update controllers at
        ``update_lr``, stop controller at ``stop_lr``; weight decay on all of them."""
        cfg = self.config
        groups = [{"params": list(self.model.parameters()), "lr": cfg.global_lr},
                  {"params": list(self.update_controllers.parameters()), "lr": cfg.update_lr},
                  {"params": list(self.stop_controller.parameters()), "lr": cfg.stop_lr}]
        if cfg.global_optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.global_lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(groups, lr=cfg.global_lr, weight_decay=cfg.weight_decay)

    def before_optimizer_step(self) -> None:
        """Clip every meta-gradient element to ±``clip_value`` (by value, not norm); count the step."""
        if self.config.clip_value is not None:
            nn.utils.clip_grad_value_([p for p in self.parameters() if p.grad is not None], self.config.clip_value)
        self.draw_count += 1


def plateau_callback(optimizer: torch.optim.Optimizer, *, factor: float = 0.2, patience: int = 2,
                     min_lr: float = 1e-6):
    """A ``fit`` callback stepping ``ReduceLROnPlateau`` on the validation MAE once per epoch.

    The original steps it every 5,000 tasks on the *test* Recall@10 (mode max, factor 0.2, patience
    2, minimum 1e-6); here it reads validation users only [decision]. Pass the same ``optimizer`` to
    ``fit(..., optimizer=optimizer, callback=plateau_callback(optimizer))``.
    """
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience,
                                                           min_lr=min_lr)

    def callback(epoch: int, metrics: dict[str, float], learner: MetaLearner) -> None:
        if "val_MAE" in metrics:
            scheduler.step(metrics["val_MAE"])

    return callback


# -- the registry's interface (mamo_lite.methods) ---------------------------------------------------

def configs(dataset: str) -> dict[str, Any]:
    """s²Meta's Table-1 preset (config-movielens.json on every dataset, as MAMO A.2.2 did)."""
    return {"model": RecommenderConfig(**NETWORK), "meta": S2MetaConfig(), "mamo": None}


def build(model: EmbeddingRecommender, configs: dict[str, Any]) -> S2MetaLearner:
    return S2MetaLearner(model, configs["meta"])
