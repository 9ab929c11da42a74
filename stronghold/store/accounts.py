"""Users and the addresses they own."""

from __future__ import annotations

import hashlib
import secrets
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session, object_session, selectinload

from stronghold.lists import PatternError, normalize_address
from stronghold.store import entries, layers, ledger
from stronghold.store.errors import EntryError
from stronghold.store.tables import Address, ReleasedAddress, User, WebSession

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("timing-equaliser")
MIN_PASSWORD = 10
ROLES = ("user", "admin")


def check_password_strength(password: str) -> None:
    """EntryError unless ``password`` is between MIN_PASSWORD and 1024 characters."""
    if len(password) < MIN_PASSWORD:
        raise EntryError(f"the password needs at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise EntryError("the password is too long")


def _clean_login(login: str) -> str:
    """Lower case, NFC; refuses spaces and every control, format (bidi) or unassigned character.

    A right-to-left override would let ``w5\u202enimda`` display as "w5admin".
    """
    login = unicodedata.normalize("NFC", login.strip().lower())
    if not login or len(login) > 254:
        raise EntryError("a login is 1 to 254 characters")
    for c in login:
        category = unicodedata.category(c)
        if category[0] in "CZ":
            name = unicodedata.name(c, f"U+{ord(c):04X}")
            raise EntryError(f"a login cannot contain spaces or invisible characters (found {name})")
    return login


def check_new_login(session: Session, login: str) -> str:
    """``login`` cleaned for a new user; EntryError if it is unfit or taken."""
    login = _clean_login(login)
    if session.scalar(select(User).where(User.login == login)) is not None:
        raise EntryError(f"user {login} exists already")
    return login


def add_user(session: Session, login: str, password: str, admin: bool = False) -> User:
    """Create a user (login cleaned, password hashed); EntryError if the login is taken or unfit."""
    login = check_new_login(session, login)
    check_password_strength(password)
    user = User(login=login, password_hash=_hasher.hash(password), role="admin" if admin else "user",
                disabled=False)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, login: str) -> User | None:
    """The user with this login (any case, surrounding spaces ignored), addresses loaded; None if none."""
    return session.scalar(select(User).options(selectinload(User.addresses))
                          .where(User.login == login.strip().lower()))


def get_user_by_id(session: Session, user_id: int) -> User | None:
    """The user with this id, or None."""
    return session.get(User, user_id)


def logins(session: Session, user_ids: Iterable[int]) -> dict[int, str]:
    """user id -> login of those that exist."""
    wanted = set(user_ids)
    if not wanted:
        return {}
    return {uid: login for uid, login in session.execute(select(User.id, User.login).where(User.id.in_(wanted)))}


def digest_users(session: Session, only: str | None = None) -> list[User]:
    """Enabled users who get a digest (or just ``only``, if that is one of them), by login."""
    query = select(User).where(User.disabled.is_(False), User.digest != "off")
    if only:
        query = query.where(User.login == only.strip().lower())
    return list(session.scalars(query.order_by(User.login)))


def claim_digest(session: Session, user_id: int, old: float | None, now: float) -> bool:
    """Mark the user's digest sent at ``now`` if it still says ``old``: of two nodes, one wins."""
    sent = User.digest_sent.is_(None) if old is None else User.digest_sent == old
    result = cast(CursorResult[Any], session.execute(update(User).where(User.id == user_id, sent)
                                                     .values(digest_sent=now)))
    return result.rowcount == 1


def unclaim_digest(session: Session, user_id: int, old: float | None, now: float) -> None:
    """Give a claim back (the digest could not be sent)."""
    session.execute(update(User).where(User.id == user_id, User.digest_sent == now).values(digest_sent=old))


def all_users(session: Session) -> list[User]:
    """Every user with their addresses, by login."""
    return list(session.scalars(select(User).options(selectinload(User.addresses)).order_by(User.login)))


def authenticate(session: Session, login: str, password: str) -> User | None:
    """The user if login and password match and the account is enabled.

    Unknown logins cost the same hashing time as known ones (no enumeration by timing).
    """
    user = get_user(session, login) if login else None
    stored = user.password_hash if user is not None else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def set_password(session: Session, user: User, password: str) -> None:
    """New password; every web session of the user ends (on every web node)."""
    check_password_strength(password)
    user.password_hash = _hasher.hash(password)
    end_sessions(session, user.id)


def set_disabled(user: User, disabled: bool) -> None:
    """Disable or enable ``user``; disabling also ends their web sessions."""
    user.disabled = disabled
    session = object_session(user)
    if disabled and session is not None:
        end_sessions(session, user.id)


def set_role(session: Session, user: User, role: str) -> None:
    """Make ``user`` an admin or a plain user; EntryError for another role, or for taking the role
    of the last enabled admin (someone must be able to manage the site)."""
    if role not in ROLES:
        raise EntryError(f"a role is one of {', '.join(ROLES)}")
    if user.is_admin and role != "admin":
        others = session.scalar(select(User.id).where(User.role == "admin", User.disabled.is_(False),
                                                      User.id != user.id).limit(1))
        if others is None:
            raise EntryError(f"{user.login} is the last enabled administrator")
    user.role = role


