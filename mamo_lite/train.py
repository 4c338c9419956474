"""The one training loop of the book: every meta-learner (MAML, MeLU, MetaCS-DNN, MAMO) trains here.

:func:`fit` runs Algorithm 1 epoch by epoch: the training users are shuffled with a seeded generator,
cut into meta-batches of ``learner.config.users_per_batch`` users, and each meta-batch takes one
:func:`~mamo_lite.meta.engine.meta_step` (local updates, Eq. 11; memory writes; global update,
Eq. 12). After every epoch the learner predicts the held-out *validation* users (training users the
meta-updates never see, Algorithm 2) and the epoch with the lowest validation MAE is kept: its
parameters, memories and optimiser state are restored at the end. Learning curves come back as a
tidy ``history`` table (``epoch, split, metric, value``) that ``mamo_lite.plots`` reads.

:func:`evaluate_learner` turns a trained learner into the per-scenario table of
``mamo_lite.evaluate`` (W-W, W-C, C-W, C-C × MAE, RMSE, NDCG@3).

A run whose query loss stops being finite or exceeds ``max_loss`` (default ``1e6``; a squared error
on a 1-5 scale is at most 16) has **diverged**: :func:`fit` stops at once, restores the last epoch that
was still healthy and says so in ``FitResult.diverged`` (e.g. ``"diverged (query loss > 1e6 at epoch
2)"``). The loss of a diverged run is chaotic (it differs between CPUs in every digit), so it is reported
as that event, never as a number.

Same seed, same CPU thread count → bit-identical histories and parameters.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from mamo_lite.data.tasks import TaskBatch
from mamo_lite.evaluate import pooled_errors, scenario_metrics
from mamo_lite.meta.engine import MetaLearner, Path, make_optimizer, meta_step, predict
from mamo_lite.utils import progress as progress_bar
from mamo_lite.utils import resolve_device, seed_everything

__all__ = ["DIVERGENCE_LOSS", "FitResult", "NonFinitePredictionError", "adapted_predictions", "divergence_message", "evaluate_learner", "fit", "shown_loss",
           "subset_users", "val_metrics"]

HISTORY_COLUMNS = ["epoch", "split", "metric", "value"]
DIVERGENCE_LOSS = 1e6  # a mean query loss above this (or not finite) means the run has diverged

# callback(epoch, metrics of that epoch, learner) -> True to stop training
Callback = Callable[[int, dict[str, float], MetaLearner], bool | None]


class NonFinitePredictionError(ArithmeticError):
    """Some adapted predictions are NaN or ±inf: the local adaptation diverges (clipping would hide it)."""


@dataclass
class FitResult:
    """What :func:`fit` returns. The learner itself is trained in place (and left at ``best_epoch``).

    ``history`` rows: ``(epoch, "train", "loss", mean query loss)``, ``(epoch, "train", "seconds",
    wall time of the epoch's meta-updates)``, and with validation ``(epoch, "val", "MAE" | "RMSE" |
    "seconds", ...)``. ``best_val`` holds the validation metrics of ``best_epoch`` (empty without
    validation, where ``best_epoch`` is the last epoch). ``optimizer`` is the global optimiser, in
    its state at ``best_epoch``: save it with the checkpoint to resume.

    ``diverged`` is None for a healthy run, else the event as text (``"diverged (query loss > 1e6 at
    epoch 2)"``); then ``diverged_epoch`` is that epoch, the history stops before it, and the learner
    holds the last healthy epoch (``best_epoch``; 0 means the initial weights).
    """

    history: pd.DataFrame
    best_epoch: int
    epochs_run: int
    best_val: dict[str, float]
    optimizer: torch.optim.Optimizer
    seconds: float
    n_train_users: int
    n_val_users: int
    stopped_early: bool
    diverged: str | None = None
    diverged_epoch: int | None = None


def _short_float(x: float) -> str:
    """``1e6`` rather than ``1e+06``: how thresholds read in messages."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def shown_loss(value: float, digits: int = 3, max_loss: float = DIVERGENCE_LOSS) -> str:
    """A loss as text: rounded to ``digits`` decimals, or ``"diverged"`` above ``max_loss`` or when not finite.

    Past the threshold the digits are chaotic (they differ between CPUs and runs), so none is shown.
    """
    return f"{value:.{digits}f}" if value <= max_loss else "diverged"  # NaN fails the comparison too


