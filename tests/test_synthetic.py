"""The synthetic dataset: ML-1M schema, determinism, cold users, skewed items, planted user types."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from pandas.api.types import is_float_dtype, is_integer_dtype, is_string_dtype

from mamo_lite.data.raw import RawTables
from mamo_lite.data.synthetic import AGES, GENRES, RATES, SPLIT_TIME, make_synthetic


@pytest.fixture(scope="module")
def raw() -> RawTables:
    return make_synthetic()


def test_schema_matches_the_contract(raw):
    assert raw.name == "synthetic" and raw.release == "synthetic" and raw.time_based
    assert raw.files == {} and raw.notes and "seed=0" in raw.notes[0]
    assert (raw.rating_min, raw.rating_max) == (1.0, 5.0)
    assert raw.user_fields == ["gender", "age", "occupation"]
    assert raw.item_categorical == ["rate", "year"] and raw.item_multi == ["genre", "director"]
    u, i, r = raw.users, raw.items, raw.ratings
    assert list(u.columns) == ["user", "gender", "age", "occupation", "true_type"]
    assert "true_type" not in raw.user_fields  # models never see it
    assert list(i.columns) == ["item", "rate", "year", "genre", "director", "title"]  # as the ML-1M parser
    assert list(r.columns) == ["user", "item", "rating", "order"]
    for col in ("user", "age", "occupation", "true_type"):
        assert is_integer_dtype(u[col]), col
    assert is_string_dtype(u["gender"]) and set(u["gender"]) == {"M", "F"}
    assert set(u["age"]) <= set(AGES) and u["occupation"].between(0, 20).all()
    assert u["user"].is_unique and i["item"].is_unique
    assert is_string_dtype(i["rate"]) and set(i["rate"]) <= set(RATES)
    assert is_integer_dtype(i["year"]) and i["year"].between(1919, 2000).all()
    for col in raw.item_multi:
        assert i[col].map(lambda c: isinstance(c, tuple) and all(isinstance(x, str) for x in c)).all()
        assert (i[col].map(len) >= 1).all()
    assert i["genre"].map(lambda c: set(c) <= set(GENRES) and len(set(c)) == len(c)).all()
    assert r[["user", "item"]].dtypes.map(is_integer_dtype).all() and r["order"].dtype == np.int64
    assert is_float_dtype(r["rating"])
    assert set(r["user"]) <= set(u["user"]) and set(r["item"]) <= set(i["item"])
    assert not r.duplicated(["user", "item"]).any()


def test_ratings_range_counts_and_times(raw):
    r = raw.ratings
    assert set(r["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    per_user = r.groupby("user").size()
    assert per_user.between(20, 40).all() and len(per_user) == 600
    # strictly increasing times per user, in ML-1M's era
    assert (r.groupby("user")["order"].diff().dropna() > 0).all()
    assert r["order"].between(956_707_200, 1_060_000_000).all()


def test_deterministic_for_a_seed():
    a, b, c = make_synthetic(seed=3), make_synthetic(seed=3), make_synthetic(seed=4)
    for name in ("users", "items", "ratings"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.notes == b.notes
    assert not a.ratings.equals(c.ratings) and not a.users.equals(c.users)


def test_fast_at_default_size():
    start = time.perf_counter()
    make_synthetic(seed=1)
    assert time.perf_counter() - start < 1.0


def first_20_and_query(raw: RawTables) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MAMO's trim (first 20 ratings in time) and query (the last 5 of them), written out here."""
    r = raw.ratings.sort_values(["user", "order"], kind="stable")
    trimmed = r.groupby("user").head(20)
    return trimmed, trimmed.groupby("user").tail(5)


@pytest.mark.parametrize("fraction", [0.15, 0.3])
def test_cold_users_near_requested_fraction(fraction):
    raw = make_synthetic(cold_user_fraction=fraction, seed=2)
    first = raw.ratings.groupby("user")["order"].min()
    assert (first >= SPLIT_TIME).mean() == pytest.approx(fraction, abs=0.01)


def test_all_four_scenarios_occur(raw):
    trimmed, query = first_20_and_query(raw)
    counts = trimmed["item"].value_counts().reindex(raw.items["item"], fill_value=0)
    cold_items = set(counts[counts <= 10].index)
    assert 0.25 <= len(cold_items) / len(raw.items) <= 0.75  # Zipf tail: many items are cold
    first = raw.ratings.groupby("user")["order"].min()
    cold_users = set(first[first >= SPLIT_TIME].index)
    scenario = 2 * query["user"].isin(cold_users) + query["item"].isin(cold_items)
    share = scenario.value_counts(normalize=True).reindex(range(4), fill_value=0)
    assert (share > 0.01).all(), share.to_dict()  # W-W, W-C, C-W, C-C all present
    assert share[0] == share.max()


def test_type_recoverable_from_profile(raw):
    u = raw.users
    # a majority-vote table from (gender, age) predicts the planted type
    vote = u.groupby(["gender", "age"])["true_type"].agg(lambda s: s.value_counts().idxmax())
    predicted = pd.MultiIndex.from_frame(u[["gender", "age"]]).map(vote)
    accuracy = (np.asarray(predicted) == u["true_type"].to_numpy()).mean()
    assert accuracy >= 0.9
    assert accuracy < 1.0  # a few users are flipped: the profile is informative, not a label
    # every type is populated, none dominates
    share = u["true_type"].value_counts(normalize=True)
    assert len(share) == 3 and share.max() < 0.5
    exact = make_synthetic(type_flip=0.0)
    vote = exact.users.groupby(["gender", "age"])["true_type"].nunique()
    assert (vote == 1).all()  # without flips the type is a function of (gender, age)


def test_types_rate_differently(raw):
    m = raw.ratings.merge(raw.users[["user", "true_type"]], on="user")
    means = np.sort(m.groupby("true_type")["rating"].mean().to_numpy())
    assert np.diff(means).min() > 0.4  # offsets −0.75, 0, +0.75 (before rounding and clipping)
    # beyond the offset, types disagree on genres: centred per-genre means are far from parallel
    m = m.merge(raw.items[["item", "genre"]], on="item").explode("genre")
    table = m.groupby(["true_type", "genre"])["rating"].mean().unstack()
    table = table.sub(table.mean(axis=1), axis=0).dropna(axis=1)
    corr = np.corrcoef(table.to_numpy())[np.triu_indices(3, 1)]
    assert (corr < 0.8).all(), corr


def test_argument_checks():
    with pytest.raises(ValueError):
        make_synthetic(n_types=15)
    with pytest.raises(ValueError):
        make_synthetic(n_items=30, ratings_per_user=(20, 40))
    with pytest.raises(ValueError):
        make_synthetic(cold_user_fraction=1.5)
    one = make_synthetic(n_users=50, n_items=60, n_types=1, seed=5)
    assert set(one.users["true_type"]) == {0}
