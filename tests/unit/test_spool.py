"""The milter's spool: memory first, then a file; read, head and a descriptor agree."""

from __future__ import annotations

import os

import pytest

from stronghold.spool import Spool, anonymous_file

PIECES = [b"Subject: hi\r\n", b"\r\n", b"x" * 5000, b"tail\r\n"]
WHOLE = b"".join(PIECES)


@pytest.mark.parametrize("limit", [1 << 20, 100], ids=["memory", "disk"])
def test_spool_reads_back_what_was_written(tmp_path, limit):
    with Spool(limit, tmp_path) as spool:
        for piece in PIECES:
            spool.write(piece)
        assert spool.on_disk is (limit < len(WHOLE))
        assert spool.size == len(WHOLE)
        assert spool.head(13) == b"Subject: hi\r\n"
        assert spool.head(10**9) == WHOLE
        spool.seek(0)
        chunks = iter(lambda: spool.read(1000), b"")
        assert b"".join(chunks) == WHOLE
        fd = spool.fileno()
        assert os.pread(fd, len(WHOLE) + 10, 0) == WHOLE
        assert spool.fileno() == fd  # one descriptor, not one per call


def test_disk_spool_lives_in_the_folder_and_leaves_no_name(tmp_path):
    with Spool(10, tmp_path) as spool:
        spool.write(WHOLE)
        assert spool.on_disk
        assert list(tmp_path.iterdir()) == []  # unlinked: nothing left behind if the process dies


def test_close_releases_the_descriptor(tmp_path):
    spool = Spool(1 << 20, tmp_path)
    spool.write(WHOLE)
    fd = spool.fileno()
    spool.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_no_writes_after_the_descriptor_is_out(tmp_path):
    with Spool(1 << 20, tmp_path) as spool:
        spool.write(b"a")
        spool.fileno()
        with pytest.raises(ValueError):
            spool.write(b"b")


def test_anonymous_file_holds_the_data_from_the_start():
    fd = anonymous_file(b"abc" * 100_000)
    try:
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        assert os.fstat(fd).st_size == 300_000
        assert os.read(fd, 6) == b"abcabc"
    finally:
        os.close(fd)
