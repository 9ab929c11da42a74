"""The native core: C versions of the per-message hot paths, and whether this install has them.

Each ``stronghold/native/NAME.c`` is built into the extension module ``stronghold._NAME``
(setup.py; ``make venv`` rebuilds it when the source changes).  The Python functions they
stand in for stay: they are the reference the tests compare the C with, message by message,
and the fallback of an install built without a C compiler, which works the same, only
slower (``stronghold --version`` and the milter's start-up line say which one runs).
``STRONGHOLD_NATIVE=0`` in the environment forces the Python code, for A/B benchmarks.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

# name -> what it does (a module stronghold._NAME built from stronghold/native/NAME.c)
PARTS: dict[str, str] = {
    "scorecore": "classifier scoring",
    "htmlcore": "HTML to text",
    "wordcore": "tokenizing",
    "mimecore": "message reading",
    "miltercore": "milter protocol",
    "clamdcore": "clamd exchange",
}

_loaded: dict[str, ModuleType | None] = {}
_why: dict[str, str] = {}


def enabled() -> bool:
    """False when ``STRONGHOLD_NATIVE=0`` asks for the Python code everywhere."""
    return os.environ.get("STRONGHOLD_NATIVE", "1").strip().lower() not in ("0", "no", "false", "off")


def load(name: str) -> ModuleType | None:
    """The built module ``stronghold._NAME``, or None (not built, or switched off)."""
    if name not in PARTS:
        raise ValueError(f"unknown native part {name!r}")
    if name not in _loaded:
        module: ModuleType | None = None
        if not enabled():
            _why[name] = "switched off (STRONGHOLD_NATIVE=0)"
        else:
            try:
                module = importlib.import_module(f"stronghold._{name}")
            except ModuleNotFoundError:
                _why[name] = "not built"
            except ImportError as exc:  # built, but not loadable here (another Python, a missing symbol)
                _why[name] = f"not loadable ({exc})"
        _loaded[name] = module
    return _loaded[name]


def status() -> str:
    """One line: which parts run natively, which in Python and why."""
    native = [PARTS[name] for name in PARTS if load(name) is not None]
    python = [f"{PARTS[name]}: {_why[name]}" for name in PARTS if load(name) is None]
    if not python:
        return "native core: " + ", ".join(native)
    return ("native core: " + (", ".join(native) or "none") + "; in Python (slower): "
            + "; ".join(python))
