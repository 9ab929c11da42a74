"""ParsedMessage -> the set of features the classifier scores.

Tokens are scoped by where they come from (``subject:``, ``from:``, ``url:``,
``received:`` ...) because the same word means different things in different
places.  Body words are case-folded; over-long words become a ``skip:`` token
that keeps their first character and rough length; URLs give their host and
every parent domain; markup, attachments, charsets and parser defects give
tokens of their own.  Ideas were kept only when they improved (1-AUC) on the
standard split (see docs/classifier.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from stronghold import nativecore
from stronghold.message import ParsedMessage, url_host

# Bumped whenever the features of a given message change (tokenizer or parser):
# a model trained with another version still loads, with a warning to retrain.
# 2: HTML read by our own scanner (htmltext.html_to_text) instead of html.parser.
# 3: timestamps of the collector (Delivery-Date, X-Original-Date, ...) no longer features; only
#    the 4 oldest Received headers are.
# 4: 8-bit bodies read as the bytes they are (a Latin-1 "Café" was read "CafÃ©", an unlabelled
#    one "Caf\ufffd").
TOKENIZER_VERSION = 4

MAX_TEXT = 200_000
MIN_WORD = 3
MAX_WORD = 12

_STRIP = "\"'()[]{}<>.,;:!?*-_=+|\\/`~^"
_ADDR_RE = re.compile(r"([\w.+-]+)@([\w-]+(?:\.[\w-]+)+)")
_IP_RE = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b")
_HOSTNAME_RE = re.compile(r"\b((?:[a-z0-9-]+\.)+[a-z]{2,})\b")
_HEADER_WORD = re.compile(r"[\w$%&@.!'+-]{2,40}")
_URL_PIECES = re.compile(r"[/?=&._~%:#+-]+")

# Headers whose values are tokenized word by word, under their own name.
_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to", "sender", "return-path", "errors-to")
# Dates say when a corpus was collected, not what a message is: skipped (as is our own verdict).
_SKIP_HEADERS = {"date", "delivery-date", "x-original-date", "resent-date", "x-originalarrivaltime",
                 "delivered-to", "x-spam-status", "x-spam-flag", "x-spam-score",
                 "x-spam-level", "x-spam-checker-version", "x-spam-report", "x-spam-prev-subject",
                 "x-stronghold-queue-id"}
# Headers whose whole value is a token too (spaces squeezed), besides its words.
_LISTED_HEADERS = ("x-mailer", "user-agent", "x-mimeole", "x-msmail-priority", "importance", "x-priority",
                   "content-type", "mime-version", "precedence", "list-id")


# Families (see family()): tokens that describe one fact about a message.
_FORMAT = frozenset({"tag", "html", "part", "cte", "charset", "content-type", "content-transfer-encoding",
                     "mime-version", "size", "8bit%", "urls", "proto", "att", "defect"})
_ROUTE = frozenset({"received", "return-path", "sender", "errors-to", "x-beenthere", "x-mailman-version",
                    "precedence", "x-loop", "mailing-list", "x-mailing-list"})
_CONTENT = frozenset({"subject", "skip"})
_family_cache: dict[str, str | None] = {}


def family(token: str) -> str:
    """The family of a token: one fact about a message that many tokens may describe.

    The words of a message (body and subject) are their own family each: they
    are the content.  Every other token belongs to the scope it came from:
    ``FORMAT`` for how the message was written (markup, MIME structure,
    transfer encodings, charsets, size), ``ROUTE`` for how it travelled
    (``Received``, ``Return-Path``, mailing-list headers), else its own prefix
    (``from``, ``url``, ``urlpath``, ``x-mailer`` ...).  A family votes once in
    the classifier, so ten markup tokens of one newsletter are one clue, not ten.
    """
    prefix, colon, _rest = token.partition(":")
    if not colon:
        return token
    return prefix_family(prefix) or token


def prefix_family(prefix: str) -> str | None:
    """The family of the tokens ``prefix:...`` (see ``family``); None for content (each its own)."""
    try:
        return _family_cache[prefix]
    except KeyError:
        pass
    if prefix in _CONTENT:
        found = None
    elif prefix in _FORMAT:
        found = "FORMAT"
    elif prefix in _ROUTE or prefix.startswith("list-"):
        found = "ROUTE"
    else:
        found = prefix + ":"
    if len(_family_cache) < 10_000:
        _family_cache[prefix] = found
    return found


def _word_tokens_py(text: str, prefix: str, out: set[str]) -> None:
    """The words of ``text[:MAX_TEXT]``: case-folded, ``UPPER``, emails, ``skip:`` (a long word)."""
    for raw in set(text[:MAX_TEXT].split()):  # each distinct word once
        word = raw.strip(_STRIP)
        n = len(word)
        if n < MIN_WORD:
            continue
        if n <= MAX_WORD:
            out.add(prefix + word.lower())
            if word.isupper() and n > 3 and word.isalpha():
                out.add(prefix + "UPPER")
        elif "@" in word and _ADDR_RE.search(word):
            for user, domain in _ADDR_RE.findall(word):
                out.add(prefix + "email-user:" + user.lower()[:20])
                _domain_tokens_py(domain.lower(), prefix + "email-domain:", out)
        elif word.lower().startswith(("http", "www.")):
            continue  # URLs are tokenized from msg.urls
        else:
            out.add(f"{prefix}skip:{word[0].lower()} {n // 10 * 10}")


def _domain_tokens_py(host: str, prefix: str, out: set[str]) -> None:
    """``a.b.example.com`` -> the host and each parent domain."""
    if _IP_RE.fullmatch(host):
        out.add(prefix + "ip")
        a, b, c, _ = host.split(".")
        out.add(f"{prefix}{a}.{b}.{c}")
        return
    parts = host.split(".")
    for i in range(max(0, len(parts) - 4), len(parts) - 1):
        out.add(prefix + ".".join(parts[i:]))


def _header_words_py(value: str, prefix: str, limit: int, out: set[str]) -> None:
    """``prefix`` + each of the first ``limit`` words of the lower-cased header value."""
    for word in _HEADER_WORD.findall(value.lower())[:limit]:
        out.add(prefix + word)


def _address_header_py(name: str, value: str, out: set[str]) -> None:
    """Addresses (each with its domains), display-name words and the address count."""
    low = value.lower()
    addrs = _ADDR_RE.findall(low)
    if not addrs:
        out.add(f"{name}:no-address")
    for user, domain in addrs[:10]:
        out.add(f"{name}:addr:{user[:30]}@{domain}")
        _domain_tokens_py(domain, f"{name}:domain:", out)
    display = value.split("<", 1)[0] if "<" in value else ""
    for word in _HEADER_WORD.findall(display):
        out.add(f"{name}:name:{word.lower()}")
    if len(addrs) > 1:
        out.add(f"{name}:count:{min(len(addrs), 10) // 3}")


def _received_py(value: str, out: set[str]) -> None:
    """Host names (each with its domains), IP networks and telling words of a Received header."""
    low = value.lower()
    for host in _HOSTNAME_RE.findall(low)[:10]:
        _domain_tokens_py(host, "received:", out)
    for ip in _IP_RE.findall(low)[:5]:
        out.add("received:ip:" + ".".join(ip[:3]))
    for word in ("esmtp", "smtp", "imap", "localhost", "unknown", "qmail", "postfix", "sendmail",
                 "exim", "microsoft", "authenticated", "[127.0.0.1]", "helo"):
        if word in low:
            out.add("received:" + word)


MAX_URLS = 100  # URLs tokenized per message
EIGHT_BIT_HEAD = 20_000  # the body's characters whose share of non-ASCII is 8bit%:


def _url_tokens_py(urls: list[str], out: set[str]) -> None:
    """Per URL (the first MAX_URLS): scheme, host and its domains, userinfo, escapes, path pieces."""
    for url in urls[:MAX_URLS]:
        low = url.lower()
        out.add("proto:" + ("https" if low.startswith("https") else "http"))
        host = url_host(low)
        if host:
            _domain_tokens_py(host, "url:", out)
        authority = low.split("/", 3)[2] if low.count("/") >= 2 else ""
        if "@" in authority:
            out.add("url:userinfo")
        if "%" in low:
            out.add("url:escaped")
        path = low.split(host, 1)[-1] if host else low
        for piece in _URL_PIECES.split(path)[:20]:
            if 2 < len(piece) <= MAX_WORD:
                out.add("urlpath:" + piece)


def _structure_py(msg: ParsedMessage, out: set[str]) -> None:
    """MIME parts, charsets, transfer encodings, attachments, defects, HTML, size, URL count."""
    for ctype in msg.content_types[:50]:
        out.add("part:" + ctype)
    for charset in msg.charsets:
        out.add("charset:" + charset.lower())
    for cte in msg.encodings:
        out.add("cte:" + cte)
    for att in msg.attachments[:50]:
        out.add("att:type:" + att.content_type)
        if "." in att.filename:
            out.add("att:ext:" + att.filename.rsplit(".", 1)[1].lower()[:10])
    for defect in msg.defects:
        out.add("defect:" + defect)
    for tag, count in msg.html_tags.items():
        out.add("tag:" + tag[:20])
        if count > 10:
            out.add(f"tag:{tag[:20]}:many")
    for feature in msg.html_features:
        out.add("html:" + feature)
    if msg.html_tags and not msg.text.strip():
        out.add("html:only")
    out.add(f"size:{min(msg.size.bit_length(), 24)}")
    out.add(f"urls:{min(len(msg.urls), 20) // 4}")


def _eight_bit_py(msg: ParsedMessage, out: set[str]) -> None:
    """``8bit%:N``: tenths of the share of non-ASCII characters in the body's first EIGHT_BIT_HEAD."""
    body = msg.text + msg.html_text
    if body:
        head = body[:EIGHT_BIT_HEAD]
        nonascii = 0 if head.isascii() else len(head) - len(head.encode("ascii", "ignore"))
        out.add(f"8bit%:{min(100, nonascii * 100 // max(1, len(head))) // 10}")


