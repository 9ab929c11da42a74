"""`python -m devtools.devstack start|stop`: the whole product on loopback, for `make run`.

clamd, the milter, Postfix on 127.0.0.1:2525 (delivering over LMTP to Dovecot,
whose Sieve files tagged spam into Junk), Dovecot's IMAP on 127.0.0.1:1143, the
Junk/Trash expiry job and the web UI on 127.0.0.1:8080, each in var/stack/<part>/
with its own log.

Environment variables move it (a second stack, or a test): DEVSTACK_HOME (the
folder, default var/stack), DEVSTACK_SMTP_PORT, DEVSTACK_RELEASE_PORT,
DEVSTACK_IMAP_PORT, DEVSTACK_WEB_PORT and DEVSTACK_MODELS_DIR (default models/).
``stop`` needs the same DEVSTACK_HOME as ``start``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devtools.localdovecot import Dovecot
from devtools.localstack import (
    ROOT,
    Clamd,
    Postfix,
    StackError,
    _unix_connects,
    group_running,
    memory_fs,
    pid_running,
    signature_dir,
    wait_for,
)
from stronghold import config as config_mod
from stronghold.store import accounts
from stronghold.store.db import Store

HOME = ROOT / "var" / "stack"
SMTP_PORT = 2525
RELEASE_PORT = 10026
IMAP_PORT = 1143
WEB_PORT = 8080
MAIL_USERS = ("m1@example.com", "m2@example.com", "m3@example.com", "postmaster@example.com")
EXPIRE_EVERY = 3600  # seconds between runs of `stronghold mailbox expire`
PARTS = ("web", "expiry", "milter", "dovecot", "clamd")  # stopped in this order


@dataclass(frozen=True)
class Layout:
    """Where the stack lives and listens (all on 127.0.0.1)."""

    home: Path = HOME
    smtp_port: int = SMTP_PORT
    release_port: int = RELEASE_PORT
    imap_port: int = IMAP_PORT
    web_port: int = WEB_PORT
    models_dir: Path = ROOT / "models"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Layout:
        """The defaults, moved by DEVSTACK_HOME, DEVSTACK_<PART>_PORT and DEVSTACK_MODELS_DIR."""
        def port(name: str, default: int) -> int:
            text = environ.get(f"DEVSTACK_{name}_PORT", "")
            if not text:
                return default
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise StackError(f"DEVSTACK_{name}_PORT={text!r} is not a port number")
            return int(text)

        return cls(home=Path(environ.get("DEVSTACK_HOME") or HOME).resolve(),
                   smtp_port=port("SMTP", SMTP_PORT), release_port=port("RELEASE", RELEASE_PORT),
                   imap_port=port("IMAP", IMAP_PORT), web_port=port("WEB", WEB_PORT),
                   models_dir=Path(environ.get("DEVSTACK_MODELS_DIR") or ROOT / "models").resolve())

    @property
    def web(self) -> str:
        return f"127.0.0.1:{self.web_port}"


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_running(pid) else None


def _spawn(home: Path, name: str, argv: list[str]) -> int:
    log = open(home / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("STRONGHOLD_")})
    log.close()
    (home / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _tcp_open(host: str, port: int) -> bool:
    import socket
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _first_admin(store: Store, home: Path) -> str | None:
    """Create 'admin' with a random password when there is no user yet; returns the password."""
    with store.session() as s:
        if accounts.all_users(s):
            return None
        password = secrets.token_urlsafe(12)
        user = accounts.add_user(s, "admin", password, admin=True)
        accounts.assign_address(s, user, "postmaster@example.com")
    path = home / "admin-password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def _mail_users(home: Path) -> dict[str, str]:
    """IMAP users and their passwords, kept across restarts in a 0600 file."""
    path = home / "mail-users.json"
    try:
        users: dict[str, str] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        users = {}
    users = {a: users.get(a) or secrets.token_urlsafe(12) for a in MAIL_USERS}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(users, fh, indent=1)
    return users


def start(layout: Layout) -> int:
    stop(layout, quiet=True)
    home = layout.home
    for sub in ("", "milter", "clamd", "dovecot"):
        (home / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(home / sub, 0o755)  # noqa: S103 - Postfix (another user) must reach the socket
    sigs, which = signature_dir()
    scratch = _clamd_tmpdir(home)
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    clamd = Clamd(home / "clamd", sigs, tmpdir=scratch)
    clamd.start()
    assert clamd.proc is not None
    (home / "clamd.pid").write_text(str(clamd.proc.pid))
    users = _mail_users(home)
    # Moves into and out of Junk over IMAP are feedback, as in production (docs/install.md)
    dovecot = Dovecot(home / "dovecot", users, imap_port=layout.imap_port,
                      learn_command=(sys.executable, "-m", "stronghold.cli"),
                      learn_env={"PYTHONPATH": str(ROOT), "STRONGHOLD_CONFIG": str(home / "stronghold.toml")})
    dovecot.start()
    assert dovecot.proc is not None
    (home / "dovecot.pid").write_text(str(dovecot.proc.pid))
    settings = {
        "data_dir": str(home / "milter"), "models_dir": str(layout.models_dir),
        "database_url": f"sqlite:///{home / 'store.db'}",
        "milter_socket": f"unix:{home / 'milter' / 'milter.sock'}",
        "clamd_socket": clamd.address, "web_bind": layout.web,
        "dovecot_config": str(dovecot.config_path),
        # so that `stronghold milter --check-config` compares this stack's own Postfix and clamd
        "postfix_config_dir": str(home / "postfix"), "clamd_config": str(home / "clamd" / "clamd.conf"),
    }
    settings["release_smtp"] = f"127.0.0.1:{layout.release_port}"  # where the quarantine re-injects
    settings["web_base_url"] = f"http://{layout.web}"
    conf = home / "stronghold.toml"
    conf.write_text("".join(f'{k} = "{v}"\n' for k, v in settings.items()))
    store = Store(settings["database_url"])
    store.upgrade()
    password = _first_admin(store, home)
    store.dispose()
    cli = [sys.executable, "-m", "stronghold.cli", "--config", str(conf)]
    _spawn(home, "milter", [*cli, "milter"])
    wait_for(lambda: _unix_connects(home / "milter" / "milter.sock"), 60, f"milter ({home / 'milter.log'})")
    cfg = config_mod.load(conf, environ={})
    # Postfix refuses what the milter would refuse unscanned, before the data (docs/install.md, "Sizes")
    postfix = Postfix(home / "postfix", layout.smtp_port, milter=f"unix:{home / 'milter' / 'milter.sock'}",
                      lmtp=dovecot.lmtp_address, mailboxes=dovecot.addresses, release_port=layout.release_port,
                      extra={"message_size_limit": str(cfg.max_message_bytes)})
    postfix.start()
    _spawn(home, "expiry", [*cli, "mailbox", "expire", "--every", str(EXPIRE_EVERY)])
    _spawn(home, "web", [*cli, "web"])
    wait_for(lambda: _tcp_open("127.0.0.1", layout.web_port), 60, f"web UI ({home / 'web.log'})")
    demo = "m1@example.com"
    retention = cfg.junk_retention_days
    cli_cmd = f"STRONGHOLD_CONFIG={conf} {Path(sys.executable).parent / 'stronghold'}"
    print(f"""
