"""The C tokenizer (stronghold/native/wordcore.c) gives exactly the tokens of the Python one.

Each C function is compared with the Python reference it stands in for (``tokens._*_py``):
on every corpus message (whole features, and each function on its own inputs), on generated
text rich in what Python's string methods and regular expressions treat specially (Unicode
whitespace, the strip characters, case mappings that change lengths, titlecase, non-BMP
letters, combining marks, non-ASCII digits), and on huge inputs, which must also be fast.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stronghold import _wordcore as wordcore  # type: ignore[attr-defined]  # (fails unless built)
from stronghold import tokens
from stronghold.message import ParsedMessage, parse, url_host

# what tokens calls the C functions as
REPLACED = ("_word_tokens", "_domain_tokens", "_headers", "_url_tokens", "_structure", "_eight_bit")


@contextmanager
def python_tokenizer() -> Iterator[None]:
    """``tokens`` runs its Python reference functions inside the block."""
    saved = {name: getattr(tokens, name) for name in REPLACED}
    try:
        for name in REPLACED:
            setattr(tokens, name, getattr(tokens, name + "_py"))
        yield
    finally:
        for name, function in saved.items():
            setattr(tokens, name, function)


def python_features(msg: ParsedMessage) -> set[str]:
    with python_tokenizer():
        return tokens.features(msg)


def run(function: Callable[..., None], *args: object) -> set[str]:
    out: set[str] = set()
    function(*args, out)
    return out


def same(name: str, *args: object) -> None:
    """The C function and its Python reference give the same tokens for these arguments."""
    native = run(getattr(wordcore, name.removeprefix("_")), *args)
    assert native == run(getattr(tokens, name + "_py"), *args), args


_parsed: list[ParsedMessage] = []


def corpus_parsed(raws: list[bytes]) -> list[ParsedMessage]:
    """Every corpus message parsed (once per run: the files testing wordcore share them)."""
    if not _parsed:
        _parsed.extend(parse(raw) for raw in raws)
    return _parsed


def test_the_tokenizer_runs_the_c_functions_and_agrees_on_its_tables() -> None:
    for name in REPLACED:
        assert getattr(tokens, name) is getattr(wordcore, name.removeprefix("_"))
    assert (wordcore.MAX_TEXT, wordcore.MIN_WORD, wordcore.MAX_WORD, wordcore.MAX_RECEIVED, wordcore.MAX_URLS,
            wordcore.EIGHT_BIT_HEAD) == (tokens.MAX_TEXT, tokens.MIN_WORD, tokens.MAX_WORD, tokens.MAX_RECEIVED,
                                         tokens.MAX_URLS, tokens.EIGHT_BIT_HEAD)
    assert wordcore.SKIP_HEADERS == tokens._SKIP_HEADERS
    assert wordcore.ADDRESS_HEADERS == set(tokens._ADDRESS_HEADERS)
    assert wordcore.LISTED_HEADERS == set(tokens._LISTED_HEADERS)


@pytest.mark.corpus
def test_every_corpus_message_has_the_same_features(corpus_raws: list[bytes]) -> None:
    differ = [i for i, msg in enumerate(corpus_parsed(corpus_raws)) if tokens.features(msg) != python_features(msg)]
    assert differ == []


@pytest.mark.corpus
def test_each_function_alone_on_the_corpus(corpus_raws: list[bytes]) -> None:
    for msg in corpus_parsed(corpus_raws):
        same("_headers", msg)
        same("_word_tokens", msg.text, "")
        same("_word_tokens", msg.html_text, "x:")
        for name, value in msg.headers:
            key = name.lower().strip()[:40]
            same("_word_tokens", value, "subject:")
            same("_header_words", value, f"{key}:w:", 20)
            same("_address_header", key, value)
            if key == "received" or "." in value:
                same("_received", value)
        for url in msg.urls:
            same("_domain_tokens", url_host(url.lower()), "url:")


# Characters that Python's str methods and re treat specially.
SPACES = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_SPACES = "\u200b\u180e\ufeff"  # look blank, are not whitespace to str.split()
LETTERS = ("aAzZkKhHtTpPwW"  # (h t p w: "http", "www.")
           "éÉİıßẞǅǄǆŉﬀΣσςΑαΩωЖжЯяK"  # noqa: RUF001 (look-alikes on purpose; K: Kelvin, lowers to k)
           "\U0001d400\U0001d41a\U00010400\U00010428"  # non-BMP upper and lower
           "\u0301\u0307"  # combining marks (not \w)
           "Ⅻⅻ²٣߁〇_中ש")  # numerals that are \w but not decimal, decimals not ASCII, uncased letters
DIGITS = "0123456789٣١"  # noqa: RUF001 (Arabic-Indic digits on purpose)
PUNCT = tokens._STRIP + "@.$%&!'+-#<>,\"[]"
ALPHABET = SPACES + NOT_SPACES + LETTERS + DIGITS + PUNCT
FRAGMENTS = ("http", "HTTP://", "www.", "WWW.", "user", "John.Doe+x", "@", "@@", ".", "..", "-", "_",
             "mail.example.com", "MX1.Example.ORG", "a.b.c.d.e.f", "a-b.c1", "x1.y2.zz", "ab.c",
             "1.2.3.4", "203.0.113.9", "1234.5.6.7", "١٢.٣.٤.٥", "[127.0.0.1]", "esmtp", "SMTP",  # noqa: RUF001
             "Microsoft", "helo", "<", ">", "<a@b.example>", '"Name, İ"', "ÉTÉ", "ΣΑΣ", "ǅungla",
             "\U00010400\U00010400\U00010400\U00010400", "İİİİ", "ßßßß", "x" * 41, "é" * 45)
# Short pieces glued at random: the corners of the regular expressions (word boundaries,
# labels, dots, digit runs, '@' between runs, runs of 40) come up far more often so.
PIECES = ("a", "ab", "Ab", "COM", "x1", "7", "12", "123", "1234", "٣", "²", "-", "-", ".", ".", "..", "_",
          "@", "@", "+", "'", "<", ">", ",", '"', " ", "\t", "\xa0", "\u3000", "\x1c", "é", "É", "İ", "ǅ",
          "ß", "Σ", "\U00010400", "\u0301", "K", "http", "www.", "[127.0.0.1]", "smtp", "x" * 19)
UPPER = "中AZÉΣЖ\U0001d400\U00010400ǅǄİẞßǆaⅫ²1'-\u0301_"  # for str.isupper() and str.isalpha()
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

words = st.one_of(st.text(alphabet=ALPHABET, min_size=2, max_size=50), st.sampled_from(FRAGMENTS),
                  st.text(alphabet=UPPER, min_size=2, max_size=14))
texts = st.builds(lambda parts, seps: "".join(w + s for w, s in zip(parts, seps, strict=False)),
                  st.lists(words, max_size=30),
                  st.lists(st.text(alphabet=SPACES, min_size=1, max_size=3), min_size=30, max_size=30))
glued = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(alphabet=ALPHABET, max_size=6)),
                 max_size=20).map("".join)  # fragments side by side, no spaces between
pieced = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)
values = st.one_of(texts, glued, pieced, pieced, st.text(alphabet=ALPHABET, max_size=200))
prefixes = st.sampled_from(["", "subject:", "ä:", "\U0001d400:"])
# The corners each scanner must get right, whatever hypothesis draws.
CORNERS = ["x@a.b.c@d.com", "--john@mail.example.com", "a@b@c.example", "a@b.c.d@e.f", ".x@y.z",
           " -mail.example.com", "é-mail.example.com", "_-a.bc", "x_mail.example.com", "ab.cd1.ef",
           "ab.c1.d-e.fg", "a1.b2.cc2", "mail.example.c", "a.b.c.d.e.f.gh", "x.yz_", "x.yzé",
           "1.2.3.4", "a1.2.3.4", "1.2.3.4a", "1.2.3.4.5", "01.2.3.456", "1234.5.6.7", "1.2.3.1234",
           "١.٢.٣.٤", "²1.2.3.4",  # noqa: RUF001
           # str.isupper() and isalpha() (each alone: one UPPER word in a text hides another)
           "ǅAAA", "ǅUNGLA", "AǅBC", "ÉTÉS", "İİİİ", "ẞẞẞẞ", "ⅫⅫⅫⅫ", "𝐀𝐀𝐀𝐀", "ΣΑΣΑ", "Á́ÁÁ", "AAA²", "A_BC",  # noqa: RUF001
           "中文字符", "שלום", "AB中文",  # alphabetic, uncased: not upper
           # the limits: user parts cut at 20 and 30, 10 hosts, 5 IPs, 10 addresses
           "u" * 35 + "@long.example", "<" + "é" * 25 + "@x.example>",
           " ".join(f"h{i}.example.com" for i in range(12)), " ".join(f"10.0.{i}.1" for i in range(7)),
           ", ".join(f"u{i}@d{i}.example" for i in range(12)),
           "x" * 40 + " " + "x" * 41 + " " + "x" * 42 + " " + "x" * 81 + " " + "x" * 80,
           "Hé \"Dé, Jo\" <jo@x.example>, <b@y.example>", "<a@b.example>", "İİ <a@b.example>",
           "HTTPS://x.example/aaaaaaaa wWw.example.com/x Kttp://aaaaaaaaaaaa KTTP://ééééééééééé"]


@SETTINGS
@given(values, prefixes)
@example("\n".join(CORNERS), "")
def test_word_tokens(text: str, prefix: str) -> None:
    same("_word_tokens", text, prefix)


@SETTINGS
@given(values, prefixes, st.sampled_from([0, 1, 2, 20, 10**9]))
@example("\n".join(CORNERS), "h:", 10**9)
def test_header_words(value: str, prefix: str, limit: int) -> None:
    same("_header_words", value, prefix, limit)


@pytest.mark.parametrize("value", CORNERS)
def test_corners(value: str) -> None:
    same("_word_tokens", value, "")
    same("_header_words", value, "h:", 20)
    same("_address_header", "from", value)
    same("_received", value)
    same("_domain_tokens", value, "d:")
    same("_domain_tokens", value.lower(), "d:")


@SETTINGS
@given(st.sampled_from(["from", "reply-to", "ü"]), values)
def test_address_header(name: str, value: str) -> None:
    same("_address_header", name, value)


@SETTINGS
@given(values)
def test_received(value: str) -> None:
    same("_received", value)


@SETTINGS
@given(st.one_of(glued, pieced, values), prefixes)
def test_domain_tokens(host: str, prefix: str) -> None:
    same("_domain_tokens", host, prefix)


NAMES = ["Subject", "SUBJECT ", "From", "to", "Reply-To", "Received", " received", "X-Mailer", "Content-Type",
         "Message-ID", "message-id ", "Date", "date", "Delivery-Date", "List-Id", "X-Other", "İ-Header",
         "X-" + "Long" * 12, " \u3000Subject\x85", "", "K-Date"]  # (K: Kelvin sign)
headers = st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), st.text(alphabet=ALPHABET, max_size=12)),
                             st.one_of(values, st.just(""))), max_size=14)


@SETTINGS
@given(headers, values, values)
def test_whole_features(headers: list[tuple[str, str]], text: str, html_text: str) -> None:
    msg = ParsedMessage(headers=headers, text=text, html_text=html_text)
    assert tokens.features(msg) == python_features(msg)


@SETTINGS
@given(headers)
def test_headers(headers: list[tuple[str, str]]) -> None:
    same("_headers", ParsedMessage(headers=headers))


@pytest.mark.parametrize("headers", [
    [("Received", f"from h{i}.example ([192.0.2.{i}])") for i in range(9)],
    [("Message-ID", "<@ @>x@ y@Z.Example>")], [("Message-ID", "")], [("Message-Id ", "<a@b>")],
    [("Message-ID", "<a@" + "B" * 50 + ">")], [("Message-ID", "<a@" + "İ" * 50 + ">")], [("Message-ID", "@")],
    [("Date", ""), ("Date", "Mon")], [("Subject", "FREE!!!! $$$ ?*% MONEY"), ("Subject", "ÉTÉ ǅUN")],
    [("X-Mailer", "  Big\x85 \u3000MAILER " + "v" * 70)], [("X-Mailer", "İ" * 70)], [("X-Mailer", "")],
    [("X-Spam-Status", "Yes"), ("X-Spam-Status", "No")] * 4,
])
def test_header_corners(headers: list[tuple[str, str]]) -> None:
    same("_headers", ParsedMessage(headers=headers))


def test_no_character_beyond_ascii_lowers_to_the_start_of_a_url() -> None:
    """wordcore's is_url_word relies on this: only ASCII letters lower-case to 'http' or 'www.'."""
    assert [c for c in range(128, 0x110000) if chr(c).lower()[:1] in set("htpw.")] == []


