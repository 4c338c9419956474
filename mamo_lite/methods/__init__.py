"""The methods of the book, one module per paper, and the registry every caller uses.

=============  ==========================================  ===========================================
method         local (adapted per user)                     global update
=============  ==========================================  ===========================================
``maml``       every parameter (θ ← φ)                     Adam, mean over users
``melu``       decision layers only (Lee et al. 2019)      Adam 5e-5, 32 users (MeLU's code defaults)
``metacs-dnn`` every parameter, MeLU's network             SGD 0.4 (MAMO appendix A.2.2)
``mamo``       θ_u, θ_i, θ_r and ``M_{u,I}``; θ_u starts   SGD λ (Eq. 12); memories written by
               at ``φ_u − τ b_u`` (Eqs. 3–10)              Eqs. 5, 6, 8
``s2meta``     interaction MLP (Du et al. 2019), moved by  Adam in three groups (θ₀ + towers 1e-4,
               learned LSTM controllers for 4–20 steps     update 1e-4, stop 5e-5), REINFORCE for
               (learned stop)                              the stop controller, clip ±0.25
``greatmeta``  FiLM predictor and encoder ψ (Du et al.     Adam 5e-5 on Σ_i w_i g_i; w from a
               2025), conditioned on the support rows      softmax scheduler over 3 gradient factors,
                                                           trained by a one-step look-ahead
=============  ==========================================  ===========================================

Modules: :mod:`~mamo_lite.methods.maml`, :mod:`~mamo_lite.methods.melu`,
:mod:`~mamo_lite.methods.metacs` (MetaCS-DNN), :mod:`~mamo_lite.methods.mamo` with
:mod:`~mamo_lite.methods.memories` (Eqs. 3–8), :mod:`~mamo_lite.methods.s2meta` (s²Meta),
:mod:`~mamo_lite.methods.greatmeta` (GreatMeta), and
:mod:`~mamo_lite.methods.baselines` (the non-meta baselines). Each meta-learning module states its
defaults (``configs(dataset)``) and builds its learner (``build(model, configs)``); all of them run on
the one engine, :mod:`mamo_lite.meta.engine`, which imports none of them.

``method_configs(method, dataset)`` returns the default configurations; any field can be
overridden by name (``build_learner(..., overrides={"local_lr": 0.05})``), which is what the CLI's
``--set`` does. The MeLU and MetaCS-DNN defaults are the settings MAMO's Table 1 used (MeLU's
published code defaults; first order, because the released code computes no second-order term).
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

from mamo_lite.data.tasks import FeatureSpec
from mamo_lite.meta.engine import MetaLearner
from mamo_lite.methods import greatmeta, maml, mamo, melu, metacs, s2meta
from mamo_lite.models.recommender import EmbeddingRecommender

__all__ = ["METHODS", "build_learner", "learner_configs", "method_configs"]

_MODULES: dict[str, ModuleType] = {m.NAME: m for m in (maml, melu, metacs, mamo, s2meta, greatmeta)}
METHODS: tuple[str, ...] = tuple(_MODULES)


def _module(method: str) -> ModuleType:
    try:
        return _MODULES[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}") from None


def method_configs(method: str, dataset: str = "movielens-1m") -> dict[str, Any]:
    """Default ``{"model": RecommenderConfig, "meta": MetaConfig, "mamo": MAMOConfig | None}``."""
    return _module(method).configs(dataset)


def _apply_overrides(configs: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    configs = dict(configs)
    left = dict(overrides)
    for key in ("model", "meta", "mamo"):
        cfg = configs[key]
        if cfg is None:
            continue
        names = {f.name for f in dataclasses.fields(cfg)}
        mine = {k: left.pop(k) for k in list(left) if k in names}
        if mine:
            configs[key] = dataclasses.replace(cfg, **mine)
    if left:
        known = sorted({f.name for c in configs.values() if c is not None for f in dataclasses.fields(c)})
        raise ValueError(f"unknown hyper-parameter(s) {sorted(left)}; known: {', '.join(known)}")
    return configs


def build_learner(method: str, spec: FeatureSpec, dataset: str = "movielens-1m", *,
                  overrides: dict[str, Any] | None = None, configs: dict[str, Any] | None = None) -> MetaLearner:
    """Build a ready-to-train learner for ``method`` on a dataset with feature schema ``spec``."""
    module = _module(method)
    configs = configs if configs is not None else module.configs(dataset)
    configs = _apply_overrides(configs, overrides or {})
    return module.build(EmbeddingRecommender(spec, configs["model"]), configs)


def learner_configs(learner: MetaLearner) -> dict[str, Any]:
    """The configurations a learner was built with (for checkpoints)."""
    return {"model": learner.model.config, "meta": learner.config, "mamo": getattr(learner, "mamo_config", None)}
