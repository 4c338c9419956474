"""The authors' MAMO against ``mamo_lite``'s, side by side on one machine (issue 11's first target).

The authors' released code (``dongmanqing/Code-for-MAMO``, commit ``feb5b90``) is **not** part of this
repository (its licence, and it is not ours to ship): fetch it yourself, then let this script patch it
minimally for the CPU and prepare its MovieLens-1M files from the same raw files ``mamo_lite`` reads::

    git clone https://github.com/dongmanqing/Code-for-MAMO /tmp/authors-mamo
    MAMO_LITE_DATA=/path/to/data python bench/authors.py /tmp/authors-mamo --prepare   # once, ~1 min
    MAMO_LITE_DATA=/path/to/data python bench/authors.py /tmp/authors-mamo --test-users 200   # ~10 min, 2 cores
    python bench/authors.py /tmp/authors-mamo --quick      # 20 + 20 users, 1 round: does it run?

``--prepare`` applies :data:`PATCHES` (three one-line substitutions and one empty stub module, each
checked: a checkout that does not contain the expected line is refused), links ``users.dat`` and
``ratings.dat`` of ``$MAMO_LITE_DATA/ml-1m`` into the checkout's ``data_raw/ml-1m/`` (their
``movies_extrainfos.dat`` is byte-identical to ours) and runs their own MovieLens preprocessing
(``prepareDataset.py``: ``id_storing``, ``dict_storing``, ``data_generation``). Their per-user file
``k`` is the ``k``-th user id of their ``user_state_ids.p``; the driver checks the mapping.

**What is timed.** The same users on both sides: ``--train-users`` training users (a seeded draw from
``mamo_lite``'s training split of ML-1M, users 1–2999 in the shared data) and the first ``--test-users``
of its test split; each user is 15 support and 5 query ratings, the first 20 in time order on both sides
(the same rating sequences: checked on every 7th user of both splits).

* *authors*: one epoch of their ``MAMRec.train_with_meta_optimization`` over those users (per user:
  memory reads, 9 local Adam steps on mini-batches of 5, the query gradient, the memory writes; their
  per-user pickle loading included, as their code does it; the global step at the end), and their test
  pass (``test_with_meta_optimization``: 9 local Adam steps and the query predictions per test user), timed
  separately. The driver constructs ``MAMRec`` with ``n_epoch = 0`` (the constructor trains by itself),
  then sets ``n_epoch = 1`` and the user lists. It does not change their code beyond :data:`PATCHES`.
* *ours*: one epoch of ``meta_step`` over the same users in meta-batches (``vmap`` path), and ``predict``
  (the test users' adaptation and query predictions), for each configuration of ``--configs``:
  ``NAME[+gather][+fused][+factored][+batched]``, where ``NAME`` is a method or a preset of ``bench_engine.PRESETS``
  (``mamo-authors``: MAMO matched to the authors' code, 9 local steps, every group local, their sizes),
  ``+gather`` sets ``MetaLearner.gather_rows``, ``+fused`` ``MAMOLearner.fused_memory_write`` and
  ``+factored`` ``MetaLearner.factored_updates`` (local linear layers kept as ``θ_0`` plus the factors of
  their local steps) and ``+batched``
  ``MetaLearner.batched_users`` (the meta-batch as batched tensor operations, :mod:`mamo_lite.meta.batched`).

Both sides first run a warm-up (a few users, not timed). Every run is its own subprocess with the same
environment (``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set before torch
loads, ``torch.set_num_threads``) and the same ``nice`` level, in interleaved rounds (every side once per
round, the order reversed every other round), so that other work on a shared machine falls on both sides
alike. Each figure is the median over rounds with the min and max; the ratio authors/ours is taken per
round (paired) and summarised the same way. The JSON (``bench/results/authors-cpu.json``) records the
CPU model, the load average before and after, the thread settings, versions, the patches and whether the
machine was shared (``contended``). Compare figures only within one run on one machine.

Target (issue 11): matched-to-authors ``mamo_lite`` MAMO at ≥ 20× the authors' speed per user-epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
AUTHORS_REPO = "https://github.com/dongmanqing/Code-for-MAMO"
AUTHORS_COMMIT = "feb5b9043056f1999cadfc59ffec759dff99b618"
TARGET_SPEEDUP = 20.0
DEFAULT_CONFIGS = ("mamo-authors,mamo-authors+gather+fused,mamo-authors+gather+fused+factored,"
                   "mamo-authors+gather+fused+batched,mamo,mamo+fused+batched")

PATCHES: list[dict[str, str]] = [
    {"file": "configs.py", "old": "'cuda_option': 'cuda:5'", "new": "'cuda_option': 'cpu'",
     "why": "their device is GPU 5 whenever CUDA is present; the comparison runs on the CPU"},
    {"file": "prepare_data/prepareMovielens.py",
     "old": "new_df = new_df.append(new_u_info, ignore_index=True)",
     "new": "new_df = pd.concat([new_df, new_u_info], ignore_index=True)",
     "why": "DataFrame.append was removed in pandas 2.0 (the same rows in the same order)"},
    {"file": "mamoRec.py", "old": "for u in self.train_users[:100]:", "new": "for u in self.train_users:",
     "why": "their epoch trains only the first 100 training users (a debugging leftover); the driver passes "
            "exactly the users to time"},
]
"""The patches ``--prepare`` applies to the authors' checkout: one-line substitutions, nothing else."""
STUB = ("prepare_data/prepareBookcrossing.py",
        "imported by prepareDataset.py but never released: an empty module, MovieLens only")
