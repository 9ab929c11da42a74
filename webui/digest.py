"""The digest's one-click release links: a confirmation page (GET) and the release itself (POST).

The token is the authority (``stronghold.digest`` signs it), so no login is
needed.  A GET changes nothing: mail clients and link scanners fetch links
before anyone clicks, so the release waits for the button on the page.  Bad
links (forged, expired, used, gone) get a page saying so, and each client
address may only send so many of those before it is told to wait; checking a
link is one HMAC and one row read.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, make_response, render_template

from stronghold import digest
from stronghold.store.errors import StoreError
from webui.context import settings, store
from webui.preview import visible

log = logging.getLogger(__name__)
bp = Blueprint("digest", __name__, url_prefix="/digest")

BAD_LINKS_PER_WINDOW = 20
BAD_LINKS = f"{BAD_LINKS_PER_WINDOW} per 15 minutes"  # per client address; counted in the shared store
BAD_LINK_STATUSES = (400, 404, 410)  # forged, unknown, expired: what a guesser gets

_STATUS = {"forged": 400, "expired": 410, "used": 409, "unknown": 404, "virus": 403, "failed": 503}
_TITLES = {"forged": "This link is not valid", "expired": "This link has expired",
           "used": "Already released", "unknown": "Message not found", "virus": "Not released",
           "failed": "Not released yet"}


def _page(template: str, status: int = 200, **context: object) -> Response:
    response = make_response(render_template(template, visible=visible, **context), status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the token is in the URL
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _refused(err: digest.DigestLinkError) -> Response:
    return _page("digest_link.html", _STATUS.get(err.kind, 400), state=err.kind,
                 title=_TITLES.get(err.kind, "Not released"), reason=err.reason)


def too_many() -> Response:
    """The page for a client that sent too many bad links (webui.ratelimit counts them)."""
    return _page("digest_link.html", 429, state="throttled", title="Too many invalid links",
                 reason="Too many invalid release links came from your address. Wait a few minutes, "
                        "or log in and use the Junk page.")


@bp.route("/release/<token>", methods=["GET"])
def confirm(token: str) -> Response:
    """Show what the link would release, with a button; nothing changes here."""
    try:
        held = digest.check(settings(), store(), token)
    except digest.DigestLinkError as err:
        return _refused(err)
    except StoreError:
        log.exception("digest link check failed")
        return _page("digest_link.html", 503, state="failed", title="Not available",
                     reason="The quarantine cannot be read just now. Try the link again in a few minutes.")
    return _page("digest_link.html", state="confirm", title="Release this message?", h=held, token=token)


@bp.route("/release/<token>", methods=["POST"])
def redeem(token: str) -> Response:
    try:
        held = digest.redeem(settings(), store(), token)
    except digest.DigestLinkError as err:
        return _refused(err)
    except StoreError:
        log.exception("digest link release failed")
        return _page("digest_link.html", 503, state="failed", title="Not released yet",
                     reason="The quarantine cannot be read just now; nothing was sent. Try again in a few minutes.")
    log.info("quarantine item %d released to %s by a digest link", held.id, held.recipient)
    return _page("digest_link.html", state="released", title="Released", h=held)
