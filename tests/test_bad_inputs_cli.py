"""Bad inputs and faults of the command line, the checkpoints and the configurations (issue 10).

Each test marked ``bad_input`` failed before its fix; the marks' ``case``/``handling`` sentences are
the book's published list of bad inputs. Training runs use the synthetic dataset at the ``smoke``
preset (seconds).
"""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
from test_cli import _private_cache, run  # noqa: F401 (_private_cache: an autouse fixture)

from mamo_lite.checkpoint import CheckpointError, load_checkpoint
from mamo_lite.cli import main
from mamo_lite.meta.engine import MetaConfig
from mamo_lite.methods.mamo import MAMOConfig
from mamo_lite.models.recommender import RecommenderConfig

INF, NAN = float("inf"), float("nan")




SMOKE = ["--dataset", "synthetic", "--preset", "smoke", "--device", "cpu"]


def train(method: str, out, *extra: str) -> list[str]:
    return ["train", "--method", method, *SMOKE, "--out", str(out), *extra]


# -- A: non-finite and out-of-range hyper-parameters ------------------------------------------------

@pytest.mark.bad_input(case="a learning rate, write rate, τ or init scale that is inf or NaN",
                       handling="refused: the error names the field, its valid range and its default")
@pytest.mark.parametrize("cls, field, value", [
    (MetaConfig, "local_lr", INF), (MetaConfig, "global_lr", INF), (MetaConfig, "global_lr", NAN),
    (MAMOConfig, "tau", INF), (MAMOConfig, "tau", NAN), (MAMOConfig, "alpha", INF),
    (MAMOConfig, "gradient_init_std", NAN), (MAMOConfig, "gradient_init_std", -0.1),
    (RecommenderConfig, "negative_slope", NAN),
])
def test_non_finite_hyper_parameters_are_refused(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}.* must be .*finite.*default"):
        cls(**{field: value})


@pytest.mark.bad_input(case="a zero or negative layer width in decision_hidden, or an empty decision_hidden",
                       handling="refused before any network is built: the error names the field")
@pytest.mark.parametrize("field, value", [
    ("decision_hidden", (64, -3)), ("decision_hidden", (0,)), ("decision_hidden", ()),
])
def test_non_positive_widths_are_refused(field, value):
    with pytest.raises(ValueError, match=f"RecommenderConfig.{field}"):
        RecommenderConfig(**{field: value})


@pytest.mark.bad_input(case="--set global_lr=1e999 (parsed as inf) or --set decision_hidden=64,-3",
                       handling="exit 2 before training, naming the field and its valid range")
@pytest.mark.parametrize("setting, message", [
    ("global_lr=1e999", "MetaConfig.global_lr (λ) must be > 0 and finite, got inf"),
    ("local_lr=1e999", "MetaConfig.local_lr (ρ) must be ≥ 0 and finite, got inf"),
    ("decision_hidden=64,-3", "RecommenderConfig.decision_hidden must be"),
])
def test_cli_refuses_non_finite_and_negative_settings(setting, message, tmp_path, capsys):
    code, out, err = run(train("mamo", tmp_path / "run", "--set", setting), capsys)
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err and "training" not in out


# -- H: --set values of the wrong type ----------------------------------------------------------------

@pytest.mark.bad_input(case="--set with a value of the wrong type (decision_hidden=abc, field_dim=abc, preference=5)",
                       handling="exit 2 naming the key, the expected type or options, the value and the default")
@pytest.mark.parametrize("setting, message", [
    ("decision_hidden=abc", ("--set decision_hidden=abc: decision_hidden expects a comma-separated list of "
                            "integers, e.g. 64,64 or none; mamo's default is decision_hidden=none")),
    ("field_dim=abc", "--set field_dim=abc: field_dim expects an integer or none"),
    ("preference=5", ("--set preference=5: preference expects one of paper, code, none; "
                     "mamo's default is preference=paper")),
    ("use_bias=maybe", "--set use_bias=maybe: use_bias expects true or false; mamo's default is use_bias=true"),
])
def test_set_type_errors_name_key_type_value_and_options(setting, message, tmp_path, capsys):
    code, out, err = run(train("mamo", tmp_path / "run", "--set", setting), capsys)
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err


