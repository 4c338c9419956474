"""The embedding recommender of MAMO §2.2: Eq. 1 (profile embeddings, towers), Eq. 2 (preference
matrix + FC head), parameter groups, batching, the masked rating loss and config validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_batch, tiny_spec
from torch import nn
from torch.func import vmap

from mamo_lite.models.recommender import (
    GROUPS,
    EmbeddingRecommender,
    RecommenderConfig,
    prediction_from_output,
    rating_loss,
)

SPEC = tiny_spec()  # user: gender(3), age(4); item: rate(4), genre(6, multi), year(5), director(5, multi)


def make(seed: int = 0, **cfg) -> EmbeddingRecommender:
    torch.manual_seed(seed)
    base = {"embed_dim": 3, "field_dim": 2, "tower_layers": 1, "decision_hidden": (4,)}
    return EmbeddingRecommender(SPEC, RecommenderConfig(**{**base, **cfg}))


def set_weight(module: nn.Module, rows: list[list[float]]) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.tensor(rows))


# -- shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preference", ["paper", "code", "none"])
@pytest.mark.parametrize("head", ["regression", "classification"])
def test_output_shapes(head, preference):
    model = make(head=head, preference=preference)
    b = tiny_batch(SPEC, n_users=3, n_query=5)
    n_classes = 5  # ratings 1..5
    tail = () if head == "regression" else (n_classes,)
    assert model.n_classes == n_classes
    assert model(b.user_x[0], b.task(0)["query_x"]).shape == (5, *tail)
    assert model(b.user_x, b.query_x).shape == (3, 5, *tail)
    pred = model.predict(b.user_x, b.query_x)
    assert pred.shape == (3, 5) and pred.dtype == torch.get_default_dtype()


# -- Eq. 1 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_eq1_profile_vectors_by_hand(pooling):
    """p_u concatenates the field rows; a multi-valued field pools its non-zero indices' rows."""
    model = make(tower_layers=0, multi_pooling=pooling)
    set_weight(model.user_profile["gender"], [[9, 9], [1, 2], [3, -1]])
    set_weight(model.user_profile["age"], [[9, 9], [0.5, 0], [0, 4], [-2, 1]])
    set_weight(model.item_profile["rate"], [[9, 9], [1, 1], [2, 0], [0, -3]])
    set_weight(model.item_profile["genre"], [[100, 100], [1, 0], [0, 1], [2, 2], [-1, 5], [4, -4]])
    set_weight(model.item_profile["year"], [[9, 9], [1, 3], [5, 5], [7, 0], [0, 7]])
    set_weight(model.item_profile["director"], [[100, 100], [1, 2], [3, 4], [5, 6], [7, 8]])

    user_x = torch.tensor([2, 3])  # gender 2, age 3
    item_x = {
        "cat": torch.tensor([[3, 1], [1, 4]]),  # (rate, year) per item
        "genre": torch.tensor([[2, 0, 5], [0, 0, 0]]),  # item 1 has no genre at all
        "director": torch.tensor([[4, 4, 1], [0, 3, 0]]),  # a repeated index counts twice
    }
    p_u = model.user_profile_vector(user_x)
    torch.testing.assert_close(p_u, torch.tensor([3.0, -1, -2, 1]))

    if pooling == "mean":
        genre0, director0, director1 = [2.0, -1.5], [5.0, 6.0], [5.0, 6.0]
    else:
        genre0, director0, director1 = [4.0, -3.0], [15.0, 18.0], [5.0, 6.0]
    expected = torch.tensor([
        [0, -3, *genre0, 1, 3, *director0],  # rate 3, genre {2, 5}, year 1, director {4, 4, 1}
        [1, 1, 0, 0, 0, 7, *director1],  # rate 1, no genre -> zeros (not NaN), year 4, director {3}
    ])
    p_i = model.item_profile_vector(item_x)
    torch.testing.assert_close(p_i, expected)
    # tower_layers=0: e = p (MeLU's input layer)
    e_u, e_i = model.embed(user_x, item_x)
    torch.testing.assert_close(e_u, p_u)
    torch.testing.assert_close(e_i, p_i)


def test_multi_valued_padding_row_gets_no_gradient():
    model = make(tower_layers=0)
    b = tiny_batch(SPEC)
    model(b.user_x, b.query_x).sum().backward()
    assert model.item_profile["genre"].weight.grad[0].abs().max() == 0
    assert model.item_profile["genre"].weight.grad[1:].abs().max() > 0


