"""A private Dovecot on loopback: IMAP for users, LMTP for Postfix, Sieve files tagged mail into Junk.

With a ``learn_command``, moves are feedback (IMAPSieve, ``vnd.dovecot.pipe``): a message moved or
copied into Junk is recorded as spam, one moved out of Junk (anywhere but Trash) as ham, through
``stronghold learn --source imap --record-only`` run as the mail account.  That command takes no
model lock on purpose (a pipe waiting behind a learn run would hit Pigeonhole's time limit and lose
the mark): it writes only the ledger's labels, never what a model holds (docs/classifier.md).

Like the Postfix and clamd in ``localstack``, it lives in one folder of its own
(config, run dir, state, log, mail under ``vmail/``) and never reads or touches
the system's /etc/dovecot or its service.  Users are virtual (a passwd-file the
stack writes, argon2id hashes); every mailbox is stored under one unprivileged
system account, ``stronghold-vmail``, created on first use when running as root.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devtools.localstack import StackError, free_port, stop_process, wait_for

VMAIL_USER = "stronghold-vmail"
JUNK = "Junk"
TRASH = "Trash"

# Pigeonhole runs this before any personal script: mail our milter tagged goes to Junk.
JUNK_SIEVE = f"""\
require ["fileinto", "mailbox"];
# Mail Stronghold tags spam with X-Spam-Flag: YES; file it into the Junk folder.
if header :is "X-Spam-Flag" "YES" {{
  fileinto :create "{JUNK}";
  stop;
}}
"""


# IMAPSieve scripts (pigeonhole): IMAP moves into / out of Junk become feedback.
LEARN_PROGRAM = "stronghold-learn"
REPORT_SPAM_SIEVE = f"""\
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];
# A message moved or copied into {JUNK}: the user says it is spam.
if environment :matches "imap.user" "*" {{ set "username" "${{1}}"; }}
pipe :copy "{LEARN_PROGRAM}" ["spam", "${{username}}"];
"""
REPORT_HAM_SIEVE = f"""\
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];
# A message moved out of {JUNK}: not spam, unless it went to {TRASH} (deleting says nothing).
if environment :matches "imap.mailbox" "*" {{ set "mailbox" "${{1}}"; }}
if string "${{mailbox}}" "{TRASH}" {{ stop; }}
if environment :matches "imap.user" "*" {{ set "username" "${{1}}"; }}
pipe :copy "{LEARN_PROGRAM}" ["ham", "${{username}}"];
"""


@dataclass(frozen=True)
class MailAccount:
    """The system account that owns every mailbox file."""

    name: str
    uid: int
    gid: int


def mail_account() -> MailAccount:
    """``stronghold-vmail`` (created if missing) when root; else the current user."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return MailAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(VMAIL_USER)
    except KeyError:
        out = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                              "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                              "--comment", "Mail Stronghold mail storage", VMAIL_USER],
                             capture_output=True, text=True, check=False)
        # 9: another process created it meanwhile; fine.
        if out.returncode not in (0, 9):
            raise StackError(f"useradd {VMAIL_USER}: {out.stderr.strip()[:300]}") from None
        entry = pwd.getpwnam(VMAIL_USER)
    return MailAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)


def hash_password(password: str) -> str:
    """A Dovecot passdb entry: argon2id, one lane (what libsodium verifies)."""
    from argon2 import PasswordHasher
    return "{ARGON2ID}" + PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(password)


def _imap_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(200).startswith(b"* OK")
    except OSError:
        return False


def _lmtp_banner(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(path))
            return s.recv(200).startswith(b"220")
    except OSError:
        return False


