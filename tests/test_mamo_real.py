"""MAMO learns on real MovieLens-1M (the available part, ../shared/data): a short CPU run.

Paper settings (appendix A.3: ρ 0.01, SGD λ 0.05, α .5, β .05, γ .1, τ .1, K 3), 600 training users,
2 epochs. The learner must beat the global mean on the test users, overall and on cold users with
warm items (C-W). The paper's further claim — better than a non-meta DNN on C-W — does not hold in
this short run (chapters 3-4 explain why: the preference memory is never trained by
back-propagation); it is recorded as a strict xfail so that the test fails loudly if it ever does.
"""

import os
from pathlib import Path

import pytest
import torch

from mamo_lite.data import load
from mamo_lite.evaluate import scenario_metrics
from mamo_lite.methods import build_learner
from mamo_lite.methods.baselines import finetune_predict, global_mean, train_plain
from mamo_lite.models import EmbeddingRecommender, RecommenderConfig
from mamo_lite.train import evaluate_learner, fit, subset_users

DATA = os.environ.get("MAMO_LITE_DATA")
pytestmark = pytest.mark.skipif(not DATA or not (Path(DATA) / "ml-1m" / "ratings.dat").exists(),
                                reason="needs MovieLens-1M under MAMO_LITE_DATA (e.g. ../shared/data)")
USERS, EPOCHS = 600, 2


@pytest.fixture(scope="module")
def runs():
    data = load("movielens-1m")
    test = data.tasks("test")

    def mae(table):
        t = table[table.metric == "MAE"].set_index("scenario").value
        return {k: float(v) for k, v in t.items()}

    torch.manual_seed(0)
    mamo = build_learner("mamo", data.spec)
    fit(mamo, data, epochs=EPOCHS, seed=0, device="cpu", max_train_users=USERS, progress=False)
    out = {"mamo": mae(evaluate_learner(mamo, test, method="mamo", dataset="ml", seed=0)),
           "global": mae(scenario_metrics(global_mean(data.tasks("train"), test), test, method="global",
                                          dataset="ml", seed=0, rating_range=data.spec))}
    torch.manual_seed(0)
    dnn = EmbeddingRecommender(data.spec, RecommenderConfig())
    train_plain(dnn, subset_users(data.tasks("train"), USERS, 0), epochs=EPOCHS, seed=0, device="cpu",
                progress=False)
    for steps in (0, 5):
        pred = finetune_predict(dnn, test, steps, 0.01)
        out[f"dnn+{steps}"] = mae(scenario_metrics(pred, test, method="dnn", dataset="ml", seed=0,
                                                   rating_range=data.spec))
    return out


def test_mamo_beats_the_global_mean_overall_and_on_cold_users(runs):
    assert runs["mamo"]["all"] < runs["global"]["all"]
    assert runs["mamo"]["C-W"] < runs["global"]["C-W"]
    assert runs["mamo"]["C-C"] < runs["global"]["C-C"]


@pytest.mark.xfail(strict=True, reason="does not reproduce in a short CPU run: the plain DNN (with or "
                   "without 5 fine-tuning steps) has a lower C-W MAE than paper-configured MAMO")
def test_mamo_beats_the_non_meta_dnn_on_cold_users(runs):
    assert runs["mamo"]["C-W"] < min(runs["dnn+0"]["C-W"], runs["dnn+5"]["C-W"])
