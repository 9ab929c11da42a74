"""A message file turned into what the milter receives from Postfix."""

from __future__ import annotations

from stronghold.received import as_received, envelope_sender, header_recipients

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
