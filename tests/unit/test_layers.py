"""The layers import downwards only: the store and the values never reach up into the engine or the milter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "stronghold"
# module (or package) -> modules it must never import, directly or inside a function
ABOVE = ("stronghold.engine", "stronghold.service", "stronghold.milter", "stronghold.milter_server",
         "stronghold.cli")
LOWER = [*sorted((PACKAGE / "store").glob("*.py")), PACKAGE / "verdict.py"]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("path", LOWER, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_lower_layers_do_not_import_upwards(path: Path) -> None:
    reached = {m for m in _imports(path) if m.startswith(ABOVE)}
    assert not reached, f"{path.name} imports {sorted(reached)}"
