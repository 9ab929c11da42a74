"""MIME parameters read as the stdlib reads them, in linear time (stronghold/mimeparams.py)."""

from __future__ import annotations

import email.message
import time

from hypothesis import example, given, settings
from hypothesis import strategies as st

from stronghold.message import parse
from stronghold.mimeparams import NOT_A_CHARSET, known_charsets, read_params, split_params


def stdlib_params(value: str) -> object:
    msg = email.message.Message()
    msg["Content-Type"] = value
    return msg._get_params_preserve(None, "content-type")  # type: ignore[attr-defined]


field_text = st.lists(st.sampled_from([";", '"', "\\", "=", "*", "'", "%41", "%", "a", "B", " ", "\t", "0", "1",
                                       "name", "charset", "utf-8", "''", "*0", "*1*", "\\\""]),
                      max_size=40).map("".join)


@settings(max_examples=1000, deadline=None)
@given(field_text)
@example('text/plain; a="x;y"; b=c')
@example('a; b="\\";"; c=d')
@example("a; name*0*=utf-8''%C3; name*1*=%A9; x=\"")
@example(";;;")
@example("")
def test_the_stdlibs_parameters(value: str) -> None:
    assert read_params(value) == stdlib_params(value)
    assert split_params(value) == email.message._parseparam(value)  # type: ignore[attr-defined]


def test_linear_in_the_length_of_the_field() -> None:
    """Quoted ';' made the stdlib's reading quadratic: 100k of them took 8 s (2 MB: most of an
    hour); many short parameters copied the rest of the field once each."""
    continuations = b"".join(b"n*%d*=%%41; " % i for i in range(20_000))
    for body in (b'a="' + b";" * 100_000 + b'"', b"a=b; " * 40_000, continuations):
        for field in (b"Content-Type: text/plain; ", b"Content-Disposition: attachment; "):
            raw = field + body + b"\r\nContent-Type: application/pdf\r\n\r\nbody"
            started = time.process_time()
            parse(raw)
            assert time.process_time() - started < 1, raw[:50]


def test_every_part_read_in_linear_time() -> None:
    """4 kB of quoted ';' in each of 240 parts' fields: 6.7 s with the stdlib's reading."""
    part = (b'--b\r\nContent-Type: text/plain; a="' + b";" * 4090 + b'"\r\n'
            b'Content-Disposition: attachment; a="' + b";" * 4090 + b'"\r\n\r\nx\r\n')
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + part * 240 + b"--b--\r\n"
    started = time.process_time()
    msg = parse(raw)
    assert time.process_time() - started < 2
    assert msg.content_types.count("text/plain") >= 190 and "too-many-parts" in msg.defects


def test_charsets_that_are_no_character_set_become_unknown() -> None:
    params = read_params("application/pdf; name*=punycode''abc; title*=utf-8''%C3%A9")
    assert known_charsets(params) == [("application/pdf", ""), ("name", (NOT_A_CHARSET, "", '"abc"')),
                                      ("title", ("utf-8", "", '"\xc3\xa9"'))]
