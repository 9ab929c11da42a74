"""Header values: decoding whatever arrives, prefixing, encoding what we write back."""

from __future__ import annotations

import base64
import email.header

import pytest

from stronghold.headers import decode_value, encode_value, ours, prefixed, shorten_from
from stronghold.lists import from_address

ISSUE = "Hosting from £6.50 per month über 日本"


def _read(value: str) -> str:
    """What a mail client shows for an encoded header value."""
    return str(email.header.make_header(email.header.decode_header(value)))


@pytest.mark.parametrize("raw, text", [
    (ISSUE.encode("utf-8"), ISSUE),  # raw 8-bit UTF-8
    ("Hosting from £6.50 über".encode("latin-1"), "Hosting from £6.50 über"),  # raw 8-bit Latin-1
    ("Price \u20ac5 \u2013 now".encode("cp1252"), "Price \u20ac5 \u2013 now"),
    (b"=?iso-8859-1?q?Hosting_from_=A36.50_=FCber?=", "Hosting from £6.50 über"),
    (b"=?utf-8?b?" + base64.b64encode(ISSUE.encode()) + b"?=", ISSUE),
    (b"=?koi8-r?b?" + base64.b64encode("Привет мир".encode("koi8-r")) + b"?=", "Привет мир"),
    (b"=?UTF-8?Q?caf=C3=A9?= =?UTF-8?Q?_au_lait?= today", "café au lait today"),  # no space between words
    (b"Re: =?utf-8*en?q?d=C3=A9j=C3=A0?= vu", "Re: déjà vu"),  # RFC 2231 language
    (b"a long subject\r\n\tfolded over =?x-unknown?q?caf=C3=A9?=", "a long subject folded over café"),
    (b"=?bogus-charset?B?!!!?=", "=?bogus-charset?B?!!!?="),  # undecodable: kept as written
    (b"=?utf-8?q?a=0D=0ABcc:_x?=", "a Bcc: x"),  # no header injection through control characters
])
def test_decode_value(raw: bytes, text: str) -> None:
    assert decode_value(raw) == text


@pytest.mark.parametrize("raw", [ISSUE.encode("utf-8"), ISSUE.encode("utf-8").decode("utf-8"),
                                 b"=?utf-8?b?" + base64.b64encode(ISSUE.encode()) + b"?="])
def test_prefixed_subject_is_ascii_folded_and_reads_back(raw) -> None:
    new = prefixed(raw, "[SPAM]")
    assert new is not None and new.isascii()
    assert all(len(line) <= 76 for line in ("Subject: " + new).splitlines())
    assert _read(new) == "[SPAM] " + ISSUE


def test_long_subjects_are_folded_and_a_prefix_is_added_once() -> None:
    long = ("ünïcödé " * 40).strip()
    new = prefixed(long.encode(), "[SPAM]")
    assert new is not None and len(new.splitlines()) > 3 and _read(new) == "[SPAM] " + long
    assert prefixed(b"[SPAM] already", "[SPAM]") is None
    assert prefixed(None, "[SPAM]") == "[SPAM]"
    assert encode_value("Subject", "plain ascii") == "plain ascii"


def test_own_header_names() -> None:
    for name in ("X-Spam-Flag", "x-spam-level", "X-Spam-Report", "X-SPAM-Checker-Version", "X-Spam-Whatever",
                 "X-Stronghold-Queue-Id"):
        assert ours(name)
    for name in ("Subject", "X-Spammer", "X-Mailer", "Spam-Flag"):
        assert not ours(name)


LONG_NAME = '"' + "A" * 299 + '" <boss@bank.example.evil.example>'  # a cut at 320 ends after bank.example


@pytest.mark.parametrize("value, address", [
    (LONG_NAME, "boss@bank.example.evil.example"),
    ("Bob <bob@x.example>", "bob@x.example"),
    ('"' + "é" * 200 + '" <a@b.example>, "' + "B" * 200 + '" <c@d.example>', None),  # still two
    ("a" * 300 + "@" + "b" * 30 + ".example", None),  # the address alone does not fit: nothing
])
def test_shorten_from_never_cuts_an_address(value: str, address: str | None) -> None:
    short = shorten_from(value)
    assert len(short) <= 320
    assert from_address(short) == address
    if len(value) <= 320:
        assert short == value
