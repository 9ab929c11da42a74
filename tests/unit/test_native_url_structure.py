"""The C tail of ``tokens.features`` (wordcore's url_tokens, structure, eight_bit) gives exactly
the tokens of the Python references ``tokens._url_tokens_py``, ``_structure_py``, ``_eight_bit_py``.

Compared on every corpus message, on generated URLs (schemes given back, userinfo, odd hosts,
percent signs, Unicode that lower-cases to other lengths or is an 's' to ``(?i)``), on generated
message structure, at the limits (100 URLs, 20 path pieces, 50 parts, 20,000 body characters),
and on hostile 1 MB input, which must take linear time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stronghold import _wordcore as wordcore  # type: ignore[attr-defined]  # (fails unless built)
from stronghold import tokens
from stronghold.message import Attachment, ParsedMessage, url_host
from tests.unit.test_native_tokens import ALPHABET, PIECES, SPACES, corpus_parsed, run, same

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.corpus
def test_each_corpus_message_and_url(corpus_raws: list[bytes]) -> None:
    for msg in corpus_parsed(corpus_raws):
        same("_url_tokens", msg.urls)
        same("_structure", msg)
        same("_eight_bit", msg)
        for url in msg.urls:  # alone: in a message's set, one URL's tokens can hide another's
            same("_url_tokens", [url])


# Pieces of URLs glued at random: every branch of message.url_host (scheme taken or given back,
# userinfo taken or given back) and of the path's split.
URL_PIECES = ("http://", "https://", "HTTPS://", "Http://", "http\u017f://", "HTTP\u017f://", "http:/", "https:",
              "http", "https", "ftp://", "www.", "//", "/", "/", ":", "?", "#", "@", "@", "%", "%20", "&", "=", "~",
              "+", "-", "_", ".", "..", "user", "u:p@", "a@b@", "Example", "COM", "mail.example.com", "1.2.3.4",
              "١.٢.٣.٤", "İ", "K", "Σ", "ß", "\u017f", "é", "中", "\U00010400", "\u0301", " ", "\t", "\xa0",  # noqa: RUF001
              "\u3000", "\x85", "abc", "abcdefghijklm", "x" * 12, "index.html", "?q=1")
urls = st.one_of(st.lists(st.sampled_from(URL_PIECES), max_size=14).map("".join),
                 st.lists(st.one_of(st.sampled_from(URL_PIECES), st.sampled_from(PIECES),
                                    st.text(alphabet=ALPHABET, max_size=4)), max_size=12).map("".join),
                 st.text(alphabet=ALPHABET + "/:?#@%&=~", max_size=60))
URL_CORNERS = [
    "", " ", "http://", "https://", "http:///x/abcd", "https:///abcd", "http://@/abcd", "http://a@/abcd",
    "http://@b/abcd", "ab@/xyz", "a@b@c.example/path", "http://u:p@host.example:8080/a/b",
    "HTTPS://User@WWW.Example.COM./Some/Path-Here?x=1&yyyy=zz%20z#frag",
    "  \thttp://lead.example/abc", "http\u017f://long-s.example/abc", "HTTP\u017f://x.example", "http\u017f:/x",
    "http://x.example....", "http://....", "http://.", "http://host.example", "host.example/x/host.example/y",
    "http://ab@b/abcd", "http://b@ab/abcd", "http://İ.example/İİİ", "http://ΣΑΣ.example/ΣΑΣ", "http://K.example/K",
    "http://1.2.3.4/abc", "http://١.٢.٣.٤/", "http://a/" + "/".join(f"p{i:02d}" for i in range(30)),  # noqa: RUF001
    "http://a/" + "x" * 12 + "/" + "x" * 13 + "/ab/abc", "%", "a%b", "/%/", "mailto:x@y.example",
    "http://a/b@c/d", "http:a@b/c", "//a@b/c", "http://a b@c/d", "http://a\u3000b.example/c",
]


def test_the_host_is_read_as_url_host_reads_it() -> None:
    """The url: tokens are those of the host message.url_host finds (the C reads it itself)."""
    for url in URL_CORNERS:
        host = url_host(url.lower())
        expected = run(tokens._domain_tokens_py, host, "url:") if host else set()
        found = {t for t in run(wordcore.url_tokens, [url]) if t.startswith("url:")}
        assert found - {"url:userinfo", "url:escaped"} == expected, url


def test_what_the_c_host_reader_relies_on() -> None:
    """Beyond ASCII only U+017F (long s) is one of h, t, p, s, :, /, ?, #, @ to (?i), and lower()
    gives what lower() keeps: group(2).lower() of a lower-cased URL is group(2)."""
    ignorecase = re.compile("(?i)[htps:/?#@]")
    assert [c for c in range(128, 0x110000) if ignorecase.match(chr(c))] == [0x17F]
    assert [c for c in range(0x110000) if chr(c).lower().lower() != chr(c).lower()] == []


@pytest.mark.parametrize("url", URL_CORNERS)
def test_url_corners(url: str) -> None:
    same("_url_tokens", [url])


def test_url_limits() -> None:
    many = [f"http://h{i}.example/page{i:03d}" for i in range(150)]
    assert run(wordcore.url_tokens, many) == run(tokens._url_tokens_py, many)
    assert "urlpath:page099" in run(wordcore.url_tokens, many)
    assert "urlpath:page100" not in run(wordcore.url_tokens, many)
    same("_url_tokens", ("http://a.example/abc",))  # a tuple reads as a list
    same("_url_tokens", [])


@SETTINGS
@given(st.lists(urls, max_size=4))
@example(URL_CORNERS)
def test_url_tokens(urls: list[str]) -> None:
    same("_url_tokens", urls)
    for url in urls:
        same("_url_tokens", [url])


names = st.one_of(st.sampled_from(["text/plain", "UTF-8", "İSO", "Windows-1252", "x" * 25, "", "ΣΑΣ", "K"]),
                  st.text(alphabet=ALPHABET, max_size=25))
filenames = st.one_of(st.sampled_from(["a.PDF", "noext", "a.b.ZIP", "x.", ".", "..", "a.İİİİİİİİİİİ",
                                       "a." + "E" * 15, "a.ΣΑΣ", "a.ẞ" * 3, "a.\U00010400é", "a.ǅ"]),
                    st.text(alphabet=ALPHABET, max_size=20))
counts = st.one_of(st.integers(min_value=-2, max_value=30), st.sampled_from([10, 11, 2**70]))
structures = st.builds(
    ParsedMessage,
    text=st.one_of(st.text(alphabet=SPACES, max_size=5), st.text(alphabet=ALPHABET, max_size=40)),
    html_text=st.text(alphabet=ALPHABET, max_size=40),
    html_tags=st.dictionaries(names, counts, max_size=6),
    html_features=st.lists(names, max_size=4),
    urls=st.lists(st.just("u"), max_size=30),
    attachments=st.lists(st.builds(Attachment, filename=filenames, content_type=names, size=st.just(0)),
                         max_size=5),
    content_types=st.lists(names, max_size=5),
    charsets=st.lists(names, max_size=4),
    encodings=st.lists(names, max_size=3),
    defects=st.lists(names, max_size=3),
    size=st.one_of(st.integers(min_value=-2**30, max_value=2**40), st.sampled_from([0, 2**23, 2**24, 2**200])),
)


@SETTINGS
@given(structures)
def test_structure_and_eight_bit(msg: ParsedMessage) -> None:
    same("_structure", msg)
    same("_eight_bit", msg)


HEAD = tokens.EIGHT_BIT_HEAD


@pytest.mark.parametrize("msg", [
    ParsedMessage(),
    ParsedMessage(html_tags={"p": 1}, text=" \u3000\x85\n"),
    ParsedMessage(html_tags={"p": 11, "x" * 30: 10, "İ" * 25: 12}, text="x"),
    ParsedMessage(content_types=[f"t/{i}" for i in range(60)], attachments=[
        Attachment(f"f.e{i}", f"a/{i}", 1) for i in range(60)], urls=["u"] * 25, size=2**24 - 1),
    ParsedMessage(text="é" * (HEAD - 1), html_text="ab"),
    ParsedMessage(text="a" * HEAD, html_text="é" * 5),
    ParsedMessage(text="", html_text="\ud800" * 30 + "\U00010400" * 3 + "a" * 7),
    ParsedMessage(text="a" * 9 + "é"),
    ParsedMessage(text="é" * 3 * HEAD),
    ParsedMessage(size=-5),
    ParsedMessage(attachments=[Attachment("a.İİİİİİİİİİİ", "x/y", 0), Attachment("b." + "ẞ" * 12, "x/z", 0),
                               Attachment("c.D" * 4 + "E" * 20, "x/w", 0)]),
], ids=range(11))
def test_structure_corners(msg: ParsedMessage) -> None:
    same("_structure", msg)
    same("_eight_bit", msg)


def test_bad_arguments_raise() -> None:
    bad: list[tuple[object, ...]] = [
        (wordcore.url_tokens, "http://x.example", set()), (wordcore.url_tokens, [b"http://x"], set()),
        (wordcore.url_tokens, [None], set()), (wordcore.url_tokens, ["http://x"], []),
        (wordcore.url_tokens, ["x"]),
        (wordcore.structure, ParsedMessage(charsets=[b"utf-8"]), set()),
        (wordcore.structure, ParsedMessage(content_types=[1]), set()),
        (wordcore.structure, ParsedMessage(content_types=None), set()),  # type: ignore[arg-type]
        (wordcore.structure, ParsedMessage(html_tags=[("p", 1)]), set()),  # type: ignore[arg-type]
        (wordcore.structure, ParsedMessage(html_tags={b"p": 1}), set()),
        (wordcore.structure, ParsedMessage(attachments=[Attachment(None, "a/b", 0)]), set()),  # type: ignore[arg-type]
        (wordcore.structure, ParsedMessage(size="1"), set()),  # type: ignore[arg-type]
        (wordcore.structure, ParsedMessage(html_tags={"p": 1}, text=b" "), set()),  # type: ignore[arg-type]
        (wordcore.eight_bit, ParsedMessage(text=b"x"), set()),  # type: ignore[arg-type]
        (wordcore.eight_bit, ParsedMessage(html_text=None), set()),  # type: ignore[arg-type]
        (wordcore.eight_bit, ParsedMessage(), frozenset()),
    ]
    for function, *args in bad:
        with pytest.raises(TypeError):
            function(*args)  # type: ignore[operator]
    with pytest.raises(TypeError):
        wordcore.structure(ParsedMessage(html_tags={"p": "many"}), set())  # "many" > 10, as in Python
    with pytest.raises(AttributeError):
        wordcore.structure(object(), set())


# 1 MB each: URLs and structure that a scan going back over its input would take seconds on.
HOSTILE = {
    "host": ["http://" + "a" * 1_000_000], "dots": ["http://" + "a." * 500_000],
    "ats": ["http://" + "a@" * 500_000], "userinfo": ["http://" + "a" * 500_000 + "@" + "a" * 500_000],
    "slashes": ["/" * 1_000_000], "pieces": ["http://a/" + "ab/" * 333_000],
    "percent": ["%" * 1_000_000], "scheme": ["http:/" * 160_000], "unicode": ["http://" + "é" * 1_000_000],
    "hosts": ["http://" + "ab" * 5_000 + "/" + "ab" * 5_000] * 100,
    "spaces": [" " * 1_000_000 + "http://x"], "long-s": ["http\u017f://" + "\u017f" * 1_000_000],
}
LINEAR = """
import time
import stronghold._wordcore as w
from stronghold.message import Attachment, ParsedMessage
from tests.unit.test_native_url_structure import HOSTILE
big = "x." * 500_000
cases = [(name, w.url_tokens, urls) for name, urls in HOSTILE.items()] + [
    ("filename", w.structure, ParsedMessage(attachments=[Attachment(big, big, 0)] * 50)),
    ("names", w.structure, ParsedMessage(content_types=[big] * 50, charsets=[big.upper()] * 2, html_tags={big: 99})),
    ("html-only", w.structure, ParsedMessage(html_tags={"p": 1}, text=" " * 1_000_000)),
    ("eight-bit", w.eight_bit, ParsedMessage(text="é" * 1_000_000, html_text="é" * 1_000_000)),
]
for name, function, arg in cases:
    start = time.process_time()
    function(arg, set())
    print(name, time.process_time() - start, flush=True)
"""


def test_hostile_urls_agree() -> None:
    for urls in HOSTILE.values():
        same("_url_tokens", [url[:3000] for url in urls[:3]])


@pytest.mark.timing
def test_hostile_input_takes_linear_time() -> None:
    """In a child killed after 60 s (a quadratic scan would take hours)."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", LINEAR], cwd=root, capture_output=True, text=True,
                          timeout=60, check=True)
    times = [line.rsplit(" ", 1) for line in done.stdout.splitlines()]
    assert len(times) == len(HOSTILE) + 4
    slow = [(what, seconds) for what, seconds in times if float(seconds) > 0.5]
    assert slow == []
