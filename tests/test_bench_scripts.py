"""The benchmark scripts that need hardware this machine may lack fail clearly instead of half-running."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: bench/gpu.sh would run for real")
def test_gpu_script_stops_at_once_without_cuda(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "gpu"), "HOME": str(tmp_path)},
                         check=False)
    assert run.returncode == 3, run.stderr
    assert "sees no CUDA GPU" in run.stderr and "nothing was measured" in run.stderr
    assert not (tmp_path / "gpu").exists()  # nothing half-written
