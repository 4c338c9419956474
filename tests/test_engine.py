"""The functional adaptation engine (MAMO §2.3.3–2.3.4, Eqs. 11–12) and the MAML, MeLU and
MetaCS-DNN configurations of it (notes/baselines.md §0, §2, §3).

References used below are independent of the engine: a deep copy of the model adapted in place
with ``torch.autograd`` on the *real* (unmasked) ratings only, plain MSE, no ``torch.func``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_batch, tiny_learner, tiny_spec
from torch.func import functional_call

from mamo_lite.meta import (
    MetaConfig,
    MetaLearner,
    adapt,
    make_optimizer,
    map_users,
    meta_gradient,
    meta_step,
    predict,
)
from mamo_lite.meta.engine import gather_rows
from mamo_lite.methods import METHODS, build_learner, method_configs
from mamo_lite.models.recommender import GROUPS

SPEC = tiny_spec()
LOCAL_GROUPS = {"maml": set(GROUPS), "melu": {"decision"}, "metacs-dnn": set(GROUPS)}


# -- independent references -----------------------------------------------------------------------

def real_mse(model, task: dict, which: str):
    """Mean squared error over the real (unmasked) ratings of one user's support or query set."""
    mask = task[f"{which}_mask"]
    items = {k: v[mask] for k, v in task[f"{which}_x"].items()}
    return F.mse_loss(model(task["user_x"], items), task[f"{which}_y"][mask])


def adapted_copy(model, task: dict, local: list[str], lr: float, steps: int):
    """θ' = θ − ρ ∇L_S(θ), ``steps`` times, on a deep copy (autograd, in-place updates)."""
    m = copy.deepcopy(model)
    params = dict(m.named_parameters())
    for _ in range(steps):
        grads = torch.autograd.grad(real_mse(m, task, "support"), [params[n] for n in local])
        with torch.no_grad():
            for n, g in zip(local, grads):
                params[n].sub_(lr * g)
    return m


def adapted_copy_per_item(model, task: dict, local: list[str], lr: float, passes: int):
    """Algorithm 1's loop on a deep copy: for each pass, for each real support rating, one SGD step on it."""
    m = copy.deepcopy(model)
    params = dict(m.named_parameters())
    real = [j for j in range(len(task["support_y"])) if task["support_mask"][j]]
    for _ in range(passes):
        for j in real:
            one = {k: v[j:j + 1] for k, v in task["support_x"].items()}
            loss = F.mse_loss(m(task["user_x"], one), task["support_y"][j:j + 1])
            grads = torch.autograd.grad(loss, [params[n] for n in local])
            with torch.no_grad():
                for n, g in zip(local, grads):
                    params[n].sub_(lr * g)
    return m


def reference_first_order(learner, batch, local: list[str]):
    """Mean over users of ∇ L_Q at (φ_nonlocal, θ'_local), and the per-user query losses."""
    cfg = learner.config
    totals, losses = None, []
    for i in range(len(batch)):
        task = batch.task(i)
        copier = adapted_copy_per_item if cfg.local_update == "per-item" else adapted_copy
        m = copier(learner.model, task, local, cfg.local_lr, cfg.inner_steps)
        loss = real_mse(m, task, "query")
        names = [n for n, _ in m.named_parameters()]
        grads = dict(zip(names, torch.autograd.grad(loss, list(m.parameters()))))
        totals = grads if totals is None else {n: totals[n] + grads[n] for n in names}
        losses.append(loss.detach())
    return {n: g / len(batch) for n, g in totals.items()}, torch.stack(losses)


def rel_err(a: dict, b: dict) -> float:
    num = sum(((a[n] - b[n]) ** 2).sum() for n in a) ** 0.5
    den = sum((b[n] ** 2).sum() for n in b) ** 0.5
    return float(num / den)


# -- vmap == loop ---------------------------------------------------------------------------------

@pytest.mark.parametrize("first_order", [True, False], ids=["first", "second"])
@pytest.mark.parametrize("method, extra", [
    ("maml", {}), ("maml", {"head": "classification"}), ("melu", {}), ("metacs-dnn", {}),
    ("maml", {"local_update": "per-item"}),
], ids=["maml", "maml-classification", "melu", "metacs-dnn", "maml-per-item"])
def test_vmap_equals_loop(method, extra, first_order):
    learner = tiny_learner(method, inner_steps=3, local_lr=0.05, first_order=first_order, **extra)
    batch = tiny_batch(SPEC, n_users=4, masks="ragged", seed=1)
    assert not batch.support_mask.all() and not batch.query_mask.all()  # really ragged
    g_vmap, l_vmap, _ = meta_gradient(learner, batch, path="vmap")
    g_loop, l_loop, _ = meta_gradient(learner, batch, path="loop")
    assert set(g_vmap) == set(learner.global_names()) == {n for n, _ in learner.model.named_parameters()}
    assert l_vmap.shape == (4,)
    torch.testing.assert_close(l_vmap, l_loop, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_vmap, g_loop, rtol=0, atol=1e-5)
    assert all(g.abs().max() > 0 for g in g_loop.values())  # no dead tensor: not a comparison of zeros


# -- meta-gradients against autograd and finite differences ---------------------------------------

