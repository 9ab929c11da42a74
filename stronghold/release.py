"""Release: re-inject one recipient's quarantined copy into Postfix, exactly once.

The copy goes over SMTP to ``release_smtp``: Postfix's second listener on
loopback, which has no milter, so released mail is never filtered (or held)
again.  Envelope: the original sender, that one recipient.  The copy gets a
``X-Stronghold-Released: <item id> by <who>`` header (an audit trail in the
delivered mail) and loses any ``X-Spam-*`` headers it arrived with, so a Sieve
rule cannot file a released message back into Junk, and any Authentication-Results
forged in our name (``authres.forged_positions``).

Exactly once, and the crash window
----------------------------------
1. claim the item (one atomic UPDATE; committed) - the loser of a race stops here;
2. send it;
3. on the relay's 250, record ``delivered``; on a definite refusal (connection
   refused, a 4xx/5xx reply before or at the end of DATA) give the claim back
   (``unclaim``) so the user can simply try again.

If the process dies between 1 and 3, or the connection drops after the
message text was sent but before the relay answered, nobody knows whether
Postfix queued it.  We then keep the claim: the item shows as released but
*not confirmed* (``delivered`` empty).  This errs towards at most once - a
duplicate in the inbox is the failure users notice and report; a release that
an admin can see as unconfirmed and redo is not lost - and
``release(..., retry_unconfirmed=True)`` (``stronghold quarantine release
--retry``) re-takes such a claim once it is older than ``RETRY_AFTER``.

Viruses are refused unless the caller says the actor is an admin
(``admin=True``): the caller knows who is asking; this module only enforces.
Ownership (may ``by`` see this item at all?) is the caller's check too.
"""

from __future__ import annotations

import functools
import logging
import re
import smtplib
import time
from collections.abc import Callable, Sequence

from stronghold.authres import forged_positions, our_authserv_id
from stronghold.config import Config
from stronghold.store import quarantine
from stronghold.store.db import Store
from stronghold.store.errors import StoreError
from stronghold.store.quarantine import Held

log = logging.getLogger(__name__)
RETRY_AFTER = 600.0  # seconds before an unconfirmed release may be retried
SMTP_TIMEOUT = 60.0
RELEASED_HEADER = "X-Stronghold-Released"
_DROPPED = re.compile(rb"(?i)(x-spam-[^:\s]*|" + RELEASED_HEADER.encode() + rb")\s*:")
_AUTHRES = re.compile(rb"(?i)authentication-results\s*:")
Forged = Callable[[Sequence[tuple[str, str]]], list[int]]


class ReleaseError(Exception):
    """The release did not happen (or its outcome is unknown); a one-line message for the user."""


class OutcomeUnknown(Exception):
    """The relay may or may not have queued the message."""


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _header_block_end(raw: bytes) -> int:
    """Offset where the body starts (after the blank line); len(raw) if there is none."""
    match = re.search(rb"\r?\n\r?\n", raw)
    return match.end() if match else len(raw)


def prepare(raw: bytes, item_id: int, by: str, forged: Forged | None = None) -> bytes:
    """The copy to re-inject: CRLF lines, X-Spam-* (and our header) dropped, ours prepended.

    ``forged(headers)``: the positions among the Authentication-Results of those with our id
    from outside (``authres.forged_positions``), dropped too: copies held before they were
    taken off at end of message may still carry a forged "dkim=pass" in our name."""
    fields: list[list[bytes]] = []  # each field: its first line and its continuation lines
    for line in re.split(rb"\r?\n", raw[:_header_block_end(raw)].rstrip(b"\r\n")):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    results = [i for i, field in enumerate(fields) if _AUTHRES.match(field[0])]
    values = [("Authentication-Results", b" ".join(fields[i]).split(b":", 1)[1].decode("utf-8", "replace"))
              for i in results]
    dropped = {results[n - 1] for n in forged(values)} if forged is not None and results else set()
    kept = [line for i, field in enumerate(fields) if i not in dropped and not _DROPPED.match(field[0])
            for line in field]
    who = re.sub(r"[\x00-\x1f\x7f]", "", by)[:200]
    ours = f"{RELEASED_HEADER}: {item_id} by {who}".encode()
    body = re.sub(rb"\r?\n", b"\r\n", raw[_header_block_end(raw):])
    return b"\r\n".join([ours, *[line for line in kept if line]]) + b"\r\n\r\n" + body


