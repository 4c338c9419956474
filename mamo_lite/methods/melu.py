"""MeLU (Lee et al., KDD 2019): MAML with only the decision layers local, on MeLU's own network.

MeLU's network embeds the profile fields (32 values each), concatenates user and item embeddings and
scores them with two ReLU layers of 64; the output starts at zero, as in its code. Locally only the
decision layers adapt (rate 5e-6); globally Adam 5e-5 over batches of 32 users: the released code's
defaults, which MAMO's Table 1 used. The released code is first order by accident (hoyeoplee/MeLU#9),
so the default is ``first_order=True``; ``first_order=False`` gives the true second-order gradient.
"""

from __future__ import annotations

from typing import Any

from mamo_lite.meta.engine import MetaConfig, MetaLearner
from mamo_lite.models.recommender import EmbeddingRecommender, RecommenderConfig

NAME = "melu"

NETWORK = {"embed_dim": 32, "tower_layers": 0, "preference": "none", "decision_hidden": (64, 64),
           "activation": "relu", "output_bias_init": "zero"}


def configs(dataset: str) -> dict[str, Any]:
    """MeLU's default configurations (the same on every dataset)."""
    return {"model": RecommenderConfig(**NETWORK),
            "meta": MetaConfig(local_groups=("decision",), local_lr=5e-6, inner_steps=1, first_order=True,
                               global_optimizer="adam", global_lr=5e-5, users_per_batch=32),
            "mamo": None}


def build(model: EmbeddingRecommender, configs: dict[str, Any]) -> MetaLearner:
    return MetaLearner(model, configs["meta"])
