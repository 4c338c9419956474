"""Print the requirements in environment.yml's ``pip:`` block, one per line (no PyYAML needed).

Used by ``.ci/setup`` (``python .ci/pins.py > requirements.txt``) and by ``tests/test_environment.py``,
so the installer and the consistency test read the pins the same way.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ENV_YML = Path(__file__).resolve().parents[1] / "environment.yml"
_ITEM = re.compile(r"^\s+-\s+(.+?)\s*(?:#.*)?$")


def read_pins(path: str | Path = ENV_YML) -> list[str]:
    """Return the entries of the ``- pip:`` block of a conda environment file, in order.

    The block ends at the first line that is neither an indented ``- item`` nor a comment.
    """
    text = Path(path).read_text(encoding="utf-8")
    if "- pip:" not in text:
        raise ValueError(f"{path}: no '- pip:' section")
    pins: list[str] = []
    for line in text.split("- pip:", 1)[1].splitlines()[1:]:
        if line.lstrip().startswith("#"):
            continue
        m = _ITEM.match(line)
        if not m:
            break
        pins.append(m.group(1))
    if not pins:
        raise ValueError(f"{path}: the '- pip:' section is empty")
    return pins


if __name__ == "__main__":
    print("\n".join(read_pins(*sys.argv[1:2])))
