"""``mamo_lite.results``: reading results cells back, Table 1's layout, best rows, paired intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mamo_lite import reproduce as rp
from mamo_lite import results


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    out = tmp_path_factory.mktemp("table1")
    rp.table1(["synthetic"], ["global median", "user support mean", "MAMO"], [0, 1], "smoke", out=out,
              show_progress=False)
    return results.load_cells(out)


def test_load_cells_gathers_every_cell(cells):
    assert set(cells.metrics["method"]) == {"global median", "user support mean", "MAMO"}
    assert sorted(cells.metrics["seed"].unique()) == [0, 1]
    assert len(cells.runs) == 6 and {"best_epoch", "diverged", "chosen"} <= set(cells.runs.columns)
    assert len(cells.per_user) == 6 * rp.BUDGETS["smoke"].max_test_users


def test_load_cells_explains_an_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="reproduce table1"):
        results.load_cells(tmp_path)


def test_table_is_mean_plus_minus_std_over_seeds(cells):
    t = results.table(cells.metrics)
    m = cells.metrics.query("method == 'MAMO' and scenario == 'W-W' and metric == 'MAE'")["value"]
    assert t.loc["MAMO", ("synthetic", "W-W", "MAE")] == f"{m.mean():.3f} ± {m.std():.3f}"


def test_best_rows_pick_the_lowest_mae_and_highest_ndcg():
    df = pd.DataFrame([("a", "d", "all", "MAE", 0, 0.8), ("b", "d", "all", "MAE", 0, 0.7),
                       ("a", "d", "all", "NDCG@3", 0, 0.8), ("b", "d", "all", "NDCG@3", 0, 0.7)],
                      columns=["method", "dataset", "scenario", "metric", "seed", "value"])
    best = results.best_rows(df).set_index("metric")["best"]
    assert best["MAE"] == "b" and best["NDCG@3"] == "a"
    assert results.best_rows(df, exclude=("b",)).set_index("metric")["best"]["MAE"] == "a"


def test_a_row_missing_seeds_does_not_compete_by_default():
    """b diverged in seed 1: its one surviving seed must not make it 'best' over a row with every seed."""
    rows = [("a", 0, 0.80), ("a", 1, 0.82), ("b", 0, 0.70)]
    df = pd.DataFrame([(m, "d", "all", "MAE", s, v) for m, s, v in rows],
                      columns=["method", "dataset", "scenario", "metric", "seed", "value"])
    assert results.best_rows(df).set_index("metric")["best"]["MAE"] == "a"
    assert results.best_rows(df, complete_only=False).set_index("metric")["best"]["MAE"] == "b"


def test_paired_interval_on_a_known_difference():
    rng = np.random.default_rng(0)
    users = pd.DataFrame({"user": np.arange(400), "seed": 0, "dataset": "d"})
    base = rng.normal(0.8, 0.3, 400)
    a = users.assign(method="a", MAE=base - 0.05 + rng.normal(0, 0.01, 400))
    b = users.assign(method="b", MAE=base)
    out = results.paired_interval(pd.concat([a, b]), "a", "b", "MAE", "d")
    assert out["low"] < -0.05 < out["high"] and out["high"] < 0 and out["units"] == 400
    # pairing matters: the per-user spread (0.3) would hide a 0.05 difference between two independent means
    assert out["high"] - out["low"] < 0.01
    with pytest.raises(ValueError, match="no per-user"):
        results.paired_interval(pd.concat([a, b]), "a", "c", "MAE", "d")


def test_paired_interval_on_real_cells(cells):
    out = results.paired_interval(cells.per_user, "MAMO", "global median", "MAE", "synthetic")
    assert out["units"] == 2 * rp.BUDGETS["smoke"].max_test_users and out["seeds"] == 2
    assert out["low"] <= out["mean_difference"] <= out["high"]


# -- Table 1 beside the paper, targets, interval tables, coverage ----------------------------------------

def _metrics(rows):
    return pd.DataFrame(rows, columns=["method", "dataset", "scenario", "metric", "seed", "value"])


def test_side_by_side_marks_the_best_complete_row_and_puts_the_paper_beside_ours():
    m = _metrics([("MAMO", "d", "W-W", "MAE", 0, 0.9), ("MAMO", "d", "W-W", "MAE", 1, 0.7),
                  ("DNN", "d", "W-W", "MAE", 0, 0.85), ("DNN", "d", "W-W", "MAE", 1, 0.85),
                  ("X", "d", "W-W", "MAE", 0, 0.1),  # one seed of two: never "best"
                  ("DNN", "d", "all", "spread", 0, 0.3), ("DNN", "d", "all", "spread", 1, 0.5)])
    paper = _metrics([("MAMO", "d", "W-W", "MAE", pd.NA, 0.8725)])
    t = results.side_by_side(m, "d", paper=paper, scenarios=("W-W",), seeds=2, order=["DNN", "MAMO"])
    assert list(t.index) == ["DNN", "MAMO", "X"]
    assert t.loc["MAMO", ("W-W", "ours")] == "0.800 ± 0.141 *"  # the best row with every seed
    assert t.loc["DNN", ("W-W", "ours")] == "0.850 ± 0.000"
    assert t.loc["X", ("W-W", "ours")] == "0.100"  # lower, but it lacks a seed: not marked
    assert t.loc["MAMO", ("W-W", "paper")] == "0.873" and t.loc["DNN", ("W-W", "paper")] == ""
    assert t.loc["X", ("seeds", "")] == "1/2" and t.loc["DNN", ("spread", "")] == "0.400"


def test_side_by_side_best_mark():
    m = _metrics([("A", "d", "W-W", "MAE", 0, 0.9), ("B", "d", "W-W", "MAE", 0, 0.7)])
    t = results.side_by_side(m, "d", scenarios=("W-W",), seeds=1)
    assert t.loc["B", ("W-W", "ours")] == "0.700 *" and t.loc["A", ("W-W", "ours")] == "0.900"
    with pytest.raises(ValueError, match="dataset 'e'"):
        results.side_by_side(m, "e")


def test_targets_compare_our_best_with_the_papers_best_entry():
    m = _metrics([("A", "d", sc, "MAE", s, v) for sc, v in (("W-W", 0.75), ("W-C", 0.9)) for s in (0, 1)])
    paper = _metrics([("P", "d", "W-W", "MAE", pd.NA, 0.76), ("Q", "d", "W-W", "MAE", pd.NA, 0.80),
                      ("P", "d", "W-C", "MAE", pd.NA, 0.95), ("Q", "d", "W-C", "MAE", pd.NA, 0.88)])
    t = results.targets(m, paper, "d", scenarios=("W-W", "W-C"))
    assert t.loc["W-W", "paper best"] == "P" and bool(t.loc["W-W", "met"]) is True
    assert t.loc["W-C", "paper best"] == "Q" and t.loc["W-C", "paper"] == 0.88 and bool(t.loc["W-C", "met"]) is False


def test_interval_table_verdicts():
    rng = np.random.default_rng(0)
    users = np.arange(300)
    base = rng.uniform(0.5, 1.0, 300)
    frames = [pd.DataFrame({"user": users, "MAE": v, "NDCG@3": 1 - v, "method": name, "dataset": "d", "seed": 0})
              for name, v in (("ref", base - 0.1), ("worse", base + rng.normal(0, 0.01, 300)), ("same", base - 0.1 + rng.normal(0, 1e-3, 300)))]
    t = results.intervals(pd.concat(frames), "d", "ref", ["worse", "same"])
    v = t.set_index(["other", "metric"])["verdict"]
    assert v[("worse", "MAE")] == "reference better" and v[("worse", "NDCG@3")] == "reference better"
    assert v[("same", "MAE")] == "no difference shown"
    assert t.set_index(["other", "metric"]).loc[("worse", "MAE"), "difference"] == pytest.approx(-0.1, abs=0.003)
    frames[1]["MAE"] = base  # every difference exactly -0.1: the bootstrap has no spread to resample
    flat = results.intervals(pd.concat(frames), "d", "ref", ["worse"], metrics=("MAE",))
    assert flat["verdict"].item() == "no interval (every difference equal)"


def test_coverage_counts_seeds_and_divergences(cells):
    runs = cells.runs.copy()
    runs.loc[(runs["method"] == "MAMO") & (runs["seed"] == 1), "diverged"] = "diverged (test)"
    c = results.coverage(results.Cells(cells.metrics, cells.per_user, runs), seeds=2)
    assert c.loc["MAMO", "synthetic"] == "1/2, 1 diverged" and c.loc["global median", "synthetic"] == "2/2"


def test_ranks_leave_out_incomplete_rows():
    m = _metrics([("A", "d", "W-W", "MAE", s, 0.9) for s in (0, 1)] + [("B", "d", "W-W", "MAE", s, 0.7) for s in (0, 1)]
                 + [("C", "d", "W-W", "MAE", 0, 0.1)] + [("D", "d", "W-W", "MAE", s, 0.9) for s in (0, 1)])
    r = results.ranks(m, "d", scenarios=("W-W",))
    assert r["W-W"].to_dict() == {"A": 2, "B": 1, "D": 2}
