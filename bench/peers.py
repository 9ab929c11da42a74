"""Peers for the throughput benchmark: rspamd 3 (Debian's package) as a milter, in two
configurations, and a no-op pymilter milter, the floor of any pymilter filter.

A private instance: the stock /etc/rspamd config with our own LOCAL_CONFDIR,
DBDIR, RUNDIR and LOGDIR (rspamd's --var), a proxy worker in milter mode on a
unix socket, every worker on a private socket, network checks (DNS lists, SPF,
DKIM, DMARC, fuzzy, ...) off: what runs with no network.

- local rules only (the strict peer): Redis-backed modules (Bayes among them) off too;
- the fair peer (``full=True``): also the work Stronghold does, i.e. the
  ``antivirus`` module on the benchmark's clamd (whole message, reject, no result
  cache) and Bayes on a private Redis, trained on the same training split
  (corpus/data/index.train) through the controller, which is then switched off
  so both instances run the same workers.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devtools.localstack import StackError, _unix_connects, free_port, stop_process, wait_for

log = logging.getLogger(__name__)

# Modules that need DNS, other hosts or Redis; everything local (regexp rules, MIME and header checks,
# mailing-list heuristics, hfilter, once_received, ...) stays on; phishing is off (it looks up DNS).
OFF = ("rbl", "surbl", "fuzzy_check", "dkim", "dmarc", "spf", "asn", "phishing", "multimap", "dkim_signing", "arc",
       "greylist", "ratelimit", "replies", "neural", "reputation", "history_redis", "url_redirector", "dcc",
       "mx_check", "emails", "whitelist", "classifier-bayes", "redis")
REDIS_MODULES = ("classifier-bayes", "redis")  # on again in the fair peer
MIN_LEARNS = 200  # rspamd's Bayes does nothing below this many learns of each class


class Redis:
    """A private redis-server on a loopback port, in memory only."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed (apt-get install redis-server, or make bench-peers)")
        self.home.mkdir(parents=True, exist_ok=True)
        log_file = open(self.home / "redis.out", "ab")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.home), "--daemonize", "no"],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        wait_for(lambda: self.proc.poll() is None and self._pong(), timeout, "redis-server")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class Rspamd:
    """rspamd as a milter; ``full`` adds antivirus on ``clamd_socket`` and Bayes on a private
    Redis trained on ``train_index`` (both required then)."""

    def __init__(self, home: Path, full: bool = False, clamd_socket: Path | None = None,
                 train_index: Path | None = None) -> None:
        if full and (clamd_socket is None or train_index is None):
            raise ValueError("the full rspamd peer needs clamd_socket and train_index")
        self.home = home
        self.full = full
        self.clamd_socket = clamd_socket
        self.train_index = train_index
        self.proc: subprocess.Popen[bytes] | None = None
        self.redis: Redis | None = None
        self.learned: dict[str, int] = {}

    @property
    def address(self) -> str:
        return f"unix:{self.home / 'run' / 'milter.sock'}"

    def start(self, timeout: float = 300) -> None:
        if shutil.which("rspamd") is None:
            raise StackError("rspamd is not installed (apt-get install rspamd, or make bench-peers)")
        local = self.home / "local"
        for sub in ("local/local.d", "local/override.d", "db", "run", "log"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (local / "override.d" / "worker-proxy.inc").write_text(
            f'bind_socket = "{self.home / "run" / "milter.sock"} mode=0666";\nmilter = yes;\ncount = 1;\n'
            'timeout = 120s;\nupstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n')
        # the normal worker's default localhost:11333 would clash with a second instance
        (local / "override.d" / "worker-normal.inc").write_text(
            f'bind_socket = "{self.home / "run" / "normal.sock"} mode=0600";\ncount = 1;\n')
        (local / "local.d" / "options.inc").write_text(
            'dns {\n  nameserver = ["127.0.0.1:1"];\n  timeout = 0.2s;\n  retransmits = 0;\n}\n'
            'local_addrs = "127.0.0.0/8";\n')
        for module in OFF:
            if not (self.full and module in REDIS_MODULES):
                (local / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
        if self.full:
            assert self.clamd_socket is not None and self.train_index is not None
            self.redis = Redis(self.home / "redis")
            self.redis.start()
            (local / "local.d" / "redis.conf").write_text(f'servers = "127.0.0.1:{self.redis.port}";\n')
            (local / "local.d" / "classifier-bayes.conf").write_text(
                f'backend = "redis";\nmin_learns = {MIN_LEARNS};\n')
            # whole message, like Stronghold; no_cache: with Redis on, rspamd caches antivirus
            # results by digest for an hour and a benchmark resending messages would measure that
            (local / "local.d" / "antivirus.conf").write_text(
                'clamav {\n  type = "clamav";\n  action = "reject";\n  scan_mime_parts = false;\n'
                f'  no_cache = true;\n  servers = "{self.clamd_socket}";\n  symbol = "CLAM_VIRUS";\n'
                '  log_clean = false;\n}\n')
            port = free_port()
            (local / "override.d" / "worker-controller.inc").write_text(
                f'bind_socket = "127.0.0.1:{port}";\nsecure_ip = "127.0.0.1";\ncount = 1;\n')
            self._launch(timeout)
            try:
                self._train(port, self.train_index)
            finally:
                stop_process(self.proc)
        (local / "override.d" / "worker-controller.inc").write_text("enabled = false;\n")
        self._launch(timeout)

    def _launch(self, timeout: float) -> None:
        binary = shutil.which("rspamd") or "rspamd"
        local = self.home / "local"
        (self.home / "run" / "milter.sock").unlink(missing_ok=True)
        log = open(self.home / "rspamd.out", "ab")
        self.proc = subprocess.Popen(
            [binary, "-f", "-i", "-u", "root", "-g", "root", "-c", "/etc/rspamd/rspamd.conf",
             "--var", f"LOCAL_CONFDIR={local}", "--var", f"DBDIR={self.home / 'db'}",
             "--var", f"RUNDIR={self.home / 'run'}", "--var", f"LOGDIR={self.home / 'log'}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self.proc.poll() is None and _unix_connects(self.home / "run" / "milter.sock"), timeout,
                 f"rspamd ({self.home / 'log' / 'rspamd.log'})")

    def _train(self, port: int, index: Path) -> None:
        """Every message of the training split to /learnham or /learnspam (mbox ``From `` line
        stripped); refuses to go on unless both classes reach ``MIN_LEARNS``."""
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _http_ok(f"{base}/ping"), 120, "rspamd controller")
        corpus = index.parent
        jobs = []
        for line in index.read_text().splitlines():
            label, _, name = line.partition(" ")
            if label in ("ham", "spam") and name:
                jobs.append((label, corpus / name))

        def learn(job: tuple[str, Path]) -> str:
            label, path = job
            raw = path.read_bytes()
            if raw.startswith(b"From ") and b"\n" in raw:
                raw = raw.split(b"\n", 1)[1]
            req = urllib.request.Request(f"{base}/learn{label}", data=raw, method="POST")  # noqa: S310
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback controller
                    return label if json.loads(resp.read() or b"{}").get("success") else f"{label}-skipped"
            except urllib.error.HTTPError:  # e.g. the stock learn_condition refusing one
                return f"{label}-skipped"

        with ThreadPoolExecutor(4) as pool:
            for outcome in pool.map(learn, jobs):
                self.learned[outcome] = self.learned.get(outcome, 0) + 1
        if self.learned.get("ham", 0) < MIN_LEARNS or self.learned.get("spam", 0) < MIN_LEARNS:
            raise StackError(f"rspamd Bayes under-trained ({self.learned}); see {self.home / 'log'}")
        print(f"rspamd Bayes trained on {index.name}: {self.learned}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def pids(self) -> list[int]:
        """rspamd's main process (the caller adds its group) and Redis, whose CPU is rspamd's too."""
        return [p.pid for p in (self.proc, self.redis.proc if self.redis else None) if p is not None]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


class NoopMilter:
    """bench/noop_milter.py in a process of its own (one process, as pymilter runs by default;
    ``native``: the product's C protocol engine, 2 workers as the product's; ``clamd``: with
    ``native``, every message scanned by that clamd, nothing else done)."""

    def __init__(self, home: Path, native: bool = False, clamd: str | None = None) -> None:
        self.home = home
        self.native = native
        self.clamd = clamd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.home / 'noop.sock'}"

    def start(self, timeout: float = 60) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "noop.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.noop_milter", self.address,
                                      *(["--native"] if self.native else []),
                                      *(["--clamd", self.clamd] if self.clamd else [])],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=Path(__file__).resolve().parent.parent)
        log.close()
        wait_for(lambda: self.proc.poll() is None and _unix_connects(self.home / "noop.sock"), timeout,
                 f"no-op milter ({self.home / 'noop.log'})")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