DRIVER_NOTES = [
    ("MAMRec is constructed with config_settings['n_epoch'] = 0 (its constructor trains by itself), then "
     "n_epoch = 1 and train_users / test_users are set to the users mamo_lite times (their file k is the "
     "k-th id of user_state_ids.p)"),
    ("the test pass (test_with_meta_optimization, called at the end of their epoch) is timed on its own and "
     "subtracted from the epoch"),
    ("their per-user pickle loading (load_user_info) is timed as part of their epoch, as their code runs it, "
     "and also reported on its own (io_seconds)"),
    "warm-up before timing: a 5-user epoch without test users",
]


class Usage(SystemExit):
    """A clear message and exit status 2."""

    def __init__(self, message: str) -> None:
        print(f"bench/authors.py: {message}", file=sys.stderr)
        super().__init__(2)


# -- the authors' checkout -------------------------------------------------------------------------------


def check_checkout(path: Path, *, prepared: bool = True) -> None:
    """Refuse a missing, wrong or unprepared checkout with a message that says what to do."""
    fetch = (f"fetch the authors' code first (git clone {AUTHORS_REPO} {path}; commit {AUTHORS_COMMIT[:7]}), "
             f"then run: python bench/authors.py {path} --prepare")
    if not path.is_dir():
        raise Usage(f"the authors' checkout {path} does not exist: {fetch}")
    if not (path / "mamoRec.py").is_file() or not (path / "models.py").is_file():
        raise Usage(f"{path} is not a checkout of {AUTHORS_REPO} (no mamoRec.py / models.py): {fetch}")
    if not prepared:
        return
    missing = [p["file"] for p in PATCHES
               if not (path / p["file"]).is_file() or p["new"] not in (path / p["file"]).read_text(encoding="utf-8")]
    raw = path / "data_processed" / "movielens" / "raw"
    if missing or not (path / STUB[0]).is_file() or not (raw / "sample_1_x1.p").is_file():
        raise Usage(f"{path} is not prepared (patches missing: {missing or 'none'}; processed files: "
                    f"{'present' if raw.is_dir() else 'absent'}): run python bench/authors.py {path} --prepare "
                    "with MAMO_LITE_DATA pointing at the data folder")


