"""The shared model in the store: published versions, what each node runs, and the model's events.

``stronghold.modelsync`` checks and moves the files; ``stronghold.learning``
decides what to promote.  These functions only read and write the rows.
"""

from __future__ import annotations

import time

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from stronghold.store.db import take_turns
from stronghold.store.tables import ModelEvent, ModelNode, ModelVersion


def publish(session: Session, version: str, passport: str, compressed_table: bytes) -> None:
    """Make ``version`` the one active version, storing it first if it is new.  Nodes publishing at
    once take turns: otherwise each could deactivate every version but its own before the other
    committed, leaving two active, or both insert the same version (a unique violation)."""
    take_turns(session, "model_versions")
    row = session.get(ModelVersion, version)
    if row is None:
        row = ModelVersion(version=version, passport=passport, table=compressed_table)
        session.add(row)
    session.execute(update(ModelVersion).where(ModelVersion.version != version).values(active=False))
    row.active, row.published = True, time.time()


def active(session: Session) -> str | None:
    """The version every node should run (None: nothing published)."""
    return session.scalars(select(ModelVersion.version).where(ModelVersion.active.is_(True))).first()


def content(session: Session, version: str) -> tuple[bytes, str] | None:
    """(compressed table, passport text) of a published version."""
    row = session.get(ModelVersion, version)
    return None if row is None else (row.table, row.passport)


def report_node(session: Session, node: str, version: str, error: str = "") -> None:
    """What ``node`` runs now, and why not the active version if it failed."""
    row = session.get(ModelNode, node)
    if row is None:
        row = ModelNode(node=node)
        session.add(row)
    row.version, row.seen, row.error = version, time.time(), error[:300]


def nodes(session: Session) -> list[ModelNode]:
    """Every milter node's last report (version run, when, error), by node name."""
    return list(session.scalars(select(ModelNode).order_by(ModelNode.node)))


def record_event(session: Session, action: str, version: str, who: str, reason: str) -> None:
    """Add an entry to the shared model's history, stamped now."""
    session.add(ModelEvent(ts=time.time(), action=action, version=version, who=who, reason=reason))


def judged(session: Session, version: str) -> bool:
    """Was the model ``version`` ever promoted or held back?"""
    return session.scalars(select(ModelEvent.id).where(
        ModelEvent.version == version, ModelEvent.action.in_(("promoted", "held-back")))).first() is not None


def latest_event(session: Session, version: str, actions: tuple[str, ...]) -> ModelEvent | None:
    """The newest of the model ``version``'s events with one of ``actions`` (None: there is none)."""
    return session.scalars(select(ModelEvent).where(ModelEvent.version == version, ModelEvent.action.in_(actions))
                           .order_by(ModelEvent.id.desc()).limit(1)).first()


def events(session: Session, limit: int = 20) -> list[ModelEvent]:
    """The latest events first."""
    return list(session.scalars(select(ModelEvent).order_by(ModelEvent.id.desc()).limit(limit)))