def test_set_accepts_integral_floats_and_reads_nan_as_a_number():
    from mamo_lite.cli import parse_overrides

    assert parse_overrides(["embed_dim=1e2", "tau=0.2"], "mamo", "synthetic") == {"embed_dim": 100, "tau": 0.2}
    assert math.isnan(parse_overrides(["tau=nan"], "mamo", "synthetic")["tau"])  # the config then refuses it


# -- G: out-of-range numbers that used to crash ----------------------------------------------------------

@pytest.mark.bad_input(case="a negative seed or one above 2**32 - 1 (--seed -1, --seed 2**64)",
                       handling="exit 2: a seed must lie in [0, 2**32 - 1]")
@pytest.mark.parametrize("seed", ["-1", str(2**64)])
@pytest.mark.parametrize("command", ["train", "data"])
def test_seed_out_of_range_exits_2(command, seed, tmp_path, capsys):
    args = train("maml", tmp_path / "run", "--seed", seed) if command == "train" else ["data", "synthetic", "--seed", seed]
    code, out, err = run(args, capsys)
    assert code == 2, (out, err)
    assert "a seed must lie in [0, 4294967295]" in err and "Traceback" not in err


@pytest.mark.bad_input(case="a network too big for memory, e.g. --set embed_dim=100000 (≈ 10⁵ GiB)",
                       handling="exit 2 before allocating: the estimated GiB, the limit, and --max-memory to raise it")
def test_a_network_too_big_is_refused_before_allocation(tmp_path, capsys):
    code, out, err = run(train("mamo", tmp_path / "run", "--set", "embed_dim=100000"), capsys)
    assert code == 2, (out, err)
    assert "GiB to train" in err and "over the limit of 16 GiB" in err and "--max-memory" in err
    assert not (tmp_path / "run").exists()


def test_the_memory_limit_comes_from_the_flag_or_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAMO_LITE_MAX_MEMORY_GIB", "0.001")
    code, _, err = run(train("maml", tmp_path / "run"), capsys)
    assert code == 2 and "over the limit of 0.001 GiB" in err
    code, _, err = run(train("maml", tmp_path / "run", "--max-memory", "4"), capsys)  # the flag wins
    assert code == 0, err


# -- C: mismatched or tampered checkpoints ---------------------------------------------------------------

