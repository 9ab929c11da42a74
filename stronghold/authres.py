"""Who really sent a message: SPF, DKIM and DMARC alignment, or a trusted Authentication-Results.

``AuthResults`` is a plain value the engine reads (pure); ``Authenticator``
produces it, either by checking (pyspf, dkimpy and our own DMARC code over
``dnscache.Dns``) or, where a checker in front of us (OpenDKIM, OpenDMARC, a
gateway) already did, by reading the topmost ``Authentication-Results`` that
carries the configured authserv-id.  Either way an ``Authentication-Results``
with that id that came from outside is forged: the milter removes it.

DMARC is our own code rather than ``authheaders``: we need alignment for
allow entries without fetching a DMARC record, the record only when the
DMARC setting is on, and every lookup through one resolver with our timeouts
and cache; ``authheaders`` runs SPF, DKIM, ARC and DMARC as one unit with its
own DNS calls.  Alignment is relaxed (organizational domains equal, by the
public suffix list) unless the domain's record asks for strict.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from email.utils import getaddresses

import idna

from stronghold.dnscache import Dns, DnsTempError, dkim_txt, spf_check

log = logging.getLogger(__name__)

SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
MAX_DKIM_SIGNATURES = 5
MODES = ("check", "header")

_psl_lock = threading.Lock()
_psl: object | None = None


def org_domain(domain: str) -> str:
    """The organizational domain (registrable part) of ``domain``, lower-case."""
    global _psl
    domain = domain.lower().rstrip(".")
    with _psl_lock:
        if _psl is None:
            from publicsuffixlist import PublicSuffixList
            _psl = PublicSuffixList()
    found = _psl.privatesuffix(domain)  # type: ignore[attr-defined]
    return str(found) if found else domain


def public_suffix(domain: str) -> bool:
    """Is ``domain`` a public suffix (``co.uk``, ``github.io``): a place where anyone may register?"""
    org_domain(domain)  # loads the list once
    return bool(_psl.is_public(domain.lower().rstrip(".")))  # type: ignore[union-attr]


def aligned(a: str, b: str, strict: bool = False) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    return a == b if strict else org_domain(a) == org_domain(b)


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower().rstrip(".") if "@" in address else address.lower()


_DOMAIN = re.compile(r"(?:[\w-]+\.)*[\w-]+\.?")  # labels of letters (any script), digits, '-', '_'


def plain_domain(domain: str) -> str:
    """``domain`` if it is a domain name, else "".  A DKIM d=, a HELO name, a From domain are the
    sender's text, and go into our Authentication-Results and the trace: a space, quote,
    parenthesis, ';' or line break there would write results (or hide ours) in our name."""
    return domain if len(domain) <= 254 and _DOMAIN.fullmatch(domain) else ""


def ascii_domain(domain: str) -> str:
    """``domain`` as DNS, DKIM ``d=`` and the lists write it: its A-labels (``bücher.example`` is
    ``xn--bcher-kva.example``, RFC 8616); "" when it has no such form."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return ""


def single_from(from_headers: Sequence[str]) -> str | None:
    """The one address of the header From, or None when there are several or none."""
    if len(from_headers) != 1:
        return None
    addrs = [a.strip() for _, a in getaddresses(list(from_headers)) if a.strip()]
    if len(addrs) != 1 or "@" not in addrs[0] or any(c in addrs[0] for c in ' <>"'):
        return None  # none, several, or a name the parser could not tell from an address
    return addrs[0].lower()


