"""GreatMeta (Du et al., *Data Min. Knowl. Discov.* 39(5), 2025; YantongDU/GreatMeta), as intended.

Only the abstract and the authors' code exist for us (``notes/reference-code.md`` §3, corrected by
§3.12 after the code was run). The abstract's parts, and where they live here:

* **"a personalized encoder that effectively utilizes limited data"** — :class:`FiLMRecommender`
  (GM:GreatMeta.py ``UserAdaptingModulator``, §3.3). Side-feature embeddings only (no id
  embeddings; multi-valued fields summed), rows ``x = [p_u, p_i]`` of width ``D``, and a FiLM predictor
  whose scale and shift come from a linear map of the mean embedded rows::

      t  = W_φ · mean_rows(C) + b_φ                   # "task embedding", C: the conditioning rows
      h1 = (Γ1 t) ⊙ (W1 x + b1) + (B1 t)
      h2 = (Γ2 t) ⊙ (W2 h1 + b2) + (B2 t)
      ŷ  = w3 · h2 + b3

  with no nonlinearity, as coded (``film_activation="relu"`` puts one after h1 and h2). ``conditioning``
  chooses ``C``: ``"support"`` (default) is the user's support rows in every pass; ``"query"`` (as
  coded, §3.12) is the rows being predicted, so a query pass reads the query items' features. The
  default follows the abstract ("utilizes limited data": the data a cold user gives is the support
  set) and keeps a prediction from depending on which *other* items happen to be scored with it:
  with query conditioning a rating's prediction changes when the query set changes (MAMO's query
  sets mix W-W/W-C/C-W/C-C items), which is the evaluation design leaking into the predictions.
* **"three original gradient-aware factors"** — :func:`gradient_factors` and
  :func:`normalise_factors` (GM ``update_meta_model`` L116-148, §3.5/§3.12), per user ``i`` of a batch:
  (1) ``f1_i = L^q_i(ψ'_i)``, the query loss after adaptation; (2) per adapted tensor ``k``,
  ``f2_ik = cos(∇_{ψ'} L^q_i(ψ'_i)[k], ∇_ψ L^q_i(ψ)[k])``, the query gradient after vs before
  adaptation; (3) per tensor, ``f3_ik = cos(g_i[k], ḡ[k])`` for adapted tensors and the raw dot
  product ``⟨g_i[k], ḡ[k]⟩`` for the others (the embeddings), ``g_i`` the user's meta-gradient and
  ``ḡ`` the batch mean. Normalised as coded: f1 standardised across the batch (a fresh
  ``LayerNorm``: biased variance, ε = 1e-5, so a batch of one user gives 0); f2 and f3 standardised
  within each user's own vector (unbiased variance, ε = 1e-8), so only each user's pattern across
  tensors survives. All factors are constants (no gradient flows into them). The per-user
  quantities come for the whole batch at once from one ``vmap`` (:meth:`GreatMetaLearner.batch_gradients`);
  the loop path gives the same numbers.
* **"a preference-aware scheduler to adaptively adjust each user's contribution"** —
  :class:`PreferenceScheduler`: ``Linear(no bias) → ReLU → Linear → Tanh → Linear → 1``, softmax over
  the batch's users (weights positive, summing to one). One batch (:meth:`GreatMetaLearner.meta_update`):

  1. per-user ``(L_i, g_i, f_i)`` as above; ``w = S(f)``;
  2. look-ahead ``θ' = step(θ, Σ_i w_i g_i)`` (differentiable in the scheduler through ``w``), the mean
     query loss at ``θ'`` without inner adaptation (as coded; ``lookahead_steps`` adapts first), and
     one step of the scheduler's own optimiser on its gradient (clamped to ``±clip_value``);
  3. ``w* = S(f)`` with the updated scheduler; the meta-model steps on ``Σ_i w*_i g_i`` (clamped).

  The code recomputes every inner loop before step 3; the ``g_i`` and factors do not depend on the
  scheduler, so we reuse them: same update, half the cost [decision]. ``weighting="uniform"`` skips
  the scheduler (``w = 1/B``: the code's ``use_avg_grad`` path, which crashes as released, Errata 8).
  Each update's weights and factors are in ``GreatMetaLearner.last_batch``; set
  ``learner.batch_log = []`` to keep them all (the scheduler's weights over training).

Options (fields of :class:`GreatMetaConfig`): ours first, then the alternatives; "as coded" marks the
authors' behaviour.

* ``conditioning``: ``"support"`` (default), FiLM reads the support rows; ``"query"`` (as coded), the
  rows being predicted.
* ``lookahead``: ``"optimizer"`` (default), the look-ahead is the step the meta-model takes (Adam with
  its current state, gradients clamped); ``"sgd"`` (as coded, Errata 6), plain SGD at the meta-model's
  rate, unclamped, while the meta-model steps with Adam.
* ``lookahead_users``: ``"same"`` (default, as coded), the look-ahead is scored on the batch's own
  queries; ``"held-out"``, two folds (even/odd users), each fold's step scored on the other's queries.
* ``gradients``: ``"independent"`` (default), per-user copies; ``"aliased"`` (as coded, Errata 1).
* ``inner_steps``: 5 (default, the quickstart's setting); 3 reproduces the hard-coded count (Errata 2).
* ``first_order``: True (default, the code's effective algorithm); False, the exact second order
  through the inner steps (Errata 3).
* ``eval_adapts``: ``"same"`` (default), the tensors adapted in training (ψ); ``"all"`` (as coded,
  Errata 4), ψ and the embeddings.
* ``film_activation``: ``"none"`` (default, as coded: a polynomial); ``"relu"`` after h1 and h2.
* ``encoder``: ``"film"`` (default, as coded); ``"none"``, the same predictor without the personalised
  encoder (``h1 = W1 x + b1``, ``h2 = W2 h1 + b2``): the ablation of the abstract's encoder.
* ``weighting``: ``"scheduler"`` (default); ``"uniform"`` (FOMAML with the encoder).

Other settings as coded (§3.8): 32-dimensional field embeddings, FiLM widths (64, 64), ρ = 5e-6,
Adam 5e-5 for the meta-model and the scheduler, 32 users per batch, gradients clamped to ±10 by value
on both optimisers. Deviations: ``output_bias_init="midpoint"`` (the house default; the code's zero
bias leaves the meta-model badly calibrated and its inner loop spends itself on the offset, §3.7;
``--set output_bias_init=zero`` restores it), ``ḡ`` is the mean over the batch's actual users (the
code divides by the configured 32 even for a smaller last batch, Errata 7), and validation picks the
best epoch by MAE through :func:`mamo_lite.train.fit` (Errata 5).

Imbalance: :func:`minority_users` labels users measurably at a fixed checkpoint (any learner);
model-free labels and per-group metrics are in :mod:`mamo_lite.groups`, and the per-group results of
MAML, MeLU, MAMO and GreatMeta on both protocols in :mod:`mamo_lite.imbalance`.

**Errata**

1. **Aliased per-user gradients.** GreatMeta's gradient collector (GM:MetaUtils.py L127-149) keeps the
   first user's gradient tensors by reference and adds every later user's gradient into them in place,
   so the applied update is ``w_0·Σ_j g_j + Σ_{i≥1} w_i g_i`` instead of ``Σ_i w_i g_i`` and user 0's
   factor 3 is exactly 1 on every adapter tensor; ``mamo_lite`` keeps independent per-user copies
   (``gradients="aliased"`` reproduces the code).
2. **Inner steps hard-coded.** ``GreatMeta.__init__`` sets ``local_update_count = 3`` whatever the
   configuration says (the quickstart asks for 5); ``mamo_lite`` runs ``inner_steps`` steps, 5 by default.
3. **First order by accident.** The inner loop rebuilds its fast weights from a detached ``state_dict``
   and loads them with ``load_state_dict``, which cuts the graph, so the meta-gradient is first order
   although nothing says so; ``mamo_lite`` is first order by choice (``first_order=True``) and offers the
   exact second-order meta-gradient (``first_order=False``).
4. **Different parameters adapted in training and test.** Training adapts the FiLM predictor and encoder
   only; ``GreatMeta.predict`` adapts the embedding tables too; ``mamo_lite`` adapts the same tensors in
   both (``eval_adapts="all"`` reproduces the code).
5. **Test on the last epoch.** ``predict`` restarts from ``keepWeightParams``, an attribute outside the
   ``state_dict``, so the saved "best" checkpoint is never used and test scores come from the last
   epoch; ``mamo_lite.train.fit`` restores the epoch with the best validation MAE.
6. **Look-ahead optimises a step never taken.** The scheduler is trained through a plain-SGD look-ahead
   of the meta-model while the meta-model steps with Adam; ``mamo_lite`` looks ahead with the optimiser
   step actually taken (``lookahead="sgd"`` reproduces the code).
7. **Batch mean over the configured batch size.** Factor 3's ``ḡ`` divides the batch's summed gradients by
   ``train_batch_size`` (32) even for a smaller last batch, which shrinks the embedding tensors' dot
   products against the adapter tensors' cosines before the within-user standardisation; ``mamo_lite``
   averages over the batch's actual users.
8. **The uniform path crashes.** ``use_avg_grad=True`` (skip the scheduler, average the gradients) returns
   two values where the trainer unpacks three; ``weighting="uniform"`` is that path, working (the engine's
   mean update).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value

from mamo_lite.data.tasks import FeatureSpec, TaskBatch
from mamo_lite.groups import batch_ratings, histogram_distance, label_groups
from mamo_lite.meta.engine import MetaConfig, MetaLearner, Params, Path, adapt, map_users
from mamo_lite.models.recommender import (
    EmbeddingRecommender,
    RecommenderConfig,
    prediction_from_output,
    rating_loss,
)
from mamo_lite.utils import check_range

__all__ = ["NAME", "FiLMRecommender", "GreatMetaConfig", "GreatMetaLearner", "PreferenceScheduler", "alias_first_user",
           "build", "configs", "gradient_factors", "lookahead_step", "minority_users", "normalise_factors",
           "per_user_meta_gradients", "tensor_cosine"]

NAME = "greatmeta"

# GM:GreatMeta.yaml: embedding_size 32, encoder_layer_dim [64, 64]; token_seq fields are summed (§3.2).
NETWORK = {"embed_dim": 32, "field_dim": 32, "tower_layers": 0, "decision_hidden": (64, 64), "preference": "none",
           "multi_pooling": "sum", "output_bias_init": "midpoint"}
FILM_LAYERS = ("phi", "gamma_1", "beta_1", "gamma_2", "beta_2")


# -- the recommender with the personalised encoder (§3.3) --------------------------------------------

class FiLMRecommender(EmbeddingRecommender):
    """Field embeddings and a FiLM-modulated predictor (module docstring; GM ``UserAdaptingModulator``).

    Reuses :class:`~mamo_lite.models.recommender.EmbeddingRecommender`'s tables (``profile`` group) and
    its decision layers as ``W1``, ``W2`` and ``w3`` (``decision.0``, ``decision.2``, ``out``); the
    encoder ``encoder.{phi, gamma_1, beta_1, gamma_2, beta_2}`` belongs to the ``decision`` group too, so
    ``local_groups=("decision",)`` adapts the code's whole adapter ψ (12 tensors).
    """

    def __init__(self, spec: FeatureSpec, config: RecommenderConfig, activation: str = "none",
                 encoder: str = "film") -> None:
        if config.tower_layers != 0 or config.preference != "none":
            raise ValueError("GreatMeta's recommender needs tower_layers=0 and preference='none' (rows are the raw "
                             f"field embeddings), got tower_layers={config.tower_layers}, "
                             f"preference={config.preference!r}")
        if config.decision_hidden is None or len(config.decision_hidden) != 2:
            raise ValueError(f"GreatMeta's FiLM predictor has two hidden layers; decision_hidden must be a pair of "
                             f"widths, got {config.decision_hidden!r}")
        if encoder not in ("film", "none"):
            raise ValueError(f"encoder must be 'film' or 'none', got {encoder!r}")
        super().__init__(spec, config)
        d = self.user_dim + self.item_dim
        h1, h2 = config.decision_hidden
        self.encoder = nn.ModuleDict({
            "phi": nn.Linear(d, d),
            "gamma_1": nn.Linear(d, h1, bias=False), "beta_1": nn.Linear(d, h1, bias=False),
            "gamma_2": nn.Linear(d, h2, bias=False), "beta_2": nn.Linear(d, h2, bias=False)}) if encoder == "film" \
            else None
        self.activation = activation

    @staticmethod
    def group_of(name: str) -> str:
        """The encoder is part of the adapter (``decision``); everything else as the base recommender."""
        return "decision" if name.split(".", 1)[0] == "encoder" else EmbeddingRecommender.group_of(name)

    def rows(self, user_x: Tensor, item_x: dict[str, Tensor], params: dict[str, Tensor] | None = None) -> Tensor:
        """``x = [p_u, p_i]`` for every item, ``[..., N, D]`` (``params``: a functional parameter dict
        that overrides the module's own tables)."""
        p_u, p_i = self.user_profile_vector(user_x, params), self.item_profile_vector(item_x, params)
        return torch.cat([p_u.unsqueeze(-2).expand(*p_i.shape[:-1], p_u.shape[-1]), p_i], -1)

    def task_embedding(self, rows: Tensor, mask: Tensor | None = None) -> Tensor:
        """``t = W_φ · mean(rows) + b_φ`` over the real rows (``mask``), ``[..., D]``."""
        if mask is None:
            mean = rows.mean(-2)
        else:
            m = mask.to(rows.dtype).unsqueeze(-1)
            mean = (rows * m).sum(-2) / m.sum(-2).clamp(min=1.0)
        return self.encoder["phi"](mean)

    def forward(self, user_x: Tensor, item_x: dict[str, Tensor] | Tensor,
                context_x: dict[str, Tensor] | Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """Scores ``[..., N]`` of the items ``item_x``, conditioned on the rows of ``context_x`` (default:
        the items themselves, as coded) whose real slots ``context_mask`` marks.

        ``item_x`` and ``context_x`` are raw item features or their rows from :meth:`rows` (a tensor
        ``[..., N, D]``), so that a learner can embed a support set once and reuse the rows in every
        inner step (:meth:`GreatMetaLearner.with_rows`).
        """
        x = item_x if isinstance(item_x, Tensor) else self.rows(user_x, item_x)
        enc = self.encoder
        if enc is not None:  # encoder="none": the same predictor, unmodulated (h1 = W1 x + b1, ...)
            if context_x is None:
                c = x
            else:
                c = context_x if isinstance(context_x, Tensor) else self.rows(user_x, context_x)
            t = self.task_embedding(c, context_mask)
        h = x
        for k, layer in ((1, self.decision[0]), (2, self.decision[2])):
            h = layer(h)
            if enc is not None:
                h = enc[f"gamma_{k}"](t).unsqueeze(-2) * h + enc[f"beta_{k}"](t).unsqueeze(-2)
            h = F.relu(h) if self.activation == "relu" else h
        out = self.out(h)
        return out.squeeze(-1) if self.config.head == "regression" else out


# -- configuration --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GreatMetaConfig(MetaConfig):
    """GreatMeta's hyper-parameters (GM:GreatMeta.yaml, quickstart.py; §3.8) and named options.

    Engine fields keep their meaning: ``local_groups`` (ψ: the FiLM predictor and encoder),
    ``local_lr`` (ρ = 5e-6), ``inner_steps`` (honoured, Errata 2), ``first_order``, ``global_lr`` (the
    meta-model's Adam, 5e-5), ``users_per_batch`` (32). ``reduction`` matters only for the engine's
    uniform :func:`~mamo_lite.meta.engine.meta_gradient`. The options are explained in the module
    docstring's table.
    """

    kind: ClassVar[str | None] = "greatmeta"

    local_groups: tuple[str, ...] = ("decision",)
    local_lr: float = 5e-6
    inner_steps: int = 5
    first_order: bool = True
    global_lr: float = 5e-5
    users_per_batch: int = 32
    scheduler_lr: float = 5e-5
    scheduler_hidden: int = 64
    clip_value: float | None = 10.0
    conditioning: Literal["support", "query"] = "support"
    film_activation: Literal["none", "relu"] = "none"
    encoder: Literal["film", "none"] = "film"
    weighting: Literal["scheduler", "uniform"] = "scheduler"
    lookahead: Literal["optimizer", "sgd"] = "optimizer"
    lookahead_users: Literal["same", "held-out"] = "same"
    lookahead_steps: int = 0
    gradients: Literal["independent", "aliased"] = "independent"
    eval_adapts: Literal["same", "all"] = "same"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "scheduler_lr", 0.0, strict=True)
        check_range(self, "scheduler_hidden", 1, integer=True)
        check_range(self, "lookahead_steps", 0, integer=True)
        if self.clip_value is not None:
            check_range(self, "clip_value", 0.0, strict=True)


# -- the preference-aware scheduler (§3.6) -----------------------------------------------------------

class PreferenceScheduler(nn.Module):
    """``w = softmax_users(MLP(factors))`` (GM ``TaskAwareWeightScheduler`` with ``use_mlp_for_weight``)."""

    def __init__(self, n_inputs: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n_inputs, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, factors: Tensor) -> Tensor:
        """Weights ``[B]`` (positive, summing to one) from normalised factors ``[B, n_inputs]``."""
        return torch.softmax(self.mlp(factors).squeeze(-1), 0)


# -- the three factors (§3.5, §3.12) ----------------------------------------------------------------

def tensor_cosine(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise cosine of ``[B, ...]`` tensors (``b`` may have a leading 1): ``a·b / max(‖a‖‖b‖, ε)``,
    as ``torch.nn.CosineSimilarity(eps=1e-8)`` computes it in the code."""
    a, b = a.flatten(1), b.flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=eps)


def alias_first_user(grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """The code's gradient list (Errata 1): user 0's row replaced by the batch sum ``Σ_j g_j``."""
    return {n: torch.cat([g.sum(0, keepdim=True), g[1:]]) for n, g in grads.items()}


def gradient_factors(losses: Tensor, grads: dict[str, Tensor], grads_post: dict[str, Tensor],
                     grads_pre: dict[str, Tensor], adapted: Sequence[str],
                     mean: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The three raw factors of a batch (module docstring): ``f1 [B]``, ``f2 [B, A]``, ``f3 [B, T]``.

    ``losses`` are the query losses after adaptation, ``grads`` the per-user meta-gradients ``[B, ...]``
    by tensor (all T meta-learned tensors, in order), ``grads_post``/``grads_pre`` the query gradients
    of the A ``adapted`` tensors after/before adaptation. ``mean`` is ``ḡ`` (default: the mean of
    ``grads`` over users). f3 is a cosine for adapted tensors and a raw dot product for the others.
    """
    mean = mean if mean is not None else {n: g.mean(0) for n, g in grads.items()}
    f2 = torch.stack([tensor_cosine(grads_post[n], grads_pre[n]) for n in adapted], 1)
    f3 = torch.stack([tensor_cosine(g, mean[n].unsqueeze(0)) if n in adapted
                      else (g.flatten(1) * mean[n].reshape(1, -1)).sum(1) for n, g in grads.items()], 1)
    return {"f1": losses, "f2": f2, "f3": f3}


def _standardise_rows(m: Tensor, eps: float = 1e-8) -> Tensor:
    if m.shape[1] < 2:
        return torch.zeros_like(m)
    return (m - m.mean(1, keepdim=True)) / torch.sqrt(m.var(1, keepdim=True, correction=1) + eps)


def normalise_factors(factors: dict[str, Tensor]) -> Tensor:
    """The scheduler's input ``[B, 1 + A + T]``: f1 standardised across the batch (LayerNorm, biased
    variance, ε = 1e-5), f2 and f3 within each user's row (unbiased variance, ε = 1e-8); detached."""
    f1 = factors["f1"].detach()
    f1 = (f1 - f1.mean()) / torch.sqrt(f1.var(correction=0) + 1e-5)
    return torch.cat([f1.unsqueeze(1), _standardise_rows(factors["f2"].detach()),
                      _standardise_rows(factors["f3"].detach())], 1)


# -- the look-ahead (§3.6) ---------------------------------------------------------------------------

def lookahead_step(optimizer: torch.optim.Optimizer, named: dict[str, Tensor], grads: dict[str, Tensor], *,
                   rule: Literal["optimizer", "sgd"] = "optimizer", clip_value: float | None = None,
                   lr: float | None = None) -> dict[str, Tensor]:
    """``θ'``: the step ``optimizer`` would take from ``named`` (its parameters) with gradients ``grads``,
    as a differentiable function of ``grads``; nothing is modified.

    ``rule="optimizer"`` clamps the gradients to ±``clip_value`` (as the real step does) and replays
    Adam (bias corrections, ε, weight decay; the optimiser's current moments and step count) or plain
    SGD, with each parameter group's settings. ``rule="sgd"`` is the code's look-ahead: ``θ − lr·g``
    (``lr`` default: the group's rate), unclamped.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = {}
    for n, p in named.items():
        g, base, group = grads[n], p.detach(), group_of[id(p)]
        if rule == "sgd":
            out[n] = base - (group["lr"] if lr is None else lr) * g
            continue
        if clip_value is not None:
            g = g.clamp(-clip_value, clip_value)
        if group.get("weight_decay", 0.0):
            g = g + group["weight_decay"] * base
        if isinstance(optimizer, torch.optim.Adam):
            if group.get("amsgrad") or group.get("maximize"):
                raise NotImplementedError("the look-ahead replays plain Adam (no amsgrad, no maximize)")
            beta1, beta2 = group["betas"]
            state = optimizer.state.get(p, {})
            step = float(state["step"]) + 1 if state else 1.0
            m = beta1 * state["exp_avg"] + (1 - beta1) * g if state else (1 - beta1) * g
            v = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g if state else (1 - beta2) * g * g
            # √v with a zero gradient where v = 0 (unused embedding rows): d√v/dv is infinite there, and
            # 0·∞ would poison the scheduler's gradient; the value differs from √0 by < 1e-18 (≪ ε)
            denom = v.clamp(min=torch.finfo(v.dtype).tiny).sqrt() / math.sqrt(1 - beta2 ** step) + group["eps"]
            out[n] = base - group["lr"] / (1 - beta1 ** step) * m / denom
        elif isinstance(optimizer, torch.optim.SGD) and not group.get("momentum"):
            out[n] = base - group["lr"] * g
        else:
            raise NotImplementedError(f"no look-ahead for {type(optimizer).__name__} with these settings")
    return out


# -- the learner ------------------------------------------------------------------------------------

class GreatMetaLearner(MetaLearner):
    """GreatMeta on the engine (module docstring): FiLM recommender, factors, scheduler, weighted update."""

    config: GreatMetaConfig
    model: FiLMRecommender

    def __init__(self, model: FiLMRecommender, config: GreatMetaConfig) -> None:
        if not isinstance(config, GreatMetaConfig):
            raise TypeError(f"GreatMetaLearner needs a GreatMetaConfig, got {type(config).__name__}")
        if not isinstance(model, FiLMRecommender):
            raise TypeError(f"GreatMetaLearner needs a FiLMRecommender, got {type(model).__name__}")
        super().__init__(model, config)
        if not self._local:
            raise ValueError(f"GreatMeta adapts no tensor: the groups {config.local_groups} are empty")
        self.scheduler = PreferenceScheduler(1 + len(self._local) + len(self.global_names()), config.scheduler_hidden)
        self.last_batch: pd.DataFrame | None = None  # factors and weights of the latest meta-update
        # set to [] to keep every meta-update's ``last_batch`` (column ``batch`` numbers them); not saved
        self.batch_log: list[pd.DataFrame] | None = None

    def batch_inputs(self, batch: TaskBatch) -> dict:
        """``batch.inputs()`` on the batch's own support width (:meth:`~mamo_lite.data.tasks.TaskBatch.trim_support`)."""
        return batch.trim_support().inputs()

    # -- the recommender on a task, conditioned as configured -------------------------------------
    def film_output(self, params: Params, fast: Params, task: dict, which: str) -> Tensor:
        """Raw outputs on ``task``'s ``which`` set, the FiLM conditioned on ``config.conditioning``'s rows.

        Uses the rows ``task[f"{which}_rows"]`` where :meth:`with_rows` put them, else embeds the features.
        """
        ctx = "support" if self.config.conditioning == "support" else which
        items, context = (task.get(f"{s}_rows", task[f"{s}_x"]) for s in (which, ctx))
        return functional_call(self.model, {**params, **fast}, (task["user_x"], items, context, task[f"{ctx}_mask"]))

    def with_rows(self, params: Params, task: dict, adapted: Sequence[str], steps: int | None = None) -> dict:
        """``task`` plus the rows ``x = [p_u, p_i]`` under ``params``' embedding tables of the sets that
        ``steps`` inner steps on ``adapted`` and a query pass read (``steps=0``: the query pass only).

        The inner steps change only the adapted tensors; unless an embedding table is among them, the
        support rows are the same in every step, so embedding them once is the same function (gradients
        into the tables included, where ``params`` carries them) at a fraction of the cost [decision,
        speed]. With an adapted table the task is returned as it is.
        """
        if any(self.model.group_of(n) == "profile" for n in adapted):
            return task
        sets = ["query"]
        if self.config.conditioning == "support" or steps != 0:
            sets.append("support")
        return {**task, **{f"{s}_rows": self.model.rows(task["user_x"], task[f"{s}_x"], params) for s in sets}}

    def task_loss(self, params: Params, fast: Params, task: dict, which: str) -> Tensor:
        out = self.film_output(params, fast, task, which)
        return rating_loss(out, task[f"{which}_y"], task[f"{which}_mask"], head=self.model.config.head,
                           rating_min=self.model.spec.rating_min)

    def user_predictions(self, params: Params, memories: dict, task: dict, steps: int | None) -> Tensor:
        """Algorithm 2: adapt ψ (``eval_adapts="all"``: every tensor, as coded) on the support set, predict."""
        names = self._local if self.config.eval_adapts == "same" else self.global_names()
        task = self.with_rows(params, task, names, steps)
        fast = adapt(self, params, {n: params[n] for n in names}, task, steps=steps, first_order=True)
        out = self.film_output(params, fast, task, "query")
        return prediction_from_output(out, head=self.model.config.head, rating_min=self.model.spec.rating_min)

    # -- per-user quantities (§3.4) -----------------------------------------------------------------
    def user_gradients(self, params: Params, task: dict) -> tuple[Tensor, Params, Params, Params]:
        """One user: ``(L^q(ψ'), g = ∇_θ L^q(ψ'(θ)), ∇_{ψ'} L^q(ψ'), ∇_ψ L^q(ψ))``, each its own tensors."""
        local = self._local

        def query_loss(theta: Params, delta: Params) -> tuple[Tensor, dict]:  # δ = 0: ∇ at ψ' w.r.t. ψ'
            t = self.with_rows(theta, task, local)
            fast = adapt(self, theta, {n: theta[n] for n in local}, t)
            rows = {k: v.detach() for k, v in t.items() if k.endswith("_rows")}
            return self.task_loss(theta, {n: fast[n] + delta[n] for n in local}, t, "query"), rows

        zeros = {n: torch.zeros_like(params[n]) for n in local}
        (g, g_post), (loss, rows) = grad_and_value(query_loss, argnums=(0, 1), has_aux=True)(params, zeros)
        pre = {**task, **rows}  # the rows under ``params`` itself
        g_pre = grad(lambda f: self.task_loss(params, f, pre, "query"))({n: params[n] for n in local})
        return loss, g, g_post, g_pre

    def batch_gradients(self, batch: TaskBatch, path: Path = "vmap") -> tuple[Tensor, Params, Params, Params]:
        """:meth:`user_gradients` for every user of ``batch``: ``[B]`` and ``[B, ...]`` tensors."""
        params = {n: p.detach() for n, p in self.params().items()}
        return map_users(lambda task: self.user_gradients(params, task), self.batch_inputs(batch), path, len(batch))

    def factors(self, batch: TaskBatch, path: Path = "vmap") -> tuple[Tensor, Params, dict[str, Tensor]]:
        """``(losses [B], g used for the update [B, ...], raw factors)``; ``g`` is aliased if configured."""
        losses, g, g_post, g_pre = self.batch_gradients(batch, path)
        mean = {n: v.mean(0) for n, v in g.items()}
        if self.config.gradients == "aliased":
            g = alias_first_user(g)
        return losses, g, gradient_factors(losses, g, g_post, g_pre, self._local, mean)

    # -- the scheduler's look-ahead and the weighted update (§3.6) -------------------------------
    def lookahead_loss(self, batch: TaskBatch, x: Tensor, grads: Params, optimizer: torch.optim.Optimizer,
                       path: Path = "vmap") -> Tensor:
        """The scheduler's objective: query loss after a one-step look-ahead on ``Σ_i w_i g_i``.

        Differentiable in the scheduler's parameters. ``lookahead_users="held-out"`` splits the batch into
        even and odd users; each half's weighted step is scored on the other half (mean of both).
        """
        cfg = self.config
        named = {n: p for n, p in self.params().items() if n in grads}
        inputs = self.batch_inputs(batch)
        dev = x.device
        folds = [(torch.arange(len(batch), device=dev),) * 2]
        if cfg.lookahead_users == "held-out":
            even, odd = torch.arange(0, len(batch), 2, device=dev), torch.arange(1, len(batch), 2, device=dev)
            folds = [(even, odd), (odd, even)]
        total = 0.0
        for src, dst in folds:
            w = self.scheduler(x[src])
            step = {n: torch.tensordot(w, g[src], 1) for n, g in grads.items()}
            theta = lookahead_step(optimizer, named, step, rule=cfg.lookahead, clip_value=cfg.clip_value)
            theta = {**{n: p.detach() for n, p in self.params().items()}, **theta}

            def one(task: dict, theta: Params = theta) -> Tensor:
                fast = {}
                task = self.with_rows(theta, task, self._local, cfg.lookahead_steps)
                if cfg.lookahead_steps:
                    fast = adapt(self, theta, {n: theta[n] for n in self._local}, task, steps=cfg.lookahead_steps,
                                 first_order=True)
                return self.task_loss(theta, fast, task, "query")

            total = total + map_users(one, _index(inputs, dst), path, len(dst)).mean()
        return total / len(folds)

    def meta_update(self, batch: TaskBatch, optimizer: torch.optim.Optimizer, path: Path = "vmap") -> Tensor:
        """One GreatMeta batch (module docstring, steps 1–3); returns the per-user query losses."""
        cfg = self.config
        losses, g, raw = self.factors(batch, path)
        x = normalise_factors(raw)
        model_params = self.params()
        scheduler_params = list(self.scheduler.parameters())
        optimizer.zero_grad(set_to_none=True)
        if cfg.weighting == "scheduler" and len(batch) >= 2:
            with torch.enable_grad():
                loss = self.lookahead_loss(batch, x, g, optimizer, path)
                sched_grads = torch.autograd.grad(loss, scheduler_params, allow_unused=True)
            for p, sg in zip(scheduler_params, sched_grads, strict=True):
                p.grad = torch.zeros_like(p) if sg is None else sg
                if cfg.clip_value is not None:
                    p.grad.clamp_(-cfg.clip_value, cfg.clip_value)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            w = self.scheduler(x) if cfg.weighting == "scheduler" else x.new_full((len(batch),), 1 / len(batch))
        for n, v in g.items():
            model_params[n].grad = torch.tensordot(w, v, 1)
            if cfg.clip_value is not None:
                model_params[n].grad.clamp_(-cfg.clip_value, cfg.clip_value)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.last_batch = pd.DataFrame({
            "user_id": batch.user_ids.cpu().numpy(), "weight": w.cpu().numpy(), "f1": raw["f1"].detach().cpu().numpy(),
            "f2_mean": raw["f2"].mean(1).cpu().numpy(), "f3_mean": raw["f3"].mean(1).cpu().numpy()})
        if self.batch_log is not None:
            self.batch_log.append(self.last_batch.assign(batch=len(self.batch_log)))
        return losses.detach()

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """One optimiser, two groups: the meta-model θ at ``global_lr``, the scheduler at ``scheduler_lr``.

        Each step sets the ``.grad`` of one group only, so the other is left alone (Adam and SGD skip
        parameters without gradients); saved and restored with checkpoints like every optimiser.
        """
        cfg = self.config
        groups = [{"params": list(self.model.parameters()), "lr": cfg.global_lr},
                  {"params": list(self.scheduler.parameters()), "lr": cfg.scheduler_lr}]
        if cfg.global_optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.global_lr)
        return torch.optim.Adam(groups, lr=cfg.global_lr)


def _index(inputs: dict, idx: Tensor) -> dict:
    return {k: (_index(v, idx) if isinstance(v, dict) else v[idx]) for k, v in inputs.items()}


# -- imbalance, measured ---------------------------------------------------------------------------

def per_user_meta_gradients(learner: MetaLearner, batch: TaskBatch, *, path: Path = "vmap",
                            names: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Each user's own meta-gradient ``∇_φ L_u`` (``learner.user_objective``), ``[B, ...]`` per tensor.

    Any learner (MAML, MeLU, MAMO with its memories read, GreatMeta); ``names``: which meta-learned
    tensors (default all of ``global_names()``). Independent tensors per user; nothing is modified.
    """
    all_params = {n: p.detach() for n, p in learner.params().items()}
    names = list(names) if names is not None else learner.global_names()
    fixed = {n: v for n, v in all_params.items() if n not in names}
    memories = {k: v.detach() for k, v in learner.memory_state().items()}

    def one(task: dict) -> tuple[Tensor, dict[str, Tensor]]:
        def loss(phi: Params) -> Tensor:
            return learner.user_objective({**fixed, **phi}, memories, task, False)[0]
        g, value = grad_and_value(loss)({n: all_params[n] for n in names})
        return value, g

    return map_users(one, learner.batch_inputs(batch), path, len(batch))


def minority_users(learner: MetaLearner, batch: TaskBatch, *, path: Path = "vmap", chunk: int = 64,
                   names: Sequence[str] | None = None, quantile: float = 0.2) -> pd.DataFrame:
    """A tidy per-user table that says which users are a minority, two ways, at the learner's current weights.

    Columns: ``user``, ``n_ratings`` and ``mean_rating`` (support and query ratings), ``gradient_cosine``
    (cosine of the user's meta-gradient, all ``names`` tensors flattened together, to the mean meta-gradient
    of the users of ``batch``: the abstract's "imbalanced meta-model" is one whose mean gradient points away
    from these users), ``profile_distance`` (:func:`mamo_lite.groups.histogram_distance` of the user's
    support and query ratings from the batch users' mean histogram), and the labels ``minority_gradient``
    (``gradient_cosine`` in the lowest ``quantile``) and ``minority_profile`` (``profile_distance`` in the
    highest ``quantile``), both by :func:`mamo_lite.groups.label_groups`. Two passes of ``chunk`` users
    (memory-bounded). Model-free labels (the taste distance) and per-group metrics: :mod:`mamo_lite.groups`.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    total, norms, dots = None, [], []
    chunks = list(batch.batches(chunk))
    for sub in chunks:  # pass 1: the population's summed meta-gradient and each user's norm
        _, g = per_user_meta_gradients(learner, sub, path=path, names=names)
        flat = torch.cat([v.flatten(1) for v in g.values()], 1).detach()
        total = flat.sum(0) if total is None else total + flat.sum(0)
        norms.append(flat.norm(dim=1))
    mean = total / len(batch)
    for sub in chunks:  # pass 2: each user's dot product with the mean
        _, g = per_user_meta_gradients(learner, sub, path=path, names=names)
        dots.append(torch.cat([v.flatten(1) for v in g.values()], 1).detach() @ mean)
    cosine = (torch.cat(dots) / (torch.cat(norms) * mean.norm()).clamp(min=1e-12)).cpu()

    spec = learner.model.spec
    values = range(round(spec.rating_min), round(spec.rating_max) + 1)
    ratings = batch_ratings(batch)
    basic = ratings.groupby("user", sort=False)["rating"].agg(n_ratings="count", mean_rating="mean")
    users = batch.user_ids.cpu().numpy()
    table = pd.DataFrame({"user": users, "n_ratings": basic["n_ratings"].reindex(users).to_numpy(),
                          "mean_rating": basic["mean_rating"].reindex(users).to_numpy(),
                          "gradient_cosine": cosine.double().numpy()})
    table["profile_distance"] = histogram_distance(ratings, values=values).set_index("user")[
        "histogram_distance"].reindex(users).to_numpy()
    for column, label, minority in (("gradient_cosine", "minority_gradient", "low"),
                                    ("profile_distance", "minority_profile", "high")):
        table[label] = label_groups(table, column, quantile=quantile, minority=minority)["group"].eq("minority")
    return table


# -- the registry's interface (mamo_lite.methods) ---------------------------------------------------

def configs(dataset: str) -> dict[str, Any]:
    """GreatMeta's defaults (GM:GreatMeta.yaml and quickstart; the same on every dataset, module docstring)."""
    return {"model": RecommenderConfig(**NETWORK), "meta": GreatMetaConfig(), "mamo": None}


def build(model: EmbeddingRecommender, configs: dict[str, Any]) -> GreatMetaLearner:
    """The learner on a :class:`FiLMRecommender` built from ``model``'s spec and configuration (``model``
    itself, a plain recommender made by the registry, is not used)."""
    meta = configs["meta"]
    return GreatMetaLearner(FiLMRecommender(model.spec, model.config, meta.film_activation, meta.encoder), meta)
