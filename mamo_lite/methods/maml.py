"""MAML (Finn et al., ICML 2017) on the embedding recommender: the book's reference meta-learner.

Every parameter group is local: each user starts from the shared initialisation φ, takes local SGD
steps of rate ρ on its support set (MAMO Eq. 11, with θ ← φ), and φ is meta-trained on the query loss
after adaptation (Eq. 12). The engine (:mod:`mamo_lite.meta.engine`) does all of it; this module only
states the defaults: the paper's network (appendix A.3), ρ = 0.01 (the local rate MAMO uses), Adam 1e-3.
"""

from __future__ import annotations

from typing import Any

from mamo_lite.meta.engine import MetaConfig, MetaLearner
from mamo_lite.models.recommender import EmbeddingRecommender, RecommenderConfig

NAME = "maml"


def paper_network(dataset: str) -> RecommenderConfig:
    """The recommender of MAMO's appendix A.3: d_e = 100 (MovieLens), 50 (Book-Crossing); 2 tower layers."""
    return RecommenderConfig(embed_dim=50 if dataset == "book-crossing" else 100, tower_layers=2)


def configs(dataset: str) -> dict[str, Any]:
    """MAML's default configurations on ``dataset``."""
    return {"model": paper_network(dataset),
            "meta": MetaConfig(local_lr=0.01, inner_steps=1, global_optimizer="adam", global_lr=1e-3),
            "mamo": None}


def build(model: EmbeddingRecommender, configs: dict[str, Any]) -> MetaLearner:
    return MetaLearner(model, configs["meta"])
