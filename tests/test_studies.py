"""``mamo_lite.studies``: the paper's Fig. 2 and Fig. 4 as resumable result files (smoke budget, synthetic data)."""

from __future__ import annotations

import json

import pytest
import torch

from mamo_lite import reproduce as rp
from mamo_lite import studies
from mamo_lite.cli import main
from mamo_lite.data import load


def synthetic(name, seed=0, protocol=None):
    return load("synthetic", seed=seed, protocol=protocol)


def test_every_panel_has_the_papers_default_once():
    for name, points in studies.FIG2.items():
        assert sum(p.default for p in points) == 1, name
    # the shared default point is the same configuration in every panel
    defaults = {json.dumps([p.overrides, p.protocol], sort_keys=True) for pts in studies.FIG2.values()
                for p in pts if p.default}
    assert defaults == {json.dumps([{}, {}])}


def test_fig2_points_are_keyed_resumable_and_the_default_is_computed_once(tmp_path, monkeypatch):
    calls = []
    real = rp.run_cell

    def counting(label, dataset, seed, budget, **kw):
        calls.append((kw["row"].overrides and json.dumps(kw["row"].overrides), seed))
        return real(label, dataset, seed, budget, **kw)

    monkeypatch.setattr(studies, "run_cell", counting)
    df = studies.fig2(["rho", "local update"], [0], "smoke", out=tmp_path, loader=synthetic, show_progress=False)
    assert len(calls) == 5  # rho: 3 values, local update: 3 values, one shared default
    assert (tmp_path / "rho" / "0-01" / "seed0.json").is_file()
    assert (tmp_path / "local-update" / "1-batch-step" / "seed0.json").is_file()
    a = json.loads((tmp_path / "rho" / "0-01" / "seed0.json").read_text())
    b = json.loads((tmp_path / "local-update" / "1-batch-step" / "seed0.json").read_text())
    assert a["rows"] == b["rows"] and a["key"] == b["key"]
    assert set(df["panel"]) == {"rho", "local update"} and {"MAE", "NDCG@3", "spread"} <= set(df["metric"])
    # a finished study is read back, not recomputed; a missing point (an interrupted run) is redone alone
    calls.clear()
    studies.fig2(["rho", "local update"], [0], "smoke", out=tmp_path, loader=synthetic, show_progress=False)
    assert calls == []
    (tmp_path / "rho" / "0-1" / "seed0.json").unlink()
    studies.fig2(["rho"], [0], "smoke", out=tmp_path, loader=synthetic, show_progress=False)
    assert calls == [(json.dumps({"local_lr": 0.1}), 0)]
    loaded = studies.load_fig2(tmp_path)
    assert set(loaded["panel"]) == {"rho", "local update"} and loaded["default"].any()


def test_each_panels_default_value_is_the_learners_default():
    from mamo_lite.data.protocol import Protocol
    from mamo_lite.methods import build_learner

    learner = build_learner("mamo", synthetic("movielens-1m").spec, "movielens-1m")
    configs = [learner.config, learner.model.config, learner.mamo_config]
    fields = {"support size": "n_support", "layers": "tower_layers", "embedding size": "embed_dim", "alpha": "alpha",
              "beta": "beta", "rho": "local_lr", "lambda": "global_lr"}
    for panel, field in fields.items():
        default = next(p.value for p in studies.FIG2[panel] if p.default)
        if field == "n_support":
            assert Protocol().n_support == default
        else:
            assert [getattr(c, field) for c in configs if hasattr(c, field)] == [default], panel
    assert round(1 - Protocol().test_fraction, 2) == next(p.value for p in studies.FIG2["train ratio"] if p.default)
    assert learner.config.inner_steps == 1 and learner.config.local_update == "batch"


def test_fig2_point_changes_what_it_says():
    """A panel's point is the default learner with exactly its own setting changed."""
    from mamo_lite.methods import build_learner

    data = synthetic("movielens-1m")
    for panel, field, value in (("rho", "local_lr", 0.1), ("layers", "tower_layers", 3), ("alpha", "alpha", 0.9)):
        point = next(p for p in studies.FIG2[panel] if p.value == value)
        learner = build_learner("mamo", data.spec, "movielens-1m", overrides=point.overrides)
        configs = [learner.config, learner.model.config, learner.mamo_config]
        assert any(getattr(c, field, None) == value for c in configs), (panel, field)
    per_item = next(p for p in studies.FIG2["local update"] if p.value == "per item")
    assert build_learner("mamo", data.spec, "movielens-1m", overrides=per_item.overrides).config.local_update == "per-item"
    support = next(p for p in studies.FIG2["support size"] if p.value == 5)
    cut = synthetic("movielens-1m", protocol=support.protocol).tasks("test")
    assert int(cut.support_mask.sum(1).max()) == 5 and int(cut.query_mask.sum(1).max()) == 5


