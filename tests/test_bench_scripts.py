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
    assert not any(r["fused_memory_write"] or r["factored_updates"] for r in rows)  # both opt-in, off by default
    for r in rows:
        assert r["finite_loss"] and r["flop_per_user"] > 0 and r["floor_ms_per_user"] > 0
        assert len(r["measured_ms_per_user_rounds"]) == 2
        assert r["measured_ms_per_user_min"] <= r["measured_ms_per_user"] <= r["measured_ms_per_user_max"]
        assert r["measured_over_floor"] == pytest.approx(r["measured_ms_per_user"] / r["floor_ms_per_user"])
        assert r["engine_matmul_flop_per_user"] == pytest.approx(r["flop_per_user"])  # MAML does no extra matmul
    assert report["matmul_gflop_per_s"] and all(m["gflop_per_s"] > 0 for m in report["matmul_gflop_per_s"])


def test_floor_times_the_batched_path_per_group_count(tmp_path):
    """``--groups``: one row per count of user groups on the batched path (the thread rule's evidence), recorded
    as ``batched_threads``; the reference path gets one row; a count below 1 is a usage error."""
    out = tmp_path / "floor.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "floor.py"), "--quick", "--gather", "on", "--batched",
                          "off,on", "--groups", "1,2", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert [(r["batched_users"], r["batched_threads"]) for r in rows] == [(False, 1), (True, 1), (True, 2)]
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "floor.py"), "--quick", "--groups", "0", "--out",
                          str(tmp_path / "bad.json")], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and "--groups takes auto or counts" in bad.stderr and not (tmp_path / "bad.json").exists()


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


# -- bench/bench_engine.py: interleaved rounds ----------------------------------------------------

def test_bench_engine_rounds_are_interleaved_with_alternating_order(bench_modules):
    _, bench_engine = bench_modules
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def run(self, batches, record=True):
            calls.append((self.name, batches, record))

    bench_engine.time_interleaved([Fake("a"), Fake("b"), Fake("c")], rounds=3, batches=2, warmup=1)
    assert calls == [("a", 1, False), ("b", 1, False), ("c", 1, False),
                     ("a", 2, True), ("b", 2, True), ("c", 2, True),
                     ("c", 2, True), ("b", 2, True), ("a", 2, True),
                     ("a", 2, True), ("b", 2, True), ("c", 2, True)]


