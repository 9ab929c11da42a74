"""`stronghold milter`, `web`, `db` and `mailbox`: the long-running parts and their jobs."""

from __future__ import annotations

import argparse
import io
import json

from stronghold import config as config_mod
from stronghold import nativecore, sizelimits
from stronghold.antivirus import EICAR, ClamdScanner, ScannerError
from stronghold.classifier import Model
from stronghold.config import Config, ConfigError
from stronghold.mailbox_expiry import ExpiryError, expire, run_every
from stronghold.modelfile import ModelError
from stronghold.store import quarantine
from stronghold.store.db import Store
from stronghold.store.errors import EntryError, StoreError

KNOWN_ERRORS = (StoreError, EntryError, ScannerError, ExpiryError)


def outcomes(cfg: Config) -> list[str]:
    """What each finding gets with these settings, in words (docs/precedence.md has the rules)."""
    spam_at = f"{cfg.spam_threshold:.4f}" if cfg.spam_threshold is not None else "the model's threshold"
    words = {"tag": "tag (delivered into Junk)", "quarantine": "quarantine (held)",
             "reject": "reject (550 at SMTP)"}
    lines = [f"outcome: spam (score >= {spam_at}): {words[cfg.spam_action]}",
             f"outcome: spam (score >= {cfg.reject_threshold}): {words[cfg.spam_action_high]}",
             "outcome: virus: " + ("reject (554 at SMTP)" if cfg.virus_action == "reject"
                                   else "quarantine (released by admins only)"),
             "outcome: sender on a block list: reject (550)"]
    if "reject" in (cfg.spam_action, cfg.spam_action_high):
        lines.append("note: spam rejected at SMTP cannot be released; recipients who disagree "
                     "still get their own outcome")
    return lines


def check_config(cfg: Config) -> int:
    """Print the settings and prove each dependency works; non-zero if one does not."""
    from stronghold.milter_server import engine, socket_spec
    for name, value, help_text in cfg.describe():
        shown = "(set)" if name == "web_secret_key" and value else value
        print(f"{name} = {shown!s:40}  # {help_text}")
    print(f"milter socket: {socket_spec(cfg)}")
    for line in outcomes(cfg):
        print(line)
    problems = 0
    try:
        print(f"ok: {engine(cfg)} protocol engine (milter_engine = {cfg.milter_engine})")
    except ConfigError as exc:
        problems += 1
        print(f"FAIL: {exc}")
    try:
        model = Model.load(cfg.model_path)
        print(f"ok: model {cfg.model_path} (threshold {model.spam_threshold:.4f})")
    except ModelError as exc:
        print(f"FAIL: {exc}")
        problems += 1
    try:
        with Store(cfg.db_url) as store:
            store.ping()
            print(f"ok: database {store.engine.url.render_as_string(hide_password=True)}")
            problems += schema_line(store)
            with store.session() as session:
                quarantine.find(session, recipients=None, limit=1)
            print("ok: quarantine store readable")
    except StoreError as exc:
        print(f"FAIL: {exc}")
        problems += 1
    for warning in sizelimits.check(cfg):
        print(f"WARNING: {warning}")
    native = nativecore.status()
    print(f"{'WARNING' if 'in Python' in native else 'ok'}: {native}")
    if cfg.clamd_socket == "none":
        print("WARNING: clamd_socket = none: no virus scanning")
    else:
        scanner = ClamdScanner(cfg.clamd_socket, cfg.clamd_timeout)
        try:
            result = scanner.scan(io.BytesIO(EICAR))
            if result.infected:
                print(f"ok: clamd {cfg.clamd_socket} found the EICAR test string ({result.virus})")
            else:
                print(f"FAIL: clamd {cfg.clamd_socket} did not detect the EICAR test string")
                problems += 1
        except ScannerError as exc:
            print(f"FAIL: {exc}")
            problems += 1
    return 1 if problems else 0


def schema_line(store: Store) -> int:
    """Print where the schema stands; 1 when this release cannot run on it (newer, or unknown)."""
    from stronghold.store import schema  # alembic: only where the schema is looked at
    found, newest = store.revision()
    if found == newest:
        print(f"ok: database schema at revision {found}")
    elif found is None:
        print(f"ok: database schema: none yet ('stronghold db upgrade' creates revision {newest})")
    elif found in schema.revisions():
        print(f"ok: database schema at revision {found} ('stronghold db upgrade' brings it to {newest})")
    else:
        print(f"FAIL: database schema at revision {found}, newer than this release knows ({newest}): "
              "upgrade Stronghold on this node")
        return 1
    return 0


def cmd_milter(args: argparse.Namespace, cfg: Config) -> int:
    if args.check_config:
        return check_config(cfg)
    from stronghold.milter_server import serve
    return serve(cfg)


