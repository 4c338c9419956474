"""Parsers: raw dataset files → :class:`~mamo_lite.data.raw.RawTables` (MAMO §3.1, appendix A.1).

One parser per format. Each takes ``paths`` (logical file name → path, as the registry's
``RawFiles.paths``) and returns the parsed, cleaned tables; the cold-start protocol
(:mod:`mamo_lite.data.protocol`) does everything else. Parsers never guess: a file that does not
have the documented shape raises :class:`ParseError`, which names the file, the line, the field and
the fix.

==================  =============================================  ==============================
dataset             logical files                                  profile fields
==================  =============================================  ==============================
``movielens-1m``    ratings, users, movies, extrainfos             user: gender, age, occupation;
                                                                   item: rate, year | genre,
                                                                   director (multi)
``movielens-100k``  data, user, item, genre, occupation            user: gender, age (ML-1M's
                                                                   groups), occupation; item:
                                                                   year | genre (multi)
``book-crossing``   ratings, books, users                          user: age, country;
                                                                   item: year, author, publisher
==================  =============================================  ==============================

Missing values become ``pd.NA`` (categorical) or an empty tuple (multi); the encoder maps them to
index 0 ("unknown").

**Duplicate ratings.** A user rates an item at most once, so a query item is new to its user. When
a ratings file rates the same item twice for one user (with the same time or not), every parser by
default (``duplicate_ratings="last"``) keeps the last rating by time (the later line on a tie;
Book-Crossing has no times, so the later line), and a ``UserWarning`` and the dataset's ``notes``
give the count. ``duplicate_ratings="keep"`` keeps them all (noted, no warning). The official files
have none. ML-1M's ``merge_duplicate_movies`` is a separate, documented rule: a user who rated both
copies of a merged movie keeps both ratings (MeLU).

**Integers** must fit in 64 bits; a larger one is a :class:`ParseError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
import pandas as pd

from .download import content_size, open_binary
from .errors import DataError
from .raw import RawTables

__all__ = [
    "ML1M_AGE_GROUPS",
    "ML1M_DUPLICATE_MOVIES",
    "PARSERS",
    "ParseError",
    "parse_book_crossing",
    "parse_movielens_1m",
    "parse_movielens_100k",
]

ML1M_AGE_GROUPS: tuple[int, ...] = (1, 18, 25, 35, 45, 50, 56)
"""ML-1M's age codes: under 18, 18–24, 25–34, 35–44, 45–49, 50–55, 56+ (ML-1M README)."""

ML1M_DUPLICATE_MOVIES: dict[int, int] = {860: 811, 1795: 1741}
"""ML-1M's duplicate titles, absent from ``movies_extrainfos.dat``, and the id MeLU maps them to."""

_SEPARATORS = ("::", "\t", "|", ";", ",")


class ParseError(DataError):
    """A raw file does not have the documented format.

    ``file``, ``line`` (1-based, physical line) and ``field`` say where; ``str(error)`` also says
    what was expected and how to fix it.
    """

    def __init__(self, message: str, *, file: str | os.PathLike | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None) -> None:
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        self.reason = message
        self.fix = fix
        where = ", ".join(p for p in (
            self.file,
            None if line is None else f"line {line}",
            None if field is None else f"field {field!r}",
        ) if p)
        text = f"{where}: {message}" if where else message
        if fix:
            text += f". Fix: {fix}"
        super().__init__(text)


_REDOWNLOAD = "the file looks truncated or edited; delete it and download the official release again"


# ----------------------------------------------------------------------------------------- reading

