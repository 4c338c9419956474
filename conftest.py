"""Repository-wide pytest set-up: the book's replay plugin (``tests/nbval_replay.py``) for ``pytest --nbval``,
and fixtures several test files share."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

pytest_plugins = ["nbval_replay"]


@pytest.fixture
def float64():
    """Run the test in float64 (finite differences, hand computations), then restore the default dtype."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """Time-critical tests on a shared 2-core machine: one intra-op thread (oversubscription is far slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
