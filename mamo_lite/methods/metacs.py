"""MetaCS-DNN (Bharadhwaj, IJCNN 2019): MAML over MeLU's network, every parameter local.

It extends :mod:`mamo_lite.methods.melu` (same network) with every group adapted locally and plain SGD
as the global optimiser at 0.4, the rate MAMO's appendix A.2.2 gives. With raw 1–5 ratings and a
zero-initialised output that rate diverges on MovieLens (the training loop reports it as diverged).
"""

from __future__ import annotations

from typing import Any

from mamo_lite.meta.engine import MetaConfig, MetaLearner
from mamo_lite.methods import melu
from mamo_lite.models.recommender import EmbeddingRecommender, RecommenderConfig

NAME = "metacs-dnn"


def configs(dataset: str) -> dict[str, Any]:
    """MetaCS-DNN's default configurations (the same on every dataset)."""
    return {"model": RecommenderConfig(**melu.NETWORK),
            "meta": MetaConfig(local_lr=5e-6, inner_steps=1, first_order=True, global_optimizer="sgd",
                               global_lr=0.4, users_per_batch=32),
            "mamo": None}


def build(model: EmbeddingRecommender, configs: dict[str, Any]) -> MetaLearner:
    return MetaLearner(model, configs["meta"])