@pytest.mark.parametrize("local_update", ["batch", "per-item"])
@pytest.mark.parametrize("method", ["maml", "melu", "metacs-dnn"])
def test_first_order_is_query_gradient_at_adapted_weights(float64, method, local_update):
    """FOMAML: ∇_φ L_Q evaluated at (φ_nonlocal, θ'_local), θ' from Eq. 11 with autograd on a copy.

    ``per-item``: the reference takes Algorithm 1's steps, one per real support rating, in order.
    """
    learner = tiny_learner(method, inner_steps=2, local_lr=0.1, first_order=True, local_update=local_update)
    batch = tiny_batch(SPEC, n_users=3, masks="ragged", seed=2)
    grads, losses, _ = meta_gradient(learner, batch)
    ref, ref_losses = reference_first_order(learner, batch, learner.model.names_in(LOCAL_GROUPS[method]))
    torch.testing.assert_close(losses, ref_losses, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads, ref, rtol=1e-9, atol=1e-12)
    if method == "melu":  # the embeddings are meta-learned, not adapted: their gradient is direct only
        assert sum(grads[n].abs().sum() for n in learner.model.names_in(("profile",))) > 0


@pytest.mark.parametrize("method, local_update", [("maml", "batch"), ("melu", "batch"), ("maml", "per-item")])
def test_second_order_matches_finite_differences(float64, method, local_update):
    """Exact meta-gradient (Eq. 12 through Eq. 11): central differences along a random direction."""
    learner = tiny_learner(method, inner_steps=2, local_lr=0.1, first_order=False, local_update=local_update)
    batch = tiny_batch(SPEC, n_users=3, masks="ragged", seed=4)
    g2, _, _ = meta_gradient(learner, batch)
    g1, _, _ = meta_gradient(tiny_learner(method, inner_steps=2, local_lr=0.1, first_order=True,
                                          local_update=local_update), batch)

    gen = torch.Generator().manual_seed(0)
    direction = {n: torch.randn(p.shape, generator=gen) for n, p in learner.model.named_parameters()}

    def objective(sign: float, eps: float = 1e-6) -> float:
        model = copy.deepcopy(learner.model)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.add_(sign * eps * direction[n])
        local = model.names_in(LOCAL_GROUPS[method])
        copier = adapted_copy_per_item if local_update == "per-item" else adapted_copy
        return sum(float(real_mse(copier(model, batch.task(i), local, 0.1, 2),
                                  batch.task(i), "query").detach()) for i in range(len(batch))) / len(batch)

    fd = (objective(1.0) - objective(-1.0)) / 2e-6
    analytic = float(sum((g2[n] * direction[n]).sum() for n in g2))
    first = float(sum((g1[n] * direction[n]).sum() for n in g1))
    assert abs(analytic - fd) < 1e-6 * abs(fd)
    # the second-order term matters here: first order is off by far more than the tolerance
    assert abs(first - fd) > 1e-3 * abs(fd)
    assert rel_err(g1, g2) > 1e-3


def test_second_order_is_first_order_minus_hessian_term(float64):
    """One step, everything local: ∇_φ L_Q(θ') = (I − ρ H_S(φ)) ∇L_Q(θ'), averaged over users."""
    rho = 0.2
    learner = tiny_learner("maml", inner_steps=1, local_lr=rho, first_order=False)
    batch = tiny_batch(SPEC, n_users=2, masks="ragged", seed=5)
    g2, _, _ = meta_gradient(learner, batch)
    model = learner.model
    names = [n for n, _ in model.named_parameters()]
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(batch)):
        task = batch.task(i)
        adapted = adapted_copy(model, task, names, rho, 1)
        g1 = torch.autograd.grad(real_mse(adapted, task, "query"), list(adapted.parameters()))
        g_s = torch.autograd.grad(real_mse(model, task, "support"), list(model.parameters()), create_graph=True)
        hvp = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g_s, g1)), list(model.parameters()))
        for n, a, h in zip(names, g1, hvp):
            expected[n] += (a - rho * h) / len(batch)
    torch.testing.assert_close(g2, expected, rtol=1e-9, atol=1e-12)


# -- local update (Eq. 11) ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["maml", "melu", "metacs-dnn"])
def test_one_local_step_lowers_support_loss_for_every_user(method):
    learner = tiny_learner(method)
    batch = tiny_batch(SPEC, n_users=5, masks="ragged", seed=6)
    params = {n: p.detach() for n, p in learner.params().items()}
    for i in range(len(batch)):
        task = batch.task(i)
        fast, _ = learner.init_fast(params, {}, task)
        before = learner.task_loss(params, fast, task, "support")
        after = learner.task_loss(params, adapt(learner, params, fast, task, steps=1, lr=1e-3), task, "support")
        assert after < before, f"user {i}: {float(before)} -> {float(after)}"


