"""The benchmark scripts: those that need hardware this machine may lack fail clearly instead of
half-running; ``bench/floor.py`` runs in seconds with ``--quick`` and its FLOP count equals what the engine
executes; the named presets are what they say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: bench/gpu.sh would run for real")
def test_gpu_script_stops_at_once_without_cuda(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "gpu"), "HOME": str(tmp_path)},
                         check=False)
    assert run.returncode == 3, run.stderr
    assert "sees no CUDA GPU" in run.stderr and "nothing was measured" in run.stderr
    assert not (tmp_path / "gpu").exists()  # nothing half-written


# -- bench/floor.py and the named presets ---------------------------------------------------------

@pytest.fixture
def bench_modules(monkeypatch):
    """``bench/floor.py`` and ``bench/bench_engine.py`` imported as the scripts import each other."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("floor"), importlib.import_module("bench_engine")


def test_floor_quick_writes_the_table_and_json_in_seconds(tmp_path):
    out = tmp_path / "floor.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "floor.py"), "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert "meas/floor" in run.stdout and "wrote" in run.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    machine = report["machine"]
    assert machine["device_name"] and machine["torch"] == torch.__version__
    assert machine["thread_env"]["OMP_WAIT_POLICY"] == "PASSIVE"  # set by importing mamo_lite before torch
    assert isinstance(machine["contended"], bool) and len(machine["load_average_1_5_15min"]) == 3
    rows = report["results"]
    assert [(r["config"], r["order"], r["gather_rows"]) for r in rows] == [("maml", "first", False),
                                                                          ("maml", "first", True)]
    for r in rows:
        assert r["finite_loss"] and r["flop_per_user"] > 0 and r["floor_ms_per_user"] > 0
        assert len(r["measured_ms_per_user_rounds"]) == 2
        assert r["measured_ms_per_user_min"] <= r["measured_ms_per_user"] <= r["measured_ms_per_user_max"]
        assert r["measured_over_floor"] == pytest.approx(r["measured_ms_per_user"] / r["floor_ms_per_user"])
        assert r["engine_matmul_flop_per_user"] == pytest.approx(r["flop_per_user"])  # MAML does no extra matmul
    assert report["matmul_gflop_per_s"] and all(m["gflop_per_s"] > 0 for m in report["matmul_gflop_per_s"])


@pytest.mark.parametrize("first_order", [True, False], ids=["first", "second"])
@pytest.mark.parametrize("method, extra", [
    ("maml", {}), ("melu", {}), ("metacs-dnn", {}), ("maml", {"local_update": "per-item", "inner_steps": 2}),
], ids=["maml", "melu", "metacs-dnn", "maml-per-item"])
def test_the_floor_counts_every_matmul_the_engine_runs(bench_modules, method, extra, first_order):
    """The analytic count (2·m·n·k per matmul, forward, backward, double backward) equals
    ``torch.utils.flop_counter`` on the engine: for these methods the engine does no matmul the floor omits."""
    from helpers import tiny_batch, tiny_learner

    floor, _ = bench_modules
    learner = tiny_learner(method, first_order=first_order, **extra)
    batch = tiny_batch(n_users=2, n_support=4, n_query=3)
    counted = floor.flop_per_user(learner, n_support=4, n_query=3)
    assert sum(counted["by_shape"].values()) == pytest.approx(counted["first" if first_order else "second"])
    assert floor.engine_matmul_flop(learner, batch) == pytest.approx(counted["first" if first_order else "second"])


def test_mamo_authors_preset_is_the_authors_configuration(bench_modules):
    _, bench_engine = bench_modules
    from mamo_lite.models.recommender import GROUPS
    from mamo_lite.reproduce import MAMO_AS_CODED

    method, overrides = bench_engine.resolve("mamo-authors")
    assert method == "mamo" and overrides == {**MAMO_AS_CODED, "preference": "code"}
    learner = bench_engine.build("mamo-authors", first_order=True, gather=True)
    cfg, model = learner.config, learner.model
    assert (cfg.inner_steps, cfg.local_groups, cfg.first_order, learner.gather_rows) == (9, GROUPS, True, True)
    assert model.config.embed_dim == 100 and model.config.head == "classification"
    assert [(m.in_features, m.out_features) for m in model.user_tower if isinstance(m, torch.nn.Linear)] == \
        [(300, 150), (150, 100)]
    assert [(m.in_features, m.out_features) for m in model.item_tower if isinstance(m, torch.nn.Linear)] == \
        [(400, 200), (200, 100)]
    assert model.preference.weight.shape == (200, 200)
    assert bench_engine.has_local_tables(learner)
    assert not bench_engine.has_local_tables(bench_engine.build("mamo", first_order=True))
    with pytest.raises(ValueError, match="unknown configuration"):
        bench_engine.resolve("mamo-paper")
