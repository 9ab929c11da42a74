"""The quarantine store on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import update

from stronghold.store import quarantine
from stronghold.store.db import Store
from stronghold.store.tables import QuarantineBlob, QuarantineItem

RAW = (b"From: Spammer <s@spam.example>\r\nTo: m1@example.com, m3@example.com\r\n"
       b"Subject: =?utf-8?q?Cheap_=C3=BCber?=\r\n\r\n" + b"buy now, limited offer\r\n" * 400)


def _hold(s, raw: bytes = RAW, recipients=("m1@example.com", "M3@Example.com"), **kw) -> list[int]:
    args = {"sender": "s@spam.example", "subject": "Cheap über", "queue_id": "Q1", "score": 0.97,
            "category": "spam", "reason": "spam score 0.970", "trace": "model:0.970", "virus": None}
    args.update(kw)
    return quarantine.hold(s, raw, recipients=list(recipients), **args)


def test_hold_stores_the_message_once_compressed_with_one_item_per_recipient(store: Store) -> None:
    with store.session() as s:
        ids = _hold(s)
        ids2 = _hold(s, recipients=("m2@example.com",), queue_id="Q2")  # same bytes, another message
    assert len(ids) == 2 and len(set(ids + ids2)) == 3
    with store.session() as s:
        assert quarantine.count(s) == 3 and quarantine.blob_count(s) == 1
        blob = s.get(QuarantineBlob, quarantine.get(s, ids[0]).sha256)
        assert blob.size == len(RAW) and len(blob.data) < len(RAW) // 4  # compressed
        first, second = quarantine.get(s, ids[0]), quarantine.get(s, ids[1])
        assert (first.recipient, second.recipient) == ("m1@example.com", "m3@example.com")
        assert second.subject == "Cheap über" and second.score == 0.97 and second.size == len(RAW)
        assert second.released is None and second.virus is None and not second.is_virus
        assert quarantine.content(s, ids[1]) == RAW and quarantine.content(s, ids2[0]) == RAW
        assert quarantine.get(s, 999_999) is None
        with pytest.raises(KeyError):
            quarantine.content(s, 999_999)


def test_find_filters_by_owner_text_time_and_viruses(store: Store) -> None:
    with store.session() as s:
        a = _hold(s, recipients=("m1@example.com",), subject="Weekly deals 100%")
        b = _hold(s, b"other", recipients=("m2@example.com",), sender="news@shop.example", subject="Receipt")
        v = _hold(s, b"eicar", recipients=("m1@example.com",), category="virus", virus="Eicar-Test-Signature")
        s.execute(update(QuarantineItem).where(QuarantineItem.id == a[0]).values(ts=time.time() - 5 * 86400))
    with store.session() as s:
        ids = lambda **kw: [h.id for h in quarantine.find(s, **kw)]  # noqa: E731
        assert ids(recipients=None) == [v[0], b[0], a[0]]  # newest first, everyone's
        assert ids(recipients=["M1@example.com"]) == [v[0], a[0]]
        assert ids(recipients=[]) == []
        assert ids(recipients=["m1@example.com"], include_viruses=False) == [a[0]]
        assert ids(recipients=None, text="SHOP.example") == [b[0]]
        assert ids(recipients=None, text="100%") == [a[0]]  # LIKE wildcards are literal
        assert ids(recipients=None, text="_") == []
        assert ids(recipients=None, since=time.time() - 86400) == [v[0], b[0]]
        assert ids(recipients=None, until=time.time() - 86400) == [a[0]]
        assert ids(recipients=None, limit=1, offset=1) == [b[0]]
        assert quarantine.get(s, v[0]).is_virus


def test_claim_is_won_once_and_unclaim_only_undoes_its_own(store: Store) -> None:
    with store.session() as s:
        item = _hold(s)[0]
    with store.session() as s:
        stamp = quarantine.claim(s, item, "m1@example.com")
    assert stamp is not None
    with store.session() as s:
        assert quarantine.claim(s, item, "admin") is None
        assert not quarantine.unclaim(s, item, stamp + 1)  # not that claim
        held = quarantine.get(s, item)
        assert held.released == stamp and held.released_by == "m1@example.com"
    with store.session() as s:
        assert quarantine.unclaim(s, item, stamp)
    with store.session() as s:
        again = quarantine.claim(s, item, "admin")
        assert again is not None
        quarantine.mark_delivered(s, item, again)
    with store.session() as s:
        assert not quarantine.unclaim(s, item, again)  # delivered: never given back
        assert quarantine.get(s, item).delivered is not None
        assert quarantine.claim(s, 999_999, "x") is None


def test_racing_claims_from_many_connections_have_one_winner(store: Store) -> None:
    """Eight threads, each with its own connection (like eight nodes), claim the same item."""
    with store.session() as s:
        item = _hold(s)[0]
    barrier = threading.Barrier(8)
    won: list[str] = []

    def racer(n: int) -> None:
        barrier.wait()
        with store.session() as s:
            if quarantine.claim(s, item, f"node{n}") is not None:
                won.append(f"node{n}")

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    with store.session() as s:
        assert quarantine.get(s, item).released_by == won[0]


def test_delete_and_purge_remove_items_then_orphaned_blobs(store: Store) -> None:
    with store.session() as s:
        old = _hold(s, b"old message")
        keep = _hold(s, b"new message", recipients=("m2@example.com",))
        gone = _hold(s, b"deleted message", recipients=("m2@example.com",))
        s.execute(update(QuarantineItem).where(QuarantineItem.id.in_(old)).values(ts=time.time() - 31 * 86400))
        s.execute(update(QuarantineBlob).values(touched=time.time() - 2 * 3600))
    with store.session() as s:
        assert quarantine.delete(s, gone[0]) and not quarantine.delete(s, gone[0])
    with store.session() as s:
        assert quarantine.purge_older_than(s, 30) == 2
    with store.session() as s:
        assert quarantine.count(s) == 1 and quarantine.blob_count(s) == 1
        assert quarantine.content(s, keep[0]) == b"new message"


def test_purge_keeps_an_orphaned_blob_a_hold_just_used(store: Store) -> None:
    with store.session() as s:
        first = _hold(s, b"shared")
        s.execute(update(QuarantineBlob).values(touched=time.time() - 2 * 3600))
        quarantine.delete(s, first[0])
        quarantine.delete(s, first[1])
        _hold(s, b"shared", recipients=("m2@example.com",))  # touches the blob again
        quarantine.delete(s, quarantine.find(s, recipients=["m2@example.com"])[0].id)
    with store.session() as s:
        quarantine.purge_older_than(s, 30)
        assert quarantine.blob_count(s) == 1


def test_a_long_from_is_stored_with_its_address_whole(store: Store) -> None:
    """The From column holds 320 characters: a longer header loses display name, never a piece of
    the address (cut inside it, the Junk page showed and 'always allow' added boss@bank.example)."""
    raw = b'From: "' + b"A" * 299 + b'" <boss@bank.example.evil.example>\r\nSubject: x\r\n\r\nbody\r\n'
    with store.session() as s:
        ids = _hold(s, raw, recipients=("m1@example.com",))
    with store.session() as s:
        stored = quarantine.get(s, ids[0]).header_from
    assert len(stored) <= 320 and stored.endswith(" <boss@bank.example.evil.example>")
