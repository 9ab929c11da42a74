"""The milter and Authentication-Results: forged copies removed by position, ours added, both modes."""

from __future__ import annotations

import io
from pathlib import Path

import Milter
import pytest
from Milter import testctx

from stronghold.milter import factory
from stronghold.service import Service
from stronghold.store import entries
from stronghold.store.db import Store
from tests.conftest import dns_settings
from tests.harness.dnsserver import LoopbackDns
from tests.unit.test_milter_module import NOREPLY_BITS, EicarOnlyScanner

pytestmark = pytest.mark.corpus  # the model is trained on it

GATEWAY = "gw.test.example"
MESSAGE = (b"Authentication-Results: elsewhere.example; dkim=pass header.d=other.example\n"
           b"Authentication-Results: gw.test.example; spf=fail smtp.mailfrom=bounce@fail.example;\n"
           b"  dkim=pass header.d=trusted.example\n"
           b"Authentication-Results: GW.test.example; dkim=pass header.d=forged.example\n"
           b"From: The Boss <boss@trusted.example>\nSubject: figures\n\nThe figures you asked for.\n")


@pytest.fixture(params=["header", "check"])
def ctx(request: pytest.FixtureRequest, make_config, models_dir: Path, test_dns: LoopbackDns,
        monkeypatch: pytest.MonkeyPatch):
    cfg = make_config(models_dir=models_dir, lists_refresh_seconds=0, auth_mode=request.param,
                      authserv_id=GATEWAY, clamd_socket="none", **dns_settings(test_dns))
    cfg.data_dir.mkdir(parents=True)
    store = Store(cfg.db_url)
    store.upgrade()
    with store.session() as s:
        entries.add_entry(s, "u@example.com", "allow", "boss@trusted.example")
    service = Service(cfg, store=store, scanner=EicarOnlyScanner())
    monkeypatch.setattr(Milter, "factory", factory(service))
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF & ~NOREPLY_BITS, 0, 0])
    context = testctx.TestCtx()
    changes: list[tuple[str, int, str]] = []
    added: list[tuple[str, str, int]] = []
    monkeypatch.setattr(context, "chgheader", lambda f, i, v: changes.append((f, i, v)))
    monkeypatch.setattr(context, "addheader", lambda f, v, i: added.append((f, v, i)))
    assert context._connect(ip="127.0.0.1") == Milter.CONTINUE
    yield request.param, context, changes, added
    context._close()
    store.dispose()


def test_gateway_results_trusted_in_header_mode_and_forged_ones_removed(ctx) -> None:
    mode, context, changes, added = ctx
    assert context._feedFile(io.BytesIO(MESSAGE), "bounce@fail.example", "u@example.com") == Milter.ACCEPT
    status = dict((f, v) for f, v, _ in added)["X-Spam-Status"]
    removed = [i for f, i, v in changes if f == "Authentication-Results" and v == ""]
    ours = [v for f, v, _ in added if f == "Authentication-Results"]
    if mode == "header":
        assert removed == [3]  # the lower copy with the gateway's id; the topmost is the gateway's own
        assert "allow=match" in status and not ours
    else:  # we check ourselves: every copy with our id is forged, and the real checks say no
        assert removed == [3, 2]  # bottom up, so positions stay valid
        assert "allow=skipped" in status
        assert len(ours) == 1 and ours[0].startswith(f"{GATEWAY}; spf=fail") and "dkim=none" in ours[0]