@pytest.mark.parametrize("how", ["inner_steps=0", "local_lr=0", "predict(steps=0)"])
def test_no_adaptation_equals_plain_forward(how):
    overrides = {"inner_steps=0": {"inner_steps": 0}, "local_lr=0": {"local_lr": 0.0, "inner_steps": 2},
                 "predict(steps=0)": {"local_lr": 0.5}}[how]
    learner = tiny_learner("maml", **overrides)
    batch = tiny_batch(SPEC, n_users=3, masks="ragged", seed=7)
    steps = 0 if how == "predict(steps=0)" else None
    plain = learner.model.predict(batch.user_x, batch.query_x).detach()
    torch.testing.assert_close(predict(learner, batch, steps=steps), plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(predict(learner, batch, steps=steps, path="loop"), plain, rtol=0, atol=1e-6)
    if how == "predict(steps=0)":  # the default does adapt, so the comparison above is not vacuous
        assert not torch.allclose(predict(learner, batch), plain, atol=1e-3)
    else:
        _, losses, _ = meta_gradient(learner, batch)
        out = learner.model(batch.user_x, batch.query_x)
        m = batch.query_mask.to(out.dtype)
        torch.testing.assert_close(losses, (((out - batch.query_y) ** 2) * m).sum(1) / m.sum(1))


@pytest.mark.parametrize("path", ["vmap", "loop"])
def test_users_without_real_ratings(path):
    """No real support rating: no adaptation (query loss of φ). No real query rating: zero loss, no NaN."""
    learner = tiny_learner("maml", local_lr=0.5)
    batch = tiny_batch(SPEC, n_users=3, masks=([4, 0, 2], [3, 2, 0]), seed=14)
    grads, losses, _ = meta_gradient(learner, batch, path=path)
    out = learner.model(batch.user_x[1], batch.task(1)["query_x"]).detach()
    torch.testing.assert_close(losses[1], F.mse_loss(out[:2], batch.query_y[1, :2]))
    torch.testing.assert_close(predict(learner, batch, path=path)[1], out)
    assert losses[2] == 0 and losses[0] > 0
    assert all(torch.isfinite(g).all() for g in grads.values())


# -- which parameters adapt -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["maml", "melu", "metacs-dnn"])
def test_fast_weights_are_exactly_the_local_groups(method):
    learner = tiny_learner(method, local_lr=0.1)
    model = learner.model
    expected = {n for n, _ in model.named_parameters() if model.group_of(n) in LOCAL_GROUPS[method]}
    batch = tiny_batch(SPEC, seed=8)
    task = batch.task(0)
    params = {n: p.detach() for n, p in learner.params().items()}
    fast, _ = learner.init_fast(params, {}, task)
    fast = adapt(learner, params, fast, task)
    assert set(fast) == set(learner.local_names()) == expected
    assert any(not torch.equal(fast[n], params[n]) for n in fast)  # the step moved them
    # every parameter is meta-learned (gets a meta-gradient), adapted or not
    grads, _, _ = meta_gradient(learner, batch)
    assert set(grads) == {n for n, _ in model.named_parameters()}
    if method == "melu":
        assert expected == {"decision.0.weight", "decision.0.bias", "decision.2.weight", "decision.2.bias",
                            "out.weight", "out.bias"}
        embeddings = model.names_in(("profile",))
        assert embeddings and not set(embeddings) & set(fast)
        assert sum(grads[n].abs().sum() for n in embeddings) > 0


# -- predict / meta_step --------------------------------------------------------------------------

def test_predict_is_functional_and_works_under_no_grad():
    learner = tiny_learner("maml", local_lr=0.3, inner_steps=2)
    batch = tiny_batch(SPEC, n_users=5, masks="ragged", seed=9)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    pred = predict(learner, batch)
    with torch.no_grad():
        pred_ng = predict(learner, batch, chunk=2)
    after = learner.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in learner.parameters())
    assert pred.shape == (5, 3) and not pred.requires_grad
    torch.testing.assert_close(pred_ng, pred, rtol=0, atol=1e-6)
    torch.testing.assert_close(predict(learner, batch, path="loop"), pred, rtol=0, atol=1e-5)


def test_meta_gradient_modifies_nothing():
    learner = tiny_learner("melu", local_lr=0.1)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    meta_gradient(learner, tiny_batch(SPEC, seed=10))
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert all(p.grad is None for p in learner.parameters())


@pytest.mark.parametrize("path", ["vmap", "loop"])
def test_meta_step_sgd_is_phi_minus_lambda_grad(float64, path):
    lam = 0.1
    learner = tiny_learner("maml", global_optimizer="sgd", global_lr=lam, local_lr=0.05)
    batch = tiny_batch(SPEC, n_users=3, masks="ragged", seed=11)
    grads, losses, _ = meta_gradient(learner, batch, path=path)
    phi = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    opt = make_optimizer(learner)
    assert isinstance(opt, torch.optim.SGD)
    step_losses = meta_step(learner, batch, opt, path=path)
    torch.testing.assert_close(step_losses, losses)
    now = {n: p.detach() for n, p in learner.model.named_parameters()}
    torch.testing.assert_close(now, {n: phi[n] - lam * grads[n] for n in phi}, rtol=0, atol=1e-14)
    assert all(p.grad is None for p in learner.parameters())


def test_sum_reduction_is_batch_size_times_mean():
    batch = tiny_batch(SPEC, n_users=4, masks="ragged", seed=12)
    g_mean, l_mean, _ = meta_gradient(tiny_learner("maml", reduction="mean"), batch)
    g_sum, l_sum, _ = meta_gradient(tiny_learner("maml", reduction="sum"), batch)
    torch.testing.assert_close(l_sum, l_mean)
    torch.testing.assert_close(g_sum, {n: 4 * g for n, g in g_mean.items()})


