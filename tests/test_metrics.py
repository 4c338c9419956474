"""Metrics (Eqs. 13–15, A.2.3) against hand-computed values, and the tidy evaluation tables.

Expected values are written out as arithmetic on literal numbers: gains are 2^rating − 1
(rating 5 → 31, 4 → 15, 3 → 7, 2 → 3, 1 → 1) and the discount of rank n is log2(n + 1)
(rank 1 → 1, rank 2 → log2(3) ≈ 1.585, rank 3 → 2).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from mamo_lite.data.tasks import FeatureSpec, TaskBatch
from mamo_lite.evaluate import COLUMNS, paper_table1, per_user_metrics, scenario_metrics, summarise
from mamo_lite.metrics import aggregate, mae, ndcg_at_k, ndcg_clips, pool, rmse

L3 = math.log2(3)  # discount of rank 2
SHARED = Path(__file__).resolve().parents[2] / "shared"

# The running example: one user, five query items.
Y = torch.tensor([[5.0, 3.0, 4.0, 1.0, 2.0]])
P = torch.tensor([[4.5, 2.0, 3.9, 1.2, 4.0]])
IDCG = 31 / 1 + 15 / L3 + 7 / 2  # true top 3: ratings 5, 4, 3


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- per-user NDCG@k (Eqs. 14–15)

def test_ndcg_hand_example():
    # predicted order: item0 (4.5, r=5), item4 (4.0, r=2), item2 (3.9, r=4)
    dcg = 31 / 1 + 3 / L3 + 15 / 2
    assert ndcg_at_k(P, Y, k=3).item() == pytest.approx(dcg / IDCG)
    assert ndcg_at_k(P, Y, k=3).item() == pytest.approx(0.918771, abs=1e-6)


def test_ndcg_perfect_ranking_is_one():
    assert ndcg_at_k(Y.clone(), Y, k=3).item() == pytest.approx(1.0)
    assert ndcg_at_k(2 * Y + 7, Y, k=5).item() == pytest.approx(1.0)  # any increasing map


def test_ndcg_reversed_ranking():
    # predicted order = ratings 1, 2, 3
    dcg = 1 / 1 + 3 / L3 + 7 / 2
    assert ndcg_at_k(-Y, Y, k=3).item() == pytest.approx(dcg / IDCG)
    assert ndcg_at_k(-Y, Y, k=3).item() == pytest.approx(0.145410, abs=1e-6)


def test_ndcg_ties_broken_by_position():
    # constant prediction: the query order, ratings 5, 3, 4
    const = torch.zeros_like(Y)
    assert ndcg_at_k(const, Y, k=3).item() == pytest.approx((31 + 7 / L3 + 15 / 2) / IDCG)
    # partial tie: items 1, 2, 4 share the top score 3 and keep their order: ratings 3, 4, 2
    p = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    assert ndcg_at_k(p, Y, k=3).item() == pytest.approx((7 + 15 / L3 + 3 / 2) / IDCG)


def test_ndcg_k1_and_full_k():
    assert ndcg_at_k(P, Y, k=1).item() == pytest.approx(1.0)  # top item is the 5
    assert ndcg_at_k(-Y, Y, k=1).item() == pytest.approx(1 / 31)
    # k = 5: every item counts; predicted order ratings 5, 2, 4, 3, 1 vs ideal 5, 4, 3, 2, 1
    dcg = 31 + 3 / L3 + 15 / 2 + 7 / math.log2(5) + 1 / math.log2(6)
    idcg = 31 + 15 / L3 + 7 / 2 + 3 / math.log2(5) + 1 / math.log2(6)
    assert ndcg_at_k(P, Y, k=5).item() == pytest.approx(dcg / idcg)


def test_ndcg_mask_excludes_items_whatever_their_values():
    mask = torch.tensor([[False, True, True, True, True]])
    # valid: ratings 3, 4, 1, 2 with predictions 2.0, 3.9, 1.2, 4.0 → order r=2, r=4, r=3
    expected = (3 + 15 / L3 + 7 / 2) / (15 + 7 / L3 + 3 / 2)
    assert ndcg_at_k(P, Y, mask, k=3).item() == pytest.approx(expected)
    p, y = P.clone(), Y.clone()
    p[0, 0], y[0, 0] = 100.0, 0.0  # padding junk must not matter
    assert ndcg_at_k(p, y, mask, k=3).item() == pytest.approx(expected)
    p[0, 0] = float("nan")
    assert ndcg_at_k(p, y, mask, k=3).item() == pytest.approx(expected)


def test_ndcg_k_larger_than_valid_items():
    y, p = t([3.0, 5.0]), t([0.9, 0.1])
    expected = (7 + 31 / L3) / (31 + 7 / L3)
    assert ndcg_at_k(p, y, k=3).item() == pytest.approx(expected)
    assert ndcg_at_k(p, y, k=2).item() == pytest.approx(expected)
    # the same through a mask on a padded row
    y2, p2 = t([3.0, 5.0, 0.0, 0.0]), t([0.9, 0.1, 9.0, 8.0])
    m2 = torch.tensor([[True, True, False, False]])
    assert ndcg_at_k(p2, y2, m2, k=3).item() == pytest.approx(expected)


def test_ndcg_degenerate_users():
    y = t([0.0, 0.0, 0.0], [4.0, 2.0, 1.0], [5.0, 1.0, 2.0])
    p = t([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, float("nan"), 0.0])
    m = torch.tensor([[True, True, True], [False, False, False], [True, True, True]])
    out = ndcg_at_k(p, y, m, k=3)
    assert out[0].item() == 1.0  # IDCG = 0: every ranking is ideal
    assert math.isnan(out[1].item())  # no valid item
    assert math.isnan(out[2].item())  # NaN prediction → NaN, not a silent ranking
    with pytest.raises(ValueError):
        ndcg_at_k(P, Y, k=0)


def test_ndcg_batched_equals_per_user():
    y = t([5, 3, 4, 1, 2], [1, 1, 2, 5, 4], [2, 2, 2, 2, 3])
    p = t([4.5, 2.0, 3.9, 1.2, 4.0], [3, 1, 2, 2, 5], [0, 0, 0, 0, 0])
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 0, 0, 1]], dtype=torch.bool)
    batched = ndcg_at_k(p, y, m, k=3)
    for i in range(3):
        single = ndcg_at_k(p[i:i + 1][:, m[i]], y[i:i + 1][:, m[i]], k=3)
        assert batched[i].item() == pytest.approx(single.item())


def ndcg_reference(p: list[float], y: list[float], k: int) -> float:
    """Eqs. 14–15 for one user, in plain Python (``sorted`` is stable: ties keep their position)."""
    def dcg(order):
        return sum((2 ** y[i] - 1) / math.log2(n + 2) for n, i in enumerate(order[:k]))
    return dcg(sorted(range(len(y)), key=lambda i: -p[i])) / dcg(sorted(range(len(y)), key=lambda i: -y[i]))


def test_ndcg_matches_plain_python_on_random_batches():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(1, 6, (200, 7), generator=g).double()
    p = torch.randint(1, 6, (200, 7), generator=g).double()  # integer scores: many ties
    m = torch.rand(200, 7, generator=g) < 0.8
    m[:, 0] = True
    for k in (1, 3, 10):
        out = ndcg_at_k(p, y, m, k=k)
        for i in range(200):
            ref = ndcg_reference(p[i][m[i]].tolist(), y[i][m[i]].tolist(), k)
            assert out[i].item() == pytest.approx(ref), (i, k)


# ---------------------------------------------------------------- per-user MAE / RMSE (Eq. 13)

def test_mae_rmse_hand_values():
    # |errors| = 0.5, 1.0, 0.1, 0.2, 2.0
    assert mae(P, Y).item() == pytest.approx((0.5 + 1.0 + 0.1 + 0.2 + 2.0) / 5)
    assert rmse(P, Y).item() == pytest.approx(math.sqrt((0.25 + 1.0 + 0.01 + 0.04 + 4.0) / 5))
    mask = torch.tensor([[True, True, False, False, False]])
    assert mae(P, Y, mask).item() == pytest.approx((0.5 + 1.0) / 2)
    assert rmse(P, Y, mask).item() == pytest.approx(math.sqrt((0.25 + 1.0) / 2))


def test_mae_empty_user_is_nan_and_masked_junk_ignored():
    p, y = t([1.0, float("nan")], [2.0, 2.0]), t([2.0, 0.0], [2.0, 2.0])
    m = torch.tensor([[True, False], [False, False]])
    out = mae(p, y, m)
    assert out[0].item() == pytest.approx(1.0)
    assert math.isnan(out[1].item())
    assert math.isnan(rmse(p, y, m)[1].item())


# ---------------------------------------------------------------- aggregation and clips (A.2.3)

def test_pooled_mae_differs_from_user_average():
    # user A: one selected rating, error 2; user B: three selected ratings, errors 1, 0, 0
    y = t([3, 3, 3], [4, 4, 4])
    p = t([5, 0, 0], [5, 4, 4])
    sel = torch.tensor([[True, False, False], [True, True, True]])
    pooled = aggregate("MAE", p, y, sel, average="rating")
    per_user = aggregate("MAE", p, y, sel, average="user")
    assert pooled.value == pytest.approx((2 + 1 + 0 + 0) / 4) and (pooled.n, pooled.unit) == (4, "ratings")
    assert per_user.value == pytest.approx((2 / 1 + 1 / 3) / 2) and (per_user.n, per_user.unit) == (2, "users")
    assert pooled.value != pytest.approx(per_user.value)
    assert aggregate("RMSE", p, y, sel, average="rating").value == pytest.approx(math.sqrt((4 + 1) / 4))
    assert aggregate("RMSE", p, y, sel, average="user").value == pytest.approx((2 + math.sqrt(1 / 3)) / 2)


def test_aggregate_user_min_items_and_empty():
    y, p = t([5, 1, 3], [4, 2, 0]), t([1, 5, 3], [4, 2, 0])
    m = torch.tensor([[True, True, True], [True, False, False]])
    agg = aggregate("NDCG", p, y, m, average="user", k=3, min_items=2)
    assert agg.n == 1  # user 1 has a single item: not counted
    assert aggregate("NDCG", p, y, m, average="user", k=3).n == 2
    none = torch.zeros_like(m)
    for average in ("user", "rating"):
        empty = aggregate("MAE", p, y, none, average=average)
        assert math.isnan(empty.value) and empty.n == 0
    with pytest.raises(ValueError):
        aggregate("MAE", p, y, m, average="pooled")


# Two users, four query slots each; user 1's last slot is padding.
CY = t([5, 1, 3, 2], [4, 2, 5, 1])
CP = t([1, 2, 3, 4], [4, 3, 2, 1])
CM = torch.tensor([[True, True, True, True], [True, True, True, False]])


def test_pool_order_is_user_then_position():
    p, y = pool(CP, CY, CM)
    assert p.tolist() == [1, 2, 3, 4, 4, 3, 2]
    assert y.tolist() == [5, 1, 3, 2, 4, 2, 5]


def test_ndcg_clips_by_hand():
    # concatenated ratings 5 1 3 | 2 4 2 | 5, predictions 1 2 3 | 4 4 3 | 2; clip=3, k=2
    clip1 = (7 / 1 + 1 / L3) / (31 + 7 / L3)  # predicted top 2: r=3 (p3), r=1 (p2)
    clip2 = (3 / 1 + 15 / L3) / (15 + 3 / L3)  # tie p4, p4 → position order: r=2, r=4
    # the last clip holds 1 < k items: dropped
    out = ndcg_clips(CP, CY, CM, k=2, clip=3)
    assert out.tolist() == pytest.approx([clip1, clip2])
    agg = aggregate("NDCG", CP, CY, CM, average="rating", k=2, clip=3)
    assert agg.value == pytest.approx((clip1 + clip2) / 2) and (agg.n, agg.unit) == (2, "clips")
    # with k = 1 the 1-item last clip has ≥ k items and is kept
    out1 = ndcg_clips(CP, CY, CM, k=1, clip=3)
    assert out1.tolist() == pytest.approx([7 / 31, 3 / 15, 1.0])


def test_ndcg_clips_edge_cases():
    assert ndcg_clips(CP, CY, torch.zeros_like(CM), k=3, clip=5).numel() == 0
    # 7 items, clip 5: the last clip has 2 < 3 items
    assert ndcg_clips(CP, CY, CM, k=3, clip=5).numel() == 1
    assert ndcg_clips(CP, CY, CM, k=2, clip=5).numel() == 2
    # one clip per user when clip = query size and every slot is real
    assert ndcg_clips(P.repeat(4, 1), Y.repeat(4, 1), k=3, clip=5).tolist() == pytest.approx(
        ndcg_at_k(P, Y, k=3).repeat(4).tolist())
    with pytest.raises(ValueError):
        ndcg_clips(CP, CY, CM, k=3, clip=2)


# ---------------------------------------------------------------- tidy tables (evaluate.py)

def make_batch(y, scenario, mask, user_cold) -> TaskBatch:
    b, q = y.shape
    s = 2
    return TaskBatch(
        user_ids=torch.arange(10, 10 + b),
        user_x=torch.ones(b, 3, dtype=torch.long),
        support_x={"cat": torch.ones(b, s, 2, dtype=torch.long)},
        support_y=torch.full((b, s), 3.0),
        support_mask=torch.ones(b, s, dtype=torch.bool),
        support_item_ids=torch.ones(b, s, dtype=torch.long),
        query_x={"cat": torch.ones(b, q, 2, dtype=torch.long)},
        query_y=y.float(),
        query_mask=mask,
        query_item_ids=torch.arange(b * q).view(b, q),
        query_scenario=scenario,
        user_cold=user_cold,
    )


# users 10, 11 warm; user 12 cold with only warm items: no C-C rating at all
BATCH = make_batch(
    y=t([5, 3, 4, 1, 2], [4, 4, 2, 5, 3], [1, 2, 3, 4, 5]),
    scenario=torch.tensor([[0, 0, 1, 0, 1], [0, 0, 0, 0, 1], [2, 2, 2, 2, 2]]),
    mask=torch.tensor([[True] * 5, [True, True, True, True, False], [True] * 5]),
    user_cold=torch.tensor([False, False, True]),
)
# 6.5 and 0.2 are clipped to 5 and 1; 9.0 sits in user 11's padding slot
PRED = torch.tensor([[6.5, 3, 3, 1, 2], [4, 3, 2, 5, 9.0], [0.2, 2, 3, 4, 5]])


def cell(df, scenario, metric):
    row = df[(df.scenario == scenario) & (df.metric == metric)]
    assert len(row) == 1, (scenario, metric)
    return row.value.item(), row.n.item()


def test_scenario_metrics_paper_protocol_by_hand():
    df = scenario_metrics(PRED, BATCH, method="toy", dataset="unit", seed=0, rating_range=(1, 5))
    assert list(df.columns) == list(COLUMNS)
    assert list(dict.fromkeys(df.scenario)) == ["W-W", "W-C", "C-W", "all"]  # C-C absent, not NaN
    assert set(df.metric) == {"MAE", "RMSE", "NDCG@3"}
    assert not df.value.isna().any()
    assert (df.method == "toy").all() and (df.dataset == "unit").all() and (df.seed == 0).all()
    # W-W: 7 ratings with clipped errors 0, 0, 0 (user 10) and 0, 1, 0, 0 (user 11): pooled
    assert cell(df, "W-W", "MAE") == (pytest.approx(1 / 7), 7)
    assert cell(df, "W-W", "RMSE") == (pytest.approx(math.sqrt(1 / 7)), 7)
    # W-W NDCG: one clip of 5 (ratings 5 3 1 4 4, predictions 5 3 1 4 3); the 2 left over are dropped.
    # Predicted top 3: r=5, r=4, then the tie at 3 → the earlier r=3.
    assert cell(df, "W-W", "NDCG@3") == (pytest.approx((31 + 15 / L3 + 7 / 2) / (31 + 15 / L3 + 15 / 2)), 1)
    # W-C: user 10's two cold items, errors 1 and 0; too few for a clip of ≥ 3 → no NDCG row
    assert cell(df, "W-C", "MAE") == (pytest.approx(0.5), 2)
    assert df[(df.scenario == "W-C") & (df.metric == "NDCG@3")].empty
    # C-W: user 12, predictions clipped to the truth exactly
    assert cell(df, "C-W", "MAE") == (pytest.approx(0.0), 5)
    assert cell(df, "C-W", "NDCG@3") == (pytest.approx(1.0), 1)
    # all (Eq. 13): mean over users of per-user MAE = (1/5 + 1/4 + 0) / 3
    assert cell(df, "all", "MAE") == (pytest.approx((1 / 5 + 1 / 4 + 0) / 3), 3)
    # all (Eq. 14): user 10 ranks r=5, r=3 (tie 3/3 → position), r=4; users 11 and 12 are perfect
    user10 = (31 + 7 / L3 + 15 / 2) / (31 + 15 / L3 + 7 / 2)
    assert cell(df, "all", "NDCG@3") == (pytest.approx((user10 + 1 + 1) / 3), 3)


def test_scenario_metrics_clipping_and_range_sources():
    spec = FeatureSpec(user_fields=(), item_fields=(), rating_min=1.0, rating_max=5.0)
    a = scenario_metrics(PRED, BATCH, method="m", dataset="d", seed=1, rating_range=(1, 5))
    b = scenario_metrics(PRED, BATCH, method="m", dataset="d", seed=1, rating_range=spec)
    raw = scenario_metrics(PRED, BATCH, method="m", dataset="d", seed=1, rating_range=None)
    pd.testing.assert_frame_equal(a, b)
    # unclipped: user 10's first error is 1.5 instead of 0 (W-W MAE rises by 1.5 / 7)
    assert cell(raw, "W-W", "MAE")[0] == pytest.approx(cell(a, "W-W", "MAE")[0] + 1.5 / 7)


def test_scenario_metrics_user_and_rating_averages():
    users = scenario_metrics(PRED, BATCH, method="m", dataset="d", seed=0, rating_range=(1, 5),
                             average="user")
    # W-W per user: user 10 MAE 0, user 11 MAE 1/4
    assert cell(users, "W-W", "MAE") == (pytest.approx((0 + 1 / 4) / 2), 2)
    # W-C per user: only user 10 has cold items (2 ≥ ndcg_min_items): ratings 4, 2 ranked right
    assert cell(users, "W-C", "NDCG@3") == (pytest.approx(1.0), 1)
    ratings = scenario_metrics(PRED, BATCH, method="m", dataset="d", seed=0, rating_range=(1, 5),
                               average="rating")
    # all, pooled: 2 errors of 1 over 14 ratings; NDCG over 14 items = 2 clips of 5 + a kept clip of 4
    assert cell(ratings, "all", "MAE") == (pytest.approx(2 / 14), 14)
    assert cell(ratings, "all", "NDCG@3")[1] == 3


def test_scenario_metrics_extra_columns_and_errors():
    df = scenario_metrics(PRED, BATCH, method="m", dataset="d", seed=0, rating_range=(1, 5), k=2,
                          extra={"preset": "tiny", "variant": "paper"})
    assert list(df.columns) == [*COLUMNS, "preset", "variant"]
    assert (df.preset == "tiny").all() and "NDCG@2" in set(df.metric)
    with pytest.raises(ValueError):
        scenario_metrics(PRED, BATCH, method="m", dataset="d", seed=0, rating_range=(1, 5),
                         extra={"seed": 3})
    with pytest.raises(ValueError):
        scenario_metrics(PRED[:, :4], BATCH, method="m", dataset="d", seed=0, rating_range=(1, 5))


def test_per_user_metrics():
    df = per_user_metrics(PRED, BATCH, rating_range=(1, 5))
    assert list(df.columns) == ["user", "user_cold", "MAE", "RMSE", "NDCG@3", "n"]
    assert df.user.tolist() == [10, 11, 12] and df.user_cold.tolist() == [False, False, True]
    assert df.n.tolist() == [5, 4, 5]
    assert df.MAE.tolist() == pytest.approx([1 / 5, 1 / 4, 0.0])


def test_summarise_mean_std_over_seeds():
    runs = pd.concat([
        scenario_metrics(PRED + shift, BATCH, method=method, dataset="d", seed=seed, rating_range=(1, 5))
        for method, shift in (("B", 0.0), ("A", 0.1)) for seed in (0, 1)
    ])
    runs.loc[(runs.method == "A") & (runs.seed == 1), "value"] += 0.2
    text = summarise(runs)
    assert text.index.tolist() == ["B", "A"]  # order of appearance, not alphabetical
    assert text.columns.names == ["dataset", "scenario", "metric"]
    assert [c[1] for c in text.columns][:3] == ["W-W"] * 3 and text.columns[-1][1] == "all"
    num = summarise(runs, digits=None)
    a = runs[(runs.method == "A") & (runs.scenario == "W-W") & (runs.metric == "MAE")].value
    assert num.loc["A", ("d", "W-W", "MAE", "mean")] == pytest.approx(a.mean())
    assert num.loc["A", ("d", "W-W", "MAE", "std")] == pytest.approx(a.std(ddof=1))
    assert num.loc["A", ("d", "W-W", "MAE", "seeds")] == 2
    assert text.loc["A", ("d", "W-W", "MAE")] == f"{a.mean():.4f} ± {a.std(ddof=1):.4f}"
    with pytest.raises(ValueError, match="told apart"):
        summarise(pd.concat([runs, runs]))  # e.g. two presets of one method


def test_paper_table1_shape_and_summary():
    df = paper_table1()
    assert list(df.columns) == list(COLUMNS) and len(df) == 6 * 2 * 4 * 2
    assert df.groupby(["method", "dataset", "scenario", "metric"]).size().eq(1).all()
    assert df.value.between(0.7, 2.4).all()
    wide = summarise(df)
    assert wide.loc["MAMO", ("movielens-1m", "C-C", "MAE")] == "0.8894"  # one value: no ± std
    assert wide.loc["MeLU", ("book-crossing", "W-W", "NDCG@3")] == "0.9572"
    # ours next to the paper's: one table, the paper's rows first
    ours = pd.concat([scenario_metrics(PRED, BATCH, method="ours", dataset="movielens-1m", seed=s,
                                       rating_range=(1, 5)) for s in (0, 1)])
    both = summarise(pd.concat([df, ours], ignore_index=True))
    assert both.index.tolist()[-1] == "ours"
    assert both.loc["ours", ("movielens-1m", "W-W", "MAE")] == f"{1 / 7:.4f} ± 0.0000"
    assert both.loc["MAMO", ("movielens-1m", "W-W", "RMSE")] == ""  # the paper has no RMSE


PAPER_LABEL = {"s2Meta": "s2 Meta"}


def test_paper_table1_matches_paper_text():
    path = SHARED / "papers" / "mamo-kdd2020.txt"
    if not path.exists():
        pytest.skip(f"{path} not available")
    text = path.read_text(encoding="utf-8")
    df = paper_table1()
    for method, rows in df.groupby("method", sort=False):
        mae_row = " ".join(f"{v:.4f}" for v in rows[rows.metric == "MAE"].value)
        ndcg_row = " ".join(f"{v:.4f}" for v in rows[rows.metric == "NDCG@3"].value)
        label = PAPER_LABEL.get(method, method)
        # the printed table: "<method> MAE <8 values>" followed on the next line by "NDCG@3 <8 values>"
        assert f"{label} MAE {mae_row}\nNDCG@3 {ndcg_row}" in text, method
    # spot checks of single cells, in words
    cell_of = df.set_index(["method", "dataset", "scenario", "metric"]).value
    assert cell_of[("MAMO", "movielens-1m", "C-C", "MAE")] == 0.8894
    assert cell_of[("s2Meta", "movielens-1m", "W-W", "MAE")] == 0.7567
    assert cell_of[("Feature-level RUM", "movielens-1m", "W-W", "NDCG@3")] == 0.9120
    assert cell_of[("MAMO", "book-crossing", "C-W", "NDCG@3")] == 0.8565


def test_paper_table1_matches_baselines_notes():
    path = SHARED / "notes" / "baselines.md"
    if not path.exists():
        pytest.skip(f"{path} not available")
    section = path.read_text(encoding="utf-8").split("## 6.", 1)[1].split("## 7.", 1)[0]
    names = {"s²Meta": "s2Meta"}
    found = {}
    for line in section.splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and re.fullmatch(r"\d\.\d{4}", cells[1]):
            method = names.get(cells[0], cells[0])
            metric = "MAE" if "MAE" not in found.get(method, {}) else "NDCG@3"  # MAE table comes first
            found.setdefault(method, {})[metric] = [float(c) for c in cells[1:]]
    df = paper_table1()
    assert len(found) == 6
    for method, by_metric in found.items():
        for metric, values in by_metric.items():
            ours = df[(df.method == method) & (df.metric == metric)].value.tolist()
            assert ours == values, (method, metric)


# -- NDCG variants (how the paper may have computed it) ---------------------------------------------

def test_ndcg_linear_gain_by_hand():
    import math as _m

    from mamo_lite.metrics import ndcg_at_k

    y = torch.tensor([[5.0, 3.0, 1.0]])
    pred = torch.tensor([[1.0, 2.0, 3.0]])  # ranks the items 1, 3, 5: the worst order
    d = [1 / _m.log2(n + 1) for n in (1, 2, 3)]
    lin = (1 * d[0] + 3 * d[1] + 5 * d[2]) / (5 * d[0] + 3 * d[1] + 1 * d[2])
    exp = (1 * d[0] + 7 * d[1] + 31 * d[2]) / (31 * d[0] + 7 * d[1] + 1 * d[2])
    assert float(ndcg_at_k(pred, y, k=3, gain="linear")) == pytest.approx(lin)
    assert float(ndcg_at_k(pred, y, k=3)) == pytest.approx(exp)
    assert lin > exp  # linear gains compress the differences between ratings


def test_ndcg_ties_by_hand():
    import math as _m

    from mamo_lite.metrics import ndcg_at_k

    y = torch.tensor([[1.0, 5.0, 3.0]])
    const = torch.zeros(1, 3)  # a constant predictor: every item ties
    d = [1 / _m.log2(n + 1) for n in (1, 2)]
    ideal = 31 * d[0] + 7 * d[1]
    assert float(ndcg_at_k(const, y, k=2, ties="optimistic")) == pytest.approx(1.0)
    assert float(ndcg_at_k(const, y, k=2, ties="pessimistic")) == pytest.approx((1 * d[0] + 7 * d[1]) / ideal)
    assert float(ndcg_at_k(const, y, k=2)) == pytest.approx((1 * d[0] + 31 * d[1]) / ideal)  # position order
    pred = torch.tensor([[0.0, 2.0, 2.0]])  # ties only between items 2 and 3: broken by the true rating
    assert float(ndcg_at_k(pred, y, k=2, ties="pessimistic")) == pytest.approx((7 * d[0] + 31 * d[1]) / ideal)
    with pytest.raises(ValueError, match="ties"):
        ndcg_at_k(pred, y, ties="random")


def test_ndcg_variants_by_hand():
    """One user, one scenario: every variant of ndcg_variants against a hand computation."""
    from mamo_lite.evaluate import ndcg_variants

    y = t([5, 3, 1])
    pred = t([1.0, 1.0, 1.0])  # a constant: only the tie rule orders the items
    batch = make_batch(y=y, scenario=torch.zeros(1, 3, dtype=torch.long), mask=torch.ones(1, 3, dtype=torch.bool),
                       user_cold=torch.tensor([False]))
    table = ndcg_variants(pred, batch, rating_range=(1, 5), clips=(3,), scenarios=("W-W",))
    v = table[table["top"] == "ranked"].set_index(["average", "gain", "ties"])["NDCG"]
    s = table[table["top"] == "sorted"].set_index(["average", "gain", "ties"])["NDCG"]
    d = [1 / math.log2(n + 1) for n in (1, 2, 3)]
    ideal_exp = 31 * d[0] + 7 * d[1] + 1 * d[2]
    ideal_lin = 5 * d[0] + 3 * d[1] + 1 * d[2]
    for average in ("user", "clip=3"):
        assert v[(average, "exponential", "optimistic")] == pytest.approx(1.0)
        assert v[(average, "exponential", "position")] == pytest.approx(1.0)  # query order happens to be ideal
        assert v[(average, "exponential", "pessimistic")] == pytest.approx((1 * d[0] + 7 * d[1] + 31 * d[2]) / ideal_exp)
        assert v[(average, "linear", "pessimistic")] == pytest.approx((1 * d[0] + 3 * d[1] + 5 * d[2]) / ideal_lin)
    assert len(v) == 2 * 2 * 3 and len(s) == len(v)
    # top="sorted" (the authors' utils.ndcg): all 3 items are in the top 3, so any order is ideal
    assert (s == 1.0).all()


def test_ndcg_sorted_top_ignores_the_order_within_the_top_k():
    y = t([1, 2, 5, 4])  # predicted ranking: items 0, 1, 2 in the top 3, item 3 (rating 4) left out
    pred = t([4.0, 3.0, 2.0, 1.0])
    d = [1 / math.log2(n + 1) for n in (1, 2, 3)]
    ideal = 31 * d[0] + 15 * d[1] + 3 * d[2]
    assert float(ndcg_at_k(pred, y, top="sorted")) == pytest.approx((31 * d[0] + 3 * d[1] + 1 * d[2]) / ideal)
    assert float(ndcg_at_k(pred, y)) == pytest.approx((1 * d[0] + 3 * d[1] + 31 * d[2]) / ideal)
    with pytest.raises(ValueError, match="top must be"):
        ndcg_at_k(pred, y, top="set")
