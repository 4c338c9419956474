"""MAMO's cold-start protocol (§3.1.3–3.1.4, appendix A.1): every rule is a :class:`Protocol` field.

1. **Trim** (§3.1.3). Sort each user's ratings by ``order`` (time for MovieLens, file position for
   Book-Crossing; ties by file row). Drop users with fewer than ``min_ratings`` ratings; keep the
   first ``n_keep``. The first ``n_support`` kept ratings are the support set, the last ``n_query``
   the query set ("new items" for the user).
2. **Warm/cold users** (§3.1.4), ``user_split``:

   * ``"date"``: cold iff the user's first rating is on or after ``split_time`` (the paper's
     2000-12-03, read as 2000-12-03T00:00:00 UTC). The authors' code instead takes the 80th-percentile
     rating time of the *full* ML-1M, 2000-12-03 01:52:18 in their local time (AEDT, i.e.
     2000-12-02 14:52:18 UTC; reference-code notes §1.2). The ~9 h between the two matters: on ML-1M's
     users 1–2999 the paper's date gives 622 cold users, ``split_time="2000-12-03T01:52:18+11:00"``
     the code's 640 (634 of them with ids ≤ 1000).
   * ``"quantile"``: as the code does, but recomputed on the data at hand: the rating time at
     position ``round(split_quantile · N)`` of all N parsed ratings sorted by time. On a subset of
     ML-1M this is another date, and ML-100K (1997-09 to 1998-04) needs it.
   * ``"id"`` (Book-Crossing, no times): the last ``cold_user_fraction`` of the kept users, sorted by
     numeric id, are cold (the paper assumes ids follow registration order).
3. **Warm/cold items**: count each item's ratings in the *trimmed* table (``n_keep`` per kept user);
   cold iff the count is ``<= item_cold_max``. MovieLens default 10 follows the authors' code
   ("≤ 10"); the paper's text says "< 10", i.e. ``item_cold_max=9``. Book-Crossing: warm iff more than
   5 ratings, so 5.
4. **Scenarios**: each rating is labelled ``2 * user_cold + item_cold``, an index into ``SCENARIOS``
   (W-W, W-C, C-W, C-C).
5. **Split**: a seeded permutation of the kept users; the first ``round(test_fraction · n)`` are test
   users, then ``round(val_fraction · n_train)`` of the rest are validation users. The split is over
   users, not scenarios: cold users and items occur in training too, as in MAMO.
6. **Features**: every profile field is encoded to indices, 0 reserved for unknown/padding;
   vocabularies are the sorted values present among the kept users/items; multi-valued fields are
   padded with 0 to the longest list among the kept items.

``None`` in ``user_split`` / ``item_cold_max`` means "the dataset's default" (:data:`DATASET_DEFAULTS`);
:meth:`Protocol.resolved` fills them in.

**GreatMeta's protocol** (:class:`GreatMetaProtocol`, ``load(name, protocol="greatmeta")``; the
authors' code, reference-code notes §3.2) is the other named protocol (:data:`PROTOCOLS`). It tests
*user* cold-start only: users with ``min_ratings`` … ``max_ratings`` ratings (40–200), split
70/10/20 into train/val/test users; each user's query set is ``n_query`` (10) random ratings, the
support set all the others, so support sizes vary from user to user (30–190) and the task batches
are padded and masked. :func:`apply_greatmeta_protocol` documents each rule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from .errors import DataError
from .raw import RawTables
from .tasks import SCENARIOS, FeatureSpec, Field

__all__ = [
    "DATASET_DEFAULTS",
    "PROTOCOLS",
    "AnyProtocol",
    "GreatMetaProtocol",
    "Protocol",
    "ProtocolOutput",
    "apply_greatmeta_protocol",
    "apply_protocol",
    "count_items",
    "encode_categorical",
    "encode_multi",
    "label_users",
    "make_protocol",
    "protocol_from_dict",
    "split_users",
    "split_users_by_ratio",
    "trim",
    "user_split_time",
]

UserSplit = Literal["date", "quantile", "id"]

DATASET_DEFAULTS: dict[str, dict] = {
    "movielens-1m": {"user_split": "date", "item_cold_max": 10},
    "movielens-100k": {"user_split": "quantile", "item_cold_max": 10},
    "book-crossing": {"user_split": "id", "item_cold_max": 5},
    "synthetic": {"user_split": "date", "item_cold_max": 10},
}
"""Per-dataset defaults of the rules the paper states per dataset. Synthetic data follows the
ML-1M rules (its generator plants cold users exactly at the paper's split date)."""


def _int(name: str, value, lo: int, note: str = "", owner: object = None) -> None:
    cls = "Protocol" if owner is None else type(owner).__name__
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        # one exception type for every invalid Protocol parameter
        raise ValueError(f"{cls}.{name} must be an integer, got {value!r}")  # noqa: TRY004
    if value < lo:
        raise ValueError(f"{cls}.{name} must be >= {lo}{note}, got {value}")


def _fraction(name: str, value, *, allow_zero: bool = False) -> None:
    lo = "[0" if allow_zero else "(0"
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not ((0 <= value if allow_zero else 0 < value) and value < 1):
        raise ValueError(f"Protocol.{name} must be a fraction in {lo}, 1), got {value!r}")


@dataclass(frozen=True)
class Protocol:
    """The cold-start protocol's parameters (defaults: MAMO §3.1). Invalid values raise ``ValueError``."""

    min_ratings: int = 20
    """users with fewer ratings are dropped (§3.1.3; every ML-1M user has ≥ 20)."""
    n_keep: int = 20
    """ratings kept per user, the first ones in ``order``."""
    n_support: int = 15
    """support-set size: the first ``n_support`` kept ratings."""
    n_query: int = 5
    """query-set size: the last ``n_query`` kept ratings."""
    user_split: UserSplit | None = None
    """warm/cold user rule: ``"date"``, ``"quantile"`` or ``"id"``; None → dataset default."""
    split_time: str = "2000-12-03"
    """``"date"`` rule: users whose first rating is at or after this instant are cold (naive → UTC)."""
    split_quantile: float = 0.8
    """``"quantile"`` rule: the quantile of all rating times used as the split time."""
    cold_user_fraction: float = 0.1
    """``"id"`` rule: fraction of kept users (highest ids) that are cold."""
    item_cold_max: int | None = None
    """items with at most this many ratings in the trimmed table are cold; None → dataset default."""
    test_fraction: float = 0.2
    """fraction of kept users held out for test (§3.1.3: 80:20)."""
    val_fraction: float = 0.1
    """fraction of the training users held out for validation (0 allowed: no validation users)."""

    def __post_init__(self) -> None:
        _int("min_ratings", self.min_ratings, 1)
        _int("n_support", self.n_support, 1)
        _int("n_query", self.n_query, 1)
        _int("n_keep", self.n_keep, 2)
        if self.n_support + self.n_query > self.n_keep:
            raise ValueError(
                f"Protocol.n_support + Protocol.n_query must be <= n_keep: got {self.n_support} + "
                f"{self.n_query} = {self.n_support + self.n_query} > {self.n_keep}")
        if self.n_keep > self.min_ratings:
            raise ValueError(f"Protocol.n_keep must be <= min_ratings (every kept user needs n_keep "
                             f"ratings): got n_keep={self.n_keep} > min_ratings={self.min_ratings}")
        if self.user_split is not None and self.user_split not in ("date", "quantile", "id"):
            raise ValueError(f"Protocol.user_split must be 'date', 'quantile', 'id' or None, "
                             f"got {self.user_split!r}")
        self.split_time_unix  # noqa: B018 - validates split_time
        _fraction("split_quantile", self.split_quantile)
        _fraction("cold_user_fraction", self.cold_user_fraction)
        if self.item_cold_max is not None:
            _int("item_cold_max", self.item_cold_max, 0, " (a rating count; 0 makes every item warm)")
        _fraction("test_fraction", self.test_fraction)
        _fraction("val_fraction", self.val_fraction, allow_zero=True)

    @property
    def split_time_unix(self) -> int:
        """``split_time`` in Unix seconds (a naive date/time is read as UTC)."""
        try:
            if not isinstance(self.split_time, str):
                raise TypeError
            ts = pd.Timestamp(self.split_time)
        except (ValueError, TypeError) as e:
            raise ValueError(f"Protocol.split_time must be a date such as '2000-12-03' or "
                             f"'2000-12-03T01:52:18+11:00', got {self.split_time!r}") from e
        if ts is pd.NaT:
            raise ValueError(f"Protocol.split_time must be a date, got {self.split_time!r}")
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        return int(ts.value // 10**9)

    def resolved(self, dataset: str, *, time_based: bool = True) -> Protocol:
        """Fill the dataset defaults in and check the rules fit the data (no times → ``"id"`` only)."""
        fallback = DATASET_DEFAULTS["synthetic" if time_based else "book-crossing"]
        defaults = DATASET_DEFAULTS.get(dataset, fallback)
        p = replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        if not time_based and p.user_split != "id":
            raise ValueError(f"Protocol.user_split={p.user_split!r} needs rating times, but {dataset} has "
                             f"none (its order is the file position); use user_split='id'")
        return p

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Protocol:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown Protocol parameter(s) {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)


@dataclass(frozen=True)
class GreatMetaProtocol:
    """GreatMeta's own protocol (Du et al. 2025, as its code runs it; reference-code notes §3.2).

    User cold-start only: the train, validation and test users are disjoint, and there are no
    warm/cold users or items to tell apart (every kept user is labelled cold, every item warm, so
    every query rating is a C-W rating). Rules, each a field (defaults: the authors' MovieLens
    configuration, ``GreatMeta.yaml``):

    1. keep the users with ``min_ratings`` … ``max_ratings`` ratings, both ends included (RecBole's
       ``user_inter_num_interval: [40, 200]``; on ML-100K 497 users stay, as in the authors' run);
    2. split the kept users ``split_ratios`` = (train, val, test) at random (seeded), RecBole's way:
       ``floor(ratio · n)`` validation and test users, the rest train (ML-100K: 349/49/99, the
       authors' 349 training users);
    3. each user's query set is ``n_query`` of their ratings drawn at random (seeded), the support set
       all the others: 30–190 support ratings under the defaults, far from few-shot. Drawn once, so
       every epoch sees the same split, as in the code.

    Ratings stay on the dataset's own scale (1–5 MovieLens, 1–10 Book-Crossing). The authors' code
    min-max scales ML-100K's ratings to [0, 1], ``(r − 1) / 4`` (RecBole's ``normalize_all`` for
    ml-100k), so its ML-100K MAE and RMSE are a quarter of ours for the same predictions; ML-1M and
    Book-Crossing stay raw there too. The authors' Book-Crossing configuration
    (``GreatMeta-BK.yaml``, which does not run as released) asks for
    ``GreatMetaProtocol(min_ratings=13, max_ratings=100, split_ratios=(0.8, 0.1, 0.1))``.
    Invalid values raise ``ValueError``.
    """

    name: ClassVar[str] = "greatmeta"

    min_ratings: int = 40
    """users with fewer ratings are dropped."""
    max_ratings: int | None = 200
    """users with more ratings are dropped (``None``: no upper bound)."""
    n_query: int = 10
    """query-set size: this many random ratings per user; the support set is the rest."""
    split_ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """fractions of the kept users for train, validation and test (summing to 1; validation may be 0)."""

    def __post_init__(self) -> None:
        _int("min_ratings", self.min_ratings, 2, " (a user needs a support and a query rating)", owner=self)
        _int("n_query", self.n_query, 1, owner=self)
        if self.n_query >= self.min_ratings:
            raise ValueError(f"GreatMetaProtocol.n_query must be < min_ratings (every kept user needs at least "
                             f"one support rating): got n_query={self.n_query} >= min_ratings={self.min_ratings}")
        if self.max_ratings is not None:
            _int("max_ratings", self.max_ratings, self.min_ratings, " (= min_ratings), or None for no bound",
                 owner=self)
        ratios = self.split_ratios
        if isinstance(ratios, list):
            ratios = tuple(ratios)
            object.__setattr__(self, "split_ratios", ratios)  # a list from JSON or a dict
        ok = (isinstance(ratios, tuple) and len(ratios) == 3
              and all(isinstance(r, (int, float, np.floating)) and not isinstance(r, bool) and math.isfinite(r)
                      for r in ratios))
        if not ok or ratios[0] <= 0 or ratios[1] < 0 or ratios[2] <= 0 or abs(sum(ratios) - 1) > 1e-9:
            raise ValueError(f"GreatMetaProtocol.split_ratios must be three fractions (train > 0, val >= 0, "
                             f"test > 0) summing to 1, e.g. (0.7, 0.1, 0.2); got {self.split_ratios!r}")

    def resolved(self, dataset: str, *, time_based: bool = True) -> GreatMetaProtocol:
        """Itself: no rule depends on the dataset (the signature is :meth:`Protocol.resolved`'s)."""
        return self

    def to_dict(self) -> dict:
        """The fields and ``"kind": "greatmeta"`` (what :func:`protocol_from_dict` dispatches on)."""
        return {"kind": self.name, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> GreatMetaProtocol:
        d = {k: v for k, v in d.items() if k != "kind"}
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown GreatMetaProtocol parameter(s) {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)


AnyProtocol = Protocol | GreatMetaProtocol
"""Either protocol: what :func:`~mamo_lite.data.dataset.load` and :class:`~mamo_lite.data.dataset.ColdStartData`
accept."""

PROTOCOLS: dict[str, type[Protocol | GreatMetaProtocol]] = {"mamo": Protocol, "greatmeta": GreatMetaProtocol}
"""The named protocols: ``"mamo"`` (:class:`Protocol`, the default) and ``"greatmeta"``
(:class:`GreatMetaProtocol`). ``load(name, protocol="greatmeta")`` uses a name's defaults."""


def protocol_from_dict(d: dict) -> AnyProtocol:
    """The protocol a ``to_dict()`` describes: ``"kind": "greatmeta"`` → :class:`GreatMetaProtocol`,
    no ``kind`` (or ``"mamo"``) → :class:`Protocol`."""
    kind = d.get("kind", "mamo")
    if kind not in PROTOCOLS:
        raise ValueError(f"unknown protocol kind {kind!r}; choose one of {sorted(PROTOCOLS)}")
    rest = {k: v for k, v in d.items() if k != "kind"}
    return PROTOCOLS[kind].from_dict(rest)


def make_protocol(protocol: AnyProtocol | dict | str | None) -> AnyProtocol:
    """A protocol from what a caller may pass: ``None`` → ``Protocol()`` (MAMO's), a name of
    :data:`PROTOCOLS` → its defaults, a dict → :func:`protocol_from_dict`, a protocol → itself."""
    if protocol is None:
        return Protocol()
    if isinstance(protocol, Protocol | GreatMetaProtocol):
        return protocol
    if isinstance(protocol, str):
        key = protocol.strip().lower()
        if key not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)} "
                             f"(or pass a Protocol / GreatMetaProtocol)")
        return PROTOCOLS[key]()
    if isinstance(protocol, dict):
        return protocol_from_dict(protocol)
    raise ValueError(f"protocol must be None, a name {sorted(PROTOCOLS)}, a dict or a Protocol / "
                     f"GreatMetaProtocol, got {type(protocol).__name__}")



