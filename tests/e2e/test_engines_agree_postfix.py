"""The two protocol engines side by side (differential): the same SMTP conversations, byte for
byte, through a real Postfix in front of each engine must give the same replies, the same
delivered copies (recipients, X-Spam-*, Authentication-Results, Subject), the same held copies,
the same log lines and the same word from Postfix on each recipient.

The conversations are corpus samples and what real clients do: PIPELINING (many commands in one
write), several messages and RSET on one connection, BDAT in odd chunks, SMTPUTF8 (and a UTF-8
envelope without it), many recipients with different lists and thresholds, a virus, forged
verdict headers, a DKIM signature, and clients that hang up at each stage.  Add a conversation
to ``conversations`` and both engines are compared on it.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from devtools.localstack import Clamd, wait_for
from stronghold.antivirus import EICAR
from stronghold.classifier import Model
from stronghold.store import accounts, entries, quarantine
from stronghold.training import tokenize
from tests.conftest import Stack, corpus_files, dns_settings, mbox_stripped, shared_tmpdir
from tests.harness.dnsserver import LoopbackDns, sign

pytestmark = [pytest.mark.postfix, pytest.mark.clamd, pytest.mark.corpus]  # the stacks' model is trained on the corpus

ENGINES = ("native", "libmilter")
Step = tuple[bytes, int]  # what the client writes, then how many replies it reads


@pytest.fixture(scope="module")
def stacks(models_dir: Path, clamd: Clamd, test_dns: LoopbackDns) -> Iterator[dict[str, Stack]]:
    """One stack per engine, alike otherwise: Postfix offering SMTPUTF8 and opening the queue
    file at the first accepted recipient (its defaults), high spam held, the same lists and users."""
    homes = {engine: shared_tmpdir(f"stronghold-{engine}-") for engine in ENGINES}
    made = {engine: Stack(home, models_dir, clamd.address, f"sqlite:///{home / 'store.db'}", milter_engine=engine,
                          authserv_id="mx.stronghold.test", spam_action_high="quarantine",
                          **dns_settings(test_dns)) for engine, home in homes.items()}
    for s in made.values():
        s.postfix.extra = {"smtputf8_enable": "yes", "smtpd_delay_open_until_valid_rcpt": "yes"}
        with s.store.session() as session:
            entries.add_entry(session, "a1@example.com", "allow", "promo@deals.example", trust_unauthenticated=True)
            entries.add_entry(session, "b1@example.com", "block", "promo@deals.example")
            entries.add_entry(session, "e1@example.com", "block", "@hdrblock.example")
            entries.add_entry(session, "dk@example.com", "allow", "@trusted.example")  # so the sender is authenticated
            user = accounts.add_user(session, "carl", "a long enough passphrase 42")
            accounts.assign_address(session, user, "c1@example.com")
            accounts.set_spam_threshold(session, user, 0.5, (0.5, 0.99))
    with ThreadPoolExecutor(len(made)) as pool:
        list(pool.map(Stack.start, made.values()))
    for engine, s in made.items():
        s.milter.wait_log(f"{engine} protocol engine")
    yield made
    for s in made.values():
        s.stop()
    for home in homes.values():
        shutil.rmtree(home, ignore_errors=True)


# -- the conversations ------------------------------------------------------------------------

def crlf(raw: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", mbox_stripped(raw))


def with_id(tid: str, raw: bytes) -> bytes:
    return f"X-Test-Id: {tid}\r\n".encode() + crlf(raw)


def dot_data(message: bytes) -> bytes:
    """The message as DATA sends it: dot-stuffed, CRLF-ended, then the final dot."""
    stuffed = re.sub(rb"(?m)^\.", b"..", message)
    return stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n"


def transaction(sender: str, rcpts: list[str], message: bytes, mail_params: str = "") -> list[Step]:
    """MAIL, RCPT..., DATA in one write (PIPELINING), then the message."""
    head = f"MAIL FROM:<{sender}>{mail_params}\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts) + "DATA\r\n"
    return [(head.encode("utf-8", "surrogateescape"), len(rcpts) + 2), (dot_data(message), 1)]


def session(*transactions: list[Step], hang_up: bool = False) -> list[Step]:
    steps: list[Step] = [(b"EHLO client.example\r\n", 1)]
    for t in transactions:
        steps += t
    return steps if hang_up else [*steps, (b"QUIT\r\n", 1)]


def bdat(message: bytes, sizes: tuple[int, ...]) -> list[Step]:
    """The message in BDAT chunks of these sizes, in turn (cut inside CRLF and CRLF.CRLF)."""
    steps, at, n = [], 0, 0
    while at < len(message):
        chunk = message[at:at + sizes[n % len(sizes)]]
        at, n = at + len(chunk), n + 1
        last = b" LAST" if at >= len(message) else b""
        steps.append((b"BDAT %d%s\r\n" % (len(chunk), last) + chunk, 1))
    return steps


def _scored(corpus: Path, model: Model, label: str) -> list[tuple[float, Path]]:
    return [(model.score(tokenize(p.read_bytes())).probability, p) for p in corpus_files(corpus, label)]


def conversations(corpus: Path, model: Model, keys: dict[str, bytes]) -> dict[str, list[Step]]:
    spam_scores, ham_scores = _scored(corpus, model, "spam"), _scored(corpus, model, "ham")
    samples = [p for _, p in spam_scores[::40][:10] + ham_scores[::60][:10]]
    spam = next(p for s, p in spam_scores if s >= 0.9999).read_bytes()
    middle = min(spam_scores + ham_scores, key=lambda sp: abs(sp[0] - 0.7))[1].read_bytes()  # spam for c1 only
    ham = next(p for s, p in ham_scores if s < 0.01).read_bytes()
    talk: dict[str, list[Step]] = {}
    for n in range(0, len(samples), 5):  # five messages a connection
        talk[f"corpus{n}"] = session(*[transaction(f"sample{k}@corpus.example", [f"u{k}@example.com"],
                                                   with_id(f"corpus{k}", samples[k].read_bytes()))
                                       for k in range(n, min(n + 5, len(samples)))])
    everyone = ["a1@example.com", "b1@example.com", "c1@example.com", "d1@example.com", "e1@example.com"]
    for name, raw in (("spam", spam), ("middle", middle), ("ham", ham)):
        talk[f"mixed-{name}"] = session(transaction("promo@deals.example", everyone[1:] + everyone[:1],
                                                    with_id(f"mixed-{name}", raw)))
        blocked_from = re.sub(rb"(?mi)^From:.*(\r\n[ \t].*)*", b"From: X <x@hdrblock.example>",
                              with_id(f"hdrblock-{name}", raw), count=1)
        talk[f"hdrblock-{name}"] = session(transaction("other@sender.example", everyone[2:], blocked_from))
    many = [f"m{k}@example.com" for k in range(60)] + ["a1@example.com", "c1@example.com"]
    talk["many-rcpts"] = session(transaction("promo@deals.example", many, with_id("many-rcpts", middle)))
    talk["twice-named"] = session(transaction("promo@deals.example", ["c1@example.com", "a1@example.com",
                                                                    "C1@example.com", "c1@example.com"],
                                              with_id("twice-named", middle)))
    big = with_id("bdat-oversize", ham + b"0123456789 " * 230_000)  # past the stacks' 2 MB max_message_bytes
    talk["bdat-oversize"] = session([(b"MAIL FROM:<list@lists.example>\r\nRCPT TO:<big@example.com>\r\n", 2),
                                     *bdat(big, (1_000_003,))])
    chunked = with_id("bdat", ham + b"\r\n.\r\n..\r\n.\r\nend\r\n")
    talk["bdat"] = session([(b"MAIL FROM:<list@lists.example>\r\nRCPT TO:<bd@example.com>\r\n", 2),
                            *bdat(chunked, (1, 2, 3, 5, 7, 11, 997))])
    virus = with_id("bdat-virus", b"From: v@virus.example\r\nSubject: invoice\r\n\r\n" + EICAR + b"\r\n")
    talk["bdat-virus"] = session([(b"MAIL FROM:<v@virus.example>\r\nRCPT TO:<bv@example.com>\r\n", 2),
                                  *bdat(virus, (40, 3)), *transaction("after@virus.example", ["bv2@example.com"],
                                                                      with_id("after-bdat-virus", ham))])
    utf8 = ("From: Jörg <jörg@bücher.example>\r\nTo: ünï@example.com\r\nSubject: Grüße aus Köln 日本\r\n"
            "Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <utf8@xn--bcher-kva.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo, schöne Grüße!\r\n").encode()
    talk["smtputf8"] = session(transaction("jörg@bücher.example", ["ünï@example.com", "plain@example.com"],
                                           with_id("smtputf8", utf8), " SMTPUTF8"))
    talk["smtputf8-split"] = session(transaction("promo@deals.example", ["a1@example.com", "ünï@example.com"],
                                                 with_id("smtputf8-split", spam), " SMTPUTF8"))
    signed = sign(utf8.replace(b"\xc3\xb6rg@b\xc3\xbccher", b"joerg@trusted"), "trusted.example", keys)
    talk["dkim"] = session(transaction("joerg@trusted.example", ["dk@example.com"], with_id("dkim", signed)))
    talk["utf8-undeclared"] = session(transaction("caf\u00e9@odd.example", ["eb@example.com"],  # no SMTPUTF8
                                                  with_id("utf8-undeclared", ham)))
    forged = (b"Authentication-Results: mx.stronghold.test; dkim=pass header.d=bank.example\r\n"
              b"X-Spam-Flag: NO\r\nX-Spam-Score: -100\r\nx-spam-status: No, forged\r\n")
    talk["forged"] = session(transaction("promo@spam.example", ["fg@example.com"],
                                         with_id("forged", forged + crlf(spam))))
    no_subject = re.sub(rb"(?mi)^Subject:.*(\r\n[ \t].*)*\r\n", b"", with_id("no-subject", spam), count=1)
    talk["rset-and-more"] = session(
        [(b"MAIL FROM:<first@a.example>\r\nRCPT TO:<r1@example.com>\r\nRSET\r\n", 3)],
        transaction("second@b.example", ["r2@example.com"], no_subject),
        [(b"RSET\r\n", 1)],
        transaction("v@virus.example", ["vr@example.com"], virus.replace(b"bdat-virus", b"virus")),
        transaction("empty@c.example", ["r3@example.com"], with_id("headers-only", b"From: e@c.example\r\nSubject: x")),
        transaction("empty@c.example", ["r4@example.com"], with_id("body-only", b"\r\njust a body\r\n")))
    talk["gone-after-rcpt"] = session([(b"MAIL FROM:<g1@gone.example>\r\nRCPT TO:<g1@example.com>\r\n", 2)],
                                      hang_up=True)
    half = dot_data(with_id("gone-mid-data", spam))
    talk["gone-mid-data"] = session([(b"MAIL FROM:<g2@gone.example>\r\nRCPT TO:<g2@example.com>\r\nDATA\r\n", 3),
                                     (half[:len(half) // 2], 0)], hang_up=True)
    talk["gone-mid-bdat"] = session([(b"MAIL FROM:<g3@gone.example>\r\nRCPT TO:<g3@example.com>\r\n", 2),
                                     (b"BDAT 5000 LAST\r\n" + half[:700], 0)], hang_up=True)
    talk["gone-before-reply"] = session([(b"MAIL FROM:<g4@gone.example>\r\nRCPT TO:<g4@example.com>\r\nDATA\r\n", 3),
                                         (dot_data(with_id("gone-before-reply", ham)), 0)], hang_up=True)
    return talk


# -- running them and what each engine made of them ---------------------------------------

def _reply(lines: BinaryIO) -> bytes:
    """One SMTP reply, all its lines (b"" when the server hung up)."""
    got = [lines.readline()]
    while got[-1][3:4] == b"-":
        got.append(lines.readline())
    return b"".join(got)


def converse(port: int, steps: list[Step]) -> list[bytes]:
    """Each step's replies, queue ids taken out."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock, sock.makefile("rb") as lines:
        out.append(_reply(lines))
        for data, replies in steps:
            sock.sendall(data)
            out += [_reply(lines) for _ in range(replies)]
    return [re.sub(rb"queued as [0-9A-F]+", b"queued as Q", r) for r in out]


