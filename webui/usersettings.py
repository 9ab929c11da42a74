"""A user's own settings: how sure the filter must be before their mail counts as spam, and
how often they get a digest of held mail.  The threshold stays within the admin's bounds
(``user_threshold_min`` / ``user_threshold_max``)."""

from __future__ import annotations

import math

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from stronghold import digest
from stronghold.modelfile import ModelError, read_passport
from stronghold.store import accounts
from stronghold.store.errors import EntryError
from webui.auth import login_required
from webui.context import settings, store

bp = Blueprint("usersettings", __name__, url_prefix="/settings")


def _system_threshold() -> float | None:
    """The threshold everyone else gets: the admin's setting, else the model's (its passport)."""
    cfg = settings()
    if cfg.spam_threshold is not None:
        return cfg.spam_threshold
    try:
        return read_passport(cfg.model_path).spam_threshold
    except ModelError:
        return None


def _parse_threshold(text: str, bounds: tuple[float, float]) -> float | None:
    """'' (the system's) or a number; ValueError with a sentence otherwise (nan and inf get
    the sentence of any number outside the bounds)."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"'{text[:20]}' is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"the threshold must be between {bounds[0]:g} and {bounds[1]:g}")  # as set_spam_threshold
    return value


@bp.route("/", methods=["GET", "POST"])
@login_required
def index():
    bounds = settings().user_threshold_bounds
    error = ""
    if request.method == "POST":
        choice = request.form.get("digest", "")
        try:
            if choice not in digest.CHOICES:
                raise ValueError("choose off, daily or weekly for the digest")
            threshold = _parse_threshold(request.form.get("threshold", ""), bounds) if bounds else None
            with store().session() as s:
                user = accounts.get_user_by_id(s, g.user.id)
                if user is None:
                    raise ValueError("your account is gone")
                if bounds:
                    accounts.set_spam_threshold(s, user, threshold, bounds)
                user.digest = choice  # one transaction: both saved, or neither
        except (ValueError, EntryError) as exc:
            error = str(exc)
        else:
            flash("Settings saved: your spam threshold is "
                  + (f"{threshold:g}" if threshold is not None else "the system's")
                  + f"; digest {choice}.")
            return redirect(url_for("usersettings.index"))
    with store().session() as s:
        user = accounts.get_user_by_id(s, g.user.id)
        own = user.spam_threshold if user is not None else None
        current_digest = user.digest if user is not None else "off"
    form_threshold = request.form.get("threshold", "") if error else ("" if own is None else f"{own:g}")
    return render_template("settings.html", bounds=bounds, system=_system_threshold(), own=own,
                           form_threshold=form_threshold, digest_now=request.form.get("digest", current_digest)
                           if error else current_digest, choices=digest.CHOICES, error=error), (400 if error else 200)
