"""Thread stalls of single meta-steps: OpenMP's wait policy × torch's thread count, one child process each.

On a 2-vCPU virtual machine, torch's default OpenMP wait policy lets idle worker threads spin, and
single meta-steps stall at random (issue 11: a MeLU step of ~7 ms taking ~390 ms, stalls up to seconds).
``mamo_lite`` sets ``OMP_WAIT_POLICY=PASSIVE`` when it is imported (:mod:`mamo_lite.runtime`), which only
works if that happens **before torch loads**: OpenMP reads the variable once, when torch's libraries are
loaded. So every setting runs in its own child process, whose environment is fixed before it starts:

* ``unset``: no ``OMP_WAIT_POLICY`` at all (the child imports torch *before* ``mamo_lite``, so the
  package cannot set it), i.e. torch's default;
* ``ACTIVE`` and ``PASSIVE``: the variable set explicitly (``mamo_lite`` keeps a value the user set);

each with ``torch.set_num_threads(1)`` and ``(2)``. A child times ``--steps`` single meta-steps
(``meta_step``: local update, memory writes, global step; ``vmap`` path) of MeLU and MAMO with the
methods' default networks on ``--users-per-batch`` users of the offline synthetic dataset
(``mamo_lite.data.load("synthetic")``), after a few warm-up steps. The steps are split over ``--rounds``
rounds, each round running every setting once, in alternating order, so that other work on the machine
falls on all settings alike.

Reported per setting and method: median, p99 (nearest rank), max and p99/median of the step time (the
issue's target: p99/median ≤ 2), and the number of steps over 10× the median ("stalls"). The JSON also
records the CPU model, versions, the load average before and after, ``contended`` (whether other work
shared the machine: compare settings only within one run), and the **entry-point check**: for the
command line (``python -m mamo_lite``, ``reproduce``, the ``mamo-lite`` script) and the benchmarks, the
value of ``OMP_WAIT_POLICY`` at the moment torch was first imported, recorded by an import hook in a
child process.

    python bench/stalls.py                 # 200 steps per method and setting (a few minutes on 2 cores)
    python bench/stalls.py --quick         # seconds: MeLU, unset vs PASSIVE at 2 threads, a few steps
    python bench/stalls.py --fast-paths --out bench/results/stalls-fast-cpu.json   # on the faster equivalent paths
    python bench/stalls.py --policies unset,PASSIVE --threads 2 --steps 400 --methods melu

Writes ``bench/results/stalls-cpu.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
POLICIES = ("unset", "ACTIVE", "PASSIVE")
STALL_FACTOR = 10.0  # a step over this many medians counts as a stall

# Run inside a child: record OMP_WAIT_POLICY the moment torch is first imported, then run the entry point.
_WATCH = r"""
import json, os, runpy, sys
seen = {"torch_loaded": False, "omp_wait_policy_at_torch_import": None, "mamo_lite_imported_first": None}
class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen["torch_loaded"]:
            seen.update(torch_loaded=True, omp_wait_policy_at_torch_import=os.environ.get("OMP_WAIT_POLICY"),
                        mamo_lite_imported_first="mamo_lite" in sys.modules)
        return None
sys.meta_path.insert(0, _Watch())
def _report():
    seen["omp_wait_policy_at_exit"] = os.environ.get("OMP_WAIT_POLICY")
    with open(os.environ["STALLS_WATCH_OUT"], "w", encoding="utf-8") as f:
        json.dump(seen, f)
import atexit
atexit.register(_report)
kind, target, *rest = sys.argv[1:]
sys.argv = [target, *rest]
if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    runpy.run_path(target, run_name="__main__")
"""

# (name, kind, target, arguments): commands that load torch and exit at once
ENTRY_POINTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("python -m mamo_lite methods", "module", "mamo_lite", ("methods",)),
    ("python -m mamo_lite reproduce --help", "module", "mamo_lite", ("reproduce", "--help")),
    ("mamo-lite methods (console script)", "path", str(Path(sys.executable).parent / "mamo-lite"), ("methods",)),
    ("python bench/bench_engine.py --help", "path", str(ROOT / "bench_engine.py"), ("--help",)),
    ("python bench/floor.py --help", "path", str(ROOT / "floor.py"), ("--help",)),
)


def child_env(policy: str) -> dict[str, str]:
    """This process's environment with ``OMP_WAIT_POLICY`` removed (``unset``) or set to ``policy``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy
    return env


