"""The store on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stronghold.findings import Findings
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.store import accounts, entries, messagelog, quarantine
from stronghold.store.db import Store
from stronghold.store.errors import EntryError, StoreError
from stronghold.verdict import Envelope
from tests.harness.postgres import PostgresCluster


def test_users_passwords_are_argon2_and_authenticate(store: Store) -> None:
    with store.session() as s:
        user = accounts.add_user(s, "Alice", "correct horse battery")
        assert user.password_hash.startswith("$argon2")
        accounts.assign_address(s, user, "Alice@Example.com")
    with store.session() as s:
        assert accounts.authenticate(s, "alice", "correct horse battery").login == "alice"
        assert accounts.authenticate(s, "alice", "wrong password!!") is None
        assert accounts.authenticate(s, "nobody", "correct horse battery") is None
        accounts.set_disabled(accounts.get_user(s, "alice"), True)
    with store.session() as s:
        assert accounts.authenticate(s, "alice", "correct horse battery") is None


def test_short_passwords_and_duplicate_users_refused(store: Store) -> None:
    with store.session() as s:
        with pytest.raises(EntryError, match="at least"):
            accounts.add_user(s, "bob", "short")
        accounts.add_user(s, "bob", "long enough password")
        with pytest.raises(EntryError, match="exists"):
            accounts.add_user(s, "BOB", "long enough password")


def test_an_address_has_one_owner(store: Store) -> None:
    with store.session() as s:
        a = accounts.add_user(s, "a", "long enough password")
        b = accounts.add_user(s, "b", "long enough password")
        accounts.assign_address(s, a, "shared@example.com")
        with pytest.raises(EntryError, match="belongs to a: remove it from a first"):
            accounts.assign_address(s, b, "SHARED@example.com")


def test_list_entries_validated_deduplicated_and_versioned(store: Store) -> None:
    with store.session() as s:
        v0 = entries.lists_version(s)
        entries.add_entry(s, "a@example.com", "block", "*.Spam.example", "  noisy  ")
        with pytest.raises(EntryError, match="already on the block list"):
            entries.add_entry(s, "a@example.com", "block", "*.spam.example")
        with pytest.raises(EntryError, match="on the block list; remove it there first"):
            entries.add_entry(s, "a@example.com", "allow", "*.spam.example")
        with pytest.raises(EntryError, match="not a valid domain"):
            entries.add_entry(s, "a@example.com", "allow", "@nodot")
        entries.add_entry(s, None, "allow", "@partner.example")
        assert entries.lists_version(s) == v0 + 2
        got = entries.entries(s, "a@example.com")
        assert [(e.kind, e.pattern, e.comment) for e in got] == [("block", "*.spam.example", "noisy")]
        with pytest.raises(EntryError, match="no such entry"):
            entries.remove_entry(s, got[0].id, ["b@example.com"])  # not the owner
        entries.remove_entry(s, got[0].id, ["a@example.com"])
        assert entries.entries(s, "a@example.com") == []


def test_csv_round_trip_and_problems(store: Store) -> None:
    with store.session() as s:
        report = entries.import_csv(
            s, "a@example.com", "kind,pattern,comment\nblock,@x.example,one\nallow,bad pattern,\n"
            "allow,friend@y.example,pal\nblock,@x.example,dup\n")
        assert report.added == 0 and report.problems == ["line 3: 'bad pattern' is not an address like "
                                                         "name@example.com"]
        assert entries.entries(s, "a@example.com") == []  # all or nothing
        report = entries.import_csv(
            s, "a@example.com", "kind,pattern,comment\nblock,@x.example,one\n"
            "allow,friend@y.example,pal\nblock,@x.example,dup\n")
        assert report.added == 2 and report.skipped == ["line 4: @x.example is already on the block list"]
        text = entries.export_csv(entries.entries(s, "a@example.com"))
    assert "block,'@x.example,one," in text and "allow,friend@y.example,pal," in text


def test_csv_carries_trust_without_authentication(store: Store) -> None:
    """An export imported elsewhere gives the same entries, the per-entry trust flag included."""
    with store.session() as s:
        trusted = entries.add_entry(s, "a@example.com", "allow", "boss@trusted.example", "boss",
                                    trust_unauthenticated=True)
        entries.add_entry(s, "a@example.com", "allow", "pal@y.example", "pal")
        entries.add_entry(s, "a@example.com", "block", "@x.example", "no")
        text = entries.export_csv(entries.entries(s, "a@example.com"))
        assert "allow,boss@trusted.example,boss,yes\r\n" in text and "allow,pal@y.example,pal,\r\n" in text
        report = entries.import_csv(s, "c@example.com", text)
        assert report.added == 3 and report.trusted == 1 and not report.problems
        copied = {(e.kind, e.pattern, e.comment, e.trust_unauthenticated) for e in entries.entries(s, "c@example.com")}
        assert copied == {(e.kind, e.pattern, e.comment, e.trust_unauthenticated)
                          for e in entries.entries(s, "a@example.com")}
        assert trusted.trust_unauthenticated
        for line, problem in (("block,@z.example,,yes", "only allow entries can be trusted"),
                              ("allow,p@z.example,,maybe", "trust_unauthenticated is 'maybe'"),
                              ("allow,p@z.example,,yes,extra", "5 fields")):
            report = entries.import_csv(s, "d@example.com", f"allow,ok@z.example,fine,yes\n{line}\n")
            assert report.added == 0 and problem in report.problems[0], report.problems
        assert entries.entries(s, "d@example.com") == []


def test_list_cache_sees_edits(store: Store) -> None:
    cache = entries.ListCache(store, refresh=0)
    assert len(cache()) == 0
    with store.session() as s:
        entries.add_entry(s, None, "block", "@new.example")
    assert len(cache()) == 1


def test_message_log_ownership_feedback_and_counts(store: Store) -> None:
    msg = parse(b"From: x@y.example\r\nSubject: hello\r\n\r\nbody")
    env = Envelope("x@y.example", ("a@example.com", "b@example.com"), queue_id="Q9")
    verdict = decide(env, msg, Findings(lists=entries.ListIndex([])), Policy())
    with store.session() as s:
        mid = messagelog.record(s, env, msg, verdict, {"tok1", "tok2"})
        user = accounts.add_user(s, "a", "long enough password")
    with store.session() as s:
        assert messagelog.visible_message(s, mid, ("a@example.com",)) is not None
        assert messagelog.visible_message(s, mid, ("c@example.com",)) is None
        rows = messagelog.recent(s, messagelog.LogFilter(addresses=("b@example.com",)))
        assert [r.id for r in rows] == [mid]
        messagelog.set_feedback(s, mid, user.id, True)
        pending = messagelog.pending(s)
        assert len(pending) == 1 and messagelog.unpack_tokens(pending[0][1].tokens) == {"tok1", "tok2"}
        day = time.strftime("%Y-%m-%d", time.gmtime())
        assert messagelog.daily_counts(s, None)[day]["clean"] == 1


def test_searches_fold_case_in_every_script(store: Store) -> None:
    """Recent mail's and Junk's searches find 'привет' in 'Привет' on either database."""
    raw = "From: Éva <eva@y.example>\r\nSubject: Привет ÉTÉ\r\n\r\nbody".encode()
    msg = parse(raw)
    env = Envelope("eva@y.example", ("a@example.com",), queue_id="Q8")
    with store.session() as s:
        mid = messagelog.record(s, env, msg, decide(env, msg, Findings(lists=entries.ListIndex([])), Policy()), None)
        held = quarantine.hold(s, raw, recipients=["a@example.com"], sender="eva@y.example", subject="Привет ÉTÉ",
                               queue_id="Q8", score=0.99, category="spam", reason="", trace="", virus=None)
    with store.session() as s:
        for typed in ("привет", "ПРИВЕТ", "été", "éva"):
            assert [r.id for r in messagelog.recent(s, messagelog.LogFilter(search=typed))] == [mid], typed
            assert [h.id for h in quarantine.find(s, recipients=None, text=typed)] == held, typed


def test_unreachable_database_is_a_store_error() -> None:
    store = Store("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="unreachable"):
        store.ping()
    with pytest.raises(StoreError):
        with store.session() as s:
            entries.lists_version(s)


def test_message_log_retention(store: Store) -> None:
    msg = parse(b"Subject: old\r\n\r\nbody")
    env = Envelope("x@y.example", ("a@example.com",))
    verdict = decide(env, msg, Findings(lists=entries.ListIndex([])), Policy())
    with store.session() as s:
        messagelog.record(s, env, msg, verdict, ts=time.time() - 40 * 86400)
        messagelog.record(s, env, msg, verdict)
    with store.session() as s:
        assert messagelog.purge_older_than(s, 30) == 1
        assert messagelog.count(s) == 1


def test_message_log_batch_keeps_each_recipient_with_its_message(store: Store) -> None:
    """One statement per table for a batch: ids must come back in the order given."""
    batch = []
    for i in range(60):
        recipients = tuple(f"r{i}-{k}@example.com" for k in range(i % 4 + 1))
        env = Envelope(f"s{i}@example.org", recipients, queue_id=f"Q{i}")
        msg = parse(f"Subject: n{i}\r\n\r\nbody".encode())
        verdict = decide(env, msg, Findings(lists=entries.ListIndex([])), Policy())
        batch.append(messagelog.entry(env, msg, verdict, {f"tok{i}"}))
    batch.append(messagelog.rcpt_reject_entry(Envelope("bad@x.example", (), queue_id="QR"),
                                              "victim@example.com", "blocked", "lists:block"))
    with store.session() as s:
        ids = messagelog.write(s, batch)
    assert len(set(ids)) == 61
    with store.session() as s:
        for i, mid in enumerate(ids[:60]):
            row = messagelog.visible_message(s, mid, None)
            assert row is not None and row.queue_id == f"Q{i}" and row.subject == f"n{i}"
            assert sorted(r.address for r in row.recipients) == [f"r{i}-{k}@example.com" for k in range(i % 4 + 1)]
            assert messagelog.unpack_tokens(row.tokens) == {f"tok{i}"}
        reject = messagelog.visible_message(s, ids[60], ("victim@example.com",))
        assert reject is not None and reject.category == "blocked" and reject.tokens is None


def test_log_writes_refused_by_a_locked_database_wait_in_the_queue(tmp_path) -> None:
    """Another process holds the SQLite write lock: rows stay queued (the oldest
    beyond the cap are dropped, and counted), then are written once it lets go."""
    import sqlite3

    from stronghold.store.writebehind import StoreThread
    path = tmp_path / "store.db"
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    outcomes: list[Exception | None] = []
    db = StoreThread(retry=0.2, max_queued=4)
    for i in range(5):
        env = Envelope(f"s{i}@example.org", ("r@example.com",), queue_id=f"L{i}")
        msg = parse(f"Subject: locked {i}\r\n\r\nbody".encode())
        db.write(messagelog.entry(env, msg, decide(env, msg, Findings(lists=entries.ListIndex([])), Policy())),
                 store, outcomes.append)
    deadline = time.monotonic() + 30
    while not outcomes and time.monotonic() < deadline:  # SQLite waits busy_timeout (5 s) first
        time.sleep(0.1)
    assert outcomes and isinstance(outcomes[0], StoreError)
    assert db.queued == 4 and db.dropped == 1
    locker.execute("COMMIT")
    locker.close()
    db.drain(timeout=30)
    assert outcomes[-1] is None and db.queued == 0
    with store.session() as s:
        rows = messagelog.recent(s, messagelog.LogFilter())
    assert sorted(r.queue_id for r in rows) == ["L1", "L2", "L3", "L4"]  # L0, the oldest, was dropped
    store.dispose()


def test_a_write_no_database_takes_loses_only_itself_and_says_so(tmp_path, caplog) -> None:
    """A log row the driver cannot even send (text with a lone surrogate: UnicodeEncodeError, not
    a StoreError) raised inside the writer's pool, which kept it: that row and every other of its
    batch were lost, without a log line or an answer.  Now the rest are written one by one."""
    from stronghold.store.writebehind import StoreThread
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.upgrade()
    outcomes: list[Exception | None] = []
    db = StoreThread(linger=0.5)
    for i, sender in enumerate(["before@example.org", "caf\udce9@example.org", "after@example.org"]):
        env = Envelope(sender, ("r@example.com",), queue_id=f"B{i}")
        msg = parse(f"Subject: batch {i}\r\n\r\nbody".encode())
        db.write(messagelog.entry(env, msg, decide(env, msg, Findings(lists=entries.ListIndex([])), Policy())),
                 store, outcomes.append)
    db.drain(timeout=30)
    assert outcomes == [None] and db.dropped == 1
    with store.session() as s:
        assert sorted(r.queue_id for r in messagelog.recent(s, messagelog.LogFilter())) == ["B0", "B2"]
    assert "a write failed and is dropped (1 dropped in all)" in caplog.text
    store.dispose()


def test_csv_import_reports_every_bad_line_and_adds_none(store: Store) -> None:
    text = "".join(f"block,bad {n},\n" for n in range(300)) + "allow,good@pal.example,\n"
    with store.session() as s:
        report = entries.import_csv(s, "a@example.com", text)
        assert report.added == 0 and len(report.problems) == 300 and report.lines == 301
        assert report.problems[-1].startswith("line 300:")
        assert entries.entries(s, "a@example.com") == []


def test_csv_import_oversized_fields_are_problems_not_crashes(store: Store) -> None:
    huge = "x" * (200 * 1024)
    with store.session() as s:
        report = entries.import_csv(s, "a@example.com", f"block,@ok.example,\nblock,\"{huge}\",\n")
        assert report.added == 0 and "line 2: unreadable CSV" in report.problems[0]
        report = entries.import_csv(s, "a@example.com", f"block,@ok.example,{'c' * 201}\n")
        assert report.problems == ["line 1: the comment has 201 characters; at most 200 fit"]
        report = entries.import_csv(s, "a@example.com", f"block,{'a' * 1000}@x.com,\n")
        assert report.problems == ["line 1: the pattern has 1006 characters; at most 320 fit"]


def test_entry_errors_are_clear_and_quote_what_was_given(store: Store) -> None:
    with store.session() as s:
        with pytest.raises(EntryError, match="the comment has 250 characters; at most 200 fit"):
            entries.add_entry(s, "a@example.com", "block", "@x.example", "c" * 250)
        with pytest.raises(EntryError) as caught:
            entries.add_entry(s, "a@example.com", "block", "<script>alert(1)</script>@x.com")
        assert str(caught.value).startswith("'<script>alert(1)</script>@x.com'")
        with pytest.raises(EntryError) as caught:
            entries.add_entry(s, "a@example.com", "block", "@" + "a" * 300 + ".com")
        assert len(str(caught.value)) < 120
        assert entries.entries(s, "a@example.com") == []


@pytest.mark.parametrize("tokens", [{"tok1", "tok2"}, {"urlpath:a\nb", "c"}, {"nul\x00inside", "x"}, {"one"}, set()])
def test_token_blobs_round_trip_whatever_a_token_holds(tokens: set[str]) -> None:
    """Feedback learns the tokens the classifier saw, also one holding a line break or a NUL."""
    assert messagelog.unpack_tokens(messagelog.pack_tokens(tokens)) == tokens


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(["a", "\x00", "\n", "é", "\U0001d400", ":", " "]), max_size=6),
                max_size=8))
def test_the_native_blob_text_is_the_python_one(tokens: list[str]) -> None:
    """The C join of a blob's text (``_joined``) gives the bytes of its Python reference, in the
    tokens' order, and None where the reference does (a NUL in a token, no token)."""
    assert messagelog._joined is not messagelog._joined_py  # the native core is built here
    assert messagelog._joined(tokens) == messagelog._joined_py(tokens)
    assert messagelog._joined(set(tokens)) == messagelog._joined_py(set(tokens))
    assert messagelog.unpack_tokens(messagelog.pack_tokens(set(tokens))) == set(tokens)