# ------------------------------------------------------------------------------------------ rules

def trim(ratings: pd.DataFrame, protocol: Protocol) -> pd.DataFrame:
    """Sort by (user, order, file row); drop users with < ``min_ratings``; keep the first ``n_keep``.

    Returns the trimmed table with a ``position`` column (0 … n_keep-1 within each user).
    """
    user = ratings["user"].to_numpy()
    idx = np.lexsort((np.arange(len(ratings)), ratings["order"].to_numpy(), user))
    r = ratings.iloc[idx].reset_index(drop=True)
    position = r.groupby("user", sort=False).cumcount().to_numpy()
    size = r.groupby("user", sort=False)["user"].transform("size").to_numpy()
    keep = (size >= protocol.min_ratings) & (position < protocol.n_keep)
    r = r[keep].reset_index(drop=True)
    r["position"] = position[keep].astype(np.int64)
    return r


def user_split_time(ratings: pd.DataFrame, protocol: Protocol) -> int | None:
    """The warm/cold split time in Unix seconds (``None`` for the ``"id"`` rule).

    ``"quantile"`` mirrors the authors' code: all ratings sorted by time, the one at position
    ``round(q · N)``.
    """
    if protocol.user_split == "date":
        return protocol.split_time_unix
    if protocol.user_split == "quantile":
        t = np.sort(ratings["order"].to_numpy())
        return int(t[min(round(protocol.split_quantile * len(t)), len(t) - 1)])
    return None


