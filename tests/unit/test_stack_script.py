"""scripts/stack.sh (``make run`` / ``make stop``) in a checkout that has no virtualenv yet."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT


def _checkout_without_venv(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "stack.sh", tmp_path / "scripts" / "stack.sh")
    return tmp_path


def test_stop_without_a_venv_says_nothing_runs_here_and_succeeds(tmp_path: Path) -> None:
    """The printed 'make stop' works in a checkout that never ran the stack (a worktree, a fresh clone)."""
    here = _checkout_without_venv(tmp_path)
    done = subprocess.run(["bash", str(here / "scripts" / "stack.sh"), "stop"], capture_output=True, text=True,
                          check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"no stack runs from {here}" in done.stdout


def test_start_without_a_venv_fails_with_a_clear_message(tmp_path: Path) -> None:
    here = _checkout_without_venv(tmp_path)
    done = subprocess.run(["bash", str(here / "scripts" / "stack.sh"), "start"], capture_output=True, text=True,
                          check=False, timeout=30)
    assert done.returncode == 2
    assert "'make run' creates it" in done.stderr
