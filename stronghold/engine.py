"""The impure half of the scoring core: envelope + message -> Verdict, with a trace.

``evaluate`` is the one call the milter and ``stronghold scan`` share: it runs
the checks (``gather``: the scanner, the model and the lists, through the
small interfaces passed in, their typed errors becoming findings), then hands
what they found to the pure ``precedence.decide``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING

from stronghold.allowrule import allow_may_apply
from stronghold.antivirus import Scanner, ScannerError
from stronghold.authres import Authenticator
from stronghold.classifier import Model, Score
from stronghold.findings import Findings
from stronghold.lists import ListIndex
from stronghold.message import ParsedMessage
from stronghold.modelfile import ModelError
from stronghold.policy import Policy
from stronghold.precedence import decide, size_plan
from stronghold.spool import Stream
from stronghold.store.errors import StoreError
from stronghold.verdict import Envelope, Verdict

if TYPE_CHECKING:
    from stronghold.personal import Layer

log = logging.getLogger(__name__)


ModelSource = Callable[[], Model]
ListSource = Callable[[], ListIndex]
LayerSource = Callable[[], "Mapping[str, Layer]"]


def gather(msg: ParsedMessage, stream: Stream | None, scanner: Scanner | None,
           model: ModelSource, lists: ListSource, *, tokens: Collection[str], oversize: bool = False,
           skip_content_checks: bool = False,
           envelope: Envelope | None = None, authenticator: Authenticator | None = None,
           layers: LayerSource | None = None,
           timings: dict[str, float] | None = None) -> Findings:
    """Run the checks through their interfaces; typed errors become findings.

    ``tokens`` are the message's features (``tokens.features``), computed once by
    the caller, which also keeps them for the message log.
    ``timings``, when given, gets the seconds each check took (clamd, lists,
    classifier, auth) added to what it holds.
    The sender is authenticated (DNS) only when that can change the outcome:
    an allow entry would match, or the authenticator checks all mail.
    """
    clock = perf_counter()
    t = timings if timings is not None else {}
    scan = scan_error = None
    if scanner is not None and stream is not None and not skip_content_checks:
        try:
            scan = scanner.scan(stream)
        except ScannerError as exc:
            scan_error = str(exc)
        clock = _lap(t, "clamd", clock)
    index = store_error = None
    try:
        index = lists()
    except StoreError as exc:
        store_error = str(exc)
    clock = _lap(t, "lists", clock)
    score = threshold = model_error = None
    personal: dict[str, Score] = {}
    if not skip_content_checks and not (scan is not None and scan.infected):
        try:
            current = model()
            score = current.score(tokens)
            threshold = current.spam_threshold
            if layers is not None and envelope is not None:
                personal = _personal_scores(current, tokens, envelope.recipients, layers)
        except ModelError as exc:
            model_error = str(exc)
        clock = _lap(t, "classifier", clock)
    auth = None
    if authenticator is not None and envelope is not None and index is not None and (
            authenticator.every_message or allow_may_apply(index, envelope.sender, envelope.recipients, msg)):
        auth = authenticator.check(envelope.sender, envelope.client_ip, envelope.helo, msg.headers,
                                   lambda: _whole(stream))
        _lap(t, "auth", clock)
    return Findings(scan=scan, scan_error=scan_error, score=score, model_threshold=threshold,
                    model_error=model_error, lists=index, store_error=store_error,
                    oversize=oversize, auth=auth, personal=personal)


def _personal_scores(model: Model, tokens: Collection[str], recipients: Sequence[str],
                     layers: LayerSource) -> dict[str, Score]:
    """Scores with each recipient's personal layer (only recipients that have one)."""
    try:
        found = layers()
    except StoreError as exc:  # the shared score still stands; personal layers come back with the store
        log.warning("personal layers unavailable: %s", exc)
        return {}
    if not found:
        return {}
    out: dict[str, Score] = {}
    listed: list[str] | None = None
    for rcpt in recipients:
        layer = found.get(rcpt.lower())
        if layer is not None:
            listed = listed or list(tokens)
            out[rcpt.lower()] = model.score(listed, layer=layer)
    return out


def _lap(timings: dict[str, float], stage: str, since: float) -> float:
    """Add the seconds since ``since`` to ``timings[stage]``; returns now."""
    now = perf_counter()
    timings[stage] = timings.get(stage, 0.0) + now - since
    return now


def _whole(stream: Stream | None) -> bytes:
    """The message as it arrived (for DKIM); the stream is left at its start."""
    if stream is None:
        return b""
    stream.seek(0)
    data = stream.read()
    stream.seek(0)
    return data


def evaluate(envelope: Envelope, msg: ParsedMessage, stream: Stream | None,
             scanner: Scanner | None, model: ModelSource, lists: ListSource,
             policy: Policy, *, tokens: Collection[str], oversize: bool = False,
             authenticator: Authenticator | None = None, layers: LayerSource | None = None,
             timings: dict[str, float] | None = None) -> Verdict:
    """gather() then decide(): the one call the milter and ``stronghold scan`` share.

    Only the checks the table can still use are run: none when the size row
    refuses the message, no content checks when it lets an oversize one through.
    """
    plan = size_plan(oversize, policy)
    if plan == "refuse":
        found = Findings(oversize=oversize)
    else:
        found = gather(msg, stream, scanner, model, lists, tokens=tokens, oversize=oversize,
                       skip_content_checks=plan == "envelope", envelope=envelope, authenticator=authenticator,
                       layers=layers, timings=timings)
    return decide(envelope, msg, found, policy)
