"""Private Postfix and clamd instances on loopback, for `make run`, tests and benchmarks.

Each instance lives in its own folder (config, queue, logs, sockets) and is
started and stopped without touching the system's services.  Readiness is
probed (socket answers), never assumed after a sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_SIGNATURES = ROOT / "tests" / "clamav"
SYSTEM_SIGNATURES = Path("/var/lib/clamav")


class StackError(Exception):
    """A local service could not be started or stopped (one-line message)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(probe, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise StackError(f"{what} not ready after {timeout:.0f}s")


def _unix_connects(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(str(path))
        return True
    except OSError:
        return False


def _tcp_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).startswith(b"220")
    except OSError:
        return False


def signature_dir() -> tuple[Path, str]:
    """The system's ClamAV signatures when present, else the project's test set."""
    if SYSTEM_SIGNATURES.is_dir() and any(SYSTEM_SIGNATURES.glob("*.c[lv]d")):
        return SYSTEM_SIGNATURES, "system signatures"
    return TEST_SIGNATURES, "the project's test signatures (no official ones installed)"


def memory_fs() -> Path | None:
    """A writable memory file system (/dev/shm), if the machine has one."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def memory_tmpdir(prefix: str, fallback: Path) -> Path:
    """A private folder on a memory file system when there is one, else ``fallback``."""
    shm = memory_fs()
    if shm is not None:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=shm))
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


@dataclass
class Clamd:
    """clamd in the foreground on a private unix socket.

    Its TemporaryDirectory is on a memory file system: clamd writes every
    message it scans into temporary files (MIME parts, normalised HTML): a
    third less clamd CPU than on disk, and no disk writes (docs/operations.md).
    """

    home: Path
    database: Path = TEST_SIGNATURES
    proc: subprocess.Popen[bytes] | None = None
    tcp_port: int | None = None  # also listen on 127.0.0.1:tcp_port
    tmpdir: Path | None = None  # None: a private one on /dev/shm, removed at stop
    _own_tmpdir: bool = field(default=False, init=False, repr=False)

    @property
    def tcp_address(self) -> str:
        return f"tcp:127.0.0.1:{self.tcp_port}"

    @property
    def socket_path(self) -> Path:
        return self.home / "clamd.sock"

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    def start(self, timeout: float = 120) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        conf = self.home / "clamd.conf"
        if self.tmpdir is None:
            self.tmpdir = memory_tmpdir("stronghold-clamd-", self.home / "tmp")
            self._own_tmpdir = True
        conf.write_text(
            f"LocalSocket {self.socket_path}\nDatabaseDirectory {self.database}\n"
            f"TemporaryDirectory {self.tmpdir}\n"
            f"Foreground yes\nLogFile {self.home / 'clamd.log'}\nLogTime yes\n"
            "StreamMaxLength 30M\nMaxThreads 8\nSelfCheck 0\n"
            + (f"TCPSocket {self.tcp_port}\nTCPAddr 127.0.0.1\n" if self.tcp_port else "")
            + ("User root\n" if os.geteuid() == 0 else ""))
        if self.socket_path.exists():
            self.socket_path.unlink()
        binary = shutil.which("clamd") or "/usr/sbin/clamd"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: self.proc.poll() is None and _unix_connects(self.socket_path),
                 timeout, f"clamd ({self.home / 'clamd.log'})")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self._own_tmpdir and self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir, self._own_tmpdir = None, False


_EXITED = ("Z", "X")  # /proc states of a process that has exited: zombie, dead


def _stat(path: Path) -> list[str] | None:
    """The fields of a ``/proc/PID/stat`` after the command name (state, parent, group, ...);
    None once the process is gone."""
    try:
        return path.read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def processes() -> Iterator[tuple[int, list[str]]]:
    """Every process there is now: its pid and its ``/proc`` stat fields (see ``_stat``)."""
    for path in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(path)
        if fields is not None:
            yield int(path.parent.name), fields


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited.  An exited process that its parent
    has not reaped yet counts as gone: Postfix's master is a daemon, the child of PID 1, and
    some PID 1s (containers') reap a second or two late, where ``kill(pid, 0)`` still succeeds."""
    fields = _stat(Path(f"/proc/{pid}/stat"))
    return fields is not None and fields[0] not in _EXITED


def group_running(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` has not exited (zombies count as gone, as
    in ``pid_running``)."""
    return any(int(fields[2]) == pgid and fields[0] not in _EXITED for _pid, fields in processes())



def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_MASTER_CF = """\
{listen} inet n - {chroot} - - smtpd
{release} inet n - n - - smtpd
  -o syslog_name=postfix/release
  -o smtpd_milters= -o non_smtpd_milters=
  -o smtpd_client_restrictions=permit_mynetworks,reject
  -o smtpd_relay_restrictions=permit_mynetworks,reject
pickup unix n - n 60 1 pickup
cleanup unix n - {chroot} - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
tlsmgr unix - - n 1000? 1 tlsmgr
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
lmtp unix - - n - - lmtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
local unix - n n - - local
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


@dataclass
class Postfix:
    """A private Postfix: smtpd on 127.0.0.1:port (with the milter), relaying or delivering.

    Where mail goes: ``relay`` ("127.0.0.1:PORT") sends every message there by
    SMTP (the tests' sink); ``lmtp`` ("unix:/PATH" or "inet:HOST:PORT") delivers
    mail for ``maildir_domains`` over LMTP (to Dovecot), accepting only the
    addresses in ``mailboxes`` when given; otherwise mail for ``maildir_domains``
    goes into ``home/mail/catchall/``.

    A second smtpd on 127.0.0.1:``release_port`` has no milter: what the
    quarantine releases (and digests) is injected there, never filtered again.
    Only loopback clients may use it.
    """

    home: Path
    port: int
    milter: str | None = None
    relay: str | None = None
    maildir_domains: tuple[str, ...] = ("example.com", "example.net")
    extra: Mapping[str, str] = field(default_factory=dict)
    lmtp: str | None = None
    mailboxes: tuple[str, ...] = ()
    release_port: int = field(default_factory=free_port)
    queue_dir: Path | None = None  # default home/queue; the milter socket may live inside it
    chroot: bool = False  # smtpd and cleanup chrooted into queue_dir, as Debian's master.cf has them

    @property
    def queue_directory(self) -> Path:
        return self.queue_dir or self.home / "queue"

    def _main_cf(self) -> str:
        h = self.home
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_directory),
            "data_directory": str(h / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "stronghold.test",
            "mydomain": "stronghold.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "maillog_file": str(h / "maillog"),
            "maillog_file_prefixes": str(h),
            "in_flow_delay": "0",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "default_process_limit": "100",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "message_size_limit": str(60 * 1024 * 1024),
            "virtual_mailbox_limit": str(100 * 1024 * 1024),
            "biff": "no",
            "smtputf8_enable": "no",
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
            "milter_connect_timeout": "10s",
            "milter_content_timeout": "120s",
            "smtpd_milters": self.milter or "",
            # A queue id from MAIL FROM on, so the milter's RCPT-stage lines and Postfix's own
            # "milter-reject: RCPT" lines carry it (by default Postfix opens the queue file only
            # after the first accepted recipient, and a first refused one is logged NOQUEUE).
            "smtpd_delay_open_until_valid_rcpt": "no",
            "milter_rcpt_macros": "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
            "alias_maps": "",
            "alias_database": "",
            "non_smtpd_milters": "",
            "shlib_directory": "/usr/lib/postfix",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "meta_directory": "/etc/postfix",
        }
        if self.relay:
            settings.update({"relay_domains": "", "relayhost": f"[{self.relay.rsplit(':', 1)[0]}]:"
                             f"{self.relay.rsplit(':', 1)[1]}", "smtpd_relay_restrictions":
                             "permit_mynetworks, reject", "default_transport": "smtp",
                             "relay_transport": "smtp"})
        elif self.lmtp:
            accepted = [a.lower() for a in self.mailboxes] or [f"@{d}" for d in self.maildir_domains]
            settings.update({
                "virtual_mailbox_domains": " ".join(self.maildir_domains),
                "virtual_mailbox_maps": "inline:{" + ", ".join(f"{a}=lmtp" for a in accepted) + "}",
                "virtual_transport": f"lmtp:{self.lmtp}",
            })
        else:
            settings.update({
                "virtual_mailbox_domains": " ".join(self.maildir_domains),
                "virtual_mailbox_base": str(h / "mail"),
                "virtual_mailbox_maps": "inline:{" + ", ".join(
                    f"@{d}=catchall/" for d in self.maildir_domains) + "}",
                "virtual_uid_maps": f"static:{_postfix_uid()}",
                "virtual_gid_maps": f"static:{_postfix_gid()}",
                "virtual_minimum_uid": "1",
            })
        settings.update(self.extra)
        return "".join(f"{k} = {v}\n" for k, v in settings.items())

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["postfix", "-c", str(self.home), *args], capture_output=True, text=True,
                             check=False)
        if check and out.returncode != 0:
            raise StackError(f"postfix {' '.join(args)}: {(out.stderr or out.stdout).strip()[:400]}")
        return out

    def start(self, timeout: float = 30) -> None:
        for folder in (self.queue_directory, self.home / "data", self.home / "mail"):
            folder.mkdir(parents=True, exist_ok=True)
        os.chown(self.home / "data", _postfix_uid(), _postfix_gid())
        os.chown(self.home / "mail", _postfix_uid(), _postfix_gid())
        (self.home / "main.cf").write_text(self._main_cf())
        (self.home / "master.cf").write_text(_MASTER_CF.format(
            listen=f"127.0.0.1:{self.port}", release=f"127.0.0.1:{self.release_port}",
            chroot="y" if self.chroot else "n"))
        # Postfix reads a configuration file changed within the last second again and again,
        # 300 ms apart, until it is a second old (it could be half written): ~2 s per start.
        # Ours is written whole, so it is dated a minute back.
        written = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.home / name, (written, written))
        self._postfix("set-permissions", check=False)
        self._postfix("check")
        self._postfix("start")
        wait_for(lambda: _tcp_banner(self.port) and _tcp_banner(self.release_port), timeout,
                 f"postfix on ports {self.port} and {self.release_port}")

    def stop(self) -> None:
        self._postfix("stop", check=False)
        pid_file = self.queue_directory / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().split()[0])
            except (ValueError, IndexError, FileNotFoundError):
                break
            if not (pid_running(pid) or group_running(pid)):  # the master and its children (its group)
                break
            time.sleep(0.05)

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.home), "-f"], capture_output=True, check=False)

    def queue(self) -> list[dict[str, object]]:
        out = subprocess.run(["postqueue", "-c", str(self.home), "-j"], capture_output=True, text=True,
                             check=False)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def log(self) -> str:
        try:
            return (self.home / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def maildir_messages(self) -> list[Path]:
        base = self.home / "mail" / "catchall"
        return sorted(p for sub in ("new", "cur") for p in (base / sub).glob("*") if p.is_file())


def _postfix_uid() -> int:
    import pwd
    return pwd.getpwnam("postfix").pw_uid


def _postfix_gid() -> int:
    import pwd
    return pwd.getpwnam("postfix").pw_gid
