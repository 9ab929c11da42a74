"""The C html_to_text (stronghold/native/htmlcore.c) gives what the Python reference gives.

Same 4-tuple (text, tag counts in the same order, urls, features) or the same exception,
for every HTML part of the corpus, for generated markup rich in the characters the scanner
and the regexes it mirrors care about, and for hostile input, which it reads in linear time;
its html.unescape gives what the standard library's does.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from html.entities import html5
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bench.stages import corpus_messages
from stronghold import _htmlcore as htmlcore  # not built: this module fails, as it should
from stronghold import htmltext, message


def _outcome(function: Callable[[str], Any], markup: str) -> tuple[Any, ...]:
    try:
        text, tags, urls, features = function(markup)
    except ValueError as exc:  # both must raise alike, if ever
        return ("raised", type(exc), str(exc))
    return text, type(text), tags, list(tags), urls, features


def assert_same(markup: str) -> None:
    assert _outcome(htmlcore.html_to_text, markup) == _outcome(htmltext._html_to_text_py, markup), markup[:300]


def test_the_public_function_is_the_native_one() -> None:
    assert htmltext.html_to_text is htmlcore.html_to_text


def test_it_takes_str_only() -> None:
    with pytest.raises(TypeError):
        htmlcore.html_to_text(b"<p>bytes</p>")  # type: ignore[arg-type]


def _corpus_html_parts() -> list[str]:
    """Every markup message.parse hands to html_to_text, over the whole corpus."""
    parts: list[str] = []
    reference = message.html_to_text

    def recording(markup: str) -> htmltext.HtmlParts:
        parts.append(markup)
        return reference(markup)

    message.html_to_text = recording
    try:
        for path in corpus_messages():
            message.parse(path.read_bytes())
    finally:
        message.html_to_text = reference
    return parts


@pytest.mark.corpus
def test_every_html_part_of_the_corpus_reads_the_same(corpus: Path) -> None:
    parts = _corpus_html_parts()
    assert len(parts) > 1000
    differ = [p[:200] for p in parts if _outcome(htmlcore.html_to_text, p) != _outcome(htmltext._html_to_text_py, p)]
    assert not differ, f"{len(differ)} of {len(parts)} differ, e.g. {differ[:3]}"
    # the corpus exercises what the scanner does, not only plain text
    results = [htmlcore.html_to_text(p) for p in parts]
    assert sum(bool(r[2]) for r in results) > 300  # urls
    features = {f.split(":")[0] for r in results for f in r[3]}
    assert {"comment", "img-remote", "font-color", "font-size", "hidden-style"} <= features


PIECES = ["<", ">", "/", "!", "?", "-", "--", "=", '"', "'", "&", "&amp;", "&lt;", "&#65;", "&#x41;", "&nbsp",
          "&nbspx", "&#", "&#1114112;", "&AMP", " ", "\t", "\n", "\r", "\f", "\x0b", "\x1c", "\x1f", "\x85",
          "\xa0", "\u2028", "\u3000", "\x00", "a", "Z", "x", "İ", "ẞ", "\u212a", "Σ", "é", "\U0001f600",
          "script", "SCRIPT", "style", "StYlE", "head", "title", "a", "img", "font", "div", "br",
          "href", "src", "style", "color", "size", "action", "background", "HREF", "bac\u212aground",
          "http://", "HTTPS://x", "www.", "mailto:", "://", "display:none", "visibility: hidden",
          "font-size:0", "FONT-SIZE: 1PX", "#FF00AA", "+2", "k" * 63, "k" * 65,
          "<!--", "-->", "<!", "<?", "</", "/>", "</script", "</style", "<script>", "<style>", "<a ", "<img ",
          "<font ", "<title>", "<head>", "</head>", "<lin\u212a>"]

markup_text = st.lists(st.sampled_from(PIECES), max_size=80).map("".join)

TAGS = ["a", "A", "img", "IMG", "font", "script", "style", "head", "title", "div", "lin\u212a", "x\x0by"]
KEYS = ["href", "src", "style", "color", "size", "action", "background", "SRC", "bac\u212aground", "k" * 64,
        "k" * 65 + "href", "İ", "x"]
VALUES = ["http://x.example/", " HTTPS://A ", "www.y", "mailto:me", "&#104;ttp://q", "x://y", "//x",
          "display:none", "DISPLAY : NONE", "visibility:hidden", "font-size:1px", "#FFAA00", "RedİXYZABCDEFG",
          "ẞẞẞẞẞẞẞẞẞẞẞẞ", "ΣΣ Σ", " \xa0+2\u2028", "", "a'b", 'a"b', "&amp;&lt;", "\u212aelvin", "&"]
SPACES = ["", " ", "\t", "\n", "\x0b", "\x1c", "\u2028", "\xa0"]


@st.composite
def tag_soup(draw: st.DrawFn) -> str:
    """Tags with attributes, quoted or not, closed or not, among text and comments."""
    out = []
    for _ in range(draw(st.integers(0, 10))):
        if draw(st.booleans()):
            attrs = "".join(draw(st.sampled_from([*SPACES, "/"])) + draw(st.sampled_from(KEYS))
                            + draw(st.sampled_from(SPACES)) + draw(st.sampled_from(["=", "=", "", "/="]))
                            + draw(st.sampled_from(SPACES)) + (q := draw(st.sampled_from(['"', "'", ""])))
                            + draw(st.sampled_from(VALUES)) + draw(st.sampled_from([q, q, ""]))
                            for _ in range(draw(st.integers(0, 4))))
            out.append("<" + draw(st.sampled_from(["", "/"])) + draw(st.sampled_from(TAGS)) + attrs
                       + draw(st.sampled_from([">", ">", "/>", "", "<"])))
        else:
            out.append(draw(st.sampled_from([*PIECES, "text", "</SCRIPT >", "</scrİpt>", "<!-- c -->"])))
    return "".join(out)


@settings(max_examples=600, deadline=None)
@given(markup_text)
@example("İİ<script>x</script>after<b>b</b>tail")  # markup.lower() is longer than markup: positions shift
@example("<style>İ</style>x<script></SCRİPT></script>y")
@example("<a bac\u212aground=www.x><lin\u212a>")  # KELVIN SIGN lowers to ASCII 'k'
@example('<font color="İABCDEFGHIJ" size=" \u2028+2 ">')
@example("<a " + "k" * 70 + "href=http://x>")  # the name is the last 64 of a longer run
def test_generated_markup_reads_the_same(markup: str) -> None:
    assert_same(markup)


@settings(max_examples=700, deadline=None)
@given(tag_soup())
def test_generated_tags_and_attributes_read_the_same(markup: str) -> None:
    assert_same(markup)


MB = 1 << 20
# name -> markup of about n characters
HOSTILE: dict[str, Callable[[int], str]] = {
    "open tags": lambda n: "<a" * (n // 2),
    "open comments": lambda n: "<!--" * (n // 4),
    "unclosed script": lambda n: "<script>" * (n // 8),
    "unclosed quotes": lambda n: "<a " + "x='y " * (n // 5) + ">",
    "unquoted ends": lambda n: "<a " + 'h="1 ' * (n // 5) + ">",
    "long names": lambda n: "<a " + "k" * n + "=1>",
    "names without values": lambda n: "<img " + "src " * (n // 4) + ">",
    "declarations": lambda n: "<!" * (n // 2),
    "end tags": lambda n: "</a " * (n // 4),
    "unknown entities": lambda n: "<p>" + ("&" + "q" * 40 + " ") * (n // 42),
    "entities without semicolons": lambda n: "<p>" + "&ampamp" * (n // 7),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_reads_the_same(name: str) -> None:
    assert_same(HOSTILE[name](MB))


@pytest.mark.timing
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_takes_linear_time(name: str) -> None:
    def cost(size: int) -> float:
        text = HOSTILE[name](size)
        start = time.process_time()
        for _ in range(3):
            htmlcore.html_to_text(text)
        return (time.process_time() - start) / 3

    # four times the input: 4x the time if linear, 16x if quadratic; 8x leaves room for a noisy machine
    whole, quarter = min(cost(MB) for _ in range(3)), min(cost(MB // 4) for _ in range(3))
    assert whole < 0.25, f"{name}: {whole:.3f} s for 1 MB"
    assert whole < 8 * quarter + 0.005, f"{name}: 4x the input costs {whole / max(quarter, 1e-9):.1f}x the time"


ENTITY_PIECES = ["&", "&", "#", "x", "X", ";", ";", "0", "9", "65", "128", "159", "55296", "1114111",
                 "1114112", "0" * 20 + "65", "FFFD", "d800", "amp", "AMP", "lt", "nbsp", "notin", "not",
                 "ampxyz", "NotNestedLessLess", "q" * 33, " ", "\t", "\n", "\r", "\f", "\x0b", "<", "İ", "é",
                 "\U0001f600", "Σ"]


@settings(max_examples=800, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(ENTITY_PIECES), st.sampled_from(sorted(html5))), max_size=30)
       .map("".join))
@example("&#" + "9" * 19 + ";&#x" + "f" * 16)  # numbers past 64 bits: Python's own unescape reads them
@example("&notit; &ampx &#x110000; &#0; &#13; &#150; &#1; &#xD800")
def test_the_c_unescape_is_html_unescape(text: str) -> None:
    result = htmlcore.unescape(text)
    assert result == html.unescape(text) == htmltext.unescape(text)
    assert type(result) is str


@pytest.mark.parametrize(("number", "read"), [("1" * 5000, "\ufffd"), ("0" * 5000 + "65", "A"), ("0" * 5000, "\ufffd"),
                                              ("9" * 19, "\ufffd"), ("0" * 30 + "1114111", ""),
                                              ("0" * 30 + "1114112", "\ufffd")])
def test_an_overlong_character_reference_is_read_not_raised(number: str, read: str) -> None:
    """html.unescape raises past 4300 digits (int's limit); both readings take the number for
    what it is (out of range: U+FFFD), so hostile markup cannot stop a message being read."""
    markup = f"<p>x&#{number};y</p>"
    assert htmltext._html_to_text_py(markup)[0] == htmlcore.html_to_text(markup)[0] == f"x{read}y"
    assert htmlcore.unescape(f"&#{number}") == htmltext.unescape(f"&#{number}") == read
    assert_same(markup)
    assert message.parse(b"Content-Type: text/html\n\n" + markup.encode()).html_text.strip() == f"x{read}y"
