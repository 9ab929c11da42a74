"""The native core against the Python code it stands in for, whole messages, process against process.

    python -m bench.native [--every 6] [--rounds 5] [--check-only]

Runs this tree twice over the corpus (``corpus/data``), in child processes: once as built
(the native core where ``stronghold._*`` modules exist) and once with ``STRONGHOLD_NATIVE=0``
(the Python code everywhere).  Each child

1. **identity** (all messages): hashes, message by message, what the classifier path
   makes of it: the parsed message (every field), its features (sorted) and the score
   (probability and log-odds as exact floats, the clues); the two children must agree
   on every message, whatever their hash seeds (they are given different ones);
2. **timing** (every ``--every``-th message, ``--rounds`` rounds, the two modes in turn):
   CPU microseconds per message of ``message.parse``, ``tokens.features`` and
   ``Model.score``, one message after the other as the milter runs them; then the
   milter's own callbacks (connect to end of message, a throwaway SQLite message log,
   clamd stood in by a scanner that reads the spool and finds nothing) driven in-process
   with the same messages, the whole process's CPU (its store threads included): what
   the native core saves a worker without libmilter, Postfix or clamd around it; and in the
   native child the native protocol engine's connection thread fed the same messages as
   packets over a socketpair (its own CPU clock: the C protocol and our Python).

Prints the medians, python/native ratios with the rounds' range, and which parts ran
natively.  Exits 1 if any message differs or the native child has no native part.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("parse", "features", "score")
MILTER = "milter callbacks"


def _digest(parsed: Any, features: set[str], score: Any) -> str:
    fields = dataclasses.asdict(parsed)
    seen = [fields, sorted(features), score.probability.hex(), float(score.log_odds).hex(),
            [(clue.token, clue.spam_prob.hex()) for clue in score.clues]]
    return hashlib.sha256(repr(seen).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def child(mode: str, every: int, check: bool) -> None:
    """One process's work; prints one JSON line."""
    from bench.stages import corpus_messages
    from stronghold import nativecore, tokens
    from stronghold.classifier import Model
    from stronghold.message import parse
    model = Model.load(ROOT / "models" / "model.joblib")
    result: dict[str, Any] = {"mode": mode, "status": nativecore.status(),
                              "native": [n for n in nativecore.PARTS if nativecore.load(n) is not None]}
    if check:
        digests = []
        for path in corpus_messages():
            parsed = parse(path.read_bytes())
            features = tokens.features(parsed)
            digests.append(f"{path.parent.name}/{path.name} {_digest(parsed, features, model.score(features))}")
        result["digests"] = digests
    else:
        raws = [p.read_bytes() for p in corpus_messages()[::every]]
        for raw in raws[:50]:  # warm
            model.score(tokens.features(parse(raw)))
        spent = [0, 0, 0]
        clock = time.process_time_ns
        for raw in raws:
            t0 = clock()
            parsed = parse(raw)
            t1 = clock()
            features = tokens.features(parsed)
            t2 = clock()
            model.score(features)
            t3 = clock()
            spent[0] += t1 - t0
            spent[1] += t2 - t1
            spent[2] += t3 - t2
        result["us"] = [ns / len(raws) / 1000 for ns in spent]
        result["messages"] = len(raws)
        result["milter_us"] = _milter_callbacks(raws)
        if nativecore.load("miltercore") is not None:
            result["engine_us"] = _native_engine(raws)
    print(json.dumps(result))


