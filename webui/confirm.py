"""Confirmation without scripts: a destructive POST first answers with a page that asks."""

from __future__ import annotations

from flask import request


def confirmed() -> bool:
    """True when the POST comes from the confirmation page's button."""
    return request.form.get("confirm") == "1"