def cmd_web(args: argparse.Namespace, cfg: Config) -> int:
    from webui.serve import serve
    return serve(cfg)


def cmd_db_upgrade(args: argparse.Namespace, cfg: Config) -> int:
    with Store(cfg.db_url) as store:
        revision = store.upgrade()
        print(f"database at revision {revision}: {store.engine.url.render_as_string(hide_password=True)}")
    return 0


def cmd_db_status(args: argparse.Namespace, cfg: Config) -> int:
    """Where the schema stands against this release; 0 only when current (changes nothing)."""
    from stronghold.store import schema  # alembic: only for the db commands
    with Store(cfg.db_url) as store:
        found, newest = store.revision()
        where = store.engine.url.render_as_string(hide_password=True)
    if found == newest:
        print(f"database at revision {found}, current: {where}")
        return 0
    if found is None:
        print(f"database has no schema yet (this release: {newest}): run 'stronghold db upgrade': {where}")
    elif found in schema.revisions():
        print(f"database at revision {found}, this release needs {newest}: run 'stronghold db upgrade': {where}")
    else:
        print(f"database at revision {found}, newer than this release ({newest}): upgrade Stronghold: {where}")
    return 1


def cmd_db_downgrade(args: argparse.Namespace, cfg: Config) -> int:
    with Store(cfg.db_url) as store:
        revision = store.downgrade(args.revision)
        print(f"database at revision {revision}: {store.engine.url.render_as_string(hide_password=True)}")
    return 0


def cmd_config_example(args: argparse.Namespace, cfg: Config) -> int:
    values: dict[str, str] = {}
    for item in args.set or ():
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected NAME=VALUE")
        values[name.strip()] = value.strip()
    checked = config_mod.load(None, values, environ={})  # refuse what the milter would refuse
    print(config_mod.example({name: getattr(checked, name) for name in values}), end="")
    return 0


def cmd_mailbox_expire(args: argparse.Namespace, cfg: Config) -> int:
    if args.every is not None:
        if args.every <= 0 or args.dry_run:
            raise ExpiryError("--every takes a positive number of seconds, without --dry-run")
        run_every(cfg.dovecot_config, cfg.junk_retention_days, args.every)
        return 0
    done = expire(cfg.dovecot_config, cfg.junk_retention_days, dry_run=args.dry_run)
    if args.json:
        print(json.dumps([{"folder": e.folder, "rule": e.rule, "messages": e.messages,
                           "expunged": not args.dry_run} for e in done]))
    elif not done:
        print("junk_retention_days = 0: Junk and Trash are kept forever")
    for e in [] if args.json else done:
        verb = "would expunge" if args.dry_run else "expunged"
        print(f"{e.folder}: {verb} {e.messages} message(s) ({e.rule}, all users)")
    return 0


def _serves(args: argparse.Namespace) -> bool:
    """Whether this run keeps going (a service, logging INFO) rather than doing one thing."""
    if args.command == "milter":
        return not args.check_config
    return getattr(args, "every", None) is not None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("milter", help="run the milter for Postfix")
    p.add_argument("--check-config", action="store_true",
                   help="print settings, check model, database and clamd (EICAR), then exit")
    p.set_defaults(func=cmd_milter, service=_serves)
    p = sub.add_parser("web", help="run the web UI (on web_bind, loopback by default)")
    p.set_defaults(func=cmd_web, service=True)
    p = sub.add_parser("config", help="settings files")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    pe = csub.add_parser("example", help="print a settings file listing every setting and its meaning")
    pe.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="a value to write instead of the default (checked as the milter would; repeat)")
    pe.set_defaults(func=cmd_config_example)
    p = sub.add_parser("mailbox", help="jobs on users' mailboxes in Dovecot")
    msub = p.add_subparsers(dest="mailbox_command", required=True, metavar="ACTION")
    pe = msub.add_parser("expire", help="expunge Junk and Trash mail older than junk_retention_days")
    pe.add_argument("--dry-run", action="store_true", help="count what would go, expunge nothing")
    pe.add_argument("--json", action="store_true", help="print one JSON list (folder, rule, messages, expunged)")
    pe.add_argument("--every", type=float, metavar="SECONDS",
                    help="keep running, expiring every SECONDS (the local stack's scheduler; default: once)")
    pe.set_defaults(func=cmd_mailbox_expire, service=_serves)
    p = sub.add_parser("db", help="database schema")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dsub.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    dsub.add_parser("status", help="the schema's revision against this release's (exit 1 unless current)") \
        .set_defaults(func=cmd_db_status)
    pd = dsub.add_parser("downgrade", help="take the schema back to REVISION with this (newer) release, "
                                           "before installing the older one; drops what later revisions added")
    pd.add_argument("revision", help="the newest revision the older release knows (its last migration)")
    pd.set_defaults(func=cmd_db_downgrade)
