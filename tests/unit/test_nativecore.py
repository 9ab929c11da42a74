"""The native core is built and loaded, and STRONGHOLD_NATIVE=0 switches every part to Python."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stronghold import nativecore
from tests.conftest import corpus_files

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


@pytest.mark.corpus
def test_the_command_line_runs_switched_off_and_scores_the_same(corpus: Path, models_dir: Path) -> None:
    """STRONGHOLD_NATIVE is not a setting (the configuration does not refuse it), and the
    Python code scores corpus mail exactly as the native core does, end to end."""
    files = [str(p) for label in ("ham", "spam") for p in corpus_files(corpus, label)[:15]]
    model = models_dir / "model.joblib"
    outputs = []
    for native in (None, "0"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGHOLD_")}
        if native is not None:
            env["STRONGHOLD_NATIVE"] = native
        done = subprocess.run([sys.executable, "-m", "stronghold.cli", "scan", "--classifier-only", "--format",
                               "tsv", "--model", str(model), *files], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == len(files)
