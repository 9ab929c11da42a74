"""MIME parameters (``Content-Type: text/plain; charset=x``) as the stdlib reads them, in linear time.

``Message.get_param`` and everything behind it (``get_boundary``, ``get_filename``,
``get_content_charset``) read a field with ``email.message._parseparam``, which copies the
rest of the field at each ``;`` and, within quotes, counts the quotes before each ``;``
again: quadratic.  A 2 MB Content-Type of quoted ``;`` held a worker for most of an hour,
one of 4 kB in each of 250 parts for 7 s.  ``read_params`` gives the stdlib's list for the
same field in one pass; ``mimetree.IndexedMessage`` reads every part's parameters with it.
"""

from __future__ import annotations

import email.utils

from stronghold.charsets import text_codec

# What an RFC 2231 parameter's charset becomes when it is no character set: a name no codec has
NOT_A_CHARSET = "x-not-a-charset"

Param = tuple[str, "str | tuple[str | None, str | None, str]"]


def split_params(value: str) -> list[str]:
    """``email.message._parseparam(value)``: the ``;``-separated pieces (a ``;`` within quotes
    is no separator), each stripped, its name lower-cased; each character looked at a bounded
    number of times (within quotes, from quote to quote rather than at each ``;``)."""
    s = ";" + value
    pieces: list[str] = []
    pos = 0
    while s.startswith(";", pos):
        start = pos + 1
        end = s.find(";", start)
        quotes = 0  # unescaped quotes in s[start:end]: a '\"' never holds the ';' at a cut
        counted = start
        while end > start:
            quotes += s.count('"', counted, end) - s.count('\\"', counted, end)
            counted = end
            if quotes % 2 == 0:
                break
            quote = s.find('"', end)  # the count stays odd at each ';' before the next quote
            end = -1 if quote < 0 else s.find(";", quote + 1)
        if end < 0:
            end = len(s)
        piece = s[start:end]
        if "=" in piece:
            i = piece.index("=")
            piece = piece[:i].strip().lower() + "=" + piece[i + 1:].strip()
        pieces.append(piece.strip())
        pos = end
    return pieces


def read_params(value: str) -> list[Param]:
    """``Message._get_params_preserve`` of a field holding ``value``: (name, value) pairs, an
    RFC 2231 value as (charset, language, text), as ``email.utils.decode_params`` makes them."""
    params: list[tuple[str, str]] = []
    for piece in split_params(value):
        name, sep, val = piece.partition("=")
        params.append((name.strip(), val.strip()) if sep else (piece.strip(), ""))
    return email.utils.decode_params(params)


def known_charsets(params: list[Param]) -> list[Param]:
    """``params`` with the charset of each RFC 2231 value (``name*=charset'lang'text``) that
    Python knows as no character set (``charsets.text_codec``: ``idna``, ``punycode``...) made
    an unknown one: the stdlib decodes a value with its charset (``get_filename``,
    ``get_boundary``, ``get_content_charset``) and reads one it does not know as written.
    Punycode decodes in quadratic time: a 200 kB ``name*=punycode''...`` held a worker 6 s."""
    return [(name, (NOT_A_CHARSET, *value[1:]))
            if isinstance(value, tuple) and value[0] and text_codec(value[0]) is None
            else (name, value) for name, value in params]
