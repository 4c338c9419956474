"""The functional adaptation engine (:mod:`mamo_lite.meta.engine`); it imports no method.

The methods built on it, and the registry (``build_learner``, ``method_configs``, ``METHODS``), live
in :mod:`mamo_lite.methods`.
"""

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

__all__ = [
    "MetaConfig", "MetaLearner", "adapt", "make_optimizer", "map_users", "meta_gradient", "meta_step",
    "predict", "user_predictions", "user_query_loss",
]
