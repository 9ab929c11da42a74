"""Allow/block list patterns: parsing, validation and matching (pure).

Three forms, all case-insensitive:

- ``alice@example.com``  exactly that address;
- ``@example.com``       any address at exactly that domain;
- ``*.example.com``      that domain and every subdomain of it.

Domains are stored in their ASCII form (A-labels, IDNA 2008 with the UTS 46
mapping, non-transitional), so ``bücher.example`` and ``xn--bcher-kva.example``
are the same entry and ``faß.de`` stays ``xn--fa-hia.de`` (not ``fass.de``, as
IDNA 2003 would have it).  ``display`` gives the Unicode form back for people.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import getaddresses

import idna

from stronghold.headers import mailboxes

ALLOW = "allow"
BLOCK = "block"
KINDS = (ALLOW, BLOCK)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_LOCAL = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")

# A From header holding one plain address, alone or after a display name of words and quoted
# strings: the address getaddresses() finds, without running its parser (the usual case, and
# ~10 us of the precedence table per message).  Anything else (a comment, a list, escapes,
# folding, an address with characters outside ASCII atext) goes to getaddresses().  Possessive
# quantifiers: no backtracking on hostile headers.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_PLAIN_ADDRESS = rf"{_ATEXT}++(?:\.{_ATEXT}++)*+@{_ATEXT}++(?:\.{_ATEXT}++)*+"
_NAME_WORD = r'(?:[^()<>@,:;"\[\]\\\s]++|"[^"\\\r\n]*+")'
_ONE_ADDRESS = re.compile(rf"[ \t]*+(?:(?:{_NAME_WORD}[ \t]*+)*+<({_PLAIN_ADDRESS})>|({_PLAIN_ADDRESS}))[ \t]*+")


class PatternError(ValueError):
    """A list pattern is not one of the three accepted forms."""


def shorten(text: str, limit: int = 60) -> str:
    """``text`` for an error message: at most ``limit`` characters, an ellipsis if cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def normalize_domain(domain: str) -> str:
    """Lower-case A-label form of a domain; raises PatternError if invalid."""
    given = domain
    domain = domain.strip().rstrip(".").lower()
    if not domain:
        raise PatternError("the domain is empty")
    if domain.isascii() and "xn--" not in domain:
        ascii_domain = domain  # the common case, checked by the label rule below
    else:
        try:
            ascii_domain = idna.encode(domain, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise PatternError(f"'{shorten(given.strip())}' is not a valid domain name") from exc
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise PatternError(f"'{shorten(given.strip())}' is not a valid domain name (like example.com)")
    if len(ascii_domain) > 253:
        raise PatternError("the domain is longer than 253 characters")
    return ascii_domain


# An address normalize_address() gives back as it is (once stripped, unwrapped and lower-cased):
# a dot-atom local part of at most 64 characters and a domain of at least two LDH labels, ASCII.
# The usual case, answered by one match; anything else (and a domain over 253 characters or with
# an A-label) takes the full rules of ``_normalized_address``.
_LOCAL_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]++"
_LDH_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_PLAIN_NORMALIZED = re.compile(rf"(?=[^@]{{1,64}}@){_LOCAL_ATOM}(?:\.{_LOCAL_ATOM})*+@(?:{_LDH_LABEL}\.)++{_LDH_LABEL}")


def normalize_address(address: str) -> str:
    """Lower-case address with an ASCII domain; raises PatternError if invalid.

    Error messages quote what was given (shortened), never a half-transformed form.
    """
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    text = text.lower()
    if text.startswith('"'):
        text = _unquoted(text)
    if _PLAIN_NORMALIZED.fullmatch(text) is not None:
        at = text.index("@")
        if len(text) - at <= 254 and "xn--" not in text[at:]:
            return text  # what the full rules give: nothing to strip, map or refuse
    return _normalized_address(address, text)


_QUOTED_LOCAL = re.compile(r'"((?:[^"\\]|\\.)*+)"@([^@"]*)')
_ESCAPE = re.compile(r"\\(.)")


def _unquoted(text: str) -> str:
    """``"local"@domain`` as ``local@domain``: the quotes (and backslash escapes in them) taken off.

    The same mailbox, which mail clients show without the quotes: a block entry of boss@ must hold
    for "boss"@ too.  What is left is checked as any local part, so one that needs its quotes
    (a space, an @) is still refused."""
    quoted = _QUOTED_LOCAL.fullmatch(text)
    if quoted is None:
        return text
    return _ESCAPE.sub(r"\1", quoted.group(1)) + "@" + quoted.group(2)


