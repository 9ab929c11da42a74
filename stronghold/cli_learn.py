"""`stronghold learn` (feedback into the ledger, the ledger into the model) and
`stronghold model info|candidates|promote|rollback`."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stronghold import authres, delivered, heldback, learning, modelrollback, modelsync, personal
from stronghold.classifier import Model
from stronghold.cli_options import add_by
from stronghold.config import Config
from stronghold.feedback import record_pending
from stronghold.modelfile import ModelError, model_id, read_passport
from stronghold.store import accounts, ledger
from stronghold.store.db import Store
from stronghold.training import check_mail, read_messages, tokenize

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class LearnUsageError(Exception):
    """`learn` or `model` was asked something it cannot do (one-line message)."""


KNOWN_ERRORS = (LearnUsageError,)


@contextmanager
def _store(cfg: Config) -> Iterator[Store]:
    with Store(cfg.db_url) as store:
        store.upgrade()
        yield store


def _model_path(args: argparse.Namespace, cfg: Config) -> Path:
    return Path(args.model) if getattr(args, "model", None) else cfg.model_path


def _read(name: str, limit: int) -> list[tuple[str, bytes]]:
    """The messages of file ``name``, or ``-``: standard input, read up to ``limit`` bytes (the IMAP
    hook pipes whatever a mail user put in Junk, APPEND included: a message of any size used to be
    read whole, a 56 MB one taking 390 MB and 10 s; mail over ``max_message_bytes`` the filter never
    scores whole, so there is nothing to learn from it)."""
    if name == "-":
        raw = sys.stdin.buffer.read(limit + 1)
        if len(raw) > limit:
            raise LearnUsageError(f"standard input: over max_message_bytes ({limit} bytes), mail the filter "
                                  "does not score whole: not learned")
        check_mail("standard input", raw)
        return [("standard input", raw)]
    return read_messages(Path(name))


def _delivered_authserv_id(cfg: Config) -> str | None:
    """The authserv-id of the Authentication-Results the milter adds to what it delivers (None: it
    adds none, a checker in front of it does)."""
    return authres.our_authserv_id(cfg.authserv_id) if cfg.auth_mode == "check" else None


def _inputs(args: argparse.Namespace, cfg: Config) -> tuple[list[set[str]], list[bool | None]]:
    """Features and wanted labels of the named files (standard input up to ``max_message_bytes``);
    the same message with two labels is an error.  IMAP marks are copies as delivered: what delivery
    added is taken off first (``delivered.as_scored``), so they hash as the message log's copy."""
    limit = cfg.max_message_bytes
    own_id = _delivered_authserv_id(cfg)
    token_sets: list[set[str]] = []
    labels: list[bool | None] = []
    seen: dict[str, tuple[bool | None, str]] = {}
    names = {True: "spam", False: "ham", None: "forget"}
    for label, paths in ((True, args.spam or ()), (False, args.ham or ()), (None, args.forget or ())):
        for name in paths:
            for source, raw in _read(name, limit):
                tokens = tokenize(delivered.as_scored(raw, own_id) if args.source == "imap" else raw)
                key = ledger.content_hash(tokens)
                before = seen.setdefault(key, (label, source))
                if before[0] != label:
                    raise LearnUsageError(f"the same message is given as {names[before[0]]} ({before[1]}) "
                                          f"and as {names[label]} ({source})")
                token_sets.append(tokens)
                labels.append(label)
    return token_sets, labels


def _personal_scope(args: argparse.Namespace, who: str) -> str:
    """Whose personal layer the feedback also trains: a user's own marks (web, IMAP, Junk page)
    always train theirs; from the command line only with --personal."""
    if args.personal:
        return str(args.personal)
    return who if args.source in ("web", "imap", "junk") else ""


def _address_owner(session: Session, imap_user: str) -> str:
    """The login owning an IMAP user's address, else the address: one person's IMAP moves and web
    marks are one author's (one personal layer for their addresses, not two competing for them;
    one per-user bound; one name for --forget-by).  An address nobody owns is its own author, in
    lower case as addresses are kept: "M@x" and "m@x" are one mailbox, not two bounds and two layers."""
    address = imap_user.lower()
    owner = accounts.owners(session, [address]).get(address)
    return owner.login if owner is not None else address


