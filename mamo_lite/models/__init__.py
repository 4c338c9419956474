"""The embedding recommender (MAMO Eqs. 1–2); the non-meta baselines are in :mod:`mamo_lite.methods.baselines`."""

from mamo_lite.models.recommender import (
    GROUPS,
    EmbeddingRecommender,
    RecommenderConfig,
    prediction_from_output,
    rating_loss,
)

__all__ = ["GROUPS", "EmbeddingRecommender", "RecommenderConfig", "prediction_from_output", "rating_loss"]