def _read_bytes(path) -> bytes:
    """The file's content: plain, gunzipped (``*.gz``) or a zip member (the registry's ``open_binary``)."""
    name = str(path)
    try:
        with open_binary(path) as fh:
            return fh.read()
    except FileNotFoundError as e:
        raise ParseError("file not found", file=name,
                         fix="check the data directory, or let mamo_lite.data.load download it") from e
    except (gzip.BadGzipFile, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise ParseError(f"corrupt compressed file ({e})", file=name, fix=_REDOWNLOAD) from e


def _decode(data: bytes, path, encoding: str) -> str:
    """Decode strictly; an undecodable byte names its line and the expected encoding."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ParseError(f"NUL byte found (UTF-16 or a binary file?); expected {encoding} text", file=path,
                         line=data.count(b"\n", 0, nul) + 1,
                         fix=f"supply the original {encoding} file, not a converted copy")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise ParseError(f"byte 0x{data[e.start]:02x} is not valid {encoding}", file=path,
                         line=data.count(b"\n", 0, e.start) + 1,
                         fix=f"the file must be {encoding}-encoded: use the original file, "
                             f"or convert it back to {encoding}") from e


def _sep_name(sep: str) -> str:
    return {"\t": "tab", "|": "'|'", ";": "';'", ",": "','", "::": "'::'"}.get(sep, repr(sep))


def _check_separator(first_line: str, sep: str, path, columns) -> None:
    if sep in first_line:
        return
    found = next((s for s in _SEPARATORS if s != sep and s in first_line), None)
    seen = f"it looks {_sep_name(found)}-separated" if found else "no separator found"
    raise ParseError(f"expected {_sep_name(sep)}-separated fields ({', '.join(columns)}); {seen}",
                     file=path, line=1, fix=f"use the original file, whose fields are separated by "
                                            f"{_sep_name(sep)}")


_INT64_MAX = np.iinfo(np.int64).max


def _int_column(values: pd.Series, path, field: str, line_of: Callable[[int], int]) -> pd.Series:
    """Strings → int64; the first non-integer, or integer beyond 64 bits, names its line."""
    try:  # fast path: plain integers (5× faster than to_numeric)
        return values.astype("int64")
    except (ValueError, TypeError, OverflowError):
        pass
    num = pd.to_numeric(values, errors="coerce")
    bad = num.isna().to_numpy() | (num.fillna(0) % 1 != 0).to_numpy()
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ParseError(f"{values.iloc[k]!r} is not an integer", file=path, line=line_of(k), field=field,
                         fix=_REDOWNLOAD)
    if num.dtype.kind == "u":
        huge = (num > _INT64_MAX).to_numpy()
    elif num.dtype.kind == "f":  # floats from integers beyond uint64 (2**63 is exact as a float)
        huge = (num.abs() >= 2.0**63).to_numpy()
    else:
        huge = np.zeros(len(num), dtype=bool)
    if huge.any():
        k = int(np.flatnonzero(huge)[0])
        raise ParseError(f"{values.iloc[k]!r} does not fit in a 64-bit integer (at most {_INT64_MAX})",
                         file=path, line=line_of(k), field=field,
                         fix="ids and counts this large are not in the official files; " + _REDOWNLOAD)
    return num.astype("int64")


def _read_delimited(path, *, sep: str, columns: list[str], encoding: str,
                    ints: tuple[str, ...] = ()) -> pd.DataFrame:
    """A headerless ``sep``-separated file → DataFrame of ``columns`` (``ints`` as int64, rest str).

    Row ``k`` of the result is line ``k + 1`` of the file (blank lines are errors, except at the end).
    """
    text = _decode(_read_bytes(path), path, encoding).replace("\r\n", "\n").rstrip("\n")
    if not text:
        raise ParseError("file is empty", file=path, fix=_REDOWNLOAD)
    if "\r" in text:  # the C parser would read a lone CR as a line break and shift every line number
        raise ParseError("stray carriage return (CR) inside a line", file=path,
                         line=text.count("\n", 0, text.index("\r")) + 1, fix=_REDOWNLOAD)
    _check_separator(text[:text.find("\n")] if "\n" in text else text, sep, path, columns)
    csep = sep
    if len(sep) > 1:  # the C parser wants one character; \x1f ("unit separator") never occurs in text
        if "\x1f" in text:
            k = text.index("\x1f")
            raise ParseError("control character \\x1f found", file=path, line=text.count("\n", 0, k) + 1,
                             fix=_REDOWNLOAD)
        text, csep = text.replace(sep, "\x1f"), "\x1f"
    n_lines = text.count("\n") + 1
    if text.count(csep) != n_lines * (len(columns) - 1):  # some line has too few or too many fields
        for k, line in enumerate(text.split("\n")):
            n = line.count(csep) + 1
            if n != len(columns):
                raise ParseError(
                    f"expected {len(columns)} {_sep_name(sep)}-separated fields ({', '.join(columns)}), "
                    f"found {n}" + (" (empty line)" if not line.strip() else ""),
                    file=path, line=k + 1, fix=_REDOWNLOAD)
    common = {"sep": csep, "header": None, "names": columns, "quoting": csv.QUOTE_NONE,
              "skip_blank_lines": False, "engine": "c", "index_col": False}
    try:  # fast path: the C parser converts the integer columns itself
        return pd.read_csv(io.StringIO(text), dtype={c: ("int64" if c in ints else str) for c in columns},
                           na_filter=False, **common)
    except (ValueError, OverflowError):
        pass
    df = pd.read_csv(io.StringIO(text), dtype=str, na_filter=False, **common)
    for c in ints:  # raises with the line of the first bad value
        df[c] = _int_column(df[c], path, c, lambda k: k + 1)
    return df


def _first_bad(mask, df: pd.DataFrame, path, field: str, message: Callable[[object], str], *,
               fix: str = _REDOWNLOAD, line_of: Callable[[int], int] = lambda k: k + 1) -> None:
    """Raise a :class:`ParseError` at the first row where ``mask`` is true."""
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        k = int(np.flatnonzero(mask)[0])
        n = int(mask.sum())
        extra = f" ({n} such rows)" if n > 1 else ""
        raise ParseError(message(df[field].iloc[k]) + extra, file=path, line=line_of(k), field=field, fix=fix)


DuplicateRatings = Literal["last", "keep"]


def _keep_last_rating(user: np.ndarray, item: np.ndarray, order: np.ndarray, path, notes: list[str],
                      duplicate_ratings: DuplicateRatings) -> np.ndarray | None:
    """Mask keeping one rating per (user, item): the last by ``order``, the later row on a tie.

    ``None`` if there are no duplicates or ``duplicate_ratings="keep"`` (then only noted); else warns
    (``UserWarning``) and adds a note with the count. Rows are the ratings file's records, in order.
    """
    if duplicate_ratings not in ("last", "keep"):
        raise ValueError(f"duplicate_ratings must be 'last' or 'keep', got {duplicate_ratings!r}")
    codes = pd.MultiIndex.from_arrays([user, item]).duplicated(keep=False) if len(user) else np.zeros(0, bool)
    if not codes.any():
        return None
    rows = np.flatnonzero(codes)
    dup = pd.DataFrame({"user": user[rows], "item": item[rows], "order": order[rows], "row": rows})
    dup = dup.sort_values(["order", "row"], kind="stable")
    dropped = dup.loc[dup.duplicated(["user", "item"], keep="last"), "row"].to_numpy()
    n, pairs = len(dropped), len(dup.drop_duplicates(["user", "item"]))
    found = (f"{path}: {n} duplicate rating{'s' if n > 1 else ''} of the same user and item "
             f"({pairs} pair{'s' if pairs > 1 else ''}, e.g. user {dup['user'].iloc[0]}, item "
             f"{dup['item'].iloc[0]})")
    if duplicate_ratings == "keep":
        notes.append(f"{found} kept (duplicate_ratings='keep')")
        return None
    message = f"{found} dropped; the last rating of each pair by time (the later line on a tie) is kept"
    warnings.warn(message, UserWarning, stacklevel=3)
    notes.append(message)
    keep = np.ones(len(user), dtype=bool)
    keep[dropped] = False
    return keep


def _check_unique(df: pd.DataFrame, col: str, path) -> None:
    _first_bad(df[col].duplicated().to_numpy(), df, path, col, lambda v: f"duplicate id {v}")


def _files(paths: Mapping, provenance: Mapping[str, dict] | None, records: Mapping[str, int]) -> dict:
    """``RawTables.files``: the registry's provenance entries (or path/size) plus the record counts."""
    out = {}
    for logical, n in records.items():
        entry = dict((provenance or {}).get(logical) or
                     {"path": str(paths[logical]), "sha256": None, "bytes": content_size(paths[logical])})
        out[logical] = {**entry, "records": n}
    return out


def _require(paths: Mapping, logical: tuple[str, ...], dataset: str) -> None:
    missing = [k for k in logical if k not in paths]
    if missing:
        raise ParseError(f"{dataset}: no path given for {missing}; expected the logical files "
                         f"{list(logical)}",
                         fix="pass the RawFiles.paths of mamo_lite.data.registry.ensure_files")


def _per_unique(values: pd.Series, transform: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """``transform`` applied to the distinct values only (a str Series), mapped back to every row."""
    codes, uniques = pd.factorize(values)
    out = transform(pd.Series(uniques, dtype=str)).to_numpy()
    return pd.Series(out[codes], index=values.index)


def _split_list(values: pd.Series, *, strip_parentheses: bool = False) -> pd.Series:
    """", "-separated lists → tuples of unique names; ``N/A`` / empty → ``()``."""
    def one(s: str) -> tuple[str, ...]:
        if s in ("", "N/A"):
            return ()
        out = []
        for part in s.split(","):
            if strip_parentheses:  # "Andrew Stanton(co-director)" → "Andrew Stanton", as MAMO does
                part = re.sub(r"\([^()]*\)", "", part)
            part = part.strip()
            if part and part != "N/A" and part not in out:
                out.append(part)
        return tuple(out)
    return _per_unique(values, lambda uniq: uniq.map(one))


# ------------------------------------------------------------------------------------- MovieLens

def _ml_ratings(path, *, sep: str, scale: tuple[int, int], encoding: str = "ascii") -> pd.DataFrame:
    df = _read_delimited(path, sep=sep, columns=["user", "item", "rating", "timestamp"], encoding=encoding,
                         ints=("user", "item", "rating", "timestamp"))
    lo, hi = scale
    _first_bad(~df["rating"].between(lo, hi).to_numpy(), df, path, "rating",
               lambda v: f"rating {v} is outside the scale {lo}–{hi}")
    _first_bad((df["timestamp"] < 0).to_numpy(), df, path, "timestamp",
               lambda v: f"timestamp {v} is negative")
    return df


def _drop_duplicate_ml_ratings(ratings: pd.DataFrame, path, notes: list[str],
                               duplicate_ratings: DuplicateRatings) -> pd.DataFrame:
    keep = _keep_last_rating(ratings["user"].to_numpy(), ratings["item"].to_numpy(),
                             ratings["timestamp"].to_numpy(), path, notes, duplicate_ratings)
    return ratings if keep is None else ratings[keep].reset_index(drop=True)


def _check_known(ratings: pd.DataFrame, col: str, known: pd.Series, path, other: str) -> None:
    _first_bad(~ratings[col].isin(known).to_numpy(), ratings, path, col,
               lambda v: f"{col} {v} does not appear in {other}",
               fix=f"the ratings file and {other} come from different releases; use files of one release")


def parse_movielens_1m(paths: Mapping[str, os.PathLike], *, merge_duplicate_movies: bool = True,
                       duplicate_ratings: DuplicateRatings = "last", release: str = "unverified",
                       provenance: Mapping[str, dict] | None = None) -> RawTables:
    """MovieLens 1M with MeLU/MAMO's ``movies_extrainfos.dat`` item profiles.

    User features: gender, age (ML-1M's 7 groups), occupation (0–20); the zip code is dropped (MAMO).
    Item features: ``rate`` (MPAA rating; ``N/A`` → unknown), ``year``, ``genre`` (multi, IMDb genres),
    ``director`` (multi; text in parentheses stripped, as MAMO's ``item_converting_ml`` does).

    ``merge_duplicate_movies``: movies 860 and 1795 duplicate 811 and 1741 and have no extrainfos row.
    ``True`` (MeLU's choice) maps their ratings onto 811/1741; ``False`` drops those ratings. Either
    way ``notes`` records how many ratings were affected. Other movies without extrainfos (none in the
    official files) lose their ratings, also noted. ``duplicate_ratings``: what to do with a user's
    repeated ratings of one movie in ratings.dat (see the module docstring: ``"last"`` keeps the last
    by time and warns; ``"keep"`` keeps them all). Ratings naming a user absent from users.dat or a
    movie absent from movies.dat are a :class:`ParseError`.
    """
    _require(paths, ("ratings", "users", "movies", "extrainfos"), "movielens-1m")
    notes: list[str] = []

    p = paths["users"]
    users = _read_delimited(p, sep="::", columns=["user", "gender", "age", "occupation", "zip"],
                            encoding="latin-1", ints=("user", "age", "occupation"))
    _check_unique(users, "user", p)
    _first_bad(~users["gender"].isin(["M", "F"]).to_numpy(), users, p, "gender",
               lambda v: f"gender {v!r} is not M or F")
    _first_bad(~users["age"].isin(ML1M_AGE_GROUPS).to_numpy(), users, p, "age",
               lambda v: f"age code {v} is not one of {ML1M_AGE_GROUPS}")
    _first_bad(~users["occupation"].between(0, 20).to_numpy(), users, p, "occupation",
               lambda v: f"occupation code {v} is outside 0–20")
    users = users.drop(columns="zip")

    p = paths["movies"]
    movies = _read_delimited(p, sep="::", columns=["item", "title", "genres"], encoding="latin-1",
                             ints=("item",))
    _check_unique(movies, "item", p)

    p = paths["extrainfos"]
    cols = ["item", "imdb_title", "year", "rate", "released", "genre", "director", "writer", "actors",
            "plot", "poster"]
    extra = _read_delimited(p, sep="::", columns=cols, encoding="utf-8", ints=("item",))
    _check_unique(extra, "item", p)
    year = extra["year"].where(extra["year"] != "N/A")
    _first_bad((year.notna() & ~year.str.fullmatch(r"\d{4}").fillna(False)).to_numpy(), extra, p, "year",
               lambda v: f"year {v!r} is neither a 4-digit year nor N/A")
    not_in_movies = int((~extra["item"].isin(movies["item"])).sum())
    if not_in_movies:
        notes.append(f"movies_extrainfos.dat: {not_in_movies} item ids are not in movies.dat (ignored)")
        extra = extra[extra["item"].isin(movies["item"])]
    items = pd.DataFrame({
        "item": extra["item"],
        "rate": extra["rate"].where(extra["rate"] != "N/A"),
        "year": year.astype("Int64"),
        "genre": _split_list(extra["genre"]),
        "director": _split_list(extra["director"], strip_parentheses=True),
    }).merge(movies[["item", "title"]], on="item", how="left")

    p = paths["ratings"]
    ratings = _ml_ratings(p, sep="::", scale=(1, 5))
    _check_known(ratings, "user", users["user"], p, "users.dat")
    _check_known(ratings, "item", movies["item"], p, "movies.dat")
    n_file = len(ratings)
    ratings = _drop_duplicate_ml_ratings(ratings, p, notes, duplicate_ratings)

    dup = ratings["item"].isin(list(ML1M_DUPLICATE_MOVIES)).to_numpy()
    if merge_duplicate_movies:
        ratings["item"] = ratings["item"].replace(ML1M_DUPLICATE_MOVIES)
        merged = ratings[ratings["item"].isin(list(ML1M_DUPLICATE_MOVIES.values())).to_numpy()]
        both = int(merged.duplicated(["user", "item"]).sum())
        notes.append(f"merge_duplicate_movies=True: {int(dup.sum())} ratings of movies 860/1795 mapped to "
                     f"811/1741 (MeLU's rule); {both} users rated both copies and keep both ratings")
    else:
        ratings = ratings[~dup]
        notes.append(f"merge_duplicate_movies=False: {int(dup.sum())} ratings of movies 860/1795 dropped "
                     f"(no extrainfos profile)")
    no_profile = ~ratings["item"].isin(items["item"]).to_numpy()
    if no_profile.any():
        notes.append(f"{int(no_profile.sum())} ratings of {ratings['item'][no_profile].nunique()} other "
                     f"movies without an extrainfos profile dropped")
        ratings = ratings[~no_profile]

    files = _files(paths, provenance, {"ratings": n_file, "users": len(users), "movies": len(movies),
                                      "extrainfos": len(extra)})
    return RawTables(
        name="movielens-1m",
        users=users.reset_index(drop=True),
        items=items.sort_values("item").reset_index(drop=True),
        ratings=_ratings_frame(ratings["user"], ratings["item"], ratings["rating"], ratings["timestamp"]),
        user_fields=["gender", "age", "occupation"],
        item_categorical=["rate", "year"],
        item_multi=["genre", "director"],
        rating_min=1.0, rating_max=5.0, time_based=True, release=release, files=files, notes=notes,
    )


def _ratings_frame(user, item, rating, order) -> pd.DataFrame:
    return pd.DataFrame({
        "user": np.asarray(user, dtype=np.int64),
        "item": np.asarray(item, dtype=np.int64),
        "rating": np.asarray(rating, dtype=np.float64),
        "order": np.asarray(order, dtype=np.int64),
    })


def ml1m_age_group(age) -> np.ndarray:
    """Ages in years → ML-1M's age codes (1: under 18, 18: 18–24, …, 56: 56+)."""
    edges = np.asarray(ML1M_AGE_GROUPS[1:])
    return np.asarray(ML1M_AGE_GROUPS)[np.searchsorted(edges, np.asarray(age), side="right")]


def parse_movielens_100k(paths: Mapping[str, os.PathLike], *, duplicate_ratings: DuplicateRatings = "last",
                         release: str = "unverified",
                         provenance: Mapping[str, dict] | None = None) -> RawTables:
    """MovieLens 100K. User: gender, age bucketed to ML-1M's groups, occupation; item: year (of the
    release date; empty → unknown) and genre (multi, from the 19 flags; the "unknown" flag → no genre).
    ``duplicate_ratings``: a user's repeated ratings of one movie (see the module docstring)."""
    _require(paths, ("data", "user", "item", "genre", "occupation"), "movielens-100k")

    p = paths["genre"]
    genres = _read_delimited(p, sep="|", columns=["name", "index"], encoding="latin-1", ints=("index",))
    _first_bad((genres["index"] != np.arange(len(genres))).to_numpy(), genres, p, "index",
               lambda v: f"genre index {v} out of order; expected 0, 1, 2, …")
    p = paths["occupation"]
    text = _decode(_read_bytes(p), p, "latin-1")
    occupations = [o.strip() for o in text.splitlines() if o.strip()]
    if not occupations:
        raise ParseError("file is empty", file=p, fix=_REDOWNLOAD)

    p = paths["user"]
    users = _read_delimited(p, sep="|", columns=["user", "age", "gender", "occupation", "zip"],
                            encoding="latin-1", ints=("user", "age"))
    _check_unique(users, "user", p)
    _first_bad(~users["gender"].isin(["M", "F"]).to_numpy(), users, p, "gender",
               lambda v: f"gender {v!r} is not M or F")
    _first_bad(~users["age"].between(1, 120).to_numpy(), users, p, "age", lambda v: f"age {v} is not 1–120")
    _first_bad(~users["occupation"].isin(occupations).to_numpy(), users, p, "occupation",
               lambda v: f"occupation {v!r} is not listed in u.occupation")
    users = users.assign(age=ml1m_age_group(users["age"]))[["user", "gender", "age", "occupation"]]

    p = paths["item"]
    flags = list(genres["name"])
    items = _read_delimited(p, sep="|", encoding="latin-1", ints=("item", *flags),
                            columns=["item", "title", "release_date", "video_date", "url", *flags])
    _check_unique(items, "item", p)
    for g in flags:
        _first_bad(~items[g].isin([0, 1]).to_numpy(), items, p, g, lambda v: f"genre flag {v} is not 0 or 1")
    date = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce")
    _first_bad((date.isna() & (items["release_date"] != "")).to_numpy(), items, p, "release_date",
               lambda v: f"release date {v!r} is not DD-Mon-YYYY")
    flag = items[flags].to_numpy(copy=True).astype(bool)
    names = np.asarray(flags, dtype=object)
    keep = names != "unknown"
    genre = [tuple(names[keep][row[keep]]) for row in flag]  # 1,682 items: a loop is fine here
    items = pd.DataFrame({"item": items["item"], "title": items["title"],
                          "year": date.dt.year.astype("Int64"), "genre": genre})

    p = paths["data"]
    ratings = _ml_ratings(p, sep="\t", scale=(1, 5))
    _check_known(ratings, "user", users["user"], p, "u.user")
    _check_known(ratings, "item", items["item"], p, "u.item")
    n_file = len(ratings)
    notes: list[str] = []
    ratings = _drop_duplicate_ml_ratings(ratings, p, notes, duplicate_ratings)

    files = _files(paths, provenance, {"data": n_file, "user": len(users), "item": len(items),
                                      "genre": len(genres), "occupation": len(occupations)})
    return RawTables(
        name="movielens-100k",
        users=users.sort_values("user").reset_index(drop=True),
        items=items.sort_values("item").reset_index(drop=True),
        ratings=_ratings_frame(ratings["user"], ratings["item"], ratings["rating"], ratings["timestamp"]),
        user_fields=["gender", "age", "occupation"],
        item_categorical=["year"],
        item_multi=["genre"],
        rating_min=1.0, rating_max=5.0, time_based=True, release=release, files=files, notes=notes,
    )


# ---------------------------------------------------------------------------------- Book-Crossing

_BX_COLUMNS = {
    "users": ("User-ID", "Location", "Age"),
    "books": ("ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher"),
    "ratings": ("User-ID", "ISBN", "Book-Rating"),
}


_BX_DIALECT = {"delimiter": ";", "quotechar": '"', "escapechar": "\\", "doublequote": False, "strict": True}


def _read_bx(path, required: tuple[str, ...]) -> tuple[dict[str, pd.Series], Callable[[int], int]]:
    """One BX-CSV-Dump file → its required columns (str Series, row k = record k) and a function
    mapping a record index to its physical line.

    Format: ``;``-separated, ``"``-quoted (``NULL`` bare), latin-1, header row, ``\\"`` escapes and no
    doubled quotes; quoted fields may contain line breaks (user 275081's location does). pandas' C
    reader with exactly this csv dialect does the work (5× faster than ``csv.reader`` + transposing);
    ``csv.reader`` re-reads the file only to diagnose a bad one, where it gives exact line numbers.
    """
    text = _decode(_read_bytes(path), path, "latin-1").rstrip("\r\n")
    if not text:
        raise ParseError("file is empty", file=path, fix=_REDOWNLOAD)
    _check_separator(text[:text.find("\n")] if "\n" in text else text, ";", path, required)
    try:
        header = next(csv.reader(io.StringIO(text, newline=""), **_BX_DIALECT))
    except csv.Error as e:
        raise ParseError(f"malformed CSV header ({e})", file=path, line=1, fix=_REDOWNLOAD) from e
    missing = [c for c in required if c not in header]
    if missing:
        raise ParseError(f"missing column(s) {missing} in the header; found {header}", file=path, line=1,
                         fix=f"use the original BX-CSV-Dump file, whose header has {list(required)}")

    def line_of(k: int) -> int:  # error path only: re-read up to record k
        r = csv.reader(io.StringIO(text, newline=""), **_BX_DIALECT)
        for i, _ in enumerate(r):
            if i == k + 1:
                break
        return r.line_num

    try:
        df = pd.read_csv(io.StringIO(text, newline=""), sep=";", quotechar='"', escapechar="\\",
                         doublequote=False, dtype=str, na_filter=False, index_col=False, engine="c")
    except pd.errors.ParserError:
        df = None
    if df is None or (df.iloc[:, -1] == "").any():  # a short row leaves its last field empty
        reader = csv.reader(io.StringIO(text, newline=""), **_BX_DIALECT)
        try:
            rows = list(reader)[1:]
        except csv.Error as e:
            raise ParseError(f"malformed CSV ({e})", file=path, line=reader.line_num, fix=_REDOWNLOAD) from e
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        bad = np.flatnonzero(lengths != len(header))
        if len(bad):
            k = int(bad[0])
            raise ParseError(f"expected {len(header)} ';'-separated fields ({', '.join(header)}), "
                             f"found {lengths[k]}", file=path, line=line_of(k), fix=_REDOWNLOAD)
        df = pd.DataFrame(rows, columns=header, dtype=str)
    if df.empty:
        raise ParseError("no records after the header", file=path, fix=_REDOWNLOAD)
    return {c: df[c] for c in required}, line_of


def parse_book_crossing(paths: Mapping[str, os.PathLike], *, year_range: tuple[int, int] = (1500, 2010),
                        age_range: tuple[int, int] = (5, 110), duplicate_ratings: DuplicateRatings = "last",
                        release: str = "unverified",
                        provenance: Mapping[str, dict] | None = None) -> RawTables:
    """Book-Crossing (BX-CSV-Dump), cleaned as MAMO's appendix A.1 describes.

    * ratings: explicit ratings 1–10 only (implicit 0s dropped); ``order`` = row position in the
      ratings file (the dump has no times, so MAMO takes file order as time);
    * users: age kept in ``age_range`` (5–110); ``NULL`` or out of range → no usable profile → the
      user and their ratings are dropped; location reduced to its country (last comma-separated
      part, stripped, lower-cased); empty or ``n/a`` → dropped;
    * books: item id = 1-based row of the book in BX-Books.csv (the ISBN is kept as a column);
      features year, author, publisher; a year outside ``year_range`` (the dump uses 0 for unknown
      and has a few impossible years; the paper reports 1500–2010) becomes *unknown*, the book is
      kept; ``&amp;`` is unescaped in author and publisher;
    * ratings by users without a usable profile (or absent from BX-Users.csv) or of ISBNs missing
      from BX-Books.csv (118,605 rows of the real dump name one) are dropped and counted in ``notes``;
    * ``duplicate_ratings``: rows repeating a (user, ISBN) pair; ``"last"`` keeps the later row (before
      implicit 0s are dropped) and warns, ``"keep"`` keeps them all (see the module docstring).
    """
    _require(paths, ("ratings", "books", "users"), "book-crossing")
    notes: list[str] = []

    p = paths["users"]
    u, line_of = _read_bx(p, _BX_COLUMNS["users"])
    n_users_file = len(u["User-ID"])
    uid = _int_column(u["User-ID"], p, "User-ID", line_of)
    _first_bad(uid.duplicated().to_numpy(), pd.DataFrame({"User-ID": uid}), p, "User-ID",
               lambda v: f"duplicate user id {v}", line_of=line_of)
    known_age = (u["Age"] != "NULL").to_numpy()
    age = pd.Series(0, index=u["Age"].index, dtype="int64")
    age[known_age] = _int_column(u["Age"][known_age], p, "Age",
                                 lambda k: line_of(int(np.flatnonzero(known_age)[k])))
    country = _per_unique(u["Location"], lambda loc: loc.str.rsplit(",", n=1).str[-1].str.strip()
                          .str.strip('"').str.strip().str.lower())
    ok_age = known_age & age.between(*age_range).to_numpy()
    ok_country = ~country.isin(["", "n/a"]).to_numpy()
    keep = ok_age & ok_country
    notes.append(f"BX-Users: {n_users_file} users; {int((~ok_age).sum())} without an age in "
                 f"{age_range[0]}–{age_range[1]} (NULL: {int((~known_age).sum())}), "
                 f"{int((~ok_country).sum())} without a country; {int(keep.sum())} usable profiles kept")
    users = pd.DataFrame({"user": uid, "age": age, "country": country})[keep]

    p = paths["books"]
    b, line_of = _read_bx(p, _BX_COLUMNS["books"])
    isbn = b["ISBN"]
    n_books_file = len(isbn)
    dup = isbn.duplicated().to_numpy()
    if dup.any():
        notes.append(f"BX-Books: {int(dup.sum())} repeated ISBNs; the first row of each kept")
    year_num = pd.to_numeric(b["Year-Of-Publication"], errors="coerce")
    in_range = year_num.between(*year_range) & (year_num % 1 == 0)
    notes.append(f"BX-Books: {n_books_file} books; {int((~in_range).sum())} years outside "
                 f"{year_range[0]}–{year_range[1]} or not numbers (0: {int((year_num == 0).sum())}) "
                 f"set to unknown")

    def text_field(values: pd.Series) -> pd.Series:
        def clean(s: pd.Series) -> pd.Series:
            s = s.str.replace("&amp;", "&", regex=False).str.strip()
            return s.where(s != "")
        return _per_unique(values, clean)

    books = pd.DataFrame({
        "item": np.arange(1, n_books_file + 1, dtype=np.int64),
        "isbn": isbn,
        "title": b["Book-Title"],
        "year": year_num.where(in_range).astype("Int64"),
        "author": text_field(b["Book-Author"]),
        "publisher": text_field(b["Publisher"]),
    })[~dup]
    profile = books[["year", "author", "publisher"]].notna().any(axis=1).to_numpy()
    if not profile.all():
        notes.append(f"BX-Books: {int((~profile).sum())} books with no year, author or publisher dropped")
        books = books[profile]

    p = paths["ratings"]
    r, line_of = _read_bx(p, _BX_COLUMNS["ratings"])
    n_ratings_file = len(r["ISBN"])
    ruser = _int_column(r["User-ID"], p, "User-ID", line_of)
    rating = _int_column(r["Book-Rating"], p, "Book-Rating", line_of)
    _first_bad(~rating.between(0, 10).to_numpy(), pd.DataFrame({"Book-Rating": rating}), p, "Book-Rating",
               lambda v: f"rating {v} is outside the scale 0–10", line_of=line_of)
    order = np.arange(n_ratings_file, dtype=np.int64)
    last = _keep_last_rating(ruser.to_numpy(), r["ISBN"].to_numpy(), order, p, notes, duplicate_ratings)
    explicit = (rating > 0).to_numpy() & (True if last is None else last)
    known_user = ruser.isin(users["user"]).to_numpy()
    item = r["ISBN"].map(pd.Series(books["item"].to_numpy(), index=books["isbn"].to_numpy()))
    known_item = item.notna().to_numpy()
    keep = explicit & known_user & known_item
    notes.append(
        f"BX-Book-Ratings: {n_ratings_file} ratings, {int(explicit.sum())} explicit (1–10; "
        f"{int((~explicit).sum())} implicit 0s dropped); of the explicit ones "
        f"{int((explicit & ~known_user).sum())} by users without a usable profile and "
        f"{int((explicit & known_user & ~known_item).sum())} of ISBNs missing from BX-Books.csv dropped; "
        f"{int(keep.sum())} kept")

    files = _files(paths, provenance, {"ratings": n_ratings_file, "books": n_books_file,
                                      "users": n_users_file})
    return RawTables(
        name="book-crossing",
        users=users.sort_values("user").reset_index(drop=True),
        items=books.reset_index(drop=True),
        ratings=_ratings_frame(ruser[keep], item[keep].astype("int64"), rating[keep], order[keep]),
        user_fields=["age", "country"],
        item_categorical=["year", "author", "publisher"],
        item_multi=[],
        rating_min=1.0, rating_max=10.0, time_based=False, release=release, files=files, notes=notes,
    )


PARSERS: dict[str, Callable[..., RawTables]] = {
    "movielens-1m": parse_movielens_1m,
    "movielens-100k": parse_movielens_100k,
    "book-crossing": parse_book_crossing,
}
"""Dataset name → parser (each takes ``paths`` plus keyword options)."""