def label_users(first: pd.Series, protocol: Protocol, split_time: int | None) -> pd.Series:
    """``cold`` (bool) per kept user from ``first`` (each user's first ``order``, indexed by sorted id)."""
    if protocol.user_split == "id":
        n_cold = round(protocol.cold_user_fraction * len(first))
        cold = np.zeros(len(first), dtype=bool)
        cold[len(first) - n_cold:] = True
        return pd.Series(cold, index=first.index, name="cold")
    return (first >= split_time).rename("cold")


def count_items(trimmed: pd.DataFrame, protocol: Protocol) -> pd.DataFrame:
    """Per item of the trimmed table: ``n_ratings`` and ``cold`` (``n_ratings <= item_cold_max``)."""
    n = trimmed.groupby("item").size().rename("n_ratings")
    return pd.DataFrame({"n_ratings": n, "cold": n <= protocol.item_cold_max})


def split_users(users: np.ndarray, protocol: Protocol, seed: int) -> dict[str, np.ndarray]:
    """Seeded random train/val/test split of the (sorted) user ids; each part sorted."""
    users = np.sort(np.asarray(users))
    n = len(users)
    if n < 2:
        raise DataError(f"the protocol kept {n} user(s); a train/test split needs at least 2: lower "
                        f"Protocol.min_ratings or use more data")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(max(round(protocol.test_fraction * n), 1), n - 1)
    rest = perm[n_test:]
    n_val = min(round(protocol.val_fraction * len(rest)), len(rest) - 1)
    return {"train": np.sort(users[rest[n_val:]]), "val": np.sort(users[rest[:n_val]]),
            "test": np.sort(users[perm[:n_test]])}


