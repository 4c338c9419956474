"""The methods of the book as configurations of one engine.

=============  ==========================================  ===========================================
method         local (adapted per user)                     global update
=============  ==========================================  ===========================================
``maml``       every parameter (θ ← φ)                     Adam, mean over users
``melu``       decision layers only (Lee et al. 2019)      Adam 5e-5, 32 users (MeLU's code defaults)
``metacs-dnn`` every parameter, MeLU's network             SGD 0.4 (MAMO appendix A.2.2)
``mamo``       θ_u, θ_i, θ_r and ``M_{u,I}``; θ_u starts   SGD λ (Eq. 12); memories written by
               at ``φ_u − τ b_u`` (Eqs. 3–10)              Eqs. 5, 6, 8
=============  ==========================================  ===========================================

``method_configs(method, dataset)`` returns the default configurations; any field can be
overridden by name (``build_learner(..., overrides={"local_lr": 0.05})``), which is what the CLI's
``--set`` does. The MeLU and MetaCS-DNN defaults are the settings MAMO's Table 1 used (MeLU's
published code defaults; first order, because the released code computes no second-order term).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mamo_lite.data.tasks import FeatureSpec
from mamo_lite.meta.engine import MetaConfig, MetaLearner
from mamo_lite.models.recommender import EmbeddingRecommender, RecommenderConfig

METHODS: tuple[str, ...] = ("maml", "melu", "metacs-dnn", "mamo")

_MELU_NET = {"embed_dim": 32, "tower_layers": 0, "preference": "none", "decision_hidden": (64, 64),
             "activation": "relu", "output_bias_init": "zero"}


def _paper_net(dataset: str) -> dict:
    # appendix A.3: d_e = 100 (MovieLens), 50 (Book-Crossing); 2 layers; LeakyReLU
    return {"embed_dim": 50 if dataset == "book-crossing" else 100, "tower_layers": 2}


def method_configs(method: str, dataset: str = "movielens-1m") -> dict[str, Any]:
    """Default ``{"model": RecommenderConfig, "meta": MetaConfig, "mamo": MAMOConfig | None}``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    bx = dataset == "book-crossing"
    if method == "maml":
        return {"model": RecommenderConfig(**_paper_net(dataset)),
                "meta": MetaConfig(local_lr=0.01, inner_steps=1, global_optimizer="adam", global_lr=1e-3),
                "mamo": None}
    if method == "melu":
        return {"model": RecommenderConfig(**_MELU_NET),
                "meta": MetaConfig(local_groups=("decision",), local_lr=5e-6, inner_steps=1, first_order=True,
                                   global_optimizer="adam", global_lr=5e-5, users_per_batch=32),
                "mamo": None}
    if method == "metacs-dnn":
        return {"model": RecommenderConfig(**_MELU_NET),
                "meta": MetaConfig(local_lr=5e-6, inner_steps=1, first_order=True, global_optimizer="sgd",
                                   global_lr=0.4, users_per_batch=32),
                "mamo": None}
    from mamo_lite.mamo import MAMOConfig

    return {"model": RecommenderConfig(**_paper_net(dataset)),
            "meta": MetaConfig(local_groups=("user", "item", "preference", "decision"), local_lr=0.01,
                               inner_steps=1, global_optimizer="sgd", global_lr=0.01 if bx else 0.05),
            "mamo": MAMOConfig.for_dataset(dataset)}


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
    configs = configs if configs is not None else method_configs(method, dataset)
    configs = _apply_overrides(configs, overrides or {})
    model = EmbeddingRecommender(spec, configs["model"])
    if method == "mamo":
        from mamo_lite.mamo import MAMOLearner

        return MAMOLearner(model, configs["meta"], configs["mamo"])
    return MetaLearner(model, configs["meta"])


def learner_configs(learner: MetaLearner) -> dict[str, Any]:
    """The configurations a learner was built with (for checkpoints)."""
    return {"model": learner.model.config, "meta": learner.config, "mamo": getattr(learner, "mamo_config", None)}