def recipient_address(given: str, delimiters: str = "") -> str:
    """An envelope recipient in the form its owner's address is stored in: the mailbox Postfix
    delivers it to.  ``"Hank"@Example.COM.`` is ``hank@example.com``; without an @,
    ``example.com!hank`` and ``hank%example.com`` are too (Postfix's swap_bangpath and
    allow_percent_hack, on by default); with ``delimiters`` (Postfix's recipient_delimiter, say
    "+"), ``hank+news@example.com`` is too.  One that does not normalize stays as given, lower-cased.

    Else a sender could address a user in a form Postfix still delivers to them, and miss that
    user's lists, threshold and Junk page."""
    text = given.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if "@" not in text:
        if "!" in text:
            host, _, user = text.partition("!")
            text = f"{user}@{host}"
        elif "%" in text:
            user, _, host = text.rpartition("%")
            text = f"{user}@{host}"
    try:
        address = normalize_address(text)
    except PatternError:
        return text.lower()
    return _without_extension(address, delimiters) if delimiters else address


def _without_extension(address: str, delimiters: str) -> str:
    """``local+extension@domain`` as ``local@domain``: the local part up to its first delimiter."""
    local, _, domain = address.rpartition("@")
    cut = min((i for i in (local.find(c) for c in delimiters) if i > 0), default=len(local))
    return f"{local[:cut]}@{domain}"


def _normalized_address(address: str, text: str) -> str:
    """normalize_address() by the full rules; ``text``: ``address`` stripped, unwrapped, lower-cased."""
    given = shorten(address.strip())
    if text.count("@") != 1:
        raise PatternError(f"'{given}' is not an address like name@example.com")
    local, domain = text.split("@")
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise PatternError(f"'{given}': the part before @ is not valid")
    return f"{local}@{normalize_domain(domain)}"


def display(pattern: str) -> str:
    """A normalized pattern or address with its domain in Unicode (U-labels) for people."""
    head, sep, domain = pattern.rpartition("@") if "@" in pattern else ("", "", pattern)
    prefix = ""
    if not sep and domain.startswith("*."):
        prefix, domain = "*.", domain[2:]
    if "xn--" not in domain:
        return pattern
    try:
        unicode_domain = idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        return pattern
    return f"{head}{sep}{prefix}{unicode_domain}"


def normalize_pattern(pattern: str) -> str:
    """Canonical form of a list pattern; raises PatternError with a clear message."""
    text = pattern.strip()
    if not text:
        raise PatternError("enter an address, @domain or *.domain")
    if len(text) > 320:
        raise PatternError(f"the pattern has {len(text)} characters; at most 320 fit")
    if text.startswith("*."):
        return "*." + normalize_domain(text[2:])
    if text.startswith("@"):
        return "@" + normalize_domain(text[1:])
    if "*" in text:
        raise PatternError("a wildcard is only allowed as '*.domain'")
    if "@" not in text and _is_domain(text):
        domain = shorten(text.rstrip("."))
        raise PatternError(f"'{domain}' is not an address like name@example.com; "
                           f"for a whole domain, write @{domain} or *.{domain}")
    return normalize_address(text)


def _is_domain(text: str) -> bool:
    try:
        normalize_domain(text)
    except PatternError:
        return False
    return True


NULL_SENDER = "<>"


def from_address(header_from: str | None) -> str | None:
    """The one address of a From header, normalized: whom the list buttons and "always allow" act on
    and what the envelope sender is compared with.  None when it names none, several, or one that
    does not normalize (a name that looks like an address is a name: ``headers.mailboxes``).  Several
    From headers (one per line, ``store.quarantine.with_from``) count as several addresses."""
    found = [box for value in (header_from or "").split("\n") for box in mailboxes(value)]
    if len(found) != 1:
        return None
    try:
        return normalize_address(found[0][1])
    except PatternError:
        return None


@dataclass(frozen=True)
class ShownFrom:
    """The From as pages and the CLI show it: ``text`` names the real address(es) only; ``warnings``
    say what about it is a sign of forgery (an address-like display name, several addresses or
    From headers)."""

    text: str
    warnings: tuple[str, ...] = ()


_ADDRESS_LIKE = re.compile(r"[^\s<>()\[\]\"',;:@]+@[^\s<>()\[\]\"',;:@]+")


def _names_another(name: str, address: str) -> bool:
    """True when display ``name`` holds an '@' (full-width ones too) but not as ``address`` itself."""
    text = unicodedata.normalize("NFKC", name)
    if "@" not in text:
        return False
    found = _ADDRESS_LIKE.findall(text)
    return not found or any(not _same_address(a, address) for a in found)


