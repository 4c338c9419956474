"""The authors' GreatMeta against ``mamo_lite``'s, one training epoch on MovieLens-100K, one machine (issue 12).

The authors' released code (``YantongDU/GreatMeta``, commit ``2cdae39``) is **not** part of this repository
(it is not ours to ship): fetch it yourself, and install the RecBole it runs on *outside* the project's
environment, so that torch is the same build on both sides (their code runs with this interpreter and
``SITE`` put first on ``sys.path``)::

    git clone https://github.com/YantongDU/GreatMeta /tmp/authors-gm/GreatMeta
    python bench/greatmeta.py /tmp/authors-gm/GreatMeta --site /tmp/authors-gm/site --prepare   # pip, once
    MAMO_LITE_DATA=/path/to/data python bench/greatmeta.py /tmp/authors-gm/GreatMeta --site /tmp/authors-gm/site
    python bench/greatmeta.py /tmp/authors-gm/GreatMeta --site /tmp/authors-gm/site --quick   # 1 round, 2 batches

``--prepare`` runs ``pip install --target SITE --no-deps`` with :data:`SITE_PACKAGES`: RecBole 1.1.1 (their
code names no version; 1.1.1 is the one the reference-code notes ran it on), the light dependencies its
imports need, and pandas 2.3
(RecBole 1.1.1's id remapping fails on pandas 3: "Length of values (1) does not match length of index").
torch, numpy and scipy are the environment's. Neither their code nor RecBole is patched: the driver
builds their configuration from the ``param_config`` literal of their ``quickstart.py`` with the two
substitutions of :data:`PATCHES` (made in memory, the file is not changed; each ``old`` text must be in the
checkout or it is refused, as is a checkout that lacks a line of :data:`EXPECTED`), then does what their
``metaQuickStart`` does up to the trainer and calls their ``GreatMetaTrainer._train_epoch`` itself
(:data:`DRIVER_NOTES`): RecBole's ``fit`` would crash after the first epoch on the tuple that method
returns, and would validate every epoch, which is not timed here.

**What is timed.** One training epoch, no validation, on each side, after a warm-up meta-batch of 32
users (not timed):

* *authors*: ``GreatMetaTrainer._train_epoch`` over their ml-100k training users (their bundled atomic
  files, users with 40–200 ratings, their 70/10/20 user split with seed 1128: 349 users, 11 batches of 32
  users, the last of 29; 10 query ratings per user, the rest support). Their split takes the users in
  order of first appearance in the shuffled ratings, so their training users are the heavier raters: the
  JSON's ``workload`` gives the ratings per epoch on both sides (the ratios are not adjusted for it). Per batch: the scheduler's factors
  from every user's inner loop (3 SGD steps), the look-ahead and the scheduler's Adam step, every inner loop
  again, then their Adam step of the meta-model and the ``deepcopy`` of its state, as their code does it.
* *ours* (``--configs``): one epoch of ``meta_step`` over ``mamo_lite``'s ML-100K training split under
  GreatMeta's protocol (``protocol_for("greatmeta", "movielens-100k")``, seed 0: 349 users, the same
  filter, split sizes and query size, a uniform draw of users), in meta-batches of 32 (``vmap`` path), for ``matched``
  (``GREATMETA_AS_CODED``: 3 inner steps, FiLM conditioned on the query rows, SGD look-ahead, aliased
  gradients, as their code does) and ``default`` (the package's GreatMeta: 5 steps and the corrected
  algorithm).

With ``--batches K`` only the first ``K`` batches are timed and the epoch figure is extrapolated by users
(``time × users per epoch / users timed``); by default the whole epoch is timed. Every run is its own
subprocess with the same environment (``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``
set before torch loads, ``torch.set_num_threads``) and the same ``nice`` level, in interleaved rounds (every
side once per round, the order reversed every other round), so that other work on a shared machine falls on
both sides alike. Each figure is the median over rounds with the min and max; the ratio authors/ours is
taken per round (paired) and summarised the same way. The JSON (``bench/results/greatmeta-cpu.json``)
records the CPU model, the load average before every run and after the last, the thread settings,
versions (the authors' side reports its own RecBole and pandas), the substitutions and whether the
machine was shared (``contended``). Compare figures only within one run on one machine: on a shared
machine the absolute seconds move with the other work, the paired ratios much less.

Target (issue 12): ``mamo_lite``'s GreatMeta matched to the authors' code (``matched``) at ≥ 20× the
authors' speed per training epoch.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import itertools
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
sys.path.insert(0, str(ROOT))
from authors import run_result, summary  # bench/authors.py (it imports nothing heavy)

AUTHORS_REPO = "https://github.com/YantongDU/GreatMeta"
AUTHORS_COMMIT = "2cdae3904a74747066a278e9a68f05e7fd4c0c53"
TARGET_SPEEDUP = 20.0
TARGET_CONFIG = "matched"
CONFIGS: dict[str, str] = {
    "matched": "GREATMETA_AS_CODED: 3 inner steps, query FiLM, SGD look-ahead, aliased gradients (their code)",
    "default": "the package's GreatMeta (5 inner steps, the corrected algorithm)",
}
"""Our configurations by name (``--configs``): the overrides are read from ``mamo_lite.imbalance``."""
DATASET_DIR = "recbole_metarec/dataset"
MODEL_YAML = "recbole_metarec/model/GreatMeta/GreatMeta.yaml"
USERS_PER_BATCH = 32
WARMUP_BATCHES = 1

PATCHES: list[dict[str, str]] = [
    {"file": "quickstart.py", "old": "'metrics': ['mae', 'mse', 'ndcg'],", "new": "'metrics': ['mae', 'rmse'],",
     "why": "RecBole 1.1.1 has no metric 'mse' (Config raises \"There is no metric named 'mse'\") and refuses "
            "value and ranking metrics in one run; no metric is computed in a training epoch"},
    {"file": "quickstart.py", "old": "'valid_metric': 'mse',", "new": "'valid_metric': 'rmse',",
     "why": "the same missing metric; validation is not run"},
]
"""Substitutions in the text of their ``param_config`` literal, made in memory by the driver (the file is not
changed); each ``old`` must occur exactly once in the checkout."""
EXPECTED: list[dict[str, str]] = [
    {"file": "quickstart.py", "line": "'train_batch_size': 32,", "why": "32 users per meta-batch"},
    {"file": "quickstart.py", "line": "'user_inter_num_interval': [40,200],", "why": "users with 40-200 ratings"},
    {"file": "quickstart.py", "line": "datasetName = 'ml-100k'", "why": "their default dataset"},
    {"file": "recbole_metarec/model/GreatMeta/GreatMeta.py", "line": "self.local_update_count = 3",
     "why": "3 inner steps, hard-coded (the quickstart's local_update_count 5 is ignored)"},
    {"file": "recbole_metarec/model/GreatMeta/GreatMetaTrainer.py",
     "line": "return totalLoss / (batch_idx + 1), recorders",
     "why": "_train_epoch returns a tuple: the driver calls it itself and keeps the loss"},
    {"file": "recbole_metarec/MetaUtils.py", "line": "paramConfig['data_path'] = 'recbole_metarec/dataset/'",
     "why": "metaQuickStart's data path, which the driver sets (absolute)"},
]
"""Lines of commit ``2cdae39`` the driver relies on: a checkout without one of them is refused."""
SITE_PACKAGES: list[str] = [
    "recbole==1.1.1", "colorlog==4.7.2", "colorama==0.4.4", "pandas==2.3.3", "pytz==2026.6",
    "tensorboard==2.21.0", "protobuf==7.36.2", "absl-py==2.5.1", "scikit-learn==1.9.1", "joblib==1.6.0",
    "threadpoolctl==3.8.0", "cloudpickle==3.1.3", "narwhals==2.29.0",
]
"""What ``--prepare`` installs into ``--site`` (``--no-deps``: torch, numpy, scipy, tqdm, PyYAML and the
rest stay the environment's): RecBole 1.1.1 with its pinned colorlog/colorama, what its imports need
(``torch.utils.tensorboard`` in the trainer, ``sklearn.metrics`` in the evaluator) and pandas 2.3."""
DRIVER_NOTES = [
    ("their param_config (quickstart.py) with PATCHES, plus data_path = the checkout's recbole_metarec/dataset/ "
     "(absolute; metaQuickStart sets it relative to the checkout) and gpu_id = '' (RecBole's CPU device); "
     "config file GreatMeta.yaml as metaQuickStart passes it"),
    ("then what metaQuickStart does up to the trainer: Config, init_seed(1128), create_meta_dataset, "
     "meta_data_preparation, GreatMeta(config, train_data.dataset), GreatMetaTrainer(config, model); "
     "init_logger is not called (RecBole logs at WARNING), the working directory is a temporary folder "
     "(RecBole's saved/ and log_tensorboard/ land there)"),
    ("warm-up: _train_epoch over the first batch of their training loader (not timed); timed: "
     "_train_epoch over their training loader (a new shuffle), the whole epoch or its first --batches; "
     "RecBole's fit is not used (it crashes on the tuple _train_epoch returns, and validates every epoch)"),
]


class Usage(SystemExit):
    """A clear message and exit status 2."""

    def __init__(self, message: str) -> None:
        print(f"bench/greatmeta.py: {message}", file=sys.stderr)
        super().__init__(2)


# -- the authors' checkout and the RecBole it runs on ----------------------------------------------------


def default_site(checkout: Path) -> Path:
    """``--site``'s default: a folder ``site`` next to the checkout."""
    return checkout.resolve().parent / "site"


def check_checkout(path: Path, site: Path | None = None, *, prepared: bool = True) -> None:
    """Refuse a missing, wrong or unprepared checkout (and RecBole site) with a message that says what to do."""
    fetch = (f"fetch the authors' code first (git clone {AUTHORS_REPO} {path}; commit {AUTHORS_COMMIT[:7]}), "
             f"then run: python bench/greatmeta.py {path} --site SITE --prepare")
    if not path.is_dir():
        raise Usage(f"the authors' checkout {path} does not exist: {fetch}")
    if not (path / "quickstart.py").is_file() or not (path / MODEL_YAML).is_file():
        raise Usage(f"{path} is not a checkout of {AUTHORS_REPO} (no quickstart.py / {MODEL_YAML}): {fetch}")
    lines = [(p["file"], p["old"]) for p in PATCHES] + [(e["file"], e["line"]) for e in EXPECTED]
    for file, line in lines:
        f = path / file
        text = f.read_text(encoding="utf-8", errors="replace") if f.is_file() else ""
        if text.count(line) != 1:
            raise Usage(f"{f} does not contain the line {line!r} exactly once: not commit {AUTHORS_COMMIT[:7]}? "
                        f"({fetch})")
    inter = path / DATASET_DIR / "ml-100k" / "ml-100k.inter"
    if not inter.is_file() or not inter.read_text(encoding="utf-8", errors="replace").startswith("user_id:token"):
        raise Usage(f"{inter} is missing or not RecBole's atomic file (a Git LFS pointer?): {fetch}")
    if not prepared:
        return
    site = site if site is not None else default_site(path)
    found = site_versions(site)
    wrong = [f"{name} {found.get(name, 'absent')} (wanted {want})" for name, want in
             (("recbole", "1.1.1"), ("pandas", "2.3.3")) if found.get(name) != want]
    if wrong:
        raise Usage(f"the RecBole site {site} is not prepared ({'; '.join(wrong)}): run python bench/greatmeta.py "
                    f"{path} --site {site} --prepare")


def site_versions(site: Path) -> dict[str, str]:
    """``name → version`` of the distributions installed in ``site`` (from their ``.dist-info`` folders)."""
    out = {}
    for d in site.glob("*.dist-info") if site.is_dir() else ():
        name, _, version = d.name[:-len(".dist-info")].partition("-")
        out[name.lower().replace("_", "-")] = version
    return out


def prepare_site(path: Path, site: Path) -> None:
    """``pip install --target site --no-deps`` :data:`SITE_PACKAGES` (the checkout is checked, not changed)."""
    check_checkout(path, site, prepared=False)
    cmd = [sys.executable, "-m", "pip", "install", "--target", str(site), "--no-deps", *SITE_PACKAGES]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise Usage(f"pip failed:\n{res.stderr[-3000:]}")
    check_checkout(path, site)


def authors_config(path: Path) -> dict:
    """Their ``param_config`` (the literal in ``quickstart.py``) with :data:`PATCHES`, ``data_path`` and ``gpu_id``."""
    source = (path / "quickstart.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "param_config" for t in n.targets))
    text = ast.get_source_segment(source, node.value)
    for p in PATCHES:
        if text.count(p["old"]) != 1:
            raise Usage(f"quickstart.py's param_config does not contain {p['old']!r} exactly once")
        text = text.replace(p["old"], p["new"])
    config = ast.literal_eval(text)
    config.update(data_path=str(path / DATASET_DIR) + os.sep, gpu_id="")
    return config


# -- workers (one subprocess per timed run) ------------------------------------------------------------


def ratings_summary(sizes: list[int]) -> dict:
    """Ratings per training user (support + query): min, median, max and the total over the split."""
    return {"min": min(sizes), "median": statistics.median(sizes), "max": max(sizes), "total": sum(sizes)}


def _stamped(batches, stamps: list[float], sizes: list[int]):
    """Yield ``batches``, appending the clock before each and after the last (per-batch wall times) and
    each batch's number of users."""
    for b in batches:
        sizes.append(len(b))
        stamps.append(time.perf_counter())
        yield b
    stamps.append(time.perf_counter())


def worker_authors(checkout: Path, site: Path, threads: int, batches: int) -> dict:
    """One training epoch of their ``GreatMetaTrainer`` on ml-100k (or its first ``batches`` batches)."""
    sys.path[:0] = [str(site), str(checkout)]  # their RecBole and pandas before the environment's
    import logging
    import warnings

    warnings.filterwarnings("ignore")  # pandas FutureWarnings in RecBole, tensor-to-scalar in their code
    logging.disable(logging.WARNING)
    import pandas
    import recbole
    import torch

    torch.set_num_threads(threads)
    from recbole.config import Config
    from recbole.utils import init_seed
    from recbole_metarec.MetaUtils import create_meta_dataset, meta_data_preparation
    from recbole_metarec.model.GreatMeta.GreatMeta import GreatMeta
    from recbole_metarec.model.GreatMeta.GreatMetaTrainer import GreatMetaTrainer

    assert Path(recbole.__file__).is_relative_to(site) and Path(pandas.__file__).is_relative_to(site)
    with tempfile.TemporaryDirectory(prefix="greatmeta-authors-") as tmp, contextlib.chdir(tmp):  # RecBole's saved/
        t0 = time.perf_counter()
        config = Config(model=GreatMeta, dataset="ml-100k", config_file_list=[str(checkout / MODEL_YAML)],
                        config_dict=authors_config(checkout))
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_meta_dataset(config)
        train_data, _, _ = meta_data_preparation(config, dataset)
        model = GreatMeta(config, train_data.dataset).to(config["device"])
        trainer = GreatMetaTrainer(config, model)
        prep_seconds = time.perf_counter() - t0

        n_users = int(train_data.sample_size)
        sizes = [len(t.spt) + len(t.qrt) for t in train_data.taskDict.values()]
        trainer._train_epoch(list(itertools.islice(train_data, WARMUP_BATCHES)), 0)  # warm-up (one loader pass)
        stamps: list[float] = []
        timed: list[int] = []
        # a new pass of their loader (a new shuffle), batches timed as it yields them
        epoch = itertools.islice(train_data, batches) if batches else train_data
        loss, _ = trainer._train_epoch(_stamped(epoch, stamps, timed), 1)
        params = sum(p.numel() for m in (model.meta_model, model.taskAwareWeightCalculator) for p in m.parameters())
        return {"train_seconds": stamps[-1] - stamps[0],
                "batch_seconds": [b - a for a, b in itertools.pairwise(stamps)],
                "users_timed": sum(timed), "batches_timed": len(timed), "users_per_epoch": n_users,
                "batches_per_epoch": math.ceil(n_users / USERS_PER_BATCH), "prep_seconds": prep_seconds,
                "finite_loss": bool(torch.isfinite(loss).all()), "loss": float(loss), "parameters": params,
                "device": str(config["device"]),
                "config": {"inner_steps": model.local_update_count, "users_per_batch": config["train_batch_size"]},
                "ratings_per_user": ratings_summary(sizes),
                "versions": {"recbole": recbole.__version__, "pandas": pandas.__version__,
                             "torch": torch.__version__, "torch_threads": torch.get_num_threads()}}


def worker_ours(name: str, threads: int, batches: int, *, tiny: bool = False) -> dict:
    """One epoch of ``meta_step`` on ML-100K under GreatMeta's protocol for configuration ``name``
    (``tiny``: a small synthetic dataset instead, for tests)."""
    import mamo_lite  # noqa: F401  # isort: skip  (first: OMP_WAIT_POLICY before torch loads)
    import torch

    torch.set_num_threads(threads)
    from mamo_lite.data import load
    from mamo_lite.imbalance import GREATMETA_AS_CODED, protocol_for
    from mamo_lite.meta.engine import make_optimizer, meta_step
    from mamo_lite.methods import build_learner
    from mamo_lite.utils import seed_everything

    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")
    overrides = dict(GREATMETA_AS_CODED) if name == "matched" else {}
    protocol = protocol_for("greatmeta", "movielens-100k")
    t0 = time.perf_counter()
    if tiny:
        data = load("synthetic", protocol=protocol, cache=False, n_users=60, n_items=120,
                    ratings_per_user=(40, 60))
    else:
        data = load("movielens-100k", seed=0, protocol=protocol, download=False)
    train = data.tasks("train")
    generator = seed_everything(0)
    learner = build_learner("greatmeta", data.spec, "movielens-100k", overrides=overrides)
    learner.train()
    opt = make_optimizer(learner)
    size = learner.config.users_per_batch
    prep_seconds = time.perf_counter() - t0

    warm = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:size * WARMUP_BATCHES]
    for batch in train.select(warm).batches(size):
        meta_step(learner, batch, opt)  # warm-up
    stamps: list[float] = []
    timed: list[int] = []
    finite, loss_sum = True, 0.0
    for batch in _stamped(train.batches(size, shuffle=True, generator=generator), stamps, timed):
        losses = meta_step(learner, batch, opt)
        finite &= bool(torch.isfinite(losses).all())
        loss_sum += float(losses.sum())
        if batches and len(timed) == batches:
            stamps.append(time.perf_counter())
            break
    sizes = (train.support_mask.sum(1) + train.query_mask.sum(1)).tolist()
    params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    cfg = learner.config
    return {"train_seconds": stamps[-1] - stamps[0], "batch_seconds": [b - a for a, b in itertools.pairwise(stamps)],
            "users_timed": sum(timed), "batches_timed": len(timed), "users_per_epoch": len(train),
            "batches_per_epoch": math.ceil(len(train) / size), "prep_seconds": prep_seconds,
            "finite_loss": finite, "loss": loss_sum / max(sum(timed), 1), "parameters": params,
            "dataset": "synthetic (tiny)" if tiny else "movielens-100k", "overrides": overrides,
            "config": {"inner_steps": cfg.inner_steps, "users_per_batch": size},
            "ratings_per_user": ratings_summary(sizes)}


# -- the interleaved rounds ----------------------------------------------------------------------------


def run_worker(side: str, args, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(args.checkout), "--site", str(args.site),
           "--worker", side, "--threads", str(threads), "--batches", str(args.batches)]
    return run_result(side, cmd, threads, args.timeout)


def epoch_seconds(row: dict) -> float:
    """Seconds per training epoch: measured, or extrapolated by users when only some batches were timed."""
    return row["train_seconds"] * row["users_per_epoch"] / row["users_timed"]


def summarise(runs: dict[str, list[dict]]) -> list[dict]:
    """Per side: seconds per epoch and per batch (median, min, max); for ours, authors/ours per round."""
    authors, out = runs["authors"], []
    for side, rows in runs.items():
        entry = {"side": side, "epoch_seconds": summary([epoch_seconds(r) for r in rows]),
                 "batch_seconds": summary([epoch_seconds(r) / r["batches_per_epoch"] for r in rows]),
                 "users_per_epoch": rows[0]["users_per_epoch"], "batches_per_epoch": rows[0]["batches_per_epoch"],
                 "runs": rows}
        if side != "authors":
            ratio = [epoch_seconds(a) / epoch_seconds(r) for a, r in zip(authors, rows, strict=True)]
            entry.update(authors_over_ours=summary(ratio), target_met=statistics.median(ratio) >= TARGET_SPEEDUP)
        out.append(entry)
    return out


def _print_table(results: list[dict]) -> None:
    print(f"{'side':<10}{'s/epoch (min-max)':>26}{'s/batch (min-max)':>24}{'authors/ours (min-max)':>26}")
    for e in results:
        t, b, ratio = e["epoch_seconds"], e["batch_seconds"], e.get("authors_over_ours")
        r = f"{ratio['median']:.1f} ({ratio['min']:.1f}-{ratio['max']:.1f})" if ratio else ""
        print(f"{e['side']:<10}{t['median']:>10.2f} ({t['min']:.2f}-{t['max']:.2f})".ljust(36)
              + f"{b['median']:>8.3f} ({b['min']:.3f}-{b['max']:.3f})".ljust(24) + f"{r:>26}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, nargs="?", help="the authors' checkout (YantongDU/GreatMeta)")
    parser.add_argument("--site", type=Path, help="folder with RecBole 1.1.1 (default: 'site' next to the checkout)")
    parser.add_argument("--prepare", action="store_true", help="pip-install RecBole 1.1.1 and its needs into --site")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"ours: {', '.join(CONFIGS)} (default: both)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--batches", type=int, default=0, help="time only the first K batches (default 0: the epoch)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, OMP/MKL threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 batches: does it run?")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # ours on synthetic data (tests)
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per worker run")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "greatmeta-cpu.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        if args.worker == "authors":
            checkout = args.checkout.resolve()
            out = worker_authors(checkout, (args.site or default_site(checkout)).resolve(), args.threads,
                                 args.batches)
        else:
            out = worker_ours(args.worker, args.threads, args.batches, tiny=args.tiny)
        print("RESULT " + json.dumps(out))
        return 0

    if args.checkout is None:
        raise Usage(f"give the authors' checkout (git clone {AUTHORS_REPO}; commit {AUTHORS_COMMIT[:7]})")
    args.site = (args.site or default_site(args.checkout)).resolve()
    if args.prepare:
        prepare_site(args.checkout.resolve(), args.site)
        print(f"prepared {args.site}: {', '.join(SITE_PACKAGES)}")
        return 0
    check_checkout(args.checkout, args.site)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or set(configs) - set(CONFIGS):
        raise Usage(f"unknown configuration in --configs {args.configs!r}; choose from {', '.join(CONFIGS)}")
    if args.quick:
        args.rounds, args.batches = 1, 2

    import mamo_lite  # noqa: F401  # isort: skip
    from bench_engine import machine_facts

    from mamo_lite.imbalance import GREATMETA_AS_CODED
    from mamo_lite.utils import atomic_write_text

    facts = machine_facts("cpu")  # the load before this script starts: other work on the machine
    facts["nice"] = os.nice(0)
    sides = ["authors", *configs]
    report = {
        "benchmark": "the authors' GreatMeta against mamo_lite's: one training epoch on MovieLens-100K under "
                     "GreatMeta's protocol, interleaved rounds, one machine",
        "compare": "figures only within this run (one machine, one load); the ratios are paired per round",
        "authors_code": {"repository": AUTHORS_REPO, "commit": AUTHORS_COMMIT, "patches": PATCHES,
                         "code_patches": "none: neither their files nor RecBole's are changed",
                         "expected_lines": EXPECTED, "site_packages": SITE_PACKAGES, "driver": DRIVER_NOTES},
        "ours": {name: {"method": "greatmeta", "overrides": dict(GREATMETA_AS_CODED) if name == "matched" else {},
                        "what": CONFIGS[name]} for name in configs},
        "timed": ("training only (no validation), one epoch after a warm-up batch of 32 users"
                  + (f"; only the first {args.batches} batches, the epoch extrapolated by users" if args.batches
                     else "")),
        "rounds": args.rounds, "order": "every side once per round, reversed every other round; one subprocess each",
        "statistic": "median over rounds, min and max; ratios authors/ours (seconds per epoch) paired per round",
        "thread_settings": {"OMP_WAIT_POLICY": "PASSIVE",
                            "OMP_NUM_THREADS = MKL_NUM_THREADS = torch threads": args.threads},
        "machine": facts, "contended": facts["contended"],
        "target": {"authors_over_ours_at_least": TARGET_SPEEDUP, "configuration": TARGET_CONFIG},
        "results": [],
    }
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            load_before = os.getloadavg()[0]
            row = run_worker(side, args, args.threads)
            row.update(round=r, load_average_1min_before=load_before)
            runs[side].append(row)
            print(f"  round {r} {side:<8} {row['batches_timed']:>2} batches {row['train_seconds']:7.2f} s  "
                  f"epoch {epoch_seconds(row):7.2f} s  (load {load_before:.1f})", file=sys.stderr, flush=True)
    report["results"] = summarise(runs)
    ratings = {s: rows[0]["ratings_per_user"] for s, rows in runs.items()}
    report["workload"] = {
        "ratings_per_user": ratings, "parameters": {s: rows[0]["parameters"] for s, rows in runs.items()},
        "authors_over_ours_ratings": {s: ratings["authors"]["total"] / ratings[s]["total"] for s in configs},
        "note": ("the same filter (40-200 ratings), split sizes and batch size, not the same users: their split "
                 "(MetaDataset.split_by_ratio_meta) cuts the users in order of first appearance in the shuffled "
                 "interactions (RecBole's _grouped_index), which puts heavier raters in their training 70 %; ours "
                 "is a uniform draw. The ratios are not adjusted for the difference in ratings per epoch."),
    }
    report["load_average_after"] = list(os.getloadavg())
    report["contended"] = facts["contended"] or max(
        row["load_average_1min_before"] for rows in runs.values() for row in rows) >= 0.5 + args.threads
    target = next((e for e in report["results"] if e["side"] == TARGET_CONFIG), None)
    report["target_met"] = target["target_met"] if target else None
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    _print_table(report["results"])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
