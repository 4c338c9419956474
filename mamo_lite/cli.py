"""The command line: ``mamo-lite`` (or ``python -m mamo_lite``).

``train``     meta-train one method on one dataset, test it per scenario, save checkpoint + metrics
``evaluate``  re-score a saved checkpoint on its dataset's test users
``methods``   the methods and their default hyper-parameters
``data``      a dataset's summary: users per split, warm/cold counts, files and checksums

Every command prints a clear message and exits with status 2 on bad input (an unknown method,
a CUDA device this machine lacks, a negative learning rate, a missing data folder, ...), never a
traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mamo_lite import __version__
from mamo_lite.presets import PRESETS
from mamo_lite.utils import atomic_write_text, json_safe

__all__ = ["main", "parse_value"]

DATASETS = ("movielens-1m", "movielens-100k", "book-crossing", "synthetic")

METHOD_HELP = {
    "maml": "MAML (Finn et al. 2017): one shared initialisation, every parameter fine-tuned on each user's support set",
    "melu": "MeLU (Lee et al. 2019): MAML where only the decision layers adapt per user (Table 1 baseline)",
    "metacs-dnn": "MetaCS-DNN (Bharadhwaj 2019): MAML over MeLU's network, global SGD (Table 1 baseline)",
    "mamo": "MAMO (Dong et al. 2020): MAML whose initialisation is personalised by profile, gradient and "
            "preference memories",
    "s2meta": "s²Meta (Du et al. 2019): learned initialisation, LSTM update controller and REINFORCE-trained "
              "stop controller (Table 1 baseline)",
    "greatmeta": "GreatMeta (Du et al. 2025): FiLM encoder; users weighted by a scheduler over gradient factors",
}

DATA_HELP = """\
where data comes from:
  raw files are looked up in --data-dir, else in $MAMO_LITE_DATA, else in the user cache
  ($MAMO_LITE_CACHE or ~/.cache/mamo_lite). Missing MovieLens files are downloaded (GroupLens, and
  MeLU's movie metadata from its GitHub repository) and verified by sha256; --no-download forbids
  it. Book-Crossing cannot be downloaded any more: put BX-CSV-Dump.zip or its three CSVs into
  <data dir>/book-crossing/. 'synthetic' is generated offline from the seed.
"""

REPRODUCE_HELP = """\
rows: global median, global mean, item mean, user support mean (constants), DNN, DNN + fine-tuning,
  NMF, RUM (item), RUM (feature), MeLU, MetaCS-DNN, MetaCS-DNN (λ validated), s²Meta (GPU
  recommended), GreatMeta, MAML, MAMO, MAMO (as coded). Each cell is
  results/table1/<dataset>/<row>/seed<k>.json with its tidy metric rows, the run's facts (selected
  epoch, epochs run, divergence) and its provenance (commit, device, versions, data checksums,
  budget). A cell whose inputs changed is recomputed. Rows with a grid (MAML's ρ, MetaCS-DNN's λ,
  RUM's A.2.2 grid) first choose their values on seed 0's validation users: <dataset>/<row>/grid.json.

fig2: MAMO's parameter sensitivity on MovieLens-1M (train ratio, support size, layers, embedding
  size, alpha, beta, rho, lambda, and the local update), one point per value and seed in
  results/fig2/<panel>/<value>/seed<k>.json. fig4: convergence of DNN, NMF and MAMO at support sizes
  5 and 10 (validation MAE per epoch; test MAE per local step) in results/fig4/<method>/s<size>/.
  The figures' "book" budget trains on 1000 training users for at most 8 epochs (see mamo_lite.studies).

groups: chapter 6's minority vs majority users. Each method (--methods: MAML MeLU MAMO GreatMeta and
  the trivial baselines by default; also greatmeta-query-film, greatmeta-as-coded, greatmeta-uniform,
  greatmeta-held-out-look-ahead, greatmeta-no-encoder) on each dataset (default: movielens-1m
  book-crossing movielens-100k) under each protocol (--protocols: mamo, greatmeta) and seed, trained
  as a Table-1 cell; its test users labelled minority/majority from their support ratings (taste and
  histogram distances against the training users, mamo_lite.groups) and MAE/NDCG@3 reported per
  group in results/groups/<protocol>/<dataset>/<method>/seed<k>.json (see mamo_lite.imbalance).
"""

RESUME_HELP = """\
what --resume guarantees:
  after every epoch a run saves OUT/last.pt (that epoch's weights, memories, optimiser state and
  curves) and, when validation improves, OUT/checkpoint.pt. --resume continues from last.pt with the
  same method, dataset, seed, preset and --set values (it refuses others) until --epochs in all:
  epochs are numbered on, the optimiser state carries over, and the best epoch is chosen over the
  whole run. The training users come in the order the uninterrupted run would use, so an
  interrupted and resumed run trains like an uninterrupted one; only --preset full's patience
  counts from the resume point.
