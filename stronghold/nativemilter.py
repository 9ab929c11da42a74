"""The milter protocol engine in C: a thread per MTA connection, Python only where a decision is due.

``stronghold._miltercore.Session`` reads the MTA's packets, answers negotiation, macros,
connect, HELO, MAIL, DATA, headers and body chunks itself and collects the message (see
its source, stronghold/native/miltercore.c).  This module turns its few events into the
same ``Transaction`` calls as the libmilter engine (stronghold/milter.py): a recipient to
check, batches of headers and bytes to spool, the end of the message to conclude; then
packs the ``Answer`` into protocol packets.  Per message that is one call into Python per
recipient and one at the end, where libmilter makes ~30 (one per header) and reads every
packet with a poll and two reads.

A worker accepts on the socket the supervisor opened (stronghold/milter_server.py) and runs
each connection in a thread of its own, as libmilter does; the GIL is released while a
Session waits on the MTA.  A failing callback answers tempfail (the MTA retries), as
libmilter's exception policy does for the other engine.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from stronghold import nativecore
from stronghold.service import Service
from stronghold.transaction import ACCEPT, DISCARD, REJECT, TEMPFAIL, Answer, Transaction, bare, check_recipient
from stronghold.verdict import Envelope

log = logging.getLogger(__name__)

ADDHDRS, CHGHDRS, DELRCPT = 0x01, 0x10, 0x08  # the actions of the protocol this milter takes
FLAGS = ADDHDRS | CHGHDRS | DELRCPT
_LEN = struct.Struct(">I")
_CODE = {ACCEPT: b"a", REJECT: b"r", DISCARD: b"d"}
MAX_REPLY = 980  # libmilter's longest reply text (MAXREPLYLEN)


def core() -> ModuleType | None:
    """The C module, or None (not built, or STRONGHOLD_NATIVE=0)."""
    return nativecore.load("miltercore")


def _packet(cmd: bytes, data: bytes = b"") -> bytes:
    return _LEN.pack(len(data) + 1) + cmd + data


def _field(text: str) -> bytes:
    """A NUL-terminated protocol string (a NUL inside would cut it: none of ours has one)."""
    return text.encode("utf-8", "surrogateescape").replace(b"\0", b" ") + b"\0"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def pack(answer: Answer) -> bytes:
    """The packets of an Answer: its edits, then the reply (a reply code where it has text)."""
    out = []
    for edit in answer.edits:
        if edit[0] == "change":
            out.append(_packet(b"m", _LEN.pack(edit[2]) + _field(edit[1]) + _field(edit[3])))
        elif edit[0] == "add" and edit[3] >= 0:
            out.append(_packet(b"i", _LEN.pack(edit[3]) + _field(edit[1]) + _field(edit[2])))
        elif edit[0] == "add":
            out.append(_packet(b"h", _field(edit[1]) + _field(edit[2])))
        elif edit[0] == "delrcpt":
            out.append(_packet(b"-", _field(edit[1])))
        else:
            raise ValueError(f"unknown edit {edit[0]!r}")
    reply = answer.reply
    if reply is not None and (answer.action, reply[0][:1]) in ((REJECT, "5"), (TEMPFAIL, "4")):
        # libmilter sends a reply's text only with an action of its class, else the bare action
        code, xcode, text = reply
        out.append(_packet(b"y", _field(_one_line(f"{code} {xcode} {text}")[:MAX_REPLY])))
    else:
        out.append(_packet(_CODE.get(answer.action, b"t")))
    return b"".join(out)


CONTINUE_PACKET = _packet(b"c")
TEMPFAIL_PACKET = _packet(b"t")


def _peer(session: Any) -> tuple[str, str, str]:
    """The client's address, its HELO name and the queue id, as the Session has them now."""
    return session.client[2], session.helo, session.macro("i") or ""


class Connection:
    """One MTA connection on the native engine: its Session and the message in progress."""

    def __init__(self, service: Service, sock: socket.socket) -> None:
        self.service = service
        self.sock = sock
        self.txn: Transaction | None = None

    def run(self) -> None:
        mod = core()
        assert mod is not None
        cfg = self.service.cfg
        # DATA answered only over TCP (its reply carries the ACK Postfix's next packet waits for)
        session = mod.Session(self.sock.fileno(), FLAGS, cfg.spool_memory_bytes, cfg.max_message_bytes,
                              data_reply=self.sock.family != socket.AF_UNIX)
        reply = b""
        try:
            while True:
                event = session.next(reply)
                kind = event[0]
                if kind == mod.EV_CLOSE:
                    log.debug("milter connection ends: %s", event[1])
                    return
                try:
                    reply = self.on_event(mod, session, event)
                except Exception:  # a bug in a callback must not let mail through unchecked
                    log.exception("milter callback failed; answering tempfail")
                    reply = TEMPFAIL_PACKET if kind in (mod.EV_RCPT, mod.EV_EOM) else b""
                    if kind != mod.EV_RCPT:
                        self._drop()
        except MemoryError:
            log.error("milter connection dropped: out of memory (the MTA tempfails and retries)")
        finally:
            self._drop()
            self.sock.close()

    def _drop(self) -> None:
        if self.txn is not None:
            self.txn.close()
        self.txn = None

    def on_event(self, mod: ModuleType, session: object, event: tuple) -> bytes:
        kind = event[0]
        if kind == mod.EV_RCPT:
            return self.on_rcpt(session, event[1], event[2], event[3])
        if kind == mod.EV_DATA:
            self.on_data(event[1], event[2])
            return b""
        if kind == mod.EV_EOM:
            return self.on_eom(session, *event[1:])
        if kind == mod.EV_ABORT:
            self._drop()
            return b""
        raise ValueError(f"unknown event {kind!r}")

    def on_rcpt(self, session: object, new_message: bool, mail: tuple[str, ...], rcpt: tuple[str, ...]) -> bytes:
        if new_message or self.txn is None:
            self._drop()
            self.txn = Transaction(self.service, mail[0] if mail else "")
        given = bare(rcpt[0] if rcpt else "")
        refused = check_recipient(self.service, self.txn.sender, given, *_peer(session))
        if refused is not None:
            return pack(refused)
        self.txn.add_recipient(given)
        return CONTINUE_PACKET

    def on_data(self, headers: list[tuple[str, bytes, int, int]], data: bytes) -> None:
        txn = self.txn
        if txn is None:  # headers without a recipient taken: nothing to keep
            return
        txn.note_headers(headers, self.service.cfg.max_message_bytes)
        if data:
            txn.write(data)

    def on_eom(self, session: object, headers: list[tuple[str, bytes, int, int]], data: bytes, size: int,
               oversize: bool, mailed: bool) -> bytes:
        txn = self.txn
        if txn is None or not mailed:  # no MAIL FROM (or no recipient) seen: nothing to decide about
            return TEMPFAIL_PACKET
        self.on_data(headers, data)
        txn.size = size
        txn.oversize = oversize
        env = Envelope(txn.sender, tuple(txn.recipients), *_peer(session))
        answer = txn.conclude(env)
        self._drop()
        return pack(answer)