@pytest.mark.parametrize("method", ["maml", "metacs-dnn"])
def test_cpu_reruns_are_bit_identical(method):
    def run():
        learner = tiny_learner(method, seed=3, local_lr=0.05, global_lr=0.01)
        opt = make_optimizer(learner)
        gen = torch.Generator().manual_seed(0)
        data = tiny_batch(SPEC, n_users=6, masks="ragged", seed=13)
        for _ in range(3):
            for batch in data.batches(3, shuffle=True, generator=gen):
                meta_step(learner, batch, opt)
        return learner

    a, b = run(), run()
    init = tiny_learner(method, seed=3)
    for (n, p), q, p0 in zip(a.model.named_parameters(), b.model.parameters(), init.model.parameters()):
        assert torch.equal(p, q), n
    assert any(not torch.equal(p, p0) for p, p0 in zip(a.model.parameters(), init.model.parameters()))


# -- gathered embedding rows == the plain path ----------------------------------------------------

# MAMO as its authors' code runs it (every group local, so its embedding tables are adapted per user;
# cf. mamo_lite.reproduce.MAMO_AS_CODED) on a tiny network.
TINY_MAMO_AUTHORS = {"embed_dim": 3, "field_dim": 2, "tower_layers": 1, "decision_hidden": (4,), "preference": "code",
                     "head": "classification", "tau": 0.01, "local_groups": GROUPS, "gradient_params": "weights",
                     "reduction": "sum"}
GATHER_CASES = {
    "maml": ("maml", {}),
    "maml-classification": ("maml", {"head": "classification"}),
    "maml-per-item": ("maml", {"local_update": "per-item"}),
    "metacs-dnn": ("metacs-dnn", {}),
    "melu": ("melu", {}),  # no local table: the option changes nothing
    "mamo-authors": ("mamo", TINY_MAMO_AUTHORS),
}


def _gather_learner(case: str, first_order: bool) -> MetaLearner:
    method, extra = GATHER_CASES[case]
    common = {"inner_steps": 2, "local_lr": 0.1, "first_order": first_order}
    if method == "mamo":
        torch.manual_seed(0)
        return build_learner("mamo", SPEC, overrides={**common, **extra})
    return tiny_learner(method, **common, **extra)


def _dense(value):
    from mamo_lite.meta.factored import LowRank

    return value.dense() if isinstance(value, LowRank) else value


def _option_equals_plain_path(learner: MetaLearner, option: str, batch, path: str, *, steps: tuple, atol: float):
    """Switch the engine option ``option`` on (it must start off) and check that meta-gradients, per-user query
    losses, aux and predictions (for each local ``steps``) equal the plain path's; returns the plain results."""
    assert getattr(learner, option) is False  # opt-in
    plain = meta_gradient(learner, batch, path=path, with_aux=True)
    plain_pred = [predict(learner, batch, path=path, steps=s) for s in steps]
    setattr(learner, option, True)
    grads, losses, aux = meta_gradient(learner, batch, path=path, with_aux=True)
    other = grads, losses, {k: _dense(v) for k, v in aux.items()}  # the batched path's LowRank gradients
    other_pred = [predict(learner, batch, path=path, steps=s) for s in steps]
    assert set(other[0]) == set(plain[0]) and set(other[2]) == set(plain[2])
    for a, b in zip(other, plain, strict=True):  # grads, per-user query losses, aux (memory writes)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=atol)
    for a, b in zip(other_pred, plain_pred, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=atol)
    return plain, plain_pred


@pytest.mark.parametrize("path", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [True, False], ids=["first", "second"])
@pytest.mark.parametrize("case", list(GATHER_CASES))
def test_gathered_rows_equal_the_plain_path(float64, case, first_order, path):
    """``gather_rows``: the same query losses, meta-gradients (Eq. 12), memory writes and predictions."""
    learner = _gather_learner(case, first_order)
    batch = tiny_batch(SPEC, n_users=4, masks="ragged", seed=21)
    plain, _ = _option_equals_plain_path(learner, "gather_rows", batch, path, steps=(None,), atol=1e-13)
    tables = learner.model.names_in(("profile",))
    if "profile" in learner.config.local_groups:  # not a comparison of zeros
        assert all(plain[0][n].abs().sum() > 0 for n in tables)


def test_gather_rows_keeps_only_the_touched_rows():
    learner = tiny_learner("maml")
    model, task = learner.model, tiny_batch(SPEC, n_users=2, seed=22).task(1)
    params = {n: p.detach() for n, p in learner.params().items()}
    fast, new_task = gather_rows(model, dict(params), task)
    S, Q = task["support_y"].shape[0], task["query_y"].shape[0]
    # one row per read (+ row 0), not the table: e.g. the director table has vocab 5 here but S·3 + Q·3 + 1 reads
    assert fast["user_profile.gender.weight"].shape == (2, 2)
    assert fast["item_profile.director.weight"].shape == ((S + Q) * 3 + 1, 2)
    assert fast["item_profile.rate.weight"].shape == (S + Q + 1, 2)
    for which in ("support_x", "query_x"):  # the padding mask idx > 0 is unchanged
        for name in ("genre", "director"):
            assert torch.equal(new_task[which][name] > 0, task[which][name] > 0)
    # the re-indexed task reads exactly the rows the full table gave
    full = model(task["user_x"], task["query_x"])
    torch.testing.assert_close(functional_call(model, fast, (new_task["user_x"], new_task["query_x"])), full)
    # global tables keep their indices: MeLU adapts no table, so nothing changes
    melu = tiny_learner("melu")
    local = {n: p.detach() for n, p in melu.params().items() if n in melu.local_names()}
    same_fast, same_task = gather_rows(melu.model, local, task)
    assert same_fast == local and same_task is task