def _bench_engine_quick(tmp_path, *args: str):
    """``bench_engine.py --quick`` on the CPU with ``args``, writing into ``tmp_path``: the finished process (status 0
    checked) and its JSON report."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_engine.py"), "--quick", *args, "--devices",
                          "cpu", "--out", str(tmp_path / "engine-{device}.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    return run, json.loads((tmp_path / "engine-cpu.json").read_text(encoding="utf-8"))


def test_bench_engine_quick_reports_median_and_spread_per_figure(tmp_path):
    run, report = _bench_engine_quick(tmp_path, "--methods", "melu,mamo", "--paths", "loop,vmap", "--fused", "off,on")
    assert "(min-max)" in run.stdout and "wrote" in run.stdout
    assert report["machine"]["thread_env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert report["timing"]["rounds"] == 2 and report["batches_timed"] == 2
    rows = report["results"]
    # fused only where there is a memory write to fuse (MAMO), every configuration on both paths
    assert [(r["method"], r["path"], r["fused_memory_write"]) for r in rows] == [
        ("melu", "loop", False), ("melu", "vmap", False), ("mamo", "loop", False), ("mamo", "vmap", False),
        ("mamo", "loop", True), ("mamo", "vmap", True)]
    for r in rows:  # the keys earlier JSON had, plus the spread over rounds
        assert r["finite_loss"] and r["order"] == "first" and r["device"] == "cpu" and r["rounds"] == 2
        assert len(r["batch_seconds"]) == r["batches_timed"] == 2 and len(r["round_median_seconds"]) == 2
        assert r["users_per_s_min"] <= r["users_per_s"] <= r["users_per_s_max"]
        assert r["epoch_seconds_min"] <= r["epoch_seconds"] <= r["epoch_seconds_max"]
        assert r["epoch_seconds"] == pytest.approx(report["users_per_epoch"] / r["users_per_s"])
        assert (r["vmap_speedup"] is None) == (r["path"] == "loop")


def test_fused_memory_write_is_timed_only_where_mamo_writes_m_u(bench_modules):
    _, bench_engine = bench_modules
    assert bench_engine.has_fusable_write("mamo") and bench_engine.has_fusable_write("mamo-authors")
    assert not bench_engine.has_fusable_write("maml")
    grid = bench_engine.setting_grid(["maml", "mamo"], ["first"], ["off", "on"], ["off", "on"])
    assert grid == [("maml", "first", False, False, False, False), ("maml", "first", True, False, False, False),
                    ("mamo", "first", False, False, False, False), ("mamo", "first", False, True, False, False)]


def test_factored_updates_are_timed_only_where_the_default_per_user_algorithm_runs(bench_modules):
    """``--factored on`` where the engine's Eq. 11 adapts a local linear layer of an ``EmbeddingRecommender``
    (MAML, MAMO, the authors' MAMO); not for s²Meta and GreatMeta, which replace that algorithm."""
    _, bench_engine = bench_modules
    assert bench_engine.build("mamo", first_order=True, factored=True).factored_updates is True
    assert bench_engine.build("mamo", first_order=True).factored_updates is False  # opt-in
    assert bench_engine.has_factored_path("maml") and bench_engine.has_factored_path("mamo-authors")
    assert not bench_engine.has_factored_path("s2meta") and not bench_engine.has_factored_path("greatmeta")
    grid = bench_engine.setting_grid(["maml", "s2meta", "greatmeta", "mamo-authors"], ["first"], ["off"], ["off"],
                                     ["off", "on"])
    assert grid == [("maml", "first", False, False, False, False), ("maml", "first", False, False, True, False),
                    ("s2meta", "first", False, False, False, False), ("greatmeta", "first", False, False, False, False),
                    ("mamo-authors", "first", False, False, False, False),
                    ("mamo-authors", "first", False, False, True, False)]
    assert bench_engine.setting_grid(["maml"], ["first"], ["off"], ["off"]) == [("maml", "first", False, False, False,
                                                                                 False)]


def test_batched_users_are_timed_only_where_the_default_per_user_algorithm_runs(bench_modules):
    """``--batched on`` for MAML, MeLU, MAMO (not s²Meta, GreatMeta), and only on the vmap path."""
    _, bench_engine = bench_modules
    assert bench_engine.build("maml", first_order=True, batched=True).batched_users is True
    assert bench_engine.build("maml", first_order=True).batched_users is False  # opt-in
    assert bench_engine.has_batched_path("melu") and bench_engine.has_batched_path("mamo-authors")
    assert not bench_engine.has_batched_path("s2meta") and not bench_engine.has_batched_path("greatmeta")
    grid = bench_engine.setting_grid(["melu", "s2meta"], ["first"], ["off"], ["off"], ["off"], ["off", "on"])
    assert grid == [("melu", "first", False, False, False, False), ("melu", "first", False, False, False, True),
                    ("s2meta", "first", False, False, False, False)]


def test_bench_engine_quick_times_batched_users(tmp_path):
    run, report = _bench_engine_quick(tmp_path, "--methods", "maml", "--paths", "vmap,loop", "--batched", "off,on")
    assert "batched" in run.stdout.splitlines()[0]
    rows = report["results"]
    assert [(r["path"], r["batched_users"]) for r in rows] == [("vmap", False), ("loop", False), ("vmap", True)]
    assert all(r["finite_loss"] for r in rows)
    assert rows[2]["vmap_speedup"] > 0  # against the loop of the same options


def test_bench_engine_quick_times_factored_updates(tmp_path):
    run, report = _bench_engine_quick(tmp_path, "--methods", "melu", "--paths", "vmap", "--factored", "off,on")
    assert "factored" in run.stdout.splitlines()[0]
    rows = report["results"]
    assert [(r["method"], r["factored_updates"]) for r in rows] == [("melu", False), ("melu", True)]
    assert all(r["finite_loss"] for r in rows)
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_engine.py"), "--factored", "maybe"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "--factored" in bad.stderr


def test_fused_memory_write_runs_one_pass_fewer(bench_modules):
    """The fused write does no matmul of its own: the engine's count drops by the separate pass's, and with
    it nearly all of the work the engine did beyond the floor."""
    from helpers import TINY_NETS, tiny_batch, tiny_spec

    from mamo_lite.methods import build_learner

    floor, _ = bench_modules
    torch.manual_seed(0)
    learner = build_learner("mamo", tiny_spec(), overrides=TINY_NETS["maml"])  # MAMO extends MAML's network
    batch = tiny_batch(n_users=2, n_support=4, n_query=3)
    plain = floor.engine_matmul_flop(learner, batch)
    learner.fused_memory_write = True
    fused = floor.engine_matmul_flop(learner, batch)
    counted = floor.flop_per_user(learner, n_support=4, n_query=3)["first"]
    assert fused < plain and abs(fused - counted) < plain - counted


# -- bench/stalls.py: wait policy × threads, one child process per setting ------------------------

def test_stalls_quick_runs_each_setting_in_its_own_process(tmp_path):
    out = tmp_path / "stalls.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "stalls.py"), "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert "p99/med" in run.stdout and "wrote" in run.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    machine = report["machine"]
    assert machine["device_name"] and machine["torch"] == torch.__version__
    assert isinstance(machine["contended"], bool) and len(machine["load_average_1_5_15min"]) == 3
    rows = report["results"]
    assert [(r["omp_wait_policy"], r["torch_threads"], r["method"]) for r in rows] == [("unset", 2, "melu"),
                                                                                       ("PASSIVE", 2, "melu")]
    # what OpenMP saw when the child loaded torch: nothing for "unset" (torch before mamo_lite), else the setting
    assert [r["omp_wait_policy_at_torch_import"] for r in rows] == [None, "PASSIVE"]
    for r in rows:
        assert r["steps"] == len(r["seconds"]) == 6 and r["torch_threads"] == 2
        assert r["min_ms"] <= r["median_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["p99_over_median"] == pytest.approx(r["p99_ms"] / r["median_ms"])
    assert [(e["command"], e["torch_loaded"], e["omp_wait_policy_at_torch_import"]) for e in report["entry_points"]] \
        == [("python -m mamo_lite methods", True, "PASSIVE")]
    assert report["fast_paths"] is False


def test_stalls_times_the_fast_paths_on_request(tmp_path):
    out = tmp_path / "stalls-fast.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "stalls.py"), "--quick", "--fast-paths",
                          "--no-entry-check", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["fast_paths"] is True
    assert [(r["omp_wait_policy"], r["method"], r["steps"]) for r in report["results"]] == [("unset", "melu", 6),
                                                                                          ("PASSIVE", "melu", 6)]


@pytest.fixture
def stalls(monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("stalls")


def test_stalls_statistics(stalls):
    seconds = [0.01] * 98 + [0.05, 1.0]
    s = stalls.summarise(seconds)
    assert s["median_ms"] == pytest.approx(10) and s["p99_ms"] == pytest.approx(50) and s["max_ms"] == pytest.approx(1e3)
    assert s["p99_over_median"] == pytest.approx(5) and s["stalls_over_10x_median"] == 1
    assert stalls.percentile([3, 1, 2], 50) == 2 and stalls.percentile([5], 99) == 5


def test_every_entry_point_loads_torch_with_the_passive_wait_policy(stalls, tmp_path):
    """The CLI, ``reproduce`` and the benchmarks import ``mamo_lite`` before torch, so OpenMP sees PASSIVE; the
    check itself notices a script that imports torch first."""
    checked = stalls.check_entry_points()
    assert {e["command"] for e in checked} >= {"python -m mamo_lite methods", "python -m mamo_lite reproduce --help",
                                               "python bench/bench_engine.py --help", "python bench/floor.py --help"}
    for e in checked:
        assert e["returncode"] == 0 and e["torch_loaded"], e
        assert e["omp_wait_policy_at_torch_import"] == "PASSIVE" and e["mamo_lite_imported_first"], e
    torch_first = tmp_path / "torch_first.py"
    torch_first.write_text("import torch\nimport mamo_lite\n", encoding="utf-8")
    seen = stalls.watch_torch_import("path", str(torch_first))
    assert seen["torch_loaded"] and seen["omp_wait_policy_at_torch_import"] is None
    assert seen["omp_wait_policy_at_exit"] == "PASSIVE"  # set by mamo_lite, too late for OpenMP


# -- bench/authors.py: the authors' MAMO side by side (their code is never in the repository) ------------

def test_authors_configuration_specs(monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    authors = importlib.import_module("authors")
    assert authors.parse_config("mamo-authors+gather+fused+factored") == ("mamo-authors", True, True, True, False)
    assert authors.parse_config("mamo+batched") == ("mamo", False, False, False, True)
    assert authors.parse_config("mamo+factored") == ("mamo", False, False, True, False)
    assert authors.parse_config("mamo") == ("mamo", False, False, False, False)
    with pytest.raises(ValueError, match="unknown flag"):
        authors.parse_config("mamo-authors+gather+faster")
    assert [authors.parse_config(c) for c in authors.DEFAULT_CONFIGS.split(",")] == [
        ("mamo-authors", False, False, False, False), ("mamo-authors", True, True, False, False),
        ("mamo-authors", True, True, True, False), ("mamo-authors", True, True, False, True),
        ("mamo", False, False, False, False), ("mamo", False, True, False, True)]


def test_authors_script_refuses_an_absent_or_unprepared_checkout(tmp_path):
    def run(checkout):
        return subprocess.run([sys.executable, str(ROOT / "bench" / "authors.py"), str(checkout), "--quick",
                               "--out", str(tmp_path / "authors.json")], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)

    absent = run(tmp_path / "no-such-checkout")
    assert absent.returncode == 2 and "does not exist" in absent.stderr
    assert "github.com/dongmanqing/Code-for-MAMO" in absent.stderr and "--prepare" in absent.stderr
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in ("mamoRec.py", "models.py", "configs.py"):
        (fake / name).write_text("", encoding="utf-8")
    unprepared = run(fake)
    assert unprepared.returncode == 2 and "is not prepared" in unprepared.stderr and "--prepare" in unprepared.stderr
    assert not (tmp_path / "authors.json").exists()


def test_setting_grid_skips_an_order_a_method_does_not_have(bench_modules):
    """s²Meta is first order by construction: the default grid (every method, both orders) must not crash on it."""
    _, bench_engine = bench_modules
    grid = bench_engine.setting_grid(["s2meta", "maml"], ["first", "second"], ["off"], ["off"])
    assert [(n, o) for n, o, *_ in grid] == [("s2meta", "first"), ("maml", "first"), ("maml", "second")]