def _fields_and_body(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """A message as the MTA hands it to a milter: its header fields (name, raw value) and body."""
    import email.parser
    raw = raw.split(b"\n", 1)[1] if raw.startswith(b"From ") else raw
    head, _, body = raw.partition(b"\n\n")
    fields = email.parser.BytesHeaderParser().parsebytes(head + b"\n\n").raw_items()
    return [(k, v.encode("utf-8", "surrogateescape")) for k, v in fields], body


def _bench_service(home: str) -> tuple[Any, Any]:
    """A Service on a throwaway SQLite store in ``home``, clamd stood in by a scanner that reads
    the message and finds nothing; (service, store)."""
    from stronghold import config as config_mod
    from stronghold.antivirus import ScanResult
    from stronghold.service import Service
    from stronghold.store.db import Store

    class NothingFound:
        def scan(self, stream: Any) -> ScanResult:
            stream.read()
            return ScanResult(None)

    cfg = config_mod.load(None, {"data_dir": Path(home) / "data", "models_dir": ROOT / "models"}, environ={})
    cfg.data_dir.mkdir(parents=True)
    store = Store(cfg.db_url)
    store.upgrade()
    return Service(cfg, store=store, scanner=NothingFound()), store


def _milter_callbacks(raws: list[bytes]) -> float:
    """Process CPU µs per message of the milter's callbacks, fed in-process (see the module doc)."""
    import socket
    import tempfile

    from bench.selector_milter import Connection

    messages = [_fields_and_body(raw) for raw in raws]
    with tempfile.TemporaryDirectory() as home:
        service, store = _bench_service(home)
        conn = Connection(None, service)  # type: ignore[arg-type]  # replies are collected, never sent
        conn.macros.update({"i": "4XyZ1", "j": "mx.example"})

        def run() -> None:
            milter = conn.milter
            milter.connect("client.example", socket.AF_INET, ("192.0.2.7", 40000))
            milter.hello("client.example")
            for fields, body in messages:
                milter.envfrom("<sender@example.net>")
                milter.envrcpt("<user@example.com>")
                milter.data()
                for name, value in fields:
                    milter.header_bytes(name, value)
                milter.body(body)
                milter.eom()
                conn.out.clear()
            milter.close()
            conn.milter = conn._new_milter()
            service.db.drain(30)

        run()  # warm: model, lists, first rows
        start = time.process_time_ns()
        run()
        spent = time.process_time_ns() - start
        store.dispose()
    return spent / len(messages) / 1000


def _packet(cmd: bytes, data: bytes = b"") -> bytes:
    """A milter packet as the MTA sends it: length, command, data."""
    return (len(data) + 1).to_bytes(4, "big") + cmd + data


def _native_engine(raws: list[bytes]) -> float:
    """CPU µs per message of the native engine's connection thread (the C protocol and our
    Python at each recipient and end of message), the messages sent by an MTA thread over a
    socketpair, as Postfix sends them; SQLite log, scanner stood in as in ``_milter_callbacks``."""
    import socket
    import tempfile
    import threading

    from stronghold.nativemilter import Connection

    opening = [_packet(b"O", (6).to_bytes(4, "big") + (0x1FF).to_bytes(4, "big") + (0x1FFFFF).to_bytes(4, "big")),
               _packet(b"C", b"client.example\x004\x9c\x40192.0.2.7\0"), _packet(b"H", b"client.example\0")]
    messages = []
    for raw in raws:
        fields, body = _fields_and_body(raw)
        packets = [_packet(b"D", b"Mi\x004XyZ1\0"), _packet(b"M", b"<sender@example.net>\0"),
                   _packet(b"R", b"<user@example.com>\0"), _packet(b"T")]
        packets += [_packet(b"L", k.encode() + b"\0" + v + b"\0") for k, v in fields]
        packets += [_packet(b"B", body[i:i + 65535]) for i in range(0, max(len(body), 1), 65535)]
        messages.append(b"".join(packets) + _packet(b"E"))

    def mta(sock: socket.socket) -> None:
        sock.sendall(b"".join(opening))
        for message in messages:
            sock.sendall(message)
            buf = b""
            while True:  # up to the end-of-message answer (after recipient and DATA continues)
                while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                    buf += sock.recv(65536)
                size = int.from_bytes(buf[:4], "big")
                cmd, buf = buf[4:5], buf[4 + size:]
                if cmd in (b"a", b"r", b"t", b"d", b"y"):
                    break
        sock.sendall(_packet(b"Q"))

    with tempfile.TemporaryDirectory() as home:
        service, store = _bench_service(home)

        def run() -> int:
            theirs, ours = socket.socketpair()
            sender = threading.Thread(target=mta, args=(theirs,))
            sender.start()
            start = time.thread_time_ns()
            Connection(service, ours).run()
            spent = time.thread_time_ns() - start
            sender.join()
            theirs.close()
            service.db.drain(30)
            return spent

        run()  # warm
        spent = run()
        store.dispose()
    return spent / len(raws) / 1000


def _run(mode: str, every: int, check: bool, seed: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(ROOT)}
    env["STRONGHOLD_NATIVE"] = "1" if mode == "native" else "0"
    argv = [sys.executable, "-m", "bench.native", "--child", mode, "--every", str(every)]
    out = subprocess.run(argv + (["--check-only"] if check else []), env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=6, help="time every N-th corpus message")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check-only", action="store_true", help="only compare the two modes' results")
    parser.add_argument("--no-check", action="store_true", help="only time")
    parser.add_argument("--child", choices=("native", "python"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.every, args.check_only)
        return 0
    native_info = _run("native", 10_000_000, False, 1)
    print(native_info["status"])
    if not native_info["native"]:
        print("no native part is built: run 'make venv'")
        return 1
    differ = 0
    if not args.no_check:
        one, other = _run("native", 1, True, 7)["digests"], _run("python", 1, True, 99)["digests"]
        differ = sum(a != b for a, b in zip(one, other, strict=True))
        for a, b in zip(one, other, strict=True):
            if a != b and differ <= 10:
                print(f"  differs: {a.split()[0]}")
        print(f"identity: {len(one)} messages, {differ} differ (parsed message, features, score; "
              "hash seeds 7 and 99)")
    if args.check_only:
        return 1 if differ else 0
    spent: dict[str, list[list[float]]] = {"native": [], "python": []}
    engine: list[float] = []
    messages = 0
    for r in range(args.rounds):
        for mode in (("python", "native") if r % 2 == 0 else ("native", "python")):
            got = _run(mode, args.every, False, r + 1)
            spent[mode].append([*got["us"], got["milter_us"]])
            if "engine_us" in got:
                engine.append(got["engine_us"])
            messages = got["messages"]
    print(f"timing: {messages} messages (every {args.every}th), {args.rounds} rounds alternating, "
          "CPU µs per message, median of rounds")
    for i, stage in enumerate((*STAGES, "together", MILTER)):
        if stage == "together":
            def pick(row: list[float]) -> float:
                return sum(row[:len(STAGES)])
        else:
            def pick(row: list[float], i: int = i if stage != MILTER else len(STAGES)) -> float:
                return row[i]
        py = statistics.median(pick(row) for row in spent["python"])
        nat = statistics.median(pick(row) for row in spent["native"])
        ratios = [pick(p) / pick(n) for p, n in zip(spent["python"], spent["native"], strict=True)]
        print(f"  {stage:16} python {py:7.1f}  native {nat:7.1f}  python/native {statistics.median(ratios):.2f}"
              f" (rounds {min(ratios):.2f}-{max(ratios):.2f})")
    if engine:
        print(f"  native engine: its connection thread {statistics.median(engine):.1f} µs per message "
              f"(rounds {min(engine):.1f}-{max(engine):.1f}): the C protocol and our Python at each recipient "
              "and end of message")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
