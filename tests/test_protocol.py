"""MAMO's cold-start protocol, GreatMeta's protocol, the loader and its cache, on the hand-written fixtures.

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
from mamo_lite.data.protocol import (
    PROTOCOLS,
    GreatMetaProtocol,
    make_protocol,
    protocol_from_dict,
    split_users_by_ratio,
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


# ------------------------------------------------------------------------- GreatMeta's protocol
# Parsed ratings per user in the ML-1M fixture (860 merged into 811): 1: 5, 2: 4, 3: 4, 4: 3, 5: 5, 6: 4.
# Time order: user 2 rates 1, 4, 2, 3; user 3 rates 2, 811, 1, 4; user 4 rates 1, 2, 3 (5, 4, 3 stars);
# user 6 rates 1, 2, 3, 811.

GM_SMALL = GreatMetaProtocol(min_ratings=3, max_ratings=None, n_query=1, split_ratios=(0.5, 0.2, 0.3))


def gm(protocol: GreatMetaProtocol = GM_SMALL, seed: int = 0) -> ColdStartData:
    return ColdStartData.from_raw(parse_movielens_1m(paths(ML1M_FILES)), protocol, seed)


def test_mamo_protocol_repr_is_the_committed_one():
    """Chapter 1's committed output prints the resolved default Protocol; the GreatMeta option must not change it."""
    assert repr(Protocol().resolved("movielens-1m")) == (
        "Protocol(min_ratings=20, n_keep=20, n_support=15, n_query=5, user_split='date', split_time='2000-12-03', "
        "split_quantile=0.8, cold_user_fraction=0.1, item_cold_max=10, test_fraction=0.2, val_fraction=0.1)")
    assert "kind" not in Protocol().to_dict()  # MAMO's cache keys and provenance stay as they were


def test_greatmeta_defaults_and_named_protocols():
    p = make_protocol("greatmeta")
    assert p == GreatMetaProtocol() and PROTOCOLS["greatmeta"] is GreatMetaProtocol
    assert (p.min_ratings, p.max_ratings, p.n_query, p.split_ratios) == (40, 200, 10, (0.7, 0.1, 0.2))
    assert make_protocol(None) == Protocol() == make_protocol("mamo") == make_protocol(" MAMO ")
    assert make_protocol(GM_SMALL) is GM_SMALL and p.resolved("book-crossing", time_based=False) is p
    assert p.to_dict() == {"kind": "greatmeta", "min_ratings": 40, "max_ratings": 200, "n_query": 10,
                           "split_ratios": (0.7, 0.1, 0.2)}
    assert protocol_from_dict(p.to_dict()) == p and GreatMetaProtocol.from_dict(p.to_dict()) == p
    assert protocol_from_dict(Protocol(n_support=10).to_dict()) == Protocol(n_support=10)
    assert protocol_from_dict({"kind": "mamo", "n_query": 4}) == Protocol(n_query=4)
    # a list (from JSON) becomes the tuple
    assert make_protocol({"kind": "greatmeta", "split_ratios": [0.8, 0.1, 0.1]}).split_ratios == (0.8, 0.1, 0.1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_ratings": 1}, r"GreatMetaProtocol.min_ratings must be >= 2 \(a user needs a support and a query"),
    ({"min_ratings": 40.0}, r"GreatMetaProtocol.min_ratings must be an integer, got 40.0"),
    ({"n_query": 0}, r"GreatMetaProtocol.n_query must be >= 1, got 0"),
    ({"n_query": 40}, r"GreatMetaProtocol.n_query must be < min_ratings .*n_query=40 >= min_ratings=40"),
    ({"max_ratings": 39}, r"GreatMetaProtocol.max_ratings must be >= 40 \(= min_ratings\), or None"),
    ({"split_ratios": (0.7, 0.2, 0.2)}, (r"split_ratios must be three fractions .* summing to 1, e.g. \(0.7, 0.1, "
                                        r"0.2\); got \(0.7, 0.2, 0.2\)")),
    ({"split_ratios": (0.0, 0.5, 0.5)}, r"split_ratios must be three fractions \(train > 0"),
    ({"split_ratios": (0.7, -0.1, 0.4)}, r"split_ratios must be three fractions"),
    ({"split_ratios": (0.8, 0.2)}, r"split_ratios must be three fractions"),
    ({"split_ratios": (0.7, 0.1, float("nan"))}, r"split_ratios must be three fractions"),
    ({"split_ratios": "0.7/0.1/0.2"}, r"split_ratios must be three fractions"),
])
def test_nonsense_greatmeta_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GreatMetaProtocol(**kwargs)


def test_unknown_protocol_names_and_kinds():
    with pytest.raises(ValueError, match=r"unknown protocol 'melu'; choose one of \['greatmeta', 'mamo'\]"):
        make_protocol("melu")
    with pytest.raises(ValueError, match=r"unknown protocol kind 'melu'"):
        protocol_from_dict({"kind": "melu"})
    with pytest.raises(ValueError, match=r"unknown GreatMetaProtocol parameter\(s\) \['n_support'\]"):
        protocol_from_dict({"kind": "greatmeta", "n_support": 5})
    with pytest.raises(ValueError, match=r"protocol must be None, a name .* got int"):
        make_protocol(3)