@pytest.mark.parametrize("activation", ["leaky_relu", "relu"])
def test_eq1_towers_by_hand(activation):
    """e_u = f_θu(p_u), e_i = f_θi(p_i): two Linear+activation layers of widths d_u -> max(d, d_u/2) -> d."""
    model = make(tower_layers=2, embed_dim=3, field_dim=4, activation=activation)
    b = tiny_batch(SPEC)
    user_x, item_x = b.user_x[1], b.task(1)["query_x"]
    act = (lambda x: F.leaky_relu(x, 0.1)) if activation == "leaky_relu" else F.relu

    def tower(seq, p):
        lin1, lin2 = seq[0], seq[2]
        assert (lin1.in_features, lin1.out_features, lin2.out_features) == (p.shape[-1], p.shape[-1] // 2, 3)
        return act(act(p @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias)

    e_u, e_i = model.embed(user_x, item_x)
    torch.testing.assert_close(e_u, tower(model.user_tower, model.user_profile_vector(user_x)))
    torch.testing.assert_close(e_i, tower(model.item_tower, model.item_profile_vector(item_x)))


# -- Eq. 2 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("preference, shape", [("code", (6, 6)), ("paper", (3, 6)), ("none", None)],
                         ids=["code", "paper", "none"])
def test_eq2_by_hand(preference, shape):
    """ŷ = FC(M_{u,I} · [e_u, e_i]) with M of shape 2d×2d (code), d×2d (paper) or absent (none)."""
    d = 3
    model = make(embed_dim=d, preference=preference, decision_hidden=(4, 2))
    if shape is None:
        assert model.preference is None
        assert model.names_in(("preference",)) == []
    else:
        assert tuple(model.preference.weight.shape) == shape
        assert model.preference.bias is None
        assert model.names_in(("preference",)) == ["preference.weight"]
    b = tiny_batch(SPEC, n_query=4)
    user_x, item_x = b.user_x[2], b.task(2)["query_x"]
    e_u, e_i = model.embed(user_x, item_x)
    x = torch.cat([e_u.expand(4, d), e_i], -1)  # [e_u, e_i], user first
    if shape is not None:
        x = x @ model.preference.weight.T
    fc1, fc2 = model.decision[0], model.decision[2]
    h = F.leaky_relu(x @ fc1.weight.T + fc1.bias, 0.1)
    h = F.leaky_relu(h @ fc2.weight.T + fc2.bias, 0.1)
    y_hat = (h @ model.out.weight.T + model.out.bias).squeeze(-1)
    torch.testing.assert_close(model(user_x, item_x), y_hat)


def test_preference_matrix_acts_on_user_then_item():
    """Zeroing M's item columns leaves a prediction that depends on the user only."""
    model = make(preference="code")
    with torch.no_grad():
        model.preference.weight[:, 3:] = 0
    b = tiny_batch(SPEC, n_query=3)
    out = model(b.user_x[0], b.task(0)["query_x"])
    torch.testing.assert_close(out, out[:1].expand(3))
    with torch.no_grad():
        model.preference.weight[:, 3:] = 1
    assert not torch.allclose(model(b.user_x[0], b.task(0)["query_x"]), out)


# -- parameter groups -----------------------------------------------------------------------------

def test_parameter_groups():
    model = make(preference="paper")
    names = [n for n, _ in model.named_parameters()]
    expected = {
        "profile": [n for n in names if n.startswith(("user_profile.", "item_profile."))],
        "user": ["user_tower.0.weight", "user_tower.0.bias"],
        "item": ["item_tower.0.weight", "item_tower.0.bias"],
        "preference": ["preference.weight"],
        "decision": ["decision.0.weight", "decision.0.bias", "out.weight", "out.bias"],
    }
    assert len(expected["profile"]) == 6
    for group, members in expected.items():
        assert model.names_in((group,)) == members
        assert all(model.group_of(n) == group for n in members)
    # the groups partition the parameters, and names_in keeps registration order
    assert sorted(n for members in expected.values() for n in members) == sorted(names)
    assert model.names_in(set(GROUPS)) == names
    assert model.names_in(["decision", "user"]) == [n for n in names if n in expected["decision"] + expected["user"]]


def test_unknown_group_is_an_error():
    model = make()
    with pytest.raises(ValueError, match="bogus"):
        model.names_in(("decision", "bogus"))
    with pytest.raises((KeyError, ValueError)):
        model.group_of("not_a_module.weight")


# -- batching -------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["regression", "classification"])
def test_batched_forward_equals_per_user(head):
    model = make(head=head, preference="code")
    b = tiny_batch(SPEC, n_users=4, n_query=3, seed=3)
    batched = model(b.user_x, b.query_x)
    per_user = torch.stack([model(b.user_x[i], b.task(i)["query_x"]) for i in range(4)])
    torch.testing.assert_close(batched, per_user, rtol=0, atol=1e-6)
    torch.testing.assert_close(vmap(model)(b.user_x, b.query_x), per_user, rtol=0, atol=1e-6)
    # users really differ (the comparison is not trivially between constants)
    assert not torch.allclose(per_user[0], per_user[1])


# -- losses and predictions -----------------------------------------------------------------------

def test_rating_loss_regression_is_masked_mse():
    out = torch.tensor([[3.0, 1.0, 4.0], [2.0, 2.0, 2.0]])
    y = torch.tensor([[4.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = rating_loss(out, y, mask, head="regression", rating_min=1.0)
    torch.testing.assert_close(loss, torch.tensor((1.0 + 0.0 + 9.0) / 3))
    # changing a masked rating (or output) changes nothing; changing a real one does
    y2, out2 = y.clone(), out.clone()
    y2[0, 2], out2[1, 1] = 100.0, -50.0
    assert torch.equal(rating_loss(out2, y2, mask, head="regression", rating_min=1.0), loss)
    y2[0, 0] = 3.0
    assert rating_loss(out, y2, mask, head="regression", rating_min=1.0) != loss
    # an all-padding task has zero loss, not NaN
    empty = rating_loss(out, y, torch.zeros_like(mask), head="regression", rating_min=1.0)
    assert empty.item() == 0.0


def test_rating_loss_classification_is_cross_entropy_on_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    y = torch.tensor([[1.0, 5.0, 3.0], [2.0, 4.0, 4.0]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    loss = rating_loss(logits, y, mask, head="classification", rating_min=1.0)
    expected = F.cross_entropy(logits[mask], (y[mask] - 1).long())
    torch.testing.assert_close(loss, expected)
    by_hand = -torch.stack([logits[i, j].log_softmax(-1)[int(y[i, j]) - 1]
                            for i in range(2) for j in range(3) if mask[i, j]]).mean()
    torch.testing.assert_close(loss, by_hand)
    # not the authors' double softmax
    assert not torch.allclose(loss, F.cross_entropy(logits[mask].softmax(-1), (y[mask] - 1).long()))
    y2 = y.clone()
    y2[1, 1] = 1.0  # masked
    assert torch.equal(rating_loss(logits, y2, mask, head="classification", rating_min=1.0), loss)
    # targets are shifted by rating_min (Book-Crossing: 1..10)
    loss10 = rating_loss(logits, y + 5, mask, head="classification", rating_min=6.0)
    torch.testing.assert_close(loss10, loss)


def test_predict_classification_is_argmax_plus_rating_min():
    model = make(head="classification")
    b = tiny_batch(SPEC)
    logits = model(b.user_x, b.query_x)
    expected = logits.argmax(-1).float() + SPEC.rating_min
    torch.testing.assert_close(model.predict(b.user_x, b.query_x), expected)
    torch.testing.assert_close(prediction_from_output(logits, head="classification", rating_min=1.0), expected)
    reg = make(head="regression")
    torch.testing.assert_close(reg.predict(b.user_x, b.query_x), reg(b.user_x, b.query_x))


# -- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("embed_dim", 0), ("tower_layers", -1), ("field_dim", 0), ("preference", "matrix"), ("head", "ordinal"),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RecommenderConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("activation", "tanh"), ("multi_pooling", "max")])
def test_config_validation_activation_and_pooling(field, value):
    with pytest.raises(ValueError, match=field):
        RecommenderConfig(**{field: value})


def test_config_round_trip_and_defaults():
    cfg = RecommenderConfig(embed_dim=4, decision_hidden=(3, 2), preference="code", head="classification")
    assert RecommenderConfig.from_dict(cfg.to_dict()) == cfg
    model = EmbeddingRecommender(SPEC)  # paper defaults: d_e = 100, M ∈ R^{d×2d}
    assert tuple(model.preference.weight.shape) == (100, 200)
    assert model.decision[0].out_features == 100
