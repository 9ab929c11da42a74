"""The last 30 days at a glance: a server-rendered SVG bar chart (no scripts, no CDN)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from flask import Blueprint, g, render_template, request

from stronghold.store import messagelog
from stronghold.verdict import Category
from webui.auth import login_required
from webui.context import store

bp = Blueprint("dashboard", __name__)
# stacked in this order; every category the message log holds, so the totals add up to what
# "Recent mail" lists (tests/webui: a category without a colour fails)
COLORS = {Category.CLEAN: "#4c8c4a", Category.ALLOWED: "#2b7a9b", Category.SPAM: "#d08c1f",
          Category.VIRUS: "#b3261e", Category.BLOCKED: "#555f6d", Category.ERROR: "#7b3f8c"}
SERIES = tuple((category.value, color) for category, color in COLORS.items())
DAYS = 30


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    color: str
    label: str


def chart(counts: dict[str, dict[str, int]], days: int = DAYS, width: int = 720,
          height: int = 220) -> tuple[list[Bar], list[str], int]:
    """Stacked bars per day: (bars, day labels, the largest day's total)."""
    today = time.time()
    labels = [time.strftime("%Y-%m-%d", time.gmtime(today - (days - 1 - i) * 86400)) for i in range(days)]
    totals = [sum(counts.get(d, {}).get(k, 0) for k, _ in SERIES) for d in labels]
    peak = max([*totals, 1])
    slot = width / days
    bars: list[Bar] = []
    for i, day in enumerate(labels):
        y = float(height)
        for kind, color in SERIES:
            n = counts.get(day, {}).get(kind, 0)
            if not n:
                continue
            h = n / peak * (height - 10)
            y -= h
            bars.append(Bar(i * slot + 2, y, h, color, f"{day}: {n} {kind}"))
    return bars, labels, peak


@bp.route("/")
@login_required
def index():
    everyone = g.user.is_admin and request.args.get("all") == "1"
    with store().session() as s:
        counts = messagelog.daily_counts(s, None if everyone else g.addresses, DAYS, g.since)
    bars, labels, peak = chart(counts)
    totals = {kind: sum(day.get(kind, 0) for day in counts.values()) for kind, _ in SERIES}
    return render_template("dashboard.html", bars=bars, labels=labels, peak=peak, totals=totals,
                           total=sum(totals.values()),
                           series=SERIES, everyone=everyone, slot=720 / DAYS)
