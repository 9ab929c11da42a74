"""Users and the addresses they own."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from stronghold.lists import PatternError, normalize_address
from stronghold.store.errors import EntryError
from stronghold.store.tables import Address, User

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("timing-equaliser")
MIN_PASSWORD = 10
ROLES = ("user", "admin")


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise EntryError(f"the password needs at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise EntryError("the password is too long")


def _clean_login(login: str) -> str:
    login = login.strip().lower()
    if not login or len(login) > 254 or any(c.isspace() for c in login):
        raise EntryError("a login is 1 to 254 characters without spaces")
    return login


def add_user(session: Session, login: str, password: str, admin: bool = False) -> User:
    login = _clean_login(login)
    check_password_strength(password)
    if session.scalar(select(User).where(User.login == login)) is not None:
        raise EntryError(f"user {login} exists already")
    user = User(login=login, password_hash=_hasher.hash(password), role="admin" if admin else "user",
                disabled=False)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, login: str) -> User | None:
    return session.scalar(select(User).options(selectinload(User.addresses))
                          .where(User.login == login.strip().lower()))


def get_user_by_id(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def all_users(session: Session) -> list[User]:
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
    check_password_strength(password)
    user.password_hash = _hasher.hash(password)


def set_disabled(user: User, disabled: bool) -> None:
    user.disabled = disabled


def delete_user(session: Session, user: User) -> None:
    session.delete(user)


def assign_address(session: Session, user: User, address: str) -> Address:
    """Give ``address`` to ``user``; an address has exactly one owner."""
    try:
        norm = normalize_address(address)
    except PatternError as exc:
        raise EntryError(str(exc)) from exc
    existing = session.scalar(select(Address).where(Address.address == norm))
    if existing is not None:
        if existing.user_id == user.id:
            return existing
        raise EntryError(f"{norm} belongs to another user")
    row = Address(address=norm, user_id=user.id)
    session.add(row)
    session.flush()
    return row


def release_address(session: Session, user: User, address: str) -> None:
    row = session.scalar(select(Address).where(Address.address == address.strip().lower(),
                                                Address.user_id == user.id))
    if row is None:
        raise EntryError(f"{address} is not one of {user.login}'s addresses")
    session.delete(row)


def owned_addresses(user: User) -> list[str]:
    return [a.address for a in user.addresses]