@dataclass(frozen=True)
class AuthResults:
    """What was authenticated for one message."""

    source: str  # "checked", or "header <authserv-id>"
    spf: str = "none"  # one of SPF_RESULTS
    spf_domain: str = ""  # the domain SPF vouched for (MAIL FROM, or HELO when null)
    dkim: tuple[tuple[str, str], ...] = ()  # (d=, pass/fail/temperror) per signature
    from_domain: str = ""  # of the single header From; "" when several or none
    dmarc: str = ""  # pass/fail/none/temperror; "" when not evaluated
    dmarc_policy: str = ""  # the From domain's p= (or sp=): none/quarantine/reject
    dmarc_strict: tuple[bool, bool] = (False, False)  # adkim=s, aspf=s
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def dkim_pass(self) -> tuple[str, ...]:
        return tuple(d for d, r in self.dkim if r == "pass")

    @property
    def dns_failed(self) -> bool:
        return bool(self.errors) or self.spf == "temperror" or any(r == "temperror" for _, r in self.dkim)

    def dkim_summary(self) -> str:
        if not self.dkim:
            return "none"
        return ",".join(f"{r}({d})" for d, r in self.dkim)

    def describe(self) -> str:
        """``spf=pass(trusted.example) dkim=pass(trusted.example) dmarc=pass``"""
        parts = [f"spf={self.spf}" + (f"({self.spf_domain})" if self.spf_domain else ""),
                 f"dkim={self.dkim_summary()}"]
        if self.dmarc:
            parts.append(f"dmarc={self.dmarc}" + (f"(p={self.dmarc_policy})" if self.dmarc_policy else ""))
        if self.errors:
            parts.append("dns=" + ",".join(self.errors)[:120])
        return " ".join(parts)

    def brief(self) -> str:
        """What an allow skip says: ``spf=softfail dkim=none``."""
        return f"spf={self.spf} dkim={self.dkim_summary()}"

    def from_aligned(self, domain: str) -> bool:
        """Is a header-From ``domain`` vouched for by a passing DKIM d= or SPF domain?"""
        strict_dkim, strict_spf = self.dmarc_strict
        if any(aligned(domain, d, strict_dkim) for d in self.dkim_pass):
            return True
        return self.spf == "pass" and aligned(domain, self.spf_domain, strict_spf)

    def authenticates(self, source: str, address: str) -> bool:
        """May an allow entry trust that ``address`` (seen as ``source``) sent this message?

        The header From only when it is the single From address and aligned;
        the envelope sender only with SPF pass for its own domain.
        """
        if source == "from":
            return bool(self.from_domain) and domain_of(address) == self.from_domain \
                and self.from_aligned(self.from_domain)
        if source == "envelope":
            return self.spf == "pass" and domain_of(address) == self.spf_domain
        return False

    def dmarc_failed_policy(self) -> str:
        """The published policy a DMARC failure asks for (quarantine/reject), else ""."""
        if self.dmarc == "fail" and self.dmarc_policy in ("quarantine", "reject"):
            return self.dmarc_policy
        return ""

    def header_value(self, authserv_id: str) -> str:
        """Our own Authentication-Results (RFC 8601) for downstream readers."""
        parts = [authserv_id, f"spf={self.spf}" + (f" smtp.mailfrom={self.spf_domain}" if self.spf_domain else "")]
        if self.dkim:
            parts += [f"dkim={r} header.d={d}" for d, r in self.dkim]
        else:
            parts.append("dkim=none")
        if self.dmarc:
            parts.append(f"dmarc={self.dmarc}" + (f" header.from={self.from_domain}" if self.from_domain else ""))
        return "; ".join(parts)


# -- Authentication-Results parsing (RFC 8601) ------------------------------------

@dataclass(frozen=True)
class _Piece:
    """One ';'-separated part of an Authentication-Results value: its text without
    comments, and the comments it held (outermost text of each)."""

    text: str
    comments: tuple[str, ...]


def _pieces(value: str) -> list[_Piece]:
    """Split at the semicolons that end a result: not those inside a quoted string
    (a sender-chosen address such as ``"x; dkim=pass header.d=bank.example"@evil.example``)
    nor inside a comment; comments are taken out of the text and kept apart."""
    pieces: list[_Piece] = []
    text: list[str] = []
    comments: list[str] = []
    comment: list[str] = []
    depth, quoted, escaped = 0, False, False
    for ch in value:
        if escaped:
            (comment if depth else text).append(ch)
            escaped = False
            continue
        if ch == "\\" and (quoted or depth):
            escaped = True
            (comment if depth else text).append(ch)
            continue
        if depth:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    comments.append("".join(comment))
                    comment = []
                    text.append(" ")
                    continue
            comment.append(ch)
        elif quoted:
            quoted = ch != '"'
            text.append(ch)
        elif ch == '"':
            quoted = True
            text.append(ch)
        elif ch == "(":
            depth = 1
        elif ch == ";":
            pieces.append(_Piece("".join(text), tuple(comments)))
            text, comments = [], []
        else:
            text.append(ch)
    pieces.append(_Piece("".join(text), tuple(comments)))
    return pieces


_PROPERTY = re.compile(r'([A-Za-z0-9_./-]+)\s*=\s*("(?:[^"\\]|\\.)*"?[^\s"]*|[^\s"]+)')


def authserv_id(value: str) -> str:
    """The authserv-id an Authentication-Results value starts with (lower-case)."""
    first = value.partition(";")[0]
    if "(" in first or '"' in first:  # a comment or a quoted string: only _pieces reads them right
        first = _pieces(value)[0].text
    head = first.split()  # else the text up to the first ';' is the first piece's, as it stands
    return head[0].strip('"').lower() if head else ""


