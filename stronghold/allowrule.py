"""Which allow entries apply: only to an authenticated sender (pure).

The header From counts only when it holds exactly one address and that
address is authenticated (``AuthResults.authenticates``); the envelope sender
only with SPF pass; an entry marked "trust without authentication" needs
neither.  ``allow_may_apply`` tells the impure half whether authenticating
can change anything, before any address is parsed where it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

from stronghold.authres import AuthResults, single_from
from stronghold.lists import ALLOW, ListIndex, Match, sender_addresses
from stronghold.message import ParsedMessage
from stronghold.verdict import TraceStep


def allow_senders(senders: list[tuple[str, str]], msg: ParsedMessage) -> list[tuple[str, str]]:
    """The senders an allow entry may match: the envelope, and the header From
    only when it holds exactly one address."""
    if single_from(msg.header_all("from")) is None:
        return [s for s in senders if s[0] != "from"]
    return senders


def allow_candidates(lists: ListIndex | None, recipients: Sequence[str], senders: list[tuple[str, str]],
                     msg: ParsedMessage) -> list[tuple[str, str]]:
    """``allow_senders``, parsing the From again only where an allow entry could match."""
    if lists is None or not lists.may_match((*recipients, None), ALLOW, " ".join(a for _, a in senders)):
        return senders  # no allow entry can match any of them
    return allow_senders(senders, msg)


def authenticated_allow(lists: ListIndex, owner: str | None, senders: list[tuple[str, str]],
                        allowed: list[tuple[str, str]], auth: AuthResults | None
                        ) -> tuple[Match | None, TraceStep | None]:
    """An allow entry of ``owner`` that applies, or the step saying why one was skipped."""
    if not lists.has(owner, ALLOW):
        return None, None  # no entry to apply or to skip
    skipped: Match | None = None
    for hit in lists.find_all(owner, ALLOW, allowed):
        if hit.entry.trust_unauthenticated or (auth is not None and auth.authenticates(hit.source, hit.address)):
            return hit, None
        skipped = skipped or hit
    if skipped is not None:
        who = "From" if skipped.source == "from" else "envelope sender"
        why = auth.brief() if auth is not None else "not checked"
        return None, TraceStep("allow", "skipped", f"#{skipped.entry.id} {who} {skipped.address} "
                                                   f"not authenticated ({why})")
    if len(allowed) < len(senders):
        unusable = lists.find(owner, ALLOW, senders)
        if unusable is not None:
            return None, TraceStep("allow", "skipped", f"#{unusable.entry.id} From {unusable.address}: "
                                                       "the header From must hold exactly one address")
    return None, None


def allow_may_apply(lists: ListIndex, sender: str, recipients: Sequence[str], msg: ParsedMessage) -> bool:
    """Would some recipient's or the global allow list match (before authentication)?"""
    owners = (*recipients, None)
    text = f"{sender} {msg.header('from') or ''}".lower()
    if text.isascii() and not lists.may_match(owners, ALLOW, text):
        return False  # ordinary mail stops here, without parsing an address
    allowed = allow_senders(sender_addresses(sender, msg.header("from")), msg)
    return any(lists.find(owner, ALLOW, allowed) is not None for owner in owners)
