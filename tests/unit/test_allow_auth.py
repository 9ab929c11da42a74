"""Allow entries a forger cannot use: SPF, DKIM, DMARC alignment against a real DNS server on loopback."""

from __future__ import annotations

import io
import uuid

import pytest

from stronghold.authres import Authenticator, AuthResults, parse_header, single_from
from stronghold.classifier import Score
from stronghold.dnscache import Dns
from stronghold.engine import gather
from stronghold.lists import ListEntry, ListIndex
from stronghold.message import parse
from stronghold.policy import Policy
from stronghold.precedence import decide
from stronghold.verdict import Action, Category, Envelope, Verdict
from tests.harness.dnsserver import LoopbackDns, sign

RCPT = "m1@example.com"
POLICY = Policy(reject_threshold=0.99, spam_action=Action.TAG, spam_action_high=Action.REJECT)


class FixedModel:
    spam_threshold = 0.9

    def __init__(self, probability: float) -> None:
        self.probability = probability

    def score(self, tokens: set[str]) -> Score:
        return Score(self.probability, ())


def message(frm: str | None = "The Boss <boss@trusted.example>", body: str = "Figures attached.\r\n",
            extra: str = "") -> bytes:
    head = f"From: {frm}\r\n" if frm is not None else ""
    return (f"{head}To: {RCPT}\r\nSubject: figures\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@trusted.example>\r\n{extra}\r\n{body}").encode()


def entries(*specs: tuple[str, bool] | str) -> ListIndex:
    items = []
    for i, spec in enumerate(specs, 1):
        pattern, trust = (spec, False) if isinstance(spec, str) else spec
        items.append(ListEntry(i, RCPT, "allow", pattern, trust_unauthenticated=trust))
    return ListIndex(items)


@pytest.fixture(scope="module")
def auth(test_dns: LoopbackDns) -> Authenticator:
    return Authenticator("check", "mx.test.example", Dns(("127.0.0.1",), test_dns.port, 1.0))


def run(auth: Authenticator | None, sender: str, raw: bytes, idx: ListIndex, ip: str = "127.0.0.1",
        policy: Policy = POLICY, score: float = 0.999) -> Verdict:
    msg = parse(raw)
    env = Envelope(sender, (RCPT,), ip, "mx.sender.example", "Q1")
    found = gather(msg, io.BytesIO(raw), None, lambda: FixedModel(score), lambda: idx,  # type: ignore[arg-type,return-value]
                   tokens=set(), envelope=env, authenticator=auth)
    return decide(env, msg, found, policy)


def trace(v: Verdict) -> str:
    return v.summary


# -- SPF -------------------------------------------------------------------------------

@pytest.mark.parametrize("domain,result", [("trusted.example", "pass"), ("fail.example", "fail"),
                                           ("softfail.example", "softfail"), ("neutral.example", "neutral"),
                                           ("none.example", "none"), ("temperror.example", "temperror")])
def test_each_spf_result_and_what_an_envelope_match_gets(auth: Authenticator, domain: str, result: str) -> None:
    sender = f"boss@{domain}"
    found = auth.check(sender, "127.0.0.1", "mx.sender.example", [], lambda: b"")
    assert (found.spf, found.spf_domain) == (result, domain)
    v = run(auth, sender, message("News <news@elsewhere.example>"), entries(sender))
    if result == "pass":
        assert v.category is Category.ALLOWED and "allow=match" in trace(v)
    else:
        assert v.category is Category.SPAM and v.action is Action.REJECT
        assert f"envelope sender {sender} not authenticated (spf={result} dkim=none)" in trace(v)


def test_envelope_sender_matches_only_from_an_address_spf_permits(auth: Authenticator) -> None:
    raw = message("Someone <x@elsewhere.example>")
    assert run(auth, "boss@trusted.example", raw, entries("boss@trusted.example")).category is Category.ALLOWED
    forged = run(auth, "boss@trusted.example", raw, entries("boss@trusted.example"), ip="192.0.2.9")
    assert forged.category is Category.SPAM
    assert "not authenticated (spf=fail dkim=none)" in trace(forged)