def _set_timeouts(sock: socket.socket, timeval: bytes) -> None:
    """A Session blocks in read and write: bound both (the MTA's side has its own timeouts)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class ConnectionThreads:
    """Threads that each serve one connection at a time with ``handle``, reused: a new connection
    goes to a thread left idle by an earlier one, or to a new thread (never waits behind another)."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.handle = handle
        self.queue: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.idle = 0  # threads done with a connection and not yet given another
        self.threads: list[threading.Thread] = []

    def serve(self, sock: socket.socket) -> None:
        with self.lock:
            reserved = self.idle > 0
            if reserved:
                self.idle -= 1
        if not reserved:
            thread = threading.Thread(target=self._loop, name="milter-conn", daemon=True)
            self.threads.append(thread)
            thread.start()
        self.queue.put(sock)

    def _loop(self) -> None:
        while (sock := self.queue.get()) is not None:
            try:
                self.handle(sock)
            except Exception:  # this thread must stay to serve the next connection
                log.exception("milter connection failed")
                sock.close()
            with self.lock:
                self.idle += 1

    def close(self) -> None:
        """Let every thread end once its connection is over, and wait for them."""
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()


STOP_CHECK_SECONDS = 5  # a safety net only: a stop signal wakes the accepting thread at once


def serve_worker(listener: socket.socket, service: Service) -> None:
    """Accept on ``listener`` (shared with the other workers) until SIGTERM, then wait for the
    connections in progress to end.

    The thread waits in ``epoll`` on the socket, registered exclusive (the kernel wakes one
    waiting worker per connection, as a blocking accept() would), and on the signal wake-up
    pipe, so a stop is seen at once instead of at the next connection.  The socket is
    non-blocking: a worker woken with the connection taken by another goes back to waiting
    (Linux does not pass O_NONBLOCK on to the accepted socket, which the C engine reads
    blocking).  A connection once accepted is always served."""
    stopping = False

    def on_stop(_signum: int, _frame: object) -> None:
        # Only a flag: a handler can be run again inside itself (a kill to the process group and
        # the supervisor's own SIGTERM both come), and one that took a lock (Event.set) would
        # then wait for itself forever.
        nonlocal stopping
        stopping = True

    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    listener.setblocking(False)  # open_listener made it so already; a listener from elsewhere too
    poller = select.epoll()
    listening = listener.fileno()
    poller.register(listening, select.EPOLLIN | select.EPOLLEXCLUSIVE)
    poller.register(wake_read, select.EPOLLIN)
    threads = ConnectionThreads(lambda sock: Connection(service, sock).run())
    tcp = listener.family in (socket.AF_INET, socket.AF_INET6)
    timeval = struct.pack("ll", service.cfg.milter_timeout, 0)
    while not stopping:
        ready = {fd for fd, _mask in poller.poll(STOP_CHECK_SECONDS)}
        if wake_read in ready:  # a signal came (its handler sets ``stopping``)
            _drain(wake_read)
        if stopping or listening not in ready:
            continue
        try:
            sock, _addr = listener.accept()
        except BlockingIOError:  # another worker took it
            continue
        except OSError as exc:  # out of descriptors, say: wait, the MTA retries or queues
            log.error("milter accept: %s", exc)
            time.sleep(0.1)
            continue
        if tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _set_timeouts(sock, timeval)
        threads.serve(sock)
    signal.set_wakeup_fd(-1)
    poller.close()
    threads.close()


def _drain(fd: int) -> None:
    """Empty the signal wake-up pipe (non-blocking)."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def open_listener(spec: str, backlog: int) -> socket.socket:
    """The listening socket of ``spec`` (``unix:/path``, ``inet:port[@host]``, ``inet6:...``);
    a stale unix socket file is replaced."""
    if spec.startswith("unix:"):
        path = spec[5:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock.bind(path)
    else:
        kind, _, rest = spec.partition(":")
        port, _, host = rest.partition("@")
        family = socket.AF_INET6 if kind == "inet6" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        anywhere = "::" if family == socket.AF_INET6 else "0.0.0.0"  # libmilter's inet:PORT without a host
        sock.bind((host.strip("[]") or anywhere, int(port)))
    sock.listen(backlog)
    sock.setblocking(False)  # before the workers are forked: each waits in epoll, see serve_worker
    return sock
