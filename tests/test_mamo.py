"""MAMO's equations (Dong et al. KDD 2020, Eqs. 3–12) checked on tiny tensors."""

import copy
import io
import math

import pytest
import torch
from helpers import tiny_batch

from mamo_lite.data.tasks import FeatureSpec, Field, TaskBatch
from mamo_lite.meta import (
    MetaConfig,
    MetaLearner,
    adapt,
    make_optimizer,
    meta_gradient,
    meta_step,
    predict,
)
from mamo_lite.methods import build_learner
from mamo_lite.methods.mamo import MAMOConfig, MAMOLearner
from mamo_lite.methods.memories import (
    attention,
    attentive_write,
    attentive_write_sequence,
    personal_bias,
    read,
)
from mamo_lite.models import EmbeddingRecommender, RecommenderConfig
from mamo_lite.models.recommender import GROUPS

SPEC = FeatureSpec((Field("gender", "categorical", 3), Field("age", "categorical", 5)),
                   (Field("rate", "categorical", 4), Field("genre", "multi", 7)), 1.0, 5.0)


def make_batch(n_users=5, n_support=6, n_query=4, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)

    def items(n):
        return {"cat": torch.randint(1, 4, (n_users, n, 1), generator=g),
                "genre": torch.randint(0, 7, (n_users, n, 2), generator=g)}

    return TaskBatch(
        user_ids=torch.arange(n_users), user_x=torch.randint(1, 3, (n_users, 2), generator=g),
        support_x=items(n_support), support_y=torch.randint(1, 6, (n_users, n_support), generator=g).float(),
        support_mask=torch.ones(n_users, n_support, dtype=torch.bool),
        support_item_ids=torch.zeros(n_users, n_support, dtype=torch.long),
        query_x=items(n_query), query_y=torch.randint(1, 6, (n_users, n_query), generator=g).float(),
        query_mask=torch.ones(n_users, n_query, dtype=torch.bool),
        query_item_ids=torch.zeros(n_users, n_query, dtype=torch.long),
        query_scenario=torch.randint(0, 4, (n_users, n_query), generator=g))


def mamo(seed=0, **mamo_kw) -> MAMOLearner:
    torch.manual_seed(seed)
    meta = {k: mamo_kw.pop(k) for k in list(mamo_kw) if k in ("local_lr", "inner_steps", "first_order",
                                                               "global_optimizer", "global_lr", "reduction")}
    return build_learner("mamo", SPEC, overrides={"embed_dim": 8, **meta, **mamo_kw})


# -- Eq. 3 ----------------------------------------------------------------------------------------

def test_attention_is_softmax_of_cosine_by_hand():
    p = torch.tensor([2.0, 0.0])
    m = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # cosines 1, 0, -1
    e = math.e
    z = e + 1 + 1 / e
    expected = torch.tensor([e / z, 1 / z, (1 / e) / z])  # 0.6652, 0.2447, 0.0900
    torch.testing.assert_close(attention(p, m), expected)
    batched = attention(torch.stack([p, -p]), m)
    torch.testing.assert_close(batched[1], expected.flip(0))


# -- Eqs. 4 and 7 ---------------------------------------------------------------------------------

def test_read_is_attention_weighted_sum_of_slots():
    a = torch.tensor([0.2, 0.3, 0.5])
    slots = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[2.0, 2.0]]])  # K=3 slots of shape [1, 2]
    # 0.2*[1,0] + 0.3*[0,1] + 0.5*[2,2] = [1.2, 1.3]
    torch.testing.assert_close(read(a, slots), torch.tensor([[1.2, 1.3]]))
    b = personal_bias(a, {"w": slots, "b": torch.tensor([1.0, 2.0, 3.0])})
    torch.testing.assert_close(b["b"], torch.tensor(0.2 * 1 + 0.3 * 2 + 0.5 * 3))


# -- Eqs. 5, 6, 8 ---------------------------------------------------------------------------------