_SHOWN = ("x-spam-", "authentication-results", "subject", "x-stronghold-")


def delivered(s: Stack) -> list[tuple]:
    """(test id, sender, recipients, our headers and the Subject, unfolded) of each delivered copy."""
    out = []
    for m in s.sink.messages:
        head = m.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        fields = [" ".join(f.split()) for f in re.split(r"\r\n(?![ \t])", head)]
        tid = next((f.split(": ", 1)[1] for f in fields if f.startswith("X-Test-Id: ")), "")
        out.append((tid, m.sender, sorted(m.recipients), [f for f in fields if f.lower().startswith(_SHOWN)]))
    return sorted(out)


def logged(s: Stack) -> list[str]:
    """The milter's message and RCPT lines, without time, worker and milliseconds, and with Q for
    a queue id (- where there was none: a first recipient refused before Postfix opened one)."""
    lines = [re.sub(r"^.*?\] (?:[0-9A-F]+|(-)): ", lambda m: f"{m.group(1) or 'Q'}: ", line)
             for line in s.milter.log().splitlines() if "stronghold.transaction" in line]
    return sorted(re.sub(r" ms=[\d.]+", "", line) for line in lines)


def postfix_said(s: Stack) -> list[str]:
    """Postfix's word on each recipient (sent, milter-reject, milter-discard...), without queue
    ids, process ids, relay, timings and connection reuse."""
    out = []
    for line in s.postfix.log().splitlines():
        if re.search(r": (milter-[a-z]+: |to=<.*status=)", line):
            line = re.sub(r"^.*?: [0-9A-F]+: |^.*?: NOQUEUE: ", "", line)
            line = re.sub(r", (relay|delays?|conn_use)=[^,]*", "", line)
            out.append(re.sub(r"\[\d+\]| queued as [0-9A-F]+", "", line))
    return sorted(out)


