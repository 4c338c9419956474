"""The parsers and the protocol on the real datasets (``MAMO_LITE_DATA``, e.g. ``../shared/data``).

Skipped when ``MAMO_LITE_DATA`` is not set. The raw counts are the documented ones
(../shared/data/PROVENANCE.md); the protocol's counts were computed once with this code and are
pinned here so that a change in any rule shows up as a failing test. Compare with MAMO §3.1.4 on
the *full* ML-1M: 5,400 warm / 640 cold users, 1,683 warm / 1,645 cold items; Book-Crossing: 628
warm items. Here ML-1M is the users 1–2999 subset (release ``subset``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from mamo_lite.data import Protocol, load, registry
from mamo_lite.data.parsers import PARSERS

pytestmark = pytest.mark.skipif(not os.environ.get("MAMO_LITE_DATA"),
                                reason="real data: set MAMO_LITE_DATA (e.g. ../shared/data)")


@pytest.fixture(scope="module")
def raw():
    """Parsed tables of each dataset, parsed once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            files = registry.ensure_files(name, download=False)
            cache[name] = PARSERS[name](files.paths, release=files.release, provenance=files.provenance())
        return cache[name]
    return get


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    cache_root = tmp_path_factory.mktemp("processed-cache")
    cache = {}

    def get(name, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = load(name, download=False, cache=cache_root, **kwargs)
        return cache[key]
    return get


def counts(data) -> dict:
    c = data.provenance["counts"]
    keys = ("users_kept", "users_warm", "users_cold", "items_kept", "items_warm", "items_cold",
            "query_W-W", "query_W-C", "query_C-W", "query_C-C", "users_train", "users_val", "users_test")
    return {k: c[k] for k in keys}


# ----------------------------------------------------------------------------------- raw counts

def test_ml1m_raw_counts(raw):
    r = raw("movielens-1m")
    assert r.release == "subset"
    assert r.files["ratings"]["records"] == 487_650 and r.ratings["user"].nunique() == 2_999
    assert r.files["movies"]["records"] == 3_883 and r.files["extrainfos"]["records"] == 3_881
    assert r.files["users"]["records"] == 6_040 and len(r.items) == 3_881
    assert r.files["ratings"]["sha256"] == "1273c4edfe3c0ff9e3a0a0d55819faeb947da0ad7df3927333b51ebefbeedc3d"
    assert len(r.ratings) == 487_650  # 7 ratings of 860/1795 merged into 811/1741, none lost
    assert r.notes == [("merge_duplicate_movies=True: 7 ratings of movies 860/1795 mapped to 811/1741 "
                        "(MeLU's rule); 3 users rated both copies and keep both ratings")]
    assert r.ratings["order"].min() == 970620734  # 2000-10-04 00:52:14 UTC: the subset starts late
    assert r.items["rate"].isna().sum() == 0 and r.items["year"].isna().sum() == 0
    assert (r.items["genre"].map(len) == 0).sum() == 5 and (r.items["director"].map(len) == 0).sum() == 12


def test_ml100k_raw_counts(raw):
    r = raw("movielens-100k")
    assert r.release == "complete"
    assert (len(r.users), len(r.items), len(r.ratings)) == (943, 1_682, 100_000)
    assert r.items["year"].isna().sum() == 1  # item 267, "unknown"
    assert sorted(r.users["age"].unique()) == [1, 18, 25, 35, 45, 50, 56]


def test_book_crossing_raw_counts(raw):
    r = raw("book-crossing")
    assert r.release == "complete"
    assert r.files["users"]["records"] == 278_858
    assert r.files["books"]["records"] == 271_379
    assert r.files["ratings"]["records"] == 1_149_780
    assert r.notes == [
        ("BX-Users: 278858 users; 111740 without an age in 5–110 (NULL: 110762), 4606 without a country; "
        "165126 usable profiles kept"),
        "BX-Books: 271379 books; 4641 years outside 1500–2010 or not numbers (0: 4619) set to unknown",
        ("BX-Book-Ratings: 1149780 ratings, 433671 explicit (1–10; 716109 implicit 0s dropped); of the "
        "explicit ones 135743 by users without a usable profile and 34390 of ISBNs missing from "
        "BX-Books.csv dropped; 263538 kept"),
    ]
    assert (len(r.users), len(r.items), len(r.ratings)) == (165_126, 271_379, 263_538)
    assert r.ratings["rating"].between(1, 10).all() and r.ratings["order"].is_monotonic_increasing
    assert r.users["age"].between(5, 110).all()
    assert 275081 not in set(r.users["user"])  # the location with a line break; NULL age


# ----------------------------------------------------------------------------- protocol counts

def test_ml1m_protocol(processed):
    d = processed("movielens-1m")
    assert d.release == "subset" and d.provenance["split_time_utc"] == "2000-12-03T00:00:00+00:00"
    assert counts(d) == {
        "users_kept": 2999, "users_warm": 2377, "users_cold": 622,
        "items_kept": 3006, "items_warm": 1043, "items_cold": 1963,
        "query_W-W": 10755, "query_W-C": 1130, "query_C-W": 2809, "query_C-C": 301,
        "users_train": 2159, "users_val": 240, "users_test": 600,
    }
    b = d.tasks("train")
    assert b.support_x["cat"].shape == (2159, 15, 2) and b.query_x["genre"].shape == (2159, 5, 7)
    assert b.support_x["director"].shape[-1] == 12
    assert [f.vocab_size for f in d.spec.item_fields] == [7, 80, 24, 1597]


def test_ml1m_authors_split_time_gives_their_cold_users(processed):
    """The code's split (80th-percentile time of the full ML-1M) makes 640 cold users, as the paper."""
    d = processed("movielens-1m", protocol=Protocol(split_time="2000-12-03T01:52:18+11:00"))
    cold = d.users.loc[d.users["cold"], "user"].to_numpy()
    assert len(cold) == 640
    assert np.histogram(cold, bins=[1, 1001, 2001, 3000])[0].tolist() == [634, 3, 3]


def test_ml1m_quantile_rule_on_the_subset(processed):
    d = processed("movielens-1m", protocol=Protocol(user_split="quantile"))
    assert d.provenance["split_time_utc"] == "2000-12-15T06:44:09+00:00"
    assert counts(d)["users_cold"] == 222


def test_ml1m_paper_item_rule(processed):
    d = processed("movielens-1m", protocol=Protocol(item_cold_max=9))  # the paper's "< 10"
    c = counts(d)
    assert (c["items_warm"], c["items_cold"]) == (1114, 1892)


def test_ml100k_protocol(processed):
    d = processed("movielens-100k")
    assert d.protocol.user_split == "quantile"
    assert d.provenance["split_time_utc"] == "1998-03-07T02:21:09+00:00"
    assert counts(d) == {
        "users_kept": 943, "users_warm": 751, "users_cold": 192,
        "items_kept": 1003, "items_warm": 332, "items_cold": 671,
        "query_W-W": 3106, "query_W-C": 649, "query_C-W": 797, "query_C-C": 163,
        "users_train": 679, "users_val": 75, "users_test": 189,
    }


def test_book_crossing_protocol(processed):
    d = processed("book-crossing")
    assert d.protocol.user_split == "id" and d.protocol.item_cold_max == 5
    assert counts(d) == {
        "users_kept": 2479, "users_warm": 2231, "users_cold": 248,
        "items_kept": 29224, "items_warm": 960, "items_cold": 28264,
        "query_W-W": 1850, "query_W-C": 9305, "query_C-W": 226, "query_C-C": 1014,
        "users_train": 1785, "users_val": 198, "users_test": 496,
    }
    assert [f.vocab_size for f in d.spec.user_fields] == [79, 46]
    assert d.tasks("test").support_x["cat"].shape == (496, 15, 3)


def test_cached_load_is_identical(processed, tmp_path):
    a = processed("movielens-100k")
    b = load("movielens-100k", download=False, cache=tmp_path)
    c = load("movielens-100k", download=False, cache=tmp_path)  # from the cache
    for x in (b, c):
        assert x.provenance == a.provenance and x.ratings.equals(a.ratings) and x.items.equals(a.items)