def test_the_option_reaches_both_per_user_algorithms(monkeypatch):
    from mamo_lite.meta import engine

    calls = []
    monkeypatch.setattr(engine, "gather_rows", lambda *a: calls.append(1) or gather_rows(*a))
    learner = tiny_learner("maml")
    batch = tiny_batch(SPEC, n_users=3, seed=23)
    meta_gradient(learner, batch, path="loop")
    predict(learner, batch, path="loop")
    assert not calls
    learner.gather_rows = True
    meta_gradient(learner, batch, path="loop")
    predict(learner, batch, path="loop")
    assert len(calls) == 6


# -- configurations and their errors --------------------------------------------------------------

def test_method_presets_match_the_baselines_spec():
    melu, metacs = method_configs("melu"), method_configs("metacs-dnn")
    assert melu["model"] == metacs["model"]  # MetaCS-DNN is MeLU's network (baselines §3)
    assert (melu["model"].embed_dim, melu["model"].tower_layers, melu["model"].preference,
            melu["model"].decision_hidden, melu["model"].activation) == (32, 0, "none", (64, 64), "relu")
    m = melu["meta"]
    assert (m.local_groups, m.local_lr, m.inner_steps, m.first_order, m.global_optimizer, m.global_lr,
            m.users_per_batch) == (("decision",), 5e-6, 1, True, "adam", 5e-5, 32)
    c = metacs["meta"]
    assert (set(c.local_groups), c.local_lr, c.inner_steps, c.first_order, c.global_optimizer, c.global_lr,
            c.users_per_batch) == (set(GROUPS), 5e-6, 1, True, "sgd", 0.05, 32)  # λ validated (chapter 5)
    from mamo_lite.methods import maml as maml_module
    from mamo_lite.methods import metacs as metacs_module

    assert build_learner("metacs-dnn", SPEC, overrides=metacs_module.PUBLISHED).config.global_lr == 0.4
    # MAML's ρ: validated on the book's datasets (the paper's 0.01 diverges on MovieLens-1M), else the paper's
    rho = {ds: method_configs("maml", ds)["meta"].local_lr for ds in ("movielens-1m", "book-crossing", "movielens-100k")}
    assert rho == {"movielens-1m": 0.003, "book-crossing": 0.001, "movielens-100k": 0.01}
    assert build_learner("maml", SPEC, overrides=maml_module.PUBLISHED).config.local_lr == 0.01
    # MetaCS-DNN restricted to the MLP with MeLU's outer optimiser is MeLU (baselines §3, checks)
    as_melu = build_learner("metacs-dnn", SPEC, overrides={"local_groups": ("decision",),
                                                           "global_optimizer": "adam", "global_lr": 5e-5})
    assert as_melu.config == m and as_melu.model.config == melu["model"]


@pytest.mark.parametrize("field, value", [
    ("local_lr", -0.1), ("local_lr", float("nan")), ("global_lr", -1e-3), ("global_lr", 0.0),
    ("inner_steps", -1), ("users_per_batch", 0), ("global_optimizer", "rmsprop"), ("reduction", "median"),
    ("local_groups", ("decision", "bogus")),
])
def test_meta_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MetaConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        build_learner("maml", SPEC, overrides={field: value})


def test_build_learner_errors():
    with pytest.raises(ValueError, match="unknown method 'bogus'"):
        build_learner("bogus", SPEC)
    with pytest.raises(ValueError, match="local_rate"):
        build_learner("melu", SPEC, overrides={"local_rate": 0.1})
    with pytest.raises(ValueError, match="bogus"):
        build_learner("melu", SPEC, overrides={"local_groups": ("bogus",)})
    with pytest.raises(ValueError, match="embed_dim"):
        build_learner("melu", SPEC, overrides={"embed_dim": 0})
    with pytest.raises(ValueError, match="path"):
        map_users(lambda t: t, {}, "scan", 0)
    assert "maml" in METHODS and "melu" in METHODS and "metacs-dnn" in METHODS


# -- factored fast weights (mamo_lite.meta.factored) ----------------------------------------------

FACTORED_CASES = {
    **GATHER_CASES,
    "mamo-book": ("mamo", {}),  # MAMO's defaults: personalised θ_u and M_{u,I}, every layer but the tables local
    "mamo-authors-gathered": ("mamo", {**TINY_MAMO_AUTHORS, "gather": True}),
    "mamo-authors-fused": ("mamo", {**TINY_MAMO_AUTHORS, "fused": True}),
    "maml-per-item-gathered": ("maml", {"local_update": "per-item", "gather": True}),
}


def _factored_learner(case: str, first_order: bool) -> MetaLearner:
    method, extra = {**FACTORED_CASES, **BATCHED_CASES}[case]
    extra = dict(extra)
    gather, fused = extra.pop("gather", False), extra.pop("fused", False)
    common = {"inner_steps": 3, "local_lr": 0.1, "first_order": first_order}
    torch.manual_seed(0)
    if method == "mamo":
        learner = build_learner("mamo", SPEC, overrides={"embed_dim": 4, **common, **extra})
        learner.fused_memory_write = fused
    else:
        learner = tiny_learner(method, **common, **extra)
    learner.gather_rows = gather
    return learner


