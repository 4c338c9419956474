"""MetaCS-DNN (Bharadhwaj, IJCNN 2019): MAML over MeLU's network, every parameter local.

It extends :mod:`mamo_lite.methods.melu` (same network) with every group adapted locally and plain SGD
as the global optimiser. MAMO's appendix A.2.2 gives the rate 0.4 (:data:`PUBLISHED`); with raw 1–5
ratings and a zero-initialised output it diverges on MovieLens-1M and Book-Crossing (the training
loop reports it as diverged), so the default is 0.05, chosen on validation users from {0.4, 0.05,
0.01} on both datasets (chapter 5, ``results/table1/<dataset>/metacs-dnn-lambda-validated/grid.json``).
``build_learner("metacs-dnn", ..., overrides=metacs.PUBLISHED)`` restores the published rate.
"""

from __future__ import annotations

from typing import Any

from mamo_lite.meta.engine import MetaConfig, MetaLearner
from mamo_lite.methods import melu
from mamo_lite.models.recommender import EmbeddingRecommender, RecommenderConfig

NAME = "metacs-dnn"

PUBLISHED: dict[str, Any] = {"global_lr": 0.4}
"""MAMO appendix A.2.2's global SGD rate for MetaCS-DNN, as an override."""


def configs(dataset: str) -> dict[str, Any]:
    """MetaCS-DNN's default configurations (the same on every dataset; λ validated, see the module doc)."""
    return {"model": RecommenderConfig(**melu.NETWORK),
            "meta": MetaConfig(local_lr=5e-6, inner_steps=1, first_order=True, global_optimizer="sgd",
                               global_lr=0.05, users_per_batch=32),
            "mamo": None}


def build(model: EmbeddingRecommender, configs: dict[str, Any]) -> MetaLearner:
    return MetaLearner(model, configs["meta"])
