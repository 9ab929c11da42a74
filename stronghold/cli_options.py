"""Options several commands share, so that they are spelled and explained alike."""

from __future__ import annotations

import argparse


def add_by(parser: argparse.ArgumentParser, what: str, default: str) -> None:
    """``--by WHO``: who is acting, as the store records it.  ``--who``, the older name on
    ``learn`` and ``model``, is still accepted (IMAP hooks and scripts use it) but not shown."""
    parser.add_argument("--by", metavar="WHO", help=f"who {what}, as recorded (default: {default})")
    parser.add_argument("--who", dest="by", help=argparse.SUPPRESS)
