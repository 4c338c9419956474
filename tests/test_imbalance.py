"""``mamo_lite.imbalance``: per-group results as keyed, resumable files (smoke budget, synthetic data).

GreatMeta's own protocol keeps only users with 40–200 ratings, which leaves 23 synthetic users; the
tests load it with a looser window (``LOOSE``) so that every split has a few dozen users.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mamo_lite import imbalance as im
from mamo_lite.cli import main
from mamo_lite.data import load
from mamo_lite.data.protocol import GreatMetaProtocol

LOOSE = GreatMetaProtocol(min_ratings=15, max_ratings=None, split_ratios=(0.5, 0.2, 0.3))


def synthetic(name, seed=0, protocol=None, loose=LOOSE):
    assert name == "synthetic"
    return load("synthetic", seed=seed, protocol=None if protocol is None else loose)


def _counting(monkeypatch) -> list[tuple]:
    calls = []
    real = im.groups_cell

    def counting(label, dataset, protocol, seed, budget, **kw):
        calls.append((label, protocol, seed))
        return real(label, dataset, protocol, seed, budget, **kw)

    monkeypatch.setattr(im, "groups_cell", counting)
    return calls


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """MAML and GreatMeta, both protocols, one seed: 4 cells (and MAML's ρ chosen once per protocol)."""
    out = tmp_path_factory.mktemp("groups")
    df = im.groups_study(["MAML", "greatmeta"], ["synthetic"], ["mamo", "greatmeta"], [0], "smoke", out=out,
                         loader=synthetic, show_progress=False)
    return out, df


def test_files_are_written_per_protocol_dataset_method_and_seed(study):
    out, df = study
    for protocol in ("mamo", "greatmeta"):
        for method in ("maml", "greatmeta"):
            cell = json.loads((out / protocol / "synthetic" / method / "seed0.json").read_text())
            assert cell["protocol"] == protocol and cell["dataset"] == "synthetic" and cell["seed"] == 0
            assert cell["provenance"]["protocol"]["kind"] == protocol
            assert cell["info"]["best_epoch"] >= 1 and cell["info"]["diverged"] is None
        assert (out / protocol / "synthetic" / "maml" / "grid.json").is_file()
    assert sorted(df.method.unique()) == ["GreatMeta", "MAML"] and sorted(df.protocol.unique()) == ["greatmeta", "mamo"]
    assert set(df.grouping) == {"taste", "histogram"} and set(df.metric) == {"MAE", "RMSE", "NDCG@3"}
    # GreatMeta's protocol: user cold-start only, every query rating C-W
    scen = im.load_groups(out)["scenarios"]
    assert set(scen.query("protocol == 'greatmeta'").scenario) == {"C-W", "all"}
    assert {"W-W", "C-C"} <= set(scen.query("protocol == 'mamo'").scenario)


def test_the_key_includes_the_protocol(study):
    out, _ = study
    keys = {p: json.loads((out / p / "synthetic" / "greatmeta" / "seed0.json").read_text())["key"]
            for p in ("mamo", "greatmeta")}
    assert keys["mamo"] != keys["greatmeta"]


def test_finished_cells_are_not_recomputed_and_a_changed_protocol_is(study, monkeypatch, tmp_path):
    out, _ = study
    calls = _counting(monkeypatch)
    im.groups_study(["MAML", "GreatMeta"], ["synthetic"], ["mamo", "greatmeta"], [0], "smoke", out=out,
                    loader=synthetic, show_progress=False)
    assert calls == []
    # an interrupted run: one cell missing, only it is computed
    copy = tmp_path / "copy"
    for path in out.rglob("*.json"):
        target = copy / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (copy / "greatmeta" / "synthetic" / "maml" / "seed0.json").unlink()
    df = im.groups_study(["MAML", "GreatMeta"], ["synthetic"], ["mamo", "greatmeta"], [0], "smoke", out=copy,
                         loader=synthetic, show_progress=False)
    assert calls == [("MAML", "greatmeta", 0)]
    assert len(df) == len(im.load_groups(out)["groups"])
    # the same protocol name with other settings is another cell: recomputed
    other = GreatMetaProtocol(min_ratings=16, max_ratings=None, split_ratios=(0.5, 0.2, 0.3))
    calls.clear()
    im.groups_study(["GreatMeta"], ["synthetic"], ["greatmeta"], [0], "smoke", out=copy, show_progress=False,
                    loader=lambda name, seed=0, protocol=None: synthetic(name, seed, protocol, loose=other))
    assert calls == [("GreatMeta", "greatmeta", 0)]


def test_group_metrics_equal_a_hand_aggregation_of_the_per_user_rows(study):
    out, _ = study
    frames = im.load_groups(out)
    pu, groups = frames["per_user"], frames["groups"]
    assert list(pu.columns[:4]) == ["protocol", "dataset", "method", "seed"]
    assert list(pu.columns[4:4 + len(im.PER_USER_COLUMNS)]) == list(im.PER_USER_COLUMNS)
    checked = 0
    for (protocol, method), users in pu.groupby(["protocol", "method"]):
        for grouping in im.GROUPINGS:
            for group, part in [*users.groupby(f"group_{grouping}"), ("all", users)]:
                for metric in ("MAE", "NDCG@3"):
                    values = part[metric].dropna()
                    got = groups.query("protocol == @protocol and method == @method and grouping == @grouping "
                                       "and group == @group and metric == @metric")
                    assert len(got) == 1
                    assert got.value.iloc[0] == pytest.approx(values.mean(), abs=2e-6)
                    assert got.users.iloc[0] == len(values) and got.ratings.iloc[0] == part.n[values.index].sum()
                    checked += 1
    assert checked == 2 * 2 * 2 * 3 * 2  # protocols × methods × groupings × (majority, minority, all) × metrics
    # the 'all' group is the cell's own per-user mean (Eq. 13), as in its scenario table
    scen = frames["scenarios"].query("grouping == 'taste' and group == 'all' and scenario == 'all' and metric == 'MAE'")
    for _, r in scen.iterrows():
        mine = pu.query("protocol == @r.protocol and method == @r.method")
        assert r.value == pytest.approx(mine.MAE.mean(), abs=2e-6)


def test_labels_are_model_free_and_a_quantile_of_the_evaluated_users(study):
    out, _ = study
    pu = im.load_groups(out)["per_user"]
    for protocol, part in pu.groupby("protocol"):
        by_method = {m: p.sort_values("user").reset_index(drop=True) for m, p in part.groupby("method")}
        a, b = by_method.values()
        assert a.user.tolist() == b.user.tolist()
        for grouping, column in im.GROUPINGS.items():
            assert a[f"group_{grouping}"].tolist() == b[f"group_{grouping}"].tolist()  # the same for every method
            scored = a[a[column].notna()]
            minority = scored[f"group_{grouping}"] == "minority"
            assert minority.mean() == pytest.approx(0.2, abs=0.05)
            assert scored[column][minority].min() >= scored[column][~minority].max()  # the farthest users
    data = synthetic("synthetic", 0)
    users = data.tasks("test").user_ids.numpy()[:30]
    labels = im.label_test_users(data, users)
    assert labels.user.tolist() == users.tolist()
    assert (labels.n_support == data.ratings.query("set == 'support'").groupby("user").size()[users].to_numpy()).all()


def test_table1_cells_give_the_same_groups_as_a_groups_run(study, tmp_path):
    """from_table1 labels the Table-1 cells' test users instead of training again: the per-group numbers must
    be the ones a groups run computes under MAMO's protocol (MAML: the same validated ρ, the same training)."""
    from mamo_lite import reproduce as rp

    out, _ = study
    rows = ["MAML", "global median", "user support mean"]
    rp.table1(["synthetic"], rows, [0], "smoke", out=tmp_path / "t1", loader=synthetic, show_progress=False)
    im.groups_study(rows, ["synthetic"], ["mamo"], [0], "smoke", out=out, loader=synthetic, show_progress=False)
    derived = im.from_table1(tmp_path / "t1", loader=synthetic)
    stored = im.load_groups(out)["groups"].query("protocol == 'mamo' and metric != 'RMSE'")
    keys = ["method", "grouping", "group", "metric"]
    a = derived["groups"].set_index(keys).sort_index()
    b = stored[stored.method.isin(rows)].set_index(keys).sort_index()
    assert sorted(a.index.get_level_values("method").unique()) == sorted(rows)
    assert a.index.equals(b.index) and (a["users"] == b["users"]).all()
    np.testing.assert_allclose(a["value"], b["value"], rtol=0, atol=2e-6)  # cells store per-user values to 6 places
    assert set(derived["per_user"].columns) >= {"protocol", "user", "MAE", "group_taste", "group_histogram"}
    with pytest.raises(ValueError, match="not a Table-1 row"):
        im.from_table1(tmp_path / "t1", methods=["GreatMeta (as coded)"], loader=synthetic)


def test_group_table_and_intervals_by_hand():
    import pandas as pd

    rows = []
    for seed, (maj, mino) in enumerate([(1.0, 1.5), (0.8, 1.1)]):
        for group, value in (("majority", maj), ("minority", mino), ("all", (maj + mino) / 2)):
            rows.append({"protocol": "mamo", "dataset": "d", "method": "A", "seed": seed, "grouping": "taste",
                         "group": group, "metric": "MAE", "value": value})
    t = im.group_table(pd.DataFrame(rows))
    assert t.loc[("mamo", "d", "A"), ("gap", "mean")] == pytest.approx(0.4)  # (0.5 + 0.3) / 2
    assert t.loc[("mamo", "d", "A"), ("gap", "std")] == pytest.approx(np.std([0.5, 0.3], ddof=1))
    assert t.loc[("mamo", "d", "A"), ("minority", "seeds")] == 2
    with pytest.raises(ValueError, match="grouping"):
        im.group_table(pd.DataFrame(rows), grouping="nope")
    # intervals: only the chosen group's users, paired by (seed, user)
    pu = pd.DataFrame([{"protocol": "mamo", "dataset": "d", "method": m, "seed": 0, "user": u, "MAE": v,
                        "group_taste": "minority" if u < 3 else "majority"}
                       for u in range(6) for m, v in (("A", 1.0 + 0.1 * u), ("B", 1.2 + 0.1 * u + 0.01 * (u % 2)))])
    iv = im.group_intervals(pu, [("A", "B"), ("A", "missing")])
    assert len(iv) == 1 and iv.loc[0, "units"] == 3
    assert iv.loc[0, "diff"] == pytest.approx(np.mean([-0.2, -0.21, -0.2]))
    assert iv.loc[0, "low"] <= iv.loc[0, "diff"] <= iv.loc[0, "high"]


def test_bad_inputs_say_what_to_do(tmp_path):
    def run(**kw):
        args = {"methods": ["MAML"], "datasets": ["synthetic"], "protocols": ["mamo"], "seeds": [0], "budget": "smoke",
                "out": tmp_path, "loader": synthetic}
        return im.groups_study(**{**args, **kw})

    with pytest.raises(ValueError, match="unknown method 'DNN'"):
        run(methods=["DNN"])
    with pytest.raises(ValueError, match="protocols must name"):
        run(protocols=["melu"])
    with pytest.raises(ValueError, match="datasets must name"):
        run(datasets=["netflix"])
    with pytest.raises(ValueError, match="budget must be one of"):
        run(budget="full")
    with pytest.raises(ValueError, match="quantile"):
        run(quantile=0.7)
    with pytest.raises(ValueError, match="seeds"):
        run(seeds=[-1])
    with pytest.raises(FileNotFoundError, match="reproduce groups"):
        im.load_groups(tmp_path / "empty")
    assert im.method_label("greatmeta-as-coded") == "GreatMeta (as coded)" and im.method_label("melu") == "MeLU"
    assert im.protocol_for("greatmeta", "book-crossing").split_ratios == (0.8, 0.1, 0.1)
    assert im.protocol_for("mamo", "movielens-1m") is None


def test_cli_reproduce_groups(tmp_path, capsys):
    out = tmp_path / "groups"
    code = main(["reproduce", "groups", "--datasets", "synthetic", "--protocols", "mamo", "--methods", "greatmeta",
                 "--seeds", "1", "--budget", "smoke", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert (out / "mamo" / "synthetic" / "greatmeta" / "seed0.json").is_file()
    shown = capsys.readouterr().out
    assert "minority" in shown and "taste" in shown


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "dnn"], "unknown method 'dnn' for `reproduce groups`"),
    (["--budget", "full"], "--budget full is for table1"),
    (["--support", "5"], "--support does not apply"),
])
def test_cli_reproduce_groups_rejects_bad_arguments(argv, message, capsys, tmp_path):
    code = main(["reproduce", "groups", "--datasets", "synthetic", "--out", str(tmp_path / "o"), *argv])
    assert code != 0 and message in capsys.readouterr().err