# -- DKIM and alignment ---------------------------------------------------------------------

def test_signed_from_is_allowed_even_when_spf_fails(auth: Authenticator, test_dns: LoopbackDns) -> None:
    raw = sign(message(), "trusted.example", test_dns.keys)
    v = run(auth, "bounce@fail.example", raw, entries("boss@trusted.example"))
    assert v.category is Category.ALLOWED and v.action is Action.ACCEPT
    assert v.auth is not None and v.auth.dkim == (("trusted.example", "pass"),)
    assert "auth=checked(spf=fail(fail.example) dkim=pass(trusted.example)" in trace(v)


def test_altered_after_signing_is_not_authenticated(auth: Authenticator, test_dns: LoopbackDns) -> None:
    raw = sign(message(), "trusted.example", test_dns.keys).replace(b"Figures attached.", b"Wire the money.")
    v = run(auth, "bounce@fail.example", raw, entries("boss@trusted.example"))
    assert v.category is Category.SPAM
    assert "allow=skipped(#1 From boss@trusted.example not authenticated " \
           "(spf=fail dkim=fail(trusted.example)))" in trace(v)


def test_unsigned_and_other_domain_signatures_are_not_aligned(auth: Authenticator, test_dns: LoopbackDns) -> None:
    v = run(auth, "bounce@fail.example", message(), entries("boss@trusted.example"))
    assert v.category is Category.SPAM and "(spf=fail dkim=none)" in trace(v)
    other = sign(message(), "other.example", test_dns.keys)
    v = run(auth, "bounce@fail.example", other, entries("boss@trusted.example"))
    assert v.category is Category.SPAM and "(spf=fail dkim=pass(other.example))" in trace(v)
    # SPF passing for another domain does not vouch for the From either
    v = run(auth, "bounce@other.example", message(), entries("boss@trusted.example"))
    assert v.category is Category.SPAM and "(spf=pass dkim=none)" in trace(v)


def test_unsigned_mail_is_not_read_again_for_dkim(auth: Authenticator, test_dns: LoopbackDns) -> None:
    def must_not_read() -> bytes:
        raise AssertionError("the whole message was read for DKIM without a DKIM-Signature")
    raw = message()
    found = auth.check("bounce@fail.example", "127.0.0.1", "mx.sender.example", parse(raw).headers, must_not_read)
    assert found.dkim == () and found.spf == "fail"
    signed = sign(raw, "trusted.example", test_dns.keys)
    found = auth.check("bounce@fail.example", "127.0.0.1", "mx.sender.example", parse(signed).headers,
                       lambda: signed)
    assert found.dkim == (("trusted.example", "pass"),)


def test_relaxed_alignment_subdomain_signature_and_spf(auth: Authenticator, test_dns: LoopbackDns) -> None:
    sub = sign(message(), "mail.trusted.example", test_dns.keys)
    assert run(auth, "bounce@fail.example", sub, entries("boss@trusted.example")).category is Category.ALLOWED
    # SPF pass for trusted.example aligns a From at a subdomain of it
    raw = message("Alerts <alerts@news.trusted.example>")
    assert run(auth, "bounce@trusted.example", raw, entries("@news.trusted.example")).category is Category.ALLOWED


def test_strict_alignment_when_the_domain_asks_for_it(auth: Authenticator, test_dns: LoopbackDns) -> None:
    raw = sign(message("News <news@news.strict.example>"), "strict.example", test_dns.keys)
    v = run(auth, "bounce@fail.example", raw, entries("@news.strict.example"))
    assert v.category is Category.SPAM  # adkim=s at the organizational domain: d= must equal the From domain
    assert v.auth is not None and v.auth.dmarc == "fail"