def cmd_learn(args: argparse.Namespace, cfg: Config) -> int:
    live = _model_path(args, cfg)
    who = args.by or getpass.getuser()
    token_sets, labels = _inputs(args, cfg)
    if args.record_only:  # the IMAP hook: quick, needs only the database
        if args.from_feedback or args.forget_by or _readmit(args) or not token_sets:
            raise LearnUsageError("--record-only takes --spam/--ham/--forget files only")
        with _store(cfg) as store, store.session() as session:
            if args.source == "imap":
                who = _address_owner(session, who)
            change = ledger.record(session, token_sets, labels, source=args.source, who=who)
            personal = _personal_scope(args, who)
            if personal:
                ledger.record(session, token_sets, labels, source=args.source, who=who, scope=personal)
        print(f"ledger: {change.new} new, {change.same} already known, {change.flipped} flipped, "
              f"{change.forgotten} forgotten (applied by the next 'stronghold learn' or 'stronghold jobs')")
        return 0
    if not (token_sets or args.forget_by or args.from_feedback or _readmit(args)):
        raise LearnUsageError("nothing to learn: give --spam/--ham/--forget files, --forget-by, --readmit "
                              "or --from-feedback")
    read_passport(live)  # no model: say so before anything is recorded
    with _store(cfg) as store:
        with learning.locked(store, live) as finished:
            _print_finished(finished)
            with store.session() as session:
                change = ledger.record(session, token_sets, labels, source=args.source, who=who)
                forgotten_by = ledger.forget_by(session, args.forget_by) if args.forget_by else 0
                personal = _personal_scope(args, who)
                if personal:
                    ledger.record(session, token_sets, labels, source=args.source, who=who, scope=personal)
                if args.forget_by:
                    ledger.forget_by(session, args.forget_by, scope=args.forget_by)
            if args.forget_by and not (forgotten_by or token_sets or args.from_feedback):
                raise LearnUsageError(f"nothing to forget: the ledger holds no marks by {args.forget_by} "
                                      "(web marks are recorded under the login, IMAP moves under the mailbox address)")
            readmitted = learning.readmit(store, args.readmit_by, who) if _readmit(args) else 0
            if _readmit(args) and not (readmitted or token_sets or args.forget_by or args.from_feedback):
                raise LearnUsageError("nothing to readmit: no marks" + (f" by {args.readmit_by}" if args.readmit_by
                                                                         else "") + " are set aside")
            mark_feedback = None
            items: list[tuple[set[str], bool, str]] = []
            if args.from_feedback:
                items, mark_feedback, c = record_pending(store)
                change = ledger.Change(change.new + c.new, change.same + c.same,
                                       change.flipped + c.flipped, change.forgotten, change.unknown)
            print(f"ledger: {change.new} new, {change.same} already known, {change.flipped} flipped, "
                  f"{change.forgotten + forgotten_by} forgotten"
                  + (f", {readmitted} readmitted" if readmitted else "")
                  + (f", {change.unknown} not in the ledger" if change.unknown else ""))
            model, result = learning.update_candidate(store, live)
            if mark_feedback is not None:
                mark_feedback()
            p = model.passport
            if result.added == result.removed == 0 and not (token_sets or forgotten_by or items or readmitted):
                if args.from_feedback:  # asked for feedback, found none: not a usage mistake to correct
                    raise LearnUsageError("nothing to learn: no feedback from the web UI is waiting")
                raise LearnUsageError("nothing to learn: give --spam/--ham/--forget files, --forget-by or "
                                      "--from-feedback")
            print(f"learned {result.added} (took out {result.removed}); the model now holds "
                  f"{p.learned_spam} learned spam + {p.learned_ham} learned ham")
            if args.no_promote:
                print(f"candidate {learning.version_of(p)[:12]} kept; 'stronghold model promote' judges it")
            elif learning.version_of(p) == learning.version_of(read_passport(live)):
                print(f"the candidate is the live model {learning.version_of(p)[:12]}: nothing to judge")
            else:
                judgement = learning.promote(store, live, who, keep=cfg.model_versions_kept)
                word = "promoted" if judgement.promote else "held back"
                print(f"candidate {learning.version_of(p)[:12]} {word}: {judgement.reason}",
                      file=sys.stdout if judgement.promote else sys.stderr)
            _rebuild_layers(store, live)
    return 0


