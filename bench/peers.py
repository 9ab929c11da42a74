"""Peers for the throughput benchmark: rspamd 3 (Debian's package) as a milter, local rules only;
and a no-op pymilter milter, the floor of any pymilter filter.

A private instance: the stock /etc/rspamd config with our own LOCAL_CONFDIR,
DBDIR, RUNDIR and LOGDIR (rspamd's --var), a proxy worker in milter mode on a
unix socket, network checks (DNS lists, SPF, DKIM, DMARC, fuzzy, ...) and
Redis-backed modules (Bayes among them) off: what runs with no network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from stronghold.localstack import StackError, _unix_connects, stop_process, wait_for

# Modules that need DNS, other hosts or Redis; everything local (regexp rules, MIME and header checks,
# mailing-list heuristics, hfilter, once_received, ...) stays on; phishing is off (it looks up DNS).
OFF = ("rbl", "surbl", "fuzzy_check", "dkim", "dmarc", "spf", "asn", "phishing", "multimap", "dkim_signing", "arc",
       "greylist", "ratelimit", "replies", "neural", "reputation", "history_redis", "url_redirector", "dcc",
       "mx_check", "emails", "whitelist", "classifier-bayes", "redis")


class Rspamd:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.home / 'run' / 'milter.sock'}"

    def start(self, timeout: float = 300) -> None:
        binary = shutil.which("rspamd")
        if binary is None:
            raise StackError("rspamd is not installed (apt-get install rspamd, or make bench-peers)")
        local = self.home / "local"
        for sub in ("local/local.d", "local/override.d", "db", "run", "log"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (local / "override.d" / "worker-proxy.inc").write_text(
            f'bind_socket = "{self.home / "run" / "milter.sock"} mode=0666";\nmilter = yes;\ncount = 1;\n'
            'timeout = 120s;\nupstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n')
        (local / "override.d" / "worker-controller.inc").write_text("enabled = false;\n")
        (local / "local.d" / "options.inc").write_text(
            'dns {\n  nameserver = ["127.0.0.1:1"];\n  timeout = 0.2s;\n  retransmits = 0;\n}\n'
            'local_addrs = "127.0.0.0/8";\n')
        for module in OFF:
            (local / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
        log = open(self.home / "rspamd.out", "ab")
        self.proc = subprocess.Popen(
            [binary, "-f", "-i", "-u", "root", "-g", "root", "-c", "/etc/rspamd/rspamd.conf",
             "--var", f"LOCAL_CONFDIR={local}", "--var", f"DBDIR={self.home / 'db'}",
             "--var", f"RUNDIR={self.home / 'run'}", "--var", f"LOGDIR={self.home / 'log'}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self.proc.poll() is None and _unix_connects(self.home / "run" / "milter.sock"), timeout,
                 f"rspamd ({self.home / 'log' / 'rspamd.log'})")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class NoopMilter:
    """bench/noop_milter.py in a process of its own (one process, as pymilter runs by default)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.home / 'noop.sock'}"

    def start(self, timeout: float = 60) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "noop.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.noop_milter", self.address],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=Path(__file__).resolve().parent.parent)
        log.close()
        wait_for(lambda: self.proc.poll() is None and _unix_connects(self.home / "noop.sock"), timeout,
                 f"no-op milter ({self.home / 'noop.log'})")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
