"""Tokens are scoped by where they come from."""

from stronghold.message import parse
from stronghold.tokens import family, features


def test_scoped_tokens() -> None:
    raw = (b"From: Big Deals <deals@promo.shop.example>\r\nSubject: FREE money now!!!\r\n"
           b"Received: from mx.relay.example ([203.0.113.9])\r\nX-Mailer: MassMailer 2.0\r\n"
           b"Content-Type: text/html\r\n\r\n<a href='http://win.prizes.example/claim?id=7'>Claim</a> "
           b"supercalifragilisticexpialidocious")
    toks = features(parse(raw))
    for expected in ("subject:free", "subject:money", "subject:punct:!!!",
                     "from:addr:deals@promo.shop.example",
                     "from:domain:shop.example", "from:name:deals", "received:relay.example",
                     "received:ip:203.0.113", "x-mailer:massmailer 2.0", "url:prizes.example",
                     "urlpath:claim", "claim", "skip:s 30", "tag:a", "html:only"):
        assert expected in toks, expected


def test_body_words_are_case_folded_and_short_words_dropped() -> None:
    toks = features(parse(b"Subject: x\r\n\r\nHello HELLO an of"))
    assert "hello" in toks and "an" not in toks
    assert "UPPER" in toks


def test_verdict_headers_from_outside_are_not_features() -> None:
    toks = features(parse(b"X-Spam-Flag: NO\r\nX-Spam-Status: No, trusted\r\n\r\nbody"))
    assert not any(t.startswith("x-spam") for t in toks)


def test_only_the_oldest_received_headers_and_no_collector_dates() -> None:
    hops = "".join(f"Received: from hop{i}.example ([192.0.2.{i}])\r\n" for i in range(8))  # newest first
    toks = features(parse((hops + "Delivery-Date: Tue, 3 Sep 2002 10:00:00 +0100\r\n"
                           "X-Original-Date: Tue, 3 Sep 2002\r\nSubject: x\r\n\r\nbody").encode()))
    assert {"received:hop7.example", "received:hop4.example"} <= toks
    assert "received:hop3.example" not in toks and "received:hop0.example" not in toks
    assert not any(t.startswith(("delivery-date", "x-original-date")) for t in toks)


def test_families_group_what_describes_one_fact() -> None:
    assert family("tag:table") == family("html:font-color:#000000") == family("cte:base64") == "FORMAT"
    assert family("received:relay.example") == family("list-id:w:fork") == family("errors-to:w:x") == "ROUTE"
    assert family("from:addr:a@b.example") == family("from:domain:b.example")
    assert family("url:example.com") != family("urlpath:claim")
    for content in ("viagra", "subject:free", "skip:s 30"):
        assert family(content) is content  # words vote each
