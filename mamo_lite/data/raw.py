"""``RawTables``: parsed but unprocessed dataset tables, the input of the cold-start protocol.

Parsers (one per dataset format) and the synthetic generator all produce a ``RawTables``; the
protocol (``mamo_lite.data.protocol``) turns it into tasks. Keeping this boundary explicit is what
lets the synthetic data go through exactly the same pipeline as MovieLens or Book-Crossing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

Release = Literal["complete", "subset", "synthetic", "unverified"]


@dataclass
class RawTables:
    """Parsed tables of one dataset.

    * ``users``: column ``user`` (int id) plus one column per name in ``user_fields`` (raw values;
      strings or ints, missing values already removed or mapped by the parser).
    * ``items``: column ``item`` (int id) plus ``item_categorical`` columns (scalar values) and
      ``item_multi`` columns (each cell a ``tuple[str, ...]``, possibly empty).
    * ``ratings``: columns ``user``, ``item``, ``rating`` (float) and ``order`` (int64: the rating
      time in Unix seconds for MovieLens, the row position in the file for Book-Crossing). The
      protocol sorts each user's ratings by ``(order, original row)``.
    * ``time_based``: whether ``order`` is a Unix timestamp (MovieLens, synthetic) or a file
      position (Book-Crossing); the warm/cold user rule depends on it.
    * ``release``: ``complete`` (the whole official release, verified), ``subset`` (a verified part
      of it, e.g. ../shared/data's ML-1M users 1–2999), ``synthetic`` or ``unverified``.
    * ``files``: provenance of every input file: ``{logical name: {"path", "sha256", "bytes"}}``.
    """

    name: str
    users: pd.DataFrame
    items: pd.DataFrame
    ratings: pd.DataFrame
    user_fields: list[str]
    item_categorical: list[str]
    item_multi: list[str]
    rating_min: float
    rating_max: float
    time_based: bool
    release: Release
    files: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