def test_cli_protocols_only_for_groups(capsys, tmp_path):
    assert main(["reproduce", "table1", "--protocols", "mamo", "--out", str(tmp_path / "t")]) != 0
    assert "--protocols does not apply to `reproduce table1`" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a protocol
        main(["reproduce", "groups", "--protocols", "melu"])


def test_a_diverged_cell_is_written_without_metrics(tmp_path, monkeypatch):
    def diverged(*args, **kw):
        data = kw["data"]
        return None, data.tasks("test"), data, {"diverged": "diverged (test)", "best_epoch": 0}

    monkeypatch.setattr(im, "cell_predictions", diverged)
    im.groups_study(["MAMO"], ["synthetic"], ["mamo"], [0], "smoke", out=tmp_path, loader=synthetic,
                    show_progress=False)
    cell = json.loads((tmp_path / "mamo" / "synthetic" / "mamo" / "seed0.json").read_text())
    assert cell["groups"] == [] and cell["info"]["diverged"] == "diverged (test)"
    runs = im.load_groups(tmp_path)["runs"]
    assert runs.diverged.tolist() == ["diverged (test)"]


def test_docstrings_are_valid_restructuredtext():
    """The API page renders the module and its members with autodoc under a strict build."""
    import inspect

    from test_greatmeta import rst_problems

    docs = {"module": im.__doc__, **{n: inspect.getdoc(getattr(im, n)) for n in im.__all__
                                     if callable(getattr(im, n))}}
    for name, doc in docs.items():
        assert rst_problems(doc) == [], name


