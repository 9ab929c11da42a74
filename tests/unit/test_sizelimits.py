"""`milter --check-config` warns when Postfix's or clamd's size limits disagree with ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from stronghold import sizelimits
from stronghold.config import SETTINGS


def test_default_never_delivers_an_unscanned_part(make_config) -> None:
    assert SETTINGS["oversize_action"].default == "reject"
    assert sizelimits.size_warnings(make_config(), None, None) == []


def test_clamd_limits_below_ours_are_named(make_config, tmp_path: Path) -> None:
    conf = tmp_path / "clamd.conf"
    conf.write_text("# comment\nLocalSocket /run/clamd.ctl\nStreamMaxLength 10M\nMaxFileSize 30m\n")
    limits = sizelimits.clamd_limits(conf)
    assert limits == {"StreamMaxLength": 10 * 2**20, "MaxFileSize": 30 * 2**20, "MaxScanSize": 400 * 2**20}
    warnings = sizelimits.size_warnings(make_config(max_message_bytes=20 * 2**20), None, limits)
    assert len(warnings) == 1 and warnings[0].startswith("clamd StreamMaxLength = 10485760 bytes")
    warnings = sizelimits.size_warnings(make_config(max_message_bytes=40 * 2**20), None, limits)
    assert [w.split()[1] for w in warnings] == ["StreamMaxLength", "MaxFileSize"]
    assert "AlertExceedsMax" in warnings[1]


@pytest.mark.postfix  # asks postconf
def test_postfix_limit_read_with_postconf(make_config, tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("message_size_limit = 62914560\n")
    limit = sizelimits.postfix_message_size_limit(str(tmp_path))
    assert limit == 62914560
    cfg = make_config(postfix_config_dir=str(tmp_path), clamd_config=tmp_path / "absent.conf")
    notes = sizelimits.check(cfg)
    assert any("message_size_limit = 62914560" in n and "max_message_bytes" in n for n in notes)
    assert any("absent.conf" in n for n in notes)
    (tmp_path / "main.cf").write_text(f"message_size_limit = {cfg.max_message_bytes}\n")
    assert not any("message_size_limit" in n for n in sizelimits.check(cfg))


def test_scan_head_is_called_out(make_config) -> None:
    assert "unscanned" in sizelimits.size_warnings(make_config(oversize_action="scan-head"), None, None)[0]



@pytest.mark.postfix  # asks postconf
def test_an_unreadable_postfix_config_is_named(make_config, tmp_path: Path) -> None:
    """postconf is there but cannot read the folder: the note names it (it said "no postconf")."""
    cfg = make_config(postfix_config_dir=str(tmp_path / "absent"), clamd_socket="none")
    [note] = [n for n in sizelimits.check(cfg) if "message_size_limit unknown" in n]
    assert str(tmp_path / "absent") in note and "postfix_config_dir" in note
