"""Raw message bytes -> the standard library's ``email.message.Message`` tree, natively where it can.

``mime_tree`` gives exactly the tree ``email.message_from_bytes`` builds: a one-part message
with a plain header block by ``header_fields`` and a few stdlib calls, other messages
(multipart, message/*) by ``TreeReader`` part by part, both on the C scans of
``stronghold/native/mimecore.c`` when the native core is built; anything they cannot promise
to read as the stdlib does goes to the stdlib's feed parser.  Each C scan has its Python
reference here (``_*_py``), which the tests compare it with.  Work is bounded: nesting is cut
at ``MAX_DEPTH``, a header flood at ``MAX_HEADER_LINES`` (``capped_header``), and a message
with more than ``MAX_PARTS`` ``boundary=`` parameters is read flat.
"""

from __future__ import annotations

import email
import email.errors
import email.message
import email.parser
import email.policy
import re
from collections.abc import Callable

from stronghold import nativecore
from stronghold.mimeparams import known_charsets, read_params

MAX_DEPTH = 40
MAX_PARTS = 200
MAX_HEADER_LINES = 2000  # real mail has tens; a flood of short fields costs seconds each 100k

_mimecore = nativecore.load("mimecore")


# The header block as the stdlib parser reads it (email.feedparser.headerRE for a
# header line, any of its line ends), up to and with the empty line that ends it.
# Atomic and possessive: linear, whatever the input.
_HEAD = re.compile(rb"(?:(?>From |[\041-\071\073-\176]*+:|[\t ])[^\r\n]*+(?:\r\n|\r|\n))*+(?:\r\n|\r|\n)")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)")
_SOURCE = email.policy.compat32.header_source_parse


def _header_fields_py(raw: bytes) -> tuple[list[tuple[str, str]], int] | None:
    """The fields of a plain header block and where the block ends, or None.

    Plain: each line a ``name:`` field or a continuation, the first not a
    continuation, no ``From `` line, an empty line at the end.  Each field is what
    the stdlib's own ``header_source_parse`` makes of its lines (name, value as
    ASCII with surrogate escapes).  ``header_fields`` is this, in C when built.
    """
    head = _HEAD.match(raw)
    if head is None:
        return None
    fields: list[list[str]] = []
    for line in _LINE.findall(raw[:head.end()].decode("ascii", "surrogateescape"))[:-1]:
        if line[0] in " \t":
            if not fields:
                return None
            fields[-1].append(line)
        elif line.startswith("From ") or line.find(":") <= 0:
            return None
        else:
            fields.append([line])
    return [_SOURCE(lines) for lines in fields], head.end()


class IndexedMessage(email.message.Message):
    """The stdlib's ``Message``, its header look-ups through an index of names built once.

    ``Message.get`` (behind ``get_content_type``, ``get_filename``, ``get_param``, ``in``...)
    lower-cases every header name of the part at each call; parse() asks each part several
    times.  The index maps each lower-cased name to its first position, and is rebuilt
    whenever the header list is another list or another length (the stdlib's mutators
    append, replace a list, or rewrite an entry under the same name): the same answers as
    the stdlib's."""

    _name_index: tuple[list, int, dict[str, int]] | None = None

    def _positions(self) -> dict[str, int]:
        held = self._headers  # type: ignore[attr-defined]
        index = self._name_index
        if index is None or index[0] is not held or index[1] != len(held):
            positions: dict[str, int] = {}
            for i, (name, _value) in enumerate(held):
                positions.setdefault(name.lower(), i)
            index = self._name_index = (held, len(held), positions)
        return index[2]

    def get(self, name: str, failobj: object = None) -> object:  # type: ignore[override]
        at = self._positions().get(name.lower())
        if at is None:
            return failobj
        key, value = self._headers[at]  # type: ignore[attr-defined]
        return self.policy.header_fetch_parse(key, value)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._positions()

    def _get_params_preserve(self, failobj: object, header: str) -> object:
        """The stdlib's parameter reading (``mimeparams.read_params``: in linear time; charsets
        that are no character set made unknown ones), kept per header and value: parse() reads
        a part's Content-Type parameters twice (``get_filename`` falls back to ``name``, then
        ``get_content_charset``).  A changed header has another value, so is read again;
        each caller gets its own list."""
        value = self.get(header)
        if not isinstance(value, str):  # missing, or a Header object: as the stdlib does
            return super()._get_params_preserve(failobj, header)  # type: ignore[misc]
        read = self.__dict__.setdefault("_params_read", {})
        key = header.lower()
        held = read.get(key)
        if held is None or held[0] != value:
            held = read[key] = (value, known_charsets(read_params(value)))
        return list(held[1])


