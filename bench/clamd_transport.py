"""clamd's CPU per message by how the message reaches it and where its temp files go.

    python -m bench.clamd_transport [--messages 2000]

Scans the same corpus messages with the product's ClamdScanner, one at a time,
four ways (each twice, interleaved): the spool passed as a descriptor (FILDES) or streamed (INSTREAM),
with clamd's TemporaryDirectory on tmpfs or on disk.  Prints a Markdown table
of clamd's CPU (from /proc) and the client's own CPU per message.
"""

from __future__ import annotations

import argparse
import io
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import load_messages
from devtools.localstack import TEST_SIGNATURES, Clamd, memory_tmpdir
from stronghold.antivirus import ClamdScanner


def thread_cpu_seconds(pid: int) -> float:
    """CPU time of the live threads of ``pid``, in nanosecond resolution (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that just ended
    return total / 1e9


PASSES = itertools.count(1)


def measure(clamd: Clamd, messages: list[bytes], descriptors: bool) -> tuple[float, float]:
    """(clamd CPU ms, client CPU ms) per message.

    Each pass sends the messages with a header line of its own: clamd answers a file it has
    scanned before from its cache of clean digests, and a second pass would measure that."""
    scanner = ClamdScanner(clamd.address)
    scanner.pass_descriptors = descriptors
    for raw in messages[:50]:  # warm up
        scanner.scan(io.BytesIO(b"X-Warm-Up: 1\r\n" + raw))
    assert clamd.proc is not None
    unique = [b"X-Bench-Pass: %d\r\n" % next(PASSES) + raw for raw in messages]
    server, client = thread_cpu_seconds(clamd.proc.pid), time.process_time()
    for raw in unique:
        result = scanner.scan(io.BytesIO(raw))
        assert result.virus is None, result
    n = len(messages)
    return (thread_cpu_seconds(clamd.proc.pid) - server) * 1000 / n, (time.process_time() - client) * 1000 / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    messages = load_messages(args.messages)
    home = Path(tempfile.mkdtemp(prefix="stronghold-clamd-bench-"))
    rows = []
    try:
        for place, tmpdir in (("tmpfs", memory_tmpdir("stronghold-clamd-bench-", home / "shm")),
                              ("disk", home / "scratch")):
            tmpdir.mkdir(parents=True, exist_ok=True)
            clamd = Clamd(home / f"clamd-{place}", TEST_SIGNATURES, tmpdir=tmpdir)
            clamd.start()
            try:
                measure(clamd, messages, True)  # a fresh clamd's first pass costs it more
                for label, descriptors in (("FILDES", True), ("INSTREAM", False)) * 2:  # A B A B
                    server, client = measure(clamd, messages, descriptors)
                    rows.append(f"| {label} | {place} | {server:.3f} | {client:.3f} |")
                    print(f"  {label} {place}: clamd {server:.3f} ms", file=sys.stderr, flush=True)
            finally:
                clamd.stop()
                if place == "tmpfs":
                    shutil.rmtree(tmpdir, ignore_errors=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"clamd CPU per message, {len(messages)} corpus messages scanned one at a time "
          f"(`python -m bench.clamd_transport --messages {args.messages}`):\n")
    print("| transport | clamd temp files | clamd CPU ms/msg | client CPU ms/msg |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
