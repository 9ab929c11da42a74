"""A milter that does nothing, on pymilter: the floor any pymilter filter stands on.

    python -m bench.noop_milter unix:/path/to/socket [--spin-ms MS] [--workers N]

Every callback answers CONTINUE (no reply at all where Postfix allows), the
message is not kept, end of message accepts.  The throughput benchmark runs it
as a reference (--noop) so the cost of the protocol library can be told apart
from the cost of filtering.  ``--spin-ms`` makes end of message burn that much
CPU (its own thread's clock) while holding the GIL, as a filter's work would;
``--workers`` pre-forks that many processes on the one socket, as the Stronghold
milter does (``bench.floor`` compares them).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

import Milter
import milter

SPIN = [0.0]  # seconds of CPU end of message burns (--spin-ms)


class NoopMilter(Milter.Base):
    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom: str, *params: str) -> int:
        return Milter.CONTINUE

    def envrcpt(self, to: str, *params: str) -> int:
        return Milter.CONTINUE

    def data(self) -> int:  # see StrongholdMilter.data: without it a macro packet waits for a reply
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: Any) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        if SPIN[0]:
            until, total = time.thread_time() + SPIN[0], 0
            while time.thread_time() < until:
                total += sum(range(2000))  # ~20 us between clock reads (each a system call)
        return Milter.ACCEPT


def _prefork(spec: str, workers: int) -> None:
    """The Stronghold milter's way: one socket, ``workers`` processes serving it."""
    from stronghold.milter_server import _tune_listener  # non-blocking listener, as the product's
    Milter.factory = NoopMilter
    milter.set_flags(0)
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    milter.setconn(spec)
    milter.settimeout(60)
    milter.register("noop", data=lambda ctx: ctx.getpriv().data(),
                    unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd), negotiate=Milter.negotiate_callback)
    milter.opensocket(True)
    _tune_listener(spec)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            milter.main()
            os._exit(0)
        children.append(pid)

    def stop(_signum: int, _frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    for _ in children:
        try:
            os.wait()
        except ChildProcessError:
            break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--spin-ms", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=0, help="pre-fork this many (0: one process, pymilter's way)")
    args = parser.parse_args(argv)
    SPIN[0] = args.spin_ms / 1000
    milter.setbacklog(1024)  # as the Stronghold milter: a busy Postfix is not refused
    os.umask(0o000)  # the socket in the benchmark's private folder must be writable by Postfix
    if args.workers:
        _prefork(args.spec, args.workers)
    else:
        Milter.factory = NoopMilter
        Milter.runmilter("noop", args.spec, timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
