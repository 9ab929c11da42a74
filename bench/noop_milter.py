"""A milter that does nothing, on pymilter or on our native engine: the floor a filter stands on.

    python -m bench.noop_milter unix:/path/to/socket [--spin-ms MS] [--workers N] [--native [--clamd ADDRESS]]

Every callback answers CONTINUE (no reply at all where Postfix allows), the
message is not kept, end of message accepts.  The throughput benchmark runs it
as a reference (--noop) so the cost of the protocol library can be told apart
from the cost of filtering.  ``--spin-ms`` makes end of message burn that much
CPU (its own thread's clock) while holding the GIL, as a filter's work would;
``--workers`` pre-forks that many processes on the one socket, as the Stronghold
milter does (``bench.floor`` compares them).  ``--native`` speaks the protocol with the
product's C engine (``stronghold._miltercore.Session``, a thread per connection, 2 workers
blocking in accept unless ``--workers`` says otherwise): Python answers each recipient and
each end of message, nothing else.  ``--clamd`` (with ``--native``) adds the one piece of work
no filter that scans for viruses can skip: each message spooled and scanned by clamd through the
product's own exchange (``Spool``, ``antivirus.start``), then rejected if clamd found a virus,
else accepted: the floor of a virus-scanning filter on this engine.
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


def _supervise(children: list[int]) -> None:
    """Pass SIGTERM on to the worker processes and wait for them."""
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
    _supervise(children)


def _scan(scanner: Any, spool: Any) -> bool:
    """clamd scans the spooled message, the product's way (handed over, then the answer read);
    whether it found a virus (a scanner error counts as none: this is a floor, not a filter)."""
    from stronghold import antivirus
    begun = antivirus.start(scanner, spool)
    try:
        return begun.scan(spool).infected
    except antivirus.ScannerError:
        return False
    finally:
        antivirus.release(begun)


def _native(spec: str, workers: int, clamd: str | None = None) -> None:
    """The native engine's way, minus the filter: a Session per connection, accept at the end."""
    import socket

    from stronghold import _miltercore as core  # type: ignore[attr-defined]
    from stronghold import antivirus
    from stronghold.nativemilter import FLAGS, ConnectionThreads, open_listener
    from stronghold.spool import Spool

    accept, cont, reject = b"\0\0\0\x01a", b"\0\0\0\x01c", b"\0\0\0\x01r"
    scanner = antivirus.make_scanner(clamd, 30.0) if clamd else None

    def serve(sock: socket.socket) -> None:
        session = core.Session(sock.fileno(), FLAGS, 1 << 20, 1 << 25)
        reply = b""
        spool, infected = Spool(1 << 20), False
        while True:
            event = session.next(reply)
            if event[0] == core.EV_CLOSE:
                break
            if scanner is not None and event[0] in (core.EV_DATA, core.EV_EOM):
                spool.write(event[2])  # the message as the engine assembled it, as the product spools it
                if event[0] == core.EV_EOM:
                    infected = _scan(scanner, spool)
                    spool.close()
                    spool = Spool(1 << 20)
            elif event[0] == core.EV_ABORT:
                spool.close()
                spool = Spool(1 << 20)
            if event[0] == core.EV_EOM and SPIN[0]:
                until = time.thread_time() + SPIN[0]
                while time.thread_time() < until:
                    sum(range(2000))
            reply = (cont if event[0] == core.EV_RCPT else b"" if event[0] != core.EV_EOM
                     else reject if infected else accept)
            infected = False
        spool.close()
        sock.close()

    listener = open_listener(spec, 1024)
    listener.setblocking(True)  # the product's workers wait in epoll; these block in accept()
    children = []
    for _ in range(workers or 2):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            threads = ConnectionThreads(serve)  # reused, as the product's
            while True:
                threads.serve(listener.accept()[0])
        children.append(pid)
    _supervise(children)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--spin-ms", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=0, help="pre-fork this many (0: one process, pymilter's way)")
    parser.add_argument("--native", action="store_true", help="the product's C protocol engine instead of pymilter")
    parser.add_argument("--clamd", help="with --native: clamd (unix:PATH or inet:PORT@HOST) scans every message")
    args = parser.parse_args(argv)
    SPIN[0] = args.spin_ms / 1000
    if args.native:
        os.umask(0o000)
        _native(args.spec, args.workers, args.clamd)
        return 0
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
