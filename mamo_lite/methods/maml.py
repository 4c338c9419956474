"""MAML (Finn et al., ICML 2017) on the embedding recommender: the book's reference meta-learner.

Every parameter group is local: each user starts from the shared initialisation φ, takes local SGD
steps of rate ρ on its support set (MAMO Eq. 11, with θ ← φ), and φ is meta-trained on the query loss
after adaptation (Eq. 12). The engine (:mod:`mamo_lite.meta.engine`) does all of it; this module only
states the defaults: the paper's network (appendix A.3), Adam 1e-3, and a local rate ρ chosen on
validation users where the book has done so (:data:`VALIDATED_LOCAL_LR`: 0.003 on MovieLens-1M, 0.001
on Book-Crossing, from ``results/table1/<dataset>/maml/grid.json``), because the paper's ρ = 0.01
(the local rate MAMO uses, :data:`PUBLISHED`) diverges on MovieLens-1M (chapter 2). Other datasets
keep ρ = 0.01. ``build_learner("maml", ..., overrides=maml.PUBLISHED)`` restores the paper's value.
"""

from __future__ import annotations

from typing import Any

from mamo_lite.meta.engine import MetaConfig, MetaLearner
from mamo_lite.models.recommender import EmbeddingRecommender, RecommenderConfig

NAME = "maml"

PUBLISHED: dict[str, Any] = {"local_lr": 0.01}
"""The paper's local rate (MAMO appendix A.3's ρ), as an override."""

VALIDATED_LOCAL_LR: dict[str, float] = {"movielens-1m": 0.003, "book-crossing": 0.001}
"""ρ chosen on validation users from {0.01, 0.003, 0.001} (chapter 5, ``reproduce table1``'s MAML grid)."""


def paper_network(dataset: str) -> RecommenderConfig:
    """The recommender of MAMO's appendix A.3: d_e = 100 (MovieLens), 50 (Book-Crossing); 2 tower layers."""
    return RecommenderConfig(embed_dim=50 if dataset == "book-crossing" else 100, tower_layers=2)


def configs(dataset: str) -> dict[str, Any]:
    """MAML's default configurations on ``dataset``."""
    return {"model": paper_network(dataset),
            "meta": MetaConfig(local_lr=VALIDATED_LOCAL_LR.get(dataset, PUBLISHED["local_lr"]), inner_steps=1,
                               global_optimizer="adam", global_lr=1e-3),
            "mamo": None}


def build(model: EmbeddingRecommender, configs: dict[str, Any]) -> MetaLearner:
    return MetaLearner(model, configs["meta"])
