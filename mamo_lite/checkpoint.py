"""Save and restore a trained learner with everything needed to rebuild, resume and audit it.

A checkpoint is one ``torch.save`` file (written atomically) holding a plain dictionary:

===================  =============================================================================
key                  content
===================  =============================================================================
``format``           ``"mamo-lite-checkpoint"`` and ``format_version`` (checked on load)
``method``           ``"maml"``, ``"melu"``, ``"metacs-dnn"`` or ``"mamo"``; ``dataset``: its name
``configs``          ``RecommenderConfig``, ``MetaConfig`` and ``MAMOConfig`` as dictionaries
``spec``             the ``FeatureSpec`` (vocabulary sizes, rating scale) the network was built for
``state_dict``       parameters and buffers (MAMO's memories M_P, M_U, M_{U,I} are buffers)
``optimizer``        the global optimiser's state (to resume), or None
``epoch``            the epoch the weights come from; ``history``: the learning curves
``data_provenance``  the data's release and file checksums; ``seed``; ``versions``; ``extra``
===================  =============================================================================

Equal content gives equal bytes: given a history without wall-clock rows (``mamo-lite train`` keeps
its epoch timings in ``metrics.json``), two runs with the same seed on the same machine write
byte-identical checkpoints.

Only tensors and plain Python values are stored, so :func:`load_checkpoint` reads with
``torch.load(weights_only=True)``: loading a checkpoint runs no pickled code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mamo_lite.data.tasks import FeatureSpec
from mamo_lite.meta.engine import MetaConfig, MetaLearner, make_optimizer
from mamo_lite.methods import METHODS, build_learner, learner_configs
from mamo_lite.models.recommender import RecommenderConfig
from mamo_lite.train import HISTORY_COLUMNS
from mamo_lite.utils import atomic_torch_save, json_safe, resolve_device, versions

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

FORMAT = "mamo-lite-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is missing, is not a mamo-lite checkpoint, or was written by an incompatible version."""


def _history_records(history: pd.DataFrame | list | None) -> list[dict]:
    if history is None:
        return []
    if isinstance(history, pd.DataFrame):
        history = history.to_dict(orient="records")
    return json_safe(list(history))