def _with_fields(part: IndexedMessage, fields: list[tuple[str, str]]) -> IndexedMessage:
    """``part`` holding ``fields`` (as ``set_raw`` for each would leave it, in one step)."""
    part._headers = list(fields)  # type: ignore[attr-defined]
    return part


header_fields: Callable[[bytes], tuple[list[tuple[str, str]], int] | None] = (
    _mimecore.header_fields if _mimecore is not None else _header_fields_py)


def _single_part(raw: bytes) -> email.message.Message | None:
    """The stdlib's tree of a message that is one part, built without its feed parser.

    Only for plain header blocks (``header_fields``); the rest becomes the payload
    unchanged: exactly what ``email.message_from_bytes`` makes of it.  None for
    anything else (multipart, message/*, odd headers): the caller runs the stdlib parser.
    """
    read = header_fields(raw)
    if read is None:
        return None
    fields, end = read
    root = _with_fields(IndexedMessage(), fields)
    if root.get_content_maintype() in ("multipart", "message"):
        return None
    root.set_payload(raw[end:].decode("ascii", "surrogateescape"))
    return root


# A header line as the feed parser's headerRE takes it, after "From " and continuations
_FIELD_START = re.compile(rb"[\041-\071\073-\176]*:")


def _read_head_py(raw: bytes, start: int, end: int) -> tuple[str | None, list[tuple[str, str]], int, bool] | None:
    """The header block of the part ``raw[start:end]`` as the feed parser reads it, or None.

    Header lines up to and with an empty line, or to the end of the part, or to a line that is
    neither (where the body then starts: MissingHeaderBodySeparatorDefect); a ``From `` first
    line is the unixfrom, each field what ``header_source_parse`` makes of its lines.  None
    where the parser records another defect or pushes a line back.  Returns (unixfrom, fields,
    start of the body, whether the block ended without that defect); ``read_head`` is this, in
    C when built.
    """
    unixfrom: str | None = None
    fields: list[list[str]] = []
    field_open = False
    pos = start
    for line in raw[start:end].splitlines(keepends=True):
        if line[:1] in (b"\r", b"\n"):  # the empty line: not part of the body
            return unixfrom, [_SOURCE(lines) for lines in fields], pos + len(line), True
        text = line.decode("ascii", "surrogateescape")
        if line[:1] in (b" ", b"\t"):
            if not field_open:  # FirstHeaderLineIsContinuationDefect, or after the unixfrom
                return None
            fields[-1].append(text)
        elif line.startswith(b"From "):
            if pos != start:  # MisplacedEnvelopeHeaderDefect, or pushed back as the body
                return None
            unixfrom, field_open = text.rstrip("\r\n"), False
        else:
            name = _FIELD_START.match(line)
            if name is None:  # MissingHeaderBodySeparatorDefect: the body starts here
                return unixfrom, [_SOURCE(lines) for lines in fields], pos, False
            if name.end() == 1:  # InvalidHeaderDefect
                return None
            fields.append([text])
            field_open = True
        pos += len(line)
    return unixfrom, [_SOURCE(lines) for lines in fields], end, True


