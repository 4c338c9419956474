"""The FLOP floor of one meta-step per user, and how far the engine's measured time is above it.

For each configuration (a method's defaults or a named preset of ``bench_engine.PRESETS``, first or
second order, with or without the gathered-row path, the fused memory write and the factored updates), on
MovieLens-1M's shapes (15 support and 5 query ratings per user, ``bench_engine.synthetic_tasks``):

1. **FLOP per user** of one meta-step (Algorithm 1 for one user, Eqs. 11–12), counted from the
   recommender's fully connected layers, each matmul ``[m×k]·[k×n]`` as ``2·m·n·k``:

   * a support pass (each of the ``inner_steps`` local steps; one step per rating with
     ``local_update="per-item"``): the forward pass, and the backward matmuls that the local gradient
     needs (a layer's weight gradient if the layer is local, its input gradient if anything local lies
     below it);
   * the query pass: the forward pass and every backward matmul the meta-gradient needs (weight gradients
     of the meta-learned layers, input gradients down to the embedding tables, which are always
     meta-learned);
   * second order only: reverse mode through every support pass's forward and backward matmuls, two
     matmuls of the same size per matmul (one per operand), i.e. the double backward of Eq. 12 through
     Eq. 11.

   Ignored (not matmuls): embedding look-ups and pooling, activations, the loss, the local SGD update,
   the optimiser step, and MAMO's memory arithmetic (Eqs. 3–10: cosines, ``a_uᵀ M_U``, ``a_uᵀ M_{U,I}``
   and the writes, listed per row as ``memory_flop_ignored``). MAMO's memory-write pass (the gradient of
   Eq. 6, a separate forward and backward in the engine unless ``--fused on``, i.e.
   ``MAMOLearner.fused_memory_write``, takes it from the main pass) is not counted either: the floor is
   what one meta-step needs, not what the engine does. ``engine_matmul_flop_per_user`` is what the engine
   actually executes, counted by ``torch.utils.flop_counter`` on the per-user loop; the difference is
   the work the engine does beyond the floor. ``--factored on`` (``MetaLearner.factored_updates``: each
   local linear layer kept as ``θ_0`` plus the factors of its local steps) leaves the floor as it is and changes only what the engine executes: its
   matmul count (``engine_matmul_flop_per_user``, counted on the factored run) and its measured time. The
   floor counts each local layer's weight gradient ``Δᵀ X`` as a dense matmul, which the factored path never
   forms, so its count can fall below the floor (MAML's does: the floor is that of the reference algorithm).
   ``--batched on`` (``MetaLearner.batched_users``: the meta-batch as batched tensor operations, each local
   weight updated by one ``baddbmm``) leaves the floor as it is too; its engine count is taken on its own run.
2. **Floor ms per user**: each layer's FLOP divided by this CPU's sustained rate on that layer's matmul
   shape, measured as a batched product ``[B, m, k]·[B, k, n]`` over the ``B`` users of a meta-batch
   (the shape the ``vmap`` engine runs once weights are per user); backward matmuls are taken at the
   forward shape's rate.
3. **Measured ms per user**: the engine's ``meta_step`` (``vmap`` path: local updates, memory writes,
   global step) on ``B``-user batches, timed in interleaved rounds (every configuration once per round,
   ``--rounds`` rounds after a warm-up), reported as the median over rounds with the min and max.

Prints a table (configuration, FLOP per user, floor ms, measured ms, measured/floor) and writes JSON to
``bench/results/floor-cpu.json`` with the CPU model (``/proc/cpuinfo``), thread settings, torch version,
the load average and ``contended`` (whether other work shared the machine: compare figures only within
one run on one machine).

    python bench/floor.py                      # the default configurations (a few minutes on 2 cores)
    python bench/floor.py --quick              # seconds: MAML first order, gather off/on, small batches
    python bench/floor.py --configs mamo-authors --orders first --gather off,on --rounds 7
    python bench/floor.py --configs maml,mamo-authors:first    # NAME:ORDER restricts one configuration's orders
    python bench/floor.py --configs mamo --gather off --fused off,on      # MAMO's memory write fused or not
    python bench/floor.py --configs maml,mamo-authors:first --gather off --factored off,on  # factored or not
    python bench/floor.py --configs maml,mamo,mamo-authors --batched off,on   # the batched-users path or not
    python bench/floor.py --configs maml,mamo --gather on --fused on --factored on --batched on --groups 1,2
                                               # the batched path's users in one group or split over two threads
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
from bench_engine import (
    CONFIG_NAMES,
    ML1M_SPEC,
    PRESETS,
    Timed,
    add_switch_arguments,
    machine_facts,
    resolve,
    setting_grid,
    switch_settings,
    synthetic_tasks,
    time_interleaved,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mamo_lite.meta.engine import MetaLearner, meta_gradient
from mamo_lite.utils import atomic_write_text

ROOT = Path(__file__).resolve().parent
N_SUPPORT, N_QUERY = 15, 5
DEFAULT_CONFIGS = "maml,metacs-dnn,melu,mamo,mamo-authors:first"  # the authors' code is first order


# -- 1. FLOP per user ------------------------------------------------------------------------------

def linear_layers(learner: MetaLearner) -> list[dict]:
    """The recommender's fully connected layers in forward order, with what feeds them.

    Each entry: ``name`` (the weight's parameter name), ``in``/``out`` widths, ``rows`` (``"user"``: one row
    per user, the user tower; ``"items"``: one row per rated item) and ``below``, the parameter names whose
    values reach the layer's input (embedding tables and earlier layers).
    """
    model = learner.model
    tables = {"user": [n for n in model.names_in(("profile",)) if n.startswith("user_profile.")],
              "item": [n for n in model.names_in(("profile",)) if n.startswith("item_profile.")]}
    layers: list[dict] = []

    def chain(prefix: str, seq: nn.Module, rows: str, below: list[str]) -> list[str]:
        below = list(below)
        for name, mod in seq.named_children():
            if isinstance(mod, nn.Linear):
                layers.append({"name": f"{prefix}.{name}.weight", "in": mod.in_features, "out": mod.out_features,
                               "rows": rows, "below": list(below)})
                below += [f"{prefix}.{name}.{p}" for p, _ in mod.named_parameters()]
        return below

    below = chain("user_tower", model.user_tower, "user", tables["user"])
    below += chain("item_tower", model.item_tower, "items", tables["item"])
    if model.preference is not None:
        layers.append({"name": "preference.weight", "in": model.preference.in_features,
                       "out": model.preference.out_features, "rows": "items", "below": list(below)})
        below.append("preference.weight")
    below = chain("decision", model.decision, "items", below)
    layers.append({"name": "out.weight", "in": model.out.in_features, "out": model.out.out_features,
                   "rows": "items", "below": list(below)})
    return layers


def _pass_flop(layers: list[dict], n_items: int, weight_grad: set[str], input_grad: set[str]) -> dict[str, float]:
    """Forward and backward matmul FLOP of one pass over ``n_items`` items (one user)."""
    fwd = bwd = 0.0
    for layer in layers:
        m = 1 if layer["rows"] == "user" else n_items
        unit = 2.0 * m * layer["in"] * layer["out"]
        fwd += unit
        bwd += unit * ((layer["name"] in weight_grad) + bool(set(layer["below"]) & input_grad))
    return {"forward": fwd, "backward": bwd}


def flop_per_user(learner: MetaLearner, n_support: int = N_SUPPORT, n_query: int = N_QUERY) -> dict:
    """The floor's matmul FLOP of one user's meta-step (see the module docstring), by part and by layer shape.

    Returns ``{"first": ..., "second": ..., "support_step": ..., "query": ..., "by_shape": {(m, k, n): flop}}``
    where ``by_shape`` splits the total of the learner's own order over matmul shapes (for the floor time).
    """
    cfg = learner.config
    layers = linear_layers(learner)
    local = set(learner.local_names())
    meta = set(learner.global_names())
    if cfg.local_update == "per-item":
        steps, rows = cfg.inner_steps * n_support, 1
    else:
        steps, rows = cfg.inner_steps, n_support
    support = _pass_flop(layers, rows, weight_grad=local, input_grad=local)
    # the query loss is differentiated w.r.t. the adapted local weights (first order) or through them (second);
    # either way every meta-learned or local layer needs its weight gradient, and the tables need input gradients
    query = _pass_flop(layers, n_query, weight_grad=local | meta, input_grad=local | meta)
    support_total = steps * (support["forward"] + support["backward"])
    first = support_total + query["forward"] + query["backward"]
    second = first + 2.0 * support_total
    # FLOP by matmul shape (m, k, n) for the floor time: each layer's share of each pass
    by_shape: dict[tuple[int, int, int], float] = {}
    order_factor = 1.0 if cfg.first_order else 3.0
    for layer in layers:
        for n_rows, per_pass, mult in ((rows, support, steps * order_factor), (n_query, query, 1.0)):
            m = 1 if layer["rows"] == "user" else n_rows
            unit = 2.0 * m * layer["in"] * layer["out"]
            wg = layer["name"] in (local if per_pass is support else local | meta)
            ig = bool(set(layer["below"]) & (local if per_pass is support else local | meta))
            key = (m, layer["in"], layer["out"])
            by_shape[key] = by_shape.get(key, 0.0) + mult * unit * (1 + wg + ig)
    return {"first": first, "second": second, "support_step": support, "query": query, "steps": steps,
            "by_shape": by_shape}


def memory_flop(learner: MetaLearner) -> float:
    """MAMO's memory arithmetic per user, ignored by the floor: ``a_uᵀ M_U`` and ``a_uᵀ M_{U,I}`` (Eqs. 4, 7)
    and their writes (Eqs. 6, 8), 2 FLOP per element per slot each; 0 for a learner without memories."""
    state = learner.memory_state()
    return float(sum(4 * t.numel() for k, t in state.items() if k != "profile"))


def engine_matmul_flop(learner: MetaLearner, tasks, n_users: int = 2) -> float:
    """Matmul FLOP per user the engine executes for one meta-gradient (``torch.utils.flop_counter``; the per-user
    loop, or the batched path where ``batched_users`` is on)."""
    counter = FlopCounterMode(display=False)  # thread-local: the batched path counts in this thread only
    path = "vmap" if learner.batched_users else "loop"
    threads, learner.batched_threads = learner.batched_threads, 1
    try:
        with counter:
            meta_gradient(learner, tasks.select(torch.arange(n_users)), path=path, with_aux=True)
    finally:
        learner.batched_threads = threads
    return counter.get_total_flops() / n_users


# -- 2. sustained matmul rate on those shapes ------------------------------------------------------

def matmul_rate(shape: tuple[int, int, int], batch: int, *, seconds: float = 0.05, repeats: int = 5) -> float:
    """Median GFLOP/s of ``[batch, m, k]·[batch, k, n]`` (``torch.bmm``), over ``repeats`` timed bursts."""
    m, k, n = shape
    a, b = torch.randn(batch, m, k), torch.randn(batch, k, n)
    flop = 2.0 * batch * m * k * n
    torch.bmm(a, b)
    t0, per = time.perf_counter(), 0  # calibrate: one burst lasts about seconds / repeats
    while time.perf_counter() - t0 < seconds / repeats or per < 3:
        torch.bmm(a, b)
        per += 1
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(per):
            torch.bmm(a, b)
        rates.append(flop * per / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


# -- 3. the engine, timed in interleaved rounds ----------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help=f"comma-separated methods or presets ({', '.join(CONFIG_NAMES)}), each optionally "
                             f"NAME:ORDER to time only that order; default {DEFAULT_CONFIGS}")
    parser.add_argument("--orders", default="first,second", help="comma-separated: first, second")
    add_switch_arguments(parser, {"gather": "off,on"})
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--batches", type=int, default=3, help="meta-steps per configuration and round (median)")
    parser.add_argument("--users-per-batch", type=int, help="users per meta-step (default: each configuration's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--groups", default="auto",
                        help="the batched path's groups of users (MetaLearner.batched_threads), comma-separated: auto "
                             "(the package's rule, fast_path_threads) or a count; each value is its own row "
                             "(default auto)")
    parser.add_argument("--quick", action="store_true",
                        help="seconds: MAML, first order, gather off/on, 8 users per batch, 2 rounds of 1 step")
    parser.add_argument("--out", default=str(ROOT / "results" / "floor-cpu.json"), help="JSON output")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.orders, args.rounds, args.batches = "maml", "first", 2, 1
        args.users_per_batch = args.users_per_batch or 8
    if args.threads:
        torch.set_num_threads(args.threads)
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    gathers, fuseds, factoreds, batcheds = switch_settings(parser, args)
    configs: list[tuple[str, list[str]]] = []  # (name, its orders)
    for item in (c.strip() for c in args.configs.split(",") if c.strip()):
        name, _, only = item.partition(":")
        try:
            resolve(name)
        except ValueError as e:
            parser.error(str(e))
        configs.append((name, [only] if only else orders))
    if {o for _, os_ in configs for o in os_} - {"first", "second"} or args.rounds < 1 or args.batches < 1:
        parser.error("orders are first, second; --rounds and --batches ≥ 1")
    facts = machine_facts("cpu")  # before this script loads the machine
    tasks = synthetic_tasks(256)

    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    if not groups or any(g != "auto" and not (g.isdigit() and int(g) >= 1) for g in groups):
        parser.error(f"--groups takes auto or counts ≥ 1, comma-separated; got {args.groups!r}")
    timed = []
    for cname, name_orders in configs:
        for name, order, gather, fused, factored, bat in setting_grid([cname], name_orders, gathers, fuseds,
                                                                      factoreds, batcheds):
            for g in (groups if bat else ["auto"]):
                t = Timed(name, "vmap", order, "cpu", tasks, gather=gather, fused=fused, factored=factored,
                          batched=bat, users_per_batch=args.users_per_batch)
                if g != "auto":
                    t.learner.batched_threads = int(g)
                timed.append(t)

    # FLOP counts and the floor (per distinct matmul shape, at this CPU's batched rate); the floor depends on
    # the configuration only, the engine's count also on what it runs (fused write, factored updates, batched
    # users; not gathered rows)
    rates: dict[tuple[int, int, int], float] = {}
    floors = {}
    for t in timed:
        key = (t.method, t.order, t.fused, t.factored, t.batched)
        if key in floors:
            continue
        f = flop_per_user(t.learner)
        for shape in f["by_shape"]:
            if shape not in rates:
                rates[shape] = matmul_rate(shape, t.size, seconds=0.01 if args.quick else 0.05,
                                           repeats=3 if args.quick else 5)
        floor_s = sum(fl / (rates[s] * 1e9) for s, fl in f["by_shape"].items())
        total = f[t.order]
        floors[key] = {"flop_per_user": total, "floor_ms_per_user": 1e3 * floor_s,
                       "effective_gflop_per_s": total / floor_s / 1e9,
                       "support_step_flop": f["support_step"], "query_flop": f["query"], "support_steps": f["steps"],
                       "memory_flop_ignored": memory_flop(t.learner),
                       "engine_matmul_flop_per_user": engine_matmul_flop(t.learner, tasks)}

    # interleaved timing: a warm-up round, then every configuration once per round, the order alternating
    time_interleaved(timed, rounds=args.rounds, batches=args.batches, warmup=1)

    rows = []
    for t in timed:
        fl = floors[(t.method, t.order, t.fused, t.factored, t.batched)]
        ms_per_user = [1e3 * m / t.size for m in t.round_medians]
        med = statistics.median(ms_per_user)
        method, overrides = resolve(t.method)
        rows.append({"config": t.method, "method": method, "overrides": overrides, "order": t.order,
                     "gather_rows": t.gather, "fused_memory_write": t.fused, "factored_updates": t.factored,
                     "batched_users": t.batched, "batched_threads": t.learner.batched_threads,
                     "users_per_batch": t.size, **fl,
                     "measured_ms_per_user": med, "measured_ms_per_user_min": min(ms_per_user),
                     "measured_ms_per_user_max": max(ms_per_user), "measured_ms_per_user_rounds": ms_per_user,
                     "measured_over_floor": med / fl["floor_ms_per_user"], "finite_loss": t.finite})
    _print_table(rows)
    report = {
        "benchmark": "FLOP floor of one meta-step per user vs the engine's measured time",
        "flop_convention": "matmul [m x k]·[k x n] = 2·m·n·k; only the recommender's fully connected layers",
        "ignored": ["embedding look-ups and pooling", "activations and the loss", "the local SGD update",
                    "the optimiser step", "MAMO's memory arithmetic (memory_flop_ignored)",
                    ("MAMO's separate memory-write pass (in engine_matmul_flop_per_user unless "
                     "fused_memory_write, never in the floor)")],
        "floor_rate": "each matmul shape at this CPU's median batched rate (torch.bmm over users_per_batch users)",
        "shapes": {"support": N_SUPPORT, "query": N_QUERY, "spec": ML1M_SPEC.to_dict()},
        "timing": {"path": "vmap", "rounds": args.rounds, "batches_per_round": args.batches,
                   "statistic": "median over rounds of each round's median meta-step time / users; min and max"},
        "machine": facts, "load_average_after": list(machine_facts("cpu")["load_average_1_5_15min"]),
        "matmul_gflop_per_s": [{"m": s[0], "k": s[1], "n": s[2], "batch": timed[0].size if timed else None,
                                "gflop_per_s": r} for s, r in sorted(rates.items())],
        "presets": {k: {"method": m, "overrides": o} for k, (m, o) in PRESETS.items()},
        "results": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                    for row in rows],
    }
    out = Path(args.out)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"CPU {facts['device_name']}, torch {facts['torch']}, {facts['torch_threads']} threads, "
          f"OMP_WAIT_POLICY={facts['thread_env']['OMP_WAIT_POLICY']}, load {facts['load_average_1_5_15min'][0]:.2f}"
          f"{' (contended)' if facts['contended'] else ''}")
    print(f"wrote {out}")
    return 0


def _print_table(rows: list[dict]) -> None:
    header = (f"{'configuration':<14}{'order':<7}{'gather':<7}{'fused':<6}{'factored':<9}{'batched':<8}{'groups':<7}"
              f"{'MFLOP/user':>11}"
              f"{'engine MFLOP':>13}"
              f"{'floor ms':>10}{'measured ms':>13}{'(min-max)':>16}{'meas/floor':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        spread = f"{r['measured_ms_per_user_min']:.2f}-{r['measured_ms_per_user_max']:.2f}"
        print(f"{r['config']:<14}{r['order']:<7}{'on' if r['gather_rows'] else 'off':<7}"
              f"{'on' if r['fused_memory_write'] else 'off':<6}{'on' if r['factored_updates'] else 'off':<9}"
              f"{'on' if r['batched_users'] else 'off':<8}{r['batched_threads'] if r['batched_users'] else '-':<7}"
              f"{r['flop_per_user'] / 1e6:>11.2f}{r['engine_matmul_flop_per_user'] / 1e6:>13.2f}"
              f"{r['floor_ms_per_user']:>10.3f}{r['measured_ms_per_user']:>13.2f}{spread:>16}"
              f"{r['measured_over_floor']:>11.1f}")


if __name__ == "__main__":
    sys.exit(main())
