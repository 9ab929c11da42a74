"""`stronghold milter --check-config`: proves each dependency works, says which does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.localstack import Clamd
from stronghold import nativecore
from stronghold.cli_services import check_config
from stronghold.store.db import Store

pytestmark = [pytest.mark.clamd, pytest.mark.corpus]


def _migrated(cfg):
    """The database as the milter leaves it at start (it runs the migrations)."""
    with Store(cfg.db_url) as store:
        store.upgrade()
    return cfg


def test_all_good(make_config, models_dir: Path, clamd: Clamd, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _migrated(make_config(models_dir=models_dir, clamd_socket=clamd.address))
    assert check_config(cfg) == 0
    out = capsys.readouterr().out
    assert "ok: model" in out and "ok: database" in out and "found the EICAR test string" in out
    assert ("ok: native core: classifier scoring, HTML to text, tokenizing, message reading, milter protocol, "
            "clamd exchange\n") in out
    assert "ok: native protocol engine (milter_engine = auto)\n" in out
    assert "FAIL" not in out and "WARNING: native core" not in out


def test_each_broken_dependency_is_named(make_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(models_dir=tmp_path / "no-models", clamd_socket=f"unix:{tmp_path / 'no-clamd.sock'}",
                      database_url="postgresql://stronghold@127.0.0.1:1/nothing")
    assert check_config(cfg) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 3
    assert "no model at" in fails[0] and "database unreachable" in fails[1] and "no-clamd.sock" in fails[2]


def test_no_scanner_is_a_warning(make_config, models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config(_migrated(make_config(models_dir=models_dir, clamd_socket="none"))) == 0
    assert "WARNING: clamd_socket = none" in capsys.readouterr().out


def test_a_python_only_install_is_a_warning(make_config, models_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Built without a C compiler (here: switched off), the filter works but slower: said, not failed."""
    monkeypatch.setattr(nativecore, "_loaded", {})
    monkeypatch.setenv("STRONGHOLD_NATIVE", "0")
    assert check_config(_migrated(make_config(models_dir=models_dir, clamd_socket="none"))) == 0
    warned = [line for line in capsys.readouterr().out.splitlines() if "native core" in line]
    assert warned == ["WARNING: native core: none; in Python (slower): " + "; ".join(
        f"{what}: switched off (STRONGHOLD_NATIVE=0)" for what in nativecore.PARTS.values())]


@pytest.mark.parametrize(("chosen", "native", "line"), [
    ("auto", "0", "ok: libmilter protocol engine (milter_engine = auto)"),
    ("libmilter", "1", "ok: libmilter protocol engine (milter_engine = libmilter)"),
    ("native", "1", "ok: native protocol engine (milter_engine = native)"),
    ("native", "0", "FAIL: milter_engine = native, but the native core's milter protocol is not available"),
])
def test_the_protocol_engine_is_named(make_config, models_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str], chosen: str, native: str,
                                      line: str) -> None:
    """auto runs the native engine where it is built and libmilter where not; asking for the native
    one where it is not built fails the check (the milter would refuse to start)."""
    monkeypatch.setattr(nativecore, "_loaded", {})
    monkeypatch.setenv("STRONGHOLD_NATIVE", native)
    status = check_config(_migrated(make_config(models_dir=models_dir, clamd_socket="none", milter_engine=chosen)))
    out = capsys.readouterr().out
    assert any(ln.startswith(line) for ln in out.splitlines()), out
    assert status == (1 if line.startswith("FAIL") else 0)
