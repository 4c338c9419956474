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
