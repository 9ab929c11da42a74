#!/usr/bin/env python3
"""CPU per message of two versions of the milter, A B B A ... in the same run.

    python -m bench.ab --before /path/to/other/checkout [--rounds 3] [--concurrency 32]

A is the milter from ``--before`` (a checkout of another commit: ``git worktree
add`` or ``git archive | tar -x``, with a model in its models/), B the one in
this tree; each behind its own Postfix, on the same clamd, settings, model and
corpus mix.  Reported per run: msg/s and the milter's process group + clamd
CPU per message (from /proc, so other work on a shared machine does not
count), split into the milter and clamd; then the mean of each side and the ratios B/A.  The machine is shared:
read the ratio, and run it more than once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.selector_milter import SelectorMilterProcess
from bench.throughput import LIST_ENTRIES, ROOT, load_messages, run_once, start_filter
from devtools.localstack import Postfix, free_port
from tests.harness.milterproc import MilterProcess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="source tree of version A")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--messages", type=int, default=1200)
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a milter setting for B only (repeatable), e.g. milter_workers=3")
    parser.add_argument("--postfix-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a main.cf setting for B's Postfix only (repeatable), e.g. milter_helo_macros=")
    parser.add_argument("--b-engine", choices=("product", "selector"), default="product",
                        help="B's milter: the product's (its milter_engine setting decides), or "
                             "bench.selector_milter's experiment")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs) and say where")
    args = parser.parse_args()
    before = args.before.resolve()
    if not (before / "stronghold" / "milter.py").exists() or not (before / "models" / "model.joblib").exists():
        print(f"{before}: not a source tree with a model", file=sys.stderr)
        return 1
    home = Path(tempfile.mkdtemp(prefix="stronghold-ab-"))
    os.chmod(home, 0o755)  # noqa: S103 - Postfix must reach the milter socket
    parts: list = []
    try:
        extra = {name: _value(value) for name, _, value in (item.partition("=") for item in args.setting)}
        engine = SelectorMilterProcess if args.b_engine == "selector" else MilterProcess
        clamd, milter_b, settings = start_filter(home, parts, extra=extra, process=engine)
        settings = {k: v for k, v in settings.items() if k not in extra}  # A keeps the defaults
        a_home = home / "a"
        (a_home / "milter").mkdir(parents=True)
        os.chmod(a_home, 0o755)  # noqa: S103
        os.chmod(a_home / "milter", 0o755)  # noqa: S103
        milter_a = MilterProcess(a_home, {**settings, "data_dir": str(a_home / "milter"),
                                          "models_dir": str(before / "models"),
                                          "milter_socket": f"unix:{a_home / 'milter' / 'milter.sock'}",
                                          "database_url": f"sqlite:///{a_home / 'store.db'}"},
                                 source=before)  # the child imports version A
        for owner, kind, pattern in LIST_ENTRIES:  # the same list entries, written by A's own code
            subprocess.run([sys.executable, "-m", "stronghold.cli", "--config", str(milter_a.config),
                            "list", "add", "--owner", owner, kind, pattern], cwd=before, check=True,
                           env={**os.environ, "PYTHONPATH": str(before)}, stdout=subprocess.DEVNULL)
        milter_a.start()
        parts.append(milter_a)
        check_version(milter_a, before)
        sides = []
        for label, milter in (("A", milter_a), ("B", milter_b)):
            extra_cf = dict(item.partition("=")[::2] for item in args.postfix_setting) if label == "B" else {}
            postfix = Postfix(home / f"postfix-{label}", free_port(), milter=milter.address, extra=extra_cf)
            postfix.start()
            parts.append(postfix)
            sides.append((label, postfix, milter))
        messages = load_messages(args.messages)
        for label, postfix, milter in sides:  # warm up: clamd's first few hundred scans cost more
            run_once(label, postfix, messages[:300], 8, milter, clamd)
        cpu: dict[str, list[float]] = {"A": [], "B": []}
        own: dict[str, list[float]] = {"A": [], "B": []}  # the milter's processes alone
        scan: dict[str, list[float]] = {"A": [], "B": []}  # clamd alone
        rate: dict[str, list[float]] = {"A": [], "B": []}
        for i in range(args.rounds):  # A B, then B A: neither side always goes first
            for label, postfix, milter in (sides if i % 2 == 0 else sides[::-1]):
                r = run_once(label, postfix, messages, args.concurrency, milter, clamd)
                assert r.cpu_ms_per_msg is not None and r.filter_cpu_ms is not None and r.clamd_cpu_ms is not None
                cpu[label].append(r.cpu_ms_per_msg)
                own[label].append(r.filter_cpu_ms)
                scan[label].append(r.clamd_cpu_ms)
                rate[label].append(r.rate)
                print(f"round {i + 1} {label}: {r.rate:6.1f} msg/s, milter+clamd {r.cpu_ms_per_msg:.3f} ms/msg "
                      f"(milter {r.filter_cpu_ms:.3f}, clamd {r.clamd_cpu_ms:.3f}; p99 {r.pct(0.99):.1f} ms; "
                      f"{r.accepted} accepted, {r.rejected} rejected, {r.deferred} deferred)", flush=True)
        b_side = f"{ROOT} {args.b_engine} {' '.join(args.setting + args.postfix_setting)}".strip()
        for label, tree in (("A", before), ("B", b_side)):
            print(f"{label} ({tree}): {statistics.mean(cpu[label]):.3f} ms/msg (milter "
                  f"{statistics.mean(own[label]):.3f}, clamd {statistics.mean(scan[label]):.3f}), "
                  f"{statistics.mean(rate[label]):.1f} msg/s")
        for what, values in (("CPU per message", cpu), ("milter CPU", own), ("clamd CPU", scan),
                             ("msg/s", rate)):
            a, b = statistics.mean(values["A"]), statistics.mean(values["B"])
            print(f"B/A {what} {b / a:.3f}; per round: "
                  + ", ".join(f"{y / x:.3f}" for x, y in zip(values["A"], values["B"], strict=True)))
        return 0
    finally:
        for part in reversed(parts):
            part.stop()
        if args.keep:
            print(f"logs kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


def check_version(milter: MilterProcess, tree: Path) -> None:
    """Refuse to measure unless the milter really runs ``tree``'s code (its working directory,
    first on ``python -m``'s sys.path): a run that silently measured this tree twice read
    as 'no difference' for every change."""
    assert milter.proc is not None
    cwd = Path(os.readlink(f"/proc/{milter.proc.pid}/cwd"))
    if cwd.resolve() != tree.resolve():
        raise SystemExit(f"milter A runs from {cwd}, not {tree}")


def _value(text: str) -> object:
    """A setting's value from the command line: an integer, a number, a boolean or text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


if __name__ == "__main__":
    sys.exit(main())