MAX_RECEIVED = 4  # the oldest hops: the sender's side (the newest are the receiving site's own, alike for all mail)


def _headers_py(msg: ParsedMessage, out: set[str]) -> None:
    """The oldest Received headers, every other header but _SKIP_HEADERS by its name, the counts."""
    counts: dict[str, int] = {}
    received = [value for name, value in msg.headers if name.lower().strip() == "received"]
    for value in received[-MAX_RECEIVED:]:
        _received_py(value, out)
    for name, value in msg.headers:
        key = name.lower().strip()[:40]
        counts[key] = counts.get(key, 0) + 1
        if key in _SKIP_HEADERS:
            continue
        if key == "subject":
            _word_tokens_py(value, "subject:", out)
            for run in re.findall(r"[!$%*?]{1,}", value):
                out.add("subject:punct:" + run[:3])
            if value.isupper() and len(value) > 5:
                out.add("subject:ALLCAPS")
        elif key in _ADDRESS_HEADERS:
            _address_header_py(key, value, out)
        elif key == "received":
            continue  # above
        elif key == "message-id":
            m = re.search(r"@([^>\s]+)", value)
            out.add("message-id:@" + (m.group(1).lower()[:40] if m else "none"))
        elif key in _LISTED_HEADERS:
            out.add(f"{key}:{' '.join(value.lower().split())[:60]}")
            _header_words_py(value, f"{key}:w:", 20, out)
        else:
            _header_words_py(value, f"{key}:w:", 20, out)
    for key, count in counts.items():
        out.add(f"header:{key}:{min(count, 5)}")
    if not msg.header("message-id"):
        out.add("header:no-message-id")
    if not msg.header("date"):
        out.add("header:no-date")