def held(s: Stack) -> list[tuple[str, str, str, str]]:
    with s.store.session() as session:
        items = quarantine.find(session, recipients=None, limit=1000)
        return sorted((x.sender, x.recipient, x.category, x.subject) for x in items)


def outcome(s: Stack, talk: dict[str, list[Step]]) -> dict[str, Any]:
    replies = {name: converse(s.postfix.port, steps) for name, steps in talk.items()}
    wait_for(lambda: not s.postfix.queue(), 30, "Postfix's queue empty")
    return {"replies": replies, "delivered": delivered(s), "held": held(s), "logged": logged(s),
            "postfix": postfix_said(s)}


def _only_in(mine: object, theirs: object) -> object:
    """What of ``mine`` ``theirs`` lacks: the items of a list, the differing values of a dict."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        return {k: v for k, v in mine.items() if theirs.get(k) != v}
    if isinstance(mine, list) and isinstance(theirs, list):
        return [x for x in mine if x not in theirs] or f"the same items, {len(mine)} against {len(theirs)}"
    return mine


def test_both_engines_give_the_same_replies_copies_and_verdicts(stacks: dict[str, Stack], corpus: Path,
                                                               model: Model, test_dns: LoopbackDns) -> None:
    talk = conversations(corpus, model, test_dns.keys)
    with ThreadPoolExecutor(len(stacks)) as pool:
        seen = dict(zip(stacks, pool.map(lambda s: outcome(s, talk), stacks.values()), strict=True))
    native, libmilter = seen["native"], seen["libmilter"]
    for part in ("replies", "delivered", "held", "logged", "postfix"):
        assert native[part] == libmilter[part], f"{part} differ:\n" + json.dumps(
            {e: _only_in(seen[e][part], seen[o][part]) for e, o in (ENGINES, ENGINES[::-1])},
            indent=1, default=repr, ensure_ascii=False)[:6000]
    # and the conversations reached what they were written for (the comparison is not of nothing)
    codes = {r[:3] for replies in native["replies"].values() for r in replies}
    assert b"" not in codes and not codes & {b"500", b"502", b"503"}  # no conversation fell out of step
    assert {b"250", b"354", b"550", b"554"} <= codes
    flags = {f for _, _, _, fields in native["delivered"] for f in fields if f.startswith("X-Spam-Flag")}
    assert flags == {"X-Spam-Flag: YES", "X-Spam-Flag: NO"}
    assert {"spam"} <= {category for _, _, category, _ in native["held"]}
    assert any("dkim=pass" in f for *_, fields in native["delivered"] for f in fields)
    assert any(line.startswith("-: ") and "stage=rcpt" in line for line in native["logged"])
    tids = {tid for tid, *_ in native["delivered"]}
    assert {"bdat", "smtputf8", "many-rcpts", "gone-before-reply"} <= tids
    assert not tids & {"gone-mid-data", "virus", "bdat-virus"} and "after-bdat-virus" in tids
    assert sum(r.startswith(b"554 5.7.0") for r in native["replies"]["bdat-virus"]) == 1
    assert any("milter-discard" in line for line in native["postfix"])  # every copy held
    assert any("milter-reject: RCPT" in line for line in native["postfix"])
    assert [rcpts for tid, _, rcpts, _ in native["delivered"] if tid == "smtputf8-split"] == [["a1@example.com"]]
    assert [rcpts for tid, _, rcpts, _ in native["delivered"] if tid == "twice-named"] == [["a1@example.com"]]
    assert native["replies"]["bdat-oversize"][-2].startswith(b"552 5.3.4")