def _readmit(args: argparse.Namespace) -> bool:
    return bool(args.readmit or args.readmit_by)


def _rebuild_layers(store: Store, live: Path) -> None:
    count = personal.rebuild_if_any(store, live)
    if count is not None:
        print(f"personal layers: {count} rebuilt")


def cmd_model_info(args: argparse.Namespace, cfg: Config) -> int:
    path = _model_path(args, cfg)
    passport = read_passport(path)
    # the id first: X-Stronghold-Version, the history and the metrics name the model by it
    data: dict[str, object] = {"id": model_id(passport), "version": learning.version_of(passport),
                               "path": str(path), **passport.__dict__}
    with _store(cfg) as store:
        published = modelsync.active_version(store)
        data["published"] = published or ""
        data["set_aside"] = learning.set_aside_count(store)
        nodes: list[dict[str, Any]] = [{"node": n.node, "version": n.version, "seen": n.seen, "error": n.error,
                                        "current": n.version == published} for n in modelsync.nodes(store)]
    if args.json:
        print(json.dumps({**data, "nodes": nodes}, indent=2))
        return 0
    for key, value in data.items():
        print(f"{key}: {value}")
    for n in nodes:
        ago = time.time() - n["seen"]
        state = "runs the published model" if n["current"] else "DIFFERS from the published model"
        print(f"node {n['node']}: {n['version'][:12] or '(none)'} ({state}; reported {ago:.0f}s ago)"
              + (f" error: {n['error']}" if n["error"] else ""))
    return 0


def cmd_publish(args: argparse.Namespace, cfg: Config) -> int:
    live = _model_path(args, cfg)
    with _store(cfg) as store:
        version = modelsync.publish(store, live)
        learning.record_event(store, "published", version, args.by or getpass.getuser(), f"from {live}")
    print(f"published {version[:12]}: nodes with model_sync_seconds set pull it")
    return 0


def cmd_candidates(args: argparse.Namespace, cfg: Config) -> int:
    live = _model_path(args, cfg)
    cand = learning.candidate_path(live)
    with _store(cfg) as store:
        current = Model.load(live)
        try:
            candidate = learning.load_candidate(cand) if cand.exists() else None
        except ModelError as exc:
            print(exc)
            candidate = None
        if candidate is not None:
            p = candidate.passport
            print(f"candidate {learning.version_of(p)[:12]}: {p.learned_spam} learned spam + "
                  f"{p.learned_ham} learned ham (live {learning.version_of(current.passport)[:12]})")
            if learning.version_of(p) != learning.version_of(current.passport):
                j = learning.judge(candidate, current, heldback.read(live), learning.recent_feedback(store))
                print(f"would be {'promoted' if j.promote else 'held back'}: {j.reason}")
        elif not cand.exists():
            print("no candidate")
        interrupted = modelrollback.pending(live)
        if interrupted:
            print(f"a 'model rollback' to {interrupted} was interrupted: the next 'stronghold model rollback', "
                  "'learn' or 'jobs' finishes it")
        _print_set_aside(learning.set_aside_count(store))
        for event in learning.events(store, args.limit):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.ts))
            print(f"{when} {event.action} {event.version[:12]} by {event.who or '-'}: {event.reason}")
    return 0


def cmd_promote(args: argparse.Namespace, cfg: Config) -> int:
    live = _model_path(args, cfg)
    with _store(cfg) as store, learning.locked(store, live) as finished:
        _print_finished(finished)
        judgement = learning.promote(store, live, args.by or getpass.getuser(), force=args.force,
                                     keep=cfg.model_versions_kept)
    if not judgement.promote:
        print(f"held back: {judgement.reason}", file=sys.stderr)
        return 1
    print(f"promoted: {judgement.reason}")
    return 0


