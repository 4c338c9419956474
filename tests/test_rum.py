"""RUM (Chen et al., WSDM 2018) as MAMO's Table 1 baseline: its pieces by hand, its protocol, real data."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
from helpers import tiny_batch, tiny_spec

from mamo_lite.methods import rum
from mamo_lite.methods.baselines import fit_baseline, global_mean, select_hyperparameters
from mamo_lite.metrics import aggregate

T = torch.tensor


# -- the pieces, by hand ---------------------------------------------------------------------------

def test_mf_score_by_hand():
    p, q = T([1.0, 2.0, -1.0]), T([3.0, -1.0, 0.5])
    assert float(rum.mf_score(p, q, 0.5)) == pytest.approx(3.0 - 2.0 - 0.5 + 0.5)
    # batched over users and target items
    torch.testing.assert_close(rum.mf_score(T([[1.0, 0.0]]).unsqueeze(1), T([[[2.0, 5.0], [0.0, 1.0]]]), 1.0),
                               T([[3.0, 1.0]]))


def test_merge_by_hand():
    torch.testing.assert_close(rum.merge(T([1.0, 0.0]), T([2.0, 4.0]), 0.25), T([1.5, 1.0]))
    torch.testing.assert_close(rum.merge(T([1.0, 0.0]), T([2.0, 4.0]), 0.0), T([1.0, 0.0]))


def test_item_memory_fifo_write_by_hand():
    a, b, c = T([[1.0, 0.0]]), T([[0.0, 1.0]]), T([[2.0, 2.0]])
    memory, count = torch.zeros(1, 2, 2), torch.zeros(1, dtype=torch.long)  # K = 2 slots
    memory, count = rum.item_memory_write(memory, count, a)
    torch.testing.assert_close(memory, T([[[1.0, 0.0], [0.0, 0.0]]]))
    assert count.tolist() == [1]
    memory, count = rum.item_memory_write(memory, count, b)
    torch.testing.assert_close(memory, T([[[1.0, 0.0], [0.0, 1.0]]]))
    memory, count = rum.item_memory_write(memory, count, c)  # full: a (the oldest) leaves
    torch.testing.assert_close(memory, T([[[0.0, 1.0], [2.0, 2.0]]]))
    assert count.tolist() == [2]
    same, same_count = rum.item_memory_write(memory, count, a, write=T([False]))
    assert torch.equal(same, memory) and torch.equal(same_count, count)


def test_item_memory_read_by_hand():
    memory = T([[[1.0, 0.0], [0.0, 1.0]]])
    q = T([[1.0, 0.0]])
    # one stored item: p^m is that item's vector whatever the target
    torch.testing.assert_close(rum.item_memory_read(memory, T([1]), q), T([[1.0, 0.0]]))
    # two stored items: z = softmax(q·m_k) = softmax(1, 0)
    e = math.e
    torch.testing.assert_close(rum.item_memory_read(memory, T([2]), q), T([[e / (1 + e), 1 / (1 + e)]]))
    # an empty memory reads 0, and stays differentiable (no NaN from a softmax over no slot)
    q = q.clone().requires_grad_()
    out = rum.item_memory_read(memory, T([0]), q)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(1, 2)) and torch.isfinite(q.grad).all()


def test_feature_memory_erase_add_write_by_hand():
    memory = T([[[1.0, 2.0], [3.0, 4.0]]])
    z, erase, add = T([[0.25, 0.75]]), T([[1.0, 0.5]]), T([[0.2, -0.4]])
    # m_k ← m_k ⊙ (1 − z_k e) + z_k a
    expected = T([[[1 * 0.75 + 0.05, 2 * 0.875 - 0.1], [3 * 0.25 + 0.15, 4 * 0.625 - 0.3]]])
    torch.testing.assert_close(rum.feature_memory_write(memory, z, erase, add), expected)
    # z one-hot on slot 1 with e = 1: slot 1 becomes a, slot 0 is unchanged
    out = rum.feature_memory_write(memory, T([[0.0, 1.0]]), torch.ones(1, 2), add)
    torch.testing.assert_close(out, T([[[1.0, 2.0], [0.2, -0.4]]]))


def test_feature_memory_read_by_hand():
    memory, keys, q = T([[[1.0, 2.0], [3.0, 4.0]]]), T([[1.0, 0.0], [0.0, 1.0]]), T([[2.0, 0.0]])
    z = torch.softmax(T([2.0, 0.0]), 0)
    torch.testing.assert_close(rum.feature_memory_read(memory, keys, q), (z[0] * T([1.0, 2.0]) + z[1] * T([3.0, 4.0]))[None])


def test_the_merged_user_vector_with_alpha_by_hand():
    """One support item stored (item-level): ŷ = (p* + α·q_s)·q + μ for every query item."""
    spec = tiny_spec()
    batch = tiny_batch(spec, n_users=1, n_support=1, n_query=2, seed=7)
    torch.manual_seed(0)
    model = rum.RUM(spec, variant="item", dim=3, alpha=0.3).eval()
    p_star = model.user_vector(batch.user_x)[0]
    q_s = model.item_vector(batch.support_x)[0, 0]
    q = model.item_vector(batch.query_x)[0]
    expected = q @ (p_star + 0.3 * q_s) + model.mu
    torch.testing.assert_close(model.predict(batch)[0], expected.detach())


# -- the protocol ---------------------------------------------------------------------------------

def _pair(seed: int = 0, **kw):
    """An item-level and a feature-level RUM sharing every common tensor (towers, field tables, μ)."""
    spec = tiny_spec()
    torch.manual_seed(seed)
    item = rum.RUM(spec, variant="item", dim=4, slots=3, **kw)
    feature = rum.RUM(spec, variant="feature", dim=4, slots=3, **kw)
    feature.load_state_dict(item.state_dict(), strict=False)
    return item.eval(), feature.eval()


def test_alpha_zero_is_the_memoryless_profile_model_for_both_variants():
    batch = tiny_batch(tiny_spec(), n_users=4, n_support=5, n_query=3, seed=1, masks="ragged")
    item, feature = _pair(alpha=0.0)
    expected = rum.mf_score(item.user_vector(batch.user_x).unsqueeze(1), item.item_vector(batch.query_x), item.mu)
    torch.testing.assert_close(item.predict(batch), expected.detach())
    torch.testing.assert_close(feature.predict(batch), expected.detach())
    item, feature = _pair(alpha=0.5)
    assert not torch.allclose(item.predict(batch), feature.predict(batch))


@pytest.mark.parametrize("variant", rum.VARIANTS)
def test_predictions_are_per_user_and_never_see_query_ratings(variant):
    batch = tiny_batch(tiny_spec(), n_users=4, n_support=5, n_query=3, seed=2, masks="ragged")
    torch.manual_seed(0)
    model = rum.RUM(tiny_spec(), variant=variant, dim=4, slots=3, alpha=0.7, rating_aware=True).eval()
    pred = model.predict(batch)
    # the batch equals a per-user loop (padded support slots are never written)
    for i in range(len(batch)):
        torch.testing.assert_close(model.predict(batch.select([i]))[0], pred[i])
    # query ratings are never read; support ratings are (rating-aware writes)
    torch.testing.assert_close(model.predict(batch.replace(query_y=6 - batch.query_y)), pred)
    assert not torch.allclose(model.predict(batch.replace(support_y=6 - batch.support_y)), pred)
    # the faithful, rating-blind memory ignores how support items were rated
    torch.manual_seed(0)
    blind = rum.RUM(tiny_spec(), variant=variant, dim=4, slots=3, alpha=0.7).eval()
    torch.testing.assert_close(blind.predict(batch.replace(support_y=6 - batch.support_y)), blind.predict(batch))


@pytest.mark.parametrize("variant", rum.VARIANTS)
def test_training_position_t_reads_only_earlier_positions(variant):
    batch = tiny_batch(tiny_spec(), n_users=2, n_support=4, n_query=2, seed=3)
    torch.manual_seed(0)
    model = rum.RUM(tiny_spec(), variant=variant, dim=4, slots=20, alpha=0.7, rating_aware=True)
    base = model.sequence_predictions(batch)
    changed = batch.support_y.clone()
    changed[:, 2] = 6 - changed[:, 2]
    moved = model.sequence_predictions(batch.replace(support_y=changed))
    torch.testing.assert_close(moved[:, :3], base[:, :3])  # positions 0-2 (2 itself included) do not see it
    assert not torch.allclose(moved[:, 3:], base[:, 3:])  # later positions do
    # evaluation predicts the query from the memory of the whole support set: the last training positions
    # with nothing written between query predictions
    torch.testing.assert_close(model.eval().predict(batch)[:, 0], base[:, 4].detach())


def test_gradients_reach_the_write_weights():
    batch = tiny_batch(tiny_spec(), n_users=3, n_support=4, n_query=2, seed=5)
    torch.manual_seed(0)
    model = rum.RUM(tiny_spec(), variant="feature", dim=4, slots=3, alpha=0.5)
    (model.sequence_predictions(batch) - torch.cat([batch.support_y, batch.query_y], 1)).square().mean().backward()
    for name in ("erase.weight", "add.weight", "feature_keys", "user_tower.weight", "item_tower.weight", "mu"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_rum_learns_on_tiny_data_and_divergence_is_an_event():
    spec = tiny_spec()
    batch = tiny_batch(spec, n_users=24, n_support=6, n_query=3, seed=6)
    fit = fit_baseline(rum.RUM, batch, batch, spec=spec, seed=0, max_epochs=15, device="cpu", variant="feature",
                       dim=4, slots=4, lr=0.05, users_per_batch=8)
    loss = fit.history.loc[fit.history["metric"] == "loss", "value"].to_numpy()
    assert fit.diverged is None and loss[-1] < loss[0]
    blown = fit_baseline(rum.RUM, batch, batch, spec=spec, seed=0, max_epochs=5, device="cpu", variant="item",
                         dim=4, slots=4, lr=1e4, users_per_batch=8)
    assert blown.diverged is not None and blown.diverged.startswith("diverged (training loss > 1e6 at epoch")
    assert torch.isfinite(blown.predict(batch)).all()  # the last healthy state (here the initial one) is kept


def test_the_grid_is_mamo_appendix_a22():
    assert rum.RUM_GRID["lr"] == (1.0, 0.1, 0.01, 0.001, 0.0001)
    assert rum.RUM_GRID["alpha"] == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert rum.RUM_GRID["dim"] == (10, 20, 30, 40, 50)
    assert rum.RUM_GRID["reg"] == (0.1, 0.01, 0.001, 0.0001)
    assert math.prod(len(v) for v in rum.RUM_GRID.values()) == 1100
    assert [set(s) for s in rum.RUM_SEARCH] == [{"dim", "reg"}, {"lr"}, {"alpha"}]
    assert rum.DEFAULTS["alpha"] == 0.2 and set(rum.DEFAULTS) == set(rum.RUM_GRID)


def test_rum_search_selects_on_validation_users():
    spec = tiny_spec()
    train = tiny_batch(spec, n_users=16, n_support=5, n_query=3, seed=8)
    val = tiny_batch(spec, n_users=6, n_support=5, n_query=3, seed=9)
    stages = ({"lr": (1e4, 0.05)}, {"alpha": (0.0, 0.5)})
    chosen, table = select_hyperparameters(rum.RUM, stages, train, val, spec=spec, start=rum.DEFAULTS | {"dim": 4},
                                           seed=0, max_epochs=2, device="cpu", variant="item", slots=4)
    assert chosen["lr"] == 0.05 and chosen["dim"] == 4
    assert table.loc[table["lr"] == 1e4, "diverged"].notna().all()
    stage2 = table[table["stage"] == 2]
    assert chosen["alpha"] == stage2.loc[stage2["val_MAE"].idxmin(), "alpha"]


# -- real data ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def movielens():
    if not os.environ.get("MAMO_LITE_DATA"):
        pytest.skip("real data: set MAMO_LITE_DATA (e.g. ../shared/data)")
    from mamo_lite.data import load
    from mamo_lite.train import subset_users

    data = load("movielens-1m", download=False)
    return data.spec, subset_users(data.tasks("train"), 800, seed=0), data.tasks("val"), data.tasks("test")


@pytest.mark.parametrize("variant", rum.VARIANTS)
def test_rum_learns_on_movielens(movielens, one_thread, variant):
    """RUM at its search start (lr 0.1 from a validation-only probe; α 0.2, dim 20, reg 1e-4) on 800 training
    users beats the global mean on the test users. Measured (1 thread): ~1.5 s per epoch, < 30 s in all."""
    spec, train, val, test = movielens
    start = time.perf_counter()
    fit = fit_baseline(rum.RUM, train, val, spec=spec, seed=0, max_epochs=12, patience=3, device="cpu",
                       variant=variant, **rum.DEFAULTS)
    seconds = time.perf_counter() - start
    assert fit.diverged is None
    pred = fit.predict(test).clamp(spec.rating_min, spec.rating_max)
    ours = aggregate("MAE", pred, test.query_y, test.query_mask, average="rating").value
    constant = aggregate("MAE", global_mean(train, test), test.query_y, test.query_mask, average="rating").value
    print(f"{variant}-level RUM: best epoch {fit.best_epoch}/{fit.epochs_run}, val MAE {fit.best_val['MAE']:.4f}, "
          f"test MAE {ours:.4f} vs global mean {constant:.4f}, {seconds:.1f} s")
    assert ours < constant
