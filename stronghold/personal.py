"""Per-user adaptation: a personal layer over the shared model, built from one user's own feedback.

A user's layer is what the shared model would say about the tokens of that user's feedback had it
learned the feedback itself, ``WEIGHT`` times over: for each token bucket of those messages, the
voting log-odds from the shared model's counts plus the user's (``classifier.logodds_from_counts``).
When a recipient has a layer, those buckets score with the layer's values and every other token
with the shared table's, so a user with no layer, or mail unlike anything they marked, gets exactly
the shared score, and one user's "newsletters are spam" changes nobody else's mail.

Layers need the shared counts, so they are built where the model learns (``stronghold learn``, after
each change of the user's feedback and after each promotion) and stored in the store
(``personal_layers``: sorted buckets and float32 values); every milter process caches them
(``LayerCache``) and rechecks the store every few seconds.  The layer of a login applies to all of
that user's addresses; a layer named by an address (IMAP users) to that address.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stronghold.classifier import Model, logodds_from_counts, token_indices
from stronghold.modelfile import ModelError
from stronghold.store import layers, ledger
from stronghold.store.db import Store
from stronghold.store.recheck import Recheck

log = logging.getLogger(__name__)
WEIGHT = 20.0  # one message of a user's own feedback counts this many times in their layer


@dataclass(frozen=True)
class Layer:
    """Voting log-odds for the buckets of one user's feedback (``buckets`` sorted, unique)."""

    buckets: np.ndarray  # int64
    values: np.ndarray  # float32

    @classmethod
    def build(cls, model: Model, token_sets: Sequence[Iterable[str]], labels: Sequence[bool],
              weight: float = WEIGHT) -> Layer:
        if model.nb is None:
            raise ModelError("a personal layer needs the shared model's counts (load it for learning)")
        per_message = [np.unique(token_indices(sorted(t))) for t in token_sets]
        if not per_message:
            return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        buckets = np.unique(np.concatenate(per_message))
        ham = np.zeros(len(buckets))
        spam = np.zeros(len(buckets))
        for found, is_spam in zip(per_message, labels, strict=True):
            (spam if is_spam else ham)[np.searchsorted(buckets, found)] += weight
        n_ham, n_spam = model.nb.class_count_
        u_spam = weight * sum(1 for x in labels if x)
        u_ham = weight * len(labels) - u_spam
        values = logodds_from_counts(model.nb.feature_count_[0][buckets] + ham,
                                     model.nb.feature_count_[1][buckets] + spam,
                                     float(n_ham) + u_ham, float(n_spam) + u_spam, model.params)
        return cls(buckets.astype(np.int64), values)

    def adjust(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The per-token log-odds ``values`` (of buckets ``idx``) with this layer's buckets replaced."""
        if not len(idx) or not len(self.buckets):
            return values
        pos = np.searchsorted(self.buckets, idx)
        pos[pos >= len(self.buckets)] = 0
        hit = self.buckets[pos] == idx
        if not hit.any():
            return values
        out = values.astype(np.float32, copy=True)
        out[hit] = self.values[pos[hit]]
        return out

    def pack(self) -> bytes:
        return len(self.buckets).to_bytes(4, "little") + self.buckets.astype("<i8").tobytes() + \
            self.values.astype("<f4").tobytes()

    @classmethod
    def unpack(cls, data: bytes) -> Layer:
        n = int.from_bytes(data[:4], "little")
        if len(data) != 4 + 12 * n:
            raise ValueError("personal layer of the wrong size")
        buckets = np.frombuffer(data, dtype="<i8", count=n, offset=4).astype(np.int64)
        values = np.frombuffer(data, dtype="<f4", count=n, offset=4 + 8 * n).astype(np.float32)
        return cls(buckets, values)


def rebuild(store: Store, model: Model, scopes: Iterable[str] | None = None) -> int:
    """Build and store the layers of ``scopes`` (None: every scope with personal feedback).

    Each layer is stamped with the time the ledger was read, not written, so feedback recorded
    while it was being built counts as newer (``rebuild_if_any``); the forgotten marks it left out
    are deleted from the ledger with it."""
    scopes = None if scopes is None else list(scopes)
    read_at = time.time()
    with store.session() as session:
        by_scope = ledger.personal(session, scopes)
        left_out = ledger.forgotten_personal(session, scopes)
    built = {scope: (len(sets), Layer.build(model, sets, labels).pack()) if sets else None
             for scope, (sets, labels) in by_scope.items()}
    with store.session() as session:
        layers.replace(session, built, drop_others=scopes is None, now=read_at)
        ledger.drop_forgotten(session, left_out)
    return len(by_scope)


def rebuild_if_any(store: Store, live: Path, only_if_changed: bool = False) -> int | None:
    """Rebuild the personal layers over the live model at ``live`` (after any change of feedback
    or model); how many, or None when nobody has feedback or a layer.  ``only_if_changed``:
    only when personal feedback changed since the layers were last built (else None), so a
    periodic run does not make every node reload unchanged layers."""
    with store.session() as session:
        if not ledger.has_personal(session) and not layers.exist(session):
            return None
        if only_if_changed and layers.exist(session) and not ledger.personal_changed_since(
                session, layers.stamp(session)[1]):
            return None
    return rebuild(store, Model.load(live, for_learning=True))


def load_layers(store: Store) -> dict[str, Layer]:
    """Every recipient address with a personal layer."""
    with store.session() as session:
        rows = layers.stored(session)
    out: dict[str, Layer] = {}
    for scope, data, targets in rows:
        try:
            layer = Layer.unpack(data)
        except ValueError as exc:
            log.error("personal layer of %s unusable: %s", scope, exc)
            continue
        for address in targets:
            out[address] = layer
    return out


class LayerCache:
    """The personal layers of a milter process, reloaded when the stored layers change.

    The check is one small query every ``refresh`` seconds, off the mail thread (and, with
    ``early``, ahead of time: ``Recheck``); recipients without a layer cost one dictionary lookup
    per message.
    """

    def __init__(self, store: Store, refresh: float = 2.0,
                 early: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.store = store
        self._layers: Mapping[str, Layer] = {}
        self._stamp: tuple[int, float] | None = None
        self._recheck = Recheck(refresh, self.layers, early)

    def cached(self) -> Mapping[str, Layer] | None:
        """The layers without touching the store, or None when a check is due."""
        return self._layers if self._recheck.fresh() else None

    def layers(self) -> Mapping[str, Layer]:
        """Check the store now (and load the layers if they changed)."""
        with self._recheck.checking():
            with self.store.session() as session:
                stamp = layers.stamp(session)
            if stamp != self._stamp:
                loaded = load_layers(self.store)
                self._layers, self._stamp = loaded, stamp
                log.info("personal layers: %d addresses", len(loaded))
        return self._layers
