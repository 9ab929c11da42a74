"""message.py's and mimetree.py's scans in C (stronghold._mimecore) read exactly what the Python reference reads.

The header block of a one-part message (``header_fields``), the URLs of plain text
(``find_urls``), plain header values (``plain_fields``, also against ``decode_header_value``)
and the end of the header block (``blank_line``, against the regex it replaced):
every corpus message, generated input rich in the characters each scan decides on, and
hostile sizes.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stronghold import message, mimetree
from stronghold._mimecore import find_urls, header_fields, plain_fields  # fails when the native core is not built
from tests.conftest import mbox_stripped

BLANK_LINE = re.compile(rb"\r?\n\r?\n")  # what blank_line() stands in for


def _regex_blank(raw: bytes) -> tuple[int, int] | None:
    found = BLANK_LINE.search(raw)
    return (found.start(), found.end()) if found else None


def test_the_parser_uses_the_native_scans() -> None:
    assert mimetree.header_fields is header_fields
    assert message.find_urls is find_urls
    assert message.plain_fields is plain_fields


@pytest.mark.corpus
def test_every_corpus_message_reads_the_same(corpus_raws: list[bytes]) -> None:
    plain = 0
    for raw in corpus_raws:
        for variant in (raw, mbox_stripped(raw)):
            native = header_fields(variant)
            assert native == mimetree._header_fields_py(variant), variant[:200]
            plain += native is not None
            assert mimetree.blank_line(variant) == _regex_blank(variant)
        text = raw.decode("latin-1")  # every byte a character: URLs amid any text
        assert find_urls(text) == message._find_urls_py(text)
    assert plain > 5000  # most corpus mail is one plain part once the mbox line is gone


@pytest.mark.corpus
def test_urls_of_parsed_text_read_the_same(corpus_raws: list[bytes]) -> None:
    found = 0
    for raw in corpus_raws[::4]:
        text = message.parse(raw).text
        urls = find_urls(text)
        assert urls == message._find_urls_py(text)
        found += len(urls)
    assert found > 1000


@pytest.mark.parametrize("letter", "htpsw")
def test_the_ignore_case_letters_are_the_ones_sre_folds(letter: str) -> None:
    """The C code knows h t p w in either case and s, S, U+017F: the only characters sre's
    ignore-case matching takes for them (checked over all of Unicode)."""
    pattern = re.compile("(?i)" + letter)
    folded = {c for c in map(chr, range(0x110000)) if pattern.fullmatch(c)}
    assert folded == ({"s", "S", "\u017f"} if letter == "s" else {letter, letter.upper()})
    for c in folded:
        text = "https://x www.y".replace(letter, c, 1)
        assert find_urls(text) == message._find_urls_py(text) and find_urls(text)


URL_TEXT = st.lists(st.sampled_from(
    ["h", "H", "t", "T", "p", "P", "s", "S", "\u017f", "w", "W", "www.", "http", "https", "://", ":", "/",
     ".", "x", "_", "1", "é", "İ", "\U0001d400", " ", "\t", "\n", "\xa0", "\u2028", "\x1c", "\x85", "<", ">",
     '"', "'", "(", ")", "[", "]", "{", "}", "\x00", "\udc80"]), max_size=80).map("".join)


@settings(max_examples=600, deadline=None)
@given(URL_TEXT)
def test_generated_text_gives_the_same_urls(text: str) -> None:
    assert find_urls(text) == message._find_urls_py(text)


HEADER_BYTES = st.lists(st.sampled_from(
    [b"From ", b"From:", b"Subject:", b"Content-Type: multipart/mixed", b"Content-Type: text/plain",
     b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"a", b"x-y", b"\xe9", b"\x7f", b"\x01", b"\x00", b"=?"]),
    max_size=40).map(b"".join)


@settings(max_examples=800, deadline=None)
@given(HEADER_BYTES, st.binary(max_size=20))
def test_generated_header_blocks_read_the_same(head: bytes, body: bytes) -> None:
    for raw in (head, head + b"\r\n\r\n" + body, head + b"\n\n" + body):
        assert header_fields(raw) == mimetree._header_fields_py(raw)
        assert mimetree.blank_line(raw) == _regex_blank(raw)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"a", b"\r\n"]), max_size=30).map(b"".join))
def test_the_end_of_the_header_block_is_where_the_regex_found_it(raw: bytes) -> None:
    assert mimetree.blank_line(raw) == _regex_blank(raw)


@pytest.mark.parametrize("text", ["http" * 250_000, "www." * 250_000, "http://" + "a" * 1_000_000,
                                  "xhttp://a " * 100_000, " " * 1_000_000])
def test_huge_text_reads_the_same(text: str) -> None:
    assert find_urls(text) == message._find_urls_py(text)


@pytest.mark.parametrize("raw", [b"A: b\r\n" * 100_000 + b"\r\n", b"A: " + b"x" * 2_000_000,
                                 b" continued\n" * 1000 + b"\n", b"A:\n" + b" \t\n" * 50_000 + b"\nbody"])
def test_huge_header_blocks_read_the_same(raw: bytes) -> None:
    assert header_fields(raw) == mimetree._header_fields_py(raw)


def _check_plain(fields: list, limit: int = message.MAX_HEADER_VALUE) -> list:
    """plain_fields against its Python reference, and each value it reads against how parse()
    reads any value (decode_header_value: the same text, no defect, mailbox header or not)."""
    read = plain_fields(fields, limit)
    assert read == message._plain_fields_py(fields, limit)
    for (name, value), pair in zip(fields, read, strict=True):
        if pair is None:
            continue
        assert pair[0] is name
        if limit == message.MAX_HEADER_VALUE:  # the limit parse() reads with
            for phrase in (False, True):
                assert message.decode_header_value(value, phrase) == (pair[1], [])
    return read


HEADER_VALUES = st.lists(st.sampled_from(
    ["a", "Z", "=", "?", "=?", "?=", "=?utf-8?q?x?=", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f",
     "\x1b", "\x20\t", "\xa0", "\x85", "\u2028", "é", "\udce9", "\x00", ":", "<a@b>"]), max_size=30).map("".join)


@settings(max_examples=800, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Subject", "From", "X-A"]), HEADER_VALUES), max_size=6),
       st.integers(min_value=0, max_value=12))
def test_generated_header_values_read_the_same(fields: list[tuple[str, str]], limit: int) -> None:
    _check_plain(fields, limit)
    _check_plain(fields)


@pytest.mark.corpus
def test_every_corpus_header_value_reads_the_same(corpus_raws: list[bytes]) -> None:
    plain = seen = 0
    for raw in corpus_raws:
        fields = message.email.message_from_bytes(raw).raw_items()
        read = _check_plain(list(fields))
        seen += len(read)
        plain += sum(pair is not None for pair in read)
    assert plain > 0.9 * seen


def test_plain_values_at_the_limit_and_beyond() -> None:
    limit = message.MAX_HEADER_VALUE
    header = object()  # a value that is no str (an email.header.Header) is never plain
    fields = [("A", "x" * (limit - 1) + "=?"), ("B", "x" * (limit - 2) + "=?"), ("C", " y " * limit),
              ("D", "z" * (limit + 5)), ("E", header), ("F", ""), ("G", "   ")]
    read = _check_plain(fields)
    assert read[0] == ("A", "x" * (limit - 1) + "=") and read[1] is None
    assert read[3] == ("D", "z" * limit) and read[4] is None and read[5] is fields[5] and read[6] == ("G", "")


def test_wrong_types_are_refused_cleanly() -> None:
    with pytest.raises(TypeError):
        find_urls(b"http://x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        header_fields("A: b\n\n")  # type: ignore[arg-type]