def delete_user(session: Session, user: User) -> None:
    """Delete the user; their addresses are released (lists dropped, past mail hidden from the next owner),
    and their personal layer and its marks go (a later user given the same login starts without them)."""
    for address in user.addresses:
        _forget(session, address.address)
    ledger.drop_personal(session, user.login)
    layers.replace(session, {user.login: None})
    end_sessions(session, user.id)
    session.delete(user)  # the address rows go with it


def check_assignable(session: Session, address: str, user: User | None = None) -> tuple[str, Address | None]:
    """(``address`` normalised, its row if ``user`` owns it already); EntryError if it is no address
    or another user's (named, with the way to move it: an address has exactly one owner)."""
    try:
        norm = normalize_address(address)
    except PatternError as exc:
        raise EntryError(str(exc)) from exc
    existing = session.scalar(select(Address).options(selectinload(Address.user)).where(Address.address == norm))
    if existing is None or (user is not None and existing.user_id == user.id):
        return norm, existing
    owner = existing.user.login
    raise EntryError(f"{norm} belongs to {owner}: remove it from {owner} first (its lists go with it; "
                     "the next owner sees only the mail that comes after)")


def assign_address(session: Session, user: User, address: str) -> Address:
    """Give ``address`` to ``user``; an address has exactly one owner."""
    norm, existing = check_assignable(session, address, user)
    if existing is not None:
        return existing
    released = session.get(ReleasedAddress, norm)
    row = Address(address=norm, user_id=user.id, since=released.released if released else 0.0)
    session.add(row)
    session.flush()
    return row


def _forget(session: Session, address: str) -> None:
    """The address leaves its owner: their list entries go, and its mail so far stays theirs."""
    entries.drop_owner(session, address)
    released = session.get(ReleasedAddress, address)
    if released is None:
        session.add(ReleasedAddress(address=address, released=time.time()))
    else:
        released.released = time.time()


def release_address(session: Session, user: User, address: str) -> None:
    """Take ``address`` from ``user`` (its lists dropped, past mail hidden from a next owner);
    EntryError if it is not theirs."""
    try:
        norm = normalize_address(address)
    except PatternError as exc:
        raise EntryError(str(exc)) from exc
    row = session.scalar(select(Address).where(Address.address == norm, Address.user_id == user.id))
    if row is None:
        raise EntryError(f"{norm} is not one of {user.login}'s addresses")
    _forget(session, norm)
    session.delete(row)
    session.flush()


def local_domains(session: Session) -> set[str]:
    """The domains this site hosts: those of the addresses its users own (enabled or not)."""
    return {address.rsplit("@", 1)[1] for address in session.scalars(select(Address.address))}


def local_addresses(session: Session) -> set[str]:
    """Every address a user here owns."""
    return set(session.scalars(select(Address.address)))


@dataclass(frozen=True)
class Owner:
    """Who owns an address: their login, whether they are disabled, since when it is theirs."""

    login: str
    disabled: bool
    since: float


def owners(session: Session, addresses: Iterable[str]) -> dict[str, Owner]:
    """{address: its owner} of those ``addresses`` that a user owns."""
    wanted = sorted(set(addresses))
    if not wanted:
        return {}
    rows = session.execute(select(Address.address, User.login, User.disabled, Address.since)
                           .join(User, User.id == Address.user_id).where(Address.address.in_(wanted)))
    return {address: Owner(login, bool(disabled), since) for address, login, disabled, since in rows}


def owned_addresses(user: User) -> list[str]:
    """The addresses ``user`` owns, sorted."""
    return [a.address for a in user.addresses]


def owned_since(user: User) -> dict[str, float]:
    """{address: time from which its mail is this user's} (0: all of it)."""
    return {a.address: a.since for a in user.addresses}


# Web sessions: the cookie carries a random id; the store keeps only its SHA-256, so a
# leaked database does not hand out live sessions.  Deleting rows ends sessions on every node.

def _session_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, user: User, lifetime: float) -> str:
    """A new web session for ``user``; returns the id for the cookie."""
    now = time.time()
    session.execute(delete(WebSession).where(WebSession.expires < now))
    token = secrets.token_urlsafe(32)
    session.add(WebSession(id=_session_key(token), user_id=user.id, created=now, expires=now + lifetime))
    return token


def session_user(session: Session, token: str) -> User | None:
    """The enabled user of a live web session, else None."""
    row = session.get(WebSession, _session_key(token))
    if row is None or row.expires < time.time():
        return None
    user = session.get(User, row.user_id)
    return None if user is None or user.disabled else user


def end_session(session: Session, token: str) -> None:
    """End the web session whose cookie carries ``token`` (nothing if there is none)."""
    session.execute(delete(WebSession).where(WebSession.id == _session_key(token)))


def end_sessions(session: Session, user_id: int) -> int:
    """End every web session of a user; returns how many ended."""
    result = session.execute(delete(WebSession).where(WebSession.user_id == user_id))
    return int(getattr(result, "rowcount", 0) or 0)


def set_spam_threshold(session: Session, user: User, value: float | None, bounds: tuple[float, float]) -> None:
    """The user's own spam threshold (None: the system's); refused outside the admin's ``bounds``.

    Milters read thresholds with the lists, so the lists' version is bumped."""
    low, high = bounds
    if value is not None and not low <= value <= high:
        raise EntryError(f"the threshold must be between {low:g} and {high:g}")
    user.spam_threshold = value
    entries.bump_version(session)