@pytest.mark.parametrize("tokens", [["\ud800", "a\x00b"], ["a\x00b", "\ud800"]])
def test_a_nul_decides_before_a_token_that_is_no_text(tokens: list[str]) -> None:
    """With a NUL in any token the blob is JSON, which keeps even a lone surrogate, in either
    order (the C join looked for NULs only while encoding, token by token)."""
    assert messagelog._joined(tokens) is None and messagelog._joined_py(tokens) is None
    assert messagelog.unpack_tokens(messagelog.pack_tokens(tokens)) == set(tokens)


def test_tokens_given_as_an_iterator_are_all_kept() -> None:
    for tokens in (["tok1", "a\x00b"], ["tok1", "tok2"]):
        assert messagelog.unpack_tokens(messagelog.pack_tokens(iter(tokens))) == set(tokens)


def test_a_token_that_is_no_text_is_refused_as_encoding_would() -> None:
    for joined in (messagelog._joined, messagelog._joined_py):
        with pytest.raises(UnicodeEncodeError):
            joined(["ok", "\udce9"])  # a lone surrogate has no UTF-8


def test_token_blobs_written_before_nul_separation_still_read() -> None:
    old = zlib.compress(b"tok1\ntok2", 1)
    assert messagelog.unpack_tokens(old) == {"tok1", "tok2"}