def prepare_checkout(path: Path, data_dir: Path) -> list[str]:
    """Apply :data:`PATCHES` and :data:`STUB`, link the raw MovieLens files, run their preprocessing."""
    check_checkout(path, prepared=False)
    done = []
    for p in PATCHES:
        f = path / p["file"]
        text = f.read_bytes().decode("utf-8")  # bytes: their files mix line endings, keep them as they are
        if p["new"] in text:
            continue
        if text.count(p["old"]) != 1:
            raise Usage(f"{f} does not contain the line {p['old']!r} exactly once: not commit {AUTHORS_COMMIT[:7]}?")
        f.write_bytes(text.replace(p["old"], p["new"]).encode("utf-8"))
        done.append(f"{p['file']}: {p['old']} -> {p['new']}")
    stub = path / STUB[0]
    if not stub.exists():
        stub.write_text(f"# {STUB[1]}\n", encoding="utf-8")
        done.append(f"{STUB[0]}: created ({STUB[1]})")
    ml = data_dir / "ml-1m"
    for name in ("users.dat", "ratings.dat"):
        src, dst = ml / name, path / "data_raw" / "ml-1m" / name
        if not src.is_file():
            raise Usage(f"{src} is missing: set MAMO_LITE_DATA (or --data-dir) to the folder holding ml-1m/")
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src.resolve())
    (path / "data_processed").mkdir(exist_ok=True)
    code = "from prepareDataset import *\nid_storing()\ndict_storing()\ndata_generation()\n"
    res = subprocess.run([sys.executable, "-c", code], cwd=path, capture_output=True, text=True, check=False)
    if res.returncode:
        raise Usage(f"their preprocessing failed:\n{res.stderr[-3000:]}")
    print("\n".join(line for line in res.stdout.splitlines() if "%|" not in line))
    return done


# -- workers (one subprocess per timed run) ------------------------------------------------------------


def _timed(fn, box: list[float]):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            box[0] += time.perf_counter() - t0
    return wrapper


def worker_authors(checkout: Path, train_ids: list[int], test_ids: list[int], threads: int) -> dict:
    """One epoch of the authors' MAMRec over ``train_ids`` (test pass over ``test_ids`` timed apart)."""
    os.chdir(checkout)
    sys.path.insert(0, str(checkout))
    import pickle
    import warnings

    import torch

    warnings.filterwarnings("ignore")  # implicit softmax dims, F.sigmoid: once per call site anyway
    torch.set_num_threads(threads)
    import configs
    import mamoRec
    import models

    with open("data_processed/movielens/user_state_ids.p", "rb") as f:
        ids = [int(u) for u in pickle.load(f)["user_all_ids"]]
    file_of = {u: k for k, u in enumerate(ids, start=1)}
    train_files, test_files = [file_of[u] for u in train_ids], [file_of[u] for u in test_ids]

    io = [0.0]
    models.load_user_info = _timed(models.load_user_info, io)
    configs.config_settings["n_epoch"] = 0
    torch.manual_seed(0)
    rec = mamoRec.MAMRec("movielens")  # builds everything, trains nothing (n_epoch 0)
    rec.n_epoch = 1
    test_seconds = [0.0]
    rec.test_with_meta_optimization = _timed(rec.test_with_meta_optimization, test_seconds)

    rec.train_users, rec.test_users = train_files[:5], []  # warm-up
    rec.train_with_meta_optimization()
    io[0] = test_seconds[0] = 0.0
    rec.train_users, rec.test_users = train_files, test_files
    t0 = time.perf_counter()
    rec.train_with_meta_optimization()
    total = time.perf_counter() - t0
    phi_finite = all(bool(torch.isfinite(w).all()) for w in rec.phi_u + rec.phi_i + rec.phi_r)
    return {"train_seconds": total - test_seconds[0], "test_seconds": test_seconds[0], "io_seconds": io[0],
            "finite_weights": phi_finite}


def parse_config(spec: str) -> tuple[str, bool, bool, bool, bool]:
    """``NAME[+gather][+fused][+factored][+batched]`` → ``(name, gather, fused, factored, batched)``."""
    name, *flags = spec.split("+")
    if set(flags) - {"gather", "fused", "factored", "batched"}:
        raise ValueError(f"unknown flag in {spec!r}: use NAME[+gather][+fused][+factored][+batched]")
    return name, "gather" in flags, "fused" in flags, "factored" in flags, "batched" in flags