def test_attentive_write_by_hand():
    m = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    a = torch.tensor([0.25, 0.75])
    x = torch.tensor([2.0, 4.0])
    # 0.5 * [[0.5, 1], [1.5, 3]] + 0.5 * [[1, 1], [0, 0]]
    torch.testing.assert_close(attentive_write(m, a, x, 0.5), torch.tensor([[0.75, 1.0], [0.75, 1.5]]))
    assert torch.equal(attentive_write(m, a, x, 0.0), m)


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.5, 1.0])
def test_sequential_writes_closed_form_equals_loop(rate):
    g = torch.Generator().manual_seed(1)
    m0 = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    a = torch.softmax(torch.randn(7, 3, generator=g, dtype=torch.float64), -1)
    x = torch.randn(7, 4, 2, generator=g, dtype=torch.float64)
    m = m0
    for j in range(7):
        m = attentive_write(m, a[j], x[j], rate)
    torch.testing.assert_close(attentive_write_sequence(m0, a, x, rate), m, rtol=1e-12, atol=1e-12)
    assert torch.equal(attentive_write_sequence(m0, a[:0], x[:0], rate), m0)


# -- Eqs. 9-10 and the learner ---------------------------------------------------------------------

def test_personalised_initialisation_eq9_eq10():
    learner = mamo(tau=0.3)
    batch = make_batch()
    params = learner.params()
    mem = learner.memory_state()
    task = batch.task(0)
    fast, ctx = learner.init_fast(params, mem, task)
    p_u = torch.cat([learner.model.user_profile["gender"].weight[task["user_x"][0]],
                     learner.model.user_profile["age"].weight[task["user_x"][1]]])  # p_u by hand
    torch.testing.assert_close(ctx["profile"], p_u)
    a = torch.softmax(torch.nn.functional.cosine_similarity(p_u[None], learner.profile_memory, dim=-1), -1)
    torch.testing.assert_close(ctx["attention"], a)
    for n, slots in learner.gradient_memory_dict().items():
        b = sum(a[k] * slots[k] for k in range(3))
        torch.testing.assert_close(fast[n], params[n] - 0.3 * b)  # θ_u = φ_u − τ b_u
    for n in learner.model.names_in(("item", "decision")):
        assert fast[n] is params[n]  # θ_i ← φ_i, θ_r ← φ_r
    m_ui = sum(a[k] * learner.preference_memory[k] for k in range(3))
    torch.testing.assert_close(fast["preference.weight"], m_ui)  # Eq. 7
    assert "preference.weight" not in learner.global_names()
    assert not any(n.startswith("user_profile") for n in fast)  # profile tables are global only


def test_writes_after_a_step_match_equations_5_6_8():
    learner = mamo(alpha=0.5, beta=0.2, gamma=0.1, local_lr=0.05)
    batch = make_batch(n_users=3)
    before = {k: v.clone() for k, v in learner.memory_state().items()}
    params = {n: p.detach().clone() for n, p in learner.params().items()}
    # expected writes, user by user, with explicit autograd
    exp = {k: v.clone() for k, v in before.items()}
    for i in range(3):
        task = batch.task(i)
        fast, ctx = learner.init_fast(params, before, task)
        fast = adapt(learner, params, fast, task)
        a = ctx["attention"]
        exp["profile"] = 0.5 * torch.outer(a, ctx["profile"]) + 0.5 * exp["profile"]  # Eq. 5
        user = {n: fast[n].detach().requires_grad_() for n in learner.gradient_memory_dict()}
        loss = learner.task_loss(params, {**{k: v.detach() for k, v in fast.items()}, **user}, task, "query")
        grads = torch.autograd.grad(loss, list(user.values()))
        for (n, _), gr in zip(user.items(), grads):  # Eq. 6 with the query gradient at θ̂_u
            exp[f"gradient:{n}"] = 0.2 * a.reshape(-1, *[1] * gr.dim()) * gr + 0.8 * exp[f"gradient:{n}"]
        pref = fast["preference.weight"].detach()  # Eq. 8 with the adapted M_{u,I}
        exp["preference"] = 0.1 * a[:, None, None] * pref + 0.9 * exp["preference"]
    meta_step(learner, batch, make_optimizer(learner))
    after = learner.memory_state()
    for k, value in exp.items():
        torch.testing.assert_close(after[k], value, rtol=1e-5, atol=1e-6, msg=k)