def _parsed_pieces(value: str) -> tuple[str, list[tuple[str, str, dict[str, str], tuple[str, ...]]]]:
    pieces = _pieces(value)
    head = pieces[0].text.split()
    ident = head[0].strip('"').lower() if head else ""
    found: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = []
    for piece in pieces[1:]:
        pairs = [(m.group(1), m.group(2)) for m in _PROPERTY.finditer(piece.text)]
        if not pairs or not piece.text.lstrip().startswith(pairs[0][0]):
            continue
        method, result = pairs[0]
        props: dict[str, str] = {}
        for key, val in pairs[1:]:
            props.setdefault(key.lower(), val.strip('"').lower())
        found.append((method.split("/")[0].lower(), result.strip('"').lower(), props, piece.comments))
    return ident, found


def parse_header(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """(authserv-id, [(method, result, {property: value})]); semicolons and property
    names inside quoted strings or comments are text, not structure."""
    ident, found = _parsed_pieces(value)
    return ident, [(method, result, props) for method, result, props, _ in found]


def results_from_header(value: str, from_domain: str) -> AuthResults:
    """AuthResults read from a trusted Authentication-Results value."""
    ident, methods = _parsed_pieces(value)
    spf, spf_domain = "none", ""
    dkim: list[tuple[str, str]] = []
    dmarc = policy = ""
    for method, result, props, comments in methods:
        if method == "spf" and spf == "none":
            spf = result if result in SPF_RESULTS else "permerror"
            who = props.get("smtp.mailfrom") or props.get("smtp.helo") or ""
            spf_domain = plain_domain(domain_of(who))
        elif method == "dkim" and len(dkim) < MAX_DKIM_SIGNATURES:
            d = plain_domain(props.get("header.d") or domain_of(props.get("header.i", "")))
            if d:
                dkim.append((d, result if result in ("pass", "fail", "temperror") else "fail"))
        elif method == "dmarc" and not dmarc:
            dmarc = result
            policy = (props.get("policy.published-domain-policy") or props.get("policy.dmarc")
                      or _commented_policy(comments))
    return AuthResults(source=f"header {ident}", spf=spf, spf_domain=spf_domain, dkim=tuple(dkim),
                       from_domain=from_domain, dmarc=dmarc,
                       dmarc_policy=policy if policy in DMARC_POLICIES else "")


DMARC_POLICIES = ("none", "quarantine", "reject")
_POLICY_WORD = re.compile(r"(?<![\w.])p\s*=\s*(\w+)", re.IGNORECASE)


def _commented_policy(comments: tuple[str, ...]) -> str:
    """The published policy a checker noted in a comment of its DMARC result, as OpenDMARC
    and the large mailbox providers write it: ``dmarc=fail (p=reject dis=none)``."""
    for comment in comments:
        word = _POLICY_WORD.search(comment)
        if word:
            return word.group(1).lower()
    return ""


# -- checking ourselves -------------------------------------------------------------

def parse_dmarc(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        if "=" in part:
            key, val = part.split("=", 1)
            tags.setdefault(key.strip().lower(), val.strip().lower())
    return tags


def dmarc_record(resolver: Dns, domain: str) -> tuple[dict[str, str] | None, bool]:
    """(tags, found at the organizational domain rather than ``domain``)."""
    org = org_domain(domain)
    for name, at_org in ((domain, False), (org, True)):
        if at_org and name == domain:
            break
        records = [r.decode("utf-8", "replace") for r in resolver.txt(f"_dmarc.{name}")]
        records = [r for r in records if r.replace(" ", "").lower().startswith("v=dmarc1")]
        if len(records) == 1:
            return parse_dmarc(records[0]), at_org
    return None, False


def our_authserv_id(configured: str) -> str:
    """The authserv-id of our Authentication-Results: the setting, else the host name."""
    return (configured or socket.gethostname()).lower()  # no DNS at start-up


def forged_positions(mode: str, our_id: str, headers: Sequence[tuple[str, str]]) -> list[int]:
    """1-based positions, among the Authentication-Results fields of ``headers``, of those
    carrying ``our_id`` that came from outside: all of them when we check ourselves (``mode``
    "check"), all but the topmost when a checker in front of us adds the genuine one."""
    fields = [value for key, value in headers
              if len(key) == 22 and key.lower() == "authentication-results"]  # the length first: quicker
    ours = [position for position, value in enumerate(fields, 1) if authserv_id(value) == our_id]
    return ours[1:] if mode == "header" else ours


class Authenticator:
    """Produces AuthResults for a message, and recognizes our own Authentication-Results."""

    def __init__(self, mode: str, own_id: str, resolver: Dns, every_message: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.mode = mode
        self.authserv_id = our_authserv_id(own_id)
        self.dns = resolver
        self.every_message = every_message  # DMARC for all mail, not only where an allow entry matches

    def is_ours(self, header_value: str) -> bool:
        """An Authentication-Results carrying our authserv-id."""
        return authserv_id(header_value) == self.authserv_id

    def forged_positions(self, headers: Sequence[tuple[str, str]]) -> list[int]:
        """``forged_positions`` (below) with this authenticator's mode and id."""
        return forged_positions(self.mode, self.authserv_id, headers)

    def check(self, sender: str, client_ip: str, helo: str, headers: Sequence[tuple[str, str]],
              raw: Callable[[], bytes]) -> AuthResults:
        """Authenticate one message; a DNS failure makes its part temperror, never raises."""
        from_domain = ascii_domain(plain_domain(domain_of(
            single_from([v for k, v in headers if k.lower() == "from"]) or "")))
        if self.mode == "header":
            for key, value in headers:  # the topmost one with our id: the checker in front added it last
                if key.lower() == "authentication-results" and self.is_ours(value):
                    return results_from_header(value, from_domain)
            return AuthResults(source=f"header {self.authserv_id} (absent)", from_domain=from_domain)
        errors: list[str] = []
        spf_result, spf_domain = self._spf(sender, client_ip, helo)
        signed = any(key.lower() == "dkim-signature" for key, _ in headers)
        dkim = self._dkim(raw()) if signed else ()  # unsigned (most mail): dkimpy would parse it all for nothing
        found = AuthResults(source="checked", spf=spf_result, spf_domain=spf_domain, dkim=dkim,
                            from_domain=from_domain)
        if from_domain:
            try:
                found = self._dmarc(found)
            except DnsTempError as exc:
                errors.append(str(exc))
                found = replace(found, dmarc="temperror")
        return replace(found, errors=tuple(errors))

    def _spf(self, sender: str, client_ip: str, helo: str) -> tuple[str, str]:
        if not client_ip or (not sender and not helo):
            return "none", ""
        domain = ascii_domain(plain_domain(domain_of(sender) if sender else helo.lower()))
        try:
            result, _ = spf_check(self.dns, client_ip, sender, helo)
        except (ValueError, UnicodeError) as exc:  # a sender or HELO pyspf cannot read
            log.info("spf: %s", exc)
            return "permerror", domain
        return (result if result in SPF_RESULTS else "permerror"), domain

    def _dkim(self, message: bytes) -> tuple[tuple[str, str], ...]:
        import dkim
        lookup = dkim_txt(self.dns)
        failed: list[bool] = []

        def counted(name: bytes | str, timeout: float = 5) -> bytes | None:
            try:
                return lookup(name, timeout)
            except dkim.DnsTimeoutError:
                failed.append(True)
                raise
        try:
            signer = dkim.DKIM(message, logger=log, timeout=self.dns.timeout)
            count = sum(1 for k, _ in signer.headers if k.lower() == b"dkim-signature")
        except dkim.DKIMException:
            return ()
        out: list[tuple[str, str]] = []
        for idx in range(min(count, MAX_DKIM_SIGNATURES)):
            failed.clear()
            try:
                ok = signer.verify(idx, dnsfunc=counted)
            except dkim.DKIMException:
                ok = False
            domain = plain_domain(signer.domain.decode("ascii", "replace").lower()) if signer.domain else ""
            if not domain:  # none, or not a domain name: nothing it could vouch for, nothing to name
                continue
            out.append((domain, "pass" if ok else ("temperror" if failed else "fail")))
        return tuple(out)

    def _dmarc(self, found: AuthResults) -> AuthResults:
        tags, at_org = dmarc_record(self.dns, found.from_domain)
        if tags is None:
            return replace(found, dmarc="none")
        policy = (tags.get("sp") if at_org and tags.get("sp") else tags.get("p")) or "none"
        strict = (tags.get("adkim") == "s", tags.get("aspf") == "s")
        found = replace(found, dmarc_policy=policy, dmarc_strict=strict)
        return replace(found, dmarc="pass" if found.from_aligned(found.from_domain) else "fail")
