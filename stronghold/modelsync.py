"""One model for all nodes: the live model is published in the shared store; every milter node
pulls the active version into its models folder and reports which version it runs.

Why the store rather than a folder all nodes mount: every node already reaches the database (lists,
message log, quarantine) with credentials it has; a shared file system would be one more service to
mount, secure and keep consistent, and renames on it are not atomic for readers on other machines.
A version is the scoring table (``.npy``, 16 MiB, a few MiB compressed) and its passport: all a
node needs to score.  The scikit-learn counts stay with whoever learns, so nodes never unpickle
anything they were sent.  A pulled table is checked against the version's SHA-256 and loaded
before it replaces the node's files (table first, passport last: the milter's
``modelholder.ModelHolder`` reloads when the passport changes, within a second).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import time
import zlib
from pathlib import Path

from stronghold.classifier import Model
from stronghold.modelfile import ModelError, Passport, passport_path, passport_version, read_passport, table_path
from stronghold.store import modelversions
from stronghold.store.db import Store
from stronghold.store.errors import StoreError
from stronghold.store.tables import ModelNode

log = logging.getLogger(__name__)
INCOMING = ".incoming"


def node_name(configured: str) -> str:
    return configured or socket.gethostname()


def publish(store: Store, live: Path) -> str:
    """Make the model at ``live`` the one every node runs; returns its version."""
    passport = read_passport(live)  # a one-line ModelError for a missing or unreadable passport
    try:
        text = passport_path(live).read_text()
        table = table_path(live).read_bytes()
    except OSError as exc:
        raise ModelError(f"model {live} cannot be read: {exc}; not published") from exc
    if hashlib.sha256(table).hexdigest() != passport.table_sha256:
        raise ModelError(f"model table {table_path(live)} does not match its passport; not published")
    version = version_of(passport)
    with store.session() as session:
        modelversions.publish(session, version, text, zlib.compress(table, 6))
    log.info("model %s published for every node", version[:12])
    return version


def active_version(store: Store) -> str | None:
    with store.session() as session:
        return modelversions.active(session)


version_of = passport_version  # a model's version (stronghold.modelfile)


def local_version(dest: Path) -> str:
    try:
        return version_of(read_passport(dest))
    except ModelError:
        return ""


def pull(store: Store, dest: Path) -> str | None:
    """Bring the node's model at ``dest`` to the active version; returns it (None: none published)."""
    version = active_version(store)
    if version is None or version == local_version(dest):
        return version
    with store.session() as session:
        stored = modelversions.content(session, version)
    if stored is None:
        return None
    blob, passport_text = stored
    table = zlib.decompress(blob)
    passport = Passport.from_json(json.loads(passport_text))
    if version_of(passport) != version or hashlib.sha256(table).hexdigest() != passport.table_sha256:
        raise ModelError(f"published model {version[:12]} is corrupt in the store")
    incoming = dest.parent / INCOMING / dest.name
    incoming.parent.mkdir(mode=0o755, exist_ok=True)
    for path, data in ((table_path(incoming), table), (passport_path(incoming), passport_text.encode())):
        path.write_bytes(data)
        path.chmod(0o644)
    Model.load(incoming)  # verified exactly as the milter will load it
    os.replace(table_path(incoming), table_path(dest))
    os.replace(passport_path(incoming), passport_path(dest))
    log.info("model %s pulled from the store into %s", version[:12], dest)
    return version


def report(store: Store, node: str, version: str, error: str = "") -> None:
    with store.session() as session:
        modelversions.report_node(session, node, version, error)


def nodes(store: Store) -> list[ModelNode]:
    with store.session() as session:
        return modelversions.nodes(session)


def sync_once(store: Store, dest: Path, node: str) -> str:
    """Pull, then report what this node runs (and why not the active version, if it failed)."""
    error = ""
    try:
        pull(store, dest)
    except (ModelError, OSError, zlib.error, ValueError) as exc:
        error = str(exc)
        log.error("model sync: %s", exc)
    version = local_version(dest)
    report(store, node, version, error)
    return version


def run(store: Store, dest: Path, node: str, every: float) -> None:
    """The node's sync loop (a child of the milter's supervisor); ends on SIGTERM."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        try:
            sync_once(store, dest, node)
        except StoreError as exc:  # the database is away: keep the model we have, try again
            log.warning("model sync: %s", exc)
        deadline = time.monotonic() + every
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, every))