def test_memory_writes_build_no_autograd_graph():
    learner = mamo()
    opt = make_optimizer(learner)
    for _ in range(3):
        meta_step(learner, make_batch(), opt)
    for name, t in learner.memory_state().items():
        assert t.grad_fn is None and not t.requires_grad, name
    assert all(not b.requires_grad for b in learner.buffers())


@pytest.mark.parametrize("first_order", [True, False])
def test_vmap_equals_loop(first_order):
    learner = mamo(first_order=first_order, inner_steps=2, local_lr=0.05)
    batch = make_batch()
    g1, l1, a1 = meta_gradient(learner, batch, path="vmap", with_aux=True)
    g2, l2, a2 = meta_gradient(learner, batch, path="loop", with_aux=True)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-5, atol=1e-5, msg=k)
    for k in a1:
        torch.testing.assert_close(a1[k], a2[k], rtol=1e-5, atol=1e-5, msg=k)
    torch.testing.assert_close(predict(learner, batch, path="vmap"), predict(learner, batch, path="loop"),
                               rtol=1e-5, atol=1e-5)


def test_tau0_gamma0_shared_preference_equals_maml_first_step():
    """The exact equivalence: τ = 0 and every M_{U,I} slot equal to MAML's preference weight W.

    Then a_uᵀ M_{U,I} = W (attention sums to one), θ = φ, and MAMO's adaptation, query losses,
    predictions and meta-gradients equal MAML's with the same local groups; with γ = 0 the
    preference memory stays W after the step.
    """
    learner = mamo(tau=0.0, gamma=0.0, local_lr=0.05, inner_steps=2, first_order=False)
    maml = MetaLearner(EmbeddingRecommender(SPEC, learner.model.config), learner.config)
    maml.model.load_state_dict(learner.model.state_dict())
    w = maml.model.preference.weight.detach()
    learner.preference_memory.copy_(w.expand_as(learner.preference_memory))
    batch = make_batch()
    g_mamo, l_mamo, _ = meta_gradient(learner, batch)
    g_maml, l_maml, _ = meta_gradient(maml, batch)
    torch.testing.assert_close(l_mamo, l_maml)
    for n in g_mamo:
        torch.testing.assert_close(g_mamo[n], g_maml[n], msg=n)
    torch.testing.assert_close(predict(learner, batch), predict(maml, batch))
    meta_step(learner, batch, make_optimizer(learner))
    torch.testing.assert_close(learner.preference_memory, w.expand_as(learner.preference_memory))


def test_predict_reads_but_never_writes_memories():
    learner = mamo()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    predict(learner, make_batch())
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_state_dict_round_trip_restores_memories_bit_exactly():
    learner = mamo(seed=1)
    opt = make_optimizer(learner)
    meta_step(learner, make_batch(), opt)
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    fresh = mamo(seed=2)
    assert not torch.equal(fresh.profile_memory, learner.profile_memory)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    for k, v in learner.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert {"profile_memory", "preference_memory"} <= set(learner.state_dict())
    assert any(k.startswith("gradient_memory.") for k in learner.state_dict())
    moved = fresh.to(torch.float64)
    assert moved.profile_memory.dtype == torch.float64 and moved.gradient_memory_dict()


def test_ablations_and_as_coded_options():
    batch = make_batch()
    no_bias = mamo(use_bias=False)
    _, _, aux = meta_gradient(no_bias, batch, with_aux=True)
    assert not any(k.startswith("gradient:") for k in aux)
    fast, _ = no_bias.init_fast(no_bias.params(), no_bias.memory_state(), batch.task(0))
    assert all(fast[n] is no_bias.params()[n] for n in no_bias.model.names_in(("user",)))
    no_pref = mamo(use_preference=False)
    assert "preference.weight" in no_pref.global_names() and "preference" not in no_pref.memory_state()
    weights_only = mamo(gradient_params="weights")
    assert all(n.endswith("weight") for n in weights_only.gradient_memory_dict())
    coded = build_learner("mamo", SPEC, overrides={"embed_dim": 8, "preference": "code"})
    assert coded.preference_memory.shape == (3, 16, 16)
    paper = mamo()
    assert paper.preference_memory.shape == (3, 8, 16)  # K × d_e × 2d_e


