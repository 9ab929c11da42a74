"""Where the milter keeps a message while it arrives: memory first, then an unlinked file.

The spool is a minimal read-only file once written: ``read``/``seek`` for a
scanner that streams it (clamd INSTREAM), ``fileno`` for one that reads it in
place (clamd FILDES: no copy, no temporary file on clamd's side), ``head`` for
the parser.  A message kept in memory gets an anonymous in-memory file
(memfd) only when a descriptor is asked for.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Protocol

from stronghold import nativecore


class Stream(Protocol):
    """What a scanner reads a message from: a Spool, or any binary file."""

    def read(self, n: int = -1, /) -> bytes: ...

    def seek(self, pos: int, whence: int = os.SEEK_SET, /) -> int: ...

    def fileno(self) -> int: ...


_clamdcore = nativecore.load("clamdcore")


def anonymous_file(data: bytes | bytearray | memoryview) -> int:
    """A new descriptor of an unnamed file holding ``data``, positioned at 0 (a memfd made in
    C with the GIL let go once where the native core is built, else ``_anonymous_file_py``)."""
    if _clamdcore is not None:
        try:
            return int(_clamdcore.anonymous_file(data))
        except OSError:  # memfd refused here: the reference's way, with its unlinked-file fallback
            pass
    return _anonymous_file_py(data)


def _anonymous_file_py(data: bytes | bytearray | memoryview) -> int:
    """The reference of ``anonymous_file``: memfd_create, write, seek, each letting the GIL go."""
    try:
        fd = os.memfd_create("stronghold-spool", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or memfd refused: a real, unlinked file
        fd, name = tempfile.mkstemp(prefix="stronghold-spool-")
        os.unlink(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


class Spool:
    """Message bytes: in memory up to ``memory_limit``, beyond that in a file under ``folder``."""

    def __init__(self, memory_limit: int, folder: Path | str | None = None) -> None:
        self.memory_limit = memory_limit
        self.folder = folder
        self.size = 0
        self._buf = bytearray()
        self._file: IO[bytes] | None = None
        self._memfd: int | None = None
        self._pos = 0

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def write(self, data: bytes) -> None:
        if self._memfd is not None:
            raise ValueError("spool already handed out as a file descriptor")
        if self._file is None and len(self._buf) + len(data) > self.memory_limit:
            self._file = tempfile.TemporaryFile(dir=self.folder)
            self._file.write(self._buf)
            self._buf = bytearray()
        if self._file is not None:
            self._file.write(data)
        else:
            self._buf += data
        self.size += len(data)

    def head(self, n: int) -> bytes:
        """The first ``n`` bytes."""
        if self._file is None:
            return bytes(self._buf[:n])
        self._file.flush()
        return os.pread(self._file.fileno(), n, 0)

    # -- the read side of a file object ---------------------------------------
    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise ValueError("spool seeks from the start only")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        if end <= self._pos:
            return b""
        if self._file is None:
            chunk = bytes(self._buf[self._pos:end])
        else:
            self._file.flush()
            chunk = os.pread(self._file.fileno(), end - self._pos, self._pos)
        self._pos += len(chunk)
        return chunk

    def fileno(self) -> int:
        """A descriptor of a file holding the whole message (valid until close)."""
        if self._file is not None:
            self._file.flush()
            return self._file.fileno()
        if self._memfd is None:
            self._memfd = anonymous_file(self._buf)
        return self._memfd

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._memfd is not None:
            os.close(self._memfd)
            self._memfd = None
        self._buf = bytearray()
        self.size = self._pos = 0

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
