"""Chapter 1, data preparation: registry, parsers, MAMO's cold-start protocol and padded tasks.

    >>> from mamo_lite.data import load
    >>> data = load("synthetic")            # or "movielens-1m", "movielens-100k", "book-crossing"
    >>> data.summary()                      # counts from the files to the tasks, release first
    >>> batch = data.tasks("train")         # a TaskBatch: user profiles, support and query sets

The registry (download + verify) and the synthetic generator are imported on first use.
"""

from .dataset import ColdStartData, load
from .protocol import Protocol
from .tasks import SCENARIOS, FeatureSpec, Field, TaskBatch

__all__ = ["SCENARIOS", "ColdStartData", "FeatureSpec", "Field", "Protocol", "TaskBatch", "load"]
