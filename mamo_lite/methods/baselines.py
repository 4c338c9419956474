"""Non-meta baselines: what chapter 2 measures before any meta-learning (MAMO §3.4.2's "DNN").

Three constant predictors, fitted on the *training* users' ratings and scored on an evaluation
batch's query ratings (each returns predictions ``[B, Q]`` aligned with ``eval_batch.query_y``):

* :func:`global_mean` — one number for everyone: the mean training rating;
* :func:`item_mean` — each item's mean training rating (the global mean for items no training user
  rated: cold items);
* :func:`user_support_mean` — each evaluated user's own support-set mean (the only thing a new user
  has told us).

And the plain supervised recommender: :func:`train_plain` fits an
:class:`~mamo_lite.models.recommender.EmbeddingRecommender` (Eqs. 1–2) to every training rating,
support and query alike, with Adam on the MSE, one global model for all users; and
:func:`finetune_predict` scores it with or without a few gradient steps on each evaluated user's
support set. Fine-tuning *is* the engine's local update (Eq. 11) with every parameter group local,
so it runs through :func:`mamo_lite.meta.engine.predict`: there is one inner loop in the package.

:func:`global_median` is the constant that minimises MAE (the median, where the mean minimises the
squared error): on MovieLens-1M it is 4, and it beats several meta-learners of the book (issue 9).

**NMF** (:class:`NMF`, MAMO Fig. 4 and §3.4.2) is a non-negative matrix factorisation ``ŷ = p_u·q_i``
with ``p_u, q_i ≥ 0``, fitted with Lee & Seung's multiplicative updates (NIPS 2000; the weighted
form for observed entries only). Every evaluated user is unseen (MAMO §3.1.3) and many query items
are cold, so — as for RUM (:mod:`mamo_lite.methods.rum`, baselines.md §5) — factors are built from
profiles, not from ids: ``p_u = Σ_f A_f[x_{u,f}]`` over the user fields and ``q_i = Σ_g B_g[x_{i,g}]``
over the item fields (a multi-valued field contributes the mean of its active rows), with every
table ``A_f, B_g ≥ 0``. Given one field holding the user id and one holding the item id this is
exactly classic NMF ``R ≈ W Hᵀ``; here it factorises the ratings through the profile indicators.

[decision] choices the sources leave open, each an argument of :class:`NMF`:

* *cold users / items*: vectors from profile fields (above); an unseen field value's row is never
  updated (with ``reg > 0`` it shrinks to 0 at the first update, the L2 optimum);
* *the support set of an evaluated user*: ``fold_in_steps`` multiplicative updates of that user's
  ``p_u`` alone on their support ratings (item tables fixed, ``p_u`` starting at the profile
  vector), the classic NMF "fold-in" of a new row; ``0`` scores from the profile alone;
* *loss*: the squared error of every training rating (support and query, as :func:`train_plain`),
  plus ``reg · ‖A, B‖²`` (``reg`` enters the multiplicative rule's denominator); no biases, no
  negative sampling; one epoch = one update of every user table, then of every item table
  (each update never increases the objective: Lee & Seung's auxiliary-function argument);
* *initialisation*: uniform entries scaled so that the first predictions sit at the middle of the
  rating scale (no data used), seeded.

Note that MAMO §3.4.2 describes its Fig. 4 "NMF" as "the idea of neural matrix factorization [14],
which multiplies the user embedding and item embedding": a *neural* MF without any non-negativity.
That model is RUM without memory (``mamo_lite.methods.rum.RUM(..., alpha=0.0)``: ``ŷ = p*_u·q_i + μ``
with profile towers); :class:`NMF` is the non-negative factorisation the name usually means.

**One interface for the trained non-meta baselines.** A *baseline model* is an ``nn.Module`` built
as ``Model(spec, **hyper)`` with two methods:

* ``train_epoch(train: TaskBatch, generator: torch.Generator) -> float`` — one pass over the training
  users (shuffled with ``generator``), returning the mean training loss of the pass;
* ``predict(batch: TaskBatch) -> Tensor`` — predictions ``[B, Q]`` aligned with ``batch.query_y``
  (each evaluated user's support set is used as the method says; nothing is learned from queries).

Its whole state is in ``state_dict()`` (best-epoch restoring copies it). :func:`fit_baseline` trains
any of them the same way as :func:`mamo_lite.train.fit` trains a meta-learner::

    fitted = fit_baseline(NMF, train, val, spec=data.spec, seed=0, max_epochs=200, patience=10,
                          device="auto", dim=10)
    pred = fitted.predict(test)            # [B, Q], on test.query_y's device
    fitted.history                         # epoch, split, metric, value (train loss; val MAE, RMSE)
    fitted.best_epoch, fitted.diverged     # the epoch kept; None or "diverged (… at epoch k)"

The best epoch is the one with the lowest validation MAE (pooled over query ratings, predictions
clipped to the rating scale); ``patience`` stops after that many epochs without improvement; a
training loss that is not finite or exceeds ``max_loss``, or non-finite validation predictions,
stop the run as *diverged* (:class:`BaselineFit`), reported as that event and never as a number.
Models: :class:`NMF`, :class:`PlainDNN` (a thin wrapper of :func:`train_plain` and
:func:`finetune_predict`) and :class:`mamo_lite.methods.rum.RUM`. :data:`BASELINES` names the ones
of this module. :func:`select_hyperparameters` runs a staged (coordinate-wise) grid search of any
of them on validation users and returns the choice and the grid's table.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamo_lite.data.tasks import FeatureSpec, TaskBatch
from mamo_lite.evaluate import pooled_errors
from mamo_lite.meta.engine import MetaConfig, MetaLearner, Path, predict
from mamo_lite.models.recommender import GROUPS, EmbeddingRecommender, RecommenderConfig, rating_loss
from mamo_lite.train import DIVERGENCE_LOSS, HISTORY_COLUMNS, divergence_message
from mamo_lite.utils import progress as progress_bar
from mamo_lite.utils import resolve_device, seed_everything

__all__ = ["BASELINES", "NMF", "BaselineFit", "PlainDNN", "finetune_predict", "fit_baseline", "global_mean",
           "global_median", "item_mean", "rating_rows", "select_hyperparameters", "train_plain",
           "user_support_mean"]


def _training_ratings(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """``(item_ids, ratings)`` of every real support and query rating of ``batch`` (flat)."""
    ids = torch.cat([batch.support_item_ids[batch.support_mask], batch.query_item_ids[batch.query_mask]])
    y = torch.cat([batch.support_y[batch.support_mask], batch.query_y[batch.query_mask]])
    return ids, y


def global_mean(train_batch: TaskBatch, eval_batch: TaskBatch) -> Tensor:
    """Predict the mean of all training ratings (support and query) for every query slot: ``[B, Q]``."""
    _, y = _training_ratings(train_batch)
    if y.numel() == 0:
        raise ValueError("global_mean needs at least one training rating")
    return torch.full_like(eval_batch.query_y, float(y.to(torch.float64).mean()))


def global_median(train_batch: TaskBatch, eval_batch: TaskBatch) -> Tensor:
    """Predict the median of all training ratings (support and query) for every query slot: ``[B, Q]``.

    The constant that minimises MAE (the mean minimises the squared error). With an even number of
    ratings every value between the two middle ones minimises MAE equally; this takes the lower one
    (``torch.median``), so the prediction is always a rating that occurs.
    """
    _, y = _training_ratings(train_batch)
    if y.numel() == 0:
        raise ValueError("global_median needs at least one training rating")
    return torch.full_like(eval_batch.query_y, float(y.median()))


def item_mean(train_batch: TaskBatch, eval_batch: TaskBatch) -> Tensor:
    """Predict each query item's mean training rating; items without training ratings get the global mean."""
    ids, y = _training_ratings(train_batch)
    if y.numel() == 0:
        raise ValueError("item_mean needs at least one training rating")
    y = y.to(torch.float64)
    items, inverse = torch.unique(ids, return_inverse=True)  # sorted
    sums = torch.zeros(len(items), dtype=torch.float64, device=y.device).index_add_(0, inverse, y)
    means = sums / torch.bincount(inverse, minlength=len(items)).to(torch.float64)
    q = eval_batch.query_item_ids.to(items.device)
    pos = torch.searchsorted(items, q).clamp(max=len(items) - 1)
    pred = torch.where(items[pos] == q, means[pos], y.mean())
    return pred.to(eval_batch.query_y.dtype).to(eval_batch.query_y.device)


