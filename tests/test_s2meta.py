"""s²Meta (Du et al., KDD 2019) on the engine: the checks of notes/baselines.md §4 and a real-data run.

Unit tests use tiny networks (``tests/helpers.py``); the last test trains on MovieLens-1M (skipped
without ``MAMO_LITE_DATA``).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import needs_movielens_1m, overall_mae, tiny_batch, tiny_learner, tiny_spec

from mamo_lite.checkpoint import load_checkpoint, save_checkpoint
from mamo_lite.meta import MetaConfig, MetaLearner, meta_gradient, meta_step, predict
from mamo_lite.methods import METHODS, build_learner, method_configs
from mamo_lite.methods.s2meta import S2MetaConfig, S2MetaLearner, preprocess
from mamo_lite.train import evaluate_learner, fit, subset_users

SPEC = tiny_spec()


def _data(n_train: int = 24, n_val: int = 8) -> dict:
    return {"train": tiny_batch(SPEC, n_users=n_train, n_support=5, n_query=3, seed=1, masks="ragged"),
            "val": tiny_batch(SPEC, n_users=n_val, n_support=5, n_query=3, seed=2)}


# -- registry and configuration -------------------------------------------------------------------

def test_registered_with_the_table1_preset():
    assert "s2meta" in METHODS
    c = method_configs("s2meta")
    m, model = c["meta"], c["model"]
    assert isinstance(m, S2MetaConfig) and c["mamo"] is None
    assert (m.inner_steps, m.min_steps, m.global_lr, m.update_lr, m.stop_lr, m.weight_decay, m.clip_value,
            m.grad_clamp, m.controller_hidden, m.step_penalty, m.first_order) == (
        20, 4, 1e-4, 1e-4, 5e-5, 1e-5, 0.25, 1.0, 16, 0.0, True)
    assert (model.embed_dim, model.decision_hidden, model.preference, model.activation) == (64, (64, 32, 16),
                                                                                            "none", "relu")
    learner = build_learner("s2meta", SPEC)
    local = learner.local_names()
    assert len(local) == 8 and sum(learner.model.get_parameter(n).numel() for n in local) == 10_881
    assert all(learner.model.get_parameter(n).abs().sum() == 0 for n in local if n.endswith("bias"))
    assert learner.stop_controller.lstm.input_size == 9 and learner.stop_controller.lstm.hidden_size == 18
    # the controllers are meta-learned; the recommender sees only its own tensors
    names = learner.global_names()
    assert any(n.startswith("update_controllers.") for n in names) and any(n.startswith("stop_controller.")
                                                                           for n in names)
    groups = learner.configure_optimizer().param_groups
    assert [g["lr"] for g in groups] == [1e-4, 1e-4, 5e-5] and all(g["weight_decay"] == 1e-5 for g in groups)
    # the config round-trips through its dictionary as its own class
    assert MetaConfig.from_dict(m.to_dict()) == m
    with pytest.raises(ValueError, match="first order"):
        S2MetaConfig(first_order=False)
    with pytest.raises(ValueError, match="min_steps"):
        S2MetaConfig(min_steps=-1)


# -- (1) constant controllers = first-order MAML --------------------------------------------------

def test_constant_controllers_are_first_order_maml(float64):
    K, alpha = 3, 0.05
    s2 = tiny_learner("s2meta", update_rule="sgd", stop_rule="never", eval_stop_rule="never", grad_clamp=None,
                      inner_steps=K, local_lr=alpha)
    maml = MetaLearner(s2.model, MetaConfig(local_groups=("decision",), local_lr=alpha, inner_steps=K,
                                            first_order=True))
    batch = tiny_batch(SPEC, n_users=4, masks="ragged", seed=3)
    g_s2, l_s2, aux = meta_gradient(s2, batch, path="loop", with_aux=True)
    g_maml, l_maml, _ = meta_gradient(maml, batch, path="loop")
    torch.testing.assert_close(l_s2, l_maml, rtol=1e-12, atol=1e-12)
    assert torch.equal(aux["steps"], torch.full((4,), float(K)))
    for n, g in g_maml.items():
        torch.testing.assert_close(g_s2[n], g, rtol=1e-10, atol=1e-12)
    assert all(g.abs().max() > 0 for g in g_maml.values())  # not a comparison of zeros
    assert all(g_s2[n].abs().max() == 0 for n in g_s2 if "controller" in n)  # controllers unused
    torch.testing.assert_close(predict(s2, batch), predict(maml, batch), rtol=1e-12, atol=1e-12)


# -- (2) the masked vmap path equals the per-user loop ---------------------------------------------

@pytest.mark.parametrize("rule", ["sample", "threshold"])
def test_masked_vmap_path_equals_the_loop(float64, rule):
    learner = tiny_learner("s2meta", inner_steps=8, min_steps=2, stop_rule=rule, eval_stop_rule=rule)
    batch = tiny_batch(SPEC, n_users=6, masks="ragged", seed=1)
    g_v, l_v, a_v = meta_gradient(learner, batch, path="vmap", with_aux=True)
    g_l, l_l, a_l = meta_gradient(learner, batch, path="loop", with_aux=True)
    assert torch.equal(a_v["steps"], a_l["steps"])
    if rule == "sample":  # users stop at different steps, some before T_max: the mask is exercised
        assert len(set(a_l["steps"].tolist())) > 1 and a_l["steps"].min() < 8
    torch.testing.assert_close(l_v, l_l, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a_v, a_l, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_v, g_l, rtol=1e-9, atol=1e-11)
    assert all(g_l[n].abs().max() > 0 for n in g_l if n.startswith("stop_controller.output"))
    torch.testing.assert_close(predict(learner, batch, path="vmap"), predict(learner, batch, path="loop"))
    # test-time draws are per user: the chunking does not change the predictions
    torch.testing.assert_close(predict(learner, batch, chunk=2), predict(learner, batch, chunk=6))


def test_stopping_respects_t_min_and_t_max():
    learner = tiny_learner("s2meta", inner_steps=7, min_steps=3)
    batch = tiny_batch(SPEC, n_users=5)
    learner.stop_draws = lambda b: torch.ones(len(b), 7)  # stop when draw < p_t: a draw of 1 never stops
    assert torch.equal(meta_gradient(learner, batch, with_aux=True)[2]["steps"], torch.full((5,), 7.0))
    learner.stop_draws = lambda b: torch.zeros(len(b), 7)  # a draw of 0 always stops, but not before T_min
    assert torch.equal(meta_gradient(learner, batch, with_aux=True)[2]["steps"], torch.full((5,), 3.0))


# -- (3) the gradient preprocessing ---------------------------------------------------------------

def test_preprocessing_is_continuous_and_odd(float64):
    edge = math.exp(-10)
    x = torch.tensor([edge * (1 - 1e-9), edge, edge * (1 + 1e-9)])
    log_part, sign_part = preprocess(x)
    torch.testing.assert_close(log_part, torch.full((3,), -1.0), rtol=0, atol=1e-9)
    torch.testing.assert_close(sign_part, torch.ones(3), rtol=0, atol=1e-8)
    log_neg, sign_neg = preprocess(-x)
    assert torch.equal(log_neg, log_part) and torch.equal(sign_neg, -sign_part)
    log_part, sign_part = preprocess(torch.tensor([-0.5, -3.0, -1e-6, 0.0, 2e-4]))
    torch.testing.assert_close(log_part, torch.tensor([math.log(0.5) / 10, math.log(3.0) / 10, -1.0, -1.0,
                                                       math.log(2e-4) / 10]))
    torch.testing.assert_close(sign_part, torch.tensor([-1.0, -1.0, -math.exp(10) * 1e-6, 0.0, 1.0]))


# -- (4) REINFORCE sign ----------------------------------------------------------------------------

def test_a_positive_advantage_lowers_the_stop_probability(float64):
    # Query = support and small SGD steps: every step lowers the query loss, so continuing pays off
    # (advantage L_Q(θ_t) − L_Q(θ_u) > 0 at every step).
    learner = tiny_learner("s2meta", update_rule="sgd", local_lr=0.02, inner_steps=6, min_steps=2,
                           grad_clamp=None)
    b = tiny_batch(SPEC, n_users=3, n_support=4, n_query=4, seed=4)
    batch = dataclasses.replace(b, query_x=b.support_x, query_y=b.support_y, query_mask=b.support_mask)
    learner.stop_draws = lambda bb: torch.ones(len(bb), 6)  # continue to T_max
    grads, _, aux = meta_gradient(learner, batch, with_aux=True)
    assert (aux["advantage"] > 0).all()
    stop = {n: p for n, p in learner.params().items() if n.startswith("stop_controller.")}
    assert grads["stop_controller.output_layer.bias"] > 0  # ∂J/∂b = mean_u Σ_t A_t p_t
    with torch.no_grad():  # one outer step on the stop controller alone
        for n, p in stop.items():
            p -= 1e-3 * grads[n]
    after = meta_gradient(learner, batch, with_aux=True)[2]
    assert (after["stop_prob"] < aux["stop_prob"]).all()


# -- (5) checkpoints --------------------------------------------------------------------------------

def test_checkpoint_round_trip_is_exact(tmp_path):
    data = _data()
    learner = tiny_learner("s2meta", users_per_batch=8, inner_steps=6, min_steps=2, eval_seed=3)
    result = fit(learner, data, epochs=1, seed=0, device="cpu", progress=False)
    assert int(learner.draw_count) == 3  # one per optimiser step: 24 users / 8
    path = save_checkpoint(tmp_path / "checkpoint.pt", learner, method="s2meta", dataset="tiny",
                           optimizer=result.optimizer, epoch=1, history=result.history, data_provenance={}, seed=0)
    loaded, info = load_checkpoint(path)
    assert type(loaded) is S2MetaLearner and info["configs"]["meta"] == learner.config
    assert loaded.state_dict().keys() == learner.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in learner.state_dict().items())
    assert torch.equal(predict(loaded, data["val"]), predict(learner, data["val"]))
    # a resumed learner draws and steps exactly like the original
    opt = result.optimizer
    meta_step(learner, data["train"].select(torch.arange(8)), opt)
    meta_step(loaded, data["train"].select(torch.arange(8)), info["optimizer"])
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in learner.state_dict().items())
    # build via the registry + load_state_dict
    fresh = build_learner("s2meta", SPEC, configs=method_configs("s2meta") | {
        "model": learner.model.config, "meta": learner.config})
    fresh.load_state_dict(learner.state_dict())
    assert torch.equal(predict(fresh, data["val"]), predict(learner, data["val"]))


# -- (6) training --------------------------------------------------------------------------------

def test_fit_lowers_the_validation_loss_without_diverging():
    data = _data(48, 16)
    learner = tiny_learner("s2meta", users_per_batch=4, inner_steps=6, min_steps=2, global_lr=3e-3,
                           update_lr=3e-3, stop_lr=1e-3)
    before = evaluate_learner(learner, data["val"], method="s2meta", dataset="tiny", seed=0)
    result = fit(learner, data, epochs=4, seed=0, device="cpu", progress=False)
    assert result.diverged is None and result.best_epoch > 0
    before_mae = float(before.query("metric == 'MAE' and scenario == 'all'").value.iloc[0])
    assert result.best_val["MAE"] < before_mae
    losses = result.history.query("split == 'train' and metric == 'loss'").value
    assert losses.map(math.isfinite).all()


def test_cli_smoke_run(tmp_path, capsys):
    from mamo_lite.cli import main

    out = tmp_path / "run"
    code = main(["train", "--method", "s2meta", "--dataset", "synthetic", "--preset", "smoke", "--device", "cpu",
                 "--out", str(out), "--set", "inner_steps=6", "--set", "controller_hidden=4"])
    assert code == 0, capsys.readouterr().err
    learner, info = load_checkpoint(out / "checkpoint.pt")
    assert isinstance(learner, S2MetaLearner) and info["configs"]["meta"].inner_steps == 6


# -- (7) real data ---------------------------------------------------------------------------------

# A narrower MLP than the Table-1 preset's (10,881 adapted coordinates, each with its own LSTM state),
# so that a run fits in about a minute on 2 CPU cores; the algorithm is unchanged.
SMALL = {"embed_dim": 16, "field_dim": 8, "decision_hidden": (16, 8), "output_bias_init": "midpoint",
         "users_per_batch": 4, "global_lr": 1e-3, "update_lr": 1e-3, "stop_lr": 5e-4}


@needs_movielens_1m
def test_s2meta_beats_the_global_mean_on_movielens():
    from mamo_lite.data import load
    from mamo_lite.evaluate import scenario_metrics
    from mamo_lite.methods.baselines import global_mean

    data = load("movielens-1m", download=False, seed=0)
    test = subset_users(data.tasks("test"), 300, 0)

    torch.manual_seed(0)
    learner = build_learner("s2meta", data.spec, overrides=SMALL)
    result = fit(learner, data, epochs=1, seed=0, device="cpu", path="loop", max_train_users=300,
                 max_val_users=100, progress=False)
    assert result.diverged is None
    got = overall_mae(evaluate_learner(learner, test, method="s2meta", dataset="ml", seed=0, path="loop"))
    baseline = overall_mae(scenario_metrics(global_mean(data.tasks("train"), test), test, method="global", dataset="ml",
                                    seed=0, rating_range=data.spec))
    assert got < baseline
