"""`stronghold quarantine ls|show|release|rm|purge` and `stronghold digest`.

The CLI is an administrator's tool (whoever can run it can read the
database): it sees every recipient's items and may release viruses.
"""

from __future__ import annotations

import argparse
import calendar
import getpass
import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

from stronghold.cli_options import add_by
from stronghold.config import Config
from stronghold.digest import DigestError
from stronghold.lists import envelope_shown, other_envelope, shown_from
from stronghold.release import ReleaseError, release
from stronghold.store import quarantine
from stronghold.store.db import Store
from stronghold.store.errors import StoreError
from stronghold.store.quarantine import Held


class QuarantineUsageError(Exception):
    """A quarantine command cannot do what was asked (one-line message)."""


KNOWN_ERRORS = (ReleaseError, DigestError, QuarantineUsageError)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps \t and \n


@contextmanager
def _store(cfg: Config) -> Iterator[Store]:
    with Store(cfg.db_url) as store:
        store.upgrade()
        yield store


def _safe(text: str) -> str:
    """Message text for a terminal: no escape sequences or other control characters."""
    return _CONTROL.sub("?", text)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def parse_time(text: str, now: float | None = None) -> float:
    """'7d', '12h', '30m' ago, or a UTC date 'YYYY-MM-DD[ HH:MM]' -> epoch seconds."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        return now - int(match.group(1)) * {"d": 86400, "h": 3600, "m": 60}[match.group(2)]
    for fmt in ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"):
        try:
            return float(calendar.timegm(time.strptime(text.strip(), fmt)))
        except ValueError:
            continue
    raise QuarantineUsageError(f"'{text}' is not a time: use 7d, 12h, 30m or YYYY-MM-DD[ HH:MM] (UTC)")


def _json(held: Held) -> dict[str, object]:
    """The item; ``header_from`` read from the held copy where it was not recorded, and
    ``other_envelope``: the envelope sender where it is not the From's address (as the web UI shows
    it beside the From), else ""; ``from_shown`` and ``from_warnings``: the From as the web UI shows
    it (``lists.shown_from``: never an address-like display name as the sender)."""
    data: dict[str, object] = asdict(held)
    data["date"] = _when(held.ts)
    data["other_envelope"] = other_envelope(held.header_from, held.sender)
    shown = shown_from(held.header_from)
    data["from_shown"], data["from_warnings"] = shown.text, list(shown.warnings)
    return data


def _sender(held: Held) -> str:
    """Who sent it, as the Junk page shows it: the From, with the envelope sender beside it where it
    differs; the envelope sender alone when there is no From (one column: no tabs)."""
    shown = shown_from(held.header_from)
    if not shown.text:
        return envelope_shown(held.sender)
    text = shown.text + "".join(f" [{w}]" for w in shown.warnings)
    other = other_envelope(held.header_from, held.sender)
    return f"{text} (envelope {envelope_shown(other)})" if other else text


def _status(held: Held) -> str:
    if held.released is None:
        return "held"
    return "released" if held.delivered else "released?"


def _get(store: Store, item_id: int) -> Held:
    with store.session() as s:
        held = quarantine.get(s, item_id)
        if held is None:
            raise QuarantineUsageError(f"no quarantined message {item_id}")
        return quarantine.with_from(s, [held])[0]


def cmd_ls(args: argparse.Namespace, cfg: Config) -> int:
    with _store(cfg) as store, store.session() as s:
        items = quarantine.find(s, recipients=args.recipient, text=args.search or "",
                                since=parse_time(args.since) if args.since else None,
                                until=parse_time(args.until) if args.until else None,
                                include_viruses=not args.no_viruses, limit=args.limit, offset=args.offset)
        items = quarantine.with_from(s, items)
    if args.json:
        json.dump([_json(h) for h in items], sys.stdout, indent=1)
        print()
        return 0
    for h in items:
        score = f"{h.score:.4f}" if h.score is not None else "-"  # as the web UI: 0.9998 is not 1.000
        what = f"virus {h.virus}" if h.virus else h.category
        print(_safe(f"{h.id}\t{_when(h.ts)}\t{_status(h)}\t{h.recipient}\t{_sender(h)}\t{score}\t"
                    f"{what}\t{h.subject}"))
    return 0


def cmd_show(args: argparse.Namespace, cfg: Config) -> int:
    with _store(cfg) as store:
        held = _get(store, args.id)
        with store.session() as s:
            raw = quarantine.content(s, args.id)
    if args.raw:
        sys.stdout.buffer.write(raw)
        return 0
    from stronghold.message import parse
    msg = parse(raw)
    text = (msg.text or msg.html_text)[:args.chars]
    if args.json:
        data = _json(held)
        data["headers"] = {name: msg.header(name) for name in ("from", "to", "date", "subject")}
        data["text"] = text
        json.dump(data, sys.stdout, indent=1)
        print()
        return 0
    lines = [f"item: {held.id} ({_status(held)})", f"held: {_when(held.ts)} (queue id {held.queue_id or '-'})",
             f"recipient: {held.recipient}", f"envelope sender: {envelope_shown(held.sender)}",
             f"score: {held.score if held.score is not None else '-'}  category: {held.category}"
             + (f"  virus: {held.virus}" if held.virus else ""),
             f"reason: {held.reason}", f"trace: {held.trace}", f"size: {held.size} bytes  sha256: {held.sha256}"]
    if held.released is not None:
        lines.append(f"released: {_when(held.released)} by {held.released_by}; "
                     + (f"delivered {_when(held.delivered)}" if held.delivered else "delivery NOT confirmed"))
    shown = shown_from("\n".join(msg.header_all("from")))
    lines += [f"From: {shown.text}"] + [f"  ! {w}" for w in shown.warnings]
    lines += [f"{name}: {msg.header(name) or ''}" for name in ("To", "Date", "Subject")]
    lines += ["", text]
    print(_safe("\n".join(lines)))
    return 0


def cmd_release(args: argparse.Namespace, cfg: Config) -> int:
    """Release each item; what was released is said even when another could not be (another node or
    admin released it first, the relay refused it), and those are the error, exit 1."""
    by = args.by or f"cli:{getpass.getuser()}"
    done: list[Held] = []
    failed: list[str] = []
    with _store(cfg) as store:
        for item_id in args.ids:
            try:
                done.append(release(cfg, store, item_id, by, admin=True, retry_unconfirmed=args.retry))
            except (ReleaseError, StoreError) as exc:
                failed.append(str(exc))
    if args.json:
        json.dump([_json(h) for h in done], sys.stdout, indent=1)
        print()
    else:
        for h in done:
            print(f"released {h.id} to {h.recipient}")
    if failed:
        raise ReleaseError("; ".join(failed))
    return 0


def cmd_rm(args: argparse.Namespace, cfg: Config) -> int:
    missing = []
    with _store(cfg) as store, store.session() as s:
        for item_id in args.ids:
            if not quarantine.delete(s, item_id):
                missing.append(item_id)
    deleted = [i for i in args.ids if i not in missing]
    if args.json:
        print(json.dumps({"deleted": deleted, "missing": missing}))
    else:
        for item_id in deleted:
            print(f"deleted {item_id}")
    if missing:
        raise QuarantineUsageError(f"no quarantined message {', '.join(map(str, missing))}")
    return 0


def cmd_purge(args: argparse.Namespace, cfg: Config) -> int:
    days = cfg.quarantine_retention_days if args.days is None else args.days
    if days <= 0:
        print("quarantine_retention_days is 0: nothing is purged")
        return 0
    with _store(cfg) as store, store.session() as s:
        count = quarantine.purge_older_than(s, days)
    if args.json:
        print(json.dumps({"deleted": count, "days": days}))
    else:
        print(f"deleted {count} quarantined messages older than {days} days")
    return 0


def cmd_digest(args: argparse.Namespace, cfg: Config) -> int:
    from stronghold.digest import run, set_choice
    if args.set:
        if not args.user:
            raise QuarantineUsageError("--set needs --user LOGIN")
        with _store(cfg) as store:
            set_choice(store, args.user, args.set)
        print(f"{args.user}: digest {args.set}")
        return 0
    with _store(cfg) as store:
        reports = run(cfg, store, dry_run=args.dry_run, only=args.user)
    if args.json:
        json.dump([asdict(r) for r in reports], sys.stdout, indent=1)
        print()
        return 0
    for r in reports:
        print(f"{r.login}: {r.outcome}" + (f" ({r.items} messages to {r.to})" if r.items else ""))
    if args.dry_run and args.show:
        from stronghold.digest import preview
        with _store(cfg) as store:
            for text in preview(cfg, store, only=args.user):
                print(_safe(text))
    return 1 if any(r.outcome == "failed" for r in reports) else 0


def register(sub: argparse._SubParsersAction) -> None:
    json_help = "print JSON instead of text"
    p = sub.add_parser("quarantine", help="held messages: list, show, release, delete, purge")
    qs = p.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    a = qs.add_parser("ls", help="list held messages, newest first")
    a.add_argument("--recipient", nargs="+", metavar="ADDR", help="only these recipients' items (default: all)")
    a.add_argument("--search", metavar="TEXT", help="envelope sender, From or subject contains TEXT")
    a.add_argument("--since", metavar="WHEN", help="held at or after WHEN: 7d, 12h, 30m or YYYY-MM-DD[ HH:MM] (UTC)")
    a.add_argument("--until", metavar="WHEN", help="held before WHEN (same forms as --since)")
    a.add_argument("--no-viruses", action="store_true", help="leave out messages held for a virus")
    a.add_argument("--limit", type=int, default=100, metavar="N", help="show at most N items (default: 100)")
    a.add_argument("--offset", type=int, default=0, metavar="N", help="skip the N newest matches first (default: 0)")
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_ls)
    a = qs.add_parser("show", help="one item: why it was held, headers and text (never rendered HTML)")
    a.add_argument("id", type=int, help="the item's number (from 'quarantine ls')")
    a.add_argument("--raw", action="store_true", help="write the message as it arrived")
    a.add_argument("--chars", type=int, default=4000, metavar="N", help="how much text to show (default: 4000)")
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_show)
    a = qs.add_parser("release", help="deliver items to their recipient (once; viruses too)")
    a.add_argument("ids", type=int, nargs="+", metavar="ID", help="the items' numbers (from 'quarantine ls')")
    add_by(a, "releases", "cli:<unix user>")
    a.add_argument("--retry", action="store_true",
                   help="redo a release whose delivery was never confirmed (may duplicate)")
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_release)
    a = qs.add_parser("rm", help="delete items")
    a.add_argument("ids", type=int, nargs="+", metavar="ID", help="the items' numbers (from 'quarantine ls')")
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_rm)
    a = qs.add_parser("purge", help="delete items older than quarantine_retention_days")
    a.add_argument("--days", type=int, metavar="N", help="delete items older than N days instead (0: none)")
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_purge)

    p = sub.add_parser("digest", help="mail each user due a digest the list of their new held messages")
    p.add_argument("--dry-run", action="store_true", help="compose, send nothing, record nothing")
    p.add_argument("--show", action="store_true", help="with --dry-run: print the text parts")
    p.add_argument("--user", metavar="LOGIN", help="only this user (default: every user who is due)")
    p.add_argument("--set", choices=("off", "daily", "weekly"), help="with --user: change their digest")
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=cmd_digest)
