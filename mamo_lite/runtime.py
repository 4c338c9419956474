"""Process-level settings that decide how fast and how reproducibly torch runs on a CPU.

Two things are set through the environment, and they only take effect if they are set **before torch
is imported** (OpenMP and the kernel dispatcher read them once, at load time):

* :data:`THREAD_ENV`: ``OMP_WAIT_POLICY=PASSIVE``. With OpenMP's default (active) wait policy, idle
  worker threads spin; on a 2-vCPU virtual machine (Colab's CPU runtime, this project's CI) they
  compete with the thread doing the work, and single meta-steps stall for up to seconds at random.
* :data:`PINNED_ENV`: the settings under which the book's committed outputs are produced and replayed.
  A float result depends on which kernels run: the CPU's vector width decides how ATen's reductions and
  MKL's matrix products group their additions, so an AVX-512 Intel Xeon and an AVX2 AMD EPYC round
  differently, and after a few hundred meta-updates a trained MAE differs in the third decimal. Pinning
  the kernels to the baseline x86-64 paths (``ATEN_CPU_CAPABILITY=default``, MKL's conditional numerical
  reproducibility mode ``MKL_CBWR=COMPATIBLE``, oneDNN capped at SSE4.1) and the thread count to 2 makes
  the arithmetic the same on every x86-64 CPU, at some cost in speed. The book's replay compares trained
  numbers within a stated tolerance as well (see ``book/reproducing.md``), because pinning is a
  best effort: a BLAS or libm that ignores these settings would still round differently.

Importing :mod:`mamo_lite` applies :data:`THREAD_ENV` (without overriding a value the user set), so the
command line and every script that imports the package before torch get it; a notebook gets it from its
first cell. The test suite's notebook replay and ``.ci/regenerate`` apply :data:`PINNED_ENV` to the
kernels they start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["PINNED_ENV", "THREAD_ENV", "apply_env", "pinned_env_active"]

THREAD_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
"""OpenMP's passive wait policy, applied when :mod:`mamo_lite` is imported (see the module docstring)."""

PINNED_ENV: dict[str, str] = {
    **THREAD_ENV,
    "ATEN_CPU_CAPABILITY": "default",  # ATen's baseline kernels instead of its AVX2/AVX-512 variants
    "MKL_CBWR": "COMPATIBLE",  # MKL's code path that gives the same results on any x86-64 CPU
    "ONEDNN_MAX_CPU_ISA": "SSE41",  # oneDNN's baseline instruction set
    "OMP_NUM_THREADS": "2",  # reductions are split per thread: fix the count (CI has 2 cores)
    "MKL_NUM_THREADS": "2",
    "MAMO_LITE_DEVICE": "cpu",  # DEVICE="auto" means the CPU: GPU numbers differ
}
"""The replay's settings: baseline kernels, MKL's reproducible mode, 2 threads, the CPU."""


def apply_env(settings: Mapping[str, str], *, override: bool = False) -> dict[str, str]:
    """Put ``settings`` into ``os.environ`` (keeping values already set unless ``override``).

    Returns what was changed. The thread and kernel settings take effect only in processes that import
    torch afterwards: this one if torch is not loaded yet, and any child process.
    """
    changed = {k: v for k, v in settings.items() if override or k not in os.environ}
    os.environ.update(changed)
    return changed


def pinned_env_active() -> bool:
    """Whether this process runs under :data:`PINNED_ENV` (the book's replay settings)."""
    return all(os.environ.get(k) == v for k, v in PINNED_ENV.items())
