"""MAMO's cold-start protocol, the loader and its cache, on the hand-written fixtures.

Expected values are worked out by hand from tests/fixtures (see the comments in each test). The
fixtures are tiny, so most tests use a scaled-down protocol: keep 4 ratings per user, support = the
first 2, query = the last 1 (position 2 is unused), items with ≤ 3 ratings cold.

ML-1M fixture, per user (time order; T0 = 2000-12-03 00:00 UTC = 975801600):

=====  ==========================  =============================================
user   first rating                first 4 items (position 0..3)
=====  ==========================  =============================================
1      T0 - 21600  (warm)          1, 2, 3, 4      (file rows out of time order)
2      T0 exactly  (cold)          1, 4, 2, 3
3      T0 - 1      (warm)          2, 811, 1, 4    (811 and 1 tie in time: file row decides)
4      3 ratings → dropped
5      T0 + 98400  (cold)          860→811, 3, 1, 2
6      T0 - 801600 (warm)          1, 2, 3, 811
=====  ==========================  =============================================

Item counts in the trimmed table: 1: 5, 2: 5, 3: 4, 4: 3, 811: 3.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_parsers import BX_FILES, FIXTURES, ML1M_FILES, ML100K_FILES, paths

from mamo_lite.data import SCENARIOS, ColdStartData, Protocol, TaskBatch, load, registry
from mamo_lite.data import dataset as dataset_module
from mamo_lite.data.errors import DataError
from mamo_lite.data.parsers import (
    PARSERS,
    ParseError,
    parse_book_crossing,
    parse_movielens_1m,
    parse_movielens_100k,
)

# The Book-Crossing fixture rates ISBN 0000000002 twice for user 10 (an implicit 0, then an 8): the
# parser keeps the later row and warns; test_bad_inputs_data checks that warning.
pytestmark = pytest.mark.filterwarnings("ignore:.*BX-Book-Ratings.*duplicate rating:UserWarning")

SMALL = Protocol(min_ratings=4, n_keep=4, n_support=2, n_query=1, item_cold_max=3, val_fraction=0.25)
WC, CW = SCENARIOS.index("W-C"), SCENARIOS.index("C-W")


def small(**changes) -> Protocol:
    """SMALL with some parameters changed."""
    return Protocol(**{**SMALL.to_dict(), **changes})


def ml1m(protocol: Protocol = SMALL, seed: int = 0, **options) -> ColdStartData:
    return ColdStartData.from_raw(parse_movielens_1m(paths(ML1M_FILES), **options), protocol, seed)


def by_user(data: ColdStartData, which: str, col: str = "item") -> dict[int, list]:
    r = data.ratings[data.ratings["set"] == which]
    return {int(u): g[col].tolist() for u, g in r.groupby("user")}


# ------------------------------------------------------------------------------------- trimming

def test_trim_keeps_first_ratings_in_time_and_splits_support_query():
    data = ml1m()
    assert data.users["user"].tolist() == [1, 2, 3, 5, 6]  # user 4 has 3 < 4 ratings
    assert by_user(data, "support") == {1: [1, 2], 2: [1, 4], 3: [2, 811], 5: [811, 3], 6: [1, 2]}
    assert by_user(data, "query") == {1: [4], 2: [3], 3: [4], 5: [2], 6: [811]}
    assert by_user(data, "support", "position") == {u: [0, 1] for u in (1, 2, 3, 5, 6)}
    assert by_user(data, "query", "position") == {u: [3] for u in (1, 2, 3, 5, 6)}
    assert by_user(data, "support", "rating")[1] == [5.0, 3.0]
    c = data.provenance["counts"]
    assert (c["ratings_trimmed"], c["ratings_tasks"], c["users_kept"]) == (20, 15, 5)
    # items are counted in the trimmed table (position 2 included), not in the task table
    assert data.items.set_index("item")["n_ratings"].to_dict() == {1: 5, 2: 5, 3: 4, 4: 3, 811: 3}


def test_duplicate_movies_not_merged():
    data = ml1m(merge_duplicate_movies=False)
    assert by_user(data, "support")[5] == [3, 1] and by_user(data, "query")[5] == [4]
    assert data.items.set_index("item")["n_ratings"].to_dict() == {1: 5, 2: 5, 3: 4, 4: 4, 811: 2}


# -------------------------------------------------------------------------------- warm/cold users

def cold_users(data: ColdStartData) -> list[int]:
    return data.users.loc[data.users["cold"], "user"].tolist()


def test_cold_users_by_date():
    data = ml1m()
    assert data.protocol.user_split == "date"  # ML-1M default
    assert cold_users(data) == [2, 5]  # first rating on or after 2000-12-03 00:00 UTC
    assert data.provenance["split_time_utc"] == "2000-12-03T00:00:00+00:00"
    assert cold_users(ml1m(small(split_time="2000-12-03T00:00:01"))) == [5]
    # an explicit offset is honoured: 01:00 at UTC+1 is T0 again
    assert cold_users(ml1m(small(split_time="2000-12-03T01:00:00+01:00"))) == [2, 5]


def test_cold_users_by_quantile():
    # all 25 parsed ratings sorted by time: position round(0.8 * 25) = 20 is user 5's first, 975900000
    data = ml1m(small(user_split="quantile"))
    assert data.provenance["split_time_unix"] == 975900000
    assert cold_users(data) == [5]
    assert "q=0.8" in data.summary().loc["cold-user rule", "value"]
    # q = 0.5: position round(12.5) = 12 (banker's rounding, as Python's round) is 975801599, user 3's first
    data = ml1m(small(user_split="quantile", split_quantile=0.5))
    assert data.provenance["split_time_unix"] == 975801599 and cold_users(data) == [2, 3, 5]


def test_cold_users_by_id_on_book_crossing():
    raw = parse_book_crossing(paths(BX_FILES))
    data = ColdStartData.from_raw(raw, small(cold_user_fraction=0.4))
    assert data.protocol.user_split == "id" and data.users["user"].tolist() == [10, 14, 16, 17, 18]
    assert cold_users(data) == [17, 18]  # the last 40 % of the kept users' ids
    assert data.provenance["split_time_utc"] is None
    with pytest.raises(ValueError, match="user_split='date' needs rating times.*use user_split='id'"):
        ColdStartData.from_raw(raw, small(user_split="date"))


def test_ml100k_defaults_to_quantile():
    raw = parse_movielens_100k(paths(ML100K_FILES), duplicate_ratings="keep")  # see test_ml100k_tables
    data = ColdStartData.from_raw(raw, small(split_quantile=0.5))
    assert data.protocol.user_split == "quantile"
    # 15 ratings; position round(7.5) = 8 is user 3's first rating (890000000)
    assert data.provenance["split_time_unix"] == 890000000 and cold_users(data) == [3]
    assert data.users["user"].tolist() == [1, 2, 3]


# -------------------------------------------------------------------------------- warm/cold items

@pytest.mark.parametrize(("item_cold_max", "cold"),
                         [(3, [4, 811]), (4, [3, 4, 811]), (2, []), (5, [1, 2, 3, 4, 811])])
def test_cold_items_threshold(item_cold_max, cold):
    data = ml1m(small(item_cold_max=item_cold_max))
    assert data.items.loc[data.items["cold"], "item"].tolist() == cold


def test_paper_text_rule_is_item_cold_max_minus_one():
    # the paper's "< 4" is item_cold_max=3: item 3 (4 ratings) is warm; the code's "≤ 4" makes it cold
    lt = ml1m(small(item_cold_max=3)).items.set_index("item")["cold"]
    le = ml1m(small(item_cold_max=4)).items.set_index("item")["cold"]
    assert not lt[3] and le[3]


def test_item_cold_defaults():
    assert ml1m(small(item_cold_max=None)).protocol.item_cold_max == 10
    bx = ColdStartData.from_raw(parse_book_crossing(paths(BX_FILES)), small(item_cold_max=None))
    assert bx.protocol.item_cold_max == 5


# ------------------------------------------------------------------------------------ scenarios

def test_scenario_labels():
    data = ml1m()  # cold users 2, 5; cold items 4, 811
    q = data.ratings[data.ratings["set"] == "query"].set_index("user")
    assert q["scenario"].to_dict() == {1: WC, 2: CW, 3: WC, 5: CW, 6: WC}
    assert (data.ratings["scenario"] == 2 * data.ratings["user_cold"] + data.ratings["item_cold"]).all()
    s = data.summary()["value"]
    assert [s[f"query ratings {name}"] for name in SCENARIOS] == [0, 3, 2, 0]


def test_book_crossing_keeps_file_order_and_labels():
    data = ColdStartData.from_raw(parse_book_crossing(paths(BX_FILES)),
                                  small(cold_user_fraction=0.4))
    assert by_user(data, "support") == {10: [1, 2], 14: [1, 2], 16: [1, 2], 17: [4, 3], 18: [5, 1]}
    assert by_user(data, "query") == {10: [4], 14: [5], 16: [4], 17: [1], 18: [3]}
    q = data.ratings[data.ratings["set"] == "query"].set_index("user")["scenario"]
    assert q.to_dict() == {10: WC, 14: WC, 16: WC, 17: CW, 18: CW}
    assert data.vocabs["country"] == ("australia", "canada", "italy", "spain", "usa")
    assert data.vocabs["year"] == (1999, 2001)
    assert data.items.set_index("item").loc[2, "year_idx"] == 0  # year 0 → unknown


# ------------------------------------------------------------------------------------- encoding

def test_vocabularies_sorted_with_zero_reserved():
    data = ml1m()
    assert data.vocabs["gender"] == ("F", "M")
    assert data.vocabs["age"] == (1, 25, 50, 56)  # kept users only: user 4's 45 is absent
    assert data.vocabs["occupation"] == (9, 10, 15, 16, 20)
    assert data.vocabs["rate"] == ("G", "PG", "R", "UNRATED")
    assert data.vocabs["year"] == (1994, 1995, 1996)
    assert data.vocabs["genre"] == ("Adventure", "Animation", "Comedy", "Drama", "Family", "Fantasy")
    assert data.vocabs["director"] == ("Ann Director", "Bob Director", "Cid Helper", "Dee Director")
    users = data.users.set_index("user")
    assert users["gender_idx"].tolist() == [1, 2, 2, 1, 1]
    assert users["age_idx"].tolist() == [1, 4, 2, 2, 3]
    items = data.items.set_index("item")
    assert items.loc[3, ["rate_idx", "year_idx"]].tolist() == [0, 0]  # N/A → unknown
    assert items["genre_idx"].to_dict() == {1: (2, 3, 0), 2: (1, 5, 6), 3: (0, 0, 0), 4: (4, 0, 0),
                                            811: (3, 0, 0)}
    assert items["director_idx"].to_dict() == {1: (1, 0), 2: (2, 3), 3: (0, 0), 4: (1, 0), 811: (4, 0)}
    sizes = {f.name: f.vocab_size for f in (*data.spec.user_fields, *data.spec.item_fields)}
    assert sizes == {"gender": 3, "age": 5, "occupation": 6, "rate": 5, "year": 4, "genre": 7, "director": 5}
    assert [f.kind for f in data.spec.item_fields] == ["categorical", "categorical", "multi", "multi"]


# -------------------------------------------------------------------------------------- splits

def test_split_partitions_users():
    data = ml1m()
    s = data.splits
    # test: round(0.2 * 5) = 1 user; validation: round(0.25 * 4) = 1 of the other 4
    assert [len(s[k]) for k in ("train", "val", "test")] == [3, 1, 1]
    all_ids = np.concatenate([s["train"], s["val"], s["test"]])
    assert sorted(all_ids.tolist()) == [1, 2, 3, 5, 6]
    for k, ids in s.items():
        assert (np.sort(ids) == ids).all()
        assert set(data.ratings.loc[data.ratings["user"].isin(ids), "split"]) == {k}


def test_split_is_seeded():
    a, b, c = (load("synthetic", seed=s, cache=False) for s in (0, 0, 1))
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(a.splits[k], b.splits[k])
    assert not np.array_equal(a.splits["test"], c.splits["test"])
    assert len(a.splits["test"]) == round(0.2 * len(a.users))
    assert len(a.splits["val"]) == round(0.1 * (len(a.users) - len(a.splits["test"])))
    assert not set(a.splits["train"]) & set(a.splits["test"])
    assert not set(a.splits["val"]) & (set(a.splits["test"]) | set(a.splits["train"]))


# ---------------------------------------------------------------------------------------- tasks

def test_task_batch_shapes_and_contents():
    data = ml1m()
    b = data.tasks("all")
    assert isinstance(b, TaskBatch) and len(b) == 5 and b.device == torch.device("cpu")
    assert b.user_ids.tolist() == [1, 2, 3, 5, 6]
    assert b.user_x.shape == (5, 3) and b.user_x.dtype == torch.long
    assert b.support_x["cat"].shape == (5, 2, 2) and b.query_x["cat"].shape == (5, 1, 2)
    assert b.support_x["genre"].shape == (5, 2, 3) and b.support_x["director"].shape == (5, 2, 2)
    assert b.support_y.dtype == torch.float32 and b.support_mask.all() and b.query_mask.all()
    assert b.support_item_ids[2].tolist() == [2, 811] and b.query_item_ids[:, 0].tolist() == [4, 3, 4, 2, 811]
    assert b.support_y[0].tolist() == [5.0, 3.0] and b.query_y[0].tolist() == [2.0]
    assert b.support_x["genre"][0, 0].tolist() == [2, 3, 0]  # item 1: Animation, Comedy
    assert b.support_x["cat"][2, 1].tolist() == [4, 1]  # item 811: UNRATED, 1994
    assert b.query_scenario[:, 0].tolist() == [WC, CW, WC, CW, WC]
    assert b.user_cold.tolist() == [False, True, False, True, False]
    assert b.user_x[1].tolist() == [2, 4, 4]  # user 2: M, 56, occupation 16
    assert data.tasks("all") is b  # cached per split
    train = data.tasks("train")
    assert train.user_ids.tolist() == data.splits["train"].tolist()
    with pytest.raises(ValueError, match="split must be one of"):
        data.tasks("validation")


def test_empty_split_gives_empty_batch():
    data = ml1m(small(val_fraction=0.0))
    b = data.tasks("val")
    assert len(b) == 0 and b.support_x["cat"].shape == (0, 2, 2) and b.query_y.shape == (0, 1)


# ------------------------------------------------------------------------------------ summary

def test_summary():
    s = ml1m().summary()
    assert s.index[0] == "release" and s["value"].iloc[0] == "unverified"
    v = s["value"]
    assert (v["users in files"], v["items in files"], v["ratings in files"]) == (6, 6, 25)
    assert (v["users after cleaning"], v["items after cleaning"], v["ratings after cleaning"]) == (6, 5, 25)
    assert (v["users kept (≥ 4 ratings)"], v["warm users"], v["cold users"]) == (5, 3, 2)
    assert (v["warm items"], v["cold items"]) == (3, 2)
    assert (v["train users"], v["val users"], v["test users"]) == (3, 1, 1)


# --------------------------------------------------------------------------------- validation

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_support": 16}, r"n_support \+ Protocol.n_query must be <= n_keep: got 16 \+ 5 = 21 > 20"),
    ({"n_query": 10}, r"got 15 \+ 10 = 25 > 20"),
    ({"n_support": -1}, r"Protocol.n_support must be >= 1, got -1"),
    ({"n_support": 0}, r"Protocol.n_support must be >= 1, got 0"),
    ({"n_query": 0}, r"Protocol.n_query must be >= 1"),
    ({"n_support": 2.5}, r"Protocol.n_support must be an integer, got 2.5"),
    ({"n_query": True}, r"Protocol.n_query must be an integer"),
    ({"n_keep": 25}, r"Protocol.n_keep must be <= min_ratings .*n_keep=25 > min_ratings=20"),
    ({"min_ratings": 0}, r"Protocol.min_ratings must be >= 1"),
    ({"item_cold_max": -1}, r"Protocol.item_cold_max must be >= 0"),
    ({"test_fraction": 1.0}, r"Protocol.test_fraction must be a fraction in \(0, 1\), got 1.0"),
    ({"test_fraction": 0}, r"Protocol.test_fraction must be a fraction in \(0, 1\)"),
    ({"val_fraction": 1.5}, r"Protocol.val_fraction must be a fraction in \[0, 1\), got 1.5"),
    ({"val_fraction": -0.1}, r"Protocol.val_fraction must be a fraction in \[0, 1\)"),
    ({"split_quantile": 1}, r"Protocol.split_quantile must be a fraction in \(0, 1\)"),
    ({"split_quantile": float("nan")}, r"Protocol.split_quantile must be a fraction"),
    ({"cold_user_fraction": 0.0}, r"Protocol.cold_user_fraction must be a fraction in \(0, 1\)"),
    ({"user_split": "random"}, r"Protocol.user_split must be 'date', 'quantile', 'id' or None, got 'random'"),
    ({"split_time": "the third of December"}, r"Protocol.split_time must be a date"),
    ({"split_time": 975801600}, r"Protocol.split_time must be a date such as '2000-12-03'"),
])
def test_nonsense_protocol_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Protocol(**kwargs)


def test_protocol_dict_round_trip_and_unknown_keys():
    p = Protocol(n_support=10, item_cold_max=9)
    assert Protocol.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match=r"unknown Protocol parameter\(s\) \['n_shots'\]"):
        Protocol.from_dict({"n_shots": 5})


def test_empty_result_after_filtering():
    with pytest.raises(DataError, match=r"no user has at least Protocol.min_ratings=30 ratings "
                                        r"\(the most any user has is 5\)"):
        ml1m(Protocol(min_ratings=30))


def test_too_few_users_for_a_split():
    raw = parse_book_crossing(paths(BX_FILES))  # only user 14 has 5 usable ratings
    with pytest.raises(DataError, match=r"kept 1 user\(s\); a train/test split needs at least 2"):
        ColdStartData.from_raw(raw, small(min_ratings=5))


# --------------------------------------------------------------------------------- load + cache

@pytest.fixture
def fixture_registry(monkeypatch, tmp_path):
    """``registry.ensure_files`` serving the fixtures (or a corrupted copy under ``tmp_path/data``)."""
    files = {"movielens-1m": ML1M_FILES, "movielens-100k": ML100K_FILES, "book-crossing": BX_FILES}

    def ensure_files(name, data_dir=None, *, download=True, verify=True):
        root = Path(data_dir) if data_dir else FIXTURES
        p = paths(files[name], root)
        sha = {k: hashlib.sha256(v.read_bytes()).hexdigest() for k, v in p.items()}
        return registry.RawFiles(name=name, root=root, paths=p, sha256=sha, release="unverified",
                                 nbytes={k: v.stat().st_size for k, v in p.items()})

    monkeypatch.setattr(registry, "ensure_files", ensure_files)
    return tmp_path / "cache"


def cache_files(cache: Path) -> list[str]:
    d = cache / "processed"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_load_caches_and_reuses(fixture_registry, monkeypatch):
    cache = fixture_registry
    a = load("ml-1m", protocol=SMALL, cache=cache)
    assert a.name == "movielens-1m" and a.provenance["files"]["ratings"]["sha256"]
    names = cache_files(cache)
    assert len(names) == 1 and names[0].startswith("movielens-1m-") and names[0].endswith(".npz")

    def broken(*args, **kwargs):
        raise AssertionError("a cache hit must not parse the raw files")

    with monkeypatch.context() as m:
        m.setitem(PARSERS, "movielens-1m", broken)
        b = load("movielens-1m", protocol=SMALL.to_dict(), cache=cache)
    assert b.provenance == a.provenance and b.spec == a.spec and b.protocol == a.protocol
    assert b.ratings.equals(a.ratings) and b.users.equals(a.users)
    assert torch.equal(b.tasks("all").support_x["genre"], a.tasks("all").support_x["genre"])
    # a different seed, protocol or parser option is another cache entry
    load("movielens-1m", protocol=SMALL, seed=1, cache=cache)
    load("movielens-1m", protocol=SMALL, cache=cache, merge_duplicate_movies=False)
    assert len(cache_files(cache)) == 3


def test_corrupted_cache_is_rebuilt_with_a_warning(fixture_registry):
    cache = fixture_registry
    a = load("movielens-1m", protocol=SMALL, cache=cache)
    path = cache / "processed" / cache_files(cache)[0]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="unreadable or stale.*rebuilding"):
        b = load("movielens-1m", protocol=SMALL, cache=cache)
    assert b.ratings.equals(a.ratings)
    assert cache_files(cache) == [path.name]
    load("movielens-1m", protocol=SMALL, cache=cache)  # readable again: no warning


def test_failing_load_leaves_no_cache_file(fixture_registry, tmp_path, monkeypatch):
    cache = fixture_registry
    root = tmp_path / "data"
    shutil.copytree(FIXTURES, root)
    (root / "ml-1m/ratings.dat").write_bytes(b"1::1::5::975780000\n1::1\n")
    with pytest.raises(ParseError, match="line 2"):
        load("movielens-1m", root, protocol=SMALL, cache=cache)
    assert cache_files(cache) == []

    def failing_write(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset_module.os, "fsync", failing_write)  # fails before the rename
    with pytest.warns(RuntimeWarning, match="No space left on device.*continuing without the cache"):
        data = load("movielens-1m", protocol=SMALL, cache=cache)  # the cache is optional
    assert data.provenance["counts"]["users_kept"] == 5
    assert cache_files(cache) == []  # neither the target nor the temporary file


def test_load_without_cache_writes_nothing(fixture_registry):
    data = load("movielens-100k", protocol=SMALL, cache=False, duplicate_ratings="keep")
    assert data.provenance["counts"]["users_kept"] == 3
    assert not fixture_registry.exists()


def test_load_rejects_unknown_names_and_options(fixture_registry):
    with pytest.raises(ValueError, match="unknown dataset 'movielens-20m'"):
        load("movielens-20m")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['merge'\]; "
                                        r"valid: \['merge_duplicate_movies', 'duplicate_ratings'\]"):
        load("movielens-1m", protocol=SMALL, cache=False, merge=True)


def test_book_crossing_load(fixture_registry):
    data = load("bx", protocol=small(cold_user_fraction=0.4), cache=fixture_registry)
    assert data.summary().loc["cold-user rule", "value"] == "last 40% of user ids"
    c = data.provenance["counts"]
    assert (c["ratings_in_files"], c["users_kept"]) == (26, 5)
    assert any("21 kept" in n for n in data.provenance["notes"])