@pytest.fixture(scope="module")
def maml_run(tmp_path_factory):
    """A smoke-size MAML run on synthetic data: its folder holds checkpoint.pt and metrics.json."""
    out = tmp_path_factory.mktemp("maml-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAMO_LITE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(train("maml", out, "--no-progress")) == 0
    return out


def _tampered(src, dst, edit) -> str:
    obj = torch.load(src / "checkpoint.pt", weights_only=True)
    edit(obj)
    torch.save(obj, dst)
    return str(dst)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(obj):
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


def _drop_weight(obj):
    obj["state_dict"].pop(next(iter(obj["state_dict"])))


def _wider_net(obj):
    obj["configs"]["model"]["embed_dim"] += 1


def _drop(key):
    return lambda obj: obj.pop(key)


@pytest.mark.bad_input(case="a checkpoint that was edited or mixed up (unknown method, wrong configuration, weights "
                            "of another network, missing fields)",
                       handling="exit 2 with one CheckpointError saying what does not fit")
@pytest.mark.parametrize("edit, message", [
    (_set("method", "sgd"), "saved for the method 'sgd', which this mamo_lite does not know"),
    (_set("method", "mamo"), "says its method is 'mamo' but holds no MAMO memory configuration"),
    (_wider_net, "its weights do not fit the maml network"),
    (_drop_weight, "its weights do not fit the maml network"),
    (_set("configs", "meta", "local_lr", -1.0), "has invalid configurations (MetaConfig.local_lr"),
    (_set("configs", "model", "colour", "red"), "has invalid configurations"),
    (_drop("spec"), "is incomplete: it has no spec"),
    (_set("spec", "user_fields", "gender"), "has an unreadable feature spec"),
    (_set("optimizer", "param_groups", []), "its optimiser state does not fit"),
    (_set("extra", "not a dict"), "its field 'extra' is a str, not a dict"),
])
def test_tampered_checkpoints_exit_2_with_the_reason(maml_run, edit, message, tmp_path, capsys):
    path = _tampered(maml_run, tmp_path / "edited.pt", edit)
    code, out, err = run(["evaluate", path, "--device", "cpu"], capsys)
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(path)


# -- D: a checkpoint evaluated on data with another feature spec -----------------------------------------

def _checkpoint_for(spec, path, dataset="synthetic"):
    from mamo_lite.checkpoint import save_checkpoint
    from mamo_lite.methods import build_learner

    learner = build_learner("maml", spec, dataset, overrides={"embed_dim": 3, "tower_layers": 1,
                                                              "decision_hidden": (4,)})
    save_checkpoint(path, learner, method="maml", dataset=dataset, epoch=1, history=None, data_provenance=None,
                    seed=0)
    return str(path)


def _synthetic_spec():
    from mamo_lite.data import load

    return load("synthetic", None, seed=0).spec


@pytest.mark.bad_input(case="evaluate on data whose features differ from the checkpoint's (e.g. fewer or more "
                            "directors, other fields, another rating scale)",
                       handling="exit 2 naming the field that differs, with both values, before predicting")
@pytest.mark.parametrize("change, message", [
    ({"director": 50}, "the checkpoint was trained on synthetic with 50 director values; the data has 126"),
    ({"director": 1597}, "the checkpoint was trained on synthetic with 1597 director values; the data has 126"),
    ({"rating_max": 10.0}, "the checkpoint was trained on synthetic ratings 1–10; the data's ratings are 1–5"),
    ({"rename": "sex"}, "with the user fields sex, age, occupation; the data has gender, age, occupation"),
])
def test_evaluate_refuses_data_with_another_feature_spec(change, message, tmp_path, capsys):
    import dataclasses

    spec = _synthetic_spec()
    if "director" in change:
        items = tuple(dataclasses.replace(f, vocab_size=change["director"]) if f.name == "director" else f
                      for f in spec.item_fields)
        spec = dataclasses.replace(spec, item_fields=items)
    elif "rating_max" in change:
        spec = dataclasses.replace(spec, rating_max=change["rating_max"])
    else:
        users = (dataclasses.replace(spec.user_fields[0], name=change["rename"]), *spec.user_fields[1:])
        spec = dataclasses.replace(spec, user_fields=users)
    code, out, err = run(["evaluate", _checkpoint_for(spec, tmp_path / "other.pt"), "--device", "cpu"], capsys)
    assert code == 2, (out, err)
    assert message in err and "does not fit this data" in err and "Traceback" not in err


# -- I: same seed, same checkpoint bytes ---------------------------------------------------------------

@pytest.mark.bad_input(case="two runs with the same seed wrote checkpoints that differ only in wall-clock times",
                       handling="checkpoints hold no wall-clock fields (timings live in metrics.json): "
                                "same seed, same bytes")
def test_same_seed_runs_write_byte_identical_checkpoints(tmp_path, capsys):
    for name in ("a", "b"):
        code, _, err = run(train("mamo", tmp_path / name, "--no-progress"), capsys)
        assert code == 0, err
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == (tmp_path / "b" / "checkpoint.pt").read_bytes()
    report = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert "wall_seconds" in report and any(r["metric"] == "seconds" for r in report["history"])


# -- B: divergence ------------------------------------------------------------------------------------

@pytest.mark.bad_input(case="a run that diverges after some healthy epochs",
                       handling="exit 3 with the likely fix; the checkpoint holds the last healthy epoch")
def test_divergence_after_a_healthy_epoch_keeps_that_epoch(tmp_path, capsys, monkeypatch):
    import dataclasses

    import mamo_lite.train as train_mod

    real_fit = train_mod.fit

    def fit_that_diverges_in_epoch_2(*args, **kwargs):  # epoch 1 is real and healthy
        result = real_fit(*args, **{**kwargs, "epochs": 1})
        return dataclasses.replace(result, diverged="diverged (query loss > 1e6 at epoch 2)", diverged_epoch=2,
                                   epochs_run=2)

    monkeypatch.setattr(train_mod, "fit", fit_that_diverges_in_epoch_2)
    code, out, err = run(train("maml", tmp_path / "run", "--epochs", "2"), capsys)
    assert code == 3, (out, err)
    assert "maml diverged (query loss > 1e6 at epoch 2)" in err and "epoch 1, the last healthy one" in err
    assert "--set global_lr=0.0001 --set local_lr=0.001 (this run: global_lr=0.001 with adam, local_lr=0.01)" in err
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")[1]["epoch"] == 1
    assert "best epoch 1 of 2" in out  # the healthy epoch's test table is shown
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["diverged"].startswith("diverged") and report["checkpoint"] == "checkpoint.pt"


@pytest.mark.bad_input(case="evaluate a checkpoint whose weights are NaN or inf",
                       handling="exit 3: says the predictions would not be finite and the run diverged; no NaN table")
def test_evaluate_refuses_non_finite_weights(maml_run, tmp_path, capsys):
    def poison(obj):
        name = next(iter(obj["state_dict"]))
        obj["state_dict"][name] = torch.full_like(obj["state_dict"][name], float("nan"))

    path = _tampered(maml_run, tmp_path / "nan.pt", poison)
    code, out, err = run(["evaluate", path, "--device", "cpu"], capsys)
    assert code == 3, (out, err)
    assert "holds non-finite weights" in err and "diverged" in err and "NaN" not in out
    assert not (tmp_path / "nan-evaluation.json").exists()


# -- J: a scenario without test ratings ----------------------------------------------------------------

@pytest.mark.bad_input(case="test users with no rating in one scenario (e.g. no C-C ratings)",
                       handling="the scenario is listed with n = 0 and undefined (—) metrics, not dropped")
def test_a_scenario_without_ratings_is_shown_with_n_0(capsys):
    from helpers import tiny_batch

    from mamo_lite.cli import _print_table
    from mamo_lite.evaluate import scenario_metrics

    batch = tiny_batch(n_users=4, n_query=5, seed=3)
    batch.query_scenario = batch.query_scenario % 3  # W-W, W-C, C-W only
    pred = torch.full(batch.query_y.shape, 3.0)
    metrics = scenario_metrics(pred, batch, method="m", dataset="d", seed=0, rating_range=(1, 5))
    _print_table("test users (4):", metrics)
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip()}
    assert rows["C-C"][1:] == ["—", "—", "—", "0", "0"]  # ratings, users
    assert "no test ratings in C-C (n = 0)" in out
    assert [r for r in rows if r in ("W-W", "W-C", "C-W", "C-C", "all")] == ["W-W", "W-C", "C-W", "C-C", "all"]


