"""Which declared charsets the filter decodes with: Python's text codecs, less those that are not.

A message names its charset itself (``charset=`` parameters, encoded words), and Python's codec
registry holds more than character sets: codecs of bytes to bytes (``base64``, ``zlib``), one
that always fails (``undefined``), IDNA and Punycode (domain-name syntax; Punycode decodes in
time quadratic in its input, ~40 s CPU for half a megabyte) and Python string-literal escapes.
``text_codec`` gives a codec only for a name that is a character set, so a decode with it
raises at most ``UnicodeDecodeError`` and costs time linear in the bytes.
"""

from __future__ import annotations

import codecs
from functools import lru_cache

# text codecs that are no character set of mail (codecs.lookup normalized names)
NOT_CHARSETS = frozenset({"undefined", "idna", "punycode", "unicode-escape", "raw-unicode-escape"})


@lru_cache(maxsize=256)
def text_codec(charset: str) -> str | None:
    """The codec name for ``charset`` (as a message declares it: any case, quotes, blanks),
    or None when Python knows no character set of that name."""
    name = charset.strip().strip('"').strip().lower()
    if not name or "\x00" in name:
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in NOT_CHARSETS:
        return None
    return info.name
