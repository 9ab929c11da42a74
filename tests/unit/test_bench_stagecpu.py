"""bench.stagecpu's clocks point at code that exists: a renamed or moved function would
otherwise read 0 ms in its report, as if that stage cost nothing."""

from __future__ import annotations

import importlib

import pytest

from bench.stagecpu import STAGES


@pytest.mark.parametrize(("label", "module_name", "path"), [(label, m, p) for label, m, p, _ in STAGES])
def test_every_stage_names_a_callable(label: str, module_name: str, path: str) -> None:
    owner: object = importlib.import_module(module_name)
    for part in path.split("."):
        assert hasattr(owner, part), f"{label}: {module_name}.{path} does not exist"
        owner = getattr(owner, part)
    assert callable(owner), label