def test_an_international_from_domain_is_checked_in_its_ascii_form(auth: Authenticator, test_dns: LoopbackDns) -> None:
    """A From domain in Unicode (internationalized mail) is the same domain as its A-label, which is
    what DKIM d=, SPF, DNS and the lists use: aligned, looked up and allowed in that form."""
    raw = sign(message("Bücher <verkauf@bücher.example>"), "xn--bcher-kva.example", test_dns.keys)
    found = auth.check("bounce@fail.example", "127.0.0.1", "mx.sender.example", parse(raw).headers, lambda: raw)
    assert found.from_domain == "xn--bcher-kva.example"
    assert found.dkim == (("xn--bcher-kva.example", "pass"),) and found.dmarc == "pass", found
    v = run(auth, "bounce@fail.example", raw, entries("@xn--bcher-kva.example"))
    assert v.category is Category.ALLOWED and v.action is Action.ACCEPT, trace(v)
    # unsigned, with SPF failing: DMARC fails for it as for any domain, under its policy (p=reject)
    found = auth.check("bounce@fail.example", "127.0.0.1", "mx.sender.example",
                       parse(message("Bücher <verkauf@bücher.example>")).headers, lambda: b"")
    assert (found.dmarc, found.dmarc_policy) == ("fail", "reject")

# -- the header From: exactly one address ---------------------------------------------------

def test_several_from_addresses_or_none_never_match(auth: Authenticator, test_dns: LoopbackDns) -> None:
    two = sign(message("evil@bad.example, boss@trusted.example"), "trusted.example", test_dns.keys)
    for idx in (entries("boss@trusted.example"), entries(("boss@trusted.example", True))):
        v = run(auth, "evil@bad.example", two, idx)
        assert v.category is Category.SPAM
        assert "the header From must hold exactly one address" in trace(v)
    twice = sign(message(extra="From: evil@bad.example\r\n"), "trusted.example", test_dns.keys)
    assert run(auth, "evil@bad.example", twice, entries("boss@trusted.example")).category is Category.SPAM
    none = message(None)
    assert run(auth, "evil@bad.example", none, entries(("boss@trusted.example", True))).category is Category.SPAM


def test_trust_without_authentication_is_per_entry(auth: Authenticator) -> None:
    raw = message("Old System <old@none.example>")
    assert run(auth, "bounce@fail.example", raw, entries("old@none.example")).category is Category.SPAM
    v = run(auth, "bounce@fail.example", raw, entries(("old@none.example", True)))
    assert v.category is Category.ALLOWED and "trusted without authentication" in trace(v)
    # but not where the domain's DMARC policy says its mail is always authenticated
    v = run(auth, "bounce@fail.example", message(), entries(("boss@trusted.example", True)))
    assert v.category is Category.SPAM and "allow=skipped(#1 DMARC failed)" in trace(v)


# -- DMARC policy as a signal -----------------------------------------------------------------

def test_dmarc_failure_under_p_reject_is_tagged_or_rejected(test_dns: LoopbackDns) -> None:
    every = Authenticator("check", "mx.test.example", Dns(("127.0.0.1",), test_dns.port, 1.0), every_message=True)
    v = run(every, "bounce@fail.example", message(), ListIndex([]), score=0.1)
    assert v.action is Action.TAG and v.category is Category.SPAM
    assert "dmarc=fail(p=reject trusted.example)" in trace(v)
    assert dict(v.headers)["X-Spam-Flag"] == "YES"
    rejecting = Policy(reject_threshold=0.99, dmarc_action=Action.REJECT)
    assert run(every, "bounce@fail.example", message(), ListIndex([]), policy=rejecting, score=0.1).action \
        is Action.REJECT
    # p=quarantine: tagged too; p=none or a pass: nothing
    q = run(every, "bounce@fail.example", message("x@quarantine.example"), ListIndex([]), score=0.1)
    assert q.action is Action.TAG and "dmarc=fail(p=quarantine" in trace(q)
    ok = run(every, "bounce@trusted.example", message(), ListIndex([]), score=0.1)
    assert ok.action is Action.ACCEPT and ok.auth is not None and ok.auth.dmarc == "pass"


