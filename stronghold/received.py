"""A message file as the milter would see it, and one pass through the service for it.

``stronghold scan`` and the milter must give the same bytes the same verdict.
Between a file on disk and the milter stand an SMTP client and Postfix, which
change the message in ways the classifier notices:

- the mbox ``From `` line is not part of the message;
- every line ends in CRLF on the wire (SMTP clients turn bare LF and CR into CRLF);
- Postfix's cleanup drops ``Return-Path``, ``Bcc``, ``Resent-Bcc`` and
  ``Content-Length`` (its ``message_drop_headers`` default) before the milter
  sees the headers.

Postfix's own ``Received`` line is not shown to the milter (checked through a
real Postfix: the logged features of corpus mail equal those of
``as_received(file)``), so nothing is added.  Training tokenizes what this
returns too, so the model learns only what the milter will see.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

from stronghold.message import parse

DROPPED_HEADERS = frozenset({b"return-path", b"bcc", b"resent-bcc", b"content-length"})
_EOL = re.compile(rb"\r\n|\r|\n")
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")


def as_received(raw: bytes) -> bytes:
    """``raw`` as the milter receives it (see the module docstring)."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    raw = _EOL.sub(b"\r\n", raw)
    end = raw.find(b"\r\n\r\n")
    head, body = (raw[:end], raw[end:]) if end >= 0 else (raw, b"")
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] not in (b" ", b"\t"):  # a new field (a folded line belongs to the one above)
            field = _FIELD.match(line)
            dropping = field is not None and field.group(1).lower() in DROPPED_HEADERS
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + body


def envelope_sender(raw: bytes) -> str:
    """The sender an SMTP client would have used: Return-Path, else the From address."""
    msg = parse(raw[:64 * 1024])
    for name in ("return-path", "from"):
        value = msg.header(name)
        if value:
            found = [addr for _, addr in getaddresses([value]) if "@" in addr]
            if found:
                return found[0].lower()
    return ""


def header_recipients(raw: bytes, limit: int = 10) -> tuple[str, ...]:
    """The To and Cc addresses of a message (stand-ins for an envelope that a file lacks)."""
    msg = parse(raw[:64 * 1024])
    values = msg.header_all("to") + msg.header_all("cc")
    out: list[str] = []
    for _, addr in getaddresses(values):
        addr = addr.strip().lower()
        if "@" in addr and addr not in out:
            out.append(addr)
    return tuple(out[:limit])
