"""Small helpers every chapter and command uses: seeds, devices, versions, progress bars, atomic writes.

* :func:`seed_everything` — one call in a chapter's first cell (STYLE lesson 9).
* :func:`resolve_device` — ``"auto"`` picks CUDA, then Apple MPS, then the CPU (lesson 8).
* :func:`versions` — what produced a number: Python, torch, numpy, pandas, platform, device.
* :func:`json_safe` — a copy of results that ``json.dumps`` writes as strict JSON.
* :func:`progress` — a plain ``tqdm`` bar in a terminal, silent under papermill/nbval (lesson 10).
* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_torch_save` — write to a
  temporary file beside the target, then ``os.replace`` it: a crash never leaves half a file.
"""

from __future__ import annotations

import math
import os
import platform
import random
import re
import stat
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from tqdm import tqdm

__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "json_safe",
    "progress",
    "progress_enabled",
    "resolve_device",
    "seed_everything",
    "versions",
]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) with ``seed``.

    Returns a fresh CPU ``torch.Generator`` seeded with ``seed``: pass it to ``randperm`` or
    ``TaskBatch.batches(shuffle=True, generator=...)`` so shuffles do not depend on how much of the
    global random stream other code has used.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a ``torch.device``.

    ``"auto"`` picks CUDA if available, then Apple MPS, then the CPU; ``$MAMO_LITE_DEVICE`` (e.g. ``cpu``),
    if set, replaces that choice (the book's replay sets it to ``cpu``: GPU numbers differ). Asking
    explicitly for an accelerator this machine does not have raises a ``ValueError`` that says so and
    how to fall back.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto" and os.environ.get("MAMO_LITE_DEVICE", "").strip():
        name = os.environ["MAMO_LITE_DEVICE"].strip().lower()
        if name == "auto":
            raise ValueError("$MAMO_LITE_DEVICE must name a device ('cpu', 'cuda', 'cuda:N' or 'mps'), not 'auto'")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine "
                             f"(torch {torch.__version__}); use --device cpu or --device auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r} requested but this machine has {count} CUDA device(s) "
                             f"(cuda:0 … cuda:{count - 1}); use --device cuda or --device auto")
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise ValueError(f"device {device!r} requested but Apple MPS is not available on this machine; "
                             "use --device cpu or --device auto")
        return dev
    raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def versions(device: str | torch.device | None = None) -> dict[str, Any]:
    """Versions and machine facts worth recording next to any number (JSON-safe).

    ``device`` (optional) adds its name: the GPU model for CUDA, the CPU's for ``"cpu"``.
    """
    import pandas as pd

    from mamo_lite import __version__

    out: dict[str, Any] = {
        "mamo_lite": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
    if device is not None:
        dev = torch.device(device) if not isinstance(device, torch.device) else device
        out["device"] = str(dev)
        if dev.type == "cuda":
            out["device_name"] = torch.cuda.get_device_name(dev)
        elif dev.type == "mps":
            out["device_name"] = "Apple MPS"
        else:
            out["device_name"] = _cpu_name()
    return out


def _cpu_name() -> str:
    """The CPU model ("model name" in /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def json_safe(obj: Any) -> Any:
    """A strict-JSON copy of ``obj``: NaN/±inf → None, tuples → lists, scalars via ``.item()``, paths etc. → str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, str):
        return str(obj)  # plain str, also for subclasses such as torch's TorchVersion
    if hasattr(obj, "item"):  # numpy / torch scalars
        return json_safe(obj.item())
    return str(obj)


# -- progress bars ----------------------------------------------------------------------------------

