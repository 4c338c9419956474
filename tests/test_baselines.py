"""Non-meta baselines: the constant predictors checked by hand, plain training and fine-tuning."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers import tiny_batch, tiny_spec
from torch.func import functional_call

from mamo_lite.methods.baselines import (
    finetune_predict,
    global_mean,
    item_mean,
    rating_rows,
    train_plain,
    user_support_mean,
)
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
