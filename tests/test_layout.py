"""The package's shape follows the book (STYLE.md): arrows point down, one module per paper.

The engine imports no method; a method imports another method's module only to extend it (MetaCS-DNN
reuses MeLU's network, MAMO MAML's); nothing below the CLI imports the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mamo_lite"
EXTENDS = {"metacs": {"melu"}, "mamo": {"maml", "memories"}}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_the_engine_imports_no_method():
    for path in (PACKAGE / "meta").glob("*.py"):
        bad = {m for m in _imports(path) if m.startswith("mamo_lite.methods")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_models_and_data_import_no_method_and_no_engine():
    for path in [*(PACKAGE / "models").glob("*.py"), *(PACKAGE / "data").glob("*.py")]:
        bad = {m for m in _imports(path) if m.startswith(("mamo_lite.methods", "mamo_lite.meta"))}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_a_method_imports_another_only_to_extend_it():
    modules = {p.stem for p in (PACKAGE / "methods").glob("*.py")} - {"__init__"}
    for path in (PACKAGE / "methods").glob("*.py"):
        if path.stem == "__init__":
            continue
        used = {m.split(".")[2] for m in _imports(path) if m.startswith("mamo_lite.methods.")} & modules
        used |= {m.rsplit(".", 1)[1] for m in _imports(path) if m.startswith("mamo_lite.methods.")
                 and m.rsplit(".", 1)[1] in modules}
        assert used - {path.stem} <= EXTENDS.get(path.stem, set()), f"{path.name} imports {sorted(used)}"


def test_nothing_below_the_cli_imports_it():
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        assert "mamo_lite.cli" not in _imports(path), path
