"""bench.selector_milter speaks the milter protocol as Postfix expects (packets in, replies out),
so that what bench.ab measures with it is the same filtering as the product's."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import Milter
import pytest

from bench.selector_milter import Connection
from stronghold.antivirus import EICAR, ScanResult
from stronghold.service import Service
from stronghold.store.db import Store

pytestmark = pytest.mark.corpus  # the model is trained on it

OFFERED = 0x1FFFFF  # every protocol bit: what the milter asks for is what it gets


class EicarOnlyScanner:
    def scan(self, stream):
        return ScanResult("Test.EICAR" if EICAR in stream.read() else None)


def _packet(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


def _replies(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        out.append((data[4:5], data[5:4 + length]))
        data = data[4 + length:]
    return out


def _session(message: bytes, rcpt: str = "u@example.com") -> list[bytes]:
    head, _, body = message.partition(b"\r\n\r\n")
    packets = [_packet(b"O", struct.pack(">III", 6, 0x1FF, OFFERED)),
               _packet(b"D", b"C" + b"j\0mx.example\0"),
               _packet(b"C", b"client.example\0" + b"4" + struct.pack(">H", 2525) + b"192.0.2.7\0"),
               _packet(b"H", b"client.example\0"),
               _packet(b"M", b"<a@b.example>\0"),
               _packet(b"R", f"<{rcpt}>".encode() + b"\0"),
               _packet(b"T")]
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b": ")
        packets.append(_packet(b"L", name + b"\0" + value + b"\0"))
    # no end of headers ("N"): the milter asks Postfix not to send it
    packets += [_packet(b"B", body), _packet(b"D", b"E" + b"i\0QUEUE1\0"), _packet(b"E"),
                _packet(b"Q")]
    return packets


@pytest.fixture
def connection(make_config, models_dir: Path):
    cfg = make_config(models_dir=models_dir, lists_refresh_seconds=0)
    cfg.data_dir.mkdir(parents=True)
    store = Store(cfg.db_url)
    store.upgrade()
    service = Service(cfg, store=store, scanner=EicarOnlyScanner())
    ours, theirs = socket.socketpair()
    yield Connection(ours, service), theirs
    ours.close()
    theirs.close()
    service.db.drain(10)
    store.dispose()


def _run(connection, message: bytes) -> list[tuple[bytes, bytes]]:
    conn, mta = connection
    alive = conn.feed(b"".join(_session(message)))
    conn.flush()
    mta.settimeout(5)
    assert not alive  # QUIT ends the connection
    data = b""
    mta.setblocking(False)
    try:
        while chunk := mta.recv(65536):
            data += chunk
    except BlockingIOError:
        pass
    return _replies(data)


def test_clean_message_negotiates_no_replies_and_gets_headers_then_accept(connection) -> None:
    replies = _run(connection, b"From: a@b.example\r\nSubject: lunch\r\n\r\n"
                               b"See you at noon for the project meeting.\r\n")
    cmd, data = replies[0]
    assert cmd == b"O"
    _version, actions, protocol = struct.unpack(">III", data)
    assert actions == Milter.ADDHDRS | Milter.CHGHDRS | Milter.DELRCPT
    for bit in (Milter.P_NR_CONN, Milter.P_NR_HELO, Milter.P_NR_MAIL, Milter.P_NR_HDR, Milter.P_NR_BODY,
                Milter.P_NOEOH):  # end of headers is not sent at all
        assert protocol & bit, hex(bit)
    assert not protocol & (Milter.P_NR_RCPT | Milter.P_NR_DATA)  # RCPT and DATA are answered
    assert [cmd for cmd, _ in replies[1:3]] == [b"c", b"c"]  # RCPT, DATA
    added = {data.split(b"\0")[0]: data.split(b"\0")[1] for cmd, data in replies[3:-1] if cmd == b"h"}
    assert added[b"X-Spam-Flag"] == b"NO"
    assert b"X-Stronghold-Version" in added
    assert replies[-1] == (b"a", b"")


def test_virus_is_refused_with_the_reply_text(connection) -> None:
    replies = _run(connection, b"From: a@b.example\r\nSubject: x\r\n\r\n" + EICAR + b"\r\n")
    cmd, data = replies[-1]
    assert cmd == b"y"
    assert data.startswith(b"554 ")
