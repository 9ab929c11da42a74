"""The benchmark's floor milters (bench/noop_milter.py) answer mail, and the clamd-only floor
really has clamd scan each message: the figures `make bench-peers` compares Stronghold with."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.peers import NoopMilter
from devtools.localstack import Clamd
from stronghold.antivirus import EICAR
from tests.harness.mtaside import Mta

pytestmark = pytest.mark.clamd

CLEAN = b"nothing to see here\r\n"


@pytest.fixture()
def floor(request: pytest.FixtureRequest, tmp_path: Path, clamd: Clamd) -> Iterator[NoopMilter]:
    native, with_clamd = request.param
    milter = NoopMilter(tmp_path / "floor", native=native, clamd=clamd.address if with_clamd else None)
    milter.start()
    yield milter
    milter.stop()


def _send(milter: NoopMilter, body: bytes) -> bytes:
    """One message over one connection, as Postfix sends it; the final reply's command byte."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(milter.address[len("unix:"):])
        mta = Mta(sock, timeout=10)
        mta.negotiate()
        mta.read_negotiation()
        mta.connect("client.example")
        mta.helo("client.example")
        mta.mail("<a@example.net>")
        mta.rcpt("<b@example.com>")
        mta.data()
        mta.header("From", "a@example.net")
        mta.header("Subject", "hello")
        mta.eoh()
        mta.body(body)
        mta.eom()
        while (final := mta.read_until_final()[1][0]) == b"c":  # the steps it answers on the way
            pass
        mta.quit()
        return final


@pytest.mark.parametrize("floor", [(False, False), (True, False)], indirect=True, ids=["pymilter", "native"])
def test_the_no_op_floors_accept_two_messages_in_a_row(floor: NoopMilter) -> None:
    assert [_send(floor, CLEAN), _send(floor, CLEAN)] == [b"a", b"a"]


@pytest.mark.parametrize("floor", [(True, True)], indirect=True, ids=["native+clamd"])
def test_the_clamd_only_floor_has_clamd_scan_each_message(floor: NoopMilter) -> None:
    assert [_send(floor, CLEAN), _send(floor, EICAR + b"\r\n"), _send(floor, CLEAN)] == [b"a", b"r", b"a"]
