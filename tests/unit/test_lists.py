"""List patterns: the three forms, IDN, validation, matching."""

import pytest

from stronghold.lists import (
    ListEntry,
    ListIndex,
    PatternError,
    display,
    matches,
    normalize_address,
    normalize_pattern,
    sender_addresses,
)


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


@pytest.mark.parametrize(("raw", "stored", "shown"), [
    ("@faß.de", "@xn--fa-hia.de", "@faß.de"),  # IDNA 2008: ß is kept, not mapped to ss
    ("@FASS.de", "@fass.de", "@fass.de"),
    ("x@Bücher.Example", "x@xn--bcher-kva.example", "x@bücher.example"),  # UTS 46 lower-cases
    ("*.xn--bcher-kva.example", "*.xn--bcher-kva.example", "*.bücher.example"),
    ("@ÖBB.at", "@xn--bb-eka.at", "@öbb.at"),
])
def test_idn_stored_as_a_label_shown_as_u_label(raw: str, stored: str, shown: str) -> None:
    assert normalize_pattern(raw) == stored
    assert display(stored) == shown


def test_idn_blocks_the_right_domain() -> None:
    pattern = normalize_pattern("@faß.de")
    assert matches(pattern, normalize_address("mailer@xn--fa-hia.de"))
    assert matches(pattern, normalize_address("mailer@faß.de"))
    assert not matches(pattern, normalize_address("mailer@fass.de"))


@pytest.mark.parametrize("bad", ["@xn--zz.example", "@a\u200db.example", "@-bad.example", "@ex ample.com"])
def test_invalid_idn_is_refused(bad: str) -> None:
    with pytest.raises(PatternError, match="not a valid domain"):
        normalize_pattern(bad)
