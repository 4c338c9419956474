"""MAMO: memory-augmented meta-optimisation (Dong et al., KDD 2020, §2.3, Algorithms 1–2).

:class:`MAMOLearner` is a :class:`~mamo_lite.meta.engine.MetaLearner` whose initialisation is
personalised by three memories (:mod:`mamo_lite.methods.memories`), kept as registered buffers so that
``state_dict``, checkpoints and ``.to(device)`` carry them:

* Eq. 3  ``a_u = softmax(cos(p_u, M_P))``
* Eq. 4  ``b_u = a_uᵀ M_U``;  Eqs. 9–10  ``θ_u ← φ_u − τ b_u``, ``θ_i ← φ_i``, ``θ_r ← φ_r``
* Eq. 7  ``M_{u,I} = a_uᵀ M_{U,I}``, the fast weights of Eq. 2, adapted locally with θ (Eq. 11)
* after the batch: Eq. 5 (``M_P``, rate α), Eq. 6 (``M_U`` with the user's gradient, rate β),
  Eq. 8 (``M_{U,I}`` with the adapted ``M_{u,I}``, rate γ) — sequential in batch order, under
  ``torch.no_grad`` on detached values (no autograd history accumulates, unlike the authors' code)
* Eq. 12 — the engine's meta-gradient on ``φ``; memories are not trained by back-propagation.

At test time (Algorithm 2) memories are read, never written: :func:`mamo_lite.meta.engine.predict`
is functional. The authors' code writes ``M_P`` for test users; that behaviour is not offered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import grad

from mamo_lite.data.tasks import TaskBatch
from mamo_lite.meta.engine import MetaConfig, MetaLearner, Params
from mamo_lite.meta.factored import Mixture, dense_weight
from mamo_lite.methods.memories import attention, attentive_write_sequence, personal_bias, read
from mamo_lite.models.recommender import EmbeddingRecommender
from mamo_lite.utils import check_literal_fields, check_range


@dataclass(frozen=True)
class MAMOConfig:
    """MAMO's memory hyper-parameters (appendix A.3; ``K = 3`` per Fig. 5a).

    ``use_bias=False`` removes the ``M_U`` personal bias, ``use_preference=False`` replaces
    ``M_{u,I}`` by an ordinary global layer (the chapter-4 ablations). ``gradient_source`` picks the
    loss whose gradient Eq. 6 writes: ``"query"`` at the adapted weights (the authors' code) or
    ``"support"`` (RecBole-MetaRec's port). ``gradient_params="weights"`` stores only weight
    matrices in ``M_U`` (the authors' code); ``"all"`` adds the biases (the paper: "all the fast
    gradients with the same shape as the parameters in the user embedding layers").
    """

    n_memory: int = 3  # K
    alpha: float = 0.5  # Eq. 5
    beta: float = 0.05  # Eq. 6
    gamma: float = 0.1  # Eq. 8
    tau: float = 0.1  # Eq. 9
    use_bias: bool = True
    use_preference: bool = True
    gradient_source: Literal["query", "support"] = "query"
    gradient_params: Literal["all", "weights"] = "all"
    gradient_init_std: float = 0.05  # the authors' N(0, 0.05²) for M_U
    preference_init: Literal["linear", "normal", "identity"] = "linear"

    def __post_init__(self) -> None:
        check_range(self, "n_memory", 1, integer=True, symbol="K")
        for name in ("alpha", "beta", "gamma"):  # write rates of Eqs. 5, 6, 8
            check_range(self, name, 0.0, 1.0, symbol={"alpha": "α", "beta": "β", "gamma": "γ"}[name])
        check_range(self, "tau", 0.0, symbol="τ")
        check_range(self, "gradient_init_std", 0.0)
        for name in ("use_bias", "use_preference"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"MAMOConfig.{name} must be True or False, got {getattr(self, name)!r}")
        check_literal_fields(self)

    @classmethod
    def for_dataset(cls, dataset: str) -> MAMOConfig:
        """Appendix A.3 defaults: MovieLens α .5, β .05, γ .1, τ .1; Book-Crossing β .1, τ .15."""
        if dataset == "book-crossing":
            return cls(alpha=0.5, beta=0.1, gamma=0.1, tau=0.15)
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MAMOConfig:
        return cls(**d)


def _buffer_name(param: str) -> str:
    return param.replace(".", "__")


class MAMOLearner(MetaLearner):
    """MAMO as a configuration of the engine plus three memories (registered buffers).

    ``fused_memory_write`` (an engine option like ``gather_rows``, default ``False``; not a
    hyper-parameter, so not in :class:`MAMOConfig` or checkpoints): Eq. 6 writes ``M_U`` with each user's
    gradient ``∇_{θ_u} L`` at the adapted weights ``θ̂``. The plain path computes it in :meth:`user_aux` with
    a separate forward and backward pass on detached copies. With the option on (and
    ``gradient_source="query"``, ``use_bias=True``) it is taken from the main pass instead
    (:meth:`~mamo_lite.meta.engine.MetaLearner.aux_taps`): the query loss of Eq. 12 is already evaluated at
    ``θ̂``, and its backward pass already reaches ``θ̂_u`` on its way to ``φ_u`` (through Eq. 9, and
    through Eq. 11 at second order), so the partial derivative w.r.t. a zero added to ``θ̂_u`` is exactly
    the gradient Eq. 6 writes, for first and second order alike. Same quantity, same values to float
    rounding (tests), one forward and backward pass fewer per user. With
    ``gradient_source="support"`` the main pass never evaluates the support loss at ``θ̂`` (its last
    support gradient is taken one step earlier), so the separate pass runs as before. The book's chapters
    run with it off: the plain path stays the reference.
    """

    fused_memory_write: bool = False

    def __init__(self, model: EmbeddingRecommender, config: MetaConfig, mamo: MAMOConfig | None = None) -> None:
        super().__init__(model, config)
        self.mamo_config = mc = mamo or MAMOConfig()
        if "user" not in config.local_groups:
            raise ValueError("MAMO adapts θ_u locally (Eq. 11): MetaConfig.local_groups must include 'user'")
        if mc.use_preference and model.preference is None:
            raise ValueError("MAMO's preference memory needs the recommender's M_{u,I} slot: "
                             "use RecommenderConfig(preference='paper' or 'code'), or MAMOConfig(use_preference=False)")
        K = mc.n_memory
        # M_P: K profile slots of width d_u (Eq. 3, 5)
        self.register_buffer("profile_memory", torch.randn(K, model.user_dim))
        # M_U: K slots shaped like θ_u (Eq. 4, 6)
        self._user_params = [n for n in model.names_in(("user",))
                             if mc.gradient_params == "all" or n.endswith("weight")]
        self.gradient_memory = nn.Module()
        shapes = dict(model.named_parameters())
        for n in self._user_params:
            self.gradient_memory.register_buffer(
                _buffer_name(n), torch.randn(K, *shapes[n].shape) * mc.gradient_init_std)
        # M_{U,I}: K preference matrices (Eq. 7, 8)
        if mc.use_preference:
            w = model.preference.weight
            self.register_buffer("preference_memory", self._init_preference(K, w))
        self._local_init = [n for n in self._local if not (mc.use_preference and n == "preference.weight")]

    @staticmethod
    def _init_preference_slot(w: Tensor, how: str) -> Tensor:
        if how == "identity":
            out, inp = w.shape
            eye = torch.zeros(out, inp)
            eye[torch.arange(out), torch.arange(out) % inp] = 1.0
            return eye
        if how == "normal":  # the authors' randn (≈25× the scale of a default Linear init)
            return torch.randn_like(w)
        slot = torch.empty_like(w)
        nn.init.kaiming_uniform_(slot, a=5**0.5)  # nn.Linear's default init
        return slot

    def _init_preference(self, K: int, w: Tensor) -> Tensor:
        return torch.stack([self._init_preference_slot(w.detach(), self.mamo_config.preference_init)
                            for _ in range(K)])

    # -- which parameters ------------------------------------------------------------------
    def global_names(self) -> list[str]:
        """φ: every parameter except the M_{u,I} slot, which the preference memory supplies."""
        names = super().global_names()
        if self.mamo_config.use_preference:
            names = [n for n in names if n != "preference.weight"]
        return names

    def aux_taps(self) -> dict[str, str]:
        """With ``fused_memory_write``: the ``M_U`` gradients of Eq. 6 (``aux["gradient:<θ_u name>"]``) from
        the main pass; otherwise none (the separate pass of :meth:`user_aux`)."""
        mc = self.mamo_config
        if not (self.fused_memory_write and mc.use_bias and mc.gradient_source == "query"):
            return {}
        return {f"gradient:{n}": n for n in self._user_params}

    def use_fast_paths(self, on: bool = True) -> MAMOLearner:
        """The engine's faster equivalent paths plus ``fused_memory_write`` (see ``MetaLearner.use_fast_paths``)."""
        super().use_fast_paths(on)
        self.fused_memory_write = bool(on)
        return self

    def aux_reads(self) -> list[str] | None:
        """The adapted tensors :meth:`user_aux` reads: ``M_{u,I}`` (Eq. 8), and every fast tensor when Eq. 6's
        gradient is the separate pass (it re-runs the recommender at ``θ̂``)."""
        mc = self.mamo_config
        if mc.use_bias and not self.aux_taps():
            return None
        return ["preference.weight"] if mc.use_preference else []

    # -- memories ----------------------------------------------------------------------------
    def gradient_memory_dict(self) -> dict[str, Tensor]:
        """``M_U`` as ``{parameter name: [K, *shape]}``."""
        return {n: getattr(self.gradient_memory, _buffer_name(n)) for n in self._user_params}

    def memory_state(self) -> dict[str, Tensor]:
        state = {"profile": self.profile_memory}
        state.update({f"gradient:{n}": t for n, t in self.gradient_memory_dict().items()})
        if self.mamo_config.use_preference:
            state["preference"] = self.preference_memory
        return state

    def init_fast(self, params: Params, memories: dict[str, Tensor], task: dict) -> tuple[Params, dict]:
        """Personalised initialisation, Eqs. 3–4, 7, 9–10."""
        return self._initialise(params, memories, task, mixtures=False)

    def init_fast_batch(self, params: Params, memories: dict[str, Tensor], task: dict) -> tuple[Params, dict]:
        """Eqs. 3–4, 7, 9–10 for a batch of users (the batched path): each ``θ_u`` weight matrix is kept as the
        :class:`~mamo_lite.meta.factored.Mixture` ``φ_u − τ Σ_k a_uk M_U[k]``, never as one matrix per user."""
        return self._initialise(params, memories, task, mixtures=True)

    def _initialise(self, params: Params, memories: dict[str, Tensor], task: dict,
                    mixtures: bool) -> tuple[Params, dict]:
        mc = self.mamo_config
        p_u = self.model.user_profile_vector(task["user_x"], params)
        a_u = attention(p_u, memories["profile"])  # Eq. 3
        fast = {n: params[n] for n in self._local_init}  # θ ← φ  (Eq. 10)
        if mc.use_bias:
            slots = {n: memories[f"gradient:{n}"] for n in self._user_params}
            mixed = {n for n in slots if mixtures and params[n].dim() == 2}
            b_u = personal_bias(a_u, {n: s for n, s in slots.items() if n not in mixed})  # Eq. 4
            for n, b in b_u.items():
                fast[n] = params[n] - mc.tau * b  # Eq. 9
            for n in mixed:  # Eqs. 4 and 9 as one mixture of [φ_u, M_U[1..K]] with weights [1, −τ a_u]
                fast[n] = Mixture.of(params[n], -mc.tau * a_u, slots[n])
        if mc.use_preference:  # Eq. 7 (as the mixture of the K slots with weights a_u)
            m = memories["preference"]
            fast["preference.weight"] = Mixture(a_u, m) if mixtures else read(a_u, m)
        return fast, {"attention": a_u, "profile": p_u}

    def user_aux(self, params: Params, fast: Params, context: dict, task: dict) -> dict[str, Tensor]:
        """What the writes need: ``a_u``, ``p_u``, the adapted ``M_{u,I}``, and ``∇_{θ_u} L`` (Eqs. 5, 8, 6).

        The gradient of Eq. 6 is a separate forward and backward pass here, unless :meth:`aux_taps` has the
        engine take it from the main pass (``fused_memory_write``).
        """
        mc = self.mamo_config
        aux = self._read_aux(fast, context)
        if mc.use_bias and not self.aux_taps():
            fixed = {k: v.detach() for k, v in fast.items()}
            consts = {k: v.detach() for k, v in params.items()}
            own = {n: fixed[n] for n in self._user_params}
            g = grad(lambda f: self.task_loss(consts, {**fixed, **f}, task, mc.gradient_source))(own)
            aux.update({f"gradient:{n}": v.detach() for n, v in g.items()})
        return aux

    def user_aux_batch(self, params: Params, adapted: Params, context: dict, task: dict) -> dict | None:
        """:meth:`user_aux` for a batch of users (the batched path) when Eq. 6's gradient comes from the main pass
        (:meth:`aux_taps`): ``a_u``, ``p_u`` and the adapted ``M_{u,I}``, the latter possibly as the factored
        :class:`~mamo_lite.meta.factored.LowRank` ``M_{u,I} − ρ Δᵀ X`` that Eq. 8's write sums without forming it.
        ``None`` (per user under ``vmap``) when the separate gradient pass runs."""
        if self.mamo_config.use_bias and not self.aux_taps():
            return None
        return self._read_aux(adapted, context)

    def _read_aux(self, fast: Params, context: dict) -> dict:
        aux = {"attention": context["attention"].detach(), "profile": context["profile"].detach()}
        if self.mamo_config.use_preference:
            aux["preference"] = dense_weight(fast["preference.weight"]).detach()  # a LowRank stays one
        return aux

    @torch.no_grad()
    def write_memories(self, aux: dict[str, Tensor]) -> None:
        """Eqs. 5, 6, 8 for a batch of users, sequentially in batch order (closed form)."""
        if not aux:
            return
        mc = self.mamo_config
        a = aux["attention"]
        self.profile_memory.copy_(attentive_write_sequence(self.profile_memory, a, aux["profile"], mc.alpha))
        if mc.use_bias:
            for n, slot in self.gradient_memory_dict().items():
                slot.copy_(attentive_write_sequence(slot, a, aux[f"gradient:{n}"], mc.beta))
        if mc.use_preference:
            self.preference_memory.copy_(
                attentive_write_sequence(self.preference_memory, a, aux["preference"], mc.gamma))

    # -- inspection (chapters 3–4) -----------------------------------------------------------
    @torch.no_grad()
    def attention_of(self, batch: TaskBatch) -> Tensor:
        """``a_u`` for every user of ``batch`` (``[B, K]``), read-only."""
        params = {n: p.detach() for n, p in self.params().items()}
        p_u = self.model.user_profile_vector(batch.user_x.to(self.profile_memory.device), params)
        return attention(p_u, self.profile_memory)

    @torch.no_grad()
    def personal_bias_of(self, batch: TaskBatch) -> dict[str, Tensor]:
        """``b_u`` for every user of ``batch`` (``{param: [B, *shape]}``)."""
        return personal_bias(self.attention_of(batch), self.gradient_memory_dict())


# -- the registry's interface (mamo_lite.methods) ---------------------------------------------------

NAME = "mamo"


def configs(dataset: str) -> dict:
    """MAMO's default configurations on ``dataset`` (appendix A.3; λ 0.01 on Book-Crossing, else 0.05)."""
    from mamo_lite.methods.maml import paper_network  # MAMO extends MAML: the same network

    return {"model": paper_network(dataset),
            "meta": MetaConfig(local_groups=("user", "item", "preference", "decision"), local_lr=0.01,
                               inner_steps=1, global_optimizer="sgd",
                               global_lr=0.01 if dataset == "book-crossing" else 0.05),
            "mamo": MAMOConfig.for_dataset(dataset)}


def build(model: EmbeddingRecommender, configs: dict) -> MAMOLearner:
    return MAMOLearner(model, configs["meta"], configs["mamo"])