def smtp_send(address: str, sender: str, recipients: Sequence[str], data: bytes) -> None:
    """Hand ``data`` to the SMTP server at ``address`` (HOST:PORT).

    Raises smtplib/OSError errors for a definite refusal, OutcomeUnknown when the
    connection failed after the message text was sent.  An envelope address outside ASCII
    (mail that came with SMTPUTF8) is sent with SMTPUTF8; a server without it is a refusal
    (smtplib's SMTPNotSupportedError).
    """
    host, port = split_hostport(address)
    with smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT) as smtp:
        smtp.ehlo()
        options = ["BODY=8BITMIME"] if smtp.has_extn("8bitmime") and any(b > 127 for b in data) else []
        if not all(a.isascii() for a in (sender, *recipients)):
            options.append("SMTPUTF8")  # smtplib then speaks UTF-8 for this transaction
        code, reply = smtp.mail(sender, options)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, sender)
        for rcpt in recipients:
            code, reply = smtp.rcpt(rcpt)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({rcpt: (code, reply)})
        try:
            smtp.data(data)
        except smtplib.SMTPDataError:
            raise  # a reply: definitely not queued
        except (smtplib.SMTPException, OSError) as exc:
            raise OutcomeUnknown(str(exc) or type(exc).__name__) from exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(exc.recipients.values()))
        return f"{code} {reply.decode(errors='replace')}"
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return f"{exc.smtp_code} {text}"
    return str(exc) or type(exc).__name__


def _claim(store: Store, item_id: int, by: str, admin: bool, retry_unconfirmed: bool) -> tuple[Held, bytes, float]:
    with store.session() as s:
        held = quarantine.get(s, item_id)
        if held is None:
            raise ReleaseError(f"quarantined message {item_id} does not exist (deleted or expired)")
        if held.is_virus and not admin:
            raise ReleaseError("only an administrator can release a message that carries a virus")
        raw = quarantine.content(s, item_id)
        if held.released is None:
            stamp = quarantine.claim(s, item_id, by)
        elif retry_unconfirmed and held.delivered is None and held.released < time.time() - RETRY_AFTER:
            stamp = quarantine.reclaim(s, item_id, held.released, by)
        else:
            stamp = None
        if stamp is None:
            current = quarantine.get(s, item_id)
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(current.released)) \
                if current is not None and current.released else "just now"
            who = current.released_by if current is not None else "someone"
            state = "" if current is None or current.delivered else " (delivery not confirmed)"
            raise ReleaseError(f"message {item_id} was already released by {who} at {when}{state}")
    return held, raw, stamp


def release(cfg: Config, store: Store, item_id: int, by: str, *, admin: bool = False,
            retry_unconfirmed: bool = False) -> Held:
    """Deliver item ``item_id`` to its recipient once; returns the item as now stored.

    ``by`` is who asked (a login or an address; recorded and shown in the
    header); ``admin`` lets viruses through.  Raises ReleaseError, StoreError.
    """
    held, raw, stamp = _claim(store, item_id, by, admin, retry_unconfirmed)
    try:
        forged = functools.partial(forged_positions, cfg.auth_mode, our_authserv_id(cfg.authserv_id))
        smtp_send(cfg.release_smtp, held.sender, [held.recipient], prepare(raw, item_id, by, forged))
    except OutcomeUnknown as exc:
        log.error("release of %d to %s: outcome unknown (%s); left claimed, not confirmed",
                  item_id, held.recipient, exc)
        raise ReleaseError(f"the mail system did not confirm the release of message {item_id} "
                           f"({exc}); an administrator can check and retry it") from exc
    except (smtplib.SMTPException, OSError) as exc:
        why = _describe(exc)
        log.warning("release of %d to %s refused by %s: %s", item_id, held.recipient, cfg.release_smtp, why)
        try:
            with store.session() as s:
                quarantine.unclaim(s, item_id, stamp)
        except StoreError as undo:
            log.error("release of %d: could not give the claim back: %s", item_id, undo)
        raise ReleaseError(f"the mail system refused the release ({why}); nothing was delivered, "
                           "try again later") from exc
    try:
        with store.session() as s:
            quarantine.mark_delivered(s, item_id, stamp)
            done = quarantine.get(s, item_id)
    except StoreError as exc:  # delivered all the same: say so, leave it unconfirmed
        log.error("release of %d delivered, but not recorded as confirmed: %s", item_id, exc)
        done = None
    log.info("released quarantined message %d (queue id %s) to %s by %s", item_id, held.queue_id,
             held.recipient, by)
    return done if done is not None else held
