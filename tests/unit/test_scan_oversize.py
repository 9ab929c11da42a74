"""`stronghold scan` of a message over max_message_bytes: the milter's verdict, without holding it whole."""

from __future__ import annotations

import io
import json
import sys
import tracemalloc
from pathlib import Path

import Milter
import pytest
from Milter import testctx

from stronghold import config as config_mod
from stronghold.cli import main
from stronghold.milter import factory
from stronghold.service import Service
from stronghold.store.db import Store

pytestmark = pytest.mark.corpus  # the model is trained on it

HEAD = (b"Return-Path: <big@sender.example>\nFrom: Big <big@sender.example>\nTo: rcpt@example.com\n"
        b"Subject: the quarterly figures\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        b"--XX\nContent-Type: text/plain\n\nthe figures are attached\n--XX\n"
        b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n")
NOREPLY_BITS = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT | Milter.P_NR_DATA
                | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY | Milter.P_NR_HDR)
LINE = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3\n"


class Generated(io.RawIOBase):
    """A message of ``size`` bytes made up while it is read (nothing on disk, nothing held)."""

    def __init__(self, size: int) -> None:
        self.left = size - len(HEAD)
        self.head = HEAD

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        n = min(len(buffer), self.left) // len(LINE) * len(LINE) or min(len(buffer), self.left)
        buffer[:n] = (LINE * (n // len(LINE) + 1))[:n]
        self.left -= n
        return n


@pytest.fixture
def environment(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    settings = {"data_dir": str(tmp_path / "data"), "models_dir": str(models_dir), "clamd_socket": "none",
                "max_message_bytes": str(256 * 1024)}
    for name, value in settings.items():
        monkeypatch.setenv(f"STRONGHOLD_{name.upper()}", value)
    return settings


def _milter_reply(settings: dict[str, str], raw: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[int, object]:
    cfg = config_mod.load(None, settings, environ={})
    cfg.data_dir.mkdir(parents=True)
    store = Store(cfg.db_url)
    store.upgrade()
    service = Service(cfg, store=store)
    monkeypatch.setattr(Milter, "factory", factory(service))
    # TestCtx stops feeding at a NOREPLY answer, so it plays an MTA that offers no "no reply" bits
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF & ~NOREPLY_BITS, 0, 0])
    ctx = testctx.TestCtx()
    try:
        assert ctx._connect(ip="192.0.2.7") == Milter.CONTINUE
        result = ctx._feedFile(io.BytesIO(raw), "big@sender.example", "rcpt@example.com")
        ctx._close()
    finally:
        service.db.drain(10)
        store.dispose()
    return result, ctx._reply


@pytest.mark.parametrize("action, milter_result, code", [
    ("reject", Milter.REJECT, "552"),
    ("tempfail", Milter.TEMPFAIL, "451"),
])
def test_scan_refuses_an_oversize_message_as_the_milter_does(environment: dict[str, str], action: str,
                                                            milter_result: int, code: str,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STRONGHOLD_OVERSIZE_ACTION", action)
    raw = Generated(600 * 1024).read()
    (tmp_path / "big.eml").write_bytes(raw)
    result, milter_reply = _milter_reply({**environment, "oversize_action": action,
                                          "data_dir": str(tmp_path / "milter")}, raw, monkeypatch)
    assert result == milter_result and milter_reply[0] == code
    assert main(["scan", "--format", "json", str(tmp_path / "big.eml")]) == 0
    [scanned] = json.loads(capsys.readouterr().out)
    assert scanned["action"] == action and scanned["smtp_reply"] == " ".join(milter_reply)
    assert scanned["score"] is None  # refused before anything was scanned or scored


@pytest.mark.parametrize("action", ["reject", "tempfail"])
def test_scan_text_names_oversize_as_what_happened(environment: dict[str, str], action: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Not "(error)": the one line says oversize, as the milter's log line does (``action(oversize)``)."""
    monkeypatch.setenv("STRONGHOLD_OVERSIZE_ACTION", action)
    (tmp_path / "big.eml").write_bytes(Generated(600 * 1024).read())
    assert main(["scan", str(tmp_path / "big.eml")]) == 0
    assert capsys.readouterr().out == (f"{tmp_path / 'big.eml'}: {action} (oversize) score - from=<big@sender.example> "
                                       f"size=oversize({action}) rcpt=<rcpt@example.com>:{action}(oversize)"
                                       f"[size=oversize({action})]\n")


def test_scan_head_scores_the_head_as_the_milter_does(environment: dict[str, str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STRONGHOLD_OVERSIZE_ACTION", "scan-head")
    raw = Generated(600 * 1024).read()
    (tmp_path / "big.eml").write_bytes(raw)
    assert main(["scan", "--format", "json", str(tmp_path / "big.eml")]) == 0
    [scanned] = json.loads(capsys.readouterr().out)
    assert scanned["action"] == "accept" and "size=oversize(scan-head)" in scanned["trace"]
    ctx_result, _ = _milter_reply({**environment, "oversize_action": "scan-head",
                                   "data_dir": str(tmp_path / "milter")}, raw, monkeypatch)
    assert ctx_result == Milter.ACCEPT


def _peak_of_scan(message: io.RawIOBase, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    """Peak Python memory (model and all) of `stronghold scan -` reading ``message``, and its verdict."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(message)))
    tracemalloc.start()
    try:
        assert main(["scan", "--format", "json", "-"]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [scanned] = json.loads(capsys.readouterr().out)
    return peak, scanned


def test_scan_does_not_hold_an_oversize_message_in_memory(environment: dict[str, str],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    size = 32 * 2**20
    _peak_of_scan(Generated(100 * 1024), monkeypatch, capsys)  # first-time imports and caches
    small, _ = _peak_of_scan(Generated(100 * 1024), monkeypatch, capsys)
    peak, scanned = _peak_of_scan(Generated(size), monkeypatch, capsys)
    assert scanned["action"] == "reject" and "oversize" in scanned["trace"][0]
    assert peak - small < size / 4, f"{(peak - small) / 2**20:.0f} MiB more for a {size / 2**20:.0f} MiB message"