Mail Stronghold is running on loopback:
  SMTP (Postfix + milter)  127.0.0.1:{layout.smtp_port}   delivers over LMTP to Dovecot ({', '.join(MAIL_USERS)})
  release (no milter)      127.0.0.1:{layout.release_port}  what the quarantine releases is re-injected here
  IMAP (Dovecot)           127.0.0.1:{layout.imap_port}   tagged spam goes to Junk (log {dovecot.log_path})
  Junk/Trash expiry        every {EXPIRE_EVERY}s, after {retention} days (log {home / 'expiry.log'})
  milter                   unix:{home / 'milter' / 'milter.sock'}  (log {home / 'milter.log'})
  clamd                    {clamd.socket_path}  ({which})
  web UI                   http://{layout.web}/   (log {home / 'web.log'})
  settings                 {conf}
  CLI                      {cli_cmd} ...  (without STRONGHOLD_CONFIG it uses another, empty store)
First admin: login 'admin', password {password or '(unchanged; see ' + str(home / 'admin-password') + ')'}
IMAP user: {demo}, password {users[demo]}  (all mailbox users: {home / 'mail-users.json'})
Try it:
  swaks --server 127.0.0.1:{layout.smtp_port} --from carol@sender.example --to {demo}
  curl -s 'imap://127.0.0.1:{layout.imap_port}/INBOX;MAILINDEX=1' --user '{demo}:{users[demo]}'
  {cli_cmd} user add m1 --address {demo}   (a web UI login for {demo})
Stop it with: {_stop_command(home)}
""")
    return 0


def _stop_command(home: Path) -> str:
    """``make stop``, naming the folder when it is not the default one (stop needs the same)."""
    return "make stop" if home == Path(HOME).resolve() else f"DEVSTACK_HOME={home} make stop"


def _clamd_tmpdir(home: Path) -> Path:
    """clamd's scratch space: in memory when the machine has /dev/shm (docs/operations.md), one
    per stack folder."""
    shm = memory_fs()
    if shm is not None:
        return shm / f"stronghold-stack-clamd-{os.getuid()}-{hashlib.sha256(bytes(home)).hexdigest()[:8]}"
    return home / "clamd" / "tmp"


def stop(layout: Layout, quiet: bool = False) -> int:
    home = layout.home
    for name in PARTS:
        pid = _alive(home / f"{name}.pid")
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20  # the whole group: workers and children too
            while group_running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
    if (home / "postfix" / "main.cf").exists():
        Postfix(home / "postfix", layout.smtp_port).stop()
    shutil.rmtree(_clamd_tmpdir(home), ignore_errors=True)
    if not quiet:
        print("Mail Stronghold local stack stopped.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    args = parser.parse_args(argv)
    try:
        layout = Layout.from_env(os.environ)
        return start(layout) if args.action == "start" else stop(layout)
    except StackError as exc:
        print(f"error: {exc}; logs are in {os.environ.get('DEVSTACK_HOME') or HOME}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
