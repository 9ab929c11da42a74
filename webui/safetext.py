"""Text written by strangers, made safe to show: ``stronghold.safetext`` (the digest mail uses it
too), here where the pages and their tests import it from."""

from __future__ import annotations

from stronghold.safetext import KEPT_FORMAT_CHARS, REPLACEMENT, UNSAFE_CHARS, visible

__all__ = ["KEPT_FORMAT_CHARS", "REPLACEMENT", "UNSAFE_CHARS", "visible"]
