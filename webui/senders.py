"""Who sent a message, as the pages show it and as allow entries see it.

People recognise the header From; the envelope sender (MAIL FROM) is where bounces
go, often a mailing service's address they have never seen.  Recent mail, Junk
and both message pages show the From first and the envelope sender beside it
where it differs.

An allow entry matches either address, but only when that address is
authenticated for the message (``stronghold.allowrule``: the From by an aligned
DKIM signature or SPF, the envelope sender by SPF).  "Always allow" therefore
adds the From address when it is authenticated, or when the envelope sender is
not either (the note then says the entry needs authentication); it adds the
envelope sender only when that is the one authenticated, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from stronghold.lists import PatternError, display, from_address, normalize_address
from webui import tracetext

FROM = "From address"
ENVELOPE = "envelope sender"


@dataclass(frozen=True)
class Sender:
    """One sender address and where it was seen (``FROM`` or ``ENVELOPE``)."""

    address: str
    source: str

    @property
    def check(self) -> str:
        """How allow entries see it: "from" or "envelope" (``stronghold.allowrule``)."""
        return "from" if self.source == FROM else "envelope"

    @property
    def domain(self) -> str:
        return "@" + self.address.rsplit("@", 1)[1]


def _normalized(address: str) -> str | None:
    try:
        return normalize_address(address)
    except PatternError:
        return None


def from_headers(tokens: set[str] | None) -> int:
    """How many From headers a message had, as its features recorded it (``header:from:N``, 5 for
    five or more); 1 when nothing of it was kept."""
    counts = [int(t.rsplit(":", 1)[1]) for t in tokens or () if t.startswith("header:from:") and t[12:].isdigit()]
    return max(counts, default=1)


def allow_target(header_from: str | None, envelope: str | None, trace: str | tracetext.Trace | None
                 ) -> tuple[Sender, str] | None:
    """The address an allow entry should hold for mail like this message, and a sentence saying
    why it is the envelope sender when it is ("" otherwise); None without any usable address."""
    parsed = tracetext.parse(trace) if isinstance(trace, str) else trace

    def authenticated(source: str, address: str | None) -> bool | None:
        if address is None or parsed is None:
            return None
        return tracetext.sender_authenticated(parsed, source, address)

    header = from_address(header_from)
    env = _normalized(envelope or "")
    if header is not None and (authenticated("from", header) is not False
                               or authenticated("envelope", env) is not True or env == header):
        return Sender(header, FROM), ""
    if env is None:
        return None
    if header is not None:
        return Sender(env, ENVELOPE), (f"Not the From address {display(header)}: it is not authenticated for this "
                                       "message (no aligned DKIM signature or SPF), while its envelope sender "
                                       "passed SPF, and an allow entry only matches an authenticated address.")
    return Sender(env, ENVELOPE), ""
