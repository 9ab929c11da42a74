"""A message file turned into what the milter receives from Postfix."""

from __future__ import annotations

import random

import pytest

from stronghold import received
from stronghold.received import as_received, envelope_sender, header_recipients, wire_chunks

RAW = (b"From someone@example.com Mon Jan  1 00:00:00 2002\n"
       b"Return-Path: <bounce@lists.example>\n"
       b"Received: from a by b;\n\tMon, 1 Jan 2002 00:00:00 +0000\n"
       b"Bcc: hidden@example.com,\n  other@example.com\n"
       b"Subject: hello\n"
       b"Content-Length: 12\n"
       b"To: A <a@example.com>, b@example.com\n"
       b"Cc: a@example.com, c@example.com\n"
       b"\n"
       b"Return-Path: in the body stays\r\nline two\rline three\n")


def test_postfix_dropped_headers_go_with_their_folded_lines_and_lines_end_in_crlf() -> None:
    out = as_received(RAW)
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n") == [b"Received: from a by b;", b"\tMon, 1 Jan 2002 00:00:00 +0000",
                                   b"Subject: hello", b"To: A <a@example.com>, b@example.com",
                                   b"Cc: a@example.com, c@example.com"]
    assert body == b"Return-Path: in the body stays\r\nline two\r\nline three\r\n"
    assert as_received(out) == out  # already as received: unchanged


def test_envelope_stand_ins_come_from_the_headers() -> None:
    assert envelope_sender(RAW) == "bounce@lists.example"
    assert envelope_sender(b"From: Carol <Carol@Sender.example>\n\nhi\n") == "carol@sender.example"
    assert envelope_sender(b"Subject: none\n\nhi\n") == ""
    assert header_recipients(RAW) == ("a@example.com", "b@example.com", "c@example.com")


def _cut(raw: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(raw) + 1), min(len(raw) + 1, rng.randint(0, 6))))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


ATOMS = [b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\n", b"From x\n", b"From ", b"Bcc: a", b"bcc:", b"  ", b":",
         b"Return-Path: <x>", b"Content-Length: 3", b"resent-BCC :z", b" folded", b"\tfold", b"To: y",
         b"Subject: s", b"body text", b"X", b""]


def test_a_message_read_in_pieces_is_received_as_the_whole_would_be(monkeypatch: pytest.MonkeyPatch) -> None:
    """wire_chunks (scan reads big messages in pieces) is as_received, wherever the pieces are cut:
    CR LF split between pieces, mbox From lines, folded dropped headers, lines longer than LONG_LINE."""
    monkeypatch.setattr(received, "LONG_LINE", 20)  # long enough for any dropped header's name and colon
    rng = random.Random(7)
    samples = [RAW, RAW.replace(b"\n", b"\r\n"), b"", b"From only the separator", b"\r\n\r\nbody",
               b"Bcc: x\n\nbody", b"Subject: " + b"y" * 100 + b"\r\nBcc: " + b"z" * 100 + b"\n\tmore\n\nbody"]
    samples += [b"".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 14))) for _ in range(4000)]
    for raw in samples:
        for _ in range(3):
            pieces = _cut(raw, rng)
            assert b"".join(wire_chunks(pieces)) == as_received(raw), (raw, pieces)
