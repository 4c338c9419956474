"""The command line: help a newcomer can read, clear errors with exit status 2, and a full round trip."""

from __future__ import annotations

import json
import operator
import subprocess
import sys

import pytest
import torch

from mamo_lite.cli import main, parse_value
from mamo_lite.methods import METHODS


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Processed-data caches go to a temporary folder, not the user's home."""
    monkeypatch.setenv("MAMO_LITE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """``main(args)`` in-process: (exit status, stdout, stderr); argparse's exits are caught."""
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# -- help -----------------------------------------------------------------------------------------

def test_help_explains_methods_checkpoints_and_data(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and all(c in out for c in ("train", "evaluate", "methods", "data", "MAMO_LITE_DATA"))
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0
    for text in ("MAML (Finn", "MeLU (Lee", "MetaCS-DNN", "memories", "what a checkpoint contains",
                 "optimiser state", "MAMO_LITE_DATA", "--data-dir", "download", "--set KEY=VALUE", "smoke"):
        assert text in out, text
    code, out, _ = run(["evaluate", "--help"], capsys)
    assert code == 0 and "CHECKPOINT" in out and "--device" in out


def test_python_m_entry_point():
    python_m = [sys.executable, "-m", "mamo_lite"]  # inherits the private MAMO_LITE_CACHE
    ok = subprocess.run([*python_m, "--version"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "mamo-lite" in ok.stdout
    bad = subprocess.run([*python_m, "train", "--method", "maml", "--dataset", "synthetic", "--preset", "smoke",
                          "--set", "local_lr=-1"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "local_lr" in bad.stderr and "Traceback" not in bad.stderr


# -- errors ---------------------------------------------------------------------------------------

TRAIN = ["train", "--method", "maml", "--dataset", "synthetic", "--preset", "smoke"]


@pytest.mark.parametrize("args, message", [
    (["train", "--method", "sgd", "--dataset", "synthetic"], "invalid choice: 'sgd'"),
    (["train", "--method", "maml", "--dataset", "netflix"], "invalid choice: 'netflix'"),
    (["train", "--dataset", "synthetic"], "the following arguments are required: --method"),
    ([*TRAIN, "--epochs", "-3"], "expected a positive integer, got -3"),
    ([*TRAIN, "--epochs", "two"], "expected a positive integer, got 'two'"),
    ([*TRAIN, "--preset", "huge"], "invalid choice: 'huge'"),
    ([*TRAIN, "--set", "local_lr=-1"], "local_lr (ρ) must be ≥ 0"),
    ([*TRAIN, "--set", "embed_dim=0"], "RecommenderConfig.embed_dim must be"),
    ([*TRAIN, "--set", "inner_steps=1.5"], "inner_steps expects an integer"),
    ([*TRAIN, "--set", "local_lr=fast"], "local_lr expects a number"),
    ([*TRAIN, "--set", "n_memory=5"], "unknown hyper-parameter for maml"),
    ([*TRAIN, "--set", "local_lr"], "expects key=value"),
    ([*TRAIN, "--device", "tpu"], "unknown device"),
    ([*TRAIN, "--data-dir", "/definitely/not/here"], "does not exist"),
    (["evaluate", "/definitely/not/here.pt"], "not found"),
    (["data", "imagenet"], "invalid choice: 'imagenet'"),
])
def test_bad_arguments_exit_2_with_a_clear_message(args, message, capsys):
    code, out, err = run(args, capsys)
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_but_absent(capsys):
    code, _, err = run([*TRAIN, "--device", "cuda"], capsys)
    assert code == 2 and "CUDA is not available" in err and "--device cpu" in err


def test_missing_data_without_download(tmp_path, capsys):
    code, _, err = run(["data", "movielens-1m", "--data-dir", str(tmp_path), "--no-download"], capsys)
    assert code == 2 and "Traceback" not in err and "ml-1m" in err


def test_non_checkpoint_file(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    code, _, err = run(["evaluate", str(tmp_path / "notes.pt")], capsys)
    assert code == 2 and "not a mamo-lite checkpoint" in err


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("1e-3") == 1e-3
    assert parse_value("true") is True and parse_value("False") is False and parse_value("none") is None
    assert parse_value("64,64") == (64, 64) and parse_value("(8,)") == (8,) and parse_value("[1, 2]") == (1, 2)
    assert parse_value("decision,user") == ("decision", "user") and parse_value("adam") == "adam"


# -- commands -------------------------------------------------------------------------------------

def test_methods_lists_every_method_with_defaults(capsys):
    code, out, _ = run(["methods"], capsys)
    assert code == 0
    for method in METHODS:
        assert f"{method}\n" in out
    assert "local_lr=" in out and "global_lr=" in out and "embed_dim=" in out


def test_data_summary(capsys):
    code, out, _ = run(["data", "synthetic"], capsys)
    assert code == 0 and "synthetic" in out and "cold users" in out and "test users" in out


def test_train_then_evaluate_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run(["train", "--method", "mamo", "--dataset", "synthetic", "--preset", "smoke",
                          "--device", "cpu", "--seed", "1", "--out", str(out_dir), "--set", "tau=0.2"], capsys)
    assert code == 0, err
    assert (out_dir / "checkpoint.pt").is_file() and (out_dir / "metrics.json").is_file()
    assert "C-C" in out and "MAE" in out
    report = json.loads((out_dir / "metrics.json").read_text())
    for key in ("metrics", "history", "provenance", "versions", "configs", "wall_seconds", "seed", "device"):
        assert key in report, key
    assert report["seed"] == 1 and report["device"] == "cpu" and report["configs"]["mamo"]["tau"] == 0.2
    assert report["provenance"]["release"] == "synthetic" and report["users"]["train"] == 48
    scenarios = {r["scenario"] for r in report["metrics"]}
    assert scenarios <= {"W-W", "W-C", "C-W", "C-C", "all"} and "all" in scenarios
    assert {(r["split"], r["metric"]) for r in report["history"]} >= {("train", "loss"), ("val", "MAE")}

    code, out, err = run(["evaluate", str(out_dir / "checkpoint.pt"), "--device", "cpu"], capsys)
    assert code == 0, err
    evaluation = json.loads((out_dir / "checkpoint-evaluation.json").read_text())
    # the same learner on the same test users: the same numbers
    key = operator.itemgetter("scenario", "metric")
    assert sorted(map(key, evaluation["metrics"])) == sorted(map(key, report["metrics"]))
    trained = {key(r): r["value"] for r in report["metrics"]}
    for r in evaluation["metrics"]:
        assert r["value"] == pytest.approx(trained[key(r)], abs=1e-12) or (r["value"] is None and trained[key(r)] is None)
    code, _, _ = run(["evaluate", str(out_dir / "checkpoint.pt"), "--device", "cpu", "--steps", "0",
                      "--out", str(tmp_path / "zero.json")], capsys)
    assert code == 0 and json.loads((tmp_path / "zero.json").read_text())["steps"] == 0


@pytest.mark.parametrize("method", ["mamo", "maml"])
def test_fast_paths_train_and_evaluate_to_the_same_numbers(tmp_path, capsys, method):
    """``--fast-paths`` (gathered rows, factored updates, MAMO's fused write): the reference run's metrics to float
    rounding, and the option is recorded; ``evaluate --fast-paths`` scores the reference checkpoint alike."""
    reports = {}
    for fast in (False, True):
        out_dir = tmp_path / f"run-{fast}"
        code, _, err = run(["train", "--method", method, "--dataset", "synthetic", "--preset", "smoke", "--device",
                            "cpu", "--epochs", "2", "--out", str(out_dir), "--set", "inner_steps=2"]
                           + (["--fast-paths"] if fast else []), capsys)
        assert code == 0, err
        reports[fast] = json.loads((out_dir / "metrics.json").read_text())
    assert reports[True]["fast_paths"] is True and reports[False]["fast_paths"] is False
    key = operator.itemgetter("scenario", "metric")
    ref = {key(r): r["value"] for r in reports[False]["metrics"]}
    assert {key(r) for r in reports[True]["metrics"]} == set(ref)
    for r in reports[True]["metrics"]:
        assert r["value"] == pytest.approx(ref[key(r)], rel=1e-4, abs=1e-5), key(r)
    code, _, err = run(["evaluate", str(tmp_path / "run-False" / "checkpoint.pt"), "--device", "cpu",
                        "--fast-paths", "--out", str(tmp_path / "fast.json")], capsys)
    assert code == 0, err
    evaluation = json.loads((tmp_path / "fast.json").read_text())
    assert evaluation["fast_paths"] is True
    for r in evaluation["metrics"]:
        assert r["value"] == pytest.approx(ref[key(r)], rel=1e-4, abs=1e-5), key(r)


@pytest.mark.bad_input(case="learning rates so large that training explodes (e.g. --set global_lr=1e30 with SGD)",
                       handling="exit 3: the event, the method's current rates and smaller ones to try; no NaN table")
def test_a_diverged_run_is_reported_not_hidden(tmp_path, capsys):
    code, out, err = run(["train", "--method", "melu", "--dataset", "synthetic", "--preset", "smoke", "--device", "cpu",
                          "--out", str(tmp_path), "--set", "global_optimizer=sgd", "--set", "global_lr=1e30"], capsys)
    assert code == 3 and "diverged (query loss > 1e6 at epoch 1)" in err and "--set global_lr=1e+29" in err
    assert "NaN" not in out and "MAE" not in out  # no chaotic numbers printed as results
    assert not (tmp_path / "checkpoint.pt").exists()  # no healthy epoch, nothing worth keeping
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["diverged"] == "diverged (query loss > 1e6 at epoch 1)" and report["metrics"] == []
    assert report["checkpoint"] is None and report["best_epoch"] == 0