def save_checkpoint(path: str | os.PathLike, learner: MetaLearner, *, method: str, dataset: str,
                    optimizer: torch.optim.Optimizer | None = None, epoch: int,
                    history: pd.DataFrame | list | None, data_provenance: dict | None, seed: int,
                    extra: dict | None = None) -> Path:
    """Write ``learner`` and its context to ``path`` atomically (see the module docstring); returns the path.

    Tensors are saved on the CPU, so a checkpoint trained on a GPU loads anywhere.
    """
    configs = learner_configs(learner)
    state = {k: v.detach().cpu() for k, v in learner.state_dict().items()}
    opt_state = None
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        opt_state = {"state": {i: {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                               for i, s in opt_state["state"].items()},
                     "param_groups": opt_state["param_groups"]}
    device = next(learner.parameters()).device
    # The plain-Python parts go through JSON: the pickle's memo then never depends on which strings
    # happen to be the same object in this process (interning, caches), so equal content → equal bytes.
    plain = json.loads(json.dumps(json_safe({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method,
        "dataset": dataset,
        "configs": {k: (c.to_dict() if c is not None else None) for k, c in configs.items()},
        "spec": learner.model.spec.to_dict(),
        "epoch": int(epoch),
        "history": _history_records(history),
        "data_provenance": data_provenance or {},
        "seed": int(seed),
        "versions": versions(device),
        "extra": extra or {},
    })))
    obj = {**plain, "state_dict": state, "optimizer": opt_state}
    return atomic_torch_save(path, obj)


def _configs_from_dict(d: dict) -> dict[str, Any]:
    mamo = None
    if d.get("mamo") is not None:
        from mamo_lite.methods.mamo import MAMOConfig

        mamo = MAMOConfig.from_dict(d["mamo"])
    return {"model": RecommenderConfig.from_dict(d["model"]), "meta": MetaConfig.from_dict(d["meta"]),
            "mamo": mamo}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dictionary (tensors on the CPU), checked for format and version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found (train one with `mamo-lite train ... "
                              "--out DIR`, which writes DIR/checkpoint.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (garbage bytes fail anywhere inside the unpickler)
        raise CheckpointError(f"{str(path)!r} is not a mamo-lite checkpoint (torch.load failed: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a mamo-lite checkpoint (no {FORMAT!r} header)")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint format version {version}, but this mamo_lite "
                              f"reads version {FORMAT_VERSION}; retrain it, or load it with the mamo_lite "
                              f"version that wrote it ({obj.get('versions', {}).get('mamo_lite', 'unknown')})")
    return obj


_REQUIRED = ("method", "dataset", "configs", "spec", "state_dict", "epoch", "seed")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _rebuild(obj: dict[str, Any], where: str) -> tuple[MetaLearner, FeatureSpec, dict[str, Any]]:
    """The learner a checkpoint describes, with its weights; every inconsistency is a ``CheckpointError``."""
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise CheckpointError(f"{where} is incomplete: it has no {', '.join(missing)} (damaged or edited); retrain it")
    method = obj["method"]
    if method not in METHODS:
        raise CheckpointError(f"{where} was saved for the method {method!r}, which this mamo_lite does not know "
                              f"(it knows {', '.join(METHODS)}); load it with the mamo_lite version that wrote it")
    try:
        spec = FeatureSpec.from_dict(obj["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where} has an unreadable feature spec ({_first_line(e)}); retrain it") from None
    try:
        configs = _configs_from_dict(obj["configs"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where} has invalid configurations ({_first_line(e)}); retrain it") from None
    if (configs["mamo"] is not None) != (method == "mamo"):
        raise CheckpointError(f"{where} says its method is {method!r} but holds "
                              f"{'a' if configs['mamo'] is not None else 'no'} MAMO memory configuration; "
                              "the file was edited or mixed up, retrain it")
    try:
        learner = build_learner(method, spec, obj["dataset"], configs=configs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{where}: its {method} network cannot be rebuilt ({_first_line(e)})") from None
    try:
        learner.load_state_dict(obj["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3]) or _first_line(e)
        raise CheckpointError(f"{where}: its weights do not fit the {method} network its configuration and "
                              f"feature spec describe ({detail[:300]}); the file was edited or mixed up") from None
    return learner, spec, configs


def load_checkpoint(path: str | os.PathLike,
                    device: str | torch.device = "cpu") -> tuple[MetaLearner, dict[str, Any]]:
    """Rebuild the learner saved at ``path`` on ``device``; returns ``(learner, info)``.

    The learner is rebuilt with ``build_learner(method, spec, dataset, configs=...)`` and its state
    loaded strictly (every parameter and memory buffer must match). ``info`` holds ``method``,
    ``dataset``, ``spec`` (a ``FeatureSpec``), ``configs`` (config objects), ``epoch``, ``history``
    (a DataFrame), ``data_provenance``, ``seed``, ``versions``, ``extra``, ``path``, and
    ``optimizer``: a fresh ``make_optimizer(learner)`` with the saved state loaded (None if none
    was saved).

    Raises a :class:`CheckpointError` saying what is wrong for any file that is missing, is not a
    checkpoint, or does not hold a consistent one (an unknown method, configurations that fail
    validation, weights that do not fit the network the configurations describe, an optimiser
    state of another shape, ...): never a traceback from deep inside PyTorch.
    """
    obj = read_checkpoint(path)
    where = repr(str(path))
    learner, spec, configs = _rebuild(obj, where)
    learner.to(resolve_device(device))
    optimizer = None
    if obj.get("optimizer") is not None:
        optimizer = make_optimizer(learner)  # after .to(device): the state follows the parameters
        try:
            optimizer.load_state_dict(obj["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{where}: its optimiser state does not fit its {obj['method']} learner "
                                  f"({_first_line(e)}); the file was edited or mixed up") from None
    try:
        history = pd.DataFrame(obj.get("history") or [], columns=HISTORY_COLUMNS).astype({"value": "float64"})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} has an unreadable history ({_first_line(e)})") from None
    info = {k: obj.get(k) for k in ("method", "dataset", "epoch", "data_provenance", "seed", "versions", "extra")}
    for key, kind in (("epoch", int), ("seed", int), ("data_provenance", dict), ("extra", dict)):
        info[key] = {} if info[key] is None and kind is dict else info[key]
        if not isinstance(info[key], kind) or isinstance(info[key], bool):
            raise CheckpointError(f"{where}: its field {key!r} is a {type(info[key]).__name__}, not a "
                                  f"{kind.__name__} (damaged or edited); retrain it")
    info.update(spec=spec, configs=configs, history=history, optimizer=optimizer, path=str(path))
    return learner, info