# The C versions of the functions above (stronghold/native/wordcore.c, which also has the
# parts _headers_py and _url_tokens_py call) when built: the same tokens, several times faster.  The Python
# functions stay the reference the tests compare them with, and the fallback.
_native = nativecore.load("wordcore")
_word_tokens: Callable[[str, str, set[str]], None] = _native.word_tokens if _native else _word_tokens_py
_domain_tokens: Callable[[str, str, set[str]], None] = _native.domain_tokens if _native else _domain_tokens_py
_headers: Callable[[ParsedMessage, set[str]], None] = _native.headers if _native else _headers_py
_url_tokens: Callable[[list[str], set[str]], None] = _native.url_tokens if _native else _url_tokens_py
_structure: Callable[[ParsedMessage, set[str]], None] = _native.structure if _native else _structure_py
_eight_bit: Callable[[ParsedMessage, set[str]], None] = _native.eight_bit if _native else _eight_bit_py


def features(msg: ParsedMessage) -> set[str]:
    """All feature tokens of a parsed message (a set: presence, not counts)."""
    out: set[str] = set()
    _headers(msg, out)
    _word_tokens(msg.text, "", out)
    _word_tokens(msg.html_text, "", out)
    _url_tokens(msg.urls, out)
    _structure(msg, out)
    _eight_bit(msg, out)
    return out