@dataclass
class Dovecot:
    """Dovecot in the foreground: IMAP on 127.0.0.1:imap_port, LMTP on a unix socket.

    ``users`` maps addresses to passwords; ``lmtp_owner`` is the system user
    allowed to connect to the LMTP socket (Postfix's ``lmtp`` client runs as
    ``postfix``).
    """

    home: Path
    users: Mapping[str, str]
    imap_port: int = field(default_factory=free_port)
    lmtp_owner: str = "postfix"
    # ``stronghold`` command (argv) IMAP moves call, and the environment it runs with (settings)
    learn_command: tuple[str, ...] = ()
    learn_env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.home / "dovecot.conf"

    @property
    def vmail(self) -> Path:
        return self.home / "vmail"

    @property
    def lmtp_socket(self) -> Path:
        return self.home / "run" / "lmtp"

    @property
    def lmtp_address(self) -> str:
        """Where Postfix delivers, as its ``lmtp:`` transport names it."""
        return f"unix:{self.lmtp_socket}"

    @property
    def sieve_script(self) -> Path:
        return self.home / "sieve" / "junk.sieve"

    @property
    def log_path(self) -> Path:
        return self.home / "dovecot.log"

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(sorted(self.users))

    def _conf(self, account: MailAccount) -> str:
        self._account_name = account.name
        h = self.home
        # A short, stable instance name: doveadm and the logs tell our instances apart by it.
        instance = "stronghold-" + hashlib.sha256(str(h).encode()).hexdigest()[:8]
        internal = "dovecot" if os.geteuid() == 0 else account.name
        login = "dovenull" if os.geteuid() == 0 else account.name
        mailboxes = "".join(
            f"  mailbox {name} {{\n    special_use = \\{use}\n    auto = subscribe\n  }}\n"
            for name, use in ((JUNK, "Junk"), (TRASH, "Trash"), ("Sent", "Sent"),
                              ("Drafts", "Drafts")))
        return f"""\
# Written by devtools.localdovecot; private to this folder.
instance_name = {instance}
base_dir = {h / 'run'}
state_dir = {h / 'state'}
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
# Plaintext logins are accepted only on connections Dovecot considers secure,
# which without TLS means loopback (client address == server address).
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_username_format = %Lu
log_path = {self.log_path}
info_log_path = {self.log_path}
default_internal_user = {internal}
default_internal_group = {internal}
default_login_user = {login}
first_valid_uid = {account.uid}
last_valid_uid = {account.uid}
first_valid_gid = {account.gid}
last_valid_gid = {account.gid}
mail_location = maildir:~/Maildir
postmaster_address = postmaster@example.com
recipient_delimiter = +
lda_mailbox_autocreate = yes
lda_mailbox_autosubscribe = yes
namespace inbox {{
  inbox = yes
  separator = /
{mailboxes}}}
passdb {{
  driver = passwd-file
  args = username_format=%Lu {h / 'users'}
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {h / 'users'}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
    user = {self.lmtp_owner}
  }}
}}
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
}}
plugin {{
  sieve_before = {self.sieve_script}
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
{self._imapsieve_conf()}"""

    def _imapsieve_conf(self) -> str:
        """IMAPSieve on moves into / out of Junk; the pipe reaches `stronghold learn` through a
        Dovecot script service, so it runs as the Stronghold user (who may write the database),
        not as the mail account."""
        if not self.learn_command:
            return ""
        d = self.sieve_script.parent
        learn_user = pwd.getpwuid(os.geteuid()).pw_name
        return f"""\
protocol imap {{
  mail_plugins = $mail_plugins imap_sieve
}}
service {LEARN_PROGRAM} {{
  executable = script {d / 'bin' / LEARN_PROGRAM}
  user = {learn_user}
  # Python with numpy and scikit-learn maps more than Dovecot's default 256 MB of address space:
  # under that limit imports fail now and then (SystemError), and the mark is lost
  vsz_limit = 0
  unix_listener sieve-pipe/{LEARN_PROGRAM} {{
    mode = 0600
    user = {self._account_name}
  }}
}}
plugin {{
  sieve_plugins = sieve_imapsieve sieve_extprograms
  sieve_global_extensions = +vnd.dovecot.pipe +vnd.dovecot.environment
  sieve_pipe_socket_dir = sieve-pipe
  # `stronghold learn` starts a Python process: past Pigeonhole's default 10 s it would be killed
  # (and the mark lost) on a busy host
  sieve_pipe_exec_timeout = 120s
  imapsieve_mailbox1_name = {JUNK}
  imapsieve_mailbox1_causes = COPY APPEND
  imapsieve_mailbox1_before = file:{d / 'report-spam.sieve'}
  imapsieve_mailbox2_name = *
  imapsieve_mailbox2_from = {JUNK}
  imapsieve_mailbox2_causes = COPY
  imapsieve_mailbox2_before = file:{d / 'report-ham.sieve'}
}}
"""

    def _write_learn_hook(self) -> list[Path]:
        """The pipe program and the two IMAPSieve scripts (to compile); none without a learn command."""
        if not self.learn_command:
            return []
        d = self.sieve_script.parent
        (d / "bin").mkdir(parents=True, exist_ok=True)
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(self.learn_env.items())
                          if re.fullmatch(r"[A-Z_][A-Z0-9_]*", k))
        program = d / "bin" / LEARN_PROGRAM
        program.write_text(
            "#!/bin/sh\n# Written by devtools.localdovecot: IMAP moves into and out of Junk are feedback.\n"
            'case "$1" in spam|ham) ;; *) echo "usage: $0 spam|ham USER" >&2; exit 64 ;; esac\n'
            + exports + "exec " + " ".join(shlex.quote(a) for a in self.learn_command)
            + ' learn --source imap --record-only --by "$2" --"$1" -\n')
        program.chmod(0o755)
        scripts = [d / "report-spam.sieve", d / "report-ham.sieve"]
        scripts[0].write_text(REPORT_SPAM_SIEVE)
        scripts[1].write_text(REPORT_HAM_SIEVE)
        return scripts

    def _write_users(self, account: MailAccount) -> None:
        lines = []
        for address, password in sorted(self.users.items()):
            if ":" in address or "/" in address or "@" not in address:
                raise StackError(f"not a usable mail address: {address!r}")
            local, domain = address.lower().split("@", 1)
            home = self.vmail / domain / local
            lines.append(f"{address.lower()}:{hash_password(password)}:{account.uid}:{account.gid}"
                         f"::{home}::\n")
        path = self.home / "users"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(lines))
        if os.geteuid() == 0:
            os.chown(path, 0, pwd.getpwnam("dovecot").pw_gid)

    def _compile_sieve(self) -> None:
        self.sieve_script.parent.mkdir(parents=True, exist_ok=True)
        self.sieve_script.write_text(JUNK_SIEVE)
        for script in [self.sieve_script, *self._write_learn_hook()]:
            out = subprocess.run(["sievec", "-c", str(self.config_path), str(script)],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise StackError(f"sievec {script}: {(out.stderr or out.stdout).strip()[:300]}")

    def start(self, timeout: float = 30) -> None:
        account = mail_account()
        for sub in ("state", "vmail", *(("run/sieve-pipe",) if self.learn_command else ())):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        os.chown(self.vmail, account.uid, account.gid)
        os.chmod(self.vmail, 0o700)
        self.config_path.write_text(self._conf(account))
        self._write_users(account)
        self._compile_sieve()
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        with open(self.home / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen([binary, "-F", "-c", str(self.config_path)],
                                         stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        wait_for(lambda: self.proc is not None and self.proc.poll() is None
                 and _imap_banner(self.imap_port) and _lmtp_banner(self.lmtp_socket),
                 timeout, f"dovecot ({self.log_path})")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["doveadm", "-c", str(self.config_path), *args], capture_output=True,
                              text=True, check=False)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
