"""Personal layers as stored: one packed layer per scope (a login or an address).

``stronghold.personal`` builds, packs and reads layers; these functions only
move the bytes and say which addresses a scope covers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from stronghold.store.tables import Address, PersonalLayerRow, User


def replace(session: Session, layers: Mapping[str, tuple[int, bytes] | None], *, drop_others: bool = False,
            now: float | None = None) -> None:
    """Store each scope's (messages, packed layer), or remove it (None); ``drop_others``
    also removes every scope not in ``layers``."""
    stamp = time.time() if now is None else now
    if drop_others:
        session.execute(delete(PersonalLayerRow))
    for scope, layer in layers.items():
        session.execute(delete(PersonalLayerRow).where(PersonalLayerRow.scope == scope))
        if layer is not None:
            messages, data = layer
            session.add(PersonalLayerRow(scope=scope, updated=stamp, messages=messages, data=data))


def stored(session: Session) -> list[tuple[str, bytes, list[str]]]:
    """(scope, packed layer, the lower-cased addresses it applies to) of every stored layer:
    a login's layer applies to all of that user's addresses, an address's layer to itself unless
    its owner has a layer of their own (IMAP moves before a user owned the address; both used to
    apply, and the one the store listed last won)."""
    rows = session.execute(select(PersonalLayerRow.scope, PersonalLayerRow.data)).all()
    owners = dict(session.execute(select(User.login, User.id)).all())
    addresses: dict[int, list[str]] = {}
    for user_id, address in session.execute(select(Address.user_id, Address.address)):
        addresses.setdefault(user_id, []).append(address.lower())
    owned = {a for scope, _ in rows if scope in owners for a in addresses.get(owners[scope], [])}
    out = []
    for scope, data in rows:
        if scope in owners:
            targets = addresses.get(owners[scope], [])
        else:
            targets = [scope.lower()] if "@" in scope and scope.lower() not in owned else []
        out.append((scope, data, targets))
    return out


def stamp(session: Session) -> tuple[int, float]:
    """(how many layers, the newest's time): changes whenever a layer does."""
    count, newest = session.execute(select(func.count(PersonalLayerRow.scope),
                                           func.max(PersonalLayerRow.updated))).one()
    return int(count), float(newest or 0.0)


def exist(session: Session) -> bool:
    """Whether any personal layer is stored."""
    return session.scalars(select(PersonalLayerRow.scope)).first() is not None
