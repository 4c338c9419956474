"""Meta-training throughput of the engine: users per second, per method × path × order × device.

Synthetic tensors with MovieLens-1M's real shapes (MAMO's protocol: 15 support and 5 query ratings
per user; vocabularies counting index 0: gender 3, age 8, occupation 22, MPAA rate 7, year 82, genre
26 with 6 slots, director 2,187 with 3 slots) and each method's default network (d_e = 100 for MAML
and MAMO, MeLU's for MeLU and MetaCS-DNN). Meta-batches (``meta_step``: local update, memory writes,
global step) are timed one by one in **interleaved rounds**: after a warm-up, each round runs every
configuration for ``--batches`` meta-batches, in an order reversed every other round, so that other work
on a shared machine falls on all configurations alike. A configuration's figure is the median over rounds
of each round's median batch time, with the min and max over rounds; it gives users/s, extrapolated to
one epoch of ``--users`` users (≈ 4,800 training users in ML-1M). CUDA timings synchronise before reading
the clock. Compare figures only within one run (one JSON).

Targets: one first-order epoch ≤ 10 s on 2 CPU cores; ``vmap`` ≥ 2× the per-user loop on the CPU.

    python bench/bench_engine.py                 # all methods, both paths and orders, CPU (+ CUDA)
    python bench/bench_engine.py --quick         # 2 rounds of 1 batch, first order only
    python bench/bench_engine.py --methods maml,mamo --devices cpu --out /tmp/engine-{device}.json
    python bench/bench_engine.py --methods mamo-authors --gather off,on --devices cpu
    python bench/bench_engine.py --methods mamo --fused off,on --paths vmap --rounds 7
    python bench/bench_engine.py --methods maml,mamo-authors --factored off,on --paths vmap --devices cpu
    python bench/bench_engine.py --methods maml,mamo,mamo-authors --batched off,on --paths vmap --devices cpu

Besides the methods, ``--methods`` takes the named presets of :data:`PRESETS`: ``mamo-authors`` is MAMO
configured as its authors' code runs it (``mamo_lite.reproduce.MAMO_AS_CODED``: 9 local steps, every
parameter group local, classification head, τ 0.01, summed users) at their sizes (d_e 100, towers
300→150→100 and 400→200→100, the square 200×200 ``M_{u,I}``), the configuration issue 11 compares
with the authors' code. ``--gather on`` times the engine's gathered-row path
(``MetaLearner.gather_rows``), which matters where embedding tables are local (MAML, MetaCS-DNN,
``mamo-authors``); ``--fused on`` times MAMO's memory write taken from the main pass
(``MAMOLearner.fused_memory_write``) instead of its separate forward and backward pass (Eq. 6);
``--factored on`` times the local linear layers kept as ``θ_0`` plus the factors of their local steps
(``MetaLearner.factored_updates``), which pays with one local step (factors of rank 15) more than with
nine (``mamo-authors``: rank 135) and changes nothing for s²Meta and GreatMeta (they replace the per-user algorithm);
``--batched on`` times the whole meta-batch run as batched tensor operations with plain autograd
(``MetaLearner.batched_users``, :mod:`mamo_lite.meta.batched`) instead of a per-user function under
``vmap``, split over torch's thread count where a user's work is more than one first-order step
(``batched_threads``, as ``use_fast_paths()`` sets it; ``vmap``
path only; not s²Meta nor GreatMeta either).

The JSON records the CPU model, the thread settings (``OMP_WAIT_POLICY`` is set to ``PASSIVE`` by
importing ``mamo_lite`` before torch loads), the load average and whether other work shared the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import mamo_lite  # noqa: F401  # isort: skip  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads)
import torch

from mamo_lite.data.tasks import FeatureSpec, Field, TaskBatch
from mamo_lite.meta import batched
from mamo_lite.meta.engine import MetaLearner, make_optimizer, meta_step
from mamo_lite.meta.factored import linear_layers
from mamo_lite.methods import METHODS, build_learner
from mamo_lite.models.recommender import EmbeddingRecommender
from mamo_lite.reproduce import MAMO_AS_CODED
from mamo_lite.utils import atomic_write_text, versions

ROOT = Path(__file__).resolve().parent

PRESETS: dict[str, tuple[str, dict]] = {
    "mamo-authors": ("mamo", {**MAMO_AS_CODED, "preference": "code"}),
}
"""Named configurations beyond each method's defaults: ``name → (method, overrides)``.

