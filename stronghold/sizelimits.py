"""Do Postfix, clamd and Stronghold agree on how big a message may be?

Stronghold refuses (or tempfails) mail over ``max_message_bytes`` before
scanning it, so no unscanned tail is ever delivered; the limits around it must
fit: Postfix should refuse bigger mail itself (``message_size_limit`` at or
below ours, so senders get Postfix's 552 at once), and clamd must scan all of
what we pass it (``StreamMaxLength``, ``MaxFileSize`` and ``MaxScanSize`` at
or above ours; past ``MaxFileSize``/``MaxScanSize`` clamd says "OK" without
scanning unless ``AlertExceedsMax`` is set).  ``milter --check-config``
prints these warnings.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

from stronghold.config import Config

log = logging.getLogger(__name__)

# clamd's defaults (clamd.conf(5), ClamAV 1.x) for a setting its file leaves out.
CLAMD_DEFAULTS = {"StreamMaxLength": 100 * 2**20, "MaxFileSize": 100 * 2**20, "MaxScanSize": 400 * 2**20}
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_size(text: str) -> int:
    """clamd's SIZE: a number with an optional K or M (G) suffix; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[bB]?\s*", text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def clamd_limits(path: Path) -> dict[str, int]:
    """clamd's size limits from its config file (defaults for those not set); OSError if unreadable."""
    limits = dict(CLAMD_DEFAULTS)
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in limits:
            try:
                limits[parts[0]] = parse_size(parts[1])
            except ValueError:
                log.warning("%s: %s %s is not a size", path, parts[0], parts[1])
    return limits


def postfix_message_size_limit(config_dir: str = "") -> int | None:
    """``postconf -h message_size_limit`` (0: unlimited), or None when postconf is not there."""
    postconf = shutil.which("postconf") or ("/usr/sbin/postconf" if Path("/usr/sbin/postconf").exists() else None)
    if postconf is None:
        return None
    args = [postconf, *(["-c", config_dir] if config_dir else []), "-h", "message_size_limit"]
    out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)
    if out.returncode != 0 or not out.stdout.strip().isdigit():
        log.warning("postconf: %s", (out.stderr or out.stdout).strip()[:200])
        return None
    return int(out.stdout.strip())


def _mib(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)"


def size_warnings(cfg: Config, postfix_limit: int | None, clamd: dict[str, int] | None) -> list[str]:
    """Where Postfix's or clamd's limits disagree with ``max_message_bytes``, in words."""
    ours = cfg.max_message_bytes
    out: list[str] = []
    if postfix_limit is not None:
        if postfix_limit == 0:
            out.append(f"Postfix message_size_limit = 0 (unlimited): mail over max_message_bytes = {_mib(ours)} "
                       f"gets oversize_action = {cfg.oversize_action}; set message_size_limit to at most {ours}")
        elif postfix_limit > ours:
            out.append(f"Postfix accepts up to message_size_limit = {_mib(postfix_limit)} but max_message_bytes "
                       f"is {_mib(ours)}: mail in between gets oversize_action = {cfg.oversize_action}; make "
                       "them equal (or lower message_size_limit)")
    if clamd is not None and cfg.clamd_socket != "none":
        for key in ("StreamMaxLength", "MaxFileSize", "MaxScanSize"):
            if clamd[key] < ours:
                out.append(f"clamd {key} = {_mib(clamd[key])} is below max_message_bytes = {_mib(ours)}: "
                           f"raise it to at least {ours}" + (
                               " (past it clamd reports OK without scanning unless AlertExceedsMax yes)"
                               if key != "StreamMaxLength" else " (bigger streams fail to scan)"))
    if cfg.oversize_action in ("scan-head", "accept"):
        out.append(f"oversize_action = {cfg.oversize_action}: mail over max_message_bytes is delivered with an "
                   "unscanned part (a virus there passes); reject or tempfail never does")
    return out


def check(cfg: Config) -> list[str]:
    """Every size warning for this host: Postfix asked with postconf, clamd's config read."""
    notes: list[str] = []
    postfix_limit = postfix_message_size_limit(cfg.postfix_config_dir)
    if postfix_limit is None:
        notes.append("Postfix message_size_limit unknown (no postconf, or it could not read "
                     f"{cfg.postfix_config_dir or 'the default config'}; postfix_config_dir names another): "
                     "keep it at most max_message_bytes")
    clamd: dict[str, int] | None = None
    if cfg.clamd_socket != "none":
        try:
            clamd = clamd_limits(cfg.clamd_config)
        except OSError as exc:
            notes.append(f"clamd config {cfg.clamd_config} unreadable ({exc.strerror}): set clamd_config to check "
                         "StreamMaxLength, MaxFileSize and MaxScanSize against max_message_bytes")
    return notes + size_warnings(cfg, postfix_limit, clamd)