def worker_ours(spec: str, train_ids: list[int], test_ids: list[int], threads: int) -> dict:
    """One epoch of ``meta_step`` over ``train_ids`` and ``predict`` over ``test_ids`` for configuration ``spec``."""
    import mamo_lite  # noqa: F401  # isort: skip  (first: OMP_WAIT_POLICY before torch loads)
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from bench_engine import resolve

    from mamo_lite.data import load
    from mamo_lite.meta.engine import make_optimizer, meta_step, predict
    from mamo_lite.methods import build_learner

    name, gather, fused, factored, batched = parse_config(spec)
    data = load("movielens-1m", download=False)
    train, test = data.tasks("train"), data.tasks("test")
    pos = {int(u): i for i, u in enumerate(train.user_ids)}
    train = train.select([pos[u] for u in train_ids])
    pos = {int(u): i for i, u in enumerate(test.user_ids)}
    test = test.select([pos[u] for u in test_ids])

    method, overrides = resolve(name)
    torch.manual_seed(0)
    learner = build_learner(method, data.spec, "movielens-1m", overrides=overrides)
    learner.gather_rows = gather
    learner.factored_updates = factored
    learner.batched_users = batched
    learner.batched_threads = learner.fast_path_threads() if batched else 1  # as use_fast_paths() sets it
    if fused:
        learner.fused_memory_write = True
    opt = make_optimizer(learner)
    size = learner.config.users_per_batch
    meta_step(learner, train.select(list(range(min(size, len(train))))), opt, path="vmap")  # warm-up
    predict(learner, test.select(list(range(min(8, len(test))))), path="vmap")

    t0 = time.perf_counter()
    finite = True
    for batch in train.batches(size):
        finite &= bool(torch.isfinite(meta_step(learner, batch, opt, path="vmap")).all())
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict(learner, test, path="vmap")
    return {"train_seconds": train_seconds, "test_seconds": time.perf_counter() - t0, "finite_loss": finite,
            "method": method, "overrides": overrides, "gather_rows": gather, "fused_memory_write": fused,
            "factored_updates": factored, "batched_users": batched, "users_per_batch": size}


# -- the interleaved rounds ----------------------------------------------------------------------------


