"""`python -m devtools.devstack start|stop`: the whole product on loopback, for `make run`.

clamd, the milter, Postfix on 127.0.0.1:2525 (delivering over LMTP to Dovecot,
whose Sieve files tagged spam into Junk), Dovecot's IMAP on 127.0.0.1:1143, the
Junk/Trash expiry job and the web UI on 127.0.0.1:8080, each in var/stack/<part>/
with its own log.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from devtools.localdovecot import Dovecot
from devtools.localstack import ROOT, Clamd, Postfix, StackError, _unix_connects, memory_fs, signature_dir, wait_for
from stronghold import config as config_mod
from stronghold.store import accounts
from stronghold.store.db import Store

HOME = ROOT / "var" / "stack"
SMTP_PORT = 2525
RELEASE_PORT = 10026
IMAP_PORT = 1143
WEB = "127.0.0.1:8080"
MAIL_USERS = ("m1@example.com", "m2@example.com", "m3@example.com", "postmaster@example.com")
EXPIRE_EVERY = 3600  # seconds between runs of `stronghold mailbox expire`
PARTS = ("web", "expiry", "milter", "dovecot", "clamd")  # stopped in this order


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def _spawn(name: str, argv: list[str]) -> int:
    log = open(HOME / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("STRONGHOLD_")})
    log.close()
    (HOME / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _tcp_open(host: str, port: int) -> bool:
    import socket
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _first_admin(store: Store) -> str | None:
    """Create 'admin' with a random password when there is no user yet; returns the password."""
    with store.session() as s:
        if accounts.all_users(s):
            return None
        password = secrets.token_urlsafe(12)
        user = accounts.add_user(s, "admin", password, admin=True)
        accounts.assign_address(s, user, "postmaster@example.com")
    path = HOME / "admin-password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def _mail_users() -> dict[str, str]:
    """IMAP users and their passwords, kept across restarts in a 0600 file."""
    path = HOME / "mail-users.json"
    try:
        users: dict[str, str] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        users = {}
    users = {a: users.get(a) or secrets.token_urlsafe(12) for a in MAIL_USERS}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(users, fh, indent=1)
    return users


def start() -> int:
    stop(quiet=True)
    for sub in ("", "milter", "clamd", "dovecot"):
        (HOME / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(HOME / sub, 0o755)  # noqa: S103 - Postfix (another user) must reach the socket
    sigs, which = signature_dir()
    scratch = _clamd_tmpdir()
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    clamd = Clamd(HOME / "clamd", sigs, tmpdir=scratch)
    clamd.start()
    assert clamd.proc is not None
    (HOME / "clamd.pid").write_text(str(clamd.proc.pid))
    users = _mail_users()
    dovecot = Dovecot(HOME / "dovecot", users, imap_port=IMAP_PORT)
    dovecot.start()
    assert dovecot.proc is not None
    (HOME / "dovecot.pid").write_text(str(dovecot.proc.pid))
    settings = {
        "data_dir": str(HOME / "milter"), "models_dir": str(ROOT / "models"),
        "database_url": f"sqlite:///{HOME / 'store.db'}",
        "milter_socket": f"unix:{HOME / 'milter' / 'milter.sock'}",
        "clamd_socket": clamd.address, "web_bind": WEB,
        "dovecot_config": str(dovecot.config_path),
    }
    if "release_smtp" in config_mod.SETTINGS:  # the quarantine re-injects through the release listener
        settings["release_smtp"] = f"127.0.0.1:{RELEASE_PORT}"
    conf = HOME / "stronghold.toml"
    conf.write_text("".join(f'{k} = "{v}"\n' for k, v in settings.items()))
    store = Store(settings["database_url"])
    store.upgrade()
    password = _first_admin(store)
    store.dispose()
    cli = [sys.executable, "-m", "stronghold.cli", "--config", str(conf)]
    _spawn("milter", [*cli, "milter"])
    wait_for(lambda: _unix_connects(HOME / "milter" / "milter.sock"), 60, f"milter ({HOME / 'milter.log'})")
    postfix = Postfix(HOME / "postfix", SMTP_PORT, milter=f"unix:{HOME / 'milter' / 'milter.sock'}",
                      lmtp=dovecot.lmtp_address, mailboxes=dovecot.addresses, release_port=RELEASE_PORT)
    postfix.start()
    _spawn("expiry", [*cli, "mailbox", "expire", "--every", str(EXPIRE_EVERY)])
    _spawn("web", [*cli, "web"])
    host, port = WEB.split(":")
    wait_for(lambda: _tcp_open(host, int(port)), 60, f"web UI ({HOME / 'web.log'})")
    demo = "m1@example.com"
    retention = config_mod.load(conf, environ={}).junk_retention_days
    print(f"""
Mail Stronghold is running on loopback:
  SMTP (Postfix + milter)  127.0.0.1:{SMTP_PORT}   delivers over LMTP to Dovecot ({', '.join(MAIL_USERS)})
  release (no milter)      127.0.0.1:{RELEASE_PORT}  what the quarantine releases is re-injected here
  IMAP (Dovecot)           127.0.0.1:{IMAP_PORT}   tagged spam goes to Junk (log {dovecot.log_path})
  Junk/Trash expiry        every {EXPIRE_EVERY}s, after {retention} days (log {HOME / 'expiry.log'})
  milter                   unix:{HOME / 'milter' / 'milter.sock'}  (log {HOME / 'milter.log'})
  clamd                    {clamd.socket_path}  ({which})
  web UI                   http://{WEB}/   (log {HOME / 'web.log'})
  settings                 {conf}
First admin: login 'admin', password {password or '(unchanged; see ' + str(HOME / 'admin-password') + ')'}
IMAP user: {demo}, password {users[demo]}  (all mailbox users: {HOME / 'mail-users.json'})
Try it:
  swaks --server 127.0.0.1:{SMTP_PORT} --from carol@sender.example --to {demo}
  curl -s 'imap://127.0.0.1:{IMAP_PORT}/INBOX;MAILINDEX=1' --user '{demo}:{users[demo]}'
Stop it with: make stop
""")
    return 0


def _clamd_tmpdir() -> Path:
    """clamd's scratch space: in memory when the machine has /dev/shm (docs/operations.md)."""
    shm = memory_fs()
    if shm is not None:
        return shm / f"stronghold-stack-clamd-{os.getuid()}"
    return HOME / "clamd" / "tmp"


def stop(quiet: bool = False) -> int:
    for name in PARTS:
        pid = _alive(HOME / f"{name}.pid")
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _alive(HOME / f"{name}.pid") and time.monotonic() < deadline:
                time.sleep(0.1)
    if (HOME / "postfix" / "main.cf").exists():
        Postfix(HOME / "postfix", SMTP_PORT).stop()
    shutil.rmtree(_clamd_tmpdir(), ignore_errors=True)
    if not quiet:
        print("Mail Stronghold local stack stopped.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    args = parser.parse_args(argv)
    try:
        return start() if args.action == "start" else stop()
    except StackError as exc:
        print(f"error: {exc}; logs are in {HOME}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
