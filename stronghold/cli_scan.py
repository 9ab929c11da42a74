"""`stronghold scan`: the milter's verdict for message files, or the bare model score.

By default each message goes through the same service and engine as the
milter: normalized as Postfix hands it over (``received.as_received``),
scanned by clamd, matched against the lists of its recipients, scored and
decided by the policy, with the trace.  ``--classifier-only`` prints the
model's score alone (same normalization), for benchmarks and corpus work.

A message is read in pieces, as the milter receives it: the first
``max_message_bytes`` are spooled (memory, then a file), the rest only counted,
so a message over the limit gets ``oversize_action`` as in the milter without
being held whole in memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from stronghold.classifier import Model, Score
from stronghold.config import Config
from stronghold.message import MAX_BYTES, parse
from stronghold.received import envelope_sender, header_recipients, wire_chunks
from stronghold.spool import Spool
from stronghold.store.db import Store
from stronghold.tokens import features
from stronghold.training import iter_message_files, read_index
from stronghold.verdict import Category, Envelope, Verdict

if TYPE_CHECKING:
    from stronghold.service import Service


class ScanUsageError(Exception):
    """The scan command line asks for something that cannot be done."""


HEAD_BYTES = 64 * 1024  # where a file's stand-ins for the envelope (From, To, Cc) are looked for
CHUNK_BYTES = 1 << 20


def _inputs(args: argparse.Namespace) -> Iterator[tuple[str, BinaryIO]]:
    """Each message named on the command line, as an open file (read it before the next)."""
    if args.index:
        for _is_spam, path in read_index(Path(args.index)):
            yield from iter_message_files(path)
    for name in args.files:
        if name == "-":
            yield "-", sys.stdin.buffer
        else:
            yield from iter_message_files(Path(name))


def _progress(items: Iterator[tuple[str, BinaryIO]]) -> Iterator[tuple[str, BinaryIO]]:
    from tqdm import tqdm
    return iter(tqdm(items, desc="scanning", unit="msg", file=sys.stderr, disable=None, leave=False))


def _pieces(head: bytes, fh: BinaryIO) -> Iterator[bytes]:
    """``head``, then the rest of ``fh`` in pieces."""
    return itertools.chain((head,), iter(functools.partial(fh.read, CHUNK_BYTES), b""))


def wire_head(pieces: Iterable[bytes], keep: int) -> tuple[bytes, int]:
    """The first ``keep`` bytes of a message as the milter receives it, and its whole size
    there (the rest is read and counted, not kept)."""
    kept = bytearray()
    size = 0
    for piece in wire_chunks(pieces):
        if size < keep:
            kept += piece[:keep - size]
        size += len(piece)
    return bytes(kept), size


def log_odds(probability: float) -> float | None:
    """ln(p / (1 - p)); None where it is infinite (p of exactly 0 or 1), which JSON cannot hold."""
    if not 0.0 < probability < 1.0:
        return None
    return math.log(probability / (1.0 - probability))


def _score_fields(score: Score, n_reasons: int) -> dict[str, Any]:
    return {"score": score.probability, "log_odds": score.log_odds,
            "reasons": [{"token": c.token, "spam_prob": c.spam_prob} for c in score.clues[:n_reasons]]}


def _verdict_fields(v: Verdict) -> dict[str, Any]:
    return {
        "action": v.action.value, "category": v.category.value, "score": v.score,
        "log_odds": log_odds(v.score) if v.score is not None else None,
        "threshold": v.threshold, "virus": v.virus,
        "smtp_reply": " ".join(v.smtp_reply) if v.smtp_reply else None,
        "recipients": [{"address": d.recipient, "action": d.action.value, "category": d.category.value,
                        "reason": d.reason, "trace": [str(s) for s in d.trace]} for d in v.decisions],
        "trace": [str(s) for s in v.trace], "reasons": list(v.reasons),
    }


def what_happened(v: Verdict) -> str:
    """The verdict's category, but for a refusal that is no finding about the mail (category
    "error") what refused it, as the milter's log line names it per recipient: "oversize",
    "antivirus error"."""
    if v.category is not Category.ERROR:
        return v.category.value
    why = dict.fromkeys(d.reason for d in v.decisions if d.category is Category.ERROR and d.reason)
    return ", ".join(why) or v.category.value


def _classifier_only(args: argparse.Namespace, cfg: Config, model_path: Path) -> int:
    model = Model.load(model_path)
    threshold = cfg.spam_threshold if cfg.spam_threshold is not None else model.spam_threshold
    results = []
    for source, fh in _progress(_inputs(args)):
        wire, size = wire_head(_pieces(b"", fh), MAX_BYTES + 1)  # what the parser looks at, as in tokenize()
        msg = parse(wire)
        msg.size = size
        score = model.score(features(msg))
        verdict = "spam" if score.probability >= threshold else "ham"
        if args.format == "tsv":  # full precision: repr round-trips the float exactly
            print(f"{score.probability!r}\t{score.log_odds!r}\t{source}")
        elif args.format == "text":
            reasons = ", ".join(f"{c.token} {c.spam_prob:.3f}" for c in score.clues[:args.reasons])
            print(f"{source}: {verdict} {score.probability:.6f} (threshold {threshold:.4f}) [{reasons}]")
        else:
            results.append({"path": source, "verdict": verdict, "threshold": threshold,
                            **_score_fields(score, args.reasons)})
    if args.format == "json":
        json.dump(results, sys.stdout, indent=1)
        print()
    return 0


def _through_engine(args: argparse.Namespace, cfg: Config, model_path: Path) -> int:
    from stronghold.service import Service

    if model_path != cfg.model_path:
        cfg = dataclasses.replace(cfg, models_dir=model_path.parent, model=model_path.name)
    results = []
    with Store(cfg.db_url) as store:
        store.upgrade()
        Model.load(cfg.model_path)  # a missing or broken model is an error here, not a verdict per message
        service = Service(cfg, store)
        for source, fh in _progress(_inputs(args)):
            head = fh.read(HEAD_BYTES)
            sender = args.sender if args.sender is not None else envelope_sender(head)
            rcpts = tuple(r.lower() for r in args.rcpt) if args.rcpt else header_recipients(head)
            env = Envelope(sender, rcpts, args.client_ip, "")
            verdict = check(service, env, wire_chunks(_pieces(head, fh)))
            if args.format == "tsv":
                print(f"{verdict.score!r}\t{verdict.action.value}\t{source}")
            elif args.format == "text":
                score = f"{verdict.score:.6f}" if verdict.score is not None else "-"
                print(f"{source}: {verdict.action.value} ({what_happened(verdict)}) score {score} "
                      f"from=<{sender}> {verdict.summary}")
            else:
                results.append({"path": source, "sender": sender, **_verdict_fields(verdict)})
        service.db.drain(timeout=5)
    if args.format == "json":
        json.dump(results, sys.stdout, indent=1)
        print()
    return 0


def check(service: Service, envelope: Envelope, wire: Iterable[bytes]) -> Verdict:
    """Decide about ``wire`` (the pieces of a message as the milter gets them) the way the
    milter does at end of message: the first ``max_message_bytes`` spooled, the rest counted
    (then ``oversize``), parsed once, one service call."""
    limit = service.cfg.max_message_bytes
    size = 0
    with Spool(service.cfg.spool_memory_bytes, service.cfg.data_dir) as spool:
        for piece in wire:
            if size < limit:
                spool.write(piece[:limit - size])
            size += len(piece)
        msg = parse(spool.head(MAX_BYTES + 1))
        msg.size = size
        spool.seek(0)
        outcome = service.decide(envelope, msg, spool, oversize=size > limit)
    return outcome.verdict


def cmd_scan(args: argparse.Namespace, cfg: Config) -> int:
    if not args.files and not args.index:
        raise ScanUsageError("give message files, --index FILE, or - for standard input")
    model_path = Path(args.model) if args.model else cfg.model_path
    if args.classifier_only:
        return _classifier_only(args, cfg, model_path)
    return _through_engine(args, cfg, model_path)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="the milter's verdict for message files (or --classifier-only)")
    p.add_argument("files", nargs="*", metavar="FILE", help="message files, folders, mboxes, or -")
    p.add_argument("--index", metavar="FILE", help="scan the files an index names (lines 'spam PATH' / 'ham PATH')")
    p.add_argument("--model", metavar="M", help="model file (default: the configured one)")
    p.add_argument("--rcpt", action="append", metavar="ADDRESS",
                   help="envelope recipient (repeat; default: the To and Cc addresses)")
    p.add_argument("--sender", metavar="ADDRESS",
                   help="envelope sender (default: Return-Path, else the From address)")
    p.add_argument("--client-ip", default="", metavar="IP",
                   help="the connecting client's address, for the checks that use it (default: none)")
    p.add_argument("--classifier-only", action="store_true",
                   help="the model's score alone: no clamd, lists or policy")
    p.add_argument("--format", choices=("text", "json", "tsv"), default="text",
                   help="text: one line per message (default); json: every field; "
                        "tsv: score, log-odds (or action) and path, full precision")
    p.add_argument("--reasons", type=int, default=5, metavar="N",
                   help="how many of the strongest tokens to show with --classifier-only (default: 5)")
    p.set_defaults(func=cmd_scan)
