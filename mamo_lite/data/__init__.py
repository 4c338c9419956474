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


def available(name: str, data_dir=None) -> bool:
    """Whether dataset ``name``'s raw files are on this machine (looked up, never downloaded).

    See :func:`mamo_lite.data.registry.available`; imported on first use like the rest of the registry.
    """
    from .registry import available as _available

    return _available(name, data_dir)


__all__ = ["SCENARIOS", "ColdStartData", "FeatureSpec", "Field", "Protocol", "TaskBatch", "available", "load"]
