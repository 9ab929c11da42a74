"""`stronghold jobs`: the scheduled work, run by a timer (hourly) or cron.

Each job is idempotent and decides itself whether anything is due, so running
the command more often than needed does no harm, and a missed run is caught up
by the next one.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from stronghold import digest, learning, mailbox_expiry, personal
from stronghold.config import Config, ConfigError
from stronghold.feedback import record_pending
from stronghold.modelfile import passport_path
from stronghold.store import messagelog, quarantine
from stronghold.store.db import Store

log = logging.getLogger(__name__)
Job = Callable[[Config, Store], str]


def purge_message_log(cfg: Config, store: Store) -> str:
    if not cfg.log_retention_days:
        return "kept (log_retention_days = 0)"
    with store.session() as session:
        count = messagelog.purge_older_than(session, cfg.log_retention_days)
    return f"{count} entries older than {cfg.log_retention_days} days deleted"


def purge_quarantine(cfg: Config, store: Store) -> str:
    if not cfg.quarantine_retention_days:
        return "kept (quarantine_retention_days = 0)"
    with store.session() as session:
        count = quarantine.purge_older_than(session, cfg.quarantine_retention_days)
    return f"{count} held messages older than {cfg.quarantine_retention_days} days deleted"


def send_digests(cfg: Config, store: Store) -> str:
    reports = digest.run(cfg, store)
    sent = sum(1 for r in reports if r.outcome == "sent")
    failed = [f"{r.login}: {r.outcome}" for r in reports if r.outcome.startswith("failed")]
    if failed:
        raise digest.DigestError(f"{sent} sent, {len(failed)} failed ({'; '.join(failed[:5])})")
    return f"{sent} sent, {len(reports) - sent} not due or nothing new"


def expire_junk(cfg: Config, store: Store) -> str:
    """Junk and Trash expiry needs this host's Dovecot (doveadm); elsewhere it is skipped."""
    if not cfg.dovecot_config.is_file():
        return f"skipped: no Dovecot here ({cfg.dovecot_config} not found)"
    done = mailbox_expiry.expire(cfg.dovecot_config, cfg.junk_retention_days)
    return ", ".join(f"{e.folder} {e.messages} expunged" for e in done) or "kept (junk_retention_days = 0)"


def learn(cfg: Config, store: Store) -> str:
    """Web marks and IMAP moves recorded since the last run go into the candidate, which is
    judged and promoted (or held back); personal layers are rebuilt when their feedback or
    the live model changed.  A candidate a failed run left unjudged is judged now; one the
    ledger moved back to a model judged before (the live one, or one held back) is not judged
    again, and the summary says so.  A rollback that was interrupted is finished first."""
    live = cfg.model_path
    if not passport_path(live).is_file():
        return f"skipped: no model at {live}"
    with learning.locked(store, live) as finished:  # judging and promoting too: no learner may change the candidate
        items, mark_done, _ = record_pending(store)
        _, result = learning.update_candidate(store, live, save_unchanged=False)  # hourly: no 17 MB rewrite
        mark_done()
        moved = f"learned {result.added} (took out {result.removed})"
        outcome, promoted = "nothing new for the shared model", False
        if learning.awaits_judgement(store, live):
            judgement = learning.promote(store, live, "jobs", keep=cfg.model_versions_kept)
            promoted = judgement.promote
            word = "promoted" if promoted else "held back"
            outcome = f"{moved}, candidate {word}: {judgement.reason}"
        elif result.added or result.removed:
            outcome = f"{moved}, {learning.judged_before(store, live)}"
        rebuilt = personal.rebuild_if_any(store, live, only_if_changed=not promoted)
    layers = f"{rebuilt} rebuilt" if rebuilt is not None else "unchanged"
    done = "" if finished is None else f"finished the interrupted rollback to {finished.restored}; "
    return f"{done}{len(items)} web mark(s); personal layers: {layers}; {outcome}"


JOBS: dict[str, Job] = {
    "message-log": purge_message_log,
    "quarantine": purge_quarantine,
    "digest": send_digests,
    "junk": expire_junk,
    "learn": learn,
}


def cmd_jobs(args: argparse.Namespace, cfg: Config) -> int:
    names = args.only or list(JOBS)
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        raise ConfigError(f"unknown job(s) {', '.join(unknown)}; known: {', '.join(JOBS)}")
    failed = 0
    with Store(cfg.db_url) as store:
        store.upgrade()
        for name in names:
            try:
                result = JOBS[name](cfg, store)
            except Exception as exc:  # noqa: BLE001 - one failing job must not stop the others; each is reported and fails the run
                log.error("job %s failed: %s", name, exc)
                print(f"{name}: FAILED: {exc}")
                failed += 1
            else:
                log.info("job %s: %s", name, result)
                print(f"{name}: {result}")
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="run the scheduled jobs (retention, digests, Junk expiry, learning): "
                       "for a timer or cron")
    p.add_argument("--only", action="append", metavar="JOB", help=f"run only this job ({', '.join(JOBS)})")
    p.set_defaults(func=cmd_jobs, service=True)  # logs INFO, like the milter and the web UI
