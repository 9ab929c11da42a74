"""Multipart messages read without the feed parser (mimetree.TreeReader) give the stdlib's own tree.

Where ``TreeReader`` builds a tree at all, it must equal ``email.message_from_bytes``'s,
structurally: every header in order, payload strings, preamble, epilogue, defect types,
unixfrom, default type, nesting.  Checked on every corpus message (also with the mbox line
gone, as ``parse()`` reads it), on hand-made messages for each rule of the feed parser, and on
generated multiparts; the C scans (``read_head``, ``split_multipart``) against their Python
references; and ``parse()`` with the native core against a process without it.
"""

from __future__ import annotations

import dataclasses
import email
import email.message
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stronghold import message, mimetree
from stronghold._mimecore import read_head, split_multipart  # fails when the native core is not built
from tests.conftest import mbox_stripped

ROOT = Path(__file__).resolve().parents[2]
PY_SCANS = (mimetree._read_head_py, mimetree._split_multipart_py)


def assert_same_tree(ours: email.message.Message, ref: email.message.Message, path: str = "root") -> None:
    """The two trees are the same, part by part."""
    assert type(ours) is type(ref), path
    assert ours.policy is ref.policy, path
    assert ours._headers == ref._headers, path  # type: ignore[attr-defined]
    assert ours.get_unixfrom() == ref.get_unixfrom(), path
    assert ours.get_default_type() == ref.get_default_type(), path
    assert ours.preamble == ref.preamble, path
    assert ours.epilogue == ref.epilogue, path
    assert [type(d) for d in ours.defects] == [type(d) for d in ref.defects], path
    assert ours.is_multipart() == ref.is_multipart(), path
    assert ours._charset == ref._charset, path  # type: ignore[attr-defined]
    mine, theirs = ours._payload, ref._payload  # type: ignore[attr-defined]
    if isinstance(theirs, list):
        assert isinstance(mine, list) and len(mine) == len(theirs), path
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            assert_same_tree(a, b, f"{path}/{i}")
    else:
        assert mine == theirs, path


def stdlib_tree(raw: bytes) -> email.message.Message:
    """The stdlib parser's tree, of the class parse() uses (the stdlib's Message with a name index)."""
    return email.message_from_bytes(raw, _class=mimetree.IndexedMessage)


def native_tree(raw: bytes, python: bool = False) -> email.message.Message | None:
    """TreeReader's tree of raw (with the Python reference scans: ``python``), checked against
    the stdlib's wherever it gives one."""
    tree = mimetree.TreeReader(raw, *(PY_SCANS if python else (None, None))).tree()
    if tree is not None:
        assert_same_tree(tree, stdlib_tree(raw))
    return tree


def test_the_reader_uses_the_native_scans() -> None:
    assert mimetree.read_head is read_head
    assert mimetree.split_multipart is split_multipart


@pytest.mark.corpus
def test_every_corpus_message_gives_the_stdlib_tree(corpus_raws: list[bytes]) -> None:
    multipart = native = 0
    for raw in corpus_raws:
        for variant in (raw, mbox_stripped(raw)):
            tree = native_tree(variant)
            assert (tree is None) == (native_tree(variant, python=True) is None)
            if stdlib_tree(variant).is_multipart():
                multipart += 1
                native += tree is not None
    print(f"multipart corpus messages read natively: {native} of {multipart}")
    assert multipart > 1000 and native == multipart


@pytest.mark.corpus
def test_the_scans_match_their_references_on_the_corpus(corpus_raws: list[bytes]) -> None:
    for raw in corpus_raws:
        ref = stdlib_tree(raw)
        assert read_head(raw, 0, len(raw)) == mimetree._read_head_py(raw, 0, len(raw))
        boundary = ref.get_boundary()
        if boundary is not None:
            sep = ("--" + boundary).encode("ascii", "surrogateescape")
            for start in (0, mimetree.blank_line(raw)[1] if mimetree.blank_line(raw) else 0):
                assert split_multipart(raw, start, len(raw), sep) == mimetree._split_multipart_py(
                    raw, start, len(raw), sep)


def _digests(raws: list[bytes]) -> list[str]:
    return [hashlib.sha256(repr(dataclasses.asdict(message.parse(raw))).encode("utf-8", "surrogatepass"))
            .hexdigest() for raw in raws]


CHILD = """
import dataclasses, hashlib, sys
from pathlib import Path
from stronghold import message, mimetree
assert mimetree._mimecore is None
paths = sorted(p for d in sorted(Path(sys.argv[1]).iterdir()) if d.is_dir() for p in d.iterdir() if p.is_file())
for path in paths:
    parsed = message.parse(path.read_bytes())
    print(hashlib.sha256(repr(dataclasses.asdict(parsed)).encode("utf-8", "surrogatepass")).hexdigest())
"""  # _digests, in a process without the native core