def test_dmarc_failure_never_overrides_a_recipients_block(test_dns: LoopbackDns) -> None:
    every = Authenticator("check", "mx.test.example", Dns(("127.0.0.1",), test_dns.port, 1.0), every_message=True)
    idx = ListIndex([ListEntry(1, RCPT, "block", "@trusted.example")])
    v = run(every, "bounce@fail.example", message(), idx, score=0.1)
    assert v.decisions[0].category is Category.BLOCKED and v.action is Action.REJECT


# -- cost: no lookup unless it can change the outcome -------------------------------------------

def test_ordinary_mail_causes_no_lookup(test_dns: LoopbackDns) -> None:
    auth = Authenticator("check", "mx.test.example", Dns(("127.0.0.1",), test_dns.port, 1.0))  # empty cache
    before = test_dns.lookups()
    idx = ListIndex([ListEntry(1, RCPT, "allow", "friend@else.example"),
                     ListEntry(2, "other@example.com", "allow", "@trusted.example")])
    v = run(auth, "boss@trusted.example", message(), idx, score=0.1)
    assert v.auth is None and v.category is Category.CLEAN
    assert test_dns.lookups() == before
    run(auth, "boss@trusted.example", message(), entries("boss@trusted.example"))
    assert test_dns.lookups() > before  # the same mail with a matching entry is checked


# -- DNS failure -------------------------------------------------------------------------------

def test_dns_down_leaves_entries_unauthenticated_and_mail_flowing(test_dns: LoopbackDns) -> None:
    down = Authenticator("check", "mx.test.example", Dns(("127.0.0.1",), test_dns.port, 0.3))
    raw = sign(message(), "trusted.example", test_dns.keys)
    test_dns.zone.silent = True
    try:
        v = run(down, "boss@trusted.example", raw, entries("boss@trusted.example"))
        strict = run(down, "boss@trusted.example", raw, entries("boss@trusted.example"),
                     policy=Policy(on_dns_error="tempfail"))
    finally:
        test_dns.zone.silent = False
    assert v.category is Category.SPAM and v.action is Action.REJECT  # scored, as if not allow-listed
    assert "(spf=temperror dkim=temperror(trusted.example))" in trace(v)
    assert strict.action is Action.TEMPFAIL


# -- a checker in front of us: Authentication-Results -------------------------------------------

def test_trusted_authentication_results_topmost_only(test_dns: LoopbackDns) -> None:
    hdr = Authenticator("header", "gw.test.example", Dns(("127.0.0.1",), test_dns.port, 1.0))
    extra = ("Authentication-Results: gw.test.example; spf=fail smtp.mailfrom=bounce@fail.example;\r\n"
             "  dkim=pass (good signature) header.d=trusted.example header.s=sel\r\n"
             "Authentication-Results: evil.example; dkim=pass header.d=other.example\r\n"
             "Authentication-Results: gw.test.example; dkim=pass header.d=forged.example\r\n")
    raw = f"{extra}".encode() + message()
    before = test_dns.lookups()
    v = run(hdr, "bounce@fail.example", raw, entries("boss@trusted.example"))
    assert v.category is Category.ALLOWED
    assert v.auth is not None and v.auth.dkim == (("trusted.example", "pass"),)
    assert test_dns.lookups() == before  # read, not looked up
    assert hdr.forged_positions(parse(raw).headers) == [3]  # the lower copy with the gateway's id
    # another id is never read: without the gateway's header the sender is unauthenticated
    other = b"Authentication-Results: evil.example; dkim=pass header.d=trusted.example\r\n" + message()
    v = run(hdr, "bounce@fail.example", other, entries("boss@trusted.example"))
    assert v.category is Category.SPAM and "header gw.test.example (absent)" in trace(v)


