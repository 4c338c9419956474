"""Load a dataset under a cold-start protocol: raw files → :class:`ColdStartData`, cached on disk.

``load("movielens-1m")`` verifies (and where allowed downloads) the raw files through the registry,
parses them (:mod:`~mamo_lite.data.parsers`), applies the cold-start protocol
(:mod:`~mamo_lite.data.protocol`: MAMO's by default, GreatMeta's with ``protocol="greatmeta"``) and
returns a :class:`ColdStartData`, whose :meth:`~ColdStartData.tasks` gives the padded
:class:`~mamo_lite.data.tasks.TaskBatch` of a split.

The processed result is cached under ``registry.cache_dir()/processed/``, keyed by the raw files'
sha256, the resolved protocol, the seed, the parser options and :data:`FORMAT_VERSION`.

* **Code-free format.** A cache file is an uncompressed ``.npz`` read with ``allow_pickle=False``:
  numeric arrays (table columns, string columns as codes into their distinct values, masks of
  missing values, the splits) and one JSON document with everything else. Loading one never
  unpickles, so a crafted cache file cannot run code: it is unreadable, and rebuilt.
* **Atomic.** Cache files are written atomically (temporary file + rename), so a failed or
  interrupted load leaves nothing half-written; stale temporary files of killed writers are removed
  by the next write (``mamo_lite.utils.remove_stale_temp_files``). An unreadable or
  mismatching cache file is rebuilt with a warning.
* **Optional.** A cache folder that cannot be used (a regular file, read-only, full) costs one
  warning naming it; the data is then loaded without the cache.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .protocol import (
    AnyProtocol,
    GreatMetaProtocol,
    Protocol,
    apply_protocol,
    make_protocol,
    protocol_from_dict,
)
from .raw import RawTables
from .tasks import SCENARIOS, FeatureSpec, TaskBatch

__all__ = ["DATASETS", "FORMAT_VERSION", "ColdStartData", "load"]

FORMAT_VERSION = 2
"""Bump when the processed format or any protocol/parser behaviour changes: old caches are ignored."""

DATASETS: tuple[str, ...] = ("movielens-1m", "movielens-100k", "book-crossing", "synthetic")
_ALIASES = {"ml-1m": "movielens-1m", "ml1m": "movielens-1m", "ml-100k": "movielens-100k",
            "ml100k": "movielens-100k", "bx": "book-crossing", "bookcrossing": "book-crossing"}
# logical files whose record counts are the "in files" users / items / ratings of the summary
_FILE_ROLES = {"movielens-1m": ("users", "movies", "ratings"), "movielens-100k": ("user", "item", "data"),
               "book-crossing": ("users", "books", "ratings")}
_SPLITS = ("train", "val", "test", "all")


def _module(name: str):
    """``mamo_lite.data.<name>``, imported on first use (keeps ``import mamo_lite.data`` light)."""
    return importlib.import_module(f"{__package__}.{name}")


@dataclass(eq=False)
class ColdStartData:
    """A dataset after a cold-start protocol (MAMO's :class:`~mamo_lite.data.protocol.Protocol` or
    :class:`~mamo_lite.data.protocol.GreatMetaProtocol`).

    * ``ratings``: the task table, one row per support/query rating of every kept user, sorted by
      user and ``position`` (MAMO: 0 … n_keep-1 in ``order``; GreatMeta: the rank in the user's
      random order, query last): ``user, item, rating, order, position, set``
      (``support``/``query``), ``user_cold, item_cold, scenario`` (index into ``SCENARIOS``) and
      ``split`` (``train``/``val``/``test``);
    * ``users`` / ``items``: profiles of the kept users / items, raw columns plus ``<field>_idx``
      (encoded; 0 = unknown; multi fields as padded tuples), ``n_ratings`` (users: all parsed
      ratings; items: ratings in the trimmed table), ``cold`` and, for users, ``first_order`` and
      ``split``;
    * ``splits``: sorted user ids per split; ``vocabs``: field → values (value ``v`` has index
      ``vocabs[f].index(v) + 1``);
    * ``provenance``: files (sha256, bytes, records), release, protocol, seed, counts, notes.
    """

    name: str
    spec: FeatureSpec
    protocol: AnyProtocol
    seed: int
    release: str
    provenance: dict
    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    splits: dict[str, np.ndarray]
    vocabs: dict[str, tuple]
    _task_cache: dict[str, TaskBatch] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------- building
    @classmethod
    def from_raw(cls, raw: RawTables, protocol: AnyProtocol | dict | str | None = None, seed: int = 0, *,
                 options: dict | None = None) -> ColdStartData:
        """Apply ``protocol`` (dataset defaults filled in; see :func:`~mamo_lite.data.protocol.make_protocol`)
        to parsed tables; nothing is cached."""
        protocol = make_protocol(protocol).resolved(raw.name, time_based=raw.time_based)
        out = apply_protocol(raw, protocol, seed)
        parsed = (len(raw.users), len(raw.items), len(raw.ratings))
        roles = _FILE_ROLES.get(raw.name, ())
        in_files = (tuple(raw.files[r]["records"] for r in roles)
                    if roles and all("records" in raw.files.get(r, {}) for r in roles) else parsed)
        kinds = ("users", "items", "ratings")
        split_iso = (None if out.split_time is None else
                     pd.Timestamp(out.split_time, unit="s", tz="UTC").isoformat())
        provenance = {
            "dataset": raw.name,
            "release": raw.release,
            "files": raw.files,
            "options": dict(options or {}),
            "protocol": protocol.to_dict(),
            "seed": seed,
            "split_time_utc": split_iso,
            "split_time_unix": out.split_time,
            "counts": {**{f"{k}_in_files": n for k, n in zip(kinds, in_files, strict=True)},
                       **{f"{k}_parsed": n for k, n in zip(kinds, parsed, strict=True)}, **out.counts},
            "notes": list(raw.notes),
            "format_version": FORMAT_VERSION,
        }
        return cls(name=raw.name, spec=out.spec, protocol=protocol, seed=seed, release=raw.release,
                   provenance=provenance, ratings=out.ratings, users=out.users, items=out.items,
                   splits=out.splits, vocabs=out.vocabs)

    # -------------------------------------------------------------------------------- tasks
    def tasks(self, split: str = "train") -> TaskBatch:
        """The padded tasks of ``split`` (``train``, ``val``, ``test`` or ``all``), users sorted by id.

        CPU tensors; built once per split and cached on this object. Under MAMO's protocol every kept
        user has exactly ``n_support`` support and ``n_query`` query ratings, so all masks are ``True``.
        Under GreatMeta's, support sets differ in size: they are padded to the split's largest (item
        feature index 0, rating 0, item id 0, scenario 0) and ``support_mask`` marks the real slots;
        slots keep each user's ``position`` order.
        """
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if split in self._task_cache:
            return self._task_cache[split]
        users = self.users if split == "all" else self.users[self.users["split"] == split]
        ids = users["user"].to_numpy(copy=True)
        b = len(ids)
        r = self.ratings if split == "all" else self.ratings[self.ratings["split"] == split]
        item_row = pd.Index(self.items["item"]).get_indexer(r["item"])
        owner_all = pd.Index(ids).get_indexer(r["user"])
        item_cat = self.items[[f"{f.name}_idx" for f in self.spec.item_categorical]].to_numpy(
            dtype=np.int64, copy=True)
        multi = {f.name: np.array(self.items[f"{f.name}_idx"].tolist(), dtype=np.int64)
                 for f in self.spec.item_multi}
        fixed = isinstance(self.protocol, Protocol)

        def part(which: str, n: int | None):
            sel = (r["set"] == which).to_numpy()
            rows, owner = item_row[sel], owner_all[sel]
            per_user = np.bincount(owner, minlength=b)
            if n is None:  # variable sizes: pad to the largest
                n = int(per_user.max(initial=0))
            elif (per_user != n).any():
                raise AssertionError(f"{which}: expected {n} ratings for each of {b} users, got {len(rows)}")
            slot = np.arange(len(rows)) - np.repeat(np.cumsum(per_user) - per_user, per_user)  # rows sorted by user

            def padded(values: np.ndarray) -> np.ndarray:
                out = np.zeros((b, n, *values.shape[1:]), dtype=values.dtype)
                out[owner, slot] = values
                return out

            x = {"cat": torch.from_numpy(padded(item_cat[rows]))}
            for name, m in multi.items():
                x[name] = torch.from_numpy(padded(m[rows]))
            y = torch.from_numpy(padded(r["rating"].to_numpy(dtype=np.float32, copy=True)[sel]))
            items = torch.from_numpy(padded(r["item"].to_numpy(dtype=np.int64, copy=True)[sel]))
            scenario = torch.from_numpy(padded(r["scenario"].to_numpy(dtype=np.int64, copy=True)[sel]))
            mask = torch.from_numpy(padded(np.ones(len(rows), dtype=bool)))
            return x, y, items, scenario, mask

        s_x, s_y, s_items, _, s_mask = part("support", self.protocol.n_support if fixed else None)
        q_x, q_y, q_items, q_scenario, q_mask = part("query", self.protocol.n_query)
        user_x = users[[f"{f.name}_idx" for f in self.spec.user_fields]].to_numpy(dtype=np.int64, copy=True)
        batch = TaskBatch(
            user_ids=torch.from_numpy(ids.astype(np.int64)),
            user_x=torch.from_numpy(user_x.reshape(b, len(self.spec.user_fields))),
            support_x=s_x, support_y=s_y, support_mask=s_mask,
            support_item_ids=s_items,
            query_x=q_x, query_y=q_y, query_mask=q_mask,
            query_item_ids=q_items, query_scenario=q_scenario,
            user_cold=torch.from_numpy(users["cold"].to_numpy(dtype=bool, copy=True)),
        )
        self._task_cache[split] = batch
        return batch

    # ------------------------------------------------------------------------------ summary
    def summary(self) -> pd.DataFrame:
        """Counts from the files to the tasks, one row per quantity (column ``value``).

        ``release`` is always the first row: ``complete``, ``subset`` (e.g. ML-1M users 1–2999),
        ``synthetic`` or ``unverified``. Under GreatMeta's protocol the rows follow its rules
        (rating range, support sizes, no warm/cold rules).
        """
        if isinstance(self.protocol, GreatMetaProtocol):
            return self._greatmeta_summary()
        c = self.provenance["counts"]
        p = self.protocol
        rule = {"date": f"first rating ≥ {self.provenance['split_time_utc']}",
                "quantile": f"first rating ≥ {self.provenance['split_time_utc']} "
                            f"(q={p.split_quantile} of rating times)",
                "id": f"last {p.cold_user_fraction:.0%} of user ids"}[p.user_split]
        rows = [
            ("release", self.release),
            ("dataset", self.name),
            ("users in files", c["users_in_files"]),
            ("items in files", c["items_in_files"]),
            ("ratings in files", c["ratings_in_files"]),
            ("users after cleaning", c["users_parsed"]),
            ("items after cleaning", c["items_parsed"]),
            ("ratings after cleaning", c["ratings_parsed"]),
            (f"users kept (≥ {p.min_ratings} ratings)", c["users_kept"]),
            (f"items in the trimmed table ({p.n_keep} per user)", c["items_kept"]),
            ("ratings in the trimmed table", c["ratings_trimmed"]),
            (f"ratings in tasks ({p.n_support} support + {p.n_query} query)", c["ratings_tasks"]),
            ("warm users", c["users_warm"]),
            ("cold users", c["users_cold"]),
            ("cold-user rule", rule),
            ("warm items", c["items_warm"]),
            ("cold items", c["items_cold"]),
            ("cold-item rule", f"≤ {p.item_cold_max} ratings in the trimmed table"),
            *((f"query ratings {s}", c[f"query_{s}"]) for s in SCENARIOS),
            ("train users", c["users_train"]),
            ("val users", c["users_val"]),
            ("test users", c["users_test"]),
            ("seed", self.seed),
        ]
        return _quantities(rows)

    def _greatmeta_summary(self) -> pd.DataFrame:
        c = self.provenance["counts"]
        p = self.protocol
        kept = f"≥ {p.min_ratings}" if p.max_ratings is None else f"{p.min_ratings}–{p.max_ratings}"
        rows = [
            ("release", self.release),
            ("dataset", self.name),
            ("protocol", "GreatMeta (user cold-start only)"),
            ("users in files", c["users_in_files"]),
            ("items in files", c["items_in_files"]),
            ("ratings in files", c["ratings_in_files"]),
            ("users after cleaning", c["users_parsed"]),
            ("items after cleaning", c["items_parsed"]),
            ("ratings after cleaning", c["ratings_parsed"]),
            (f"users kept ({kept} ratings)", c["users_kept"]),
            ("items rated by the kept users", c["items_kept"]),
            (f"ratings in tasks (support + {p.n_query} random query)", c["ratings_tasks"]),
            ("support size min", c["support_min"]),
            ("support size median", c["support_median"]),
            ("support size max", c["support_max"]),
            ("split ratios (train/val/test)", "/".join(f"{r:g}" for r in p.split_ratios)),
            ("train users", c["users_train"]),
            ("val users", c["users_val"]),
            ("test users", c["users_test"]),
            ("seed", self.seed),
        ]
        return _quantities(rows)

    def __repr__(self) -> str:
        c = self.provenance["counts"]
        return (f"ColdStartData({self.name!r}, release={self.release!r}, users={c['users_kept']} "
                f"({c['users_cold']} cold), items={c['items_kept']} ({c['items_cold']} cold), "
                f"train/val/test={c['users_train']}/{c['users_val']}/{c['users_test']}, seed={self.seed})")

    # -------------------------------------------------------------------------------- cache
    def _to_arrays(self, key: str) -> dict[str, np.ndarray]:
        """The cache file's content: named numeric arrays, the JSON document as ``meta`` (bytes)."""
        arrays: dict[str, np.ndarray] = {}
        meta = {"format_version": FORMAT_VERSION, "key": key, "name": self.name,
                "spec": self.spec.to_dict(), "protocol": self.protocol.to_dict(), "seed": self.seed,
                "release": self.release, "provenance": self.provenance, "vocabs": self.vocabs,
                "tables": {t: _encode_table(getattr(self, t), t, arrays) for t in ("ratings", "users", "items")},
                "splits": list(self.splits)}
        for name, ids in self.splits.items():
            arrays[f"split.{name}"] = np.asarray(ids)
        arrays["meta"] = np.frombuffer(json.dumps(_to_json(meta), allow_nan=True).encode(), dtype=np.uint8)
        return arrays

    @classmethod
    def _from_arrays(cls, arrays, key: str) -> ColdStartData:
        meta = _from_json(json.loads(arrays["meta"].tobytes()))
        if meta.get("format_version") != FORMAT_VERSION or meta.get("key") != key:
            raise ValueError("format version or key mismatch")
        tables = {t: _decode_table(t, spec, arrays) for t, spec in meta["tables"].items()}
        return cls(name=meta["name"], spec=FeatureSpec.from_dict(meta["spec"]),
                   protocol=protocol_from_dict(meta["protocol"]), seed=meta["seed"],
                   release=meta["release"], provenance=meta["provenance"], **tables,
                   splits={name: arrays[f"split.{name}"] for name in meta["splits"]}, vocabs=meta["vocabs"])


