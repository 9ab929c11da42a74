"""The quick paths of the lists: ListIndex's pattern index and normalize_address's one-match case
give what the plain rules give (a linear walk with ``matches``; the full address rules)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from hypothesis import example, given, settings
from hypothesis import strategies as st

from stronghold.lists import ListEntry, ListIndex, Match, PatternError, matches, normalize_address
from stronghold.lists import _normalized_address as full_rules


def walked(entries: list[ListEntry], owner: str | None, kind: str,
           senders: list[tuple[str, str]]) -> Iterator[Match]:
    """The lists' meaning: every entry in order, each against the senders in order."""
    for entry in entries:
        if entry.owner == owner and entry.kind == kind:
            for source, address in senders:
                if matches(entry.pattern, address):
                    yield Match(entry, source, address)


LABELS = st.sampled_from(["example", "sub", "mail", "a", "b", "", "com", "co.uk", "@x", "."])
DOMAINS = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
PATTERNS = st.one_of(DOMAINS.map(lambda d: "*." + d), DOMAINS.map(lambda d: "@" + d),
                     st.tuples(st.sampled_from(["al", "bo", ""]), DOMAINS).map("@".join),
                     st.sampled_from(["*", "*.", "@", "al", "al@"]))
ADDRESSES = st.one_of(st.tuples(st.sampled_from(["al", "bo", "a@b"]), DOMAINS).map("@".join), DOMAINS)
ENTRIES = st.lists(st.tuples(st.sampled_from([None, "u@x.example", "v@x.example"]),
                             st.sampled_from(["allow", "block"]), PATTERNS), max_size=25)
SENDERS = st.lists(st.tuples(st.sampled_from(["envelope", "from"]), ADDRESSES), max_size=4)


@settings(max_examples=600, deadline=None)
@given(ENTRIES, SENDERS)
@example([(None, "block", "*.example"), (None, "block", "al@mail.example")],
         [("envelope", "al@mail.example"), ("from", "bo@example")])
@example([(None, "allow", "@mail.example"), (None, "allow", "*.sub.example")],
         [("from", "al@a.sub.example"), ("envelope", "al@mail.example")])
def test_the_index_finds_what_walking_the_list_finds(raw: list[tuple[str | None, str, str]],
                                                      senders: list[tuple[str, str]]) -> None:
    entries = [ListEntry(n, owner, kind, pattern) for n, (owner, kind, pattern) in enumerate(raw, 1)]
    index = ListIndex(entries)
    assert len(index) == len(entries)
    for owner in (None, "u@x.example", "v@x.example", "w@x.example"):
        for kind in ("allow", "block"):
            expected = list(walked(entries, owner, kind, senders))
            assert list(index.find_all(owner, kind, senders)) == expected
            assert index.find(owner, kind, senders) == next(iter(expected), None)


def test_a_list_change_is_seen_by_the_next_index() -> None:
    """The index is built from the entries it is given: a new ListIndex (the store's cache builds
    one when the lists change) sees an added or removed entry, and the old one is not changed."""
    senders = [("envelope", "x@spam.example")]
    kept, added = ListEntry(1, None, "block", "@other.example"), ListEntry(2, None, "block", "*.spam.example")
    before = ListIndex([kept])
    after = ListIndex([kept, added])
    assert before.find(None, "block", senders) is None
    assert after.find(None, "block", senders) == Match(added, "envelope", "x@spam.example")
    assert list(after.find_all(None, "block", senders)) == [Match(added, "envelope", "x@spam.example")]
    assert before.find(None, "block", senders) is None
    assert ListIndex([kept]).find(None, "block", senders) is None  # removed again
    assert ListIndex([]).find(None, "block", senders) is None


def full(address: str) -> str:
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return full_rules(address, text.lower())


def outcome(rule, address: str) -> tuple[str, str]:
    try:
        return "ok", rule(address)
    except PatternError as exc:
        return "refused", str(exc)


ADDRESS_TEXT = st.text(st.sampled_from("aZ0.-_+@<> \n\tK\u212a\u0130é.xn--x" + "-" * 3), max_size=24)
LONG_LABEL = "a" * 63


@settings(max_examples=1500, deadline=None)
@given(st.one_of(ADDRESS_TEXT, st.tuples(ADDRESS_TEXT, ADDRESS_TEXT).map("@example.".join)))
@example("Alice@Example.COM")
@example("<bob@mail.example>")
@example(" \u212aate@example.com ")  # the Kelvin sign lower-cases to an ASCII k
@example("x@xn--bcher-kva.example")
@example("x@XN--zz.example")  # not a valid A-label: refused
@example("a@b.example.")
@example("a.@b.example")
@example("a..b@b.example")
@example("a\n@b.example")
@example("a@b\n.example")
@example("a" * 64 + "@b.example")
@example("a" * 65 + "@b.example")
@example("a@" + ".".join([LONG_LABEL] * 4))  # 255 characters: too long
@example("a@" + ".".join([LONG_LABEL] * 3 + ["a" * 61]))  # 253: the longest there is
@example("a@" + "a" * 64 + ".example")
@example("a@-b.example")
@example("a@b-.example")
@example("a@example")
def test_normalize_address_quick_path_is_the_full_rules(address: str) -> None:
    assert outcome(normalize_address, address) == outcome(full, address)


def test_a_long_list_is_indexed_in_linear_time() -> None:
    """The store's cache builds a ListIndex at every refresh: 40,000 global entries take
    milliseconds (adding each pattern to a growing tuple took seconds)."""
    entries = [ListEntry(n, None, "block", f"@d{n}.example") for n in range(40_000)]
    started = time.process_time()
    index = ListIndex(entries)
    assert time.process_time() - started < 2
    assert index.find(None, "block", [("from", "x@d39999.example")]) == Match(entries[-1], "from", "x@d39999.example")
    assert index.may_match([None], "block", "x@d39999.example")
