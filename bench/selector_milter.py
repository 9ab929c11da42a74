#!/usr/bin/env python3
"""An experiment: the Stronghold milter without libmilter's thread per connection.

    python -m bench.selector_milter --config stronghold.toml

Speaks the milter protocol itself (version 6: length-prefixed packets) in one
thread per worker process with a selector, and drives the product's own
``StrongholdMilter`` and ``Service`` through a context object with the methods
pymilter's ``milterContext`` has (addheader, chgheader, delrcpt, setreply,
getsymval).  Under pymilter every callback takes the GIL from a libmilter
thread (~30 per message, ~240 futex calls per message measured with strace at
concurrency 16); here a worker reads many packets per ``recv`` and never hands
the GIL between connection threads.  Not a product: no TCP, no stop timeout,
a blocking end of message holds up the worker's other connections.  It exists
so that ``python -m bench.ab --before CHECKOUT --b-engine selector`` can
measure what leaving libmilter would save, with everything else the same.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import Milter

from stronghold import config as config_mod
from stronghold import logfmt
from stronghold.milter import FLAGS, StrongholdMilter
from stronghold.service import Service
from tests.harness.milterproc import MilterProcess

log = logging.getLogger(__name__)
VERSION = 6
_LEN = struct.Struct(">I")
_REPLY = {Milter.CONTINUE: b"c", Milter.REJECT: b"r", Milter.TEMPFAIL: b"t", Milter.ACCEPT: b"a",
          Milter.DISCARD: b"d"}


def _packet(cmd: bytes, data: bytes = b"") -> bytes:
    return _LEN.pack(len(data) + 1) + cmd + data


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _enc(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


class Connection:
    """One MTA connection: its buffer, macros, pending reply text and its milter object."""

    def __init__(self, sock: socket.socket, service: Service) -> None:
        self.service = service
        self.sock = sock
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.macros: dict[str, str] = {}
        self.reply: bytes | None = None
        self.protocol = 0
        self.milter = self._new_milter()

    def _new_milter(self) -> StrongholdMilter:
        m = StrongholdMilter(self.service)
        m._setctx(self)
        m._actions = FLAGS
        m._protocol = getattr(self, "protocol", 0)
        return m

    # -- what Milter.Base calls on its context --------------------------------------
    def setpriv(self, priv: object) -> None:
        pass

    def getsymval(self, name: str) -> str | None:
        value = self.macros.get(name)
        if value is None and len(name) == 1:
            value = self.macros.get("{" + name + "}")
        return value

    def setreply(self, rcode: str, xcode: str | None, msg: str | None, *more: str) -> None:
        self.reply = _enc(" ".join(part for part in (rcode, xcode, msg, *more) if part))

    def addheader(self, field: str, value: str, idx: int) -> None:
        if idx < 0:
            self.out.append(_packet(b"h", _enc(field) + b"\0" + _enc(value) + b"\0"))
        else:
            self.out.append(_packet(b"i", _LEN.pack(idx) + _enc(field) + b"\0" + _enc(value) + b"\0"))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        self.out.append(_packet(b"m", _LEN.pack(idx) + _enc(field) + b"\0" + _enc(value) + b"\0"))

    def delrcpt(self, rcpt: str) -> None:
        self.out.append(_packet(b"-", _enc(rcpt) + b"\0"))

    # -- the protocol ---------------------------------------------------------------
    def feed(self, data: bytes) -> bool:
        """Take bytes from the MTA, run every whole packet; False once the MTA said QUIT."""
        self.buf += data
        buf = self.buf
        while len(buf) >= 4:
            (length,) = _LEN.unpack_from(buf)
            if len(buf) < 4 + length:
                break
            cmd, body = bytes(buf[4:5]), bytes(buf[5:4 + length])
            del buf[:4 + length]
            if not self.command(cmd, body):
                return False
        return True

    def flush(self) -> None:
        if self.out:
            self.sock.sendall(b"".join(self.out))
            self.out.clear()

    def command(self, cmd: bytes, data: bytes) -> bool:
        m = self.milter
        try:
            if cmd == b"O":
                _version, _actions, offered = struct.unpack(">III", data[:12])
                self.protocol = m._protocol = offered & ~StrongholdMilter.protocol_mask()
                self.out.append(_packet(b"O", struct.pack(">III", VERSION, FLAGS, self.protocol)))
                return True
            if cmd == b"D":
                fields = data[1:].split(b"\0")
                for i in range(0, len(fields) - 1, 2):
                    self.macros[_text(fields[i])] = _text(fields[i + 1])
                return True
            if cmd == b"C":
                host, _, rest = data.partition(b"\0")
                family = rest[:1]
                if family in (b"4", b"6"):
                    (port,) = struct.unpack(">H", rest[1:3])
                    addr: Any = (_text(rest[3:].rstrip(b"\0")), port)
                else:
                    addr = _text(rest[3:].rstrip(b"\0"))
                rc = m.connect(_text(host), socket.AF_INET6 if family == b"6" else socket.AF_INET, addr)
            elif cmd == b"H":
                rc = m.hello(_text(data.rstrip(b"\0")))
            elif cmd == b"M":
                rc = m.envfrom(*(_text(a) for a in data.rstrip(b"\0").split(b"\0")))
            elif cmd == b"R":
                rc = m.envrcpt(*(_text(a) for a in data.rstrip(b"\0").split(b"\0")))
            elif cmd == b"T":
                rc = m.data()
            elif cmd == b"L":
                name, _, value = data.partition(b"\0")
                rc = m.header_bytes(_text(name), value[:-1] if value.endswith(b"\0") else value)
            elif cmd == b"N":
                rc = m.eoh()
            elif cmd == b"B":
                rc = m.body(data)
            elif cmd == b"E":
                if data:
                    m.body(data)
                rc = m.eom()
            elif cmd == b"A":
                m.abort()
                self.macros.clear()
                return True
            elif cmd == b"Q":
                m.close()
                return False
            elif cmd == b"K":
                m.close()
                self.macros.clear()
                self.milter = self._new_milter()
                return True
            else:
                rc = Milter.CONTINUE
        except Exception:
            log.exception("callback %r failed", cmd)
            rc = Milter.TEMPFAIL
        if rc == Milter.NOREPLY:
            return True
        if rc in (Milter.REJECT, Milter.TEMPFAIL) and self.reply is not None:
            self.out.append(_packet(b"y", self.reply + b"\0"))
        else:
            self.out.append(_packet(_REPLY.get(rc, b"t")))
        self.reply = None
        return True


def serve_worker(listener: socket.socket, service: Service) -> None:
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        for key, _ in sel.select(1.0):
            if key.data is None:
                try:
                    sock, _addr = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(True)
                sel.register(sock, selectors.EVENT_READ, Connection(sock, service))
                continue
            conn: Connection = key.data
            try:
                data = conn.sock.recv(262144)
            except OSError:
                data = b""
            alive = bool(data) and conn.feed(data)
            try:
                conn.flush()
            except OSError:
                alive = False
            if not alive:
                sel.unregister(conn.sock)
                conn.sock.close()
                conn.milter._reset()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    cfg = config_mod.load(args.config)
    logfmt.configure(cfg.log_format)
    path = cfg.milter_socket[5:]
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o666)  # noqa: S103 - the benchmark's private folder
    listener.listen(1024)
    listener.setblocking(False)
    service = Service(cfg)
    service.model()
    service.store.engine.dispose()
    children = []
    for slot in range(1, cfg.milter_workers + 1):
        pid = os.fork()
        if pid == 0:
            logfmt.set_worker(f"w{slot}")
            service.store.engine.dispose(close=False)
            serve_worker(listener, service)
            service.db.drain()
            os._exit(0)
        children.append(pid)

    def on_term(_signum: int, _frame: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    print(f"selector milter: listening on {path} ({len(children)} workers)", flush=True)
    for _ in children:
        try:
            os.wait()
        except ChildProcessError:
            break
    return 0


class SelectorMilterProcess(MilterProcess):
    """MilterProcess running this module instead of ``stronghold milter``."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.selector_milter", "--config", str(self.config)]


if __name__ == "__main__":
    sys.exit(main())