# -- committed results: the code still computes them ---------------------------------------------------------

def _committed_groups_cell(protocol: str, dataset: str, label: str, seed: int) -> dict:
    from nbval_replay import missing_datasets

    from mamo_lite.reproduce import ROOT, slug

    path = ROOT / "results" / "groups" / protocol / dataset / slug(label) / f"seed{seed}.json"
    if not path.is_file():
        pytest.skip(f"{path.relative_to(ROOT)} is not committed")
    if missing_datasets([dataset]):
        pytest.skip(f"needs {dataset} (set MAMO_LITE_DATA)")
    return json.loads(path.read_text())


def _group_values(cell: dict) -> dict:
    return {(r["grouping"], r["group"], r["metric"]): r["value"] for r in cell["groups"]}


def test_a_committed_constant_groups_cell_is_recomputed_exactly(tmp_path):
    stored = _committed_groups_cell("greatmeta", "movielens-100k", "user support mean", 0)
    im.groups_study(["user support mean"], ["movielens-100k"], ["greatmeta"], [0], "book", out=tmp_path,
                    show_progress=False)
    again = json.loads((tmp_path / "greatmeta" / "movielens-100k" / "user-support-mean" / "seed0.json").read_text())
    assert again["key"] == stored["key"]
    assert _group_values(again) == pytest.approx(_group_values(stored), rel=1e-9)


@pytest.mark.slow
def test_a_committed_greatmeta_groups_cell_is_recomputed_within_the_replay_tolerance(tmp_path):
    """GreatMeta under its own protocol on MovieLens-100K, seed 0 (about a minute): same key, same numbers
    within the book's ``trained`` tolerance (the selected epoch may differ where two epochs nearly tie)."""
    from nbval_replay import TOLERANCES

    stored = _committed_groups_cell("greatmeta", "movielens-100k", "GreatMeta", 0)
    im.groups_study(["GreatMeta"], ["movielens-100k"], ["greatmeta"], [0], "book", out=tmp_path, show_progress=False)
    again = json.loads((tmp_path / "greatmeta" / "movielens-100k" / "greatmeta" / "seed0.json").read_text())
    assert again["key"] == stored["key"]
    tol = TOLERANCES["trained"]
    old, new = _group_values(stored), _group_values(again)
    assert old.keys() == new.keys()
    bad = {k: (old[k], new[k]) for k in old if not tol.allows(old[k], new[k])}
    assert not bad, f"recomputed cell moved beyond {tol.describe()}: {bad}"
