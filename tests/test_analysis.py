"""Chapter-3 diagnostics agree with the engine they are built on."""

import torch
from helpers import tiny_batch, tiny_learner, tiny_spec

from mamo_lite.analysis import adaptation_curve, gradient_agreement, per_user_meta_gradients
from mamo_lite.meta import meta_gradient, predict


def test_per_user_gradients_average_to_the_meta_gradient():
    learner = tiny_learner("maml", seed=0)
    batch = tiny_batch(tiny_spec(), n_users=5, n_support=4, n_query=3, seed=1)
    per_user = per_user_meta_gradients(learner, batch, chunk=2)  # chunking must not matter
    grads, _, _ = meta_gradient(learner, batch)  # reduction "mean"
    flat = torch.cat([grads[n].reshape(-1) for n in learner.global_names()])
    torch.testing.assert_close(per_user.mean(0), flat, rtol=1e-5, atol=1e-6)


def test_gradient_agreement_by_hand():
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 1.0]])  # mean (1/3, 1/3)
    expected = torch.tensor([1 / 2**0.5, 1 / 2**0.5, 0.0])
    torch.testing.assert_close(gradient_agreement(g), expected)


def test_adaptation_curve_step0_is_the_unadapted_model():
    learner = tiny_learner("maml", seed=0)
    batch = tiny_batch(tiny_spec(), n_users=4, n_support=4, n_query=3, seed=2)
    curve = adaptation_curve(learner, batch, steps=[0, 2])
    pred0 = predict(learner, batch, steps=0).clamp(1, 5)
    mae0 = (pred0 - batch.query_y).abs().mul(batch.query_mask).sum(1) / batch.query_mask.sum(1)
    got = torch.tensor(curve[curve.step == 0].MAE.to_numpy(copy=True), dtype=mae0.dtype)
    torch.testing.assert_close(got, mae0)
    assert set(curve.columns) == {"user", "step", "MAE", "user_cold"} and len(curve) == 8