def test_split_by_ratio_counts_as_recbole():
    # ML-100K under GreatMeta's filter keeps 497 users: floor(49.7) = 49 val, floor(99.4) = 99 test, 349 train
    # (the authors' run has 349 training users); round() would give 50 and 348.
    s = split_users_by_ratio(np.arange(497), (0.7, 0.1, 0.2), seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [349, 49, 99]
    assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(497))
    s = split_users_by_ratio(np.arange(10), (0.7, 0.1, 0.2), seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [7, 1, 2]
    # a positive ratio gets at least one user; a zero one none
    assert [len(v) for v in split_users_by_ratio(np.arange(3), (0.4, 0.3, 0.3), 0).values()] == [1, 1, 1]
    assert [len(v) for v in split_users_by_ratio(np.arange(3), (0.7, 0.0, 0.3), 0).values()] == [2, 0, 1]
    a, b = split_users_by_ratio(np.arange(100), (0.7, 0.1, 0.2), 0), split_users_by_ratio(np.arange(100), (0.7, 0.1, 0.2), 1)
    assert not np.array_equal(a["test"], b["test"])
    with pytest.raises(DataError, match=r"kept 2 user\(s\); split_ratios=\(0.4, 0.3, 0.3\) leaves no training user"):
        split_users_by_ratio(np.arange(2), (0.4, 0.3, 0.3), 0)


def test_greatmeta_keeps_users_in_the_rating_range():
    data = gm(GreatMetaProtocol(min_ratings=4, max_ratings=4, n_query=1, split_ratios=(0.4, 0.3, 0.3)))
    assert data.users["user"].tolist() == [2, 3, 6]  # exactly 4 ratings: 1 and 5 have 5, 4 has 3
    assert data.items.set_index("item")["n_ratings"].to_dict() == {1: 3, 2: 3, 3: 2, 4: 2, 811: 2}
    assert [len(data.splits[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    data = gm()  # 3 … ∞: every user
    assert data.users["user"].tolist() == [1, 2, 3, 4, 5, 6] and len(data.ratings) == 25
    assert data.users["n_ratings"].tolist() == [5, 4, 4, 3, 5, 4]
    # 6 users: floor(1.2) = 1 val, floor(1.8) = 1 test, 4 train
    assert [len(data.splits[k]) for k in ("train", "val", "test")] == [4, 1, 1]
    with pytest.raises(DataError, match=r"no user has GreatMetaProtocol.min_ratings=40 … max_ratings=200 ratings "
                                        r"\(users have 3–5\); widen the range"):
        gm(GreatMetaProtocol())


def test_greatmeta_query_is_a_seeded_random_draw_and_support_the_rest():
    data = gm()
    r = data.ratings
    assert (r.groupby("user")["set"].apply(lambda s: (s == "query").sum()) == 1).all()
    assert by_user(data, "support", "position") == {1: [0, 1, 2, 3], 2: [0, 1, 2], 3: [0, 1, 2], 4: [0, 1],
                                                    5: [0, 1, 2, 3], 6: [0, 1, 2]}
    assert by_user(data, "query", "position") == {1: [4], 2: [3], 3: [3], 4: [2], 5: [4], 6: [3]}
    # support + query = all of a user's ratings
    every = {u: sorted(g["item"]) for u, g in r.groupby("user")}
    assert every == {1: [1, 2, 3, 4, 811], 2: [1, 2, 3, 4], 3: [1, 2, 4, 811], 4: [1, 2, 3], 5: [1, 2, 3, 4, 811],
                     6: [1, 2, 3, 811]}
    # the documented draw: user 2's time-ordered items 1, 4, 2, 3 take positions default_rng((seed, 2)).permutation(4)
    for seed in (0, 1, 2):
        perm = np.random.default_rng((seed, 2)).permutation(4)
        assert by_user(gm(seed=seed), "query")[2] == [[1, 4, 2, 3][int(np.argmax(perm))]]
    # random, not the last in time: over 40 seeds every one of user 2's items is drawn as the query at least once
    drawn = {by_user(gm(seed=s), "query")[2][0] for s in range(40)}
    assert drawn == {1, 2, 3, 4}
    assert by_user(gm(seed=0), "query") == by_user(data, "query")  # seeded
    # a user's draw does not depend on which other users are kept
    narrow = gm(GreatMetaProtocol(min_ratings=4, max_ratings=4, n_query=1, split_ratios=(0.4, 0.3, 0.3)))
    assert by_user(narrow, "query") == {u: q for u, q in by_user(data, "query").items() if u in (2, 3, 6)}
    # ratings keep their own scale and order column
    assert set(r["rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0} and data.spec.rating_max == 5.0


def test_greatmeta_labels_every_rating_c_w():
    data = gm()
    assert data.users["cold"].all() and not data.items["cold"].any()
    assert set(data.ratings["scenario"]) == {CW}
    c = data.provenance["counts"]
    assert (c["users_cold"], c["users_warm"], c["items_cold"], c["query_C-W"], c["query_W-W"]) == (6, 0, 0, 6, 0)
    assert (c["support_min"], c["support_median"], c["support_max"]) == (2, 3.0, 4)
    assert data.provenance["split_time_utc"] is None


def test_greatmeta_tasks_are_padded_and_masked():
    data = gm()
    b = data.tasks("all")
    assert b.user_ids.tolist() == [1, 2, 3, 4, 5, 6]
    # support sizes 4, 3, 3, 2, 4, 3: padded to 4
    assert b.support_y.shape == (6, 4) and b.support_x["cat"].shape == (6, 4, 2)
    assert b.support_x["genre"].shape == (6, 4, 3) and b.query_y.shape == (6, 1)
    assert b.support_mask.sum(1).tolist() == [4, 3, 3, 2, 4, 3] and b.query_mask.all()
    assert b.support_mask[3].tolist() == [True, True, False, False]
    for u, row in zip([1, 2, 3, 4, 5, 6], range(6), strict=True):
        n = int(b.support_mask[row].sum())
        assert b.support_item_ids[row, :n].tolist() == by_user(data, "support")[u]
        assert b.support_y[row, :n].tolist() == by_user(data, "support", "rating")[u]
        assert b.query_item_ids[row].tolist() == by_user(data, "query")[u]
        # padding: zeros everywhere
        assert not b.support_y[row, n:].any() and not b.support_item_ids[row, n:].any()
        assert not b.support_x["cat"][row, n:].any() and not b.support_x["genre"][row, n:].any()
    # user 4 rated items 1, 2, 3 with 5, 4, 3 stars: the two support ratings are two of them
    items4, y4 = b.support_item_ids[3, :2].tolist(), b.support_y[3, :2].tolist()
    assert all({1: 5.0, 2: 4.0, 3: 3.0}[i] == y for i, y in zip(items4, y4, strict=True))
    assert b.user_cold.all() and (b.query_scenario == CW).all()
    # a split is padded to its own largest support set
    test = data.tasks("test")
    assert test.support_y.shape[1] == int(test.support_mask.sum(1).max())


def test_greatmeta_summary():
    v = gm().summary()["value"]
    assert v.index[0] == "release" and v["protocol"] == "GreatMeta (user cold-start only)"
    assert v["users kept (≥ 3 ratings)"] == 6
    assert (v["support size min"], v["support size median"], v["support size max"]) == (2, 3.0, 4)
    assert (v["train users"], v["val users"], v["test users"]) == (4, 1, 1)
    assert v["split ratios (train/val/test)"] == "0.5/0.2/0.3"
    assert gm(GreatMetaProtocol(min_ratings=4, max_ratings=4, n_query=1, split_ratios=(0.4, 0.3, 0.3))).summary().loc[
        "users kept (4–4 ratings)", "value"] == 3


def test_greatmeta_load_and_cache_round_trip(fixture_registry, monkeypatch):
    cache = fixture_registry
    a = load("ml-1m", protocol=GM_SMALL, cache=cache)
    assert isinstance(a.protocol, GreatMetaProtocol)

    def broken(*args, **kwargs):
        raise AssertionError("a cache hit must not parse the raw files")

    with monkeypatch.context() as m:
        m.setitem(PARSERS, "movielens-1m", broken)
        b = load("movielens-1m", protocol=GM_SMALL.to_dict(), cache=cache)
    assert b.protocol == a.protocol and isinstance(b.protocol.split_ratios, tuple)
    assert b.provenance == a.provenance and b.ratings.equals(a.ratings) and b.users.equals(a.users)
    assert torch.equal(b.tasks("all").support_mask, a.tasks("all").support_mask)
    # MAMO's protocol on the same files is another cache entry
    load("ml-1m", protocol=SMALL, cache=cache)
    assert len(cache_files(cache)) == 2
    with pytest.raises(DataError, match="no user has GreatMetaProtocol.min_ratings=40"):
        load("ml-1m", protocol="greatmeta", cache=cache)


@pytest.mark.skipif(not __import__("os").environ.get("MAMO_LITE_DATA"),
                    reason="real data: set MAMO_LITE_DATA (e.g. ../shared/data)")
def test_greatmeta_on_movielens_100k_matches_the_authors_counts():
    """The authors' run keeps 497 users and 47,968 ratings of ML-100K and trains on 349 users (notes §3.2, §3.10)."""
    data = load("movielens-100k", protocol="greatmeta", download=False, cache=False)
    c = data.provenance["counts"]
    assert (c["users_kept"], c["ratings_tasks"], c["users_train"], c["users_val"], c["users_test"]) == (
        497, 47968, 349, 49, 99)
    assert (c["support_min"], c["support_max"]) == (30, 190)
    b = data.tasks("test")
    assert b.query_mask.shape == (99, 10) and b.query_mask.all()
    assert int(b.support_mask.sum()) + int(b.query_mask.sum()) == int(data.users.set_index("user").loc[
        data.splits["test"], "n_ratings"].sum())