def timed(function: Callable[[], set[str]]) -> tuple[set[str], float]:
    start = time.process_time()
    result = function()
    return result, time.process_time() - start


def huge_texts() -> list[str]:
    cut = tokens.MAX_TEXT
    return [
        "x " * (cut // 2 - 3) + "Hello world",  # a word cut by the limit: "Hel" from text[:MAX_TEXT]
        "x " * (cut // 2 - 2) + "Hello world",  # "H": too short
        "a" * (cut - 1) + " Hello",  # the limit falls on the space
        ("é " * (cut // 2 - 4)) + "ÉTÉS İİ",
        "A" * 1_000_000,
        "a@" * 500_000,
        "x@y.example." * 100_000,
        " \u3000\x85\xa0\x1c" * 200_000,
        "\U00010400" * 1_000_000,
    ]


@pytest.mark.parametrize("index", range(len(huge_texts())))
def test_huge_text(index: int) -> None:
    text = huge_texts()[index]
    assert run(wordcore.word_tokens, text, "") == run(tokens._word_tokens_py, text, "")
    assert run(wordcore.header_words, text, "h:", 20) == run(tokens._header_words_py, text, "h:", 20)


@pytest.mark.timing
@pytest.mark.parametrize("index", range(len(huge_texts())))
def test_huge_text_is_read_fast(index: int) -> None:
    text = huge_texts()[index]
    assert timed(lambda: run(wordcore.word_tokens, text, ""))[1] < 0.5
    assert timed(lambda: run(wordcore.header_words, text, "h:", 20))[1] < 0.5


# Inputs the Python regular expressions take quadratic time on: the C must stay linear.
HOSTILE = ["a." * 500_000, "a1." * 300_000, "a-" * 500_000, "1." * 500_000, "a@" * 500_000,
           "a@b." * 250_000, "-a" * 500_000, "é." * 500_000, "x" * 1_000_000, "1.2.3." * 200_000]
LINEAR = """
import sys, time
import stronghold._wordcore as w
from tests.unit.test_native_tokens import HOSTILE
for value in HOSTILE:
    for function, args in ((w.received, (value,)), (w.address_header, ("from", value)),
                           (w.header_words, (value, "h:", 20)), (w.word_tokens, (value, "")),
                           (w.domain_tokens, (value, "d:"))):
        start = time.process_time()
        function(*args, set())
        print(function.__name__, repr(value[:8]), time.process_time() - start, flush=True)
"""


def test_hostile_headers_agree() -> None:
    for value in HOSTILE:
        small = value[:3000]
        same("_received", small)
        same("_address_header", "from", small)
        same("_header_words", small, "h:", 20)
        same("_word_tokens", small, "")
        same("_domain_tokens", small, "d:")


@pytest.mark.timing
def test_hostile_headers_take_linear_time() -> None:
    """1 MB each, in a child killed after 60 s (a quadratic scan would take hours)."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", LINEAR], cwd=root, capture_output=True, text=True,
                          timeout=60, check=True)
    times = [line.rsplit(" ", 1) for line in done.stdout.splitlines()]
    assert len(times) == 5 * len(HOSTILE)
    slow = [(what, seconds) for what, seconds in times if float(seconds) > 0.5]
    assert slow == []


def test_bad_arguments_raise() -> None:
    with pytest.raises(TypeError):
        wordcore.headers(ParsedMessage(headers=[("Subject", b"x")]), set())  # type: ignore[list-item]
    with pytest.raises(TypeError):
        wordcore.headers(ParsedMessage(headers=[("Subject", "x", "y")]), set())  # type: ignore[list-item]
    with pytest.raises(TypeError):
        wordcore.word_tokens(b"bytes", "", set())
    with pytest.raises(TypeError):
        wordcore.received("x", [])
    with pytest.raises(TypeError):
        wordcore.header_words("x", "", set())
    with pytest.raises(OverflowError):
        wordcore.header_words("x", "", 10**30, set())
