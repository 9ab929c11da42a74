"""Text written by strangers (subjects, senders, file names), made safe to show as text.

Pages and the digest mail escape markup; this handles what escaping does not:
characters that are invisible or reorder the text around them.  A subject
``Invoice <U+202E>fdp.exe`` reads as "Invoice exe.pdf" in a browser, and a
zero-width space hides inside a look-alike address.  ``visible`` (the web UI's
Jinja filter ``visible``, and ``stronghold.digest``) replaces every such
character with U+FFFD, so the reader sees that something is there.

Replaced: control characters (but tab and newline), the Unicode format
characters (category Cf: bidi embeddings, overrides, isolates and marks,
zero-width spaces, the word joiner, soft hyphen, byte-order mark, tags), the
line and paragraph separators and the invisible Hangul fillers.  Kept: the
zero-width joiner and non-joiner, which Persian, Indic scripts and emoji
sequences need, and the prepended concatenation marks (Arabic number signs
and the like), which are visible signs; none of them reorders text.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
# Category Cf characters left alone (see above); tests check the rest of Cf is replaced.
KEPT_FORMAT_CHARS = frozenset("\u200c\u200d\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891"
                              "\u08e2\U000110bd\U000110cd")

_CONTROL = "\x00-\x08\x0b-\x1f\x7f-\x9f"
_FORMAT = ("\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
           "\ufff9-\ufffb\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
           "\U000e0001\U000e0020-\U000e007f")
_INVISIBLE = "\u2028\u2029\u115f\u1160\u3164\uffa0"
UNSAFE_CHARS = re.compile(f"[{_CONTROL}{_FORMAT}{_INVISIBLE}]")


def visible(text: str | None) -> str:
    """``text`` with hidden and direction-changing characters replaced by U+FFFD ("" for None)."""
    return UNSAFE_CHARS.sub(REPLACEMENT, text) if text else ""