@pytest.mark.parametrize(("dmarc", "policy"), [
    ("dmarc=fail (p=reject sp=none dis=none) header.from=trusted.example", "reject"),
    ("dmarc=fail (p=QUARANTINE sp=NONE dis=NONE) header.from=trusted.example", "quarantine"),
    ("dmarc=fail policy.published-domain-policy=reject header.from=trusted.example", "reject"),
    ("dmarc=fail (sp=reject p=none) header.from=trusted.example", ""),  # p=none: nothing to enforce
    ("dmarc=pass (p=reject) header.from=trusted.example", ""),
    ("dmarc=fail header.from=trusted.example", ""),  # no policy given: the checker in front decides
])
def test_header_mode_reads_the_dmarc_policy_the_checker_noted(test_dns: LoopbackDns, dmarc: str,
                                                             policy: str) -> None:
    """In header mode a DMARC failure under p=quarantine/reject gets dmarc_action, as in check mode."""
    hdr = Authenticator("header", "gw.test.example", Dns(("127.0.0.1",), test_dns.port, 1.0))
    raw = f"Authentication-Results: gw.test.example; spf=none; {dmarc}\r\n".encode() + message()
    v = run(hdr, "bounce@fail.example", raw, entries("boss@trusted.example"))
    assert v.auth is not None and v.auth.dmarc_failed_policy() == policy
    if policy:
        assert v.category is Category.SPAM and f"dmarc=fail(p={policy} trusted.example)" in trace(v), trace(v)
    reasons = {d.reason for d in v.decisions}
    assert (f"dmarc fail (p={policy})" in reasons) if policy else not any("dmarc" in r for r in reasons), reasons


@pytest.mark.parametrize("value", [
    # a sender-chosen quoted local part, repeated by the checker, must not add results of its own
    'gw.test.example; spf=pass smtp.mailfrom="x; dkim=pass header.d=trusted.example "@evil.example; '
    "dmarc=fail (p=reject) header.from=trusted.example",
    'gw.test.example; spf=pass smtp.mailfrom="x;dmarc=pass "@evil.example; dmarc=fail (p=reject) '
    "header.from=trusted.example",
    # nor a comment quoting it that looks like another DMARC result
    'gw.test.example; spf=pass (domain of "dmarc=none(p=none)"@evil.example designates 192.0.2.1) '
    "smtp.mailfrom=a@evil.example; dmarc=fail (p=reject dis=none) header.from=trusted.example",
])
def test_results_forged_inside_quoted_addresses_and_comments_are_text(test_dns: LoopbackDns, value: str) -> None:
    hdr = Authenticator("header", "gw.test.example", Dns(("127.0.0.1",), test_dns.port, 1.0))
    raw = f"Authentication-Results: {value}\r\n".encode() + message()
    v = run(hdr, "a@evil.example", raw, entries("boss@trusted.example"))
    assert v.auth is not None and v.auth.dkim == () and v.auth.spf_domain == "evil.example"
    assert v.auth.dmarc == "fail" and v.auth.dmarc_failed_policy() == "reject"
    assert v.category is Category.SPAM and {d.reason for d in v.decisions} == {"dmarc fail (p=reject)"}


def test_in_check_mode_every_header_with_our_id_is_forged(auth: Authenticator) -> None:
    raw = (b"Authentication-Results: MX.test.example; dkim=pass header.d=trusted.example\r\n"
           + message())
    assert auth.forged_positions(parse(raw).headers) == [1]
    v = run(auth, "bounce@fail.example", raw, entries("boss@trusted.example"))
    assert v.category is Category.SPAM  # ignored: we checked ourselves


@pytest.mark.parametrize("d", ["evil.example dmarc=pass header.from=trusted.example",  # a result of its own
                               "evil.example (", 'evil.example "',  # a comment or quote hiding the rest
                               "evil.example\r\n\tdmarc=pass", "evil.example;"])
def test_a_signature_domain_that_is_no_domain_never_reaches_our_header(auth: Authenticator, d: str) -> None:
    """Our Authentication-Results (and the trace) name only domains: text in a forged d= would
    otherwise speak in our name to every reader downstream ("dmarc=pass"), or open a comment
    that hides our "dmarc=fail" from them."""
    sig = f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={d}; s=sel; h=from; bh=AAAA; b=AAAA\r\n"
    raw = sig.encode() + message()
    found = auth.check("bounce@evil.example", "127.0.0.1", "mx.sender.example", parse(raw).headers, lambda: raw)
    assert found.header_value("mx.test.example") == ("mx.test.example; spf=none smtp.mailfrom=evil.example; "
                                                     "dkim=none; dmarc=fail header.from=trusted.example")
    assert found.describe().startswith("spf=none(evil.example) dkim=none ")


