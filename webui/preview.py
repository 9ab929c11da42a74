"""A quarantined message as plain text, safe to put in front of its recipient.

The preview is text only: the decoded text/plain part, or else the HTML part
turned into text by the filter's own scanner (``htmltext.html_to_text``), plus
decoded headers, link targets and attachment names as text.  Nothing here is
markup: templates escape every string, so ``<script>`` in a message shows as
those characters.  Control characters and Unicode direction overrides (which
can disguise a sender or a file name) are made visible as U+FFFD by
``webui.safetext.visible``, the helper every page uses for such text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stronghold.htmltext import html_to_text
from stronghold.lists import shown_from
from stronghold.message import (
    MAX_BYTES,
    MAX_PART_TEXT,
    Attachment,
    _leaves,
    _payload_bytes,
    decode_bytes,
    parse,
    part_charset,
)
from stronghold.mimetree import mime_tree
from webui.safetext import visible

MAX_PREVIEW_CHARS = 100_000
MAX_LINKS = 40
SHOWN_HEADERS = ("From", "Reply-To", "To", "Cc", "Date", "Subject")

# Where a block element starts or ends, the text gets a line break.
_BLOCK = re.compile(r"(?i)<(?=/?(?:br|p|div|tr|li|h[1-6]|table|blockquote|hr|ul|ol|pre)\b)")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class Preview:
    headers: list[tuple[str, str]]
    body: str
    source: str  # "text", "html" or "none": where the body came from
    links: list[str]
    attachments: list[Attachment]
    truncated: bool
    defects: list[str]


def _tidy(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _html_parts(raw: bytes) -> list[str]:
    """Decoded text/html leaves (not attachments), bounded like ``message.parse``."""
    defects: list[str] = []
    out: list[str] = []
    for part, _depth in _leaves(mime_tree(raw[:MAX_BYTES].replace(b"\x00", b""), defects), defects):
        if part.get_content_type() != "text/html":
            continue
        try:
            if part.get_filename():
                continue
        except (LookupError, ValueError, TypeError):
            continue
        text, _bad = decode_bytes(_payload_bytes(part, defects)[:MAX_PART_TEXT], part_charset(part, defects))
        out.append(text)
    return out


def _shown(name: str, value: str) -> str:
    """A From as every page shows it (``lists.shown_from``: the real address, warnings in brackets)."""
    if name != "From":
        return value
    shown = shown_from(value)
    return shown.text + "".join(f" [{w}]" for w in shown.warnings) if shown.text else value


def render(raw: bytes) -> Preview:
    """The text preview of ``raw``; never raises on message content."""
    msg = parse(raw)
    headers = [(name, visible(_shown(name, value))) for name in SHOWN_HEADERS for value in msg.header_all(name)]
    links: list[str] = []
    if msg.text.strip():
        body, source = msg.text, "text"
        links = list(msg.urls)
    else:
        pieces = []
        for markup in _html_parts(raw):
            text, _tags, urls, _features = html_to_text(_BLOCK.sub("\n<", markup))
            pieces.append(text)
            links.extend(urls)
        body = "\n\n".join(pieces)
        source = "html" if body.strip() else "none"
    body = _tidy(body)
    truncated = len(body) > MAX_PREVIEW_CHARS
    unique_links = list(dict.fromkeys(visible(u) for u in links))[:MAX_LINKS]
    attachments = [Attachment(visible(a.filename), a.content_type, a.size) for a in msg.attachments]
    return Preview(headers, visible(body[:MAX_PREVIEW_CHARS]), source, unique_links, attachments,
                   truncated, sorted(set(msg.defects)))
