"""``delivered.as_scored``: a copy as delivered back to what the milter saw, and nothing more."""

from __future__ import annotations

from stronghold.delivered import as_scored
from stronghold.training import tokenize

OURS = "mx.example.net"
SCORED = (b"Received: from relay.example.org (relay.example.org [192.0.2.1])\n"
          b"\tby relay.example.org (Postfix) with ESMTP id AAA; Tue, 1 Dec 2026 10:00:00 +0000\n"
          b"Delivered-To: list@example.org\n"
          b"Authentication-Results: relay.example.org; dkim=pass\n"
          b"From: Carol <carol@sender.example>\nTo: reader@example.com\nSubject: Lunch\n"
          b"\nX-Spam-Flag: YES in the body stays\n")
DOVECOT = (b"Return-Path: <carol@sender.example>\nDelivered-To: reader@example.com\n"
           b"Received: from mx.example.net\n\tby imap.example.net with LMTP\n\tid x\n"
           b"\t(envelope-from <carol@sender.example>)\n\tfor <reader@example.com>; Tue, 1 Dec 2026 10:00:01 +0000\n")
OUR_AUTHRES = b"Authentication-Results: mx.example.net; spf=pass smtp.mailfrom=sender.example\n"
POSTFIX = (b"Received: from client.example (client.example [198.51.100.7])\n"
           b"\tby mx.example.net (Postfix) with ESMTP id BBB\n\tfor <reader@example.com>; Tue, 1 Dec 2026\n")
VERDICT = (b"X-Spam-Flag: NO\nX-Spam-Score: 0.0201\nX-Spam-Status: No score=0.0201\n"
           b"X-Stronghold-Version: 0.1.0 model 92d923698f01\n")


def _delivered(scored: bytes) -> bytes:
    head, body = scored.split(b"\n\n", 1)
    return DOVECOT + OUR_AUTHRES + POSTFIX + head + b"\n" + VERDICT + b"\n" + body


def test_what_delivery_added_is_taken_off_and_nothing_else() -> None:
    assert as_scored(_delivered(SCORED), OURS) == SCORED
    crlf = _delivered(SCORED).replace(b"\n", b"\r\n")
    assert as_scored(crlf, OURS) == SCORED.replace(b"\n", b"\r\n")
    assert tokenize(as_scored(crlf, OURS)) == tokenize(SCORED)
    assert tokenize(crlf) != tokenize(SCORED)  # what the hook learned before


def test_authentication_results_only_ours_and_only_when_the_milter_adds_one() -> None:
    kept = as_scored(_delivered(SCORED), None)  # auth_mode "header": the one with our id came from the front
    assert OUR_AUTHRES in kept and b"X-Spam-" not in kept.split(b"\n\n")[0]
    second = SCORED.replace(b"From:", OUR_AUTHRES + b"From:", 1)  # not ours to take: only one is added
    assert as_scored(_delivered(second), OURS) == second


def test_the_lmtp_block_only_at_the_top_and_whole() -> None:
    assert as_scored(SCORED, OURS) == SCORED  # no LMTP block (an APPEND): the Received and Delivered-To stay
    not_lmtp = DOVECOT.replace(b"with LMTP", b"with ESMTP")
    raw = not_lmtp + POSTFIX + SCORED
    assert as_scored(raw, OURS) == raw
    interrupted = DOVECOT.replace(b"Delivered-To:", b"X-Other: 1\nDelivered-To:", 1) + SCORED
    assert as_scored(interrupted, OURS) == interrupted


def test_postfix_received_only_by_the_lmtp_client_and_right_below() -> None:
    other_host = POSTFIX.replace(b"by mx.example.net", b"by elsewhere.example")
    raw = DOVECOT + other_host + SCORED
    assert as_scored(raw, OURS) == other_host + SCORED
    # Postfix's own line is missing (another route): the one below it is the sender's, kept
    assert as_scored(DOVECOT + SCORED, OURS) == SCORED


def test_odd_input_passes_through() -> None:
    for raw in (b"", b"no header at all", b"\n\nbody only", b"X-Spam-Flag: YES\n\nno other header"):
        assert as_scored(raw, OURS) == raw