def test_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="alpha"):
        MAMOConfig(alpha=1.5)
    with pytest.raises(ValueError, match="n_memory"):
        MAMOConfig(n_memory=0)
    with pytest.raises(ValueError, match="local_groups must include 'user'"):
        MAMOLearner(EmbeddingRecommender(SPEC, RecommenderConfig(embed_dim=8)),
                    MetaConfig(local_groups=("decision",)))
    with pytest.raises(ValueError, match="preference"):
        MAMOLearner(EmbeddingRecommender(SPEC, RecommenderConfig(embed_dim=8, preference="none")), MetaConfig())


# -- the M_U write (Eq. 6) taken from the main pass == its separate pass ----------------------------

FUSED_CASES = {
    "default": {},
    "sum": {"reduction": "sum"},
    "weights-only": {"gradient_params": "weights"},
    "per-item": {"local_update": "per-item"},
    # the authors' configuration on a tiny network: every group local (profile tables too), gathered rows
    "authors-gathered": {"preference": "code", "head": "classification", "tau": 0.01, "local_groups": GROUPS,
                         "gradient_params": "weights", "reduction": "sum", "gather": True},
}


@pytest.mark.parametrize("path", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [True, False], ids=["first", "second"])
@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_memory_write_equals_the_separate_pass(float64, case, first_order, path):
    """``fused_memory_write``: the same Eq. 6 gradients, meta-gradients (Eq. 12), losses and memory writes."""
    extra = dict(FUSED_CASES[case])
    gather = extra.pop("gather", False)
    learner = mamo(seed=3, first_order=first_order, inner_steps=2, local_lr=0.1, **extra)
    learner.gather_rows = gather
    batch = tiny_batch(SPEC, n_users=4, masks="ragged", seed=5)
    assert learner.fused_memory_write is False and learner.aux_taps() == {}  # opt-in
    plain = meta_gradient(learner, batch, path=path, with_aux=True)
    learner.fused_memory_write = True
    assert set(learner.aux_taps()) == {f"gradient:{n}" for n in learner.gradient_memory_dict()}
    fused = meta_gradient(learner, batch, path=path, with_aux=True)
    assert set(fused[2]) == set(plain[2])
    for a, b in zip(fused, plain):  # grads, per-user query losses, aux (the Eq. 6 gradients among them)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert all(plain[2][k].abs().sum() > 0 for k in plain[2] if k.startswith("gradient:"))  # not zeros
    # a whole meta-step: the same memories (Eqs. 5, 6, 8) and global parameters afterwards
    twin = copy.deepcopy(learner)
    twin.fused_memory_write = False
    meta_step(learner, batch, make_optimizer(learner), path=path)
    meta_step(twin, batch, make_optimizer(twin), path=path)
    for k, v in learner.memory_state().items():
        torch.testing.assert_close(v, twin.memory_state()[k], rtol=1e-10, atol=1e-13, msg=k)
    for (n, p), q in zip(learner.model.named_parameters(), twin.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-13, msg=n)


def test_fused_memory_write_falls_back_where_it_cannot_fuse():
    """The support-set gradient at θ̂ is not in the main pass; without ``M_U`` there is nothing to write."""
    batch = make_batch()
    for kw in ({"gradient_source": "support"}, {"use_bias": False}):
        learner = mamo(**kw)
        plain = meta_gradient(learner, batch, with_aux=True)
        learner.fused_memory_write = True
        assert learner.aux_taps() == {}
        for a, b in zip(meta_gradient(learner, batch, with_aux=True), plain):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same code runs
