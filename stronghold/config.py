"""Typed settings: every key has a default, a description and a validator, declared once as a
``Config`` field.

Sources, later wins: declared defaults, a TOML file (``--config`` or
``$STRONGHOLD_CONFIG``), environment variables ``STRONGHOLD_<KEY>``, and a
mapping passed by the caller (tests).  Unknown keys are errors, so a typo is
never silently ignored.  ``STRONGHOLD_CONFIG`` and ``STRONGHOLD_NATIVE`` (read by
``nativecore`` when the code loads, before any setting) are not settings.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from stronghold.settingtypes import (
    any_text,
    authserv_id,
    base_url,
    boolean,
    choice,
    clamd_address,
    cpu_affinity,
    delimiters,
    host_port,
    hour,
    local_path,
    loopback_bind,
    nameservers,
    non_negative,
    non_negative_int,
    optional_probability,
    port_number,
    positive,
    positive_int,
    probability,
    rate_limits,
    socket_address,
    timeout_seconds,
)

ROOT = Path(__file__).resolve().parent.parent
# A source checkout keeps its state beside the code (make run, tests); an installed
# package uses the system's places (make install, docs/install.md).
SYSTEM_STATE = Path("/var/lib/stronghold")
FROM_SOURCE = (ROOT / "setup.cfg").is_file()
DEFAULT_DATA_DIR = ROOT / "var" if FROM_SOURCE else SYSTEM_STATE
DEFAULT_MODELS_DIR = ROOT / "models" if FROM_SOURCE else SYSTEM_STATE / "models"


class ConfigError(Exception):
    """A setting is unknown or invalid (one-line message)."""


FAIL_ACTIONS = ("tempfail", "accept", "reject")


@dataclass(frozen=True)
class Setting:
    """How one setting is read: its default, the validator turning raw input into the typed value,
    and its meaning (shown by ``stronghold config example`` and ``describe``)."""

    default: Any
    check: Callable[[Any], Any]
    help: str


def _setting(default: Any, check: Callable[[Any], Any], help: str) -> Any:
    """A ``Config`` field carrying its ``Setting``.  The field itself has no default: ``load``
    always passes every value, checked."""
    return field(metadata={"setting": Setting(default, check, help)})


@dataclass(frozen=True)
class Config:
    """Every setting, declared once: its type, then its default, validator and meaning."""

    data_dir: Path = _setting(DEFAULT_DATA_DIR, local_path, "where the SQLite store, spool and runtime files live")
    models_dir: Path = _setting(DEFAULT_MODELS_DIR, local_path, "the only folder models are loaded from")
    model: str = _setting("model.joblib", any_text, "model file name inside models_dir")
    database_url: str = _setting("", any_text, "SQLAlchemy URL; empty means SQLite in data_dir")
    milter_socket: str = _setting("", socket_address,
        "unix:/PATH or inet:PORT@HOST; empty: unix socket data_dir/milter.sock")
    milter_socket_group: str = _setting("postfix", any_text,
        "group given the unix socket (mode 0660) so Postfix can connect")
    milter_workers: int = _setting(2, positive_int, "pre-forked milter processes (one per core)")
    milter_cpu_affinity: str = _setting("auto", cpu_affinity,
        "auto: each worker kept on a CPU of its own where each can have one; off: left to the kernel; "
        "or CPUs such as 0,1 (taken in turn)")
    milter_timeout: int = _setting(600, positive_int, "seconds the milter waits on Postfix")
    milter_engine: str = _setting("auto", choice("auto", "native", "libmilter"),
        "protocol engine: native (C, stronghold._miltercore), libmilter (pymilter); auto: native if built")
    clamd_socket: str = _setting("unix:/run/clamav/clamd.ctl", clamd_address,
                                 "clamd: unix:/PATH, tcp:HOST:PORT or none")
    clamd_timeout: float = _setting(30.0, timeout_seconds, "seconds to wait for clamd (0: no limit)")
    spam_threshold: float | None = _setting(None, optional_probability,
        "probability at or above which mail is spam; empty: the model's")
    reject_threshold: float = _setting(0.999, probability,
        "probability at or above which spam_action_high applies")
    user_threshold_min: float = _setting(0.5, probability,
        "lowest spam threshold a user may choose on their settings page")
    user_threshold_max: float = _setting(0.99, probability,
        "highest spam threshold a user may choose (min = max: users cannot choose)")
    spam_action: str = _setting("tag", choice("tag", "quarantine", "reject"),
        "what spam gets: tag (delivered into Junk), quarantine (held), reject (550)")
    spam_action_high: str = _setting("tag", choice("tag", "quarantine", "reject"),
        "what spam at or above reject_threshold gets (same choices)")
    virus_action: str = _setting("reject", choice("reject", "quarantine"),
        "what a virus gets: reject (554) or quarantine (released by admins only)")
    subject_prefix: str = _setting("[SPAM]", any_text, "prepended to the subject of tagged spam; empty: none")
    on_scanner_error: str = _setting("tempfail", choice(*FAIL_ACTIONS), "when clamd fails")
    on_model_error: str = _setting("tempfail", choice(*FAIL_ACTIONS), "when the model is unusable")
    on_store_error: str = _setting("tempfail", choice(*FAIL_ACTIONS), "when the database fails")
    max_message_bytes: int = _setting(25 * 1024 * 1024, positive_int,
        "messages are scanned whole up to this size; larger ones get oversize_action "
        "(keep Postfix's message_size_limit at or below it)")
    oversize_action: str = _setting("reject", choice("reject", "tempfail", "scan-head", "accept"),
        "past max_message_bytes: reject (552 5.3.4) or tempfail unscanned; "
        "scan-head and accept deliver a tail no one scanned (a virus there passes)")
    clamd_config: Path = _setting(Path("/etc/clamav/clamd.conf"), local_path,
        "clamd's own config, read by --check-config (StreamMaxLength, MaxFileSize)")
    postfix_config_dir: str = _setting("", any_text,
        "Postfix config folder --check-config asks postconf about; empty: the default")
    spool_memory_bytes: int = _setting(1024 * 1024, positive_int,
        "message bytes kept in memory before spooling to disk")
    lists_refresh_seconds: float = _setting(2.0, non_negative,
        "how often the milter checks the store for list changes")
    log_tokens: bool = _setting(True, boolean, "keep message features in the log so feedback can train")
    log_retention_days: int = _setting(30, non_negative_int,
        "message log entries older than this are deleted (0: keep forever)")
    dns_nameservers: tuple[str, ...] = _setting((), nameservers,
        "name servers (IP addresses) for sender authentication; empty: the system's")
    dns_port: int = _setting(53, port_number, "port of dns_nameservers")
    dns_timeout: float = _setting(2.0, timeout_seconds, "seconds one DNS lookup may take")
    auth_mode: str = _setting("check", choice("check", "header"),
        "check: SPF/DKIM/DMARC ourselves; header: trust the topmost "
        "Authentication-Results carrying authserv_id (a checker in front of us)")
    authserv_id: str = _setting("", authserv_id,
        "authserv-id of this site's Authentication-Results (incoming ones with it "
        "are removed as forged); empty: the host name")
    recipient_delimiter: str = _setting("", delimiters,
        "Postfix's recipient_delimiter (e.g. +): jack+news@ is jack@, with jack's lists, threshold "
        "and Junk page; set it as in main.cf (empty: no extensions)")
    dmarc_every_message: bool = _setting(False, boolean,
        "check DMARC for all mail (DNS per message), not only where an "
        "allow entry would match")
    dmarc_action: str = _setting("tag", choice("tag", "quarantine", "reject"),
        "what a DMARC failure under the From domain's p=quarantine/reject gets "
        "(a recipient's own block still rejects)")
    on_dns_error: str = _setting("unauthenticated", choice("unauthenticated", "tempfail"),
        "when authentication lookups fail: treat the sender as unauthenticated, "
        "or tempfail the message")
    log_format: str = _setting("text", choice("text", "json"),
        "text: one line per event; json: one JSON object per line (per message: "
        "queue id, recipients' decisions, score, trace, ms per stage, worker)")
    metrics_bind: str = _setting("", loopback_bind,
        "loopback HOST:PORT serving Prometheus /metrics (e.g. 127.0.0.1:9464); empty: off")
    web_bind: str = _setting("127.0.0.1:8080", any_text, "host:port of the web UI")
    web_secret_key: str = _setting("", any_text, "Flask secret key (the same on every web node); "
                                    "empty: generated once into the database, shared by every node")
    web_secure_cookies: bool = _setting(False, boolean, "mark cookies Secure (always so when web_base_url is https)")
    release_smtp: str = _setting("127.0.0.1:10026", host_port,
        "HOST:PORT of Postfix's unfiltered listener: released mail and digests")
    quarantine_retention_days: int = _setting(30, non_negative_int,
        "quarantined mail older than this is deleted (0: keep forever)")
    web_base_url: str = _setting("http://127.0.0.1:8080", base_url,
        "the web UI's address as users reach it (links in digest mail)")
    digest_sender: str = _setting("postmaster@localhost", any_text, "envelope and From address of digest mail")
    digest_link_days: int = _setting(7, positive_int, "days a digest's release link stays valid")
    digest_hour: int = _setting(7, hour, "UTC hour from which daily (weekly: Monday's) digests are due")
    digest_check_minutes: int = _setting(15, non_negative_int,
        "how often `stronghold web` sends due digests (0: a timer runs "
        "`stronghold digest` instead)")
    junk_retention_days: int = _setting(30, non_negative_int,
        "Junk and Trash messages older than this are expunged by "
        "'stronghold mailbox expire' (0: keep forever)")
    dovecot_config: Path = _setting(Path("/etc/dovecot/dovecot.conf"), local_path,
        "the Dovecot config doveadm uses for 'stronghold mailbox expire'")
    web_trusted_proxies: int = _setting(0, non_negative_int,
        "reverse proxies in front of the web UI whose X-Forwarded-For/-Proto "
        "are believed (0: none, the client address is the peer's)")
    web_login_limits: str = _setting("5 per minute; 10 per hour; 20 per day", rate_limits,
        "failed logins allowed per client address and login name (a backoff: "
        "the owner logging in from elsewhere is not held up)")
    web_client_limits: str = _setting("30 per 15 minutes; 100 per day", rate_limits,
        "failed logins allowed per client address, whatever the login name")
    web_session_hours: float = _setting(8.0, positive, "a web login lasts this long at most")
    web_import_max_bytes: int = _setting(2 * 1024 * 1024, positive_int,
        "largest CSV file the web UI imports; larger ones are refused whole")
    model_versions_kept: int = _setting(10, positive_int,
        "earlier live models kept in the models folder's versions/ for 'stronghold model rollback' "
        "(at least 1); archiving one more deletes the oldest")
    model_sync_seconds: float = _setting(0.0, non_negative,
        "how often the milter pulls the model published in the store "
        "(several nodes); 0: off, the local model file only")
    node_name: str = _setting("", any_text, "this node's name in 'stronghold model info'; empty: the host name")

    @property
    def user_threshold_bounds(self) -> tuple[float, float] | None:
        """(min, max) a user may choose; None when users may not choose (min = max)."""
        if self.user_threshold_min >= self.user_threshold_max:
            return None
        return self.user_threshold_min, self.user_threshold_max

    @property
    def model_path(self) -> Path:
        """The model file; a name with a folder in it is refused by load()."""
        return self.models_dir / self.model

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'stronghold.db'}"

    def describe(self) -> list[tuple[str, Any, str]]:
        return [(name, getattr(self, name), setting.help) for name, setting in SETTINGS.items()]


SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(Config)}
"""Every setting by name, in declaration order (read from ``Config``'s fields)."""


NOT_SETTINGS = frozenset({"STRONGHOLD_CONFIG", "STRONGHOLD_NATIVE"})  # environment read elsewhere

def load(path: Path | None = None, overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from defaults, file, environment and overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file_path = path or (Path(environ["STRONGHOLD_CONFIG"]) if environ.get("STRONGHOLD_CONFIG") else None)
    if file_path is not None:
        try:
            with open(file_path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config {file_path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {file_path}: {exc}") from exc
        values.update(_section(data, f"config {file_path}"))
    for key, value in environ.items():
        if key.startswith("STRONGHOLD_") and key not in NOT_SETTINGS:
            name = key[len("STRONGHOLD_"):].lower()
            if name not in SETTINGS:
                raise ConfigError(f"environment {key}: unknown setting '{name}'")
            values[name] = value
    values.update(_section(dict(overrides or {}), "overrides"))
    checked: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        raw = values.get(name, setting.default)
        try:
            checked[name] = setting.check(raw) if raw is not None else None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"setting {name}={raw!r}: {exc}") from exc
    if "/" in checked["model"]:
        raise ConfigError("setting model: a file name inside models_dir, not a path")
    if checked["user_threshold_min"] > checked["user_threshold_max"]:
        raise ConfigError("setting user_threshold_min is above user_threshold_max")
    return Config(**checked)


def _section(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    flat = dict(data.get("stronghold", data)) if isinstance(data.get("stronghold"), dict) else dict(data)
    for key in flat:
        if key not in SETTINGS:
            raise ConfigError(f"{where}: unknown setting '{key}'")
    return flat


def example(values: Mapping[str, Any] | None = None) -> str:
    """A TOML file naming every setting with its meaning: ``values`` set, the rest commented
    out at their defaults (what ``stronghold config example`` prints)."""
    values = values or {}
    unknown = set(values) - set(SETTINGS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    lines = ["# Mail Stronghold settings. Every setting is listed with its meaning; a commented",
             "# line shows the default. Environment variables STRONGHOLD_<NAME> override this file.",
             "[stronghold]"]
    for name, setting in SETTINGS.items():
        lines.append(f"# {setting.help}")
        if name in values:
            lines.append(f"{name} = {_toml(values[name])}")
        else:
            lines.append(f"# {name} = {_toml(setting.default)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
