"""Repository-wide pytest set-up: the book's replay plugin (``tests/nbval_replay.py``) for ``pytest --nbval``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

pytest_plugins = ["nbval_replay"]