@pytest.mark.parametrize("path", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [True, False], ids=["first", "second"])
@pytest.mark.parametrize("case", list(FACTORED_CASES))
def test_factored_updates_equal_the_plain_path(float64, case, first_order, path):
    """``factored_updates``: the same query losses, meta-gradients (Eq. 12), aux, predictions and meta-step."""
    learner = _factored_learner(case, first_order)
    batch = tiny_batch(SPEC, n_users=4, masks="ragged", seed=31)
    twin = copy.deepcopy(learner)  # stays on the plain path (the comparison below does not change the weights)
    plain, plain_pred = _option_equals_plain_path(learner, "factored_updates", batch, path, steps=(None, 0, 2),
                                                  atol=1e-12)
    assert any(v.abs().sum() > 0 for v in plain[0].values())  # not a comparison of zeros
    if learner.model.config.head == "regression":  # adaptation moves the predictions: the factors are applied
        assert not torch.allclose(plain_pred[0], plain_pred[1])
    # a whole meta-step: the same memories and global parameters afterwards
    meta_step(learner, batch, make_optimizer(learner), path=path)
    meta_step(twin, batch, make_optimizer(twin), path=path)
    for (n, p), (_, q) in zip(learner.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=n)
    for k, v in learner.memory_state().items():
        torch.testing.assert_close(v, twin.memory_state()[k], rtol=1e-10, atol=1e-12, msg=k)


def test_factored_adapted_weight_is_the_dense_one_by_hand(float64):
    """Two SGD steps on one layer, by hand: ``θ̂ = θ_0 − ρ Σ_j Δ_jᵀ X_j`` equals the dense update of Eq. 11."""
    from mamo_lite.meta import factored

    learner = tiny_learner("maml", inner_steps=2, local_lr=0.3)
    params = {n: p.detach() for n, p in learner.params().items()}
    task = tiny_batch(SPEC, n_users=1, seed=32).task(0)
    dense_fast = adapt(learner, params, dict(params), task)
    kept, factors = factored.adapt(learner.model, params, dict(params), [task], steps=2, lr=0.3, first_order=True)
    assert set(factors) == set(factored.linear_layers(learner.model))
    for layer, (x_all, d_all) in factors.items():
        rows = 1 if layer.startswith("user_tower") else task["support_y"].shape[0]
        assert x_all.shape[0] == d_all.shape[0] == 2 * rows  # one (X, Δ) per step, rows stacked
        torch.testing.assert_close(kept[f"{layer}.weight"], params[f"{layer}.weight"])  # θ_0 untouched
    full = factored.materialise(kept, factors, 0.3, list(dense_fast))
    for n in dense_fast:
        torch.testing.assert_close(full[n], dense_fast[n], rtol=1e-10, atol=1e-12, msg=n)


def test_factored_updates_refuse_another_recommender():
    from mamo_lite.meta import factored

    with pytest.raises(TypeError, match="factored_updates needs an EmbeddingRecommender"):
        factored.check_model(torch.nn.Linear(2, 2))


# -- batched users (mamo_lite.meta.batched) -----------------------------------------------------------

BATCHED_CASES = {"mamo-authors-per-item": ("mamo", {**TINY_MAMO_AUTHORS, "local_update": "per-item"}),
                 "mamo-book-fused": ("mamo", {"fused": True})}  # θ_u as a Mixture, Eq. 6's gradients LowRank


@pytest.mark.parametrize("layers", ["dense", "factored", "chosen"])
@pytest.mark.parametrize("first_order", [True, False], ids=["first", "second"])
@pytest.mark.parametrize("case", [*FACTORED_CASES, *BATCHED_CASES])
def test_batched_users_equal_the_plain_path(float64, monkeypatch, case, first_order, layers):
    """``batched_users``: the same query losses, meta-gradients (Eq. 12), aux (memory writes), predictions, and two
    whole meta-steps (first order updates the adapted weights in place: the second step would see any damage);
    with every local layer a dense per-user weight, every one in factored form, and the package's choice (then with
    the batch split over two threads, ``batched_threads``)."""
    from mamo_lite.meta import batched

    rank = {"dense": 0.0, "factored": 1e9, "chosen": batched.FACTOR_RANK}[layers]
    monkeypatch.setattr(batched, "FACTOR_RANK", rank)
    learner = _factored_learner(case, first_order)
    learner.batched_threads = 2 if layers == "chosen" else 1
    batch = tiny_batch(SPEC, n_users=4, masks="ragged", seed=33)
    twin = copy.deepcopy(learner)
    before = {n: p.detach().clone() for n, p in learner.params().items()}
    plain, plain_pred = _option_equals_plain_path(learner, "batched_users", batch, "vmap", steps=(None, 0, 2),
                                                  atol=1e-12)
    for n, p in learner.params().items():  # functional: nothing was modified
        assert torch.equal(p, before[n]), n
    assert any(v.abs().sum() > 0 for v in plain[0].values())  # not a comparison of zeros
    if learner.model.config.head == "regression":
        assert not torch.allclose(plain_pred[0], plain_pred[1])  # adaptation moves the predictions
    opt, twin_opt = make_optimizer(learner), make_optimizer(twin)
    for _ in range(2):
        meta_step(learner, batch, opt)
        meta_step(twin, batch, twin_opt)
    for (n, p), (_, q) in zip(learner.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=n)
    for k, v in learner.memory_state().items():
        torch.testing.assert_close(v, twin.memory_state()[k], rtol=1e-10, atol=1e-12, msg=k)


