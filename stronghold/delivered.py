"""A delivered copy taken back to what the milter saw (the IMAP hook learns from such copies).

Dovecot pipes a message moved into or out of Junk *as delivered*; between the milter and the
mailbox it gained headers the milter never saw, which ``tokens`` counts (``header:NAME:N``) and
which would make an IMAP mark hash unlike the message log's copy of the same message:

- our verdict: ``X-Spam-*`` and ``X-Stronghold-*`` (``headers.OWN_PREFIXES``), which the milter
  appends after removing any that came from outside, so every one in a delivered copy is ours;
- our ``Authentication-Results`` (``auth_mode`` "check" only: the milter inserts one carrying our
  authserv-id and removes those from outside; in "header" mode it adds none);
- Dovecot LMTP's block at the very top: ``Return-Path``, ``Delivered-To`` and its ``Received``
  ``from HOST ... with LMTP``, which ends the block;
- right below it (our Authentication-Results aside, which Postfix puts above it), the ``Received``
  ``by HOST (Postfix ...`` that Postfix on HOST, the LMTP client, added on arrival: Postfix does
  not show its milters its own Received line (``received.as_received``).  Only when the LMTP block
  is there and names that same host: a Received further down, or by another host, stays.

Nothing else is touched: a header of the same name elsewhere stays.  A tagged subject's prefix
is not undone (the prefix is not known here).
"""

from __future__ import annotations

import re

from stronghold import authres, headers
from stronghold.received import FIELD_NAME

_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n|$)")
_LMTP = re.compile(rb"\swith\s+LMTP\b", re.IGNORECASE)
_FROM_HOST = re.compile(rb"^[^:]*:\s*from\s+([^\s;()]+)", re.IGNORECASE)
_DOVECOT_TOP = (b"return-path", b"delivered-to")


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header ``head`` as (lower-case name or b"", raw text with its folded lines and ends)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in _LINE.findall(head):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:  # a folded line belongs to the field above
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
            continue
        match = FIELD_NAME.match(line)
        fields.append((match.group(1).lower() if match else b"", line))
    return fields


def _lmtp_block(fields: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """How many fields at the top are Dovecot LMTP's (0 unless they end in its Received line), and
    the LMTP client's name its Received gives (``from HOST``: Postfix's host name)."""
    for n, (name, text) in enumerate(fields):
        if name == b"received":
            client = _FROM_HOST.match(text)
            return (n + 1, client.group(1)) if _LMTP.search(text) and client else (0, b"")
        if name not in _DOVECOT_TOP:
            break
    return 0, b""


def _postfix_own(field: tuple[bytes, bytes], host: bytes) -> bool:
    """The Received line Postfix on ``host`` added on arrival, which it hides from its milters."""
    name, text = field
    by = re.search(rb"\sby\s+" + re.escape(host) + rb"\s+\(Postfix\b", text, re.IGNORECASE)
    return name == b"received" and by is not None


def _value(text: bytes) -> str:
    """A field's value as text (after the colon), unfolded."""
    return text.split(b":", 1)[1].decode("utf-8", "replace") if b":" in text else ""


def as_scored(raw: bytes, our_authserv_id: str | None) -> bytes:
    """``raw`` (a copy as delivered) less what delivery added (see the module docstring);
    ``our_authserv_id``: the id of the Authentication-Results the milter adds, None if it adds none."""
    end = re.search(rb"\r?\n\r?\n|\r\r", raw)  # the empty line ending the header
    if end is None:
        return raw
    head, rest = raw[:end.start()], raw[end.start():]
    fields = _fields(head)
    kept: list[tuple[bytes, bytes]] = []
    own_authres = our_authserv_id is not None
    top, lmtp_client = _lmtp_block(fields)
    for name, text in fields[top:]:
        if name and headers.ours(name.decode("ascii", "replace")):
            continue
        if own_authres and name == b"authentication-results" and \
                authres.authserv_id(_value(text)) == our_authserv_id:
            own_authres = False  # the milter adds one; any other with our id stays as it came
            continue
        kept.append((name, text))
    if top and kept and _postfix_own(kept[0], lmtp_client):  # right below the LMTP block but for ours
        kept = kept[1:]
    if not kept:
        return raw
    texts = [text for _, text in kept]
    texts[-1] = texts[-1].rstrip(b"\r\n")  # ``rest`` starts with the last line's end
    return b"".join(texts) + rest