# -- E: outputs that cannot be written ------------------------------------------------------------------

@pytest.mark.bad_input(case="--out in a place that cannot be written (under a file, a read-only folder)",
                       handling="exit 2 before training: a probe file is written first")
def test_an_unwritable_out_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    code, out, err = run(train("maml", tmp_path / "notes.txt" / "run"), capsys)
    assert code == 2, (out, err)
    assert "cannot write there" in err and "Traceback" not in err and "training" not in out


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o500)
    code, out, err = run(train("maml", tmp_path / "ro" / "run"), capsys)
    assert code == 2 and "cannot write there" in err and "training" not in out


@pytest.mark.bad_input(case="the disk fills up (or the folder becomes read-only) while a run is training",
                       handling="the results are printed first; the failed write is named, exit 4")
def test_a_failed_write_after_training_keeps_the_printed_results(tmp_path, capsys, monkeypatch):
    import errno

    import mamo_lite.checkpoint as checkpoint_mod

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_mod, "atomic_torch_save", full_disk)
    code, out, err = run(train("maml", tmp_path / "run"), capsys)
    assert code == 4, (out, err)
    assert "C-W" in out and "MAE" in out  # the test table came first
    assert "could not write" in err and "checkpoint.pt (No space left on device)" in err and "Traceback" not in err
    assert (tmp_path / "run" / "metrics.json").is_file()  # what could be written was written


