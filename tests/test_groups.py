"""Minority/majority users from ratings alone (``mamo_lite.groups``), against hand computations.

The tiny population (items 1-3, all means 3, so each user's centred ratings are easy to read)::

    user  ratings            centred
    A     i1=5, i2=1         +2, -2
    B     i1=4, i2=2, i3=3   +1, -1, 0
    C     i1=1, i2=5         -2, +2      (the contrarian: A and B prefer i1)

Centred sums over users: i1: 1 (3 raters), i2: -1 (3), i3: 0 (1).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_batch, tiny_spec
from test_parsers import ML1M_FILES, paths

from mamo_lite.data import ColdStartData
from mamo_lite.data.parsers import parse_movielens_1m
from mamo_lite.data.protocol import GreatMetaProtocol
from mamo_lite.groups import (
    batch_ratings,
    group_metrics,
    histogram_distance,
    label_groups,
    profiles,
    taste_distance,
    user_profiles,
)

A, B, C = 1, 2, 3
POP = pd.DataFrame({"user": [A, A, B, B, B, C, C], "item": [1, 2, 1, 2, 3, 1, 2],
                    "rating": [5.0, 1.0, 4.0, 2.0, 3.0, 1.0, 5.0]})


def test_taste_distance_by_hand():
    t = taste_distance(POP)
    assert t["user"].tolist() == [A, B, C] and t["taste_items"].tolist() == [2, 2, 2]  # B's i3: nobody else
    # A: others' mean on i1 = (1 - 2) / 2 = -0.5, on i2 = (-1 + 2) / 2 = +0.5 -> diffs 2.5, -2.5
    # B: others' means 0 and 0 -> diffs 1, -1;   C: others' means 1.5 and -1.5 -> diffs -3.5, 3.5
    assert t["taste_distance"].tolist() == pytest.approx([2.5, 1.0, 3.5])


def test_taste_distance_ignores_a_users_rating_level():
    """Same taste (first item 2 stars above the second), different generosity: distance 0 for everyone."""
    same = pd.DataFrame({"user": [1, 1, 2, 2, 3, 3], "item": [1, 2, 1, 2, 1, 2], "rating": [5.0, 3, 4, 2, 3, 1]})
    assert taste_distance(same)["taste_distance"].tolist() == [0.0, 0.0, 0.0]
    assert histogram_distance(same, values=range(1, 6))["histogram_distance"].gt(0).all()  # what centring removes


def test_taste_distance_against_a_reference_population():
    # X (not in the reference) rates i1=4, i2=2, i4=3: centred +1, -1, 0; the reference's means on i1, i2 are
    # +1/3 and -1/3 (nobody left out); i4 has no reference rater -> diffs 2/3, -2/3 over 2 items
    x = pd.DataFrame({"user": [9, 9, 9], "item": [1, 2, 4], "rating": [4.0, 2.0, 3.0]})
    t = taste_distance(x, reference=POP)
    assert t["user"].tolist() == [9] and t["taste_items"].tolist() == [2]
    assert t["taste_distance"].iloc[0] == pytest.approx(2 / 3)
    # a user alone on every item is unscored
    lone = pd.DataFrame({"user": [8, 8], "item": [7, 8], "rating": [1.0, 5.0]})
    t = taste_distance(lone, reference=POP)
    assert t["taste_items"].tolist() == [0] and math.isnan(t["taste_distance"].iloc[0])
    # scoring a reference user leaves their own reference ratings out (A against POP = A within POP)
    assert taste_distance(POP[POP.user == A], reference=POP)["taste_distance"].iloc[0] == pytest.approx(2.5)


def test_histogram_distance_by_hand():
    # histograms over 1..5: A (.5, 0, 0, 0, .5), B (0, 1/3, 1/3, 1/3, 0), C = A; mean (1/3, 1/9, 1/9, 1/9, 1/3)
    # A: ½ (1/6 + 3·1/9 + 1/6) = 1/3;  B: ½ (1/3 + 3·2/9 + 1/3) = 2/3
    h = histogram_distance(POP, values=range(1, 6))
    assert h["user"].tolist() == [A, B, C]
    assert h["histogram_distance"].tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 3])
    # against B alone as the population: A is ½ (.5 + 1/3·3 + .5) = 1 away
    assert histogram_distance(POP[POP.user == A], values=range(1, 6), reference=POP[POP.user == B])[
        "histogram_distance"].tolist() == pytest.approx([1.0])
    with pytest.raises(ValueError, match=r"rating 7.0 is not on the scale values=\[1.0, 2.0, 3.0, 4.0, 5.0\]"):
        histogram_distance(POP.assign(rating=7.0), values=range(1, 6))
    with pytest.raises(ValueError, match="values must be the rating scale's values in increasing order"):
        histogram_distance(POP, values=[5, 1])


def test_user_profiles_collects_both():
    p = user_profiles(POP, values=range(1, 6))
    assert list(p.columns) == ["user", "n_ratings", "mean_rating", "taste_distance", "taste_items",
                               "histogram_distance"]
    assert p["n_ratings"].tolist() == [2, 3, 2] and p["mean_rating"].tolist() == [3.0, 3.0, 3.0]
    assert p["taste_distance"].tolist() == pytest.approx([2.5, 1.0, 3.5])


@pytest.mark.parametrize(("call", "message"), [
    (lambda: taste_distance(POP.drop(columns="item")), r"ratings lacks column\(s\) \['item'\]"),
    (lambda: taste_distance([1, 2]), r"ratings must be a DataFrame with columns user, item, rating"),
    (lambda: taste_distance(POP, reference=POP.iloc[:0]), r"reference has no rows"),
    (lambda: label_groups(pd.Series([1.0, 2.0]), quantile=1.0), r"quantile must be the minority's share"),
    (lambda: label_groups(pd.Series([1.0, 2.0]), minority="far"), r"minority must be 'high' \(distances\)"),
    (lambda: label_groups(pd.DataFrame({"user": [1], "d": [1.0]})), r"column= naming the score \(one of \['d'\]\)"),
    (lambda: label_groups(pd.Series([np.nan])), r"every score is NaN"),
    (lambda: label_groups(pd.Series([1.0, 2.0], index=[4, 4])), r"several rows for user 4"),
])
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_label_groups_by_quantile():
    s = pd.Series([0.1, 0.5, 0.3, np.nan, 0.9, 0.7], index=[10, 11, 12, 13, 14, 15])
    # finite scores 0.1 … 0.9: the 0.6 quantile is 0.5 + 0.4 · 0.2 = 0.58, the 0.4 quantile 0.3 + 0.6 · 0.2 = 0.42
    high = label_groups(s, quantile=0.4)
    assert list(high.columns) == ["user", "score", "group"] and high["user"].tolist() == [10, 11, 12, 13, 14, 15]
    assert high["group"].tolist() == ["majority", "majority", "majority", "unscored", "minority", "minority"]
    low = label_groups(s, quantile=0.4, minority="low")
    assert low["group"].tolist() == ["minority", "majority", "minority", "unscored", "majority", "majority"]
    # a frame and a column; ties at the threshold count as minority
    frame = pd.DataFrame({"user": [1, 2, 3, 4], "d": [1.0, 2.0, 2.0, 2.0]})
    assert label_groups(frame, "d", quantile=0.25)["group"].tolist() == ["majority", "minority", "minority",
                                                                          "minority"]


def test_group_metrics_by_hand():
    per_user = pd.DataFrame({"user": [1, 2, 3, 4, 5], "user_cold": True, "MAE": [1.0, 2.0, 3.0, 4.0, np.nan],
                             "RMSE": [1.0, 2.0, 3.0, 4.0, np.nan], "NDCG@3": [0.5, 1.0, 0.0, 1.0, np.nan],
                             "n": [2, 3, 1, 4, 0]})
    groups = pd.DataFrame({"user": [5, 4, 3, 2, 1, 99], "group": ["majority", "minority", "minority", "majority",
                                                                  "majority", "minority"]})
    out = group_metrics(per_user, groups, metrics=["MAE", "NDCG@3"])
    assert list(out.columns) == ["group", "metric", "value", "users", "ratings"]
    got = {(g, m): (v, u, r) for g, m, v, u, r in out.itertuples(index=False)}
    # user 5 has no query rating (NaN): it is in no mean; user 99 was not evaluated: ignored
    assert got == {("majority", "MAE"): (1.5, 2, 5), ("majority", "NDCG@3"): (0.75, 2, 5),
                   ("minority", "MAE"): (3.5, 2, 5), ("minority", "NDCG@3"): (0.5, 2, 5),
                   ("all", "MAE"): (2.5, 4, 10), ("all", "NDCG@3"): (0.625, 4, 10)}
    assert out["group"].tolist() == ["majority", "majority", "minority", "minority", "all", "all"]
    assert set(group_metrics(per_user, groups)["metric"]) == {"MAE", "RMSE", "NDCG@3"}  # default: every metric
    assert "all" not in set(group_metrics(per_user, groups, overall=False)["group"])
    # several runs stacked: one summary per (method, dataset, seed)
    runs = pd.concat([per_user.assign(method="maml", dataset="ml", seed=s, MAE=per_user.MAE + s) for s in (0, 1)])
    out = group_metrics(runs, groups, metrics=["MAE"])
    assert list(out.columns[:3]) == ["method", "dataset", "seed"]
    assert out.query("seed == 1 and group == 'minority'")["value"].tolist() == [4.5]
    with pytest.raises(ValueError, match=r"no label for 1 user\(s\) of per_user \(e.g. user 5\)"):
        group_metrics(per_user, groups[groups.user != 5])
    with pytest.raises(ValueError, match=r"metrics \['MAP'\] are not columns of per_user"):
        group_metrics(per_user, groups, metrics=["MAP"])
    with pytest.raises(ValueError, match="groups must be a DataFrame with column"):
        group_metrics(per_user, groups.rename(columns={"group": "label"}))


def test_batch_ratings_reads_only_real_slots():
    b = tiny_batch(tiny_spec(), n_users=3, n_support=4, n_query=2, seed=0, masks="ragged")
    r = batch_ratings(b)
    assert list(r.columns) == ["user", "item", "rating", "set"]
    assert len(r) == int(b.support_mask.sum() + b.query_mask.sum())
    for row, u in enumerate(b.user_ids.tolist()):
        mine = r[r.user == u]
        m = b.support_mask[row]
        assert mine[mine.set == "support"]["rating"].tolist() == pytest.approx(b.support_y[row][m].tolist())
        assert mine[mine.set == "support"]["item"].tolist() == b.support_item_ids[row][m].tolist()
        assert mine[mine.set == "query"]["rating"].tolist() == pytest.approx(b.query_y[row][b.query_mask[row]].tolist())
    assert r["user"].tolist() == sorted(r["user"].tolist(), key=b.user_ids.tolist().index)


def test_profiles_of_a_dataset_use_support_ratings_against_training_users():
    data = ColdStartData.from_raw(parse_movielens_1m(paths(ML1M_FILES)),
                                  GreatMetaProtocol(min_ratings=3, max_ratings=None, n_query=1,
                                                    split_ratios=(0.5, 0.2, 0.3)))
    p = profiles(data)
    test_users = data.splits["test"].tolist()
    assert p["user"].tolist() == test_users
    r = data.ratings
    expected = user_profiles(r[(r.split == "test") & (r.set == "support")], values=range(1, 6),
                             reference=r[r.split == "train"])
    pd.testing.assert_frame_equal(p, expected)
    assert p["n_ratings"].tolist() == [int(((r.user == u) & (r.set == "support")).sum()) for u in test_users]
    every = profiles(data, "all", sets=("support", "query"), reference_split=None)
    assert every["user"].tolist() == [1, 2, 3, 4, 5, 6] and every["n_ratings"].tolist() == [5, 4, 4, 3, 5, 4]
    with pytest.raises(ValueError, match=r"sets must name 'support' and/or 'query', got \['train'\]"):
        profiles(data, sets=["train"])
    with pytest.raises(ValueError, match="split must be one of"):
        profiles(data, "validation")


def test_a_contrarian_user_is_the_minority_end_to_end():
    groups = label_groups(taste_distance(POP), "taste_distance", quantile=0.3)
    assert groups["group"].tolist() == ["majority", "majority", "minority"]  # C
    per_user = pd.DataFrame({"user": [A, B, C], "MAE": [0.5, 0.5, 2.0], "n": [1, 1, 1]})
    out = group_metrics(per_user, groups)
    assert out.set_index("group")["value"].to_dict() == {"majority": 0.5, "minority": 2.0, "all": 1.0}
    assert out["users"].tolist() == [2, 1, 3]


def test_docstrings_are_valid_restructuredtext():
    """The API page renders these with autodoc under a strict build."""
    from test_greatmeta import rst_problems

    import mamo_lite.data.protocol
    import mamo_lite.groups

    for module in (mamo_lite.groups, mamo_lite.data.protocol):
        assert rst_problems(module.__doc__) == [], module.__name__