def shown_from(header_from: str | None, headers: int = 1) -> ShownFrom:
    """How to show a From (several From headers, as ``store.quarantine.with_from`` gives them: one
    per line; ``headers``: how many there were when only the first was kept).  A display name that
    looks like an address other than the real one is never the text: the real address is, and a
    warning quotes the name; several addresses are all shown, without names."""
    lines = (header_from or "").split("\n")  # a From shortened to nothing still counts
    values = [v for v in lines if v.strip()]
    count = max(len(lines) if values else 0, headers)
    boxes = [box for value in values for box in mailboxes(value)]
    warnings: list[str] = []
    if count > 1:
        warnings.append(f"{count} From headers: a sign of forgery")
    if not boxes:
        return ShownFrom(" ".join(" ".join(values).split()), tuple(warnings))
    if len(boxes) > 1:
        if count == 1:
            warnings.append(f"{len(boxes)} addresses in one From: no single sender")
        return ShownFrom(", ".join(addr for _, addr in boxes), tuple(warnings))
    name, addr = boxes[0]
    if name and _names_another(name, addr):
        warnings.append(f'its display name "{name}" looks like another address: it is not the sender')
        return ShownFrom(addr, tuple(warnings))
    return ShownFrom(f"{name} <{addr}>" if name and not _same_address(name, addr) else addr, tuple(warnings))


def envelope_shown(envelope: str | None) -> str:
    """An envelope sender as people read it: the null sender of bounces as ``<> (bounce)``."""
    sender = (envelope or "").strip()
    return sender if sender and sender != NULL_SENDER else f"{NULL_SENDER} (bounce)"


def other_envelope(header_from: str | None, envelope: str | None) -> str:
    """The envelope sender to show beside the From, or "" when it is the From's one address (or there
    is no From to show it beside: the envelope sender is then shown alone); ``<>`` for the null
    sender of bounces.  Addresses compare normalized (case, Unicode or A-label domain); one that
    does not normalize (a UTF-8 local part, no domain) compares as text, case aside."""
    if not (header_from or "").strip():
        return ""
    if not (envelope or "").strip() or envelope == NULL_SENDER:
        return NULL_SENDER
    found = [addr for value in (header_from or "").split("\n") for _, addr in mailboxes(value)]
    return "" if len(found) == 1 and _same_address(found[0], envelope or "") else envelope or ""


def _same_address(a: str, b: str) -> bool:
    try:
        return normalize_address(a) == normalize_address(b)
    except PatternError:
        return a.strip().strip("<>").lower() == b.strip().strip("<>").lower()


def sender_addresses(envelope_sender: str, header_from: str | None) -> list[tuple[str, str]]:
    """(source, normalized address) pairs to match: envelope sender, then header From."""
    found: list[tuple[str, str]] = []
    candidates: list[tuple[str, str]] = [("envelope", envelope_sender)]
    if header_from:
        plain = _ONE_ADDRESS.fullmatch(header_from)
        if plain is not None:
            candidates.append(("from", plain.group(1) or plain.group(2)))
        else:
            candidates += [("from", addr) for _, addr in getaddresses([header_from])[:5]]
    for source, addr in candidates:
        try:
            norm = _matchable(addr)
        except PatternError:
            continue
        if (source, norm) not in found:
            found.append((source, norm))
    return found


def _matchable(address: str) -> str:
    """``normalize_address``, or for a local part outside ASCII (SMTPUTF8 mail, RFC 6531), which
    no pattern can name, that local part lower-cased at the normalized domain: the ``@domain`` and
    ``*.domain`` patterns hold for jörg@bücher.example as for joerg@ (else a block of a domain
    let every sender with a non-ASCII local part through).  Raises PatternError."""
    try:
        return normalize_address(address)
    except PatternError:
        text = address.strip()
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1]
        local, at, domain = text.rpartition("@")
        if not at or not local or local.isascii() or "@" in local \
                or not all(c.isprintable() and not c.isspace() for c in local):
            raise
        return f"{local.lower()}@{normalize_domain(domain)}"


def matches(pattern: str, address: str) -> bool:
    """Does a normalized pattern match a normalized address?"""
    domain = address.rsplit("@", 1)[-1]
    if pattern.startswith("*."):
        base = pattern[2:]
        return domain == base or domain.endswith("." + base)
    if pattern.startswith("@"):
        return domain == pattern[1:]
    return address == pattern


@dataclass(frozen=True)
class ListEntry:
    """One list entry; ``owner`` is an address, or None for the global lists."""

    id: int
    owner: str | None
    kind: str
    pattern: str
    comment: str = ""
    trust_unauthenticated: bool = False  # allow entries: match even when the sender is not authenticated