"""

CHECKPOINT_HELP = """\
what a checkpoint contains:
  the method, dataset and every configuration (network, meta-learning, MAMO memories), the feature
  schema, all parameters and buffers (MAMO's memories included), the optimiser state, the learning
  curves, the data's release and file checksums, the seed and the software versions.
"""


EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_WRITE = 2, 3, 4

FAST_PATHS_HELP = ("use the engine's faster equivalent paths: the meta-batch as batched tensor operations, gathered "
                   "embedding rows, factored local updates and "
                   "(MAMO) the memory write fused into the main pass; the same numbers to float rounding, not "
                   "bitwise (default: the reference path, which the book and `reproduce` use)")
EXIT_HELP = """\
exit status:
  0  success
  2  bad input: a wrong option or value, missing data, an unusable checkpoint, ... (nothing is trained)
  3  the run diverged (train: the loss exploded, see the message for the likely fix; the checkpoint,
     if any, holds the last healthy epoch) or the learner's predictions are not finite (evaluate)
  4  the results (printed above the error) could not be written: the disk is full or the folder
     became unwritable during the run (a folder that is unwritable at the start is status 2)
"""

MEMORY_ENV = "MAMO_LITE_MAX_MEMORY_GIB"
DEFAULT_MAX_MEMORY_GIB = 16.0


class CLIError(Exception):
    """A user error: printed as ``mamo-lite: error: ...`` with exit status 2."""


# -- argument parsing -----------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


SEED_MAX = 2**32 - 1  # NumPy's seed range; torch accepts it too


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed must lie in [0, {SEED_MAX}] (2**32 - 1), got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value: ``true``/``false``, ``none``, numbers, tuples (``64,64`` or ``(64, 64)``), strings."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if low in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
        return float(low)  # a number, so that the configuration refuses it by name
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        if "," in text:
            return tuple(parse_value(part) for part in text.split(",") if part.strip())
        return text.strip()
    return tuple(value) if isinstance(value, list) else value


def _describe(hint: Any) -> str:
    """A field annotation in words: ``float`` → "a number", ``tuple[int, ...] | None`` → "none or ..."."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(["none" if a is type(None) else _describe(a) for a in args])
    if origin is tuple:
        return "a comma-separated list of integers, e.g. 64,64" if args[0] is int else "a comma-separated list of names"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a word"}.get(hint, str(hint))


def _coerce_to(value: Any, hint: Any) -> Any:
    """``value`` converted to the annotation ``hint``; raises ``ValueError`` if it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value in args:
            return value
    elif origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _coerce_to(value, a)
                except ValueError:
                    pass
    elif origin is tuple:
        items = value if isinstance(value, tuple) else (value,)
        return tuple(_coerce_to(v, args[0]) for v in items)
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):  # 1e5
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ValueError(value)


def _format_value(value: Any) -> str:
    """A value as it would be typed after ``--set key=``."""
    if isinstance(value, tuple):
        return ",".join(map(_format_value, value))
    return {None: "none", True: "true", False: "false"}.get(value, str(value)) if not isinstance(value, float) \
        else f"{value:g}"


def _config_fields(method: str, dataset: str) -> dict[str, tuple[Any, Any]]:
    """``{key: (annotation, default)}`` of every hyper-parameter ``method`` has on ``dataset``."""
    from mamo_lite.methods import method_configs

    out: dict[str, tuple[Any, Any]] = {}
    for cfg in method_configs(method, dataset).values():
        if cfg is not None:
            hints = typing.get_type_hints(type(cfg))
            out.update({f.name: (hints[f.name], getattr(cfg, f.name)) for f in dataclasses.fields(cfg)})
    return out


def parse_overrides(pairs: Sequence[str], method: str, dataset: str) -> dict[str, Any]:
    """``["local_lr=0.05", ...]`` → ``{"local_lr": 0.05}``, typed by the configuration fields' annotations.

    A value that does not fit its field raises a :class:`CLIError` naming the key, the expected type
    (the options of a ``Literal`` field), the value given and the method's default.
    """
    known = _config_fields(method, dataset)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"--set expects key=value, got {pair!r}")
        if key not in known:
            raise CLIError(f"--set {key}: unknown hyper-parameter for {method}; known: {', '.join(sorted(known))} "
                           "(see `mamo-lite methods`)")
        hint, default = known[key]
        try:
            out[key] = _coerce_to(parse_value(text), hint)
        except ValueError:
            raise CLIError(f"--set {key}={text.strip()}: {key} expects {_describe(hint)}; "
                           f"{method}'s default is {key}={_format_value(default)}") from None
    return out


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="mamo-lite", formatter_class=fmt,
        description="Meta-learning for cold-start recommendation (MAMO, KDD 2020): train, evaluate and "
                    "inspect the book's methods from the command line.",
        epilog="examples:\n"
               "  mamo-lite methods\n"
               "  mamo-lite data movielens-1m\n"
               "  mamo-lite train --method mamo --dataset synthetic --preset smoke --out runs/try\n"
               "  mamo-lite evaluate runs/try/checkpoint.pt\n\n" + DATA_HELP + "\n" + EXIT_HELP)
    parser.add_argument("--version", action="version", version=f"mamo-lite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", "--dataset-dir", dest="data_dir", metavar="DIR",
                       help="folder holding the raw files (default: $MAMO_LITE_DATA, else the user cache)")
        p.add_argument("--no-download", dest="download", action="store_false",
                       help="fail instead of downloading missing files")

    methods_text = "\n".join(f"  {m:<11} {h}" for m, h in METHOD_HELP.items())
    presets_text = "\n".join(f"  {p.name:<6} {p.description}" for p in PRESETS.values())
    t = sub.add_parser(
        "train", formatter_class=fmt, help="meta-train a method, test it, save a checkpoint and metrics",
        description="Meta-train METHOD on DATASET (Algorithm 1), keep the epoch with the best validation "
                    "MAE, evaluate it on the test users per scenario (W-W, W-C, C-W, C-C), and write "
                    "OUT/checkpoint.pt and OUT/metrics.json.",
        epilog=f"methods:\n{methods_text}\n\npresets:\n{presets_text}\n\n{CHECKPOINT_HELP}\n{RESUME_HELP}\n"
               f"{DATA_HELP}\n{EXIT_HELP}")
    t.add_argument("--method", required=True, choices=list(METHOD_HELP), help="which meta-learner")
    t.add_argument("--dataset", required=True, choices=DATASETS, help="which dataset")
    t.add_argument("--preset", default="book", choices=list(PRESETS),
                   help="run size: users and epochs (default: book)")
    t.add_argument("--epochs", type=_positive_int, help="override the preset's number of epochs")
    t.add_argument("--seed", type=_seed, default=0,
                   help="seed for initialisation, splits and shuffles, 0 … 2**32-1 (default: 0)")
    t.add_argument("--device", default="auto",
                   help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps (default: auto)")
    t.add_argument("--path", choices=("vmap", "loop"), default="vmap",
                   help="batched torch.func.vmap over users, or the plain per-user loop (same numbers)")
    t.add_argument("--fast-paths", action="store_true", help=FAST_PATHS_HELP)
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a hyper-parameter, e.g. --set local_lr=0.05 --set inner_steps=3 "
                        "(repeatable; see `mamo-lite methods` for the keys)")
    t.add_argument("--out", metavar="DIR", help="output folder (default: runs/METHOD-DATASET-seedSEED)")
    t.add_argument("--max-memory", type=_positive_float, metavar="GIB",
                   help="refuse a network whose estimated training memory exceeds GIB gibibytes (default: "
                        f"${MEMORY_ENV}, else {DEFAULT_MAX_MEMORY_GIB:g})")
    again = t.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (its checkpoint.pt, last.pt and metrics.json)")
    again.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out from OUT/last.pt up to --epochs (see below)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress bars (default: only in a terminal)")
    data_options(t)

    e = sub.add_parser(
        "evaluate", formatter_class=fmt, help="score a saved checkpoint on its dataset's test users",
        description="Rebuild the learner saved in CHECKPOINT, predict its dataset's test users after "
                    "local adaptation (Algorithm 2), print MAE, RMSE and NDCG@3 per scenario and write "
                    "them as JSON (default: next to the checkpoint).",
        epilog=CHECKPOINT_HELP + "\n" + DATA_HELP + "\n" + EXIT_HELP)
    e.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint.pt written by `mamo-lite train`")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    e.add_argument("--path", choices=("vmap", "loop"), default="vmap", help="vmap or per-user loop")
    e.add_argument("--steps", type=_int, help="local updates per test user (default: the method's own)")
    e.add_argument("--fast-paths", action="store_true", help=FAST_PATHS_HELP)
    e.add_argument("--out", metavar="FILE", help="JSON output, or a folder to write <name>-evaluation.json into "
                                                 "(default: CHECKPOINT's folder/<name>-evaluation.json)")
    data_options(e)

    m = sub.add_parser("methods", help="list the methods and their default hyper-parameters",
                       description="List each method with its default network, meta-learning and memory "
                                   "hyper-parameters (any of them can be changed with train --set KEY=VALUE).")
    m.add_argument("--dataset", choices=DATASETS, default="movielens-1m",
                   help="defaults differ per dataset (default: movielens-1m)")

    d = sub.add_parser("data", formatter_class=fmt, help="summarise a dataset under the cold-start protocol",
                       description="Load DATASET (downloading and verifying it if needed) and print its "
                                   "users per split, warm/cold users, scenario counts and files.",
                       epilog=DATA_HELP)
    d.add_argument("dataset", choices=DATASETS, metavar="DATASET", help=f"one of {', '.join(DATASETS)}")
    d.add_argument("--seed", type=_seed, default=0, help="protocol seed, 0 … 2**32-1 (default: 0)")
    data_options(d)

    r = sub.add_parser("reproduce", formatter_class=fmt, help="recompute the paper's Table 1 into results/",
                       description="Run every row × dataset × seed of MAMO's Table 1 (trivial baselines and "
                                   "meta-learners; epochs chosen on validation users) into one JSON file per "
                                   "cell, then gather them into OUT/table1.csv and OUT/table1.json. Finished "
                                   "cells are read back, not recomputed: an interrupted run continues where it "
                                   "stopped.", epilog=REPRODUCE_HELP)
    r.add_argument("what", choices=("table1", "fig2", "fig4", "groups"),
                   help="table1 (the paper's Table 1), fig2 (parameter sensitivity), fig4 (convergence) or "
                        "groups (minority vs majority users, chapter 6)")
    r.add_argument("--datasets", nargs="+", choices=DATASETS, default=None, metavar="DATASET",
                   help="default: movielens-1m book-crossing (groups: and movielens-100k)")
    r.add_argument("--rows", nargs="+", metavar="ROW", help="table rows (default: all; see below)")
    r.add_argument("--panels", nargs="+", metavar="PANEL", help="fig2 panels (default: all; see below)")
    r.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="fig4 methods: DNN NMF MAMO (default: all); groups methods: maml melu mamo greatmeta "
                        "global-median item-mean user-support-mean (default) greatmeta-query-film "
                        "greatmeta-as-coded greatmeta-uniform greatmeta-held-out-look-ahead greatmeta-no-encoder")
    r.add_argument("--protocols", nargs="+", choices=("mamo", "greatmeta"), metavar="PROTOCOL",
                   help="groups protocols: mamo (four scenarios) and/or greatmeta (user cold-start only; "
                        "default: both)")
    r.add_argument("--support", nargs="+", type=_int, metavar="N", help="fig4 support sizes (default: 5 10)")
    r.add_argument("--seeds", type=_int, default=None,
                   help="seeds 0 … N-1 (default: 5 for table1 and groups, 3 for figures)")
    r.add_argument("--budget", choices=("smoke", "book", "full"), default="book",
                   help="epochs, patience and users per cell (default: book; full is table1's only)")
    r.add_argument("--out", default=None, help="results folder (default: results/WHAT)")
    r.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: only in a terminal)")
    return parser


# -- helpers --------------------------------------------------------------------------------------

def _data_identity(provenance: dict | None) -> Any:
    """The provenance without file locations: what must match for numbers to be comparable."""
    ident = json_safe(dict(provenance or {}))
    for f in (ident.get("files") or {}).values():
        if isinstance(f, dict):
            f.pop("path", None)
    return ident


def _spec_mismatch(trained, data, dataset: str) -> str | None:
    """How the feature spec a checkpoint was trained on differs from the data's, in words (None: it fits)."""
    if (trained.rating_min, trained.rating_max) != (data.rating_min, data.rating_max):
        return (f"the checkpoint was trained on {dataset} ratings {trained.rating_min:g}–{trained.rating_max:g}; "
                f"the data's ratings are {data.rating_min:g}–{data.rating_max:g}")
    for side in ("user", "item"):
        mine, theirs = getattr(trained, f"{side}_fields"), getattr(data, f"{side}_fields")
        if [(f.name, f.kind) for f in mine] != [(f.name, f.kind) for f in theirs]:
            return (f"the checkpoint was trained on {dataset} with the {side} fields "
                    f"{', '.join(f.name for f in mine)}; the data has {', '.join(f.name for f in theirs)}")
        for a, b in zip(mine, theirs, strict=True):
            if a.vocab_size != b.vocab_size:
                return (f"the checkpoint was trained on {dataset} with {a.vocab_size} {a.name} values; "
                        f"the data has {b.vocab_size}")
    return None


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def _check_writable(folder: Path, option: str) -> None:
    """Create ``folder`` if needed and a probe file in it, before any long computation."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".mamo-lite-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CLIError(f"{option} {str(folder)!r}: cannot write there ({e.strerror or e}); choose a writable "
                       "folder") from None


def _write_outputs(writes: list[tuple[Path, Any]], command: str) -> list[Path]:
    """Run each ``(path, write)``; report every failure. Returns the paths that could not be written."""
    failed = []
    for path, write in writes:
        try:
            write()
        except OSError as e:
            print(f"mamo-lite {command}: error: could not write {path} ({e.strerror or e}); the results "
                  "printed above are not saved there", file=sys.stderr)
            failed.append(path)
    return failed


def _device(name: str):
    from mamo_lite.utils import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _load_data(name: str, data_dir: str | None, *, seed: int, download: bool):
    from mamo_lite.data import load
    from mamo_lite.data.errors import DataError

    if data_dir is not None and not Path(data_dir).is_dir():
        raise CLIError(f"--data-dir {data_dir!r} does not exist or is not a folder")
    try:
        return load(name, data_dir, seed=seed, download=download)
    except DataError as e:
        raise CLIError(str(e)) from None


def training_memory_bytes(learner) -> int:
    """An estimate of the memory meta-training ``learner`` needs, from its shapes alone.

    Parameters and buffers (MAMO's memories), once more for the gradients, twice more for Adam's
    moments, and per user of a meta-batch a copy of the locally adapted parameters for each inner
    step plus the query pass. Activations are left out (small next to the embedding tables). Works
    on a learner built on the ``meta`` device, so nothing is allocated.
    """
    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    params = dict(learner.model.named_parameters())
    state = nbytes(learner.state_dict().values())
    cfg = learner.config
    moments = 2 if cfg.global_optimizer == "adam" else 0
    local = nbytes(params[n] for n in learner.local_names())
    return state + (1 + moments) * nbytes(params.values()) + cfg.users_per_batch * (cfg.inner_steps + 1) * 2 * local


def _preflight(method: str, spec, dataset: str, overrides: dict, limit_gib: float | None):
    """Validate the configuration and refuse a network too big for the memory limit, allocating nothing."""
    import torch

    from mamo_lite.methods import build_learner

    try:
        with torch.device("meta"):
            probe = build_learner(method, spec, dataset, overrides=overrides)
    except (ValueError, TypeError) as e:  # the configs validate themselves
        raise CLIError(f"invalid hyper-parameters: {e}") from None
    if limit_gib is None:
        text = os.environ.get(MEMORY_ENV, "").strip()
        try:
            limit_gib = _positive_float(text) if text else DEFAULT_MAX_MEMORY_GIB
        except argparse.ArgumentTypeError as e:
            raise CLIError(f"${MEMORY_ENV}: {e}") from None
    need = training_memory_bytes(probe)
    if need > limit_gib * 2**30:
        n_params = sum(p.numel() for p in probe.parameters())
        raise CLIError(f"this network would need about {need / 2**30:.3g} GiB to train ({n_params:,} parameters "
                       f"with embed_dim={probe.model.config.embed_dim}), over the limit of {limit_gib:g} GiB; lower "
                       f"embed_dim/field_dim/decision_hidden or users_per_batch, or raise the limit with "
                       f"--max-memory GIB (or ${MEMORY_ENV})")


def _print_table(title: str, metrics: pd.DataFrame) -> None:
    from mamo_lite.evaluate import scenario_table

    table = scenario_table(metrics)
    print(title)
    print(table.to_string(float_format=lambda v: f"{v:.4f}", na_rep="—"))
    empty = table.index[table["ratings"] == 0].tolist()
    if empty:
        print(f"no test ratings in {', '.join(empty)} (n = 0): {'its' if len(empty) == 1 else 'their'} "
              "metrics are undefined (—), not zero")


# -- commands -------------------------------------------------------------------------------------

RUN_FILES = ("checkpoint.pt", "last.pt", "metrics.json")


def _describe_run(out: Path) -> str:
    """What an existing run folder holds, in a few words (from its metrics.json when readable)."""
    try:
        r = json.loads((out / "metrics.json").read_text())
        return f"{r['method']} on {r['dataset']}, seed {r['seed']}, {r['epochs_run']} epoch(s)"
    except (OSError, ValueError, KeyError, TypeError):
        return ", ".join(f for f in RUN_FILES if (out / f).exists())


def _resume_state(out: Path, args: argparse.Namespace, size, epochs: int, overrides: dict, device):
    """The learner, optimiser and bookkeeping of ``out/last.pt``, checked against this command."""
    from mamo_lite.checkpoint import CheckpointError, load_checkpoint

    if not (out / "last.pt").is_file():
        raise CLIError(f"--resume: {str(out)!r} has no last.pt to continue from (a run writes it after each "
                       "epoch); train again with --overwrite")
    try:
        learner, info = load_checkpoint(out / "last.pt", device=device)
    except CheckpointError as e:
        raise CLIError(f"--resume: {e}") from None
    extra = info["extra"]
    saved = {"method": info["method"], "dataset": info["dataset"], "seed": info["seed"], "preset": extra.get("preset")}
    asked = {"method": args.method, "dataset": args.dataset, "seed": args.seed, "preset": size.name}
    if args.overrides:
        saved["overrides"], asked["overrides"] = json_safe(extra.get("overrides", {})), json_safe(overrides)
    differ = [f"{k} {saved[k]!r} (asked: {asked[k]!r})" for k in asked if saved[k] != asked[k]]
    if differ:
        raise CLIError(f"--resume: {str(out)!r} holds a run with {', '.join(differ)}; resume it with the same "
                       "--method, --dataset, --seed, --preset and --set values, or start a new run")
    if info["epoch"] >= epochs:
        raise CLIError(f"--resume: {str(out)!r} has already run {info['epoch']} of {epochs} epoch(s); "
                       f"ask for more with --epochs N (N > {info['epoch']})")
    return learner, info


def _cmd_train(args: argparse.Namespace) -> int:
    from mamo_lite.checkpoint import load_checkpoint, save_checkpoint
    from mamo_lite.meta.engine import make_optimizer
    from mamo_lite.methods import build_learner, learner_configs
    from mamo_lite.presets import preset
    from mamo_lite.train import HISTORY_COLUMNS, NonFinitePredictionError, evaluate_learner, fit, subset_users
    from mamo_lite.utils import seed_everything, versions

    start = time.perf_counter()
    device = _device(args.device)
    size = preset(args.preset)
    epochs = args.epochs if args.epochs is not None else size.epochs
    overrides = parse_overrides(args.overrides, args.method, args.dataset)
    out = Path(args.out or f"runs/{args.method}-{args.dataset}-seed{args.seed}")
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} exists and is not a folder")
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not (args.overwrite or args.resume):
        raise CLIError(f"--out {str(out)!r} already holds a run ({_describe_run(out)}); pass --overwrite to "
                       "replace it, --resume to continue it, or choose another --out")

    data = _load_data(args.dataset, args.data_dir, seed=args.seed, download=args.download)
    loaded = time.perf_counter()
    done, rows, best = 0, [], {"epoch": 0, "MAE": math.inf, "val": {}}
    if args.resume:
        learner, info = _resume_state(out, args, size, epochs, overrides, device)
        overrides, optimizer, done = info["extra"].get("overrides", {}), info["optimizer"], info["epoch"]
        rows = [tuple(r) for r in info["history"].itertuples(index=False)]
        best = {"epoch": info["extra"]["best_epoch"], "MAE": info["extra"]["best_val"].get("MAE", math.inf),
                "val": info["extra"]["best_val"]}
    else:
        _preflight(args.method, data.spec, args.dataset, overrides, args.max_memory)
        seed_everything(args.seed)
        learner = build_learner(args.method, data.spec, args.dataset, overrides=overrides)
        optimizer = make_optimizer(learner)
    learner.use_fast_paths(args.fast_paths)
    _check_writable(out, "--out")
    if args.overwrite:
        for name in existing:
            (out / name).unlink()

    extra = {"preset": size.name, "epochs": epochs, "overrides": overrides, "path": args.path,
             "fast_paths": args.fast_paths,
             "max_test_users": size.max_test_users, "eval_chunk": size.eval_chunk}

    def save(name: str, epoch: int) -> None:
        history = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
        save_checkpoint(out / name, learner, method=args.method, dataset=args.dataset, optimizer=optimizer,
                        epoch=epoch, history=history, data_provenance=data.provenance, seed=args.seed,
                        extra={**extra, "best_epoch": best["epoch"], "best_val": best["val"]})

    def after_epoch(epoch: int, metrics: dict[str, float], _learner) -> None:
        """Keep the run resumable: checkpoint.pt is the best epoch so far, last.pt the last one."""
        rows.extend((epoch, *k.split("_", 1), v) for k, v in metrics.items() if not k.endswith("seconds"))
        mae = metrics.get("val_MAE")
        names = ["last.pt"]
        if mae is None or mae < best["MAE"]:
            best.update(epoch=epoch, MAE=math.inf if mae is None else mae,
                        val={k[4:]: v for k, v in metrics.items() if k.startswith("val_") and k != "val_seconds"})
            names.insert(0, "checkpoint.pt")
        for name in names:
            try:
                save(name, epoch)
            except OSError as e:  # keep training; the final writes report what is lost
                print(f"warning: could not save {out / name} after epoch {epoch} ({e.strerror or e}); the run "
                      "goes on, but cannot be resumed from here", file=sys.stderr)

    print(f"{'resuming' if done else 'training'} {args.method} on {args.dataset} ({size.name} preset, "
          f"{f'epochs {done + 1}–{epochs}' if done else f'{epochs} epoch(s)'}, seed {args.seed}, device {device}, "
          f"{args.path} path)", flush=True)
    result = fit(learner, data, epochs=epochs - done, start_epoch=done, seed=args.seed, device=device, path=args.path,
                 patience=size.patience, max_train_users=size.max_train_users, max_val_users=size.max_val_users,
                 eval_chunk=size.eval_chunk, optimizer=optimizer, progress=args.progress, callback=after_epoch)
    trained = time.perf_counter()
    if best["epoch"] != result.best_epoch and best["epoch"] > 0:  # the best epoch came before --resume
        learner, info = load_checkpoint(out / "checkpoint.pt", device=device)
        optimizer = info["optimizer"]
    diverged = result.diverged
    test = subset_users(data.tasks("test"), size.max_test_users, args.seed)
    metrics = None
    if best["epoch"] > 0:
        try:
            metrics = evaluate_learner(learner, test, method=args.method, dataset=args.dataset, seed=args.seed,
                                       path=args.path, chunk=size.eval_chunk)
        except NonFinitePredictionError as e:
            diverged = diverged or f"diverged (test predictions not finite: {e})"
    evaluated = time.perf_counter()

    history = result.history
    report = {
        "command": "train", "method": args.method, "dataset": args.dataset, "seed": args.seed,
        "device": str(device), "path": args.path, "fast_paths": args.fast_paths, "preset": size.to_dict(), "epochs": epochs,
        "resumed_from_epoch": done or None, "best_epoch": best["epoch"], "epochs_run": done + result.epochs_run,
        "stopped_early": result.stopped_early, "diverged": diverged, "best_val": best["val"],
        "users": {"train": result.n_train_users, "val": result.n_val_users, "test": len(test)},
        "metrics": metrics.to_dict(orient="records") if metrics is not None else [],
        "history": [*[dict(zip(HISTORY_COLUMNS, r, strict=True)) for r in rows if r[0] <= done],
                    *history.to_dict(orient="records")],
        "provenance": data.provenance, "release": data.release,
        "configs": {k: (c.to_dict() if c is not None else None) for k, c in learner_configs(learner).items()},
        "overrides": overrides, "versions": versions(device),
        "wall_seconds": {"load": loaded - start, "train": trained - loaded, "evaluate": evaluated - trained,
                         "total": time.perf_counter() - start},
        "checkpoint": "checkpoint.pt" if metrics is not None else None,
    }
    if metrics is not None:
        _print_table(f"\ntest users ({len(test)}), best epoch {best['epoch']} of {done + result.epochs_run}:",
                     metrics)
    writes = [(out / "metrics.json", lambda: _write_json(out / "metrics.json", report))]
    if metrics is not None:  # a run that diverged in its first epoch has nothing worth keeping
        writes.insert(0, (out / "checkpoint.pt", lambda: save("checkpoint.pt", best["epoch"])))
    failed = _write_outputs(writes, "train")
    written = [path for path, _ in writes if path not in failed]
    if written:
        print(f"\nwrote {' and '.join(map(str, written))} ({report['wall_seconds']['total']:.1f} s)")
    if diverged:
        _report_divergence(args.method, learner.config, diverged, best["epoch"])
        return EXIT_DIVERGED
    return EXIT_WRITE if failed else 0


def _report_divergence(method: str, meta, message: str, best_epoch: int) -> None:
    """What a diverged run tells the user: the event, what was kept, and the likely fix."""
    kept = (f"the checkpoint holds epoch {best_epoch}, the last healthy one" if best_epoch > 0
            else "no epoch was healthy, so no checkpoint was written")
    print(f"mamo-lite train: error: {method} {message}; {kept}.\n"
          f"  likely fix: smaller learning rates, e.g. --set global_lr={meta.global_lr / 10:g} "
          f"--set local_lr={meta.local_lr / 10:g} (this run: global_lr={meta.global_lr:g} with "
          f"{meta.global_optimizer}, local_lr={meta.local_lr:g})", file=sys.stderr)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mamo_lite.checkpoint import CheckpointError, load_checkpoint
    from mamo_lite.train import NonFinitePredictionError, evaluate_learner, subset_users
    from mamo_lite.utils import versions

    start = time.perf_counter()
    device = _device(args.device)
    if args.steps is not None and args.steps < 0:
        raise CLIError(f"--steps must be ≥ 0, got {args.steps}")
    try:
        learner, info = load_checkpoint(args.checkpoint, device=device)
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    learner.use_fast_paths(args.fast_paths)
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.with_name(f"{ckpt.stem}-evaluation.json")
    if out.is_dir():  # --out DIR: the default file name inside it
        out = out / f"{ckpt.stem}-evaluation.json"
    _check_writable(out.parent, "--out")
    data = _load_data(info["dataset"], args.data_dir, seed=info["seed"], download=args.download)
    mismatch = _spec_mismatch(info["spec"], data.spec, info["dataset"])
    if mismatch:
        raise CLIError(f"{mismatch}: the checkpoint does not fit this data (other files, another release or a "
                       "different --data-dir?); evaluate it on the data it was trained on")
    if _data_identity(info["data_provenance"]) != _data_identity(data.provenance):
        print("warning: the data's provenance differs from the one recorded in the checkpoint "
              "(different files or release); numbers may not be comparable", file=sys.stderr)
    bad = [name for name, t in learner.state_dict().items() if not bool(t.isfinite().all())]
    if bad:
        print(f"mamo-lite evaluate: error: {args.checkpoint} holds non-finite weights ({', '.join(bad[:3])}"
              f"{', ...' if len(bad) > 3 else ''}), so its predictions would be NaN or inf: the run that wrote it "
              "diverged; retrain with smaller learning rates (--set global_lr=..., local_lr=...)", file=sys.stderr)
        return EXIT_DIVERGED
    test = subset_users(data.tasks("test"), info["extra"].get("max_test_users"), info["seed"])
    try:
        metrics = evaluate_learner(learner, test, method=info["method"], dataset=info["dataset"], seed=info["seed"],
                                   steps=args.steps, path=args.path, chunk=info["extra"].get("eval_chunk", 256))
    except NonFinitePredictionError as e:
        print(f"mamo-lite evaluate: error: {args.checkpoint} on the test users: {e} (--steps; retrain with "
              "--set local_lr=...)", file=sys.stderr)
        return EXIT_DIVERGED
    _print_table(f"{info['method']} on {info['dataset']} (epoch {info['epoch']}, seed {info['seed']}), "
                 f"test users ({len(test)}):", metrics)
    report = {
        "command": "evaluate", "checkpoint": str(ckpt), "method": info["method"], "dataset": info["dataset"],
        "seed": info["seed"], "epoch": info["epoch"], "device": str(device), "path": args.path, "steps": args.steps,
        "fast_paths": args.fast_paths, "users": {"test": len(test)}, "metrics": metrics.to_dict(orient="records"),
        "provenance": data.provenance, "versions": versions(device),
        "wall_seconds": time.perf_counter() - start,
    }
    if _write_outputs([(out, lambda: _write_json(out, report))], "evaluate"):
        return EXIT_WRITE
    print(f"\nwrote {out}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from mamo_lite.methods import METHODS, method_configs

    for method in METHODS:
        print(f"{method}\n  {METHOD_HELP.get(method, '')}")
        try:
            configs = method_configs(method, args.dataset)
        except ImportError as e:  # a method whose module is not installed
            print(f"  (unavailable: {e})\n")
            continue
        for part, cfg in configs.items():
            if cfg is None:
                continue
            values = ", ".join(f"{k}={v!r}" for k, v in cfg.to_dict().items())
            print(f"  {part:<6} {values}")
        print()
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    data = _load_data(args.dataset, args.data_dir, seed=args.seed, download=args.download)
    spec = data.spec
    print(f"{data.name}: ratings {spec.rating_min:g}–{spec.rating_max:g}, seed {data.seed}")
    print(data.summary().to_string())
    print("\nuser fields: " + ", ".join(f"{f.name} ({f.vocab_size})" for f in spec.user_fields))
    print("item fields: " + ", ".join(f"{f.name} ({f.vocab_size}{', multi' if f.kind == 'multi' else ''})"
                                      for f in spec.item_fields))
    files = data.provenance.get("files", {})
    if files:
        print("\nfiles (sha256):")
        for name, f in files.items():
            print(f"  {name:<11} {f.get('sha256')}  {f.get('path')}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mamo_lite.reproduce import ROWS, table1
    from mamo_lite.utils import resolve_device

    misplaced = {"--rows": args.rows and args.what != "table1", "--panels": args.panels and args.what != "fig2",
                 "--methods": args.methods and args.what not in ("fig4", "groups"),
                 "--support": args.support and args.what != "fig4",
                 "--protocols": args.protocols and args.what != "groups"}
    for flag, wrong in misplaced.items():
        if wrong:
            raise CLIError(f"{flag} does not apply to `reproduce {args.what}`")
    unknown = [r for r in args.rows or [] if r not in ROWS]
    if unknown:
        raise CLIError(f"unknown row(s) {unknown}; choose from: {', '.join(repr(r) for r in ROWS)}")
    seeds = args.seeds if args.seeds is not None else (5 if args.what in ("table1", "groups") else 3)
    if seeds < 1:
        raise CLIError(f"--seeds must be ≥ 1, got {seeds}")
    if args.what != "table1" and args.budget == "full":
        raise CLIError(f"--budget full is for table1; {args.what} has smoke and book")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise CLIError(str(e)) from None
    out = Path(args.out or f"results/{args.what}")
    _check_writable(out, "--out")
    if args.what == "groups":
        return _reproduce_groups(args, seeds, out, device)
    if args.what != "table1":
        return _reproduce_figure(args, seeds, out, device)
    datasets = args.datasets or ["movielens-1m", "book-crossing"]
    table = table1(datasets, args.rows, range(seeds), args.budget, out=out, device=device,
                   show_progress=args.progress)
    shown = table[table["metric"].isin(["MAE", "NDCG@3", "spread"])]
    summary = shown.groupby(["dataset", "method", "scenario", "metric"], sort=False)["value"].agg(["mean", "std"])
    print(summary.round(4).to_string())
    print(f"\nwrote {out / 'table1.csv'} and {out / 'table1.json'} ({len(table)} rows)")
    return 0


def _reproduce_figure(args: argparse.Namespace, seeds: int, out: Path, device) -> int:
    from mamo_lite import studies

    if args.what == "fig2":
        unknown = [p for p in args.panels or [] if p not in studies.FIG2]
        if unknown:
            raise CLIError(f"unknown panel(s) {unknown}; choose from: {', '.join(repr(p) for p in studies.FIG2)}")
        df = studies.fig2(args.panels, range(seeds), args.budget, out=out, device=device, show_progress=args.progress)
        shown = df[(df["scenario"] == "all") & df["metric"].isin(["MAE", "NDCG@3", "spread"])]
        summary = shown.groupby(["panel", "x", "metric"], sort=False)["value"].agg(["mean", "std"]).unstack("metric")
    else:
        bad = [m for m in args.methods or [] if m not in studies.FIG4_METHODS]
        if bad:
            raise CLIError(f"unknown method(s) {bad}; choose from: {', '.join(studies.FIG4_METHODS)}")
        bad = [s for s in args.support or [] if not 1 <= s <= 15]
        if bad:
            raise CLIError(f"--support sizes must be 1-15 (the query set is the last 5 of 20 ratings), got {bad}")
        df = studies.fig4(args.methods or studies.FIG4_METHODS, args.support or studies.FIG4_SUPPORT, range(seeds),
                          args.budget, out=out, device=device, show_progress=args.progress)
        shown = df[(df["group"] == "all") & df["step"].isin([0, 1, 5, 10])]
        summary = shown.groupby(["method", "support", "step"], sort=False)["MAE"].agg(["mean", "std"]).unstack("step")
    print(summary.round(4).to_string())
    print(f"\nwrote {out}")
    return 0


def _reproduce_groups(args: argparse.Namespace, seeds: int, out: Path, device) -> int:
    from mamo_lite import imbalance
    from mamo_lite.reproduce import slug

    labels = []
    for m in args.methods or imbalance.DEFAULT_METHODS:
        try:
            labels.append(imbalance.method_label(m))
        except ValueError:
            names = ", ".join(slug(label) for label in imbalance.METHODS)
            raise CLIError(f"unknown method {m!r} for `reproduce groups`; choose from: {names}") from None
    df = imbalance.groups_study(labels, args.datasets or imbalance.DATASETS, args.protocols or imbalance.PROTOCOLS,
                                range(seeds), args.budget, out=out, device=device, show_progress=args.progress)
    shown = df[df["metric"].isin(["MAE", "NDCG@3"]) & (df["group"] != "unscored")]
    summary = (shown.groupby(["protocol", "dataset", "method", "grouping", "metric", "group"], sort=False)["value"]
               .mean().unstack("group"))
    print(summary.round(4).to_string())
    print(f"\nmeans over {seeds} seed(s); wrote {out}")
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "methods": _cmd_methods, "data": _cmd_data,
            "reproduce": _cmd_reproduce}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)  # exits with status 2 on bad arguments
    try:
        return COMMANDS[args.command](args)
    except CLIError as e:
        print(f"mamo-lite {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        hint = "; continue the run with the same command plus --resume" if args.command == "train" else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mamo-lite methods | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (silence the flush at exit)
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