def test_fig4_curves(tmp_path):
    testing = studies.fig4(["DNN", "NMF"], [5], [0], "smoke", out=tmp_path, loader=synthetic, show_progress=False)
    everything = studies.load_fig4(tmp_path)
    assert set(testing["step"]) == set(studies.FIG4_STEPS)
    runs = everything["runs"].set_index("method")
    assert runs.loc["DNN", "epochs"] == studies.STUDY_BUDGETS["smoke"].max_epochs  # no early stop: full curves
    assert runs.loc["NMF", "epochs"] == studies.STUDY_BUDGETS["smoke"].max_epochs * studies.FIG4_NMF_EPOCH_FACTOR
    # step 0 of the DNN's test curve is the plain DNN's prediction, scored as everywhere else
    from mamo_lite.evaluate import pooled_errors
    from mamo_lite.methods.baselines import PlainDNN, fit_baseline
    from mamo_lite.train import subset_users

    data = synthetic("movielens-1m", protocol={"n_support": 5})
    b = studies.STUDY_BUDGETS["smoke"]
    f = fit_baseline(PlainDNN, subset_users(data.tasks("train"), b.max_train_users, 0),
                     subset_users(data.tasks("val"), b.max_val_users, 0), spec=data.spec, seed=0,
                     max_epochs=b.max_epochs, patience=None, device="cpu", progress=False)
    test = subset_users(data.tasks("test"), b.max_test_users, 0)
    expected = pooled_errors(f.predict(test), test, data.spec)["MAE"]
    got = testing.query("method == 'DNN' and step == 0 and group == 'all'")["MAE"].item()
    assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="support sizes"):
        studies.fig4(["DNN"], [20], [0], "smoke", out=tmp_path, loader=synthetic)


def test_loading_an_empty_folder_says_how_to_compute(tmp_path):
    with pytest.raises(FileNotFoundError, match="reproduce fig2"):
        studies.load_fig2(tmp_path)
    with pytest.raises(FileNotFoundError, match="reproduce fig4"):
        studies.load_fig4(tmp_path)
    with pytest.raises(ValueError, match="budget"):
        studies.fig2(["rho"], [0], "full", out=tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "fig2", "--panels", "gamma"], "unknown panel"),
    (["reproduce", "fig4", "--methods", "MAML"], "unknown method"),
    (["reproduce", "fig4", "--support", "16"], "--support sizes"),
    (["reproduce", "fig2", "--rows", "MAMO"], "--rows does not apply"),
    (["reproduce", "fig4", "--budget", "full"], "--budget full is for table1"),
])
def test_cli_reproduce_figures_rejects_bad_arguments(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_shared_point_has_the_same_numbers_as_a_table1_mamo_cell():
    """A Fig. 2 point is a Table-1 MAMO cell with one setting changed: the default point IS that cell."""
    data = synthetic("movielens-1m")
    cell = rp.run_cell("MAMO", "synthetic", 0, "smoke", data=data)
    point = rp.run_cell("MAMO", "synthetic", 0, "smoke", data=data, row=rp.Row("meta", "mamo", {}))
    assert cell["rows"] == point["rows"]
    assert torch.isfinite(torch.tensor([r["value"] for r in cell["rows"]])).all()


# -- the committed figures cannot drift from the code ----------------------------------------------------

COMMITTED = rp.ROOT / "results"


def _committed(path):
    if not path.is_file():
        pytest.skip(f"{path.relative_to(rp.ROOT)} is not committed")
    from nbval_replay import missing_datasets

    if missing_datasets([studies.DATASET]):
        pytest.skip(f"needs {studies.DATASET} (set MAMO_LITE_DATA)")
    return json.loads(path.read_text())


def test_committed_fig2_default_point_has_the_key_this_code_computes():
    stored = _committed(COMMITTED / "fig2" / "rho" / "0-01" / "seed0.json")
    point = next(p for p in studies.FIG2["rho"] if p.default)
    data = load(studies.DATASET, seed=0)
    assert stored["key"] == studies.fig2_key(point, 0, studies.STUDY_BUDGETS["book"], data)


def test_a_committed_fig4_curve_is_recomputed_within_the_replay_tolerance(tmp_path):
    """NMF at |S| = 5, seed 0 (seconds): recomputed into a fresh folder, the same curves within tolerance."""
    from nbval_replay import TOLERANCES

    stored = _committed(COMMITTED / "fig4" / "nmf" / "s5" / "seed0.json")
    data = load(studies.DATASET, seed=0, protocol={"n_support": 5})
    assert stored["key"] == studies.fig4_key("NMF", 5, 0, studies.STUDY_BUDGETS["book"], data)
    studies.fig4(["NMF"], [5], [0], "book", out=tmp_path, show_progress=False)
    again = json.loads((tmp_path / "nmf" / "s5" / "seed0.json").read_text())
    tol = TOLERANCES["trained"]
    old = [r["MAE"] for r in stored["testing"]] + [r["value"] for r in stored["training"]]
    new = [r["MAE"] for r in again["testing"]] + [r["value"] for r in again["training"]]
    assert len(old) == len(new)
    bad = [(a, b) for a, b in zip(old, new, strict=True) if not tol.allows(a, b)]
    assert not bad, f"recomputed curve moved beyond {tol.describe()}: {bad[:5]}"
