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
from collections.abc import Iterable, Iterator
from email.utils import getaddresses

from stronghold.message import parse

DROPPED_HEADERS = frozenset({b"return-path", b"bcc", b"resent-bcc", b"content-length"})
_EOL = re.compile(rb"\r\n|\r|\n")
FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
LONG_LINE = 64 * 1024  # a header line longer than this is judged by its start, then streamed


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
            field = FIELD_NAME.match(line)
            dropping = field is not None and field.group(1).lower() in DROPPED_HEADERS
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + body


def wire_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``as_received`` for a message read piece by piece: the pieces joined are
    ``as_received`` of the input joined, while at most one header line (up to
    ``LONG_LINE``) and one piece are held at a time, however big the message."""
    header = _HeaderFilter()
    for piece in _crlf(_without_from_line(chunks)):
        yield from header.feed(piece)
    yield from header.close()


def _without_from_line(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The input less an mbox ``From `` line at its very start (up to the first LF)."""
    pieces = iter(chunks)
    start = b""
    for piece in pieces:
        start += piece
        if len(start) >= 5:
            break
    if not start.startswith(b"From "):
        yield start
        yield from pieces
        return
    while b"\n" not in start:  # skipped piece by piece, however long the line
        following = next(pieces, None)
        if following is None:  # the whole input was the From line
            return
        start = following
    yield start.split(b"\n", 1)[1]
    yield from pieces


def _crlf(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Every line end (CR LF, bare CR, bare LF) as CR LF; a CR ending a piece waits for the next."""
    held = b""
    for piece in chunks:
        data = held + piece
        held = b"\r" if data.endswith(b"\r") else b""
        data = data[:-1] if held else data
        if data:
            yield _EOL.sub(b"\r\n", data)
    if held:
        yield b"\r\n"


class _HeaderFilter:
    """Drops ``DROPPED_HEADERS`` from CR LF text fed in pieces; the body passes through."""

    def __init__(self) -> None:
        self.in_body = False
        self.pending = b""  # the header line not yet ended
        self.lines = 0  # header lines seen
        self.dropping = False  # the current field is dropped (its folded lines too)
        self.kept = 0  # header lines written (the next one is preceded by CR LF)
        self.streaming = False  # inside a line longer than LONG_LINE, already judged

    def _line(self, line: bytes) -> bytes:
        """A header line (or the start of a long one): what to write for it."""
        if line[:1] not in (b" ", b"\t"):  # a new field (a folded line belongs to the one above)
            field = FIELD_NAME.match(line)
            self.dropping = field is not None and field.group(1).lower() in DROPPED_HEADERS
        self.lines += 1
        if self.dropping:
            return b""
        self.kept += 1
        return line if self.kept == 1 else b"\r\n" + line

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.in_body:
            yield data
            return
        buf, pos = self.pending + data, 0
        self.pending = b""
        while not self.in_body:
            end = buf.find(b"\r\n", pos)
            if self.streaming:  # the rest of a long line: written or dropped as its start was
                part = buf[pos:] if end < 0 else buf[pos:end]
                if part and not self.dropping:
                    yield part
                if end < 0:
                    return
                self.streaming, pos = False, end + 2
                continue
            if end < 0:
                rest = buf[pos:]
                if len(rest) > LONG_LINE:
                    self.streaming = True
                    yield self._line(rest)
                else:
                    self.pending = rest
                return
            line, pos = buf[pos:end], end + 2
            if not line and self.lines:  # the empty line after the header: the body starts
                self.in_body = True
                yield b"\r\n\r\n"
            else:
                yield self._line(line)
        if pos < len(buf):
            yield buf[pos:]

    def close(self) -> Iterator[bytes]:
        """The end of the input: a last, unended header line is still a header line."""
        if not (self.in_body or self.streaming):
            yield self._line(self.pending)
        self.pending = b""


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
