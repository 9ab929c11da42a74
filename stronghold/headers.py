"""Header values as the milter sees them (raw bytes) and as it writes them back.

Subjects arrive as raw UTF-8, raw Latin-1/cp1252, RFC 2047 encoded words in any
charset, or a mix, possibly folded.  ``decode_value`` turns any of them into
text; ``encode_value`` writes text back as a header value Postfix can pass on
unchanged: ASCII as is, anything else as RFC 2047 UTF-8 encoded words, folded
to 76 columns.  ``ours`` names the headers only Stronghold may set: any that
arrive from outside are removed.
"""

from __future__ import annotations

import base64
import binascii
import email.charset
import email.header
import quopri
import re
from collections.abc import Sequence
from email.utils import getaddresses

from stronghold.charsets import text_codec

# Headers only Stronghold writes; any of these names that arrive from outside are removed.
OWN_PREFIXES = ("x-spam-", "x-stronghold-")

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+")
_UTF8 = email.charset.Charset("utf-8")
_UTF8.header_encoding = email.charset.BASE64


def ours(name: str) -> bool:
    """True for a header name only Stronghold may set (X-Spam-*, X-Stronghold-*)."""
    return name.strip().lower().startswith(OWN_PREFIXES)


def _bytes_to_text(data: bytes, charset: str | None = None) -> str:
    """Decode with ``charset`` when Python knows it as a character set (``charsets.text_codec``);
    else UTF-8, else cp1252, else Latin-1."""
    codec = text_codec(charset.split("*", 1)[0]) if charset else None  # without an RFC 2231 language suffix
    if codec is not None:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # every byte is a character: never fails


def _decode_word(charset: bytes, encoding: bytes, payload: bytes) -> str | None:
    """One encoded word's text, or None when it is not decodable (kept as written)."""
    try:
        if encoding in (b"b", b"B"):
            data = base64.b64decode(payload + b"=" * (-len(payload) % 4), validate=True)
        else:
            data = quopri.decodestring(payload, header=True)
    except (binascii.Error, ValueError):
        return None
    return _bytes_to_text(data, charset.decode("ascii", "replace"))


def decode_value(raw: bytes | str) -> str:
    """A raw header value -> readable text, unfolded, without control characters.

    Raw 8-bit bytes are read as UTF-8, else cp1252/Latin-1; encoded words are
    decoded in their own charset (unknown charsets as above); whitespace between
    two adjacent encoded words is dropped, as RFC 2047 says.
    """
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    out: list[str] = []
    pos = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(data):
        word = _decode_word(match.group(1), match.group(2), match.group(3))
        if word is None:
            after_word = False
            continue
        gap = data[pos:match.start()]
        if not (after_word and not gap.strip()):
            out.append(_bytes_to_text(gap))
        out.append(word)
        pos, after_word = match.end(), True
    out.append(_bytes_to_text(data[pos:]))
    text = _CONTROL.sub(" ", "".join(out))
    return " ".join(text.split())


def encode_value(name: str, text: str) -> str:
    """``text`` as the value of header ``name``: ASCII as is, else RFC 2047
    UTF-8 (base64) encoded words; folded so no line passes 76 columns."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    if text.isascii():
        if len(name) + 2 + len(text) <= 76:
            return text
        return email.header.Header(text, "us-ascii", maxlinelen=74, header_name=name).encode()
    return email.header.Header(text, _UTF8, maxlinelen=74, header_name=name).encode()


def prefixed(raw_subject: bytes | str | None, prefix: str) -> str | None:
    """The new Subject value with ``prefix`` in front, encoded; None when it has it already."""
    text = decode_value(raw_subject) if raw_subject is not None else ""
    if prefix and text.startswith(prefix):
        return None
    return encode_value("Subject", f"{prefix} {text}".strip())


_ONE_MAILBOX = re.compile(r"(?P<name>[^<>]*+)<(?P<addr>[^<>]*+)>")


def mailboxes(value: str) -> list[tuple[str, str]]:
    """(display name, address) of each mailbox of a From value as the store keeps it: decoded, so a
    name may hold the '@' or ',' an encoded word hid from a parser.  ``name <address>`` is one
    mailbox whatever its name holds (``boss@bank.example <evil@attacker.example>`` is
    evil@attacker.example's, as the encoded original was); anything else is read by ``getaddresses``."""
    text = " ".join(value.split())
    one = _ONE_MAILBOX.fullmatch(text)
    if one is not None and one.group("addr").strip():
        name = one.group("name").strip()
        if len(name) > 1 and name[0] == name[-1] == '"':
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        return [(name.strip(), one.group("addr").strip())]
    return [(name, addr) for name, addr in getaddresses([text]) if addr]


MAX_FROMS = 10  # From headers a record keeps (one per line), the rest left out


def recorded_froms(values: Sequence[str], limit: int = 320) -> str:
    """The From headers of a message as the store records them (quarantine items, the message log):
    one shortened to ``limit``; several (a sign of forgery) each, up to ``MAX_FROMS``, one per line,
    shortened to fit ``limit`` together (``lists.shown_from`` shows them all and marks them)."""
    found = list(values[:MAX_FROMS])
    if len(found) < 2:
        return shorten_from(next(iter(found), ""), limit)
    room = limit // len(found) - 1
    return "\n".join(shorten_from(value, room) for value in found)


def shorten_from(text: str, limit: int = 320) -> str:
    """A From header value cut to ``limit`` characters without cutting an address: the display
    names are shortened instead, so the stored value names the same addresses as the message (a
    plain cut could end inside one: ``"<299 x A>" <boss@bank.example.evil.example>`` would read as
    ``boss@bank.example``).  "" when even the addresses alone do not fit."""
    if len(text) <= limit:
        return text
    pairs = mailboxes(text)
    if not pairs:
        cut = text[:limit]
        return "" if any(addr for _, addr in getaddresses([cut])) else cut
    bare = ", ".join(f"<{addr}>" for _, addr in pairs)
    if len(bare) > limit:
        return ""
    named = [i for i, (name, _) in enumerate(pairs) if name]
    room = (limit - len(bare)) // max(len(named), 1) - 4  # '"' name '" ' around each name
    parts = []
    for name, addr in pairs:
        if name and room > 1:
            name = name.replace("\\", "").replace('"', "")
            short = name if len(name) <= room else name[:room - 1] + "\u2026"
            parts.append(f'"{short}" <{addr}>')
        else:
            parts.append(f"<{addr}>")
    return ", ".join(parts)