@dataclass(frozen=True)
class Match:
    entry: ListEntry
    source: str  # "envelope" or "from"
    address: str

    def describe(self) -> str:
        scope = self.entry.owner or "global"
        e = self.entry
        return f"{scope} {e.kind} #{e.id} {e.pattern} ~ {self.source} {self.address}"


class _Lookup:
    """One owner's list of one kind, indexed by what a pattern matches (``matches``): an
    address, a domain (``@``) or a domain and its subdomains (``*.``); each key gives the
    positions, in list order, of the entries with that pattern."""

    __slots__ = ("domain", "entries", "exact", "suffix")

    def __init__(self) -> None:
        self.entries: list[ListEntry] = []
        self.exact: dict[str, list[int]] = {}
        self.domain: dict[str, list[int]] = {}
        self.suffix: dict[str, list[int]] = {}

    def add(self, entry: ListEntry) -> None:
        position = len(self.entries)
        self.entries.append(entry)
        pattern = entry.pattern
        if pattern.startswith("*."):
            self.suffix.setdefault(pattern[2:], []).append(position)
        elif pattern.startswith("@"):
            self.domain.setdefault(pattern[1:], []).append(position)
        else:
            self.exact.setdefault(pattern, []).append(position)

    def positions(self, address: str) -> list[list[int]]:
        """The position lists of every entry that matches ``address`` (each entry in one)."""
        domain = address.rsplit("@", 1)[-1]
        found = [hits for hits in (self.exact.get(address), self.domain.get(domain), self.suffix.get(domain))
                 if hits is not None]
        if self.suffix:
            dot = domain.find(".")
            while dot != -1:  # ``*.base`` matches every domain ending in ".base"
                hits = self.suffix.get(domain[dot + 1:])
                if hits is not None:
                    found.append(hits)
                dot = domain.find(".", dot + 1)
        return found


class ListIndex:
    """All list entries, indexed for quick lookups by owner, kind and pattern."""

    def __init__(self, entries: Iterable[ListEntry], thresholds: Mapping[str, float] | None = None) -> None:
        self._thresholds = dict(thresholds or {})  # recipient address -> its owner's own spam threshold
        self._count = 0
        self._lookups: dict[tuple[str | None, str], _Lookup] = {}
        self._needles: dict[tuple[str | None, str], tuple[str, ...]] = {}
        for entry in entries:
            self._count += 1
            key = (entry.owner, entry.kind)
            lookup = self._lookups.get(key)
            if lookup is None:
                lookup = self._lookups[key] = _Lookup()
            lookup.add(entry)
        for key, lookup in self._lookups.items():
            self._needles[key] = tuple(entry.pattern.removeprefix("*.") for entry in lookup.entries)

    def find(self, owner: str | None, kind: str,
             senders: list[tuple[str, str]]) -> Match | None:
        """First entry of ``owner``'s ``kind`` list that matches any sender
        (for that entry, the first sender it matches)."""
        lookup = self._lookups.get((owner, kind))
        if lookup is None:
            return None
        best = -1
        sender = ("", "")
        for source, address in senders:
            for hits in lookup.positions(address):
                if best < 0 or hits[0] < best:  # an earlier sender keeps a tie
                    best, sender = hits[0], (source, address)
        return Match(lookup.entries[best], *sender) if best >= 0 else None

    def has(self, owner: str | None, kind: str) -> bool:
        """Does ``owner`` have any entry on its ``kind`` list?"""
        return (owner, kind) in self._needles

    def find_all(self, owner: str | None, kind: str,
                 senders: list[tuple[str, str]]) -> Iterator[Match]:
        """Every (entry, sender) match of ``owner``'s ``kind`` list, in list order
        (for one entry, in the senders' order)."""
        lookup = self._lookups.get((owner, kind))
        if lookup is None:
            return
        pairs = sorted((position, index) for index, (_, address) in enumerate(senders)
                       for hits in lookup.positions(address) for position in hits)
        for position, index in pairs:
            yield Match(lookup.entries[position], *senders[index])

    def may_match(self, owners: Iterable[str | None], kind: str, text: str) -> bool:
        """Could an entry of these owners' ``kind`` lists match an address in ``text``
        (lower-case ASCII)?  False only when none can: a cheap test before parsing."""
        needles = self._needles
        for owner in owners:
            for needle in needles.get((owner, kind), ()):
                if needle in text:
                    return True
        return False

    def threshold_for(self, recipient: str) -> float | None:
        """The spam threshold the owner of ``recipient`` chose, if any (within the admin's bounds)."""
        return self._thresholds.get(recipient)

    def __len__(self) -> int:
        return self._count