def test_token_blobs_are_zstandard_frames_and_zlib_ones_still_read() -> None:
    """New blobs are Zstandard (a third of zlib's CPU at the same size); the zlib blobs of the
    rows written before still read."""
    tokens = {"subject:free", "url:example.com", "from:a@b.example"}
    blob = messagelog.pack_tokens(tokens)
    assert blob[:4] == b"\x28\xb5\x2f\xfd"
    text = "\x00" + "\x00".join(sorted(tokens))
    assert messagelog.unpack_tokens(zlib.compress(text.encode(), 1)) == tokens
    assert messagelog.unpack_tokens(blob) == tokens


def test_token_blobs_packed_on_many_threads_at_once_stay_apart() -> None:
    """Each thread has its own Zstandard context (one must not serve two threads at once)."""
    from concurrent.futures import ThreadPoolExecutor
    sets = [{f"t{i}:{j}" for j in range(300 + i)} for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        blobs = list(pool.map(messagelog.pack_tokens, sets * 5))
        back = list(pool.map(messagelog.unpack_tokens, blobs))
    assert back == sets * 5


def test_each_recipient_sees_what_was_decided_for_them(store: Store) -> None:
    """Bob allows the sender, so the message is "allowed"; for Alice it was spam, held: her list's
    spam filter finds it and her counts say spam, Bob's say allowed; the whole system's the message's."""
    from stronghold.classifier import Score
    from stronghold.lists import ListEntry, ListIndex
    from stronghold.verdict import Action, Category

    msg = parse(b"From: deals@shop.example\r\nSubject: Rates\r\n\r\nlow rates")
    env = Envelope("deals@shop.example", ("alice@example.com", "bob@example.com"), queue_id="QV")
    lists = ListIndex([ListEntry(1, "bob@example.com", "allow", "deals@shop.example", trust_unauthenticated=True)])
    verdict = decide(env, msg, Findings(lists=lists, score=Score(0.9995, ()), model_threshold=0.9),
                     Policy(spam_action=Action.QUARANTINE, spam_action_high=Action.QUARANTINE))
    assert verdict.category is Category.ALLOWED
    assert {d.recipient: d.category for d in verdict.decisions} == {"alice@example.com": Category.SPAM,
                                                                   "bob@example.com": Category.ALLOWED}
    with store.session() as s:
        mid = messagelog.record(s, env, msg, verdict, None)
        day = time.strftime("%Y-%m-%d", time.gmtime())

        def listed(addresses: tuple[str, ...] | None, category: str) -> list[int]:
            return [r.id for r in messagelog.recent(s, messagelog.LogFilter(addresses, category))]

        assert listed(("alice@example.com",), "spam") == [mid] and listed(("alice@example.com",), "allowed") == []
        assert listed(("bob@example.com",), "allowed") == [mid] and listed(("bob@example.com",), "spam") == []
        assert listed(None, "allowed") == [mid] and listed(None, "spam") == []
        assert messagelog.daily_counts(s, ("alice@example.com",))[day] == {"spam": 1}
        assert messagelog.daily_counts(s, ("bob@example.com",))[day] == {"allowed": 1}
        assert messagelog.daily_counts(s, ("alice@example.com", "bob@example.com"))[day] == {"allowed": 1}
        assert messagelog.daily_counts(s, None)[day] == {"allowed": 1}



@pytest.mark.postgres
def test_nodes_upgrading_one_postgresql_at_once_all_succeed(postgres: PostgresCluster) -> None:
    """Several nodes (milters, web UIs, cron jobs) starting together on a new database each run
    the migrations, each in its own process: they take turns instead of all but one failing on
    tables another is creating."""
    script = ("import sys; from stronghold.store.db import Store\n"
              "from stronghold.store.errors import StoreError\n"
              "try: print(Store(sys.argv[1]).upgrade())\n"
              "except StoreError as exc: print(exc)")
    for round_ in range(3):
        url = postgres.create_database(f"upgrade_race_{os.getpid()}_{round_}")
        nodes = [subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE, text=True)
                 for _ in range(3)]
        said = [node.communicate(timeout=60)[0].strip() for node in nodes]
        assert said == [said[0]] * len(nodes) and said[0].isdigit(), said


def test_the_last_enabled_admin_keeps_the_role(store: Store) -> None:
    with store.session() as s:
        root = accounts.add_user(s, "root", "long enough password", admin=True)
        other = accounts.add_user(s, "other", "long enough password", admin=True)
        accounts.set_role(s, other, "user")
        with pytest.raises(EntryError, match="root is the last enabled administrator"):
            accounts.set_role(s, root, "user")
        accounts.set_role(s, other, "admin")
        accounts.set_disabled(other, True)
        with pytest.raises(EntryError, match="last enabled administrator"):
            accounts.set_role(s, root, "user")
        with pytest.raises(EntryError, match="a role is one of user, admin"):
            accounts.set_role(s, other, "owner")
        assert (root.role, other.role) == ("admin", "admin")