def run_result(side: str, cmd: list[str], threads: int, timeout: float) -> dict:
    """Run one worker subprocess with the benchmark's thread settings (set before torch loads) and return
    the JSON of its last ``RESULT`` line; a failed worker raises with the tail of its stderr."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    if res.returncode or not lines:
        raise RuntimeError(f"worker {side} failed (status {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def run_worker(side: str, args, users_file: Path, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(args.checkout), "--worker", side,
           "--users-file", str(users_file), "--threads", str(threads)]
    return run_result(side, cmd, threads, args.timeout)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="the authors' checkout (dongmanqing/Code-for-MAMO)")
    parser.add_argument("--prepare", action="store_true", help="patch the checkout and run their preprocessing")
    parser.add_argument("--data-dir", type=Path, help="data folder holding ml-1m/ (default $MAMO_LITE_DATA)")
    parser.add_argument("--train-users", type=int, default=500, help="training users per epoch (default 500)")
    parser.add_argument("--test-users", type=int, default=600, help="test users (default 600, the whole split)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", default="2", help="comma-separated torch thread counts (default 2)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help=f"our configurations, NAME[+gather][+fused][+factored][+batched] "
                             f"(default {DEFAULT_CONFIGS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training users' draw")
    parser.add_argument("--quick", action="store_true", help="20 training and 20 test users, 1 round, 2 threads")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per worker run")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "authors-cpu.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--users-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        users = json.loads(args.users_file.read_text())
        threads = int(args.threads)
        if args.worker == "authors":
            out = worker_authors(args.checkout.resolve(), users["train"], users["test"], threads)
        else:
            out = worker_ours(args.worker, users["train"], users["test"], threads)
        print("RESULT " + json.dumps(out))
        return 0

    if args.prepare:
        data_dir = args.data_dir or (Path(os.environ["MAMO_LITE_DATA"]) if "MAMO_LITE_DATA" in os.environ else None)
        if data_dir is None:
            raise Usage("--prepare needs the data folder: --data-dir or MAMO_LITE_DATA")
        for line in prepare_checkout(args.checkout.resolve(), data_dir.resolve()) or ["already patched"]:
            print(line)
        return 0
    check_checkout(args.checkout)
    if args.quick:
        args.train_users, args.test_users, args.rounds, args.threads = 20, 20, 1, "2"
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    thread_counts = [int(t) for t in args.threads.split(",")]

    sys.path.insert(0, str(ROOT))
    import mamo_lite  # noqa: F401  # isort: skip
    import torch
    from bench_engine import PRESETS, machine_facts, resolve

    from mamo_lite.data import load
    from mamo_lite.utils import atomic_write_text

    for c in configs:
        resolve(parse_config(c)[0])  # unknown names fail here, before any run
    data = load("movielens-1m", data_dir=args.data_dir, download=False)
    train_all, test_all = data.tasks("train"), data.tasks("test")
    g = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(train_all), generator=g)[:args.train_users]
    users = {"train": [int(u) for u in train_all.user_ids[pick]],
             "test": [int(u) for u in test_all.user_ids[:args.test_users]]}

    facts = machine_facts("cpu")  # the load before this script starts: other work on the machine
    facts["nice"] = os.nice(0)
    sides = ["authors", *configs]
    report = {
        "benchmark": "the authors' MAMO against mamo_lite's, interleaved rounds, one machine",
        "authors_code": {"repository": AUTHORS_REPO, "commit": AUTHORS_COMMIT, "patches": PATCHES,
                         "stub": {"file": STUB[0], "why": STUB[1]}, "driver": DRIVER_NOTES},
        "data": {"dataset": "movielens-1m (users 1-2999)", "support": 15, "query": 5,
                 "train_users": len(users["train"]), "test_users": len(users["test"]),
                 "train_user_seed": args.seed, "user_ids": users},
        "presets": {k: {"method": m, "overrides": o} for k, (m, o) in PRESETS.items()},
        "rounds": args.rounds, "order": "every side once per round, reversed every other round; one subprocess each",
        "statistic": "median over rounds, min and max; ratios authors/ours paired per round",
        "thread_settings": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS = MKL_NUM_THREADS = torch threads":
                            thread_counts},
        "machine": facts, "contended": facts["contended"],
        "target": {"authors_over_ours_at_least": TARGET_SPEEDUP, "configuration": "mamo-authors"},
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        users_file = Path(tmp) / "users.json"
        users_file.write_text(json.dumps(users))
        for threads in thread_counts:
            runs: dict[str, list[dict]] = {s: [] for s in sides}
            for r in range(args.rounds):
                order = sides if r % 2 == 0 else sides[::-1]
                for side in order:
                    load_before = os.getloadavg()[0]
                    row = run_worker(side, args, users_file, threads)
                    row.update(round=r, load_average_1min_before=load_before)
                    runs[side].append(row)
                    print(f"  threads {threads} round {r} {side:<26} train {row['train_seconds']:7.2f} s  "
                          f"test {row['test_seconds']:7.2f} s  (load {load_before:.1f})", file=sys.stderr, flush=True)
            report["results"] += summarise(runs, threads, len(users["train"]))
            report["load_average_after"] = list(os.getloadavg())
            report["contended"] = facts["contended"] or max(
                row["load_average_1min_before"] for rows in runs.values() for row in rows) >= 0.5 + threads
            atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")  # after each thread count
    _print_table(report["results"])
    print(f"wrote {args.out}")
    return 0


def summarise(runs: dict[str, list[dict]], threads: int, n_train: int) -> list[dict]:
    """Per side: ms per user-epoch and test seconds (median, min, max); for ours, authors/ours per round."""
    authors, out = runs["authors"], []
    for side, rows in runs.items():
        entry = {"side": side, "threads": threads,
                 "train_ms_per_user": summary([1000 * r["train_seconds"] / n_train for r in rows]),
                 "test_seconds": summary([r["test_seconds"] for r in rows]), "runs": rows}
        if side != "authors":
            ratio = [a["train_seconds"] / r["train_seconds"] for a, r in zip(authors, rows, strict=True)]
            test_ratio = [a["test_seconds"] / r["test_seconds"] for a, r in zip(authors, rows, strict=True)]
            entry.update(authors_over_ours=summary(ratio), test_authors_over_ours=summary(test_ratio),
                         target_met=statistics.median(ratio) >= TARGET_SPEEDUP)
        out.append(entry)
    return out


def _print_table(results: list[dict]) -> None:
    print(f"{'side':<28}{'thr':>4}{'ms/user-epoch (min-max)':>28}{'test s':>9}{'authors/ours (min-max)':>26}")
    for e in results:
        t = e["train_ms_per_user"]
        ratio = e.get("authors_over_ours")
        r = f"{ratio['median']:.1f} ({ratio['min']:.1f}-{ratio['max']:.1f})" if ratio else ""
        print(f"{e['side']:<28}{e['threads']:>4}{t['median']:>12.2f} ({t['min']:.2f}-{t['max']:.2f})".ljust(60)
              + f"{e['test_seconds']['median']:>9.2f}{r:>26}")


if __name__ == "__main__":
    sys.exit(main())