def user_support_mean(eval_batch: TaskBatch, fallback: float | None = None) -> Tensor:
    """Predict each user's mean support rating for all of their query slots: ``[B, Q]``.

    A user with an empty support set gets ``fallback`` (default: the mean of all support ratings
    of ``eval_batch``).
    """
    m = eval_batch.support_mask.to(torch.float64)
    y = eval_batch.support_y.to(torch.float64) * m
    count = m.sum(-1)
    if fallback is None:
        fallback = float(y.sum() / count.sum()) if count.sum() > 0 else float("nan")
    mean = torch.where(count > 0, y.sum(-1) / count.clamp(min=1.0), torch.full_like(count, fallback))
    return mean.unsqueeze(-1).expand_as(eval_batch.query_y).to(eval_batch.query_y.dtype).contiguous()


def rating_rows(batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Every real (support and query) rating of ``batch`` as one row: ``(user_x [N, F_u], item_x, y [N])``.

    ``item_x`` tensors are ``[N, 1, ...]`` (one item per row), the shape ``EmbeddingRecommender``
    scores as ``N`` one-item users. Multi-valued fields are padded with 0 to a common length.
    """
    parts_u, parts_y, parts_x = [], [], []
    for x, y, mask in ((batch.support_x, batch.support_y, batch.support_mask),
                       (batch.query_x, batch.query_y, batch.query_mask)):
        parts_u.append(batch.user_x.unsqueeze(1).expand(-1, mask.shape[1], -1)[mask])
        parts_y.append(y[mask])
        parts_x.append({k: v[mask] for k, v in x.items()})
    item_x = {}
    for k in parts_x[0]:
        tensors = [p[k] for p in parts_x]
        if k != "cat":  # multi-valued: support and query may be padded to different lengths
            width = max(t.shape[-1] for t in tensors)
            tensors = [F.pad(t, (0, width - t.shape[-1])) for t in tensors]
        item_x[k] = torch.cat(tensors).unsqueeze(1)
    return torch.cat(parts_u), item_x, torch.cat(parts_y)


def train_plain(model: EmbeddingRecommender, train_batch: TaskBatch, *, epochs: int, lr: float = 1e-3,
                batch_size: int = 256, seed: int = 0, device: str | torch.device = "auto",
                progress: bool | None = None, optimizer: torch.optim.Optimizer | None = None) -> pd.DataFrame:
    """Ordinary supervised training: Adam on the MSE of every training rating, one global model.

    Every real support *and* query rating of the training users is one example (there is no
    per-user adaptation, so there is nothing to hold out). Rows are reshuffled every epoch with a
    generator seeded by ``seed``. ``model`` is moved to ``device`` and trained in place; returns a
    tidy history (``epoch, split, metric, value``: the mean training loss and seconds per epoch).
    ``optimizer`` continues a previous call's optimiser (default: a fresh Adam at ``lr``).
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    generator = seed_everything(seed)
    dev = resolve_device(device)
    model.to(dev).train()
    user_x, item_x, y = rating_rows(train_batch.to(dev))
    n = len(y)
    if n == 0:
        raise ValueError("train_plain needs at least one training rating")
    optimizer = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr)
    head, rating_min = model.config.head, model.spec.rating_min
    rows = []
    n_batches = -(-n // batch_size)
    bar = progress_bar(total=epochs * n_batches, enabled=progress, desc="plain training", unit="batch")
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            total = 0.0
            for idx in torch.randperm(n, generator=generator).to(dev).split(batch_size):
                yb = y[idx].unsqueeze(1)
                out = model(user_x[idx], {k: v[idx] for k, v in item_x.items()})
                loss = rating_loss(out, yb, torch.ones_like(yb, dtype=torch.bool), head=head, rating_min=rating_min)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                bar.update(1)
            rows += [(epoch, "train", "loss", total / n), (epoch, "train", "seconds", time.perf_counter() - t0)]
    finally:
        bar.close()
    model.eval()
    return pd.DataFrame(rows, columns=["epoch", "split", "metric", "value"])


def finetune_predict(model: EmbeddingRecommender, batch: TaskBatch, steps: int, lr: float, *,
                     path: Path = "vmap", chunk: int = 256) -> Tensor:
    """Query predictions ``[B, Q]`` of ``model`` after ``steps`` SGD steps (rate ``lr``) on each user's support.

    ``steps=0`` scores the plain model. Fine-tuning is the engine's local update (Eq. 11) with every
    parameter group local; it is functional, so ``model`` itself is never changed.
    """
    learner = MetaLearner(model, MetaConfig(local_groups=GROUPS, local_lr=lr, inner_steps=steps))
    dev = next(model.parameters()).device
    return predict(learner, batch.to(dev), path=path, chunk=chunk, steps=steps)


# -- one interface for the trained non-meta baselines ---------------------------------------------

@dataclass
class BaselineFit:
    """What :func:`fit_baseline` returns: the trained model (left at ``best_epoch``) and its record.

    ``history`` rows (``epoch, split, metric, value``, as :class:`mamo_lite.train.FitResult`):
    ``(epoch, "train", "loss" | "seconds", ...)`` and with validation ``(epoch, "val", "MAE" | "RMSE"
    | "seconds", ...)``. ``best_val`` holds the validation MAE and RMSE of ``best_epoch`` (empty
    without validation, where the last epoch is kept). ``diverged`` is None for a healthy run, else
    the event as text (``"diverged (training loss > 1e6 at epoch 3)"``); then ``diverged_epoch`` is
    that epoch, the history stops before it and the model holds the best healthy epoch
    (``best_epoch``; 0 means the initial state).
    """

    model: nn.Module
    name: str
    hyper: dict[str, Any]
    history: pd.DataFrame
    best_epoch: int
    epochs_run: int
    best_val: dict[str, float]
    seconds: float
    n_train_users: int
    n_val_users: int
    stopped_early: bool
    diverged: str | None = None
    diverged_epoch: int | None = None

    def predict(self, batch: TaskBatch) -> Tensor:
        """The model's query predictions ``[B, Q]`` for ``batch``, on ``batch.query_y``'s device."""
        dev = next(iter(self.model.state_dict().values())).device
        self.model.eval()
        return self.model.predict(batch.to(dev)).detach().to(batch.query_y.device)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_baseline(make: Callable[..., nn.Module], train: TaskBatch, val: TaskBatch | None, *, spec: FeatureSpec,
                 seed: int, max_epochs: int, patience: int | None = None, device: str | torch.device = "auto",
                 max_loss: float = DIVERGENCE_LOSS, progress: bool | None = None, name: str | None = None,
                 **hyper: Any) -> BaselineFit:
    """Train the baseline ``make(spec, **hyper)`` for up to ``max_epochs`` epochs; keep its best validation epoch.

    Seeds everything with ``seed`` *before* building the model (so initial weights are seeded too);
    the training users are shuffled every epoch by a generator seeded with ``seed``. After every
    epoch the model predicts the validation users' query ratings (never test users) and the epoch
    with the lowest pooled MAE is kept (its state restored at the end); ``patience`` stops after
    that many epochs without a lower MAE (an equal MAE with a lower unclipped RMSE counts as lower). ``val=None`` keeps the last epoch. A training loss that is
    not finite or above ``max_loss``, or non-finite validation predictions, end the run as
    diverged (:class:`BaselineFit`). ``name`` labels the result (default: the class name).
    """
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience must be a positive integer or None, got {patience!r}")
    if not (isinstance(max_loss, int | float) and math.isfinite(max_loss) and max_loss > 0):
        raise ValueError(f"max_loss must be a finite positive number, got {max_loss!r}")
    if len(train) == 0:
        raise ValueError("no training users: the training batch is empty")
    generator = seed_everything(seed)
    dev = resolve_device(device)
    model = make(spec, **hyper).to(dev)
    train = train.to(dev)
    held_out = val.to(dev) if val is not None and len(val) else None

    rows: list[tuple[int, str, str, float]] = []
    best_epoch, best_mae, best_val, best_unclipped = 0, math.inf, {}, math.inf
    best_state = _snapshot(model)
    stopped_early, diverged, epoch = False, None, 0
    start = time.perf_counter()
    bar = progress_bar(total=max_epochs, enabled=progress, desc=f"training {name or type(model).__name__}",
                       unit="epoch")
    try:
        for epoch in range(1, max_epochs + 1):
            model.train()
            t0 = time.perf_counter()
            loss = float(model.train_epoch(train, generator))
            bar.update(1)
            if not loss <= max_loss:  # also catches NaN
                diverged = f"diverged (training loss > {max_loss:.0e} at epoch {epoch})".replace("e+0", "e")
                break
            epoch_rows = [(epoch, "train", "loss", loss), (epoch, "train", "seconds", time.perf_counter() - t0)]
            improved = held_out is None
            if held_out is not None:
                model.eval()
                t1 = time.perf_counter()
                pred = model.predict(held_out).detach()
                if not bool(torch.isfinite(pred[held_out.query_mask]).all()):
                    diverged = divergence_message(epoch, "val")
                    break
                metrics = pooled_errors(pred, held_out, spec)
                epoch_rows += [(epoch, "val", m, v) for m, v in metrics.items()]
                epoch_rows.append((epoch, "val", "seconds", time.perf_counter() - t1))
                # a tie in MAE (every prediction clipped to one bound while the model learns) is broken by
                # the unclipped RMSE, as in mamo_lite.train.fit
                unclipped = pooled_errors(pred, held_out, None)["RMSE"]
                improved = metrics["MAE"] < best_mae or (metrics["MAE"] == best_mae and unclipped < best_unclipped)
                if improved:
                    best_mae, best_val, best_unclipped = metrics["MAE"], metrics, unclipped
            rows += epoch_rows  # a diverged epoch leaves no row
            if improved:
                best_epoch, best_state = epoch, _snapshot(model)
            bar.set_postfix(loss=f"{loss:.4f}", **({"val_mae": f"{best_mae:.4f}"} if held_out is not None else {}))
            if patience is not None and epoch - best_epoch >= patience:
                stopped_early = epoch < max_epochs
                break
    finally:
        bar.close()
    if diverged or best_epoch != epoch:
        model.load_state_dict(best_state)
    model.eval()
    history = pd.DataFrame(rows, columns=HISTORY_COLUMNS).astype({"epoch": "int64", "value": "float64"})
    return BaselineFit(model=model, name=name or type(model).__name__, hyper=dict(hyper), history=history,
                       best_epoch=best_epoch, epochs_run=epoch, best_val=best_val,
                       seconds=time.perf_counter() - start, n_train_users=len(train),
                       n_val_users=len(held_out) if held_out is not None else 0, stopped_early=stopped_early,
                       diverged=diverged, diverged_epoch=epoch if diverged else None)


def select_hyperparameters(make: Callable[..., nn.Module], stages: Sequence[Mapping[str, Sequence[Any]]],
                           train: TaskBatch, val: TaskBatch, *, spec: FeatureSpec, start: Mapping[str, Any],
                           seed: int, max_epochs: int, patience: int | None = None,
                           device: str | torch.device = "auto", **fixed: Any) -> tuple[dict[str, Any], pd.DataFrame]:
    """A staged grid search on *validation* users: ``(chosen values, the grid's table)``.

    Stage by stage, every combination of that stage's values is trained with :func:`fit_baseline`
    (the other hyper-parameters at ``start``, updated by the earlier stages' choices, plus
    ``fixed``), and the one with the lowest validation MAE of its best epoch is kept. One stage
    holding every parameter is the full grid; one parameter per stage is a coordinate-wise search.
    A run that diverged is never chosen (the setting is unstable even if an earlier epoch was
    healthy). ``val`` must be held-out training users: test users never enter the search.

    The table has a row per run: ``stage``, one column per searched parameter, ``val_MAE``,
    ``val_RMSE`` (of the best epoch; NaN when no epoch was healthy), ``best_epoch``, ``epochs_run``,
    ``diverged`` (None or the event) and ``seconds``; ``chosen`` marks each stage's winner.
    """
    if val is None or len(val) == 0:
        raise ValueError("select_hyperparameters needs validation users")
    current = dict(start)
    names = list(dict.fromkeys(k for stage in stages for k in stage))
    rows = []
    for number, stage in enumerate(stages, 1):
        keys = list(stage)
        best, best_mae = None, math.inf
        for values in itertools.product(*(stage[k] for k in keys)):
            hyper = {**current, **dict(zip(keys, values, strict=True))}
            run = fit_baseline(make, train, val, spec=spec, seed=seed, max_epochs=max_epochs, patience=patience,
                               device=device, **fixed, **hyper)
            mae = run.best_val.get("MAE", math.nan)
            rows.append({"stage": number, **{k: hyper.get(k) for k in names}, "val_MAE": mae,
                         "val_RMSE": run.best_val.get("RMSE", math.nan), "best_epoch": run.best_epoch,
                         "epochs_run": run.epochs_run, "diverged": run.diverged, "seconds": run.seconds,
                         "chosen": False})
            if run.diverged is None and mae < best_mae:
                best, best_mae = (len(rows) - 1, hyper), mae
        if best is None:
            raise RuntimeError(f"stage {number} ({', '.join(keys)}): every run diverged or had no healthy epoch")
        rows[best[0]]["chosen"] = True
        current = best[1]
    return current, pd.DataFrame(rows)


# -- NMF -------------------------------------------------------------------------------------------

def _user_design(spec: FeatureSpec, user_x: Tensor) -> Tensor:
    """Rows of the stacked user table used by each user: ``[..., F_u]`` (field offset + value)."""
    offsets = torch.tensor([0, *itertools.accumulate(f.vocab_size for f in spec.user_fields)][:-1],
                           device=user_x.device)
    return user_x + offsets


def _item_design(spec: FeatureSpec, item_x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(rows, weights)`` of the stacked item table used by each item, ``[..., L]`` each.

    A categorical field contributes its row with weight 1; a multi-valued field the rows of its active
    values, each with weight ``1 / count`` (their mean; padding has weight 0).
    """
    rows, weights = [], []
    offset, j = 0, 0
    for f in spec.item_fields:
        if f.kind == "categorical":
            idx = item_x["cat"][..., j:j + 1]
            rows.append(idx + offset)
            weights.append(torch.ones(idx.shape, dtype=torch.get_default_dtype(), device=idx.device))
            j += 1
        else:
            idx = item_x[f.name]
            active = (idx > 0).to(torch.get_default_dtype())
            rows.append(idx + offset)
            weights.append(active / active.sum(-1, keepdim=True).clamp(min=1.0))
        offset += f.vocab_size
    return torch.cat(rows, -1), torch.cat(weights, -1)


def _gather_rows(table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    """``Σ_l weights[..., l] · table[rows[..., l]]``: ``[..., dim]`` (a design matrix times ``table``)."""
    return (table[rows] * weights.unsqueeze(-1)).sum(-2)


def _scatter_rows(table: Tensor, rows: Tensor, weights: Tensor, values: Tensor) -> Tensor:
    """The transpose of :func:`_gather_rows`: ``out[rows[m, l]] += weights[m, l] · values[m]`` (``out`` like ``table``)."""
    contrib = (weights.unsqueeze(-1) * values.unsqueeze(-2)).reshape(-1, table.shape[-1])
    return torch.zeros_like(table).index_add_(0, rows.reshape(-1), contrib)


class NMF(nn.Module):
    """Non-negative matrix factorisation through profile fields: ``ŷ_{u,i} = p_u·q_i`` with ``p_u, q_i ≥ 0``.

    ``p_u = X_u A`` and ``q_i = X_i B``: ``X_u`` (``X_i``) is the non-negative design of the user
    (item) fields — 1 for a categorical value, ``1/count`` for each active value of a multi-valued
    field — and ``A`` = ``user_factors`` (``Σ vocab_u × dim``), ``B`` = ``item_factors`` are buffers,
    changed only by the multiplicative updates of Lee & Seung (NIPS 2000) for the observed ratings::

        A ← A ⊙ X_uᵀ (y ⊙ Q)  /  (X_uᵀ (ŷ ⊙ Q) + reg·A)       (then B likewise, with P = X_u A)

    (rows ``X`` never touches keep their value). ``fold_in_steps`` updates of each evaluated user's
    ``p_u`` alone, on their support set, precede prediction (0: profile only). See the module
    docstring for every choice.
    """

    def __init__(self, spec: FeatureSpec, *, dim: int = 10, reg: float = 0.0, fold_in_steps: int = 0,
                 eps: float = 1e-12) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not reg >= 0 or not isinstance(fold_in_steps, int) or fold_in_steps < 0:
            raise ValueError(f"need reg ≥ 0 and an integer fold_in_steps ≥ 0, got {reg!r}, {fold_in_steps!r}")
        self.spec, self.dim, self.reg, self.fold_in_steps, self.eps = spec, dim, float(reg), fold_in_steps, eps
        n_u, n_i = len(spec.user_fields), len(spec.item_fields)
        # E[ŷ] = dim · (n_u · s/2) · (n_i · s/2) at the middle of the rating scale
        mid = (spec.rating_min + spec.rating_max) / 2
        scale = 2 * math.sqrt(mid / (dim * n_u * n_i))
        self.register_buffer("user_factors", scale * torch.rand(sum(f.vocab_size for f in spec.user_fields), dim))
        self.register_buffer("item_factors", scale * torch.rand(sum(f.vocab_size for f in spec.item_fields), dim))
        self._ratings: tuple | None = None  # the training batch and its distinct designs (see _training_design)

    def user_vectors(self, user_x: Tensor) -> Tensor:
        """``p_u = X_u A``, ``[..., dim]`` (≥ 0)."""
        rows = _user_design(self.spec, user_x)
        return _gather_rows(self.user_factors, rows, torch.ones(rows.shape, dtype=self.user_factors.dtype,
                                                                device=rows.device))

    def item_vectors(self, item_x: dict[str, Tensor]) -> Tensor:
        """``q_i = X_i B``, ``[..., dim]`` (≥ 0)."""
        rows, weights = _item_design(self.spec, item_x)
        return _gather_rows(self.item_factors, rows, weights.to(self.item_factors.dtype))

    def _training_design(self, train: TaskBatch) -> tuple:
        """Every training rating as (distinct user design, distinct item design) indices, kept per batch.

        Users (items) with the same profile have the same factor, so the updates run over distinct
        designs (a few hundred user profiles and a few thousand items on MovieLens-1M).
        """
        if self._ratings is None or self._ratings[0] is not train:
            user_x, item_x, y = rating_rows(train)
            u_rows = _user_design(self.spec, user_x)
            i_rows, i_w = _item_design(self.spec, {k: v[:, 0] for k, v in item_x.items()})
            u_uniq, u_inv = torch.unique(u_rows, dim=0, return_inverse=True)
            i_uniq, i_inv = torch.unique(i_rows, dim=0, return_inverse=True)
            first = torch.full((len(i_uniq),), len(i_inv), device=i_inv.device).scatter_reduce(
                0, i_inv, torch.arange(len(i_inv), device=i_inv.device), reduce="amin")
            u_w = torch.ones(u_uniq.shape, dtype=self.user_factors.dtype, device=u_uniq.device)
            self._ratings = (train, y, u_uniq, u_w, u_inv, i_uniq, i_w[first].to(self.item_factors.dtype), i_inv)
        return self._ratings[1:]

    def _multiplicative_step(self, table: Tensor, rows: Tensor, weights: Tensor, inv: Tensor, other: Tensor,
                             y: Tensor, y_hat: Tensor) -> Tensor:
        """One Lee–Seung update of ``table`` given the other side's fixed vectors per rating ``other [N, dim]``."""
        per_design = torch.zeros(len(rows), 2 * other.shape[-1], dtype=other.dtype, device=other.device)
        per_design.index_add_(0, inv, torch.cat([y.unsqueeze(-1) * other, y_hat.unsqueeze(-1) * other], -1))
        num = _scatter_rows(table, rows, weights, per_design[:, :self.dim])
        den = _scatter_rows(table, rows, weights, per_design[:, self.dim:]) + self.reg * table
        return torch.where(den > 0, table * num / (den + self.eps), table)

    def train_epoch(self, train: TaskBatch, generator: torch.Generator | None = None) -> float:
        """One update of every user table, then of every item table, on all training ratings.

        Returns the mean squared error before the epoch's updates. Full-batch and deterministic
        (``generator`` is unused).
        """
        y, u_rows, u_w, u_inv, i_rows, i_w, i_inv = self._training_design(train)
        q = _gather_rows(self.item_factors, i_rows, i_w)[i_inv]
        p = _gather_rows(self.user_factors, u_rows, u_w)[u_inv]
        y_hat = (p * q).sum(-1)
        loss = float((y_hat - y).square().mean())
        self.user_factors = self._multiplicative_step(self.user_factors, u_rows, u_w, u_inv, q, y, y_hat)
        p = _gather_rows(self.user_factors, u_rows, u_w)[u_inv]
        self.item_factors = self._multiplicative_step(self.item_factors, i_rows, i_w, i_inv, p, y, (p * q).sum(-1))
        return loss

    def fold_in(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Each user's ``p_u`` after ``steps`` multiplicative updates on their support ratings: ``[B, dim]``."""
        steps = self.fold_in_steps if steps is None else steps
        p = self.user_vectors(batch.user_x)
        q = self.item_vectors(batch.support_x)  # [B, S, dim]
        m = batch.support_mask.to(q.dtype).unsqueeze(-1)
        num = (m * batch.support_y.unsqueeze(-1) * q).sum(1)
        for _ in range(steps):
            y_hat = (p.unsqueeze(1) * q).sum(-1, keepdim=True)
            den = (m * y_hat * q).sum(1) + self.reg * p
            p = torch.where(den > 0, p * num / (den + self.eps), p)
        return p

    @torch.no_grad()
    def predict(self, batch: TaskBatch) -> Tensor:
        """Query predictions ``[B, Q]``: ``p_u·q_i`` with ``p_u`` folded in on the support set."""
        return (self.fold_in(batch).unsqueeze(1) * self.item_vectors(batch.query_x)).sum(-1)


# -- the plain DNN behind the same interface -------------------------------------------------------

class PlainDNN(nn.Module):
    """:func:`train_plain` and :func:`finetune_predict` behind the baseline interface (a thin wrapper).

    The network is ``EmbeddingRecommender(spec, config)`` (default: chapter 2's). Each epoch is one
    call ``train_plain(..., epochs=1, seed=s, optimizer=adam)`` with ``s`` drawn from the fit's
    generator, so the shuffles are seeded, and one Adam optimiser whose moments carry over from epoch
    to epoch, as in ``train_plain(epochs=n)``. ``predict`` is :func:`finetune_predict` with ``finetune_steps`` SGD
    steps of rate ``finetune_lr`` on each user's support set (0: the DNN; > 0: DNN + fine-tuning).
    """

    def __init__(self, spec: FeatureSpec, *, lr: float = 1e-3, batch_size: int = 256, finetune_steps: int = 0,
                 finetune_lr: float = 0.01, config: RecommenderConfig | None = None) -> None:
        super().__init__()
        self.model = EmbeddingRecommender(spec, config)
        self.lr, self.batch_size = lr, batch_size
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr
        self._optimizer: torch.optim.Optimizer | None = None

    def train_epoch(self, train: TaskBatch, generator: torch.Generator) -> float:
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        dev = next(self.model.parameters()).device
        if self._optimizer is None:  # made once, after the model is on its device
            self._optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        h = train_plain(self.model, train, epochs=1, lr=self.lr, batch_size=self.batch_size, seed=seed,
                        device=dev, progress=False, optimizer=self._optimizer)
        return float(h.loc[h["metric"] == "loss", "value"].iloc[0])

    def predict(self, batch: TaskBatch) -> Tensor:
        return finetune_predict(self.model, batch, steps=self.finetune_steps, lr=self.finetune_lr)


BASELINES: dict[str, Callable[..., nn.Module]] = {"dnn": PlainDNN, "nmf": NMF}
"""The trained baselines of this module by name (RUM lives in :mod:`mamo_lite.methods.rum`)."""
