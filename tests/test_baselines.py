"""Non-meta baselines: the constant predictors checked by hand, plain training and fine-tuning."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest
import torch
from helpers import tiny_batch, tiny_spec
from torch import nn
from torch.func import functional_call

from mamo_lite.data.tasks import FeatureSpec, Field, TaskBatch
from mamo_lite.methods.baselines import (
    NMF,
    PlainDNN,
    finetune_predict,
    fit_baseline,
    global_mean,
    global_median,
    item_mean,
    rating_rows,
    select_hyperparameters,
    train_plain,
    user_support_mean,
)
from mamo_lite.metrics import aggregate
from mamo_lite.models import EmbeddingRecommender, RecommenderConfig, rating_loss

T = torch.tensor


def _train_batch():
    """Two training users; user 1's second support slot is padding (its rating 1 must not count).

    Real ratings: user 0 items 10→4, 11→2 (support), 12→5 (query); user 1 item 10→2 (support),
    11→3 (query). Global mean 16/5 = 3.2; item means 10: 3, 11: 2.5, 12: 5; item 13 is unseen.
    """
    b = tiny_batch(tiny_spec(), n_users=2, n_support=2, n_query=1, seed=0)
    return b.replace(support_item_ids=T([[10, 11], [10, 13]]), support_y=T([[4.0, 2.0], [2.0, 1.0]]),
                     support_mask=T([[True, True], [True, False]]), query_item_ids=T([[12], [11]]),
                     query_y=T([[5.0], [3.0]]), query_mask=T([[True], [True]]))


def _eval_batch():
    """Three evaluated users with 5 query slots each; user 2 has no support rating at all."""
    b = tiny_batch(tiny_spec(), n_users=3, n_support=2, n_query=5, seed=1)
    return b.replace(support_y=T([[5.0, 4.0], [1.0, 5.0], [2.0, 2.0]]),
                     support_mask=T([[True, True], [True, False], [False, False]]),
                     query_item_ids=T([[10, 11, 12, 13, 99]] * 3))


def test_global_mean_by_hand():
    pred = global_mean(_train_batch(), _eval_batch())
    assert pred.shape == (3, 5)
    torch.testing.assert_close(pred, torch.full((3, 5), 3.2))


def test_item_mean_by_hand_with_global_fallback():
    pred = item_mean(_train_batch(), _eval_batch())
    expected = T([3.0, 2.5, 5.0, 3.2, 3.2])  # items 13 (only padding) and 99 are unseen: global mean
    torch.testing.assert_close(pred, expected.expand(3, 5))


def test_user_support_mean_by_hand():
    pred = user_support_mean(_eval_batch())
    # user 2 has no support: fallback = mean of all real support ratings (5 + 4 + 1) / 3
    torch.testing.assert_close(pred, T([[4.5] * 5, [1.0] * 5, [10 / 3] * 5]))
    torch.testing.assert_close(user_support_mean(_eval_batch(), fallback=3.0)[2], torch.full((5,), 3.0))


def test_rating_rows_flatten_every_real_rating():
    b = _train_batch()
    user_x, item_x, y = rating_rows(b)
    assert len(y) == 5 and sorted(y.tolist()) == [2.0, 2.0, 3.0, 4.0, 5.0]
    assert user_x.shape == (5, b.user_x.shape[1])
    assert item_x["cat"].shape[:2] == (5, 1) and item_x["genre"].shape[:2] == (5, 1)
    # row order: support ratings (users in order), then query ratings
    assert torch.equal(user_x[0], b.user_x[0]) and torch.equal(user_x[2], b.user_x[1])


def _model(seed: int = 0) -> EmbeddingRecommender:
    torch.manual_seed(seed)
    return EmbeddingRecommender(tiny_spec(), RecommenderConfig(embed_dim=4, tower_layers=1, decision_hidden=(4,)))


def test_train_plain_learns_and_is_reproducible():
    batch = tiny_batch(tiny_spec(), n_users=16, n_support=6, n_query=3, seed=3, masks="ragged")
    histories, states = [], []
    for _ in range(2):
        model = _model()
        histories.append(train_plain(model, batch, epochs=4, lr=0.05, batch_size=16, seed=0, device="cpu"))
        states.append(model.state_dict())
    h = histories[0]
    assert list(h.columns) == ["epoch", "split", "metric", "value"]
    loss = h[h["metric"] == "loss"]["value"].to_numpy()
    assert len(loss) == 4 and loss[-1] < loss[0]
    timing = h["metric"] == "seconds"
    pd.testing.assert_frame_equal(h[~timing], histories[1][~timing])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    with pytest.raises(ValueError, match="epochs"):
        train_plain(_model(), batch, epochs=0, lr=0.1, batch_size=4, seed=0, device="cpu")


def test_finetune_predict_is_sgd_on_the_support_set():
    model = _model()
    batch = tiny_batch(tiny_spec(), n_users=3, n_support=4, n_query=3, seed=5, masks="ragged")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    plain = finetune_predict(model, batch, steps=0, lr=0.1)
    torch.testing.assert_close(plain, model(batch.user_x, batch.query_x).detach())

    tuned = finetune_predict(model, batch, steps=1, lr=0.1)
    # by hand for user 1: one SGD step on every parameter with the support MSE
    task = batch.task(1)
    params = dict(model.named_parameters())
    loss = rating_loss(model(task["user_x"], task["support_x"]), task["support_y"], task["support_mask"],
                       head="regression", rating_min=1.0)
    grads = torch.autograd.grad(loss, list(params.values()))
    fast = {n: p - 0.1 * g for (n, p), g in zip(params.items(), grads, strict=True)}
    expected = functional_call(model, fast, (task["user_x"], task["query_x"])).detach()
    torch.testing.assert_close(tuned[1], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(tuned, plain)
    # the loop path agrees, and the model itself never changed
    torch.testing.assert_close(finetune_predict(model, batch, steps=1, lr=0.1, path="loop"), tuned)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- the global median ---------------------------------------------------------------------------

def test_global_median_by_hand():
    # real training ratings 4, 2, 5 (user 0) and 2, 3 (user 1); the padded 1 must not count: median 3
    pred = global_median(_train_batch(), _eval_batch())
    torch.testing.assert_close(pred, torch.full((3, 5), 3.0))
    # even count (4, 2, 5, 2): every value in [2, 4] minimises MAE; the lower middle value is taken
    b = _train_batch().replace(query_mask=T([[True], [False]]))
    assert float(global_median(b, _eval_batch())[0, 0]) == 2.0
    ys = T([4.0, 2.0, 5.0, 2.0])
    assert float((ys - 2.0).abs().sum()) == float((ys - 4.0).abs().sum()) < float((ys - 3.2).abs().sum()) + 1e-6
    with pytest.raises(ValueError, match="at least one"):
        global_median(b.replace(support_mask=torch.zeros_like(b.support_mask),
                                query_mask=torch.zeros_like(b.query_mask)), _eval_batch())


# -- the interface: best epoch, patience, divergence ----------------------------------------------

class Scripted(nn.Module):
    """A baseline whose training losses and validation errors follow a script (one entry per epoch).

    Its prediction is ``query_y + offset[epoch]``, so the validation MAE of epoch ``k`` is ``offsets[k-1]``;
    ``epoch`` is a buffer, so restoring the best state shows up in it.
    """

    def __init__(self, spec, *, losses, offsets):
        super().__init__()
        self.losses, self.offsets = losses, offsets
        self.register_buffer("epoch", torch.tensor(0))

    def train_epoch(self, train, generator):
        self.epoch += 1
        return self.losses[int(self.epoch) - 1]

    def predict(self, batch):
        return batch.query_y + self.offsets[int(self.epoch) - 1] if int(self.epoch) else batch.query_y + 9.0


def _wide_batch(n_users=4):
    """Ratings 1-5 on a 0-20 scale, so offsets up to 15 are never clipped."""
    return tiny_batch(tiny_spec(0.0, 20.0), n_users=n_users, n_support=2, n_query=3, seed=2).replace(
        query_y=torch.randint(1, 6, (n_users, 3), generator=torch.Generator().manual_seed(0)).float())


def test_fit_baseline_breaks_mae_ties_by_the_unclipped_rmse():
    """While every prediction is clipped to the scale's lower bound (offsets below -20 on 0-20) the MAE cannot
    move; a model whose raw predictions approach the scale is learning and patience must not stop it."""
    batch = _wide_batch()
    learning = fit_baseline(Scripted, batch, batch, spec=tiny_spec(0.0, 20.0), seed=0, max_epochs=4, patience=1,
                            device="cpu", losses=[1.0] * 4, offsets=[-40.0, -35.0, -30.0, -25.0])
    assert learning.best_epoch == 4 and learning.epochs_run == 4 and not learning.stopped_early
    mae = learning.history.query("split == 'val' and metric == 'MAE'")["value"]
    assert mae.nunique() == 1
    stuck = fit_baseline(Scripted, batch, batch, spec=tiny_spec(0.0, 20.0), seed=0, max_epochs=4, patience=1,
                         device="cpu", losses=[1.0] * 4, offsets=[-40.0] * 4)
    assert stuck.best_epoch == 1 and stuck.epochs_run == 2 and stuck.stopped_early


def test_fit_baseline_keeps_the_best_validation_epoch_and_stops_on_patience():
    batch = _wide_batch()
    fit = fit_baseline(Scripted, batch, batch, spec=tiny_spec(0.0, 20.0), seed=0, max_epochs=10, patience=2,
                       device="cpu", losses=[3.0, 2.0, 1.5, 1.2, 1.0, 0.9], offsets=[1.0, 0.5, 0.7, 0.25, 0.3, 0.4])
    assert fit.best_epoch == 4 and fit.epochs_run == 6 and fit.stopped_early and fit.diverged is None
    assert int(fit.model.epoch) == 4  # the state of epoch 4 was restored
    assert fit.best_val["MAE"] == pytest.approx(0.25)
    h = fit.history
    assert list(h.columns) == ["epoch", "split", "metric", "value"]
    val = h[(h["split"] == "val") & (h["metric"] == "MAE")]["value"].to_numpy()
    assert val.tolist() == pytest.approx([1.0, 0.5, 0.7, 0.25, 0.3, 0.4])
    assert h[h["metric"] == "loss"]["value"].tolist() == [3.0, 2.0, 1.5, 1.2, 1.0, 0.9]
    torch.testing.assert_close(fit.predict(batch), batch.query_y + 0.25)
    # without validation: the last epoch is kept
    last = fit_baseline(Scripted, batch, None, spec=tiny_spec(0.0, 20.0), seed=0, max_epochs=3, device="cpu",
                        losses=[3.0, 2.0, 1.0], offsets=[0.1, 0.9, 0.5])
    assert last.best_epoch == 3 and int(last.model.epoch) == 3 and last.best_val == {}


@pytest.mark.parametrize("losses, offsets, event", [
    ([1.0, 0.8, float("nan")], [0.5, 0.4, 0.1], "diverged (training loss > 1e6 at epoch 3)"),
    ([1.0, 0.8, 2e6], [0.5, 0.4, 0.1], "diverged (training loss > 1e6 at epoch 3)"),
    ([1.0, 0.8, 0.7], [0.5, 0.4, float("inf")], "diverged (validation predictions not finite at epoch 3)"),
])
def test_fit_baseline_reports_divergence_as_an_event(losses, offsets, event):
    batch = _wide_batch()
    fit = fit_baseline(Scripted, batch, batch, spec=tiny_spec(0.0, 20.0), seed=0, max_epochs=10, device="cpu",
                       losses=losses, offsets=offsets)
    assert fit.diverged == event and fit.diverged_epoch == 3
    assert fit.best_epoch == 2 and int(fit.model.epoch) == 2  # the last healthy epoch is kept
    assert fit.history["epoch"].max() == 2  # nothing of the diverged epoch is recorded as a number


def test_select_hyperparameters_runs_stages_on_validation_users():
    batch = _wide_batch()
    # offsets[0] is the validation MAE of the single epoch: grid over "a" then "b"
    def make(spec, *, a, b):
        return Scripted(spec, losses=[float("nan") if b == 99 else 1.0], offsets=[abs(a - 2) + abs(b - 1) * 0.1])
    chosen, table = select_hyperparameters(make, [{"a": [0, 2, 3]}, {"b": [0, 1, 99]}], batch, batch,
                                           spec=tiny_spec(0.0, 20.0), start={"a": 0, "b": 0}, seed=0,
                                           max_epochs=1, device="cpu")
    assert chosen == {"a": 2, "b": 1}
    assert list(table["stage"]) == [1, 1, 1, 2, 2, 2] and table["chosen"].sum() == 2
    assert table.loc[table["b"] == 99, "diverged"].item() == "diverged (training loss > 1e6 at epoch 1)"
    assert table.loc[table["b"] == 99, "val_MAE"].isna().item()
    torch.testing.assert_close(torch.tensor(table["val_MAE"].iloc[:3].to_numpy()),
                               torch.tensor([2.1, 0.1, 1.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="validation"):
        select_hyperparameters(make, [{"a": [0]}], batch, None, spec=tiny_spec(), start={"b": 0}, seed=0,
                               max_epochs=1)


def test_plain_dnn_fits_the_interface_and_is_reproducible():
    batch = tiny_batch(tiny_spec(), n_users=16, n_support=6, n_query=3, seed=3, masks="ragged")
    cfg = RecommenderConfig(embed_dim=4, tower_layers=1, decision_hidden=(4,))
    fits = [fit_baseline(PlainDNN, batch, batch, spec=tiny_spec(), seed=0, max_epochs=3, device="cpu", lr=0.05,
                         batch_size=16, config=cfg) for _ in range(2)]
    timing = fits[0].history["metric"] == "seconds"
    pd.testing.assert_frame_equal(fits[0].history[~timing], fits[1].history[~timing])
    torch.testing.assert_close(fits[0].predict(batch), fits[1].predict(batch))
    # predict is finetune_predict of the wrapped network
    torch.testing.assert_close(fits[0].predict(batch), finetune_predict(fits[0].model.model, batch, steps=0, lr=0.01))


# -- NMF -----------------------------------------------------------------------------------------

def _id_batch(R: torch.Tensor, n_support: int) -> tuple[FeatureSpec, TaskBatch]:
    """Users and items identified by one id field each: NMF through these fields is classic NMF of ``R``."""
    n_users, n_items = R.shape
    spec = FeatureSpec(user_fields=(Field("uid", "categorical", n_users + 1),),
                       item_fields=(Field("iid", "categorical", n_items + 1),), rating_min=0.0, rating_max=20.0)
    items = torch.arange(1, n_items + 1).expand(n_users, -1)

    def part(cols):
        ids = items[:, cols]
        return {"cat": ids.unsqueeze(-1)}, R[:, cols], torch.ones(ids.shape, dtype=torch.bool), ids

    sx, sy, sm, si = part(slice(0, n_support))
    qx, qy, qm, qi = part(slice(n_support, n_items))
    return spec, TaskBatch(user_ids=torch.arange(n_users), user_x=torch.arange(1, n_users + 1).unsqueeze(-1),
                           support_x=sx, support_y=sy, support_mask=sm, support_item_ids=si, query_x=qx,
                           query_y=qy, query_mask=qm, query_item_ids=qi,
                           query_scenario=torch.zeros(qy.shape, dtype=torch.long))


def test_nmf_reconstructs_an_exact_low_rank_non_negative_matrix():
    W = T([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    H = T([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0], [1.0, 1.0], [3.0, 2.0]])
    R = W @ H.T  # rank 2, non-negative, two exact zeros
    spec, batch = _id_batch(R, n_support=3)
    fit = fit_baseline(NMF, batch, None, spec=spec, seed=0, max_epochs=2000, device="cpu", dim=2)
    m = fit.model
    assert (m.user_factors >= 0).all() and (m.item_factors >= 0).all()
    R_hat = m.user_vectors(batch.user_x) @ m.item_vectors({"cat": torch.arange(1, 6).unsqueeze(-1)}).T
    torch.testing.assert_close(R_hat, R, atol=1e-2, rtol=0)
    # Lee & Seung: with reg = 0 the squared error never increases from one epoch to the next
    loss = torch.tensor(fit.history.loc[fit.history["metric"] == "loss", "value"].to_numpy())
    assert (loss[1:] <= loss[:-1] * (1 + 1e-6)).all() and loss[-1] < 1e-4
    torch.testing.assert_close(fit.predict(batch), R[:, 3:], atol=1e-2, rtol=0)


def test_nmf_factors_stay_non_negative_on_profiles_and_fold_in_is_one_multiplicative_step():
    spec = tiny_spec()
    batch = tiny_batch(spec, n_users=12, n_support=5, n_query=3, seed=4, masks="ragged")
    fit = fit_baseline(NMF, batch, batch, spec=spec, seed=1, max_epochs=30, device="cpu", dim=3, reg=0.1,
                       fold_in_steps=1)
    m = fit.model
    assert (m.user_factors >= 0).all() and (m.item_factors >= 0).all()
    assert (m.item_vectors(batch.query_x) >= 0).all() and (m.user_vectors(batch.user_x) >= 0).all()
    # fold-in by hand for user 1: p ← p ⊙ Σ_j y_j q_j / (Σ_j (p·q_j) q_j + reg·p) over real support ratings
    p = m.user_vectors(batch.user_x[1])
    keep = batch.support_mask[1]
    q = m.item_vectors({k: v[1][keep] for k, v in batch.support_x.items()})
    y = batch.support_y[1][keep]
    p1 = p * (y[:, None] * q).sum(0) / (((q @ p)[:, None] * q).sum(0) + 0.1 * p)
    torch.testing.assert_close(m.fold_in(batch)[1], p1)
    torch.testing.assert_close(fit.predict(batch)[1], m.item_vectors({k: v[1] for k, v in batch.query_x.items()}) @ p1)
    torch.testing.assert_close(m.fold_in(batch, steps=0), m.user_vectors(batch.user_x))


# -- real data ------------------------------------------------------------------------------------

real_data = pytest.mark.skipif(not os.environ.get("MAMO_LITE_DATA"),
                               reason="real data: set MAMO_LITE_DATA (e.g. ../shared/data)")


@pytest.fixture(scope="module")
def movielens():
    from mamo_lite.data import load

    data = load("movielens-1m", download=False)
    return data.spec, data.tasks("train"), data.tasks("val"), data.tasks("test")


def _test_mae(pred: torch.Tensor, batch: TaskBatch, spec: FeatureSpec) -> float:
    return aggregate("MAE", pred.clamp(spec.rating_min, spec.rating_max), batch.query_y, batch.query_mask,
                     average="rating").value


@real_data
def test_nmf_learns_on_movielens(movielens, one_thread):
    """NMF (dim 10, no regularisation, 10 fold-in steps: settings chosen on validation users) beats the
    global mean on the test users. Measured (1 thread): 44 epochs, ~3 s; test MAE 0.803 vs 0.910."""
    spec, train, val, test = movielens
    start = time.perf_counter()
    fit = fit_baseline(NMF, train, val, spec=spec, seed=0, max_epochs=150, patience=10, device="cpu", dim=10,
                       fold_in_steps=10)
    seconds = time.perf_counter() - start
    assert fit.diverged is None and fit.best_epoch > 5
    assert (fit.model.user_factors >= 0).all() and (fit.model.item_factors >= 0).all()
    ours, constant = _test_mae(fit.predict(test), test, spec), _test_mae(global_mean(train, test), test, spec)
    print(f"NMF: best epoch {fit.best_epoch}/{fit.epochs_run}, val MAE {fit.best_val['MAE']:.4f}, "
          f"test MAE {ours:.4f} vs global mean {constant:.4f}, {seconds:.1f} s")
    assert ours < constant - 0.05


def test_plain_dnn_keeps_one_adam_across_epochs():
    """The wrapper's epochs continue one optimiser, as train_plain(epochs=n) does (no restart of Adam)."""
    spec = tiny_spec()
    train = tiny_batch(spec, n_users=6, n_support=4, n_query=3, seed=0)
    torch.manual_seed(0)
    dnn = PlainDNN(spec, batch_size=8, config=RecommenderConfig(embed_dim=4, field_dim=2, tower_layers=1,
                                                                decision_hidden=(4,)))
    g = torch.Generator().manual_seed(0)
    dnn.train_epoch(train, g)
    dnn.train_epoch(train, g)
    steps = {int(st["step"]) for st in dnn._optimizer.state.values()}
    assert steps == {2 * -(-6 * 7 // 8)}  # 42 ratings in batches of 8: 6 steps per epoch, two epochs