def _quantities(rows: list[tuple[str, object]]) -> pd.DataFrame:
    """``(quantity, value)`` pairs as :meth:`ColdStartData.summary`'s one-column frame."""
    return pd.DataFrame({"value": np.array([v for _, v in rows], dtype=object)},
                        index=pd.Index([k for k, _ in rows], name="quantity"))


# ------------------------------------------------------------------------------- cache format
# JSON with tuples tagged (they must come back as tuples), and tables as numeric arrays: numeric
# columns as they are, nullable ones with a mask, text and tuple columns as codes into their
# distinct values (which go into the JSON document).

_TUPLE = "__tuple__"


def _to_json(obj):
    if isinstance(obj, tuple):
        return {_TUPLE: [_to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    if isinstance(obj, dict):
        if _TUPLE in obj or not all(isinstance(k, str) for k in obj):
            raise TypeError(f"cannot cache a dict with keys {list(obj)[:5]}")
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, str | int | float):
        return obj
    raise TypeError(f"cannot cache a value of type {type(obj).__name__}")


def _from_json(obj):
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {_TUPLE}:
            return tuple(_from_json(v) for v in obj[_TUPLE])
        return {k: _from_json(v) for k, v in obj.items()}
    return obj


_MISSING = {"none": None, "nan": math.nan, "na": pd.NA}


def _missing_kind(col: pd.Series) -> str:
    kinds = {"none" if v is None else "na" if v is pd.NA else "nan" for v in col[col.isna()]}
    if len(kinds) > 1:
        raise TypeError(f"cannot cache column {col.name!r}: it mixes missing values {sorted(kinds)}")
    return kinds.pop() if kinds else "none"


def _encode_table(df: pd.DataFrame, table: str, arrays: dict[str, np.ndarray]) -> dict:
    if not isinstance(df.index, pd.RangeIndex):
        raise TypeError(f"cannot cache table {table!r}: its index is not a RangeIndex")
    columns = []
    for i, (name, col) in enumerate(df.items()):
        key, dtype = f"{table}.{i}", col.dtype
        if not isinstance(name, str):
            raise TypeError(f"cannot cache table {table!r}: column name {name!r} is not a string")
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            arrays[key] = col.to_numpy()
            columns.append({"name": name, "kind": "numpy"})
        elif isinstance(col.array, pd.arrays.IntegerArray | pd.arrays.FloatingArray | pd.arrays.BooleanArray):
            mask = col.isna().to_numpy()
            arrays[key] = col.to_numpy(dtype=dtype.numpy_dtype, na_value=dtype.numpy_dtype.type(0))
            arrays[key + ".mask"] = mask
            columns.append({"name": name, "kind": "masked", "dtype": str(dtype)})
        elif isinstance(dtype, pd.StringDtype) or dtype == object:
            codes, uniques = pd.factorize(col, use_na_sentinel=True)
            arrays[key] = codes.astype(np.int32 if len(uniques) < 2**31 else np.int64)
            entry = {"name": name, "kind": "object", "values": list(uniques), "missing": _missing_kind(col)}
            if isinstance(dtype, pd.StringDtype):
                entry.update(kind="string", storage=dtype.storage, missing="na" if dtype.na_value is pd.NA else "nan")
            columns.append(entry)
        else:
            raise TypeError(f"cannot cache column {name!r} of table {table!r}: dtype {dtype}")
    return {"rows": len(df), "columns": columns}


def _decode_table(table: str, spec: dict, arrays) -> pd.DataFrame:
    data = {}
    for i, c in enumerate(spec["columns"]):
        values = arrays[f"{table}.{i}"]
        if c["kind"] == "numpy":
            data[c["name"]] = values
        elif c["kind"] == "masked":
            column = pd.array(values, dtype=c["dtype"])
            column[arrays[f"{table}.{i}.mask"]] = pd.NA
            data[c["name"]] = column
        else:  # object or string: codes into the distinct values, -1 (the last entry) is missing
            distinct = np.empty(len(c["values"]) + 1, dtype=object)
            for j, v in enumerate(c["values"]):
                distinct[j] = v
            distinct[-1] = _MISSING[c["missing"]]
            column = distinct[values]
            if c["kind"] == "string":
                column = pd.array(column, dtype=pd.StringDtype(c["storage"], na_value=_MISSING[c["missing"]]))
            data[c["name"]] = column
    return pd.DataFrame(data, index=pd.RangeIndex(spec["rows"]))


# ------------------------------------------------------------------------------------- loading

def _canonical(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    return key


def _check_options(fn, options: dict, name: str) -> None:
    allowed = [p.name for p in inspect.signature(fn).parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("release", "provenance")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"load({name!r}) got unknown option(s) {unknown}; valid: {allowed}")


def _cache_path(cache, name: str, key: str) -> Path | None:
    if cache is False or cache is None:
        return None
    root = _module("registry").cache_dir() if cache is True else Path(cache)
    return Path(root) / "processed" / f"{name}-{key[:24]}.npz"


def _read_cache(path: Path, key: str) -> ColdStartData | None:
    """The cached data, or ``None`` (with a warning if a file is there but unusable). Never unpickles."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return ColdStartData._from_arrays(arrays, key)
    except Exception as e:  # noqa: BLE001 - any unreadable cache file is rebuilt
        warnings.warn(f"processed-data cache {path} is unreadable or stale ({type(e).__name__}: {e}); "
                      f"rebuilding it", RuntimeWarning, stacklevel=3)
        return None


def _write_cache(path: Path, data: ColdStartData, key: str) -> None:
    """Write atomically (a temporary file in the same folder, then ``os.replace``); warn on failure.

    The cache is optional: an unusable folder (a regular file, read-only, full) or tables that the
    format cannot hold cost a one-line warning, never the load.
    """
    from mamo_lite.utils import atomic_write_bytes

    try:
        buffer = io.BytesIO()
        np.savez(buffer, **data._to_arrays(key))
    except TypeError as e:
        warnings.warn(f"{data.name} cannot be cached ({e}); loading it again will rebuild it",
                      RuntimeWarning, stacklevel=3)
        return
    try:
        atomic_write_bytes(path, buffer.getvalue())  # also removes killed writers' temporary files
    except OSError as e:
        warnings.warn(f"processed-data cache folder {path.parent} is not usable ({e.strerror or e}); "
                      f"continuing without the cache", RuntimeWarning, stacklevel=3)


def load(name: str, data_dir: str | os.PathLike | None = None, *,
         protocol: AnyProtocol | dict | str | None = None, seed: int = 0, download: bool = True,
         cache: bool | str | os.PathLike = True, **kwargs) -> ColdStartData:
    """Load ``name`` under a cold-start protocol (MAMO's unless ``protocol`` says otherwise).

    Args:
        name: ``movielens-1m``, ``movielens-100k``, ``book-crossing`` or ``synthetic``
            (aliases ``ml-1m``, ``ml-100k``, ``bx``).
        data_dir: data root (default ``$MAMO_LITE_DATA``, then the cache folder; see
            ``registry.data_root``); ignored for ``synthetic``.
        protocol: a :class:`~mamo_lite.data.protocol.Protocol` (or a dict of its fields); ``None``
            → MAMO's defaults with the dataset's own user/item rules; ``"greatmeta"`` (or a
            :class:`~mamo_lite.data.protocol.GreatMetaProtocol`) → GreatMeta's protocol (users with
            40–200 ratings, 70/10/20 user split, 10 random query ratings, the rest support);
            ``"mamo"`` → MAMO's defaults. See :data:`~mamo_lite.data.protocol.PROTOCOLS`.
        seed: the train/val/test user split's seed (GreatMeta's protocol: also the query draw's).
        download: fetch missing MovieLens files (Book-Crossing must be supplied by hand).
        cache: ``True`` → cache under ``registry.cache_dir()/processed``; a path → that folder
            instead of ``cache_dir()``; ``False`` → neither read nor write a cache. A cache folder
            that cannot be used gives a warning and the data is loaded without it.
        **kwargs: parser options (``merge_duplicate_movies`` for ML-1M; ``year_range``,
            ``age_range`` for Book-Crossing) or, for ``synthetic``, ``make_synthetic``'s arguments.

    Raises:
        ValueError: unknown dataset or invalid protocol; TypeError: unknown option;
        DataError (``MissingDataError``, ``ChecksumError``, ``ParseError`` …): files missing, wrong
        or malformed.
    """
    name = _canonical(name)
    protocol = make_protocol(protocol)
    if name == "synthetic":
        make = _module("synthetic").make_synthetic
        source = Path(inspect.getfile(make)).read_bytes()
        ident = {"make_synthetic": kwargs, "source_sha256": hashlib.sha256(source).hexdigest()}

        def make_raw() -> RawTables:
            return make(**kwargs)
    else:
        from .parsers import PARSERS

        parse = PARSERS[name]
        _check_options(parse, kwargs, name)
        files = _module("registry").ensure_files(name, data_dir, download=download, verify=True)
        ident = {"sha256": files.sha256, "release": files.release, "options": kwargs}

        def make_raw() -> RawTables:
            return parse(files.paths, release=files.release, provenance=files.provenance(), **kwargs)

    resolved = protocol.resolved(name, time_based=name != "book-crossing")
    key_fields = {"format": FORMAT_VERSION, "name": name, "ident": ident, "protocol": resolved.to_dict(),
                  "seed": seed}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True, default=repr).encode()).hexdigest()
    path = _cache_path(cache, name, key)
    if path is not None and (hit := _read_cache(path, key)) is not None:
        return hit
    data = ColdStartData.from_raw(make_raw(), resolved, seed, options=kwargs)
    if path is not None:
        _write_cache(path, data, key)
    return data
