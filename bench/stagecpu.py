"""Where the milter's CPU goes under load, stage by stage, measured in the real workers.

    python -m bench.stagecpu [--messages 3000] [--concurrency 32]

Starts clamd, the milter (2 workers, unix socket) and Postfix as ``bench.throughput``
does, but runs the milter through this module (``--serve``): before serving, it wraps
the milter's callbacks and the stages of end of message with the calling thread's CPU
clock (``time.thread_time``), so a stage counts only the CPU of the thread running it,
whatever the other connection threads do meanwhile.  Each worker writes its sums to a
file every 100 messages.  After a warm-up, one run of corpus mail; printed: each
stage's CPU per message (nested stages indented under the one that calls them), then
the workers' whole CPU per message from /proc (user and system), of which the rest is
libmilter, pymilter and the kernel outside our callbacks.

The clocks cost ~1 us per stage and message.  Compare stages within one run; the
machine's load moves every figure (see docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.throughput import TICKS, drive, group_pids, load_messages, start_filter
from devtools.localstack import Postfix, free_port
from tests.harness.milterproc import MilterProcess

# (label, module, attribute path, depth): depth indents the report; -1: a whole shown apart,
# not added to "our callbacks".  Rows of the engine not running read 0.
STAGES: tuple[tuple[str, str, str, int], ...] = (
    ("native engine: connection threads, whole (C protocol + our Python)", "stronghold.nativemilter",
     "Connection.run", -1),
    ("native: recipient", "stronghold.nativemilter", "Connection.on_rcpt", 0),
    ("native: end of message", "stronghold.nativemilter", "Connection.on_eom", 0),
    ("native: header batches (at end of message)", "stronghold.nativemilter", "Connection.on_data", 1),
    ("connect", "stronghold.milter", "StrongholdMilter.connect", 0),
    ("helo", "stronghold.milter", "StrongholdMilter.hello", 0),
    ("envfrom (spool)", "stronghold.milter", "StrongholdMilter.envfrom", 0),
    ("envrcpt (RCPT-time lists)", "stronghold.milter", "StrongholdMilter.envrcpt", 0),
    ("header (all of a message's)", "stronghold.milter", "StrongholdMilter.header", 0),
    ("eoh", "stronghold.milter", "StrongholdMilter.eoh", 0),
    ("body", "stronghold.milter", "StrongholdMilter.body", 0),
    ("eom", "stronghold.milter", "StrongholdMilter.eom", 0),
    ("the message's head read from the spool", "stronghold.spool", "Spool.head", 1),
    ("parse", "stronghold.transaction", "parse", 1),
    ("features", "stronghold.service", "features", 1),
    ("evaluate", "stronghold.service", "evaluate", 1),
    ("clamd: the message handed over", "stronghold.antivirus", "start", 1),
    ("clamd: its answer read (our side)", "stronghold.antivirus", "_Begun.scan", 2),
    ("clamd: a whole scan (where none was begun early)", "stronghold.antivirus", "ClamdScanner.scan", 2),
    ("Model.score", "stronghold.classifier", "Model.score", 2),
    ("sender authentication", "stronghold.authres", "Authenticator.check", 2),
    ("precedence + routing", "stronghold.engine", "decide", 2),
    ("hold (quarantine)", "stronghold.service", "Service.hold", 1),
    ("log line (format)", "stronghold.logfmt", "MessageLine.__str__", 1),
    ("record (message-log row)", "stronghold.service", "Service.record", 1),
    ("close", "stronghold.milter", "StrongholdMilter.close", 0),
)
DUMP_EVERY = 100
EOM_LABELS = ("eom", "native: end of message")  # one call per message, whichever engine runs

_threads: list[dict[str, float]] = []
_local = threading.local()
_eoms = [0]


def _sums() -> dict[str, float]:
    try:
        return _local.sums
    except AttributeError:
        _local.sums = {}
        _threads.append(_local.sums)
        return _local.sums


def _long_lived() -> dict[str, float]:
    """CPU seconds of this process's own long-lived threads (main: libmilter's listener; the
    store threads), by name; connection threads (libmilter's Dummy-N, the native engine's milter-conn) are not."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.name.startswith(("Dummy", "milter-conn")) or thread.native_id is None:
            continue
        tid = os.getpid() if thread is threading.main_thread() else thread.native_id  # stale after fork
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        name = thread.name.rsplit("_", 1)[0]  # store-write_0 -> store-write
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return out


def _dump(folder: Path) -> None:
    total: dict[str, float] = {}
    for sums in list(_threads):
        for key, value in list(sums.items()):
            total[key] = total.get(key, 0.0) + value
    path = folder / f"stagecpu-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"eom": _eoms[0], "cpu": total, "threads": _long_lived()}))
    tmp.replace(path)


