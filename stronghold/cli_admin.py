"""`stronghold user …` and `stronghold list …`: scripting what admins do in the web UI."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from stronghold import blockrisk
from stronghold.config import Config
from stronghold.store import accounts
from stronghold.store import entries as lists_store
from stronghold.store.db import Store
from stronghold.store.errors import EntryError, StoreError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

KNOWN_ERRORS = (StoreError, EntryError)


@contextmanager
def _session(cfg: Config) -> Iterator[Session]:
    """A transaction on the configured store (schema brought up to date), closed afterwards."""
    with Store(cfg.db_url) as store:
        store.upgrade()
        with store.session() as session:
            yield session


def _password(args: argparse.Namespace) -> str:
    if getattr(args, "password_env", None):
        value = os.environ.get(args.password_env, "")
        if not value:
            raise EntryError(f"environment variable {args.password_env} is empty")
        return value
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise EntryError("the passwords differ")
    return first


def _user(session, login: str):
    user = accounts.get_user(session, login)
    if user is None:
        raise EntryError(f"no user {login}")
    return user


def cmd_user_add(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        user = accounts.add_user(s, args.login, _password(args), admin=args.admin)
        for address in args.address or ():
            accounts.assign_address(s, user, address)
        print(f"user {user.login} ({user.role}) added"
              + (f" with {', '.join(args.address)}" if args.address else ""))
    return 0


def cmd_user_passwd(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        accounts.set_password(s, _user(s, args.login), _password(args))
    print(f"password of {args.login} changed")
    return 0


def cmd_user_disable(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        accounts.set_disabled(_user(s, args.login), not args.enable)
    print(f"user {args.login} {'enabled' if args.enable else 'disabled'}")
    return 0


def cmd_user_role(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        accounts.set_role(s, _user(s, args.login), args.role)  # never the last enabled administrator
    print(f"user {args.login} is now {'an administrator' if args.role == 'admin' else 'a plain user'}")
    return 0


def cmd_user_rm(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        accounts.delete_user(s, _user(s, args.login))
    print(f"user {args.login} deleted")
    return 0


def cmd_user_address(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        user = _user(s, args.login)
        for address in args.add or ():
            accounts.assign_address(s, user, address)
        for address in args.rm or ():
            accounts.release_address(s, user, address)
        s.flush()
        s.refresh(user)  # the addresses as stored now, not as loaded before the change
        print(f"{user.login}: {', '.join(accounts.owned_addresses(user)) or '(no addresses)'}")
    return 0


def cmd_user_ls(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        for user in accounts.all_users(s):
            flags = " disabled" if user.disabled else ""
            print(f"{user.login}\t{user.role}{flags}\t{' '.join(accounts.owned_addresses(user))}")
    return 0


def _owner(args: argparse.Namespace) -> str | None:
    if args.owner in (None, "", "global"):
        return None
    return args.owner.strip().lower()


FORCE_HINT = "--force adds it anyway"


def cmd_list_add(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        if args.kind == "block" and not args.force:
            _, risks = blockrisk.of_pattern(blockrisk.for_list(s, _owner(args)), args.pattern)
            if risks:
                raise EntryError(f"{' '.join(risks)} ({FORCE_HINT})")
        entry = lists_store.add_entry(s, _owner(args), args.kind, args.pattern, args.comment or "",
                                      trust_unauthenticated=args.trust_unauthenticated)
    print(f"#{entry.id} {entry.owner or 'global'} {entry.kind} {entry.pattern}{_trust_note(entry)}")
    return 0


TRUST_WARNING = "TRUSTED WITHOUT AUTHENTICATION: anyone can forge this sender"


def _trust_note(entry: lists_store.ListEntry) -> str:
    return f"\t[{TRUST_WARNING}]" if entry.trust_unauthenticated else ""


def cmd_list_trust(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        entry = lists_store.set_trust(s, args.id, [_owner(args)], not args.off)
    state = "now matches unauthenticated senders" if entry.trust_unauthenticated else \
        "now needs an authenticated sender"
    print(f"#{entry.id} {entry.pattern} {state}{_trust_note(entry)}")
    return 0


def cmd_list_rm(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        owner = _owner(args)
        if args.id is not None:
            entry = lists_store.remove_entry(s, args.id, [owner])
        else:
            if args.kind is None or args.pattern is None:
                raise EntryError("say which entry: --id N, or the list (allow/block) and the pattern")
            found = [e for e in lists_store.entries(s, owner, args.kind)
                     if e.pattern == args.pattern.strip().lower()]
            if not found:
                raise EntryError(f"{args.pattern} is not on that list")
            entry = lists_store.remove_entry(s, found[0].id, [owner])
    print(f"removed #{entry.id} {entry.owner or 'global'} {entry.kind} {entry.pattern}")
    return 0


def cmd_list_ls(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        found = lists_store.entries(s, _owner(args), args.kind)
    for e in found:
        print(f"{e.id}\t{e.kind}\t{e.pattern}\t{e.comment}{_trust_note(e)}")
    if any(e.kind == "allow" for e in found):
        print("# allow entries match only authenticated senders (a From aligned with DKIM or SPF, or an "
              "envelope sender with SPF pass), unless trusted without authentication", file=sys.stderr)
    return 0


def cmd_list_import(args: argparse.Namespace, cfg: Config) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EntryError(f"{args.file} is not UTF-8 text (byte {exc.start}): save the CSV as UTF-8") from exc
    except OSError as exc:
        raise EntryError(f"{args.file}: {exc.strerror}") from exc
    with _session(cfg) as s:
        check = blockrisk.for_list(s, _owner(args))
        how = f"Add it on its own with 'list add' ({FORCE_HINT}), or import with --force."

        def refuse_risky(kind: str, pattern: str) -> str | None:
            return None if args.force else blockrisk.import_refusal(check, kind, pattern, how)

        report = lists_store.import_csv(s, _owner(args), text, args.kind, refuse=refuse_risky)
    for line in report.skipped + report.problems:
        print(line, file=sys.stderr)
    if report.problems:
        print(f"nothing imported: {len(report.problems)} lines refused; fix them and import again")
        return 1
    print(f"imported {report.added} entries, {len(report.skipped)} already there")
    if report.trusted:
        print(f"warning: {report.trusted} allow entries trusted without authentication: anyone can forge "
              "those senders", file=sys.stderr)
    return 0


def cmd_list_export(args: argparse.Namespace, cfg: Config) -> int:
    with _session(cfg) as s:
        sys.stdout.write(lists_store.export_csv(lists_store.entries(s, _owner(args), args.kind)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    login_help = "the user's login name"
    env_help = ("read the password from this environment variable (default: prompt on a terminal, "
                     "else the first line of standard input)")
    p = sub.add_parser("user", help="manage users")
    us = p.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    a = us.add_parser("add", help="create a user (password from a tty, stdin or --password-env)")
    a.add_argument("login", help=login_help)
    a.add_argument("--admin", action="store_true", help="an administrator (default: a plain user)")
    a.add_argument("--address", nargs="+", metavar="ADDR", help="addresses the user owns")
    a.add_argument("--password-env", metavar="VAR", help=env_help)
    a.set_defaults(func=cmd_user_add)
    a = us.add_parser("passwd", help="set a user's password")
    a.add_argument("login", help=login_help)
    a.add_argument("--password-env", metavar="VAR", help=env_help)
    a.set_defaults(func=cmd_user_passwd)
    a = us.add_parser("disable", help="disable (or --enable) a user")
    a.add_argument("login", help=login_help)
    a.add_argument("--enable", action="store_true", help="enable the user again instead")
    a.set_defaults(func=cmd_user_disable)
    a = us.add_parser("role", help="make a user an administrator or a plain user (their open sessions "
                      "follow at once; never the last enabled administrator)")
    a.add_argument("login", help=login_help)
    a.add_argument("role", choices=accounts.ROLES, help="admin or user")
    a.set_defaults(func=cmd_user_role)
    a = us.add_parser("rm", help="delete a user")
    a.add_argument("login", help=login_help)
    a.set_defaults(func=cmd_user_rm)
    a = us.add_parser("address", help="give or take addresses")
    a.add_argument("login", help=login_help)
    a.add_argument("--add", nargs="+", metavar="ADDR", help="addresses to give the user")
    a.add_argument("--rm", nargs="+", metavar="ADDR", help="addresses to take from the user")
    a.set_defaults(func=cmd_user_address)
    us.add_parser("ls", help="list users").set_defaults(func=cmd_user_ls)

    p = sub.add_parser("list", help="manage allow/block lists")
    ls = p.add_subparsers(dest="list_command", required=True, metavar="ACTION")
    owner_help = "the address whose list this is, or 'global' (default)"
    kind_help = "which list: allow or block"
    force_help = ("add block entries even when they match a domain this site hosts, the list owner's "
                  "address, a user's address (global list) or a whole public suffix (refused otherwise)")
    a = ls.add_parser("add", help="add an entry")
    a.add_argument("kind", choices=("allow", "block"), help=kind_help)
    a.add_argument("pattern", help="name@example.com, @example.com or *.example.com")
    a.add_argument("--owner", help=owner_help)
    a.add_argument("--comment", help="a note kept with the entry (shown by 'list ls')")
    a.add_argument("--trust-unauthenticated", action="store_true",
                   help="allow entries: match even when the sender is not authenticated (forgeable)")
    a.add_argument("--force", action="store_true", help=force_help)
    a.set_defaults(func=cmd_list_add)
    a = ls.add_parser("trust", help="let an allow entry match unauthenticated senders (--off: stop)")
    a.add_argument("id", type=int, help="the entry's number (from 'list ls')")
    a.add_argument("--off", action="store_true", help="require an authenticated sender again")
    a.add_argument("--owner", help=owner_help)
    a.set_defaults(func=cmd_list_trust)
    a = ls.add_parser("rm", help="remove an entry (by --id, or kind and pattern)")
    a.add_argument("kind", nargs="?", choices=("allow", "block"), help=kind_help)
    a.add_argument("pattern", nargs="?", help="the pattern as listed")
    a.add_argument("--id", type=int, help="the entry's number (from 'list ls') instead of kind and pattern")
    a.add_argument("--owner", help=owner_help)
    a.set_defaults(func=cmd_list_rm)
    a = ls.add_parser("ls", help="show entries")
    a.add_argument("kind", nargs="?", choices=("allow", "block"), help="only this list (default: both)")
    a.add_argument("--owner", help=owner_help)
    a.set_defaults(func=cmd_list_ls)
    a = ls.add_parser("import", help="add entries from CSV (kind,pattern[,comment[,trust_unauthenticated "
                                     "yes/no]]), all or nothing")
    a.add_argument("file", help="CSV file or -")
    a.add_argument("--kind", choices=("allow", "block"), help="for rows that have no kind column")
    a.add_argument("--force", action="store_true", help=force_help)
    a.add_argument("--owner", help=owner_help)
    a.set_defaults(func=cmd_list_import)
    a = ls.add_parser("export", help="write entries as CSV")
    a.add_argument("kind", nargs="?", choices=("allow", "block"), help="only this list (default: both)")
    a.add_argument("--owner", help=owner_help)
    a.set_defaults(func=cmd_list_export)
