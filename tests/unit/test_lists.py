"""List patterns: the three forms, IDN, validation, matching."""

import pytest

from stronghold.lists import ListEntry, ListIndex, PatternError, matches, normalize_pattern, sender_addresses


@pytest.mark.parametrize("raw, norm", [
    ("Alice@Example.COM", "alice@example.com"),
    ("@Example.com", "@example.com"),
    ("*.Example.com", "*.example.com"),
    ("bob@bücher.example", "bob@xn--bcher-kva.example"),
    ("*.bücher.example", "*.xn--bcher-kva.example"),
])
def test_normalize(raw: str, norm: str) -> None:
    assert normalize_pattern(raw) == norm


@pytest.mark.parametrize("bad", ["", "example", "a@@b.com", "*.com", "a*b@example.com", "@-bad-.com",
                                 "no spaces@example.com", "x@localhost", "*@example.com"])
def test_invalid_patterns_have_a_message(bad: str) -> None:
    with pytest.raises(PatternError) as err:
        normalize_pattern(bad)
    assert str(err.value)


@pytest.mark.parametrize("pattern, address, expected", [
    ("alice@example.com", "alice@example.com", True),
    ("alice@example.com", "alice@sub.example.com", False),
    ("@example.com", "bob@example.com", True),
    ("@example.com", "bob@sub.example.com", False),
    ("*.example.com", "bob@example.com", True),
    ("*.example.com", "bob@deep.sub.example.com", True),
    ("*.example.com", "bob@notexample.com", False),
])
def test_matches(pattern: str, address: str, expected: bool) -> None:
    assert matches(pattern, address) is expected


def test_sender_addresses_envelope_then_header_from() -> None:
    got = sender_addresses("Bounce@Lists.Example", '"Boss" <Boss@Corp.Example>')
    assert got == [("envelope", "bounce@lists.example"), ("from", "boss@corp.example")]
    assert sender_addresses("", None) == []


def test_index_finds_by_owner_and_kind() -> None:
    idx = ListIndex([ListEntry(1, "a@x.example", "block", "@spam.example"),
                     ListEntry(2, None, "allow", "*.good.example")])
    hit = idx.find("a@x.example", "block", [("from", "z@spam.example")])
    assert hit is not None and hit.entry.id == 1 and hit.source == "from"
    assert idx.find("b@x.example", "block", [("from", "z@spam.example")]) is None
    assert idx.find(None, "allow", [("envelope", "n@mail.good.example")]).entry.id == 2
