"""Imports run downwards only (docs/architecture.md, "Layers").

stronghold/, bottom to top: values (policy among them), store, the checks and
the rest (findings among them), routing, precedence, engine, service, transaction,
the two protocol engines (milter, nativemilter), milter_server, the command line.  A module may import its own
layer and those below; ``if TYPE_CHECKING:`` imports are exempt (they never
run: verdict.py names authres's result type).  The product never imports the
dev tooling or the tests, nor the web UI, except for the command line at the
top (``stronghold web`` starts it); no web UI blueprint imports the ``webui``
package, which imports the blueprints.  Only the store speaks SQL: nothing
outside stronghold/store/ (and its migrations) imports SQLAlchemy at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "stronghold"
WEBUI = ROOT / "webui"
VALUES = ("stronghold.verdict", "stronghold.config", "stronghold.settingtypes", "stronghold.lists",
          "stronghold.message", "stronghold.htmltext", "stronghold.policy", "stronghold.headers",
          "stronghold.mimetree", "stronghold.mimeparams", "stronghold.charsets", "stronghold.nativecore")
STORE = ("stronghold.store", "stronghold.migrations")
# layers above the default one (everything not named here: the checks, metrics, release, digests...)
TOP = (("stronghold.routing",), ("stronghold.precedence",), ("stronghold.engine",), ("stronghold.service",),
       ("stronghold.transaction",), ("stronghold.milter", "stronghold.nativemilter"), ("stronghold.milter_server",),
       ("stronghold.cli",))
DEFAULT = 2
NEVER_FROM_PRODUCT = ("webui", "devtools", "tests", "bench")
CLI = DEFAULT + len(TOP)  # the top: the one front door that may start the web UI


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer(name: str) -> int:
    """0 values, 1 store, 2 the rest, then routing, precedence, engine, service, transaction,
    milter and nativemilter, milter_server, cli (cli_*)."""
    if _within(name, VALUES):
        return 0
    if _within(name, STORE):
        return 1
    for rank, prefixes in enumerate(TOP, start=DEFAULT + 1):
        if _within(name, prefixes) or (prefixes == ("stronghold.cli",) and name.startswith("stronghold.cli_")):
            return rank
    return DEFAULT


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skipped.update(id(n) for n in ast.walk(inner))
    return skipped


def imports(path: Path, running_only: bool = False) -> set[str]:
    """Modules ``path`` imports, anywhere in it (also inside functions); ``from a import b``
    counts as ``a.b`` when ``a/b.py`` is a module, else as ``a``."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_only(tree) if running_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            folder = ROOT.joinpath(*node.module.split("."))
            for alias in node.names:
                sub = folder / alias.name
                found.add(f"{node.module}.{alias.name}" if sub.with_suffix(".py").exists() or sub.is_dir()
                          else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


PRODUCT = sorted(PACKAGE.rglob("*.py"))
BLUEPRINTS = [p for p in sorted(WEBUI.glob("*.py")) if p.name not in ("__init__.py", "serve.py")]


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_layer_above_its_own(path: Path) -> None:
    own = layer(_module(path))
    above = sorted(m for m in imports(path, running_only=True)
                   if m.startswith("stronghold.") and layer(m) > own)
    assert not above, f"{_module(path)} (layer {own}) imports {above}"


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_product_imports_no_web_ui_dev_tooling_or_tests(path: Path) -> None:
    never = NEVER_FROM_PRODUCT[1:] if layer(_module(path)) == CLI else NEVER_FROM_PRODUCT
    reached = sorted(m for m in imports(path) if _within(m, never))
    assert not reached, f"{_module(path)} imports {reached}"


@pytest.mark.parametrize("path", [p for p in (*PRODUCT, *sorted(WEBUI.glob("*.py")))
                                  if layer(_module(p)) != layer("stronghold.store")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_store_speaks_sql(path: Path) -> None:
    """Queries live in store modules; the rest opens a session and calls them (type hints may name one)."""
    reached = sorted(m for m in imports(path, running_only=True) if _within(m, ("sqlalchemy",)))
    assert not reached, f"{_module(path)} imports {reached}: put the query in a stronghold.store module"


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.name)
def test_blueprints_do_not_import_the_webui_package(path: Path) -> None:
    """``create_app`` (webui/__init__.py) imports the blueprints; they reach the app
    through webui/context.py and each other as submodules, never through the package."""
    reached = sorted(m for m in imports(path) if m == "webui")
    assert not reached, f"{path.name} imports the webui package (use webui.context)"


def test_the_layer_table_knows_the_modules_it_names() -> None:
    """A renamed module must not slip out of its layer unnoticed."""
    for name in (*VALUES, *STORE, *(p for group in TOP for p in group)):
        dotted = ROOT.joinpath(*name.split("."))
        assert dotted.with_suffix(".py").exists() or dotted.is_dir(), name
    assert layer("stronghold.store.writebehind") == 1 and layer("stronghold.cli_scan") == CLI
    assert layer("stronghold.milter_server") < CLI
    assert layer("stronghold.routing") < layer("stronghold.precedence") < layer("stronghold.engine")