@pytest.mark.bad_input(case="evaluate --out DIR, an existing folder",
                       handling="writes DIR/<checkpoint name>-evaluation.json")
def test_evaluate_out_may_be_a_folder(maml_run, tmp_path, capsys):
    code, _, err = run(["evaluate", str(maml_run / "checkpoint.pt"), "--device", "cpu", "--out", str(tmp_path)],
                         capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "checkpoint-evaluation.json").read_text())["command"] == "evaluate"


# -- F: --out already holds a run; --overwrite and --resume ------------------------------------------------

@pytest.mark.bad_input(case="--out already holds a run (of this or another method)",
                       handling="exit 2 before training: --overwrite replaces it, --resume continues it")
def test_an_existing_run_is_not_overwritten_silently(maml_run, tmp_path, capsys):
    before = (maml_run / "checkpoint.pt").read_bytes()
    code, out, err = run(train("mamo", maml_run), capsys)
    assert code == 2, (out, err)
    assert "already holds a run (maml on synthetic, seed 0, 1 epoch(s))" in err
    assert "--overwrite" in err and "--resume" in err and "training" not in out
    assert (maml_run / "checkpoint.pt").read_bytes() == before


def test_overwrite_replaces_the_run_and_its_stale_files(tmp_path, capsys):
    assert run(train("maml", tmp_path / "run"), capsys)[0] == 0
    (tmp_path / "run" / "last.pt").unlink()
    code, _, err = run(train("melu", tmp_path / "run", "--overwrite", "--set", "global_optimizer=sgd",
                             "--set", "global_lr=1e30"), capsys)
    assert code == 3 and "diverged" in err  # no healthy epoch: no checkpoint, and no stale maml one either
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.json"]


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.bad_input(case="a run interrupted before its last epoch",
                       handling="--resume continues from OUT/last.pt: epochs numbered on, optimiser state kept")
def test_train_2_epochs_equals_train_1_then_resume_1(tmp_path, capsys):
    batches = ["--set", "users_per_batch=16"]  # 48 training users: three meta-batches per epoch
    assert run(train("maml", tmp_path / "straight", "--epochs", "2", *batches), capsys)[0] == 0
    assert run(train("maml", tmp_path / "split", "--epochs", "1", *batches), capsys)[0] == 0
    code, out, err = run(train("maml", tmp_path / "split", "--epochs", "2", "--resume"), capsys)
    assert code == 0, err
    assert "resuming maml on synthetic (smoke preset, epochs 2–2" in out
    straight, split = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "split"))
    assert split["resumed_from_epoch"] == 1 and split["epochs_run"] == 2 == straight["epochs_run"]
    assert split["best_epoch"] == straight["best_epoch"]
    assert [(r["epoch"], r["metric"]) for r in split["history"] if r["metric"] != "seconds"] == \
        [(r["epoch"], r["metric"]) for r in straight["history"] if r["metric"] != "seconds"]
    # fit(start_epoch=1) replays the first epoch's shuffle, so the resumed run is the same computation.
    for name in ("checkpoint.pt", "last.pt"):
        a, b = _weights(tmp_path / "straight" / name), _weights(tmp_path / "split" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert straight["metrics"] == split["metrics"]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["optimizer"]["state"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["optimizer"]["state"]
    assert all(float(a[i]["step"]) == float(b[i]["step"]) == 6 for i in a)  # Adam's state carried over


def test_resume_refuses_another_method_or_a_finished_run(tmp_path, capsys):
    assert run(train("maml", tmp_path / "run"), capsys)[0] == 0
    code, _, err = run(train("mamo", tmp_path / "run", "--resume", "--epochs", "2"), capsys)
    assert code == 2 and "holds a run with method 'maml' (asked: 'mamo')" in err
    code, _, err = run(train("maml", tmp_path / "run", "--resume"), capsys)
    assert code == 2 and "has already run 1 of 1 epoch(s); ask for more with --epochs N (N > 1)" in err
    code, _, err = run(train("maml", tmp_path / "empty", "--resume"), capsys)
    assert code == 2 and "has no last.pt to continue from" in err