@pytest.mark.corpus
def test_parse_gives_the_same_as_without_the_native_core(corpus: Path, corpus_raws: list[bytes]) -> None:
    env = dict(os.environ, STRONGHOLD_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", CHILD, str(corpus)], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=600)
    without = out.stdout.split()
    assert len(without) == len(corpus_raws)
    differ = [i for i, (a, b) in enumerate(zip(_digests(corpus_raws), without, strict=True)) if a != b]
    assert differ == []


# ---- hand-made messages, one rule of the feed parser each ------------------------------------

def mp(body: str, ctype: str = 'multipart/mixed; boundary="b"', head: str = "") -> bytes:
    return f"{head}Content-Type: {ctype}\n\n{body}".encode("latin-1")


NATIVE_CASES = {
    "plain": mp("--b\nContent-Type: text/plain\n\nhi\n--b--\n"),
    "crlf": mp("--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n"),
    "cr": mp("--b\rA: x\r\rhi\r--b--\r"),
    "mixed line ends": mp("pre\r\n--b\r\nA: x\n\rhi\r\n\n--b\n\nyo\r--b--\r\nepi\n"),
    "preamble and epilogue": mp("line 1\nline 2\n\n--b\n\nx\n--b--\nafter\n\n"),
    "blank preamble": mp("\n--b\n\nx\n--b--"),
    "close at the end, no line end": mp("--b\n\nx\n--b--"),
    "trailing space and tab": mp("--b \t\n\nx\n--b\t\n\ny\n--b-- \n"),
    "empty parts": mp("--b\n\n--b\n\n\n--b--\n"),
    "no headers": mp("--b\n\nbody only\n--b--\n"),
    "boundary lines in a row": mp("--b\n--b\n--b--\n\nx\n--b--\n"),
    "prefixing boundaries": mp('--b\nContent-Type: multipart/alternative; boundary="b1"\n\n--b1\n\none\n'
                               '--b1\n\ntwo\n--b1--\n--b\n\nthree\n--b--\n'),
    "inner epilogue": mp('--b\nContent-Type: multipart/alternative; boundary=c\n\n--c\n\none\n--c--\n'
                         'inner epilogue\n\n--b--\n'),
    "inner epilogue empty": mp('--b\nContent-Type: multipart/alternative; boundary=c\n\n--c\n\none\n--c--\n'
                               '--b--\n'),
    "missing close": mp("--b\n\nx\n--b\n\ny\n"),
    "missing inner close": mp('--b\nContent-Type: multipart/related; boundary=c\n\n--c\n\nx\n--b--\n'),
    "separator last": mp("--b\n\nx\n--b\n"),
    "8-bit": mp("--b\nContent-Type: text/plain; charset=latin-1\nX-A: \xe9t\xe9\n\ncaf\xe9\n--b--\n"),
    "quoted boundary with space": mp('--a b\n\nx\n--a b--\n', ctype='multipart/mixed; boundary="a b"'),
    "boundary with colon": mp('--x:y\n\nx\n--x:y--\n', ctype='multipart/mixed; boundary="x:y"'),
    "RFC 2231 boundary": mp("--b\n\nx\n--b--\n", ctype="multipart/mixed; boundary*=us-ascii''b"),
    "boundary with trailing space, upper-case name": mp("--b\n\nx\n--b--\n", ctype='Multipart/Mixed; BOUNDARY="b  "'),
    "digest": mp("--b\n\nSubject: inside\n\nhi\n--b\nContent-Type: text/plain\n\nplain\n--b--\n",
                 ctype="multipart/digest; boundary=b"),
    "message/rfc822": mp("--b\nContent-Type: message/rfc822\n\nSubject: in\n\nbody\n--b--\n"),
    "transfer encoding on a multipart": mp("--b\n\nx\n--b--\n", head="Content-Transfer-Encoding: base64\n"),
    "unix from": b"From someone Mon Jan  1 00:00:00 2024\n" + mp("--b\n\nx\n--b--\n"),
    "delivery status": mp("--b\nContent-Type: message/delivery-status\n\nA: b\n\nC: d\nE: f\n--b--\n",
                          ctype="multipart/report; boundary=b"),
    "delivery status, empty lines": mp("--b\nContent-Type: message/delivery-status\n\n\nA: b\r\n\r\n\n\n--b--\n"),
    "delivery status, no body": mp("--b\nContent-Type: message/delivery-status\n--b--\n"),
    "part without header block": mp("--b\nno header here\n--b--\n"),
    "header block without empty line": mp("--b\nContent-Type: text/html\n<html>hi</html>\n--b--\n"),
    "multipart without empty line": b"Content-Type: multipart/mixed; boundary=b\n--b\n\nx\n--b--\n",
    "headers to the boundary": mp("--b\nContent-Type: text/plain\n--b--\n"),
    "folded headers": mp("--b\nContent-Type: text/plain;\n\tcharset=us-ascii\n\nx\n--b--\n",
                         ctype='multipart/mixed;\n boundary="b"'),
}

STDLIB_CASES = {
    "no start boundary": mp("just text\n"),
    "close first": mp("--b--\n--b\n\nx\n--b--\n"),
    "no boundary parameter": mp("x\n", ctype="multipart/mixed"),
    "continuation first": mp("--b\n folded\n\nx\n--b--\n"),
    "misplaced From": mp("--b\nA: b\nFrom x\nC: d\n\nx\n--b--\n"),
    "empty header name": mp("--b\n: x\n\nx\n--b--\n"),
    "delivery status block not fields": mp("--b\nContent-Type: message/delivery-status\n\nA: b\n\ntext\n--b--\n"),
    "inner close missing and outer boundary in its header": mp(
        '--b\nContent-Type: multipart/mixed; boundary=c\n--b--\n'),
}


@pytest.mark.parametrize("name", NATIVE_CASES)
def test_hand_made_messages_are_read_natively_as_the_stdlib_reads_them(name: str) -> None:
    raw = NATIVE_CASES[name]
    assert native_tree(raw) is not None
    assert native_tree(raw, python=True) is not None


@pytest.mark.parametrize("name", STDLIB_CASES)
def test_what_the_reader_does_not_reproduce_goes_to_the_stdlib(name: str) -> None:
    raw = STDLIB_CASES[name]
    assert native_tree(raw) is None and native_tree(raw, python=True) is None


def test_parse_reads_multipart_mail_without_the_feed_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(raw: bytes, **_kwargs: object) -> email.message.Message:
        raise AssertionError("the feed parser was called")

    monkeypatch.setattr(email, "message_from_bytes", refuse)
    parsed = message.parse(NATIVE_CASES["prefixing boundaries"])
    assert parsed.content_types == ["text/plain"] * 3 and parsed.text == "one\ntwo\nthree"
    with pytest.raises(AssertionError):
        message.parse(STDLIB_CASES["no start boundary"])


def test_deep_nesting_is_left_to_the_stdlib() -> None:
    raw = b"Content-Type: message/rfc822\n\n" * (mimetree.MAX_DEPTH + 1) + b"Subject: x\n\ny\n"
    assert native_tree(raw) is None
    shallow = b"Content-Type: message/rfc822\n\n" * mimetree.MAX_DEPTH + b"Subject: x\n\ny\n"
    assert native_tree(shallow) is not None


# ---- generated multiparts ---------------------------------------------------------------------

BOUNDARIES = ["b", "b1", "b12", "b-", "b--", "=_x", "a b", "x:y"]
ENDS = st.sampled_from([b"\n", b"\r\n", b"\r"])
WS = st.sampled_from([b"", b" ", b"\t", b" \t "])


@st.composite
def lines(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """Some lines of text, each with a line end (the last maybe without)."""
    texts = draw(st.lists(st.sampled_from(pool), max_size=4))
    return b"".join(t + draw(ENDS) for t in texts)


def text_pool() -> list[bytes]:
    pool = [b"hello", b"", b"--", b"- b", b"caf\xe9 \xff", b"A: b", b" folded", b"From x", b"\t"]
    for boundary in BOUNDARIES:
        sep = b"--" + boundary.encode()
        pool += [sep, sep + b"--", sep + b" ", sep + b"--\t", sep + b"x"]
    return pool


TEXT = text_pool()
HEADERS = [b"Content-Type: text/plain", b"Content-Type: text/html; charset=utf-8", b"Subject: \xe9t\xe9",
           b"X-A:b", b"Content-Transfer-Encoding: 7bit", b"Content-Transfer-Encoding: base64",
           b"Content-Type: message/rfc822", b" continued", b"From x"]


@st.composite
def part(draw: st.DrawFn, depth: int) -> bytes:
    """A message: a leaf, a multipart of such messages, or a message/rfc822 around one."""
    kind = draw(st.sampled_from(["leaf", "leaf", "multipart", "rfc822", "status"] if depth < 3 else ["leaf"]))
    head = b"".join(h + draw(ENDS) for h in draw(st.lists(st.sampled_from(HEADERS), max_size=3)))
    if kind == "status":  # blocks of fields, between empty lines
        out = b"Content-Type: message/delivery-status" + draw(ENDS) + head + draw(ENDS)
        for block in draw(st.lists(st.lists(st.sampled_from([*HEADERS, b""]), max_size=3), max_size=3)):
            out += b"".join(line + draw(ENDS) for line in block)
        return out
    if kind == "leaf":
        return head + draw(st.sampled_from([b"", b"\n", b"\r\n"])) + draw(lines(TEXT))
    if kind == "rfc822":
        return b"Content-Type: message/rfc822" + draw(ENDS) + head + draw(ENDS) + draw(part(depth + 1))
    boundary = draw(st.sampled_from(BOUNDARIES)).encode()
    subtype = draw(st.sampled_from([b"mixed", b"alternative", b"digest"]))
    quoted = b'"' + boundary + b'"' if draw(st.booleans()) or b" " in boundary or b":" in boundary else boundary
    out = head + b"Content-Type: multipart/" + subtype + b"; boundary=" + quoted + draw(ENDS) + draw(ENDS)
    out += draw(lines(TEXT))  # preamble
    sep = b"--" + boundary
    for child in draw(st.lists(part(depth + 1), min_size=1, max_size=3)):
        out += sep + draw(WS) + draw(ENDS) + child + draw(ENDS)
    if draw(st.integers(0, 4)):  # the close line, now and then missing
        out += sep + b"--" + draw(WS) + draw(st.sampled_from([b"", b"\n", b"\r\n", b"\r"]))
    return out + draw(lines(TEXT))  # epilogue


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(part(0))
def test_generated_messages_give_the_stdlib_tree(raw: bytes) -> None:
    tree = native_tree(raw)
    event("native" if tree is not None else "stdlib")
    assert (native_tree(raw, python=True) is None) == (tree is None)


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(part(0), st.integers(1, 8))
def test_a_tree_cut_after_the_parts_parse_reads_gives_what_the_whole_tree_gives(raw: bytes, limit: int) -> None:
    """parse() reads MAX_PARTS parts in document order: the native tree stops one part after
    that (here with a limit of 1 to 8), and parse() makes of it what it makes of the stdlib's."""
    class Cut(mimetree.TreeReader):
        def __init__(self, raw: bytes, max_parts: int | None = None) -> None:
            super().__init__(raw, max_parts=limit + 1)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(message, "MAX_PARTS", limit)
        patch.setattr(mimetree, "TreeReader", Cut)
        cut = dataclasses.asdict(message.parse(raw))
        patch.setattr(mimetree, "_mimecore", None)  # the stdlib's whole tree
        whole = dataclasses.asdict(message.parse(raw))
    assert cut == whole


@pytest.mark.timing
def test_a_flood_of_empty_parts_is_read_only_as_far_as_parse_reads() -> None:
    """400,000 empty parts in 2 MB: building them all took 2 s natively (4.6 s in the stdlib).
    CPU time, not wall-clock time: on a loaded machine the 0.13 s parse took over 1 s of wall clock."""
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\n" * 400_000 + b"--b--\n"
    started = time.process_time()
    parsed = message.parse(raw)
    elapsed = time.process_time() - started
    assert "too-many-parts" in parsed.defects and len(parsed.content_types) == message.MAX_PARTS - 1
    assert elapsed < 0.5, f"took {elapsed:.2f} s"


def scan_pool(boundary: str) -> list[bytes]:
    """Pieces of bytes rich in what the scans decide on, for the boundary ``boundary``."""
    sep = b"--" + boundary.encode()
    return TEXT + HEADERS + [b"\n", b"\r", b"\r\n", b"\r\n\r\n", b" ", b"\t", b"--", sep, sep + b"\n",
                             sep + b"--", sep + b"\t \r\n", sep + b"-- \t\r", sep + b"-"]


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(BOUNDARIES), st.data())
def test_generated_bytes_are_scanned_as_the_references_scan_them(boundary: str, data: st.DataObject) -> None:
    raw = b"".join(data.draw(st.lists(st.sampled_from(scan_pool(boundary)), max_size=30)))
    start = data.draw(st.integers(0, len(raw)))
    end = data.draw(st.integers(start, len(raw)))
    assert read_head(raw, start, end) == mimetree._read_head_py(raw, start, end)
    sep = b"--" + boundary.encode()
    assert split_multipart(raw, start, end, sep) == mimetree._split_multipart_py(raw, start, end, sep)


@pytest.mark.parametrize("raw", [b"--b\n" * 200_000, b"--b\r\n\r\n" * 100_000, b"A: b\r\n" * 100_000,
                                 b"\r" * 1_000_000, b"x" * 2_000_000])
def test_huge_bodies_are_scanned_as_the_references_scan_them(raw: bytes) -> None:
    assert read_head(raw, 0, len(raw)) == mimetree._read_head_py(raw, 0, len(raw))
    assert split_multipart(raw, 0, len(raw), b"--b") == mimetree._split_multipart_py(raw, 0, len(raw), b"--b")


def test_bad_arguments_are_refused_cleanly() -> None:
    with pytest.raises(ValueError):
        read_head(b"abc", 2, 1)
    with pytest.raises(ValueError):
        split_multipart(b"abc", 0, 4, b"--b")
    with pytest.raises(TypeError):
        read_head("abc", 0, 1)  # type: ignore[arg-type]
