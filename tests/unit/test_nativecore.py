"""The native core is built and loaded, and STRONGHOLD_NATIVE=0 switches every part to Python."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stronghold import nativecore

PROBE = ("from stronghold import nativecore as n; "
         "print([k for k in n.PARTS if n.load(k) is not None]); print(n.status())")


def _probe(native: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "STRONGHOLD_NATIVE"}
    if native is not None:
        env["STRONGHOLD_NATIVE"] = native
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_every_part_is_built_and_loaded_by_default() -> None:
    loaded, status = _probe(None)
    assert loaded == repr(list(nativecore.PARTS))
    assert status == "native core: " + ", ".join(nativecore.PARTS.values())


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_switched_off_every_part_runs_in_python_and_says_why(value: str) -> None:
    loaded, status = _probe(value)
    assert loaded == "[]"
    assert status.startswith("native core: none; in Python (slower): ")
    assert status.count("switched off (STRONGHOLD_NATIVE=0)") == len(nativecore.PARTS)


def test_an_unknown_part_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown native part"):
        nativecore.load("nonesuch")
