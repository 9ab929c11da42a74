"""Block entries that would refuse far more mail than whoever adds one means to.

A block entry matches the envelope sender and the header From, authenticated or
not (docs/precedence.md), so:

- one that matches a domain the site hosts (``@example.com``, ``*.example``)
  refuses every message that says it comes from there: the users' mail to each
  other and everything forged in their name alike;
- one that matches the owner's own address refuses the owner's own mail too;
- ``*.co.uk`` covers a whole public suffix: every sender registered under it.

Such an entry may still be wanted (forged mail in a user's own name is a classic
of spam), so callers ask before adding one rather than refuse it: the web UI
shows what it would catch and adds it on confirmation; its CSV import, which
cannot ask line by line, refuses those lines.  The domains the site hosts are the
domains of the addresses its users own (``accounts.local_domains``).

``risks`` is pure; ``for_list`` reads the site's domains and addresses for it, and the web
UI and ``stronghold list add``/``import`` both ask through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from stronghold.authres import public_suffix
from stronghold.lists import PatternError, display, matches, normalize_pattern
from stronghold.store import accounts

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

Check = Callable[[str], list[str]]
YOURS = "your own address"
THEIRS = "the address whose list this is,"


def risks(pattern: str, local_domains: Iterable[str], own_addresses: Iterable[str] = (),
          local_addresses: Iterable[str] = (), own_label: str = "your own address") -> list[str]:
    """Sentences saying what more than one sender a block ``pattern`` (normalized) would refuse;
    [] when it is an ordinary entry.  ``own_addresses``: those of the list's owner (a user's list),
    named ``own_label``; ``local_addresses``: addresses of users here that an address pattern should
    not hit unasked (the global list)."""
    found: list[str] = []
    shown = display(pattern)
    own = [a for a in own_addresses if matches(pattern, a)]
    if own:
        found.append(f"{shown} matches {own_label} {', '.join(map(display, own))}: every message that "
                     "says it is from there is refused, the ones sent from it for real too.")
    if not pattern.startswith(("@", "*.")):
        if not own and pattern in set(local_addresses):
            found.append(f"{shown} is the address of a user of this site: everything it sends to anyone "
                         "here is refused.")
        return found
    hosted = sorted(d for d in set(local_domains) if matches(pattern, f"postmaster@{d}"))
    if hosted:
        names = ", ".join(display(d) for d in hosted[:5]) + (f" and {len(hosted) - 5} more" if len(hosted) > 5 else "")
        found.append(f"{shown} matches {'a domain' if len(hosted) == 1 else 'domains'} this site hosts "
                     f"({names}): mail that says it comes from there is refused, the users' mail to each "
                     "other included.")
    base = pattern.removeprefix("*.") if pattern.startswith("*.") else ""
    if base and public_suffix(base):
        found.append(f"{shown} covers every domain registered under {display(base)}, a public suffix: "
                     "it refuses mail from a large part of the internet.")
    return found


def for_list(session: Session, owner: str | None, viewer: Sequence[str] = ()) -> Check:
    """``risks`` for normalized patterns on ``owner``'s block list (None: the global list), the
    site's domains and addresses read once: the one check of the web UI and ``stronghold list``.
    ``viewer``: the addresses of whoever adds the entry; their own list counts them all as theirs
    (an admin at someone else's list, or the command line, names the list's address)."""
    domains = accounts.local_domains(session)
    addresses = accounts.local_addresses(session) if owner is None else set()
    if owner is None:
        own, label = [], ""
    elif owner in viewer:
        own, label = list(viewer), YOURS
    else:
        own, label = [owner], THEIRS
    return lambda norm: risks(norm, domains, own, addresses, label)


def of_pattern(check: Check, pattern: str) -> tuple[str, list[str]]:
    """(``pattern`` as people read it, ``check``'s risks of it); none for a pattern that is not valid
    (adding it says what is wrong)."""
    try:
        norm = normalize_pattern(pattern)
    except PatternError:
        return pattern, []
    return display(norm), check(norm)


def import_refusal(check: Check, kind: str, pattern: str, how: str) -> str | None:
    """Why an import (which cannot ask line by line) refuses a block line, or None; ``how``: how to add
    it anyway."""
    found = check(pattern) if kind == "block" else []
    return f"{found[0]} {how}" if found else None
