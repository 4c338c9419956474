"""``mamo_lite.reproduce``: Table 1 cells computed once, read back, recomputed only when their inputs change."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import tiny_batch, tiny_spec

import mamo_lite.reproduce as rp
from mamo_lite.cli import main
from mamo_lite.data import load

ROWS = ["global median", "user support mean", "MAML"]


def test_within_user_spread_by_hand():
    batch = tiny_batch(tiny_spec(), n_users=2, n_query=3, seed=0)
    batch = batch.replace(query_mask=torch.tensor([[True, True, True], [True, False, False]]))
    pred = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    # user 0: population std of (1, 2, 3) = sqrt(2/3); user 1 has one real rating and is left out
    assert rp.within_user_spread(pred, batch, (1.0, 5.0)) == pytest.approx((2 / 3) ** 0.5)
    clipped = torch.tensor([[0.0, 5.0, 9.0], [4.0, 4.0, 4.0]])  # clipped to 1..5 first: (1, 5, 5)
    assert rp.within_user_spread(clipped, batch, (1.0, 5.0)) == pytest.approx(torch.tensor([1.0, 5, 5]).std(unbiased=False).item())


def test_slugs_are_file_names():
    assert rp.slug("MAMO (as coded)") == "mamo-as-coded" and rp.slug("DNN + fine-tuning") == "dnn-plus-fine-tuning"
    assert rp.slug("MetaCS-DNN (λ validated)") == "metacs-dnn-lambda-validated" and rp.slug("s²Meta") == "s2meta"
    assert len({rp.slug(r) for r in rp.ROWS}) == len(rp.ROWS)
    assert all(rp.slug(r).isascii() for r in rp.ROWS)


def test_the_global_median_is_the_median_training_rating():
    data = load("synthetic", seed=0)
    cell = rp.run_cell("global median", "synthetic", 0, "smoke", data=data)
    budget = rp.BUDGETS["smoke"]
    train = rp.subset_users(data.tasks("train"), budget.max_train_users, 0)
    test = rp.subset_users(data.tasks("test"), budget.max_test_users, 0)
    median = torch.cat([train.support_y[train.support_mask], train.query_y[train.query_mask]]).median()
    # Eq. 13 by hand: each test user's mean |median − y| over its real query ratings, then the mean over users
    m = test.query_mask.double()
    per_user = ((median - test.query_y).abs() * m).sum(1) / m.sum(1)
    mae = next(r["value"] for r in cell["rows"] if r["scenario"] == "all" and r["metric"] == "MAE")
    assert mae == pytest.approx(float(per_user.mean()), rel=1e-6)
    spread = [r for r in cell["rows"] if r["metric"] == "spread"]
    assert len(spread) == 1 and spread[0]["value"] == 0.0  # a constant has no within-user spread


def test_cells_are_written_read_back_and_recomputed_only_when_their_inputs_change(tmp_path, monkeypatch):
    first = rp.table1(["synthetic"], ROWS, [0, 1], "smoke", out=tmp_path, show_progress=False)
    files = sorted(tmp_path.rglob("seed*.json"))
    assert len(files) == 6 and (tmp_path / "table1.csv").is_file() and (tmp_path / "table1.json").is_file()
    cell = json.loads(files[0].read_text())
    assert {"key", "rows", "per_user", "info", "provenance"} <= set(cell)
    assert len(cell["per_user"]["user"]) == len(cell["per_user"]["MAE"]) == rp.BUDGETS["smoke"].max_test_users
    assert {"commit", "device", "versions", "data", "budget"} <= set(cell["provenance"])
    assert set(first["metric"]) == {"MAE", "RMSE", "NDCG@3", "spread"}

    calls = []
    real = rp.run_cell
    monkeypatch.setattr(rp, "run_cell", lambda *a, **k: calls.append(a[:3]) or real(*a, **k))
    again = rp.table1(["synthetic"], ROWS, [0, 1], "smoke", out=tmp_path, show_progress=False)
    assert calls == [] and again.equals(first)  # everything read back

    rp.table1(["synthetic"], ["global mean"], [0], "smoke", out=tmp_path, show_progress=False)
    summary = pd.read_csv(tmp_path / "table1.csv")
    assert set(summary["method"]) == {*ROWS, "global mean"}  # the folder's summary keeps the earlier rows
    calls.clear()

    (tmp_path / "synthetic" / "maml" / "seed1.json").unlink()  # an interrupted run: this cell is missing
    rp.table1(["synthetic"], ROWS, [0, 1], "smoke", out=tmp_path, show_progress=False)
    assert calls == [("MAML", "synthetic", 1)]

    calls.clear()
    old = rp.ROWS["user support mean"]
    monkeypatch.setitem(rp.ROWS, "user support mean", rp.Row(old.kind, old.method, old.overrides, note="reworded"))
    rp.table1(["synthetic"], ROWS, [0], "smoke", out=tmp_path, show_progress=False)
    assert calls == []  # a row's note is documentation: its cells stay valid

    monkeypatch.setitem(rp.ROWS, "MAML", rp.Row("meta", "maml", {"local_lr": 2e-3}))  # the row changed
    rp.table1(["synthetic"], ROWS, [0], "smoke", out=tmp_path, show_progress=False)
    assert calls == [("MAML", "synthetic", 0)]


def test_same_seed_cells_are_reproducible(tmp_path):
    a = rp.run_cell("MAML", "synthetic", 3, "smoke", data=load("synthetic", seed=3), chosen={"local_lr": 1e-3})
    b = rp.run_cell("MAML", "synthetic", 3, "smoke", data=load("synthetic", seed=3), chosen={"local_lr": 1e-3})
    assert a["rows"] == b["rows"] and a["info"]["best_epoch"] == b["info"]["best_epoch"]
    assert a["info"]["chosen"] == {"local_lr": 1e-3}
    with pytest.raises(ValueError, match="has a grid"):
        rp.run_cell("MAML", "synthetic", 3, "smoke", data=load("synthetic", seed=3))


def test_grid_values_are_chosen_on_validation_users_and_a_diverged_point_never_wins(tmp_path, monkeypatch):
    monkeypatch.setitem(rp.ROWS, "MAML", rp.Row("meta", "maml", {"global_optimizer": "sgd"},
                                                grid={"global_lr": (1e30, 0.05, 0.01)}))
    chosen, table = rp.tune("MAML", "synthetic", "smoke", load("synthetic", seed=0))
    assert [t["global_lr"] for t in table] == [1e30, 0.05, 0.01]
    assert table[0]["diverged"] and table[0]["val_MAE"] is None
    healthy = [t for t in table if t["val_MAE"] is not None]
    assert chosen == {"global_lr": min(healthy, key=lambda t: t["val_MAE"])["global_lr"]}
    rp.table1(["synthetic"], ["MAML"], [0], "smoke", out=tmp_path, show_progress=False)
    grid = json.loads((tmp_path / "synthetic" / "maml" / "grid.json").read_text())
    cell = json.loads((tmp_path / "synthetic" / "maml" / "seed0.json").read_text())
    assert grid["chosen"] == chosen == cell["info"]["chosen"] and "validation" in grid["selected_on"]


def test_a_diverged_cell_is_an_event_not_a_number(tmp_path, monkeypatch):
    monkeypatch.setitem(rp.ROWS, "MAML", rp.Row("meta", "maml", {"global_lr": 1e30, "global_optimizer": "sgd"}))
    table = rp.table1(["synthetic"], ["MAML"], [0], "smoke", out=tmp_path, show_progress=False)
    assert table.empty
    facts = json.loads((tmp_path / "table1.json").read_text())["this_run"]["cells"]
    assert facts[0]["diverged"].startswith("diverged")


def test_cli_reproduce(tmp_path, capsys):
    assert main(["reproduce", "table1", "--datasets", "synthetic", "--seeds", "1", "--budget", "smoke",
                 "--rows", "global median", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["reproduce", "table1", "--rows", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown row(s) ['nope']" in capsys.readouterr().err


def test_trained_baseline_rows_choose_epochs_on_validation_users():
    data = load("synthetic", seed=0)
    for label in ("DNN + fine-tuning", "NMF"):
        cell = rp.run_cell(label, "synthetic", 0, "smoke", data=data)
        assert cell["info"]["best_epoch"] >= 1 and not cell["info"]["diverged"], label
        assert {r["metric"] for r in cell["rows"]} == {"MAE", "RMSE", "NDCG@3", "spread"}
    with pytest.raises(ValueError, match="has a grid"):
        rp.run_cell("RUM (item)", "synthetic", 0, "smoke", data=data)  # its A.2.2 search comes first


# -- the committed results cannot drift from the code ----------------------------------------------

COMMITTED = rp.ROOT / "results" / "table1"


def _committed_cell(dataset: str, label: str, seed: int) -> dict:
    path = COMMITTED / dataset / rp.slug(label) / f"seed{seed}.json"
    if not path.is_file():
        pytest.skip(f"{path.relative_to(rp.ROOT)} is not committed")
    from nbval_replay import missing_datasets

    if missing_datasets([dataset]):
        pytest.skip(f"needs {dataset} (set MAMO_LITE_DATA)")
    return json.loads(path.read_text())


def _values(rows: list[dict]) -> dict:
    return {(r["scenario"], r["metric"]): r["value"] for r in rows}


def test_a_committed_constant_cell_is_recomputed_exactly():
    stored = _committed_cell("movielens-1m", "global median", 0)
    again = rp.run_cell("global median", "movielens-1m", 0, stored["provenance"]["budget"]["name"],
                        data=load("movielens-1m", seed=0))
    assert _values(again["rows"]) == pytest.approx(_values(stored["rows"]), rel=1e-9)


@pytest.mark.slow
def test_a_committed_trained_cell_is_recomputed_within_the_replay_tolerance():
    """The DNN on MovieLens-1M, seed 0, retrained: the same epoch and numbers within the book's tolerance."""
    from nbval_replay import TOLERANCES

    stored = _committed_cell("movielens-1m", "DNN", 0)
    again = rp.run_cell("DNN", "movielens-1m", 0, stored["provenance"]["budget"]["name"],
                        data=load("movielens-1m", seed=0))
    tol = TOLERANCES["trained"]
    old, new = _values(stored["rows"]), _values(again["rows"])
    assert old.keys() == new.keys()
    bad = {k: (old[k], new[k]) for k in old if not tol.allows(old[k], new[k])}
    assert not bad, f"recomputed cell moved beyond {tol.describe()}: {bad}"


def test_provenance_commit_is_read_once_per_process(monkeypatch):
    """A long run records the code it started with: a commit or an edit made while it runs (the checkout
    changing under it) does not relabel its later cells."""
    import subprocess

    from mamo_lite import reproduce

    reproduce._commit.cache_clear()
    first = reproduce._commit()

    def changed(cmd, **kw):  # the checkout as it would read after a new commit and an edit
        out = "f" * 40 if "rev-parse" in cmd else " M mamo_lite/reproduce.py"
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(reproduce.subprocess, "run", changed)
    assert reproduce._commit() == first
    reproduce._commit.cache_clear()
    assert reproduce._commit() == {"commit": "f" * 40, "dirty": True}  # what a fresh process would record
    reproduce._commit.cache_clear()