def test_batched_users_run_through_the_batched_module_only_on_the_vmap_path(monkeypatch):
    from mamo_lite.meta import batched

    calls = []
    real = batched.adapt
    monkeypatch.setattr(batched, "adapt", lambda *a, **k: calls.append(1) or real(*a, **k))
    learner = tiny_learner("maml").use_fast_paths()
    assert learner.batched_users and batched.applies(learner)
    assert learner.config.inner_steps == 1 and learner.batched_threads == 1  # one light step: not split
    heavy = tiny_learner("maml", inner_steps=3).use_fast_paths()
    assert heavy.batched_threads == torch.get_num_threads()  # one group of users per intra-op thread
    assert tiny_learner("maml", first_order=False).use_fast_paths().batched_threads == torch.get_num_threads()
    assert heavy.use_fast_paths(False).batched_threads == 1
    batch = tiny_batch(SPEC, n_users=3, seed=34)
    meta_gradient(learner, batch, path="loop")
    predict(learner, batch, path="loop")
    assert not calls  # the loop stays the reference
    meta_gradient(learner, batch, path="vmap")
    predict(learner, batch, path="vmap")
    assert len(calls) == 2


@pytest.mark.parametrize("method", ["s2meta", "greatmeta"])
def test_batched_users_leave_methods_with_their_own_algorithm_alone(method):
    from mamo_lite.meta import batched

    learner = build_learner(method, SPEC)
    assert not batched.applies(learner)


def test_batched_layers_take_the_cheaper_form():
    """A layer stays in factored form when its final rank r keeps r·(in + out) ≤ FACTOR_RANK·in·out: MAML's one
    step on 15 support rows keeps the 400×200 item layer factored, MAMO's authors' nine steps make it dense."""
    from mamo_lite.meta import batched

    w = torch.zeros(200, 400)
    assert batched._factored(15, w) and not batched._factored(135, w)
    assert batched._factored(9, torch.zeros(150, 300))  # the user tower: one row per step
    assert not batched._factored(15, torch.zeros(1, 100))  # a regression output layer: dense is cheaper


def test_batched_building_blocks_equal_their_per_user_forms(float64):
    """Per-user tables, weights and losses with a leading user dimension equal the per-user computations."""
    from mamo_lite.meta.factored import apply_linear
    from mamo_lite.models.recommender import lookup, rating_loss

    gen = torch.Generator().manual_seed(35)
    tables = torch.randn(3, 5, 2, generator=gen)
    idx = torch.randint(0, 5, (3, 4, 2), generator=gen)
    torch.testing.assert_close(lookup(idx, tables), torch.stack([F.embedding(idx[b], tables[b]) for b in range(3)]))
    shared = tables[0]
    torch.testing.assert_close(lookup(idx, shared), F.embedding(idx, shared))
    w, b = torch.randn(3, 4, 6, generator=gen), torch.randn(3, 4, generator=gen)
    z = torch.randn(3, 7, 6, generator=gen)
    torch.testing.assert_close(apply_linear(z, w, b), torch.stack([F.linear(z[u], w[u], b[u]) for u in range(3)]))
    torch.testing.assert_close(apply_linear(z[:, 0], w, None), torch.stack([F.linear(z[u, 0], w[u]) for u in range(3)]))
    torch.testing.assert_close(apply_linear(z, w[0], b), torch.stack([F.linear(z[u], w[0], b[u]) for u in range(3)]))
    out, y = torch.randn(3, 4, 5, generator=gen), torch.randint(1, 6, (3, 4), generator=gen).double()
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    for head, o in (("regression", out[..., 0]), ("classification", out)):
        per_user = rating_loss(o, y, mask, head=head, rating_min=1.0, per_user=True)
        one_by_one = torch.stack([rating_loss(o[u], y[u], mask[u], head=head, rating_min=1.0) for u in range(3)])
        torch.testing.assert_close(per_user, one_by_one)
    assert per_user[2] == 0  # a user without ratings: zero, not NaN


