"""Raw RFC 5322 / MIME bytes -> ParsedMessage.

``parse()`` never raises on message content: it reads what it can and records
what was wrong in ``defects`` (which the tokenizer turns into features).  Work
is bounded: only the first ``max_bytes`` are parsed, MIME nesting is cut at
``MAX_DEPTH`` and each decoded part is capped, so hostile input costs bounded
time and memory.  The MIME tree itself is ``mimetree``'s (the stdlib's tree,
read natively where it can be).
"""

from __future__ import annotations

import binascii
import email
import email.errors
import email.header
import email.message
import email.policy
import quopri
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from stronghold import nativecore
from stronghold.charsets import text_codec
from stronghold.htmltext import html_to_text
from stronghold.mimetree import MAX_DEPTH, MAX_PARTS, capped_header, mime_tree

_mimecore = nativecore.load("mimecore")

MAX_BYTES = 2 * 1024 * 1024
MAX_PART_TEXT = 512 * 1024
MAX_HEADER_VALUE = 8192

_URL_TEXT_RE = re.compile(r"(?i)\b(?:https?://|www\.)[^\s<>\"'()\[\]{}]{1,400}")
_HOST_RE = re.compile(r"(?i)^(?:https?://)?([^/:?#@\s]+@)?([^/:?#\s]+)")


@dataclass(frozen=True)
class Attachment:
    """A non-text MIME part (or a text part with a file name)."""

    filename: str
    content_type: str
    size: int