def watch_torch_import(kind: str, target: str, args: tuple[str, ...] = (), timeout: float = 300) -> dict:
    """Run a module (``kind="module"``) or script (``"path"``) in a child with ``OMP_WAIT_POLICY`` unset.

    Returns ``returncode``, ``torch_loaded``, ``omp_wait_policy_at_torch_import`` (what OpenMP saw: ``"PASSIVE"``
    when ``mamo_lite`` was imported before torch, ``None`` when torch came first),
    ``mamo_lite_imported_first`` and ``omp_wait_policy_at_exit``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "watch.json"
        env = {**child_env("unset"), "STALLS_WATCH_OUT": str(report)}
        run = subprocess.run([sys.executable, "-c", _WATCH, kind, target, *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=timeout, check=False)
        seen = json.loads(report.read_text(encoding="utf-8")) if report.exists() else {}
    return {"returncode": run.returncode, **seen}


def check_entry_points(names: list[str] | None = None) -> list[dict]:
    """:func:`watch_torch_import` for each of :data:`ENTRY_POINTS` (or those in ``names``), with its ``command``.

    Entry points whose file is absent (no console script in this environment) are skipped.
    """
    return [{"command": name, **watch_torch_import(kind, target, args)} for name, kind, target, args in ENTRY_POINTS
            if (names is None or name in names) and (kind == "module" or Path(target).is_file())]


# -- the child: time single meta-steps under one setting -------------------------------------------

def child(policy: str, threads: int, methods: list[str], steps: int, warmup: int, users: int, start: int,
          fast_paths: bool = False) -> dict:
    """Time ``steps`` meta-steps per method in this process (torch imported here, before ``mamo_lite``)."""
    policy_at_import = os.environ.get("OMP_WAIT_POLICY")
    import torch  # first: an unset OMP_WAIT_POLICY must stay unset when OpenMP loads

    import mamo_lite  # noqa: F401  (sets OMP_WAIT_POLICY in os.environ, too late for this process's OpenMP)
    from mamo_lite.data import load
    from mamo_lite.meta.engine import make_optimizer, meta_step
    from mamo_lite.methods import build_learner

    torch.set_num_threads(threads)
    data = load("synthetic")
    tasks = data.tasks("train")
    times: dict[str, list[float]] = {}
    for method in methods:
        torch.manual_seed(0)
        learner = build_learner(method, data.spec, "synthetic", overrides={"users_per_batch": users})
        learner.use_fast_paths(fast_paths)
        optimizer = make_optimizer(learner)
        pos = start * users

        def batch():
            nonlocal pos
            idx = (torch.arange(users) + pos) % len(tasks)
            pos += users
            return tasks.select(idx)

        for _ in range(warmup):
            meta_step(learner, batch(), optimizer)
        timed = []
        for _ in range(steps):
            b = batch()
            t0 = time.perf_counter()
            meta_step(learner, b, optimizer)
            timed.append(time.perf_counter() - t0)
        times[method] = timed
    return {"omp_wait_policy_at_torch_import": policy_at_import, "torch_threads": torch.get_num_threads(),
            "parallel_backend": next((ln.strip() for ln in torch.__config__.parallel_info().splitlines()
                                      if ln.startswith("ATen parallel backend")), None),
            "seconds": times}


def run_child(policy: str, threads: int, methods: list[str], steps: int, warmup: int, users: int, start: int,
              timeout: float = 1800, fast_paths: bool = False) -> dict:
    """One setting's child process; returns its report."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--policies", policy, "--threads", str(threads),
           "--methods", ",".join(methods), "--steps", str(steps), "--warmup", str(warmup),
           "--users-per-batch", str(users), "--start", str(start)] + (["--fast-paths"] if fast_paths else [])
    run = subprocess.run(cmd, cwd=REPO, env=child_env(policy), capture_output=True, text=True, timeout=timeout,
                         check=False)
    if run.returncode != 0:
        raise RuntimeError(f"child {policy}/{threads} threads failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# -- statistics ------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0–100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarise(seconds: list[float]) -> dict:
    """Median, p99, max (ms), p99/median, and the steps over ``STALL_FACTOR`` medians."""
    med = statistics.median(seconds)
    p99 = percentile(seconds, 99)
    return {"steps": len(seconds), "median_ms": 1e3 * med, "p99_ms": 1e3 * p99, "max_ms": 1e3 * max(seconds),
            "min_ms": 1e3 * min(seconds), "p99_over_median": p99 / med, "max_over_median": max(seconds) / med,
            f"stalls_over_{STALL_FACTOR:g}x_median": sum(s > STALL_FACTOR * med for s in seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated: unset, ACTIVE, PASSIVE")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    parser.add_argument("--methods", default="melu,mamo", help="comma-separated methods (default melu,mamo)")
    parser.add_argument("--steps", type=int, default=200, help="timed meta-steps per method and setting (default 200)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds the steps are split over (default 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed meta-steps per method and child (default 3)")
    parser.add_argument("--users-per-batch", type=int, default=32, help="users per meta-step (default 32)")
    parser.add_argument("--quick", action="store_true",
                        help="seconds: MeLU, unset vs PASSIVE at 2 threads, 6 steps of 8 users, 1 round; "
                             "entry-point check of the CLI only")
    parser.add_argument("--fast-paths", action="store_true",
                        help="every step on the engine's faster equivalent paths (learner.use_fast_paths(): the "
                             "batched path split over the torch threads, gathered rows, fused write)")
    parser.add_argument("--no-entry-check", action="store_true", help="skip the entry points' OMP_WAIT_POLICY check")
    parser.add_argument("--out", default=str(ROOT / "results" / "stalls-cpu.json"), help="JSON output")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.policies, args.threads, args.methods = "unset,PASSIVE", "2", "melu"
        args.steps, args.rounds, args.warmup, args.users_per_batch = 6, 1, 1, 8
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--threads takes integers, got {args.threads!r}")
    if set(policies) - set(POLICIES) or not policies:
        parser.error(f"--policies takes {', '.join(POLICIES)}; got {args.policies!r}")
    if args.steps < 1 or args.rounds < 1 or args.rounds > args.steps or min(threads, default=0) < 1:
        parser.error("--steps ≥ --rounds ≥ 1 and --threads ≥ 1")
    if args.child:
        print(json.dumps(child(policies[0], threads[0], methods, args.steps, args.warmup, args.users_per_batch,
                               args.start, args.fast_paths)))
        return 0

    load_before = list(os.getloadavg())
    settings = [(p, t) for t in threads for p in policies]
    per_round = [args.steps // args.rounds + (r < args.steps % args.rounds) for r in range(args.rounds)]
    seconds: dict[tuple[str, int, str], list[float]] = {(p, t, m): [] for p, t in settings for m in methods}
    seen: dict[tuple[str, int], dict] = {}
    started = time.perf_counter()
    for r, n in enumerate(per_round):
        for p, t in (settings if r % 2 == 0 else list(reversed(settings))):  # alternate: no setting always first
            rep = run_child(p, t, methods, n, args.warmup, args.users_per_batch, start=sum(per_round[:r]),
                            fast_paths=args.fast_paths)
            seen[(p, t)] = {k: v for k, v in rep.items() if k != "seconds"}
            for m in methods:
                seconds[(p, t, m)] += rep["seconds"][m]
        print(f"  round {r + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
              flush=True)
    load_after = list(os.getloadavg())

    # facts about the machine, from this process (mamo_lite first: the benchmarks' own order)
    sys.path.insert(0, str(ROOT))
    from bench_engine import machine_facts

    facts = machine_facts("cpu")
    facts["load_average_1_5_15min"] = load_before  # before the children loaded the machine
    facts["contended"] = bool(load_before[0] >= 0.5)
    facts["niceness"] = os.nice(0)  # the children inherit it: under `nice`, other work wins the CPU
    entry = [] if args.no_entry_check else check_entry_points(
        ["python -m mamo_lite methods"] if args.quick else None)

    rows = []
    for p, t in settings:
        for m in methods:
            rows.append({"omp_wait_policy": p, "torch_threads": t, "method": m, **seen[(p, t)],
                         **summarise(seconds[(p, t, m)]), "seconds": seconds[(p, t, m)]})
    _print_table(rows)
    report = {
        "benchmark": "single meta-step times per OpenMP wait policy and torch thread count (stalls)",
        "data": "mamo_lite.data.load('synthetic'), training users, each method's default network",
        "users_per_batch": args.users_per_batch, "steps_per_setting": args.steps, "rounds": args.rounds,
        "warmup_steps_per_child": args.warmup, "path": "vmap", "fast_paths": args.fast_paths,
        "statistics": "per setting and method over all its steps: median, p99 (nearest rank), max; "
                      f"stalls = steps over {STALL_FACTOR:g}x the median",
        "target": {"p99_over_median_max": 2},
        "machine": facts, "load_average_after": load_after,
        "entry_points": entry,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from mamo_lite.utils import atomic_write_text

    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    print(f"CPU {facts['device_name']}, {facts['cpu_count']} CPUs, torch {facts['torch']}, load before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f}{' (contended)' if facts['contended'] else ''}")
    for e in entry:
        print(f"  {e['command']}: OMP_WAIT_POLICY={e.get('omp_wait_policy_at_torch_import')} when torch loaded"
              f"{'' if e.get('torch_loaded') else ' (torch not loaded)'}, exit code {e['returncode']}")
    print(f"wrote {out}")
    return 0


def _print_table(rows: list[dict]) -> None:
    header = (f"{'OMP_WAIT_POLICY':<16}{'threads':>8}  {'method':<8}{'median ms':>10}{'p99 ms':>10}{'max ms':>10}"
              f"{'p99/med':>9}{'stalls':>8}")
    print(header)
    print("-" * len(header))
    key = f"stalls_over_{STALL_FACTOR:g}x_median"
    for r in rows:
        print(f"{r['omp_wait_policy']:<16}{r['torch_threads']:>8}  {r['method']:<8}{r['median_ms']:>10.1f}"
              f"{r['p99_ms']:>10.1f}{r['max_ms']:>10.1f}{r['p99_over_median']:>9.2f}{r[key]:>8}")


if __name__ == "__main__":
    sys.exit(main())
