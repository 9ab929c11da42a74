"""`stronghold mailbox expire`: Junk and Trash keep mail ``junk_retention_days``, then Dovecot expunges it.

Dovecot holds the mailboxes, so the job asks ``doveadm`` (with the configured
``dovecot_config``) to expunge, for every user (``-A``):

- ``Junk``: messages that *arrived* (IMAP INTERNALDATE, the LMTP delivery time
  for what Sieve files there) more than N days ago;
- ``Trash``: messages *put there* (Dovecot's save date) more than N days ago, so
  an old message a user deletes today still has N days to be taken back
  (moving a message keeps its INTERNALDATE but gives it a new save date).

Run it daily (cron or a systemd timer; docs/operations.md); the local stack runs
it with ``--every``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

JUNK_FOLDER = "Junk"
TRASH_FOLDER = "Trash"
# (folder, doveadm search key applied to "<days>d")
RULES: tuple[tuple[str, str], ...] = ((JUNK_FOLDER, "before"), (TRASH_FOLDER, "savedbefore"))
_MISSING = "Mailbox doesn't exist"
_ERROR_WORDS = ("Error:", "Fatal:", "Panic:")


class ExpiryError(Exception):
    """doveadm failed (one-line message)."""


@dataclass(frozen=True)
class Expired:
    folder: str
    rule: str  # the doveadm query, e.g. "mailbox Junk before 30d"
    messages: int  # how many matched (and were expunged unless dry run)


def _doveadm(config: Path, *args: str, timeout: float) -> str:
    binary = shutil.which("doveadm") or "/usr/bin/doveadm"
    try:
        out = subprocess.run([binary, "-c", str(config), *args], capture_output=True, text=True,
                             timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ExpiryError(f"doveadm not found ({binary}): is Dovecot installed?") from exc
    except subprocess.TimeoutExpired as exc:
        raise ExpiryError(f"doveadm {args[0]} did not finish within {timeout:.0f}s") from exc
    # doveadm -A exits 0 even when it failed for some users: read what it says, too.
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if any(word in line for word in _ERROR_WORDS)]
    # A user who never had this folder has nothing to expire; anything else is a failure.
    real = [line for line in errors if _MISSING not in line]
    if real or (out.returncode != 0 and not errors):
        detail = (real or lines or [f"exit status {out.returncode}"])[0]
        raise ExpiryError(f"doveadm {' '.join(args)}: {detail[:300]}")
    return out.stdout


def expire(config: Path, days: int, *, dry_run: bool = False, timeout: float = 600) -> list[Expired]:
    """Expunge what is older than ``days`` in every user's Junk and Trash; ``days`` 0 keeps all."""
    if days <= 0:
        return []
    if not config.is_file():
        raise ExpiryError(f"dovecot config {config} not found (setting dovecot_config)")
    done = []
    for folder, key in RULES:
        query = ["mailbox", folder, key, f"{days}d"]
        found = _doveadm(config, "search", "-A", *query, timeout=timeout)
        count = sum(1 for line in found.splitlines() if line.strip())
        if count and not dry_run:
            _doveadm(config, "expunge", "-A", *query, timeout=timeout)
        rule = " ".join(query)
        log.info("%s %d message(s): %s", "would expunge" if dry_run else "expunged", count, rule)
        done.append(Expired(folder, rule, count))
    return done


def run_every(config: Path, days: int, seconds: float) -> None:
    """Expire now and then every ``seconds`` (the local stack's scheduler); errors are logged."""
    while True:
        try:
            expire(config, days)
        except ExpiryError as exc:
            log.error("mailbox expiry failed: %s", exc)
        time.sleep(seconds)
