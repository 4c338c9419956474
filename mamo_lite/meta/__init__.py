"""The functional adaptation engine and the MAML-family methods built on it."""

from mamo_lite.meta.engine import (
    MetaConfig,
    MetaLearner,
    adapt,
    make_optimizer,
    map_users,
    meta_gradient,
    meta_step,
    predict,
    user_predictions,
    user_query_loss,
)
from mamo_lite.meta.methods import METHODS, build_learner, method_configs

__all__ = [
    "METHODS", "MetaConfig", "MetaLearner", "adapt", "build_learner", "make_optimizer", "map_users",
    "meta_gradient", "meta_step", "method_configs", "predict", "user_predictions", "user_query_loss",
]
