"""List patterns: the three forms, IDN, validation, matching."""

import time
from email.utils import getaddresses

import pytest

from stronghold import lists
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


PLAIN_FROM = ["a@b.example", "  A.B+c@Sub.B.example\t", "<x@y.example>", "Joe <joe@y.example>",
              '"Doe, John" <j.doe@y.example>', "Dr. J. Q. Public <jqp@y.example> ", 'J\u00fcrgen "x<y>" <j@y.example>',
              "O'Neil<o@y.example>", '"" <e@y.example>', ". <dot@y.example>"]
PARSED_FROM = ["a@b.example (Joe)", "a@b.example, c@d.example", '"q\\"q" <q@y.example>', "<@route:a@b.example>",
               "Joe <joe@[192.0.2.1]>", "J\u00fcrgen <j\u00fc@y.example>", "Joe\r\n <joe@y.example>",
               "Joe <joe@y.example> x", "group: a@b.example;", "a@b@c.example", "", "<>", "Joe <joe@y.example"]


@pytest.mark.parametrize("header", PLAIN_FROM + PARSED_FROM)
def test_sender_addresses_read_the_from_as_getaddresses_does(header: str) -> None:
    """One plain address is read without the parser (PLAIN_FROM), anything else by it; both give
    what getaddresses() gives."""
    assert (lists._ONE_ADDRESS.fullmatch(header) is not None) is (header in PLAIN_FROM)
    expected = [("envelope", "s@x.example")]
    for _, addr in getaddresses([header])[:5]:
        try:
            pair = ("from", lists._matchable(addr))
        except PatternError:
            continue
        if pair not in expected:
            expected.append(pair)
    assert sender_addresses("s@x.example", header) == expected


def test_a_utf8_local_part_is_matched_by_its_domain() -> None:
    """SMTPUTF8 senders (RFC 6531): a local part outside ASCII does not normalize (no pattern can
    name it), but its domain is compared as any other, so domain blocks hold for it."""
    got = sender_addresses("<J\u00d6RG@B\u00fccher.Example>", "J\u00f6rg <j\u00f6rg@mail.xn--bcher-kva.example>")
    assert got == [("envelope", "j\u00f6rg@xn--bcher-kva.example"), ("from", "j\u00f6rg@mail.xn--bcher-kva.example")]
    assert matches(normalize_pattern("@b\u00fccher.example"), got[0][1])
    assert matches(normalize_pattern("*.b\u00fccher.example"), got[1][1])
    for unreadable in ("j\u00f6 rg@x.example", "j\u00f6\x85@x.example", "j\u00f6@x@y.example", "j\u00f6@-x.example",
                       "j\udcf6@x.example", "\u00f6@", "@x.example"):
        assert sender_addresses(unreadable, None) == [], unreadable


def test_a_hostile_from_is_read_in_linear_time() -> None:
    started = time.process_time()
    for header in ["a" * 50_000, '"' + "a " * 25_000, "a " * 25_000 + "<", "a." * 25_000 + "@"]:
        sender_addresses("s@x.example", header)
    assert time.process_time() - started < 2  # a backtracking pattern takes minutes here


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


def test_other_envelope_compares_addresses_as_addresses() -> None:
    """The envelope sender beside the From (Junk page, `quarantine ls`, digest) only where it is
    another address: an A-label domain is the Unicode one, and an address that does not normalize
    (a UTF-8 local part) still equals itself."""
    assert lists.other_envelope("Bücher <info@BÜCHER.example>", "info@xn--bcher-kva.example") == ""
    assert lists.other_envelope("José <josé@shop.example>", "JOSÉ@shop.example") == ""
    assert lists.other_envelope("José <josé@shop.example>", "bounce@mailer.example") == "bounce@mailer.example"
    assert lists.other_envelope("news@shop.example", "josé@shop.example") == "josé@shop.example"


# -- the forms one mailbox is written in ------------------------------------------------------

@pytest.mark.parametrize("written", ['"boss"@annoying.example', '"bo\\ss"@annoying.example',
                                     '<"Boss"@Annoying.Example.>', 'boss@annoying.example.'])
def test_a_quoted_local_part_is_the_same_mailbox(written: str) -> None:
    """Quotes that are not needed change nothing: a block of boss@ (or of the domain) must hold
    for "boss"@ in MAIL FROM or the From, which mail clients show as boss@."""
    assert lists.normalize_address(written) == "boss@annoying.example"
    index = ListIndex([ListEntry(1, "m1@example.com", "block", "@annoying.example")])
    for envelope, header in ((written, None), ("x@elsewhere.example", f"Boss <{written.strip('<>')}>")):
        assert index.find("m1@example.com", "block", sender_addresses(envelope, header)) is not None


@pytest.mark.parametrize("needs_quotes", ['"sp am"@annoying.example', '"a@b"@annoying.example', '""@annoying.example'])
def test_a_local_part_that_needs_its_quotes_is_still_refused(needs_quotes: str) -> None:
    with pytest.raises(PatternError):
        lists.normalize_address(needs_quotes)


@pytest.mark.parametrize("given", ["hank@example.com", "Hank@EXAMPLE.com", '"hank"@example.com', '"h\\ank"@example.com',
                                   "hank@example.com.", "<hank@example.com>", "example.com!hank", "hank%example.com"])
def test_recipient_forms_postfix_delivers_to_one_mailbox_are_one_recipient(given: str) -> None:
    """What a real Postfix delivered each of these to (tests/e2e/test_milter_postfix.py)."""
    assert lists.recipient_address(given) == "hank@example.com"


def test_a_recipient_that_does_not_normalize_is_kept_lower_cased() -> None:
    assert lists.recipient_address('"Two Words"@Example.com') == '"two words"@example.com'
    assert lists.recipient_address("postmaster") == "postmaster"


@pytest.mark.parametrize("given, delimiters, address", [
    ("Hank+News@example.com", "+", "hank@example.com"),
    ("hank-news+x@example.com", "+-", "hank@example.com"),
    ('"hank+news"@example.com.', "+", "hank@example.com"),
    ("hank+news@example.com", "", "hank+news@example.com"),  # no extensions unless Postfix has them
    ("+news@example.com", "+", "+news@example.com"),  # a delimiter first starts no extension
])
def test_an_address_extension_is_its_mailbox_where_postfix_has_a_delimiter(given: str, delimiters: str,
                                                                            address: str) -> None:
    assert lists.recipient_address(given, delimiters) == address
