"""The CUDA path (marker ``gpu``): the same maths as on the CPU, within a stated tolerance.

Skipped with one line where torch sees no CUDA GPU (the CPU-only CI, most laptops). The book's replay
always runs on the CPU (``$MAMO_LITE_DEVICE=cpu``); these tests are what checks the GPU. Tolerances: a
single meta-gradient or prediction agrees to 1e-4 (float32, different kernels and reduction orders); a
short training run's validation MAE to 0.02 (rounding differences grow over the meta-updates, as between
two CPUs; see book/reproducing.md).
"""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_batch, tiny_learner, tiny_spec

from mamo_lite.checkpoint import load_checkpoint, save_checkpoint
from mamo_lite.meta import meta_gradient, predict
from mamo_lite.methods import build_learner
from mamo_lite.train import fit

pytestmark = pytest.mark.gpu

SPEC = tiny_spec()
TINY_MAMO = {"embed_dim": 3, "field_dim": 2, "tower_layers": 1, "decision_hidden": (4,), "preference": "paper"}


def _learner(method: str, **overrides):
    if method == "mamo":
        torch.manual_seed(0)
        return build_learner("mamo", SPEC, overrides={**TINY_MAMO, **overrides})
    return tiny_learner(method, **overrides)


@pytest.mark.parametrize("method", ["maml", "melu", "mamo"])
def test_meta_gradient_on_cuda_equals_cpu(method):
    learner = _learner(method, inner_steps=2, local_lr=0.05)
    batch = tiny_batch(SPEC, n_users=6, masks="ragged", seed=1)
    g_cpu, l_cpu, _ = meta_gradient(learner, batch)
    learner.to("cuda")
    g_gpu, l_gpu, _ = meta_gradient(learner, batch.to("cuda"))
    torch.testing.assert_close(l_gpu.cpu(), l_cpu, rtol=0, atol=1e-4)
    torch.testing.assert_close({k: v.cpu() for k, v in g_gpu.items()}, g_cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["maml", "mamo"])
def test_fast_paths_on_cuda_equal_the_cpu_reference(method):
    """``use_fast_paths()`` on CUDA (the batched path, in one group: no thread split on a GPU) against the CPU's
    reference path: meta-gradients, memory writes and predictions."""
    learner = _learner(method, inner_steps=2, local_lr=0.05)
    batch = tiny_batch(SPEC, n_users=6, masks="ragged", seed=3)
    g_cpu, l_cpu, aux_cpu = meta_gradient(learner, batch, with_aux=True)
    p_cpu = predict(learner, batch)
    learner.use_fast_paths().to("cuda")
    g_gpu, l_gpu, aux_gpu = meta_gradient(learner, batch.to("cuda"), with_aux=True)
    torch.testing.assert_close(l_gpu.cpu(), l_cpu, rtol=0, atol=1e-4)
    torch.testing.assert_close({k: v.cpu() for k, v in g_gpu.items()}, g_cpu, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close({k: v.cpu() for k, v in aux_gpu.items()}, aux_cpu, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(predict(learner, batch.to("cuda")).cpu(), p_cpu, rtol=0, atol=1e-4)


def test_predict_on_cuda_equals_cpu():
    learner = tiny_learner("maml", inner_steps=3, local_lr=0.05)
    batch = tiny_batch(SPEC, n_users=8, masks="ragged", seed=2)
    cpu = predict(learner, batch)
    gpu = predict(learner.to("cuda"), batch.to("cuda")).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-4)


def test_training_on_cuda_matches_cpu_within_tolerance():
    data = {"train": tiny_batch(SPEC, n_users=48, n_support=5, n_query=3, seed=1, masks="ragged"),
            "val": tiny_batch(SPEC, n_users=16, n_support=5, n_query=3, seed=2)}
    results = {}
    for device in ("cpu", "cuda"):
        learner = tiny_learner("maml", local_lr=0.05, global_lr=0.01, users_per_batch=8)
        results[device] = fit(learner, data, epochs=3, seed=0, device=device, progress=False)
    assert not results["cuda"].diverged
    assert abs(results["cuda"].best_val["MAE"] - results["cpu"].best_val["MAE"]) < 0.02


def test_a_cuda_checkpoint_loads_on_the_cpu(tmp_path):
    learner = _learner("mamo").to("cuda")
    path = save_checkpoint(tmp_path / "c.pt", learner, method="mamo", dataset="tiny", epoch=1, history=None,
                           data_provenance=None, seed=0)
    loaded, _ = load_checkpoint(path, device="cpu")
    for k, v in learner.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.cpu()), k