@pytest.mark.parametrize("helo", ["evil.example(", 'evil"example', "x;dmarc=pass"])
def test_a_helo_that_is_no_domain_is_not_written_as_the_spf_domain(auth: Authenticator, helo: str) -> None:
    """The null sender's SPF is the HELO name's, which the client chooses whole."""
    found = auth.check("", "127.0.0.1", helo, parse(message()).headers, lambda: b"")
    assert found.spf_domain == "" and "smtp.mailfrom" not in found.header_value("mx.test.example")


def test_an_international_domain_is_still_a_domain(auth: Authenticator) -> None:
    """Kept, in the A-label form DNS and DKIM use (RFC 8616)."""
    found = auth.check("", "127.0.0.1", "mx.bücher.example", parse(message("a@bücher.example")).headers, lambda: b"")
    assert (found.spf_domain, found.from_domain) == ("mx.xn--bcher-kva.example", "xn--bcher-kva.example")
    assert "header.from=xn--bcher-kva.example" in found.header_value("mx.test.example")


def test_authentication_results_parsing() -> None:
    ident, methods = parse_header('mx.example (comment (nested)) 1; spf=pass smtp.mailfrom="a@b.example"; '
                                  "dkim=pass header.d=b.example; dmarc=fail header.from=b.example")
    assert ident == "mx.example"
    assert methods[0] == ("spf", "pass", {"smtp.mailfrom": "a@b.example"})
    assert [m for m, _, _ in methods] == ["spf", "dkim", "dmarc"]
    own = AuthResults("checked", spf="pass", spf_domain="b.example", dkim=(("b.example", "pass"),), dmarc="pass",
                      from_domain="b.example")
    assert parse_header(own.header_value("mx.example"))[1][1] == ("dkim", "pass", {"header.d": "b.example"})


def test_an_encoded_display_name_with_a_comma_is_still_one_authenticated_address(
        auth: Authenticator, test_dns: LoopbackDns) -> None:
    """``=?utf-8?q?M=C3=BCller=2C_Hans?=`` decodes to "Müller, Hans": a name, not two mailboxes.
    Read unquoted it split the From in two, so the signed sender's allow entry never applied."""
    raw = sign(message("=?utf-8?q?M=C3=BCller=2C_Boss?= <boss@trusted.example>"), "trusted.example",
               test_dns.keys)
    v = run(auth, "bounce@fail.example", raw, entries("boss@trusted.example"))
    assert v.category is Category.ALLOWED and v.action is Action.ACCEPT
    assert v.auth is not None and v.auth.from_domain == "trusted.example"


def test_an_address_hidden_in_an_encoded_name_is_a_name(auth: Authenticator) -> None:
    """An encoded word is a display name: ``boss@trusted.example`` inside one neither matches the
    allow entry (even one trusted without authentication) nor stops the real address counting."""
    raw = message("=?utf-8?q?boss=40trusted=2Eexample?= <evil@bad.example>")
    for idx in (entries("boss@trusted.example"), entries(("boss@trusted.example", True))):
        v = run(auth, "evil@bad.example", raw, idx)
        assert v.category is Category.SPAM
    whole = message("=?utf-8?b?Qm9zcyA8Ym9zc0B0cnVzdGVkLmV4YW1wbGU+?=")  # "Boss <boss@trusted.example>"
    v = run(auth, "evil@bad.example", whole, entries(("boss@trusted.example", True)))
    assert v.category is Category.SPAM


def test_single_from_never_returns_a_name_the_parser_took_for_an_address() -> None:
    assert single_from(['"Boss <boss@trusted.example>"']) is None  # a quoted name alone: no address
    assert single_from(['"Müller, Hans" <Hans@Firma.example>']) == "hans@firma.example"