def _split_multipart_py(raw: bytes, start: int, end: int, sep: bytes) -> tuple[int, list[tuple[int, int]], int] | None:
    """How the feed parser cuts the multipart body ``raw[start:end]`` at its boundary ``sep``.

    For a span holding no line of an enclosing boundary.  Parts run from after a separator
    line (and the boundary lines right after it, which the parser skips) to the next boundary
    line.  Returns (end of the preamble or -1 without preamble lines, [(start, end) of each
    part], start of the epilogue or -1 without a close line), or None when no separator comes
    before a close line or the end (StartBoundaryNotFoundDefect).  ``split_multipart`` is
    this, in C when built.
    """
    boundary = re.compile(b"(?P<sep>" + re.escape(sep) + rb")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$")
    lines = raw[start:end].splitlines(keepends=True)
    offsets = [start]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    kinds = [0 if mo is None else 2 if mo.group("end") else 1 for mo in map(boundary.match, lines)] + [0]
    i = kinds.index(1) if 1 in kinds else len(lines)
    if i == len(lines) or 2 in kinds[:i]:
        return None
    preamble_end = offsets[i] - (len(lines[i - 1]) - len(lines[i - 1].rstrip(b"\r\n"))) if i else -1
    spans: list[tuple[int, int]] = []
    while True:
        i += 1
        while i < len(lines) and kinds[i]:
            i += 1
        first = i
        while i < len(lines) and not kinds[i]:
            i += 1
        spans.append((offsets[first], offsets[i]))
        if kinds[i] != 1:
            return preamble_end, spans, offsets[i + 1] if kinds[i] == 2 else -1


read_head: Callable[[bytes, int, int], tuple[str | None, list[tuple[str, str]], int, bool] | None] = (
    _mimecore.read_head if _mimecore is not None else _read_head_py)
split_multipart: Callable[[bytes, int, int, bytes], tuple[int, list[tuple[int, int]], int] | None] = (
    _mimecore.split_multipart if _mimecore is not None else _split_multipart_py)


