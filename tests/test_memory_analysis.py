"""Chapter-4 memory diagnostics (``mamo_lite.analysis``) checked by hand on tiny MAMO learners."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_NETS, tiny_batch, tiny_spec

from mamo_lite.analysis import (
    MemoryTracker,
    attention_entropy,
    memory_change,
    memory_snapshot,
    memory_table,
    memory_trajectory,
    profile_slot_similarity,
    representative_users,
    slot_type_table,
)
from mamo_lite.methods import build_learner
from mamo_lite.methods.memories import attention
from mamo_lite.train import fit


def tiny_mamo(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    net = {**TINY_NETS["maml"], "preference": "paper"}
    return build_learner("mamo", tiny_spec(), overrides={**net, "users_per_batch": 2, **overrides})


def clone_memories(learner):
    return {k: v.detach().clone() for k, v in learner.memory_state().items()}


# -- attention entropy -------------------------------------------------------------------------------

def test_attention_entropy_by_hand():
    a = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    expected = torch.tensor([math.log(3), 0.0, math.log(2)], dtype=torch.float64)
    torch.testing.assert_close(attention_entropy(a), expected)


# -- snapshots and changes ---------------------------------------------------------------------------

def test_memory_snapshot_norms_cosine_and_attention_by_hand():
    learner = tiny_mamo()
    d_u = learner.profile_memory.shape[1]
    mp = torch.zeros(3, d_u)
    mp[0, 0], mp[1, 1], mp[2, 0], mp[2, 1] = 1.0, 1.0, 1.0, 1.0  # pairwise cosines 0, 1/√2, 1/√2
    learner.profile_memory.copy_(mp)
    batch = tiny_batch(tiny_spec(), n_users=4, seed=3)
    snap = memory_snapshot(learner, batch)

    assert snap["norm M_P"] == pytest.approx(2.0)  # sqrt(1 + 1 + 2)
    m_u = learner.gradient_memory_dict().values()
    assert snap["norm M_U"] == pytest.approx(math.sqrt(sum(float(t.pow(2).sum()) for t in m_u)), rel=1e-6)
    assert snap["norm M_{U,I}"] == pytest.approx(float(torch.linalg.norm(learner.preference_memory)), rel=1e-6)
    assert snap["M_P slot cosine"] == pytest.approx(2 / 3 * 2**-0.5)

    p_u = learner.model.user_profile_vector(batch.user_x).detach()
    a = attention(p_u, mp)  # Eq. 3 by the package's read, independently of attention_of
    h = -(a * a.log()).sum(1)
    assert snap["attention entropy"] == pytest.approx(float(h.mean()), rel=1e-5)
    assert snap["attention entropy / log K"] == pytest.approx(float(h.mean()) / math.log(3), rel=1e-5)
    assert snap["max attention"] == pytest.approx(float(a.max(1).values.mean()), rel=1e-5)
    assert "attention entropy" not in memory_snapshot(learner)  # no batch, no attention


def test_memory_snapshot_without_preference_memory_and_single_slot():
    learner = tiny_mamo(n_memory=1, use_preference=False)
    snap = memory_snapshot(learner, tiny_batch(tiny_spec(), n_users=2))
    assert "norm M_{U,I}" not in snap
    assert math.isnan(snap["M_P slot cosine"]) and math.isnan(snap["attention entropy / log K"])
    assert snap["attention entropy"] == pytest.approx(0.0) and snap["max attention"] == pytest.approx(1.0)


def test_memory_change_by_hand():
    before = {"profile": torch.ones(2, 2), "gradient:a": torch.tensor([3.0, 0.0]),
              "gradient:b": torch.tensor([4.0])}
    after = {"profile": 3 * torch.ones(2, 2), "gradient:a": torch.tensor([3.0, 5.0]),
             "gradient:b": torch.tensor([4.0])}
    # M_P: ||2·1|| / ||1|| = 2;  M_U: ||(0, 5, 0)|| / ||(3, 0, 4)|| = 1
    assert memory_change(before, after) == pytest.approx({"M_P": 2.0, "M_U": 1.0})


def test_memory_table_lists_every_buffer_with_its_rate():
    learner = tiny_mamo(beta=0.2)
    table = memory_table(learner)
    state = learner.memory_state()
    assert table["memory"].tolist() == list(state)
    assert table["shape"].tolist() == [tuple(t.shape) for t in state.values()]
    assert table["values"].sum() == sum(t.numel() for t in state.values())
    assert set(table.loc[table["symbol"] == "M_U", "rate"]) == {"beta = 0.2"}
    assert table.loc[table["memory"] == "preference", "write"].item() == "Eq. 8"


# -- the fit callback --------------------------------------------------------------------------------

def test_memory_tracker_records_relative_change_between_epochs():
    learner = tiny_mamo()
    batch = tiny_batch(tiny_spec(), n_users=6, seed=1)
    states = [clone_memories(learner)]
    tracker = MemoryTracker(learner, batch=batch)

    def both(epoch, metrics, lrn):
        states.append(clone_memories(lrn))
        return tracker(epoch, metrics, lrn)

    result = fit(learner, batch, epochs=2, seed=0, val=False, progress=False, callback=both)
    assert result.epochs_run == 2 and not result.stopped_early  # the tracker never stops training
    h = tracker.history
    assert list(h.columns) == ["epoch", "memory", "metric", "value"]
    assert sorted(h["epoch"].unique()) == [0, 1, 2]
    change = h[h["metric"] == "relative change"]
    assert 0 not in set(change["epoch"])  # nothing to compare with before training
    for epoch in (1, 2):
        expected = memory_change(states[epoch - 1], states[epoch])
        got = change[change["epoch"] == epoch].set_index("memory")["value"].to_dict()
        assert got == pytest.approx(expected)
        assert all(v > 0 for v in got.values())  # every memory was written
    norms = h[(h["metric"] == "norm") & (h["epoch"] == 2)].set_index("memory")["value"]
    assert norms["M_P"] == pytest.approx(float(torch.linalg.norm(states[2]["profile"])))
    assert set(h.loc[h["metric"] == "attention entropy", "memory"]) == {"M_P"}


def test_memory_trajectory_follows_the_first_epoch_of_fit():
    batch = tiny_batch(tiny_spec(), n_users=5, seed=2)
    a, b = tiny_mamo(seed=4), tiny_mamo(seed=4)
    start = memory_snapshot(a, batch)
    traj = memory_trajectory(a, batch, n_batches=3, seed=7, probe=batch)  # 5 users, 2 per batch
    fit(b, batch, epochs=1, seed=7, val=False, progress=False)
    assert traj["step"].tolist() == [0, 1, 2, 3] and traj["users"].tolist() == [0, 2, 4, 5]
    assert traj.iloc[0].drop(["step", "users"]).to_dict() == pytest.approx(start)
    for k, v in b.memory_state().items():
        torch.testing.assert_close(a.memory_state()[k], v)
    for k, v in b.state_dict().items():
        torch.testing.assert_close(a.state_dict()[k], v)
    assert len(memory_trajectory(tiny_mamo(), batch, n_batches=1)) == 2


# -- Fig. 5b -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("exclusive", [True, False])
def test_representative_users_rank_by_cosine_to_each_slot(exclusive):
    learner = tiny_mamo(n_memory=2)
    batch = tiny_batch(tiny_spec(), n_users=9, seed=5)
    cos = profile_slot_similarity(learner, batch)
    p_u = learner.model.user_profile_vector(batch.user_x).detach()
    by_hand = torch.stack([torch.nn.functional.cosine_similarity(p_u, m[None], dim=1)
                           for m in learner.profile_memory], 1)
    torch.testing.assert_close(cos, by_hand)

    profiles = pd.DataFrame({"user": batch.user_ids.numpy() + 0, "gender": list("MFMFMFMFM")})
    rep = representative_users(learner, batch, top=3, profiles=profiles, exclusive=exclusive)
    assert list(rep.columns) == ["slot", "rank", "user", "cosine", "attention", "gender"]
    row_of = {int(u): i for i, u in enumerate(batch.user_ids)}
    attn = learner.attention_of(batch)
    for k, part in rep.groupby("slot"):
        rows = [row_of[u] for u in part["user"]]
        assert part["rank"].tolist() == list(range(1, len(part) + 1))
        np.testing.assert_allclose(part["cosine"], cos[rows, k - 1].double().numpy(), rtol=1e-6)
        np.testing.assert_allclose(part["attention"], attn[rows, k - 1].double().numpy(), rtol=1e-5)
        assert part["cosine"].is_monotonic_decreasing
        candidates = [i for i in range(9) if not exclusive or int(cos[i].argmax()) == k - 1]
        best = sorted(candidates, key=lambda i: -float(cos[i, k - 1]))[:3]
        assert rows == best
        assert part["gender"].tolist() == [profiles["gender"][i] for i in rows]
    if exclusive:
        assert rep["user"].is_unique
    else:
        assert len(rep) == 6


# -- slots against planted types ---------------------------------------------------------------------

def test_slot_type_table_by_hand():
    attn = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.7, 0.2, 0.1],
                         [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.4, 0.2, 0.4001]])
    types = np.array([0, 0, 1, 1, 1, 1])
    t = slot_type_table(attn, types)
    assert t.index.tolist() == ["slot 1", "slot 2", "slot 3", "all"]
    assert t[["type 0", "type 1"]].to_numpy().tolist() == [[2, 1], [0, 2], [0, 1], [2, 4]]
    assert t["users"].tolist() == [3, 2, 1, 6]
    np.testing.assert_allclose(t["purity"], [2 / 3, 1.0, 1.0, 5 / 6])


def test_slot_type_table_unused_slot_and_collapsed_attention():
    uniform = torch.full((4, 3), 1 / 3)  # a collapsed memory: argmax ties all go to slot 1
    t = slot_type_table(uniform, pd.Series([2, 2, 5, 2]))
    assert t.loc["slot 1", "users"] == 4 and t.loc["slot 2", "users"] == 0
    assert math.isnan(t.loc["slot 2", "purity"])
    assert t.loc["all", "purity"] == pytest.approx(0.75)  # the largest type's share
    with pytest.raises(ValueError, match="one type per user"):
        slot_type_table(uniform, [0, 1])