def divergence_message(epoch: int, what: str, max_loss: float = DIVERGENCE_LOSS) -> str:
    """The one way a diverged run is reported: ``"diverged (query loss > 1e6 at epoch 2)"``."""
    if what == "loss":
        return f"diverged (query loss > {_short_float(max_loss)} at epoch {epoch})"
    return f"diverged (validation predictions not finite at epoch {epoch})"


def subset_users(batch: TaskBatch, n: int | None, seed: int) -> TaskBatch:
    """A seeded subset of ``n`` users of ``batch`` (in their original order); all users if ``n`` is None.

    The same ``(batch, n, seed)`` always gives the same users, whatever else used the random streams.
    """
    if n is None or n >= len(batch):
        return batch
    if n < 1:
        raise ValueError(f"a user limit must be positive or None, got {n}")
    idx = torch.randperm(len(batch), generator=torch.Generator().manual_seed(int(seed)))[:n]
    return batch.select(idx.sort().values)


def _splits(data: Any, val: bool | TaskBatch) -> tuple[TaskBatch, TaskBatch | None]:
    """``(train, val)`` task batches from a dataset (``.tasks(split)``), a mapping or a ``TaskBatch``."""
    if isinstance(data, TaskBatch):
        train, held_out = data, None
    elif isinstance(data, Mapping):
        train, held_out = data["train"], data.get("val")
    elif hasattr(data, "tasks"):
        train = data.tasks("train")
        held_out = data.tasks("val") if val is True else None
    else:
        raise TypeError("fit() needs a dataset with .tasks(split), a {'train': ..., 'val': ...} mapping "
                        f"or a TaskBatch, got {type(data).__name__}")
    if isinstance(val, TaskBatch):
        held_out = val
    elif not val:
        held_out = None
    return train, held_out


def val_metrics(learner: MetaLearner, batch: TaskBatch, *, path: Path = "vmap", chunk: int = 256,
                steps: int | None = None) -> dict[str, float]:
    """Validation MAE and RMSE pooled over the query ratings (Algorithm 2 predictions, clipped to the scale),
    and ``RMSE_unclipped``, the RMSE of the raw predictions: :func:`fit` breaks ties in MAE with it."""
    pred = predict(learner, batch, path=path, chunk=chunk, steps=steps)
    metrics = pooled_errors(pred, batch, learner.model.spec)
    return {**metrics, "RMSE_unclipped": pooled_errors(pred, batch, None)["RMSE"]}