@dataclass
class ParsedMessage:
    """What the filter knows about a message after parsing."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    html_text: str = ""
    html_tags: dict[str, int] = field(default_factory=dict)
    html_features: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    charsets: list[str] = field(default_factory=list)
    encodings: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    size: int = 0

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]


def url_host(url: str) -> str:
    """Host part of a URL as found in text (lower-case, no port, no user)."""
    match = _HOST_RE.match(url.strip())
    if not match:
        return ""
    return match.group(2).lower().rstrip(".")


# Headers of mailboxes: an encoded word in them is a display name (a phrase), never address syntax.
ADDRESS_HEADERS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-sender",
                             "return-path", "errors-to"})
_SPECIALS = frozenset('()<>[]:;@\\,."')


def _as_phrase(text: str) -> str:
    """Decoded encoded-word text as it may stand in a display name: quoted when it holds address
    syntax (``boss@bank.example``, ``Müller, Hans``), so a parser reads it as a name, as the encoded
    original was."""
    if not _SPECIALS.intersection(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def decode_header_value(raw: str, phrase: bool = False) -> tuple[str, list[str]]:
    """Decode RFC 2047 encoded words; returns (text, defects).  ``phrase`` (mailbox headers): a
    decoded word holding address syntax is quoted (``_as_phrase``)."""
    defects: list[str] = []
    raw = raw[:MAX_HEADER_VALUE]
    if "=?" not in raw:
        return " ".join(raw.split()), defects
    try:
        pieces = email.header.decode_header(raw)
    except (email.errors.HeaderParseError, ValueError, LookupError):
        return " ".join(raw.split()), ["header-undecodable"]
    out: list[str] = []
    for chunk, charset in pieces:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        text, bad = decode_bytes(chunk, charset)
        if bad:
            defects.append("header-charset")
        out.append(_as_phrase(text) if phrase and charset is not None else text)
    return " ".join("".join(out).split()), defects


def decode_bytes(data: bytes, charset: str | None) -> tuple[str, bool]:
    """Decode with the declared charset, falling back; returns (text, was_bad).  A charset Python
    does not know as one (``charsets.text_codec``) is bad, and the fallback reads the bytes."""
    bad = False
    if charset:
        codec = text_codec(charset)  # None for names that are no character set ("base64", "idna")
        bad = True
        if codec is not None:
            try:
                return data.decode(codec), False
            except UnicodeDecodeError:
                return data.decode(codec, errors="replace"), True
    try:
        return data.decode("utf-8"), bad
    except UnicodeDecodeError:
        return data.decode("latin-1"), True


def _plain_fields_py(fields: list[tuple[str, str]], limit: int) -> list[tuple[str, str] | None]:
    """Each field whose value is plain (ASCII, no ``=?`` in its first ``limit`` characters) as
    ``decode_header_value`` reads it, the others None (``_header_field`` reads those).
    ``plain_fields`` is this, in C when built."""
    return [(name, " ".join(value[:limit].split()))
            if isinstance(value, str) and value.isascii() and "=?" not in value[:limit] else None
            for name, value in fields]


plain_fields: Callable[[list[tuple[str, str]], int], list[tuple[str, str] | None]] = (
    _mimecore.plain_fields if _mimecore is not None else _plain_fields_py)


def _header_field(name: str, value: object, defects: list[str]) -> tuple[str, str]:
    """A header field as the filter reads it: raw 8-bit bytes as UTF-8 (RFC 6532) if they
    are, else Latin-1; encoded words decoded."""
    if not isinstance(value, str):
        value = str(value)
    if not value.isascii():
        defects.append("8bit-header")
        try:
            data = value.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:
            data = value.encode("utf-8", "surrogateescape")
        value, latin1 = decode_bytes(data, None)
        if latin1:
            defects.append("header-charset")
    text, bad = decode_header_value(value, phrase=name.lower() in ADDRESS_HEADERS)
    defects.extend(bad)
    return name, text


def part_charset(part: email.message.Message, defects: list[str]) -> str | None:
    """``part.get_content_charset()``; None and "bad-charset" where the stdlib cannot read the
    parameters (RFC 2231 pieces it cannot order, a piece number ``int()`` refuses)."""
    try:
        return part.get_content_charset()
    except (LookupError, ValueError, TypeError):
        defects.append("bad-charset")
        return None


def _body_as_sent(part: email.message.Message) -> bytes | None:
    """A leaf part's body bytes as they arrived (transfer encoding not undone).

    The parser keeps 8-bit bytes as surrogates; ``get_payload()`` would decode
    them with the declared charset (ASCII when none, each byte then a U+FFFD),
    and encoding that text again gave the body in UTF-8 under a label that said
    otherwise: "Café" in a Latin-1 body was read "CafÃ©".
    """
    text = part.get_payload(decode=False)
    if not isinstance(text, str):
        return None
    if text.isascii():
        return text.encode("ascii")
    kept = getattr(part, "_payload", None)  # the surrogate-escaped text that get_payload() decodes
    if isinstance(kept, str):
        try:
            return kept.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:  # real non-ASCII characters (a payload set as text): as UTF-8
            pass
    return text.encode("utf-8", "surrogateescape")


def _payload_bytes(part: email.message.Message, defects: list[str]) -> bytes:
    """The decoded body of a leaf part, never raising on bad transfer encodings."""
    data = _body_as_sent(part)
    if data is None:
        return b""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte == "base64":
        cleaned = re.sub(rb"[^A-Za-z0-9+/=]", b"", data)
        cleaned = cleaned.split(b"=", 1)[0]
        if len(cleaned) % 4 == 1:  # one leftover character carries no whole byte
            cleaned = cleaned[:-1]
        try:
            decoded = binascii.a2b_base64(cleaned + b"=" * (-len(cleaned) % 4))
        except binascii.Error:
            defects.append("bad-base64")
            return b""
        if len(cleaned) * 3 // 4 + 3 < len(re.sub(rb"\s", b"", data)) * 3 // 4:
            defects.append("bad-base64")
        return decoded
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    if cte and cte not in ("7bit", "8bit", "binary"):
        defects.append("unknown-cte")
    return data


def _leaves(root: email.message.Message, defects: list[str]) -> list[tuple[email.message.Message, int]]:
    """Leaf parts of a MIME tree, iteratively, bounded in depth and count."""
    leaves: list[tuple[email.message.Message, int]] = []
    stack: list[tuple[email.message.Message, int]] = [(root, 0)]
    seen = 0
    while stack:
        part, depth = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            defects.append("too-many-parts")
            break
        if part.is_multipart():
            if depth >= MAX_DEPTH:
                defects.append("too-deep")
                continue
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((child, depth + 1) for child in reversed(payload)
                             if isinstance(child, email.message.Message))
        else:
            leaves.append((part, depth))
    return leaves


def _find_urls_py(text: str) -> list[str]:
    """URLs written in plain text (``find_urls`` is this, in C when built)."""
    return _URL_TEXT_RE.findall(text)


find_urls: Callable[[str], list[str]] = _mimecore.find_urls if _mimecore is not None else _find_urls_py


def parse(raw: bytes, max_bytes: int = MAX_BYTES) -> ParsedMessage:
    """Parse ``raw`` into a ParsedMessage; never raises on message content."""
    msg = ParsedMessage(size=len(raw))
    if not raw.strip():
        msg.defects.append("empty")
        return msg
    if len(raw) > max_bytes:
        msg.defects.append("truncated")
        raw = raw[:max_bytes]
    if b"\x00" in raw:
        msg.defects.append("nul-bytes")
        raw = raw.replace(b"\x00", b"")
    if raw.startswith(b"From ") and b"\n" in raw:  # mbox separator line
        raw = raw.split(b"\n", 1)[1]
    raw = capped_header(raw, msg.defects)
    root = mime_tree(raw, msg.defects)
    for defect in root.defects:
        msg.defects.append(type(defect).__name__)
    fields = list(root.raw_items())  # items() would turn an 8-bit value into U+FFFDs
    msg.headers = [pair if pair is not None else _header_field(*fields[i], msg.defects)
                   for i, pair in enumerate(plain_fields(fields, MAX_HEADER_VALUE))]
    text_parts: list[str] = []
    html_parts: list[str] = []
    for part, _depth in _leaves(root, msg.defects):
        for defect in part.defects:
            msg.defects.append(type(defect).__name__)
        ctype = part.get_content_type()
        msg.content_types.append(ctype)
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if cte:
            msg.encodings.append(cte[:20])
        try:
            filename = part.get_filename()
        except (LookupError, ValueError, TypeError):
            filename = "?"
            msg.defects.append("bad-filename")
        if filename:
            filename, bad = decode_header_value(filename)
            msg.defects.extend(bad)
        body = _payload_bytes(part, msg.defects)
        if filename or not ctype.startswith("text/"):
            msg.attachments.append(Attachment(filename or "", ctype, len(body)))
            continue
        charset = part_charset(part, msg.defects)
        if charset:
            msg.charsets.append(charset[:30])
        decoded, undecodable = decode_bytes(body[:MAX_PART_TEXT], charset)
        if undecodable:
            msg.defects.append("body-charset")
        if ctype == "text/html":
            html_parts.append(decoded)
        else:
            text_parts.append(decoded)
    msg.text = "\n".join(text_parts)
    for markup in html_parts:
        visible, tags, urls, features = html_to_text(markup)
        msg.html_text += visible + "\n"  # html_to_text has unescaped it once
        for tag, count in tags.items():
            msg.html_tags[tag] = msg.html_tags.get(tag, 0) + count
        msg.urls.extend(urls)
        msg.html_features.extend(features)
    msg.urls.extend(find_urls(msg.text))
    return msg