def _timed(label: str, func: Callable[..., Any], folder: Path | None) -> Callable[..., Any]:
    @functools.wraps(func)  # keeps pymilter's markers (noreply, error_strategy)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return func(*args, **kwargs)
        finally:
            sums = _sums()
            sums[label] = sums.get(label, 0.0) + time.thread_time() - started
            if folder is not None:
                _eoms[0] += 1
                if _eoms[0] % DUMP_EVERY == 0:
                    _dump(folder)
    return wrapper


def install(folder: Path) -> None:
    """Wrap every stage of ``STAGES`` (in this process; forked workers inherit it)."""
    import importlib
    for label, module_name, path, _depth in STAGES:
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        setattr(owner, name, _timed(label, getattr(owner, name), folder if label in EOM_LABELS else None))


class StageCpuMilter(MilterProcess):
    """The product's milter, served through ``python -m bench.stagecpu --serve``."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.stagecpu", "--serve", str(self.home), "--config", str(self.config),
                "milter"]


def _read(folder: Path) -> tuple[int, dict[str, float], dict[str, float]]:
    eoms, cpu, threads = 0, {}, {}
    for path in folder.glob("stagecpu-*.json"):
        data = json.loads(path.read_text())
        eoms += data["eom"]
        for key, value in data["cpu"].items():
            cpu[key] = cpu.get(key, 0.0) + value
        for key, value in data.get("threads", {}).items():
            threads[key] = threads.get(key, 0.0) + value
    return eoms, cpu, threads


def proc_cpu(pids: list[int]) -> tuple[float, float]:
    user = system = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user += int(fields[11]) / TICKS
        system += int(fields[12]) / TICKS
    return user, system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="stronghold-stagecpu-"))
    os.chmod(home, 0o755)  # noqa: S103 - Postfix must reach the milter socket
    parts: list = []
    try:
        _clamd, milter, _settings = start_filter(home, parts, process=StageCpuMilter)
        postfix = Postfix(home / "postfix", free_port(), milter=milter.address)
        postfix.start()
        parts.append(postfix)
        messages = load_messages(args.messages)
        asyncio.run(drive(postfix.port, messages[:300], args.concurrency))  # warm-up
        folder = Path(milter.home)
        workers = [pid for pid in group_pids(milter.proc.pid) if pid != milter.proc.pid]
        eoms0, cpu0, threads0 = _read(folder)
        user0, sys0 = proc_cpu(workers)
        results, seconds = asyncio.run(drive(postfix.port, messages, args.concurrency))
        time.sleep(0.5)
        eoms1, cpu1, threads1 = _read(folder)
        user1, sys1 = proc_cpu(workers)
        n = eoms1 - eoms0
        sent = len(results)
        print(f"# Milter CPU by stage, in the workers' own threads (c={args.concurrency}, {sent} messages, "
              f"{sent / seconds:.0f} msg/s; stages over the {n} messages of the workers' last dumps)\n")
        print("| stage | CPU ms per message |\n|---|---|")
        callbacks = 0.0
        for label, _module, _path, depth in STAGES:
            value = (cpu1.get(label, 0.0) - cpu0.get(label, 0.0)) * 1000 / max(n, 1)
            if depth == 0:
                callbacks += value
            print(f"| {'&nbsp;' * 4 * max(depth, 0)}{label} | {value:.3f} |")
        user, system = (user1 - user0) * 1000 / sent, (sys1 - sys0) * 1000 / sent
        print(f"| **our callbacks together** | **{callbacks:.3f}** |")
        print(f"| workers' whole CPU (/proc): user {user:.3f} + system {system:.3f} | **{user + system:.3f}** |")
        print(f"| of which outside our callbacks (the protocol engine, kernel, store threads) | "
              f"{user + system - callbacks:.3f} |")
        own = 0.0
        for name in sorted(threads1):
            value = (threads1[name] - threads0.get(name, 0.0)) * 1000 / max(n, 1)
            own += value
            print(f"| &nbsp;&nbsp;&nbsp;&nbsp;thread {name} | {value:.3f} |")
        print(f"| &nbsp;&nbsp;&nbsp;&nbsp;connection threads outside our callbacks (the engine's C) | "
              f"{user + system - callbacks - own:.3f} |")
        return 0
    finally:
        for part in reversed(parts):
            part.stop()
        shutil.rmtree(home, ignore_errors=True)


def serve(argv: list[str]) -> int:
    """``--serve FOLDER ARGS...``: wrap the stages, then run ``stronghold ARGS...``."""
    install(Path(argv[0]))
    from stronghold.cli import main as cli_main
    return cli_main(argv[1:])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[2:]))
    sys.exit(main())