def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether :func:`progress` shows a bar: ``enabled`` if given, else the environment decides.

    ``MAMO_LITE_PROGRESS=1``/``0`` forces it on/off. Otherwise bars show only when stderr is a
    terminal outside a Jupyter kernel: notebooks (and so papermill and nbval runs) stay quiet and
    their committed outputs deterministic; pass ``progress=True`` to a function to see a bar there.
    """
    if enabled is not None:
        return bool(enabled)
    forced = os.environ.get("MAMO_LITE_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "on", "yes"):
        return True
    if forced in ("0", "false", "off", "no"):
        return False
    if "ipykernel" in sys.modules:  # a Jupyter kernel: lab, papermill, nbval, myst-nb
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def progress(iterable: Iterable | None = None, *, enabled: bool | None = None, **kw: Any) -> tqdm:
    """A plain-text ``tqdm`` bar (never ``tqdm.auto``: it warns without ipywidgets).

    Disabled unless :func:`progress_enabled` says otherwise; the keyword arguments go to ``tqdm``
    (``total``, ``desc``, ``unit``, ...). A disabled bar still iterates and accepts ``set_postfix``.
    """
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("leave", False)
    return tqdm(iterable, disable=not progress_enabled(enabled), **kw)


# -- atomic writes ----------------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


STALE_TEMP_AGE_S = 15 * 60
"""Our temporary files older than this (by mtime) are leftovers of a killed writer."""

_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.(?:part|tmp)")  # tempfile.mkstemp(prefix=".<name>.", suffix=...)


def remove_stale_temp_files(folder: str | Path, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Delete the temporary files of killed writers in ``folder``; returns what was removed.

    Only regular files named like ours (``.<name>.<8 random characters>.part`` or ``.tmp``) whose
    modification time is at least ``max_age_s`` old; anything unreadable is left alone.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _TEMP_NAME.fullmatch(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= max_age_s:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write through ``write(file)`` to a temporary file beside ``path``, then rename it into place.

    Temporary files that killed writers left in that folder (older than :data:`STALE_TEMP_AGE_S`) are
    removed first (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created); returns the path."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (parent folders are created); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj, path)``, atomically: an error while pickling leaves any old file untouched."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


# -- configuration checks ---------------------------------------------------------------------------

def check_range(config: object, name: str, low: float | None = None, high: float | None = None, *,
                strict: bool = False, integer: bool = False, symbol: str = "") -> None:
    """Check that ``config.<name>`` is a finite number (an integer if ``integer``) within the bounds.

    ``low`` is inclusive unless ``strict``; ``high`` is inclusive. Raises a ``TypeError`` (wrong
    type) or ``ValueError`` (out of range, NaN, ±inf) naming the class, the field (and its paper
    ``symbol``), the valid range, the value given and the field's default. Every configuration
    dataclass of the package checks its numbers with it.
    """
    value = getattr(config, name)
    cls = type(config).__name__
    label = f"{cls}.{name}" + (f" ({symbol})" if symbol else "")
    default = next((f.default for f in fields(config) if f.name == name), None)
    hint = f" (the default is {default!r})" if default is not None else ""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise TypeError(f"{label} must be {kind}, got {value!r} of type {type(value).__name__}{hint}")
    if low is not None and high is not None:
        bounds = f"in [{low:g}, {high:g}]"
    elif low is not None:
        bounds = f"{'>' if strict else '≥'} {low:g}"
    else:
        bounds = f"≤ {high:g}"
    too_low = low is not None and (value <= low if strict else value < low)
    too_high = high is not None and value > high
    if not math.isfinite(value) or too_low or too_high:
        finite = "" if integer else " and finite"
        raise ValueError(f"{label} must be {bounds}{finite}, got {value!r}{hint}")


def check_literal_fields(config: Any) -> None:
    """Check every dataclass field annotated ``Literal[...]`` against its declared options.

    The options are read from the annotation, so each configuration states them once. Raises a
    ``ValueError`` naming the class, the field, the valid options and the value given.
    """
    hints = typing.get_type_hints(type(config))
    for name, hint in hints.items():
        if typing.get_origin(hint) is not Literal:
            continue
        options = typing.get_args(hint)
        value = getattr(config, name)
        if value not in options:
            raise ValueError(f"{type(config).__name__}.{name} must be one of "
                             f"{', '.join(map(repr, options))}; got {value!r}")