def test_mixture_and_low_rank_equal_their_dense_matrices(float64):
    """The batched path's factored per-user matrices by hand: a :class:`Mixture` applied to inputs equals its dense
    matrices applied user by user, and a :class:`LowRank`'s dense form, user-weighted sum (Eqs. 6 and 8's writes),
    detach and concatenation equal the dense computations, for every kind of base."""
    from mamo_lite.meta.factored import LowRank, Mixture, apply_linear
    from mamo_lite.methods.memories import attentive_write_sequence

    gen = torch.Generator().manual_seed(36)
    phi, slots, a = torch.randn(4, 6, generator=gen), torch.randn(3, 4, 6, generator=gen), torch.rand(5, 3, generator=gen)
    mix = Mixture.of(phi, -0.1 * a, slots)  # MAMO's θ_u = φ_u − τ Σ_k a_uk M_U[k] (Eqs. 4, 9)
    by_hand = torch.stack([phi - 0.1 * sum(a[u, k] * slots[k] for k in range(3)) for u in range(5)])
    torch.testing.assert_close(mix.dense(), by_hand)
    assert mix.shape == (4, 6)
    z, b = torch.randn(5, 7, 6, generator=gen), torch.randn(5, 4, generator=gen)
    torch.testing.assert_close(apply_linear(z, mix, b), torch.stack([F.linear(z[u], by_hand[u], b[u]) for u in range(5)]))
    torch.testing.assert_close(apply_linear(z[:, 0], mix, None), torch.stack([by_hand[u] @ z[u, 0] for u in range(5)]))
    with pytest.raises(ValueError, match=r"coef \[B, S\] and slots \[S, out, in\]"):
        Mixture(a, slots[:2])

    left, right = torch.randn(5, 2, 4, generator=gen), torch.randn(5, 2, 6, generator=gen)
    outer = torch.stack([left[u].mT @ right[u] for u in range(5)])
    w = torch.rand(5, 3, generator=gen)
    for base, dense_base in ((None, torch.zeros(5, 4, 6)), (phi, phi.expand(5, 4, 6)), (by_hand, by_hand),
                             (Mixture(a, slots), Mixture(a, slots).dense())):
        lr = LowRank(left, right, base)
        full = dense_base + outer
        torch.testing.assert_close(lr.dense(), full)
        torch.testing.assert_close(lr.weighted_sum(w), torch.einsum("uk,uoi->koi", w, full))
        torch.testing.assert_close(lr.detach().dense(), full)
        if not isinstance(base, Mixture):  # (mixtures: below)
            halves = [base if base is None or base.dim() == 2 else base[i] for i in (slice(0, 2), slice(2, 5))]
            joined = LowRank.cat([LowRank(left[:2], right[:2], halves[0]), LowRank(left[2:], right[2:], halves[1])])
            torch.testing.assert_close(joined.dense(), full)
        memory = torch.randn(3, 4, 6, generator=gen)  # the write of Eqs. 6/8 sums the factors without forming them
        torch.testing.assert_close(attentive_write_sequence(memory, w, lr, 0.3),
                                   attentive_write_sequence(memory, w, full, 0.3))
    mixed = [LowRank(left[:2], right[:2], Mixture(a[:2], slots)), LowRank(left[2:], right[2:], Mixture(a[2:], slots))]
    torch.testing.assert_close(LowRank.cat(mixed).dense(), Mixture(a, slots).dense() + outer)
    with pytest.raises(ValueError, match=r"left \[B, r, out\] and right \[B, r, in\]"):
        LowRank(left, right[:, :1])


def test_batch_hooks_default_to_the_per_user_ones():
    """``init_fast_batch`` / ``user_aux_batch``: θ ← φ and no aux for the engine's own hooks; ``None`` (the batched
    path then maps the per-user hook with ``vmap``) for a learner that overrides the per-user hook."""

    class Custom(MetaLearner):
        def init_fast(self, params, memories, task):
            return super().init_fast(params, memories, task)

        def user_aux(self, params, fast, context, task):
            return {}

    maml = tiny_learner("maml")
    params = {n: p.detach() for n, p in maml.params().items()}
    fast, context = maml.init_fast_batch(params, {}, {})
    assert context == {} and all(fast[n] is params[n] for n in maml.local_names())
    assert maml.user_aux_batch(params, {}, {}, {}) == {}
    custom = Custom(maml.model, maml.config)
    assert custom.init_fast_batch(params, {}, {}) is None and custom.user_aux_batch(params, {}, {}, {}) is None


def test_mamo_batched_path_keeps_its_per_user_matrices_factored(float64, monkeypatch):
    """With the fast paths, MAMO's batched meta-gradient returns Eq. 6's gradients and Eq. 8's adapted M_{u,I}
    (its layer in factored form) as factors that the writes sum without forming [B, out, in], equal to the
    reference path's dense tensors."""
    from mamo_lite.meta import batched
    from mamo_lite.meta.factored import LowRank

    monkeypatch.setattr(batched, "FACTOR_RANK", 1e9)  # the tiny network's layers would otherwise be dense

    learner = _factored_learner("mamo-book-fused", True)
    batch = tiny_batch(SPEC, n_users=4, seed=37)
    _, _, plain = meta_gradient(learner, batch, path="loop", with_aux=True)
    learner.use_fast_paths()
    _, _, aux = meta_gradient(learner, batch, path="vmap", with_aux=True)
    weights = [k for k in aux if k.startswith("gradient:") and k.endswith(".weight")]
    assert weights and all(isinstance(aux[k], LowRank) for k in [*weights, "preference"])
    for k, v in aux.items():
        torch.testing.assert_close(_dense(v), plain[k], rtol=1e-10, atol=1e-12, msg=k)


def test_batched_gather_keeps_each_distinct_row_once(float64):
    """The batched gather: per user, one fast row per distinct index (padded to the batch's largest count, index 0
    first), and the recommender reads the same values through it as through the whole tables."""
    from mamo_lite.meta import batched
    from mamo_lite.meta.engine import _embedding_sites, _site
    from mamo_lite.meta.factored import forward

    learner = tiny_learner("maml")
    params = {n: p.detach() for n, p in learner.params().items()}
    inputs = tiny_batch(SPEC, n_users=3, masks="ragged", seed=36).inputs()
    fast = {n: params[n] for n in learner.local_names()}
    rows, task = batched.gather_rows(learner.model, fast, inputs)
    for name, sites in _embedding_sites(learner.model):
        touched = [torch.cat([torch.zeros(1, dtype=torch.long)] + [_site(inputs, s)[b].reshape(-1) for s in sites])
                   for b in range(3)]
        assert rows[name].shape[:2] == (3, max(len(t.unique()) for t in touched))
        for b in range(3):
            distinct = len(touched[b].unique())
            torch.testing.assert_close(rows[name][b, :distinct], params[name][touched[b].unique()])
    with_rows = forward(learner.model, {**params, **rows}, {}, 0.0, task["user_x"], task["query_x"])
    torch.testing.assert_close(with_rows, learner.model(inputs["user_x"], inputs["query_x"]))
