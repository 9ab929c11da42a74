"""Milter workers share what they inherit from the supervisor: it is kept out of their garbage
collections (``gc.freeze`` before the fork), so collecting does not copy those pages."""

from __future__ import annotations

import re
from pathlib import Path

from tests.harness.milterproc import MilterProcess, wait_for


def test_workers_start_with_the_supervisors_objects_frozen(tmp_path: Path) -> None:
    milter = MilterProcess(tmp_path, {
        "data_dir": str(tmp_path / "data"), "models_dir": str(tmp_path / "models"), "clamd_socket": "none",
        "milter_socket": f"unix:{tmp_path / 'milter.sock'}", "database_url": f"sqlite:///{tmp_path / 'store.db'}",
        "milter_workers": 2, "metrics_bind": "", "model_sync_seconds": 0})
    milter.start()
    try:
        pattern = r"worker w(\d) \(pid \d+\): (\d+) objects from the supervisor kept out of garbage collection"
        wait_for(lambda: len(re.findall(pattern, milter.log())) == 2, 30, "both workers' start-up lines")
        frozen = {int(slot): int(count) for slot, count in re.findall(pattern, milter.log())}
        assert len(frozen) == 2
        assert all(count > 10_000 for count in frozen.values()), frozen  # the imported modules at least
    finally:
        milter.stop()