def _without_line_end(text: str) -> str:
    """``text`` less one line end at its end: the feed parser gives it to the boundary after it."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith(("\r", "\n")) else text


class TreeReader:
    """The feed parser's ``Message`` tree of a message, built part by part without it.

    ``read_head`` reads each part's header block and ``split_multipart`` cuts each multipart
    body; the stdlib's own ``Message`` methods say what each part is (content type, boundary),
    as they tell the feed parser.  ``tree()`` gives None wherever the result could differ from
    ``email.message_from_bytes`` (a defect other than a missing close boundary, a multipart's
    transfer encoding or a missing empty line after a header block; nesting deeper than
    MAX_DEPTH): the caller then runs the stdlib parser.

    ``max_parts``: stop reading parts once that many are built.  The tree is then the first
    ``max_parts`` parts (and more) of the stdlib's in document order (a multipart keeps its
    own preamble, epilogue and defects, and the parts before the cut): all a reader that
    stops at ``max_parts`` parts in that order sees, as ``message.parse`` does, without the
    seconds that building 400,000 empty parts of a hostile 2 MB message takes.
    """

    def __init__(self, raw: bytes,
                 head: Callable[[bytes, int, int], tuple[str | None, list[tuple[str, str]], int, bool] | None]
                 | None = None,
                 split: Callable[[bytes, int, int, bytes], tuple[int, list[tuple[int, int]], int] | None] | None = None,
                 max_parts: int | None = None) -> None:
        self.raw = raw
        self.head = head or read_head
        self.split = split or split_multipart
        self.parts_left = max_parts  # None: no limit

    def tree(self) -> email.message.Message | None:
        return self.part(0, len(self.raw), digest=False, before_boundary=False, depth=0)

    def text(self, start: int, end: int) -> str:
        return self.raw[start:end].decode("ascii", "surrogateescape")  # as the parser keeps 8-bit bytes

    def part(self, start: int, end: int, digest: bool, before_boundary: bool,
             depth: int) -> email.message.Message | None:
        """The message ``raw[start:end]`` (a part of a multipart/digest: ``digest``; a boundary
        line after it: ``before_boundary``, the line end before it goes to that line)."""
        if depth > MAX_DEPTH:
            return None
        if self.parts_left is not None:
            self.parts_left -= 1
        head = self.head(self.raw, start, end)
        if head is None:
            return None
        unixfrom, fields, body, separated = head
        part = IndexedMessage()
        if not separated:
            part.defects.append(email.errors.MissingHeaderBodySeparatorDefect())
        if digest:
            part.set_default_type("message/rfc822")
        if unixfrom is not None:
            part.set_unixfrom(unixfrom)
        _with_fields(part, fields)
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            if not self.status_blocks(part, body, end):
                return None
        elif ctype.startswith("message/"):  # another message, to the end of this one
            inner = self.part(body, end, digest=False, before_boundary=before_boundary, depth=depth + 1)
            if inner is None:
                return None
            part.attach(inner)
        elif ctype.startswith("multipart/"):
            if not self.multipart(part, ctype, body, end, before_boundary, depth):
                return None
        else:
            text = self.text(body, end)
            part.set_payload(_without_line_end(text) if before_boundary else text)
        return part

    def status_blocks(self, part: email.message.Message, body: int, end: int) -> bool:
        """Read the body ``raw[body:end]`` of a message/delivery-status into ``part``: each block of
        fields (up to an empty line, which goes with it) a message without payload, as the feed
        parser reads them; False where the stdlib must (a block that is not fields, or says it
        is a message or multipart)."""
        pos = body
        while True:
            head = self.head(self.raw, pos, end)
            if head is None:
                return False
            unixfrom, fields, pos, separated = head
            if not separated:  # text after the fields: it would be the block's payload
                return False
            block = IndexedMessage()
            if unixfrom is not None:
                block.set_unixfrom(unixfrom)
            _with_fields(block, fields)
            if block.get_content_maintype() in ("message", "multipart"):
                return False
            block.set_payload("")
            part.attach(block)
            if pos >= end:  # the parser stops where nothing follows the empty line
                return True

    def multipart(self, part: email.message.Message, ctype: str, body: int, end: int, before_boundary: bool,
                  depth: int) -> bool:
        """Read the multipart body ``raw[body:end]`` into ``part`` (of type ``ctype``); False where the
        stdlib must."""
        boundary = part.get_boundary()
        if boundary is None:  # NoBoundaryInMultipartDefect
            return False
        if str(part.get("content-transfer-encoding", "8bit")).lower() not in ("7bit", "8bit", "binary"):
            part.defects.append(email.errors.InvalidMultipartContentTransferEncodingDefect())
        try:
            sep = ("--" + boundary).encode("ascii", "surrogateescape")
        except UnicodeEncodeError:  # a decoded RFC 2231 boundary: no line of the bytes holds it
            return False
        cut = self.split(self.raw, body, end, sep)
        if cut is None:
            return False
        preamble_end, spans, epilogue_start = cut
        if preamble_end >= 0:
            part.preamble = self.text(body, preamble_end)
        digest = ctype == "multipart/digest"
        for start, stop in spans:
            if self.parts_left is not None and self.parts_left <= 0:
                break  # enough read: the parts after the cut are never looked at
            child = self.part(start, stop, digest=digest, before_boundary=True, depth=depth + 1)
            if child is None:
                return False
            part.attach(child)
        if epilogue_start < 0:
            part.defects.append(email.errors.CloseBoundaryNotFoundDefect())
            return True
        epilogue = self.text(epilogue_start, end)
        if before_boundary:  # the parser gives the line end to the boundary, and an empty one is None
            part.epilogue = _without_line_end(epilogue) if epilogue else None
        else:
            part.epilogue = epilogue
        return True


def mime_tree(raw: bytes, defects: list[str]) -> email.message.Message:
    """The stdlib MIME tree, or headers + flat text when nesting is pathological.

    A message of one part is read by ``_single_part``, others (multipart,
    message/*) by ``TreeReader`` when the native core is built: the same tree
    (up to its first MAX_PARTS + 1 parts, all that parse() reads), at a fraction
    of the cost.  The stdlib parser recurses once per multipart level, so a
    message with hundreds of nested multiparts is read flat instead (and says so).
    So is one whose MIME parameters the stdlib cannot read at all (RFC 2231 pieces
    it cannot order, ``a*=x; a*0=y``; a piece number ``int()`` refuses): it raised
    on them while looking for a boundary ("bad-mime-params").
    """
    if raw.lower().count(b"boundary=") <= MAX_PARTS:
        try:
            single = _single_part(raw)
            if single is not None:
                return single
            if _mimecore is not None:  # without the native core, the stdlib parser
                tree = TreeReader(raw, max_parts=MAX_PARTS + 1).tree()  # parse() reads MAX_PARTS (one more: it says so)
                if tree is not None:
                    return tree
            return email.message_from_bytes(raw, _class=IndexedMessage)
        except RecursionError:
            pass
        except (TypeError, ValueError):
            defects.append("bad-mime-params")
            return _flat(raw, headers_only=True)
    defects.append("too-deep")
    try:
        return _flat(raw, headers_only=False)
    except (TypeError, ValueError):
        defects.append("bad-mime-params")
        return _flat(raw, headers_only=True)


def _flat(raw: bytes, headers_only: bool) -> email.message.Message:
    """The header block of ``raw`` with the rest as one flat text payload (no content type,
    no transfer encoding).  ``headers_only``: the header block read without the parser's
    look at the content type (which reads its parameters)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, _, body = raw.partition(b"\n\n")
    if headers_only:
        flat = email.parser.BytesParser(_class=IndexedMessage).parsebytes(head + b"\r\n\r\n", headersonly=True)
    else:
        flat = email.message_from_bytes(head + b"\r\n\r\n", _class=IndexedMessage)
    del flat["content-type"]
    del flat["content-transfer-encoding"]
    flat.set_payload(body.decode("ascii", "surrogateescape"))  # as the parser keeps 8-bit bytes
    return flat


def blank_line(raw: bytes) -> tuple[int, int] | None:
    """Start and end of the first empty line, as ``re.search(rb"\\r?\\n\\r?\\n", raw)`` finds it
    (the end of the header block), by two memory searches instead of a regex tried at every byte."""
    lf = raw.find(b"\n\n")
    crlf = raw.find(b"\n\r\n", 0, lf + 2 if lf >= 0 else len(raw))  # only one before a \n\n matters
    found = [i for i in (lf, crlf) if i >= 0]
    if not found:
        return None
    first = min(found)  # the first line end followed by an empty line
    start = first - 1 if first > 0 and raw[first - 1] == 0x0D else first
    return start, first + (2 if raw[first + 1] == 0x0A else 3)


def capped_header(raw: bytes, defects: list[str]) -> bytes:
    """The message with at most MAX_HEADER_LINES lines of top-level header (the rest of the
    header dropped, "header-flood" recorded), so a flood of fields cannot hold a worker."""
    blank = blank_line(raw)
    end = blank[0] if blank else len(raw)
    if raw.count(b"\n", 0, end) < MAX_HEADER_LINES:
        return raw
    cut = -1
    for _ in range(MAX_HEADER_LINES):
        cut = raw.index(b"\n", cut + 1)
    defects.append("header-flood")
    newline = b"\r\n" if raw[cut - 1:cut] == b"\r" else b"\n"
    return raw[:cut + 1] + (newline + raw[blank[1]:] if blank else b"")