def _print_set_aside(count: int) -> None:
    if count:
        print(f"{count} mark(s) set aside by a rollback: not learned into the shared model until "
              "'stronghold learn --readmit [--readmit-by WHO]' (or taken out: 'learn --forget-by WHO')")


def _print_finished(done: modelrollback.Rollback | None) -> None:
    """Say that an interrupted rollback was finished first (``learning.locked``)."""
    if done is None:
        return
    aside = ("" if done.set_aside is None
             else f"; {done.set_aside} mark(s) the rolled-back model had learned are set aside")
    print(f"finished the interrupted 'model rollback': {done.version[:12]} (from {done.restored}) is live "
          f"again and the learning ledger follows it; the candidate was discarded{aside}")


def cmd_rollback(args: argparse.Namespace, cfg: Config) -> int:
    live = _model_path(args, cfg)
    with _store(cfg) as store, learning.model_lock(live):
        done = modelrollback.rollback(store, live, args.by or getpass.getuser())
        if done.resumed:
            _print_finished(done)
            print("no further rollback was done: run 'stronghold model rollback' again to go one more "
                  "version back")
        else:
            print(f"rolled back: {done.version[:12]} (from {done.restored}) is live again; the candidate "
                  f"was discarded; {done.set_aside} mark(s) the rolled-back model had learned are set aside")
        _print_set_aside(learning.set_aside_count(store))
        _rebuild_layers(store, live)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    model_help = "the live model file (default: the configured model)"
    p = sub.add_parser("learn", help="teach the model: feedback into the ledger, the ledger into the model")
    p.add_argument("--spam", nargs="+", metavar="FILE", help="messages that are spam ('-': standard input)")
    p.add_argument("--ham", nargs="+", metavar="FILE", help="messages that are not spam ('-': standard input)")
    p.add_argument("--forget", nargs="+", metavar="FILE", help="take these messages out of what was learned")
    p.add_argument("--forget-by", metavar="WHO",
                   help="take out everything WHO taught (as --by recorded it: a login, or a mailbox address)")
    p.add_argument("--readmit", action="store_true",
                   help="let the marks a model rollback set aside into the shared model again")
    p.add_argument("--readmit-by", metavar="WHO", help="readmit only the set-aside marks WHO gave")
    p.add_argument("--from-feedback", action="store_true",
                   help="learn what users marked spam / not spam in the web UI")
    p.add_argument("--source", choices=ledger.SOURCES, default="cli",
                   help="where the feedback came from (default: cli)")
    add_by(p, "gave the feedback", "the user running the command")
    p.add_argument("--personal", metavar="LOGIN",
                   help="also train LOGIN's personal layer (a user login, or a mail address)")
    p.add_argument("--record-only", action="store_true",
                   help="only write the ledger (a later 'stronghold learn' applies it)")
    p.add_argument("--no-promote", action="store_true", help="update the candidate, do not judge or promote it")
    p.add_argument("--model", metavar="M", help=model_help)
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("model", help="model information, candidates, promotion and rollback")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    a = msub.add_parser("info", help="the live model's passport, the published version and every node's")
    a.add_argument("--model", metavar="M", help=model_help)
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=cmd_model_info)
    a = msub.add_parser("publish", help="make the live model file the one every node runs (after 'train')")
    a.add_argument("--model", metavar="M", help=model_help)
    add_by(a, "publishes", "the user running the command")
    a.set_defaults(func=cmd_publish)
    a = msub.add_parser("candidates", help="the candidate, how it compares, and the model's history")
    a.add_argument("--model", metavar="M", help=model_help)
    a.add_argument("--limit", type=int, default=20, metavar="N", help="history events to show (default: 20)")
    a.set_defaults(func=cmd_candidates)
    a = msub.add_parser("promote", help="judge the candidate and make it live if it is not worse")
    a.add_argument("--model", metavar="M", help=model_help)
    a.add_argument("--force", action="store_true", help="promote even if it is worse (recorded)")
    add_by(a, "promotes", "the user running the command")
    a.set_defaults(func=cmd_promote)
    a = msub.add_parser("rollback", help="make the previous live model live again")
    a.add_argument("--model", metavar="M", help=model_help)
    add_by(a, "rolls back", "the user running the command")
    a.set_defaults(func=cmd_rollback)