``mamo-authors``: MAMO matched to its authors' code (reference-code notes §1.5–1.7): the overrides the
package names ``MAMO_AS_CODED`` (9 local steps, all groups local, cross-entropy head, τ 0.01, summed
meta-gradient, only weight matrices in ``M_U``) plus their square ``M_{u,I}`` (``preference="code"``);
the sizes are the paper network's (d_e 100, two tower layers). Their local optimiser (Adam, mini-batches
of 5, clipping) is not reproduced: the engine's local steps are SGD on the whole support set.
"""
CONFIG_NAMES: tuple[str, ...] = (*METHODS, *PRESETS)


def resolve(name: str) -> tuple[str, dict]:
    """``(method, overrides)`` of a method name or a :data:`PRESETS` name."""
    if name in PRESETS:
        method, overrides = PRESETS[name]
        return method, dict(overrides)
    if name in METHODS:
        return name, {}
    raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(CONFIG_NAMES)}")


def build(name: str, *, first_order: bool, gather: bool = False, users_per_batch: int | None = None,
          fused: bool = False, factored: bool = False, batched: bool = False):
    """A learner for configuration ``name`` on ML-1M's shapes (seeded), with ``gather_rows``, ``factored_updates``
    and ``batched_users`` set and, for MAMO, ``fused_memory_write``."""
    method, overrides = resolve(name)
    overrides["first_order"] = first_order
    if users_per_batch is not None:
        overrides["users_per_batch"] = users_per_batch
    torch.manual_seed(0)
    learner = build_learner(method, ML1M_SPEC, "movielens-1m", overrides=overrides)
    learner.gather_rows = gather
    learner.factored_updates = factored
    learner.batched_users = batched
    learner.batched_threads = learner.fast_path_threads() if batched else 1  # as use_fast_paths() sets it
    if fused:
        learner.fused_memory_write = True
    return learner


def has_local_tables(learner) -> bool:
    """Whether any embedding table is adapted per user (where ``gather_rows`` can change anything)."""
    return any(learner.model.group_of(n) == "profile" for n in learner.local_names())


def has_fusable_write(name: str) -> bool:
    """Whether configuration ``name`` has a memory-write pass that ``fused_memory_write`` takes from the main
    pass (MAMO with ``M_U`` written from the query gradient, Eq. 6)."""
    return bool(build(name, first_order=True, fused=True).aux_taps())


def has_factored_path(learner) -> bool:
    """Whether ``factored_updates`` can change anything for ``learner`` (or configuration name): the engine's
    default per-user algorithm on an :class:`EmbeddingRecommender` with a local linear layer (not s²Meta,
    which replaces the algorithm, nor GreatMeta, whose FiLM recommender and meta-update are its own)."""
    if isinstance(learner, str):
        learner = build(learner, first_order=True)
    default = all(getattr(type(learner), f) is getattr(MetaLearner, f)
                  for f in ("user_objective", "user_predictions", "meta_update"))
    if not default or type(learner.model) is not EmbeddingRecommender:
        return False
    local = set(learner.local_names())
    return any(f"{n}.weight" in local for n in linear_layers(learner.model))


def has_batched_path(learner) -> bool:
    """Whether ``batched_users`` can change anything for ``learner`` (or configuration name): the engine's default
    per-user algorithm on an :class:`EmbeddingRecommender` (:func:`mamo_lite.meta.batched.applies`)."""
    if isinstance(learner, str):
        learner = build(learner, first_order=True)
    return batched.applies(learner)


def has_second_order(name: str) -> bool:
    """Whether configuration ``name`` can run second order (s²Meta's configuration refuses it)."""
    try:
        build(name, first_order=False)
    except ValueError:
        return False
    return True


def setting_grid(names: list[str], orders: list[str], gathers: list[str], fuseds: list[str],
                 factoreds: list[str] | tuple[str, ...] = ("off",), batcheds: list[str] | tuple[str, ...] = ("off",)):
    """``(name, order, gather, fused, factored, batched)`` for each configuration, skipping ``on`` where it changes
    nothing and an order the method does not have (s²Meta is first order by construction)."""
    out = []
    for name in names:
        learner = build(name, first_order=True)
        local_tables = has_local_tables(learner)
        factorable = has_factored_path(learner)
        batchable = has_batched_path(learner)
        fusable = "on" in fuseds and has_fusable_write(name)
        for order in orders:
            if order == "second" and not has_second_order(name):
                print(f"  {name}: no second order (its configuration refuses first_order=False); skipped",
                      file=sys.stderr)
                continue
            for gather in gathers:
                for fused in fuseds:
                    for factored in factoreds:
                        for batch_on in batcheds:
                            if ((gather == "on" and not local_tables) or (fused == "on" and not fusable)
                                    or (factored == "on" and not factorable) or (batch_on == "on" and not batchable)):
                                continue  # the same code runs
                            out.append((name, order, gather == "on", fused == "on", factored == "on",
                                        batch_on == "on"))
    return out


SWITCHES: dict[str, str] = {
    "gather": "MetaLearner.gather_rows; 'on' only where tables are local",
    "fused": "MAMOLearner.fused_memory_write; 'on' only for MAMO",
    "factored": "MetaLearner.factored_updates; 'on' only where the engine's default per-user algorithm runs: "
                "not s2meta, greatmeta",
    "batched": "MetaLearner.batched_users (vmap path); 'on' only where the engine's default per-user algorithm "
               "runs: not s2meta, greatmeta",
}
"""The engine options a benchmark can time both ways: ``--NAME off,on`` (what each sets)."""


def add_switch_arguments(parser: argparse.ArgumentParser, defaults: dict[str, str] | None = None) -> None:
    """``--gather``, ``--fused``, ``--factored`` and ``--batched`` (comma-separated off, on; default ``off`` unless
    ``defaults``)."""
    for name, what in SWITCHES.items():
        parser.add_argument(f"--{name}", default=(defaults or {}).get(name, "off"),
                            help=f"comma-separated: off, on ({what})")


def switch_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[list[str]]:
    """The values of each switch of :data:`SWITCHES`, in its order; a value other than off/on is a usage error."""
    settings = []
    for name in SWITCHES:
        values = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
        if set(values) - {"off", "on"}:
            parser.error(f"--{name} takes off, on (comma-separated); got {getattr(args, name)!r}")
        settings.append(values)
    return settings


def machine_facts(device: torch.device | str = "cpu") -> dict:
    """CPU model, versions, thread settings and the load average (other work on the machine)."""
    import os

    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {**versions(device), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "thread_env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
            "load_average_1_5_15min": list(load),
            # the load before this script starts is other work: a loaded machine gives slower, noisier figures
            "contended": bool(load[0] >= 0.5)}

ML1M_SPEC = FeatureSpec(
    user_fields=(Field("gender", "categorical", 3), Field("age", "categorical", 8),
                 Field("occupation", "categorical", 22)),
    item_fields=(Field("rate", "categorical", 7), Field("year", "categorical", 82), Field("genre", "multi", 26),
                 Field("director", "multi", 2187)),
    rating_min=1.0, rating_max=5.0,
)
MULTI_LEN = {"genre": 6, "director": 3}


def synthetic_tasks(n_users: int, n_support: int = 15, n_query: int = 5, seed: int = 0) -> TaskBatch:
    """Random users with ML-1M's shapes (indices ≥ 1; multi-valued slots padded with 0 at random)."""
    g = torch.Generator().manual_seed(seed)
    spec = ML1M_SPEC

    def items(n: int) -> dict[str, torch.Tensor]:
        x = {"cat": torch.stack([torch.randint(1, f.vocab_size, (n_users, n), generator=g)
                                 for f in spec.item_categorical], -1)}
        for f in spec.item_multi:
            idx = torch.randint(1, f.vocab_size, (n_users, n, MULTI_LEN[f.name]), generator=g)
            keep = torch.rand(idx.shape, generator=g) < 0.6
            keep[..., 0] = True
            x[f.name] = idx * keep
        return x

    def ratings(n: int) -> torch.Tensor:
        return torch.randint(1, 6, (n_users, n), generator=g).float()

    return TaskBatch(
        user_ids=torch.arange(1, n_users + 1),
        user_x=torch.stack([torch.randint(1, f.vocab_size, (n_users,), generator=g) for f in spec.user_fields], -1),
        support_x=items(n_support), support_y=ratings(n_support),
        support_mask=torch.ones(n_users, n_support, dtype=torch.bool),
        support_item_ids=torch.randint(1, 3700, (n_users, n_support), generator=g),
        query_x=items(n_query), query_y=ratings(n_query), query_mask=torch.ones(n_users, n_query, dtype=torch.bool),
        query_item_ids=torch.randint(1, 3700, (n_users, n_query), generator=g),
        query_scenario=torch.zeros(n_users, n_query, dtype=torch.long),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """One configuration on one device: its learner, optimiser and batches; :meth:`run` times meta-steps."""

    def __init__(self, method: str, path: str, order: str, device: torch.device | str, tasks: TaskBatch, *,
                 gather: bool = False, fused: bool = False, factored: bool = False, batched: bool = False,
                 users_per_batch: int | None = None) -> None:
        self.method, self.path, self.order, self.device = method, path, order, torch.device(device)
        self.gather, self.fused, self.factored, self.batched = gather, fused, factored, batched
        self.learner = build(method, first_order=order == "first", gather=gather, fused=fused,
                             factored=factored, batched=batched, users_per_batch=users_per_batch).to(self.device)
        self.optimizer = make_optimizer(self.learner)
        self.size = self.learner.config.users_per_batch
        self.tasks = tasks
        self._start = 0
        self.seconds: list[float] = []  # every timed meta-step
        self.round_medians: list[float] = []  # one per round
        self.finite = True

    def _next(self) -> TaskBatch:
        idx = (torch.arange(self.size) + self._start) % len(self.tasks)
        self._start += self.size
        return self.tasks.select(idx).to(self.device)

    def run(self, batches: int, record: bool = True) -> None:
        """``batches`` meta-steps, each timed (CUDA synchronised); ``record`` keeps the round's median."""
        times = []
        for _ in range(batches):
            batch = self._next()
            _sync(self.device)
            t0 = time.perf_counter()
            losses = meta_step(self.learner, batch, self.optimizer, path=self.path)
            _sync(self.device)
            times.append(time.perf_counter() - t0)
            self.finite &= bool(torch.isfinite(losses).all())
        if record:
            self.seconds += times
            self.round_medians.append(statistics.median(times))

    def row(self, users: int) -> dict:
        """The result row: users/s from the median over rounds of each round's median step, min and max."""
        med = statistics.median(self.round_medians)
        fast, slow = min(self.round_medians), max(self.round_medians)
        return {"method": self.method, "path": self.path, "order": self.order, "gather_rows": self.gather,
                "fused_memory_write": self.fused, "factored_updates": self.factored,
                "batched_users": self.batched, "device": str(self.device), "users_per_batch": self.size,
                "batches_timed": len(self.seconds), "rounds": len(self.round_medians),
                "batch_seconds": self.seconds, "round_median_seconds": self.round_medians,
                "users_per_s": self.size / med, "users_per_s_min": self.size / slow,
                "users_per_s_max": self.size / fast,
                "users_per_s_mean": len(self.seconds) * self.size / sum(self.seconds),
                "epoch_seconds": users * med / self.size, "epoch_seconds_min": users * fast / self.size,
                "epoch_seconds_max": users * slow / self.size, "finite_loss": self.finite}


def time_interleaved(timed: list[Timed], *, rounds: int, batches: int, warmup: int) -> None:
    """A warm-up of ``warmup`` steps each, then ``rounds`` rounds of ``batches`` steps per configuration,
    the configurations' order reversed every other round (no configuration always first or last)."""
    for t in timed:
        t.run(warmup, record=False)
    for r in range(rounds):
        for t in (timed if r % 2 == 0 else reversed(timed)):
            t.run(batches)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=4800, help="users per epoch to extrapolate to (default 4800)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated methods or presets ({', '.join(PRESETS)}); default: every method")
    parser.add_argument("--paths", default="loop,vmap", help="comma-separated: loop, vmap")
    parser.add_argument("--orders", default="first,second", help="comma-separated: first, second")
    add_switch_arguments(parser)
    parser.add_argument("--devices", default="auto", help="comma-separated: cpu, cuda; auto = cpu (+ cuda if present)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    parser.add_argument("--batches", type=int, default=2,
                        help="meta-batches timed per configuration and round (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="meta-batches run before timing (default 1)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 timed batch after 1 warm-up, first order only")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=str(ROOT / "results" / "engine-{device}.json"),
                        help="JSON output; {device} is replaced by the device type")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batches, args.warmup, args.orders = 2, 1, 1, "first"
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(CONFIG_NAMES)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(CONFIG_NAMES)}")
    gathers, fuseds, factoreds, batcheds = switch_settings(parser, args)
    if args.rounds < 1 or args.batches < 1 or args.warmup < 0:
        parser.error("--rounds and --batches ≥ 1, --warmup ≥ 0")
    if args.devices == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(d.strip()) for d in args.devices.split(",")]
    if len(devices) > 1 and "{device}" not in args.out:
        parser.error("--out needs a {device} placeholder when several devices are benchmarked")
    tasks = synthetic_tasks(min(args.users, 1024))
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    grid = setting_grid(methods, orders, gathers, fuseds, factoreds, batcheds)

    for device in devices:
        facts = machine_facts(device)  # before the benchmark loads the machine
        timed = [Timed(name, path, order, device, tasks, gather=gather, fused=fused, factored=factored, batched=bat)
                 for name, order, gather, fused, factored, bat in grid for path in paths
                 if not (bat and path == "loop")]  # the loop path never runs batched
        time_interleaved(timed, rounds=args.rounds, batches=args.batches, warmup=args.warmup)
        rows = [t.row(args.users) for t in timed]
        same = ("method", "order", "device", "gather_rows", "fused_memory_write", "factored_updates")
        # vmap × compares with the loop of the same options; a batched row with the loop of the unbatched ones
        for row in rows:
            loop = [r for r in rows if r["path"] == "loop" and all(r[k] == row[k] for k in same)]
            row["vmap_speedup"] = row["users_per_s"] / loop[0]["users_per_s"] if row["path"] == "vmap" and loop \
                else math.nan
        _print_table(rows, args.users)
        report = {"benchmark": "engine meta-training throughput", "users_per_epoch": args.users,
                  "batches_timed": args.batches * args.rounds, "warmup_batches": args.warmup,
                  "timing": {"rounds": args.rounds, "batches_per_round": args.batches,
                             "order": "interleaved: every configuration once per round, the order reversed "
                                      "every other round",
                             "statistic": "users_per_s = users_per_batch / median over rounds of each round's "
                                          "median meta-step time; _min and _max over rounds"},
                  "shapes": {"support": 15, "query": 5, "spec": ML1M_SPEC.to_dict(), "multi_len": MULTI_LEN},
                  "machine": facts, "torch_threads": torch.get_num_threads(),
                  "load_average_after": list(machine_facts(device)["load_average_1_5_15min"]),
                  "presets": {k: {"method": m, "overrides": o} for k, (m, o) in PRESETS.items()},
                  "targets": {"first_order_epoch_seconds_cpu_2_cores": 10, "vmap_speedup_cpu": 2},
                  "results": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                              for r in rows]}
        out = Path(args.out.format(device=device.type))
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        print(f"{device.type}: {facts['device_name']}, torch {facts['torch']}, {facts['torch_threads']} threads, "
              f"OMP_WAIT_POLICY={facts['thread_env']['OMP_WAIT_POLICY']}, load "
              f"{facts['load_average_1_5_15min'][0]:.2f}{' (contended)' if facts['contended'] else ''}")
        print(f"wrote {out}")
    return 0


def _print_table(rows: list[dict], users: int) -> None:
    header = (f"{'method':<13}{'path':<6}{'order':<8}{'gather':<8}{'fused':<7}{'factored':<10}{'batched':<9}"
              f"{'device':<8}"
              f"{'users/s':>10}{'(min-max)':>16}{f'epoch s ({users})':>17}{'vmap ×':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        speed = "" if math.isnan(r["vmap_speedup"]) else f"{r['vmap_speedup']:.2f}"
        spread = f"{r['users_per_s_min']:.0f}-{r['users_per_s_max']:.0f}"
        print(f"{r['method']:<13}{r['path']:<6}{r['order']:<8}{'on' if r['gather_rows'] else 'off':<8}"
              f"{'on' if r['fused_memory_write'] else 'off':<7}{'on' if r['factored_updates'] else 'off':<10}"
              f"{'on' if r['batched_users'] else 'off':<9}{r['device']:<8}{r['users_per_s']:>10.1f}{spread:>16}"
              f"{r['epoch_seconds']:>17.1f}{speed:>8}")


if __name__ == "__main__":
    sys.exit(main())