def _clone_state(learner: MetaLearner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


def fit(
    learner: MetaLearner,
    data_or_batches: Any,
    *,
    epochs: int,
    seed: int,
    device: str | torch.device = "auto",
    path: Path = "vmap",
    val: bool | TaskBatch = True,
    patience: int | None = None,
    max_train_users: int | None = None,
    max_val_users: int | None = None,
    eval_chunk: int = 256,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool | None = None,
    callback: Callback | None = None,
    max_loss: float = DIVERGENCE_LOSS,
    start_epoch: int = 0,
) -> FitResult:
    """Meta-train ``learner`` for ``epochs`` epochs (Algorithm 1) and keep its best validation epoch.

    ``data_or_batches``: a dataset from ``mamo_lite.data.load`` (its ``train`` and ``val`` splits), a
    mapping ``{"train": TaskBatch, "val": TaskBatch}``, or one training ``TaskBatch`` (then no
    validation unless ``val`` is a ``TaskBatch``). ``val=False`` skips validation: the last epoch is
    kept. ``max_train_users``/``max_val_users`` train/validate on a seeded subset. ``patience`` stops
    after that many epochs without a lower validation MAE (an equal MAE with a lower unclipped RMSE counts as
    lower: see :func:`val_metrics`). ``optimizer`` resumes a saved optimiser
    (default: a fresh ``make_optimizer(learner)``). ``progress``: None shows a bar only in a terminal.
    ``callback(epoch, metrics, learner)`` runs after each epoch; returning True stops training.
    ``max_loss``: a meta-batch whose mean query loss exceeds it (or is not finite) stops the run as
    diverged (see ``FitResult.diverged``); an epoch whose validation MAE is not finite does too.
    ``start_epoch``: continue a run that has already trained that many epochs (with the learner and
    ``optimizer`` saved after them): epochs are numbered from ``start_epoch + 1`` and the training users
    come in the order an uninterrupted run would use, so ``k`` epochs then ``n - k`` more with
    ``start_epoch=k`` train exactly like ``n`` epochs. Best-epoch selection and ``patience`` look only
    at the epochs of this call; ``best_epoch == start_epoch`` means none of them improved on the start.

    Seeds everything with ``seed`` first; training users are reshuffled every epoch with a generator
    seeded by ``seed``. The learner is moved to ``device`` and trained in place.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be a positive integer or None, got {patience!r}")
    if not isinstance(start_epoch, int) or start_epoch < 0:
        raise ValueError(f"start_epoch must be a non-negative integer, got {start_epoch!r}")
    if not (isinstance(max_loss, int | float) and math.isfinite(max_loss) and max_loss > 0):
        raise ValueError(f"max_loss must be a finite positive number, got {max_loss!r}")
    train, held_out = _splits(data_or_batches, val)
    if len(train) == 0:
        raise ValueError("no training users: the training split is empty")
    train = subset_users(train, max_train_users, seed)
    if held_out is not None:
        held_out = subset_users(held_out, max_val_users, seed)
        held_out = held_out if len(held_out) else None

    generator = seed_everything(seed)
    for _ in range(start_epoch):  # the shuffles of the epochs already trained (one permutation each)
        torch.randperm(len(train), generator=generator)
    dev = resolve_device(device)
    learner.to(dev)
    train = train.to(dev)
    held_out = held_out.to(dev) if held_out is not None else None
    opt = optimizer if optimizer is not None else make_optimizer(learner)

    size = learner.config.users_per_batch
    n_batches = math.ceil(len(train) / size)
    rows: list[tuple[int, str, str, float]] = []
    best_epoch, best_mae, best_val = start_epoch, math.inf, {}
    # The last healthy state (the initial one to start with), restored if the run diverges.
    best_state: dict[str, torch.Tensor] = _clone_state(learner)
    best_opt: dict = copy.deepcopy(opt.state_dict())
    stopped_early = False
    diverged: str | None = None
    start = time.perf_counter()
    bar = progress_bar(total=epochs * n_batches, enabled=progress, desc="meta-training", unit="batch")
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, start_epoch + epochs + 1):
            learner.train()
            t0 = time.perf_counter()
            loss_sum = 0.0
            for batch in train.batches(size, shuffle=True, generator=generator):
                losses = meta_step(learner, batch, opt, path=path)
                batch_loss = float(losses.sum())
                bar.update(1)
                if not batch_loss / len(losses) <= max_loss:  # also catches NaN
                    diverged = divergence_message(epoch, "loss", max_loss)
                    break
                loss_sum += batch_loss
            if diverged:
                break
            train_loss = loss_sum / len(train)
            epoch_metrics = {"train_loss": train_loss, "train_seconds": time.perf_counter() - t0}
            rows += [(epoch, "train", "loss", train_loss), (epoch, "train", "seconds", epoch_metrics["train_seconds"])]

            improved = held_out is None
            if held_out is not None:
                learner.eval()
                t1 = time.perf_counter()
                metrics = val_metrics(learner, held_out, path=path, chunk=eval_chunk)
                seconds = time.perf_counter() - t1
                if not math.isfinite(metrics["MAE"]):
                    diverged = divergence_message(epoch, "val")
                    break
                shown = {m: v for m, v in metrics.items() if m != "RMSE_unclipped"}  # the tie-break stays out of the history
                rows += [(epoch, "val", m, v) for m, v in shown.items()] + [(epoch, "val", "seconds", seconds)]
                epoch_metrics.update({f"val_{m}": v for m, v in shown.items()}, val_seconds=seconds)
                # A tie in MAE is broken by the unclipped RMSE: while every prediction is clipped to the
                # same bound (an untrained output near 0 on a 1-5 scale) the MAE cannot move, but a model
                # that is learning gets closer to the scale, and that is progress, not a flat curve.
                improved = metrics["MAE"] < best_mae or (
                    metrics["MAE"] == best_mae
                    and metrics.get("RMSE_unclipped", math.inf) < best_val.get("RMSE_unclipped", math.inf))
                if improved:
                    best_mae, best_val = metrics["MAE"], metrics
            if improved:
                best_epoch = epoch
                best_state, best_opt = _clone_state(learner), copy.deepcopy(opt.state_dict())
            bar.set_postfix(epoch=epoch, loss=f"{train_loss:.4f}",
                            **({"val_mae": f"{best_mae:.4f}"} if held_out is not None else {}))
            if callback is not None and callback(epoch, epoch_metrics, learner):
                stopped_early = epoch < start_epoch + epochs
                break
            if patience is not None and epoch - best_epoch >= patience:
                stopped_early = epoch < start_epoch + epochs
                break
    finally:
        bar.close()

    if diverged or best_epoch != epoch:
        learner.load_state_dict(best_state)
        opt.load_state_dict(best_opt)
    history = pd.DataFrame(rows, columns=HISTORY_COLUMNS).astype({"epoch": "int64", "value": "float64"})
    return FitResult(history=history, best_epoch=best_epoch, epochs_run=epoch - start_epoch, best_val=best_val,
                     optimizer=opt, seconds=time.perf_counter() - start, n_train_users=len(train),
                     n_val_users=len(held_out) if held_out is not None else 0, stopped_early=stopped_early,
                     diverged=diverged, diverged_epoch=epoch if diverged else None)


def adapted_predictions(learner: MetaLearner, batch: TaskBatch, *, path: Path = "vmap", chunk: int = 256,
                        steps: int | None = None) -> torch.Tensor:
    """Query predictions ``[B, Q]`` (on the CPU) after local adaptation, on the learner's device (Algorithm 2).

    Raises :class:`NonFinitePredictionError` if any prediction of a real query rating is NaN or ±inf.
    """
    dev = next(learner.parameters()).device
    learner.eval()
    pred = predict(learner, batch.to(dev), path=path, chunk=chunk, steps=steps).cpu()
    real = batch.query_mask.cpu()
    bad = int((~torch.isfinite(pred[real])).sum())
    if bad:
        raise NonFinitePredictionError(
            f"{bad} of {int(real.sum())} adapted predictions are not finite (NaN or inf): the local adaptation "
            f"diverges (after {'the learner' + chr(39) + 's own' if steps is None else steps} local steps); use fewer "
            "steps or a smaller local_lr")
    return pred


def evaluate_learner(learner: MetaLearner, batch: TaskBatch, *, method: str, dataset: str, seed: int,
                     steps: int | None = None, path: Path = "vmap", chunk: int = 256,
                     **metric_kw: Any) -> pd.DataFrame:
    """The tidy per-scenario table (method, dataset, scenario, metric, seed, value, n) of ``learner``.

    Predicts ``batch``'s query ratings after local adaptation on each user's support set
    (Algorithm 2, ``steps`` local updates; default the learner's own) on the learner's device, then
    scores them with :func:`mamo_lite.evaluate.scenario_metrics`, predictions clipped to the rating
    scale (extra keywords such as ``k``, ``clip`` and ``average`` go there).

    Raises :class:`NonFinitePredictionError` if any prediction of a real query rating is NaN or ±inf
    (clipping to the rating scale would otherwise turn an exploded adaptation into a plausible score).
    """
    pred = adapted_predictions(learner, batch, path=path, chunk=chunk, steps=steps)
    return scenario_metrics(pred, batch.to("cpu"), method=method, dataset=dataset, seed=seed,
                            rating_range=learner.model.spec, **metric_kw)