def split_users_by_ratio(users: np.ndarray, ratios: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded random train/val/test split by ``ratios``, counted as RecBole does (GreatMeta's split).

    ``floor(ratio · n)`` validation and test users (at least one where the ratio is positive), the
    rest train; the first ``n_train`` users of a seeded permutation are train, then validation, then
    test. Each part sorted.
    """
    users = np.sort(np.asarray(users))
    n = len(users)
    counts = [math.floor(r * n + 1e-9) for r in ratios[1:]]
    counts = [max(c, 1) if r > 0 else c for c, r in zip(counts, ratios[1:], strict=True)]
    n_train = n - sum(counts)
    if n_train < 1:
        raise DataError(f"the protocol kept {n} user(s); split_ratios={tuple(ratios)} leaves no training user: "
                        f"widen GreatMetaProtocol.min_ratings/max_ratings or use more data")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = counts[0]
    return {"train": np.sort(users[perm[:n_train]]), "val": np.sort(users[perm[n_train:n_train + n_val]]),
            "test": np.sort(users[perm[n_train + n_val:]])}


def _sorted_vocab(values) -> tuple:
    uniq = pd.unique(pd.Series(values).dropna())
    try:
        vocab = sorted(uniq)
    except TypeError:  # mixed types: order by text
        vocab = sorted(uniq, key=str)
    return tuple(v.item() if isinstance(v, np.generic) else v for v in vocab)


def encode_categorical(values: pd.Series) -> tuple[np.ndarray, tuple]:
    """Values → int64 indices (1 … V in sorted order; missing → 0) and the vocabulary."""
    vocab = _sorted_vocab(values)
    codes = pd.Categorical(values, categories=list(vocab)).codes.astype(np.int64) + 1
    return codes, vocab


def encode_multi(cells: pd.Series) -> tuple[np.ndarray, tuple]:
    """Tuples of values → ``[n, L]`` int64 indices padded with 0 (L = longest tuple, at least 1)."""
    lengths = cells.map(len).to_numpy(dtype=np.int64)
    flat = cells.explode().dropna()
    vocab = _sorted_vocab(flat)
    out = np.zeros((len(cells), max(int(lengths.max(initial=0)), 1)), dtype=np.int64)
    if len(flat):
        codes = pd.Categorical(flat.to_numpy(), categories=list(vocab)).codes.astype(np.int64) + 1
        rows = np.repeat(np.arange(len(cells)), lengths)
        cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = codes
    return out, vocab


# --------------------------------------------------------------------------------------- pipeline

@dataclass
class ProtocolOutput:
    """What :func:`apply_protocol` produces (see :class:`~mamo_lite.data.dataset.ColdStartData`)."""

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    splits: dict[str, np.ndarray]
    spec: FeatureSpec
    vocabs: dict[str, tuple]
    split_time: int | None
    counts: dict[str, int]


def apply_protocol(raw: RawTables, protocol: AnyProtocol, seed: int = 0) -> ProtocolOutput:
    """Run the whole protocol on parsed tables. ``protocol`` must be :meth:`~Protocol.resolved`.

    A :class:`GreatMetaProtocol` is handed to :func:`apply_greatmeta_protocol`.
    """
    if isinstance(protocol, GreatMetaProtocol):
        return apply_greatmeta_protocol(raw, protocol, seed)
    if protocol.user_split is None or protocol.item_cold_max is None:
        raise ValueError("apply_protocol needs a resolved Protocol: "
                         "call protocol.resolved(name, time_based=...)")
    if raw.ratings.empty:
        raise DataError(f"{raw.name}: no ratings left after parsing and cleaning")

    trimmed = trim(raw.ratings, protocol)
    if trimmed.empty:
        most = int(raw.ratings.groupby("user").size().max())
        raise DataError(f"{raw.name}: no user has at least Protocol.min_ratings={protocol.min_ratings} "
                        f"ratings (the most any user has is {most}); lower min_ratings "
                        f"(and n_keep, n_support, n_query)")
    _check_profiles(raw, trimmed)

    first = trimmed.loc[trimmed["position"] == 0].set_index("user")["order"]  # sorted by user
    split_time = user_split_time(raw.ratings, protocol)
    user_cold = label_users(first, protocol, split_time)
    item_stats = count_items(trimmed, protocol)
    splits = split_users(user_cold.index.to_numpy(), protocol, seed)

    # the task table: support = first n_support, query = last n_query of the n_keep kept ratings
    pos = trimmed["position"].to_numpy()
    support, query = pos < protocol.n_support, pos >= protocol.n_keep - protocol.n_query
    r = trimmed[support | query].reset_index(drop=True)
    r["set"] = np.where(support[support | query], "support", "query")
    return _output(raw, trimmed, r, first, user_cold, item_stats, splits, split_time)


def apply_greatmeta_protocol(raw: RawTables, protocol: GreatMetaProtocol, seed: int = 0) -> ProtocolOutput:
    """GreatMeta's protocol on parsed tables (:class:`GreatMetaProtocol`; reference-code notes §3.2).

    1. **Filter.** Keep the users with ``min_ratings`` … ``max_ratings`` parsed ratings, all of them.
    2. **Split.** :func:`split_users_by_ratio` with ``split_ratios`` and ``seed``.
    3. **Support/query.** Each user's ratings, sorted by (``order``, file row), are put in a random
       order drawn from ``numpy.random.default_rng((seed, user))``: ``position`` is the rank in that
       order, the last ``n_query`` positions are the query set, the rest the support set. A user's
       draw depends only on the seed, the user's id and the user's ratings, not on which other users
       are kept. (The code shuffles all interactions once with its global seed, 1128, and takes 10 per
       user as the query; the same rule, another random stream.)
    4. **Labels.** Every kept user is cold (val and test users are never seen in training) and every
       item warm (no item cold-start), so every rating's scenario is C-W.
    5. **Features** as :func:`apply_protocol` (step 6 of the module docstring); items' ``n_ratings``
       count the kept users' ratings.

    ``counts`` adds ``support_min``, ``support_median`` and ``support_max`` (support-set sizes).
    """
    if raw.ratings.empty:
        raise DataError(f"{raw.name}: no ratings left after parsing and cleaning")
    user = raw.ratings["user"].to_numpy()
    idx = np.lexsort((np.arange(len(raw.ratings)), raw.ratings["order"].to_numpy(), user))
    r = raw.ratings.iloc[idx].reset_index(drop=True)
    size = r.groupby("user", sort=False)["user"].transform("size").to_numpy()
    hi = math.inf if protocol.max_ratings is None else protocol.max_ratings
    keep = (size >= protocol.min_ratings) & (size <= hi)
    if not keep.any():
        n = raw.ratings.groupby("user").size()
        raise DataError(f"{raw.name}: no user has GreatMetaProtocol.min_ratings={protocol.min_ratings} … "
                        f"max_ratings={protocol.max_ratings} ratings (users have {int(n.min())}–{int(n.max())}); "
                        f"widen the range")
    kept = r[keep].reset_index(drop=True)
    _check_profiles(raw, kept)

    ids, start, n_user = np.unique(kept["user"].to_numpy(), return_index=True, return_counts=True)
    position = np.empty(len(kept), dtype=np.int64)
    for u, s0, n in zip(ids.tolist(), start.tolist(), n_user.tolist(), strict=True):
        position[s0:s0 + n] = np.random.default_rng((seed, u)).permutation(n)
    kept["position"] = position
    kept = kept.iloc[np.lexsort((position, kept["user"].to_numpy()))].reset_index(drop=True)
    size = np.repeat(n_user, n_user)  # kept is sorted by user
    kept["set"] = np.where(kept["position"].to_numpy() >= size - protocol.n_query, "query", "support")

    first = kept.groupby("user")["order"].min()
    user_cold = pd.Series(True, index=first.index, name="cold")
    n_item = kept.groupby("item").size().rename("n_ratings")
    item_stats = pd.DataFrame({"n_ratings": n_item, "cold": np.zeros(len(n_item), dtype=bool)})
    splits = split_users_by_ratio(ids, protocol.split_ratios, seed)
    support = n_user - protocol.n_query
    extra = {"support_min": int(support.min()), "support_median": float(np.median(support)),
             "support_max": int(support.max())}
    return _output(raw, kept, kept, first, user_cold, item_stats, splits, None, extra)


def _check_profiles(raw: RawTables, ratings: pd.DataFrame) -> None:
    for what, table, col in (("users", raw.users, "user"), ("items", raw.items, "item")):
        unknown = ~ratings[col].isin(table[col]).to_numpy()
        if unknown.any():
            raise DataError(f"{raw.name}: {int(unknown.sum())} ratings name {what} without a profile row "
                            f"(e.g. {col} {ratings[col][unknown].iloc[0]}); the parser must drop them")


def _output(raw: RawTables, trimmed: pd.DataFrame, r: pd.DataFrame, first: pd.Series, user_cold: pd.Series,
            item_stats: pd.DataFrame, splits: dict[str, np.ndarray], split_time: int | None,
            extra_counts: dict[str, Any] | None = None) -> ProtocolOutput:
    """Both protocols' common end: labels and split columns on the task table ``r`` (with ``position``
    and ``set``), the kept users' and items' encoded profiles, the counts."""
    split_of = pd.Series("", index=user_cold.index, dtype=str)
    for name, ids in splits.items():
        split_of[ids] = name
    r["user_cold"] = user_cold.reindex(r["user"]).to_numpy()
    r["item_cold"] = item_stats["cold"].reindex(r["item"]).to_numpy()
    r["scenario"] = (2 * r["user_cold"].astype(np.int64) + r["item_cold"].astype(np.int64)).astype(np.int64)
    r["split"] = split_of.reindex(r["user"]).to_numpy()
    ratings = r[["user", "item", "rating", "order", "position", "set", "user_cold", "item_cold", "scenario",
                 "split"]]

    # profiles of the kept users/items, raw + encoded
    vocabs: dict[str, tuple] = {}
    n_raw = raw.ratings.groupby("user").size()
    users = raw.users.set_index("user").loc[user_cold.index].reset_index()
    users["n_ratings"] = n_raw.reindex(users["user"]).to_numpy()
    users["first_order"] = first.to_numpy()
    users["cold"] = user_cold.to_numpy()
    users["split"] = split_of.to_numpy()
    user_fields = []
    for f in raw.user_fields:
        users[f"{f}_idx"], vocabs[f] = encode_categorical(users[f])
        user_fields.append(Field(f, "categorical", len(vocabs[f]) + 1))

    items = raw.items.set_index("item").loc[item_stats.index].reset_index()
    items["n_ratings"] = item_stats["n_ratings"].to_numpy()
    items["cold"] = item_stats["cold"].to_numpy()
    item_fields = []
    for f in raw.item_categorical:
        items[f"{f}_idx"], vocabs[f] = encode_categorical(items[f])
        item_fields.append(Field(f, "categorical", len(vocabs[f]) + 1))
    for f in raw.item_multi:
        padded, vocabs[f] = encode_multi(items[f])
        items[f"{f}_idx"] = list(map(tuple, padded.tolist()))
        item_fields.append(Field(f, "multi", len(vocabs[f]) + 1))

    spec = FeatureSpec(tuple(user_fields), tuple(item_fields), raw.rating_min, raw.rating_max)
    query = ratings[ratings["set"] == "query"]
    counts = {
        "users_kept": len(users), "items_kept": len(items), "ratings_trimmed": len(trimmed),
        "ratings_tasks": len(ratings),
        "users_warm": int((~users["cold"]).sum()), "users_cold": int(users["cold"].sum()),
        "items_warm": int((~items["cold"]).sum()), "items_cold": int(items["cold"].sum()),
        **{f"query_{s}": int((query["scenario"] == i).sum()) for i, s in enumerate(SCENARIOS)},
        **{f"users_{k}": len(v) for k, v in splits.items()},
        **(extra_counts or {}),
    }
    return ProtocolOutput(ratings=ratings, users=users, items=items, splits=splits, spec=spec, vocabs=vocabs,
                          split_time=split_time, counts=counts)
