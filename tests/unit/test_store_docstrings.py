"""Every public function, method and class of the store says what it does in a docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STORE = Path(__file__).resolve().parents[2] / "stronghold" / "store"
MODULES = sorted(STORE.glob("*.py"))


def undocumented(tree: ast.Module) -> list[str]:
    """Public (no leading underscore) defs and classes without a docstring, nested classes' too."""
    found: list[str] = []

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) \
                    and not node.name.startswith("_"):
                if ast.get_docstring(node) is None:
                    found.append(f"{prefix}{node.name} (line {node.lineno})")
                if isinstance(node, ast.ClassDef):
                    walk(node.body, f"{node.name}.")

    walk(tree.body, "")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_public_store_functions_have_docstrings(path: Path) -> None:
    assert undocumented(ast.parse(path.read_text(), str(path))) == []


def test_the_check_sees_a_missing_docstring() -> None:
    tree = ast.parse('class A:\n    """A."""\n    def f(self):\n        pass\n    def _g(self):\n        pass\n'
                     'def h():\n    """H."""\n')
    assert undocumented(tree) == ["A.f (line 3)"]
