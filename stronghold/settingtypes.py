"""What a setting's value may be: validators turning raw input (TOML, environment, a
caller's mapping) into a typed value, or raising ValueError with what is wanted."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


def choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return str(value)
    return check


def probability(value: Any) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("must be between 0 and 1")
    return number


def optional_probability(value: Any) -> float | None:
    if value in (None, "", "model"):
        return None
    return probability(value)


def positive_int(value: Any) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def non_negative_int(value: Any) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def non_negative(value: Any) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def timeout_seconds(value: Any) -> float:
    """Seconds to wait: 0 (no limit) up to a day; not inf or nan (the socket layer refuses them)."""
    number = float(value)
    if not 0 <= number <= 86400:  # also false for nan
        raise ValueError("must be seconds from 0 to 86400")
    return number


def positive(value: Any) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be more than 0")
    return number


def socket_address(value: Any) -> str:
    text = str(value)
    if text and not re.fullmatch(r"unix:/.+|inet6?:\d{1,5}(@[\w.:\[\]-]+)?", text):
        raise ValueError("must be unix:/PATH or inet:PORT@HOST")
    return text


def clamd_address(value: Any) -> str:
    text = str(value)
    if not re.fullmatch(r"unix:/.+|tcp:[\w.\[\]:-]+:\d{1,5}|none", text):
        raise ValueError("must be unix:/PATH, tcp:HOST:PORT or none")
    return text


def host_port(value: Any) -> str:
    text = str(value)
    if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[\w.-]+):\d{1,5}", text):
        raise ValueError("must be HOST:PORT")
    return text


def base_url(value: Any) -> str:
    text = str(value).rstrip("/")
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", text):
        raise ValueError("must be an http:// or https:// URL")
    return text


def hour(value: Any) -> int:
    number = int(value)
    if not 0 <= number <= 23:
        raise ValueError("must be an hour from 0 to 23")
    return number


def local_path(value: Any) -> Path:
    return Path(str(value)).expanduser()


def loopback_bind(value: Any) -> str:
    """HOST:PORT on a loopback address, or empty (off)."""
    text = str(value).strip()
    if not text:
        return ""
    host, sep, port = text.rpartition(":")
    try:
        loopback = sep and ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be a loopback HOST:PORT such as 127.0.0.1:9464, or empty")
    return text


def cpu_affinity(value: Any) -> str:
    """``auto``, ``off`` or a comma-separated list of CPU numbers (``milter_cpu_affinity``)."""
    text = str(value).strip().lower()
    if text in ("auto", "off"):
        return text
    parts = [part.strip() for part in text.split(",")]
    if not parts or not all(part.isdigit() and len(part) <= 4 for part in parts):
        raise ValueError("must be auto, off or CPU numbers such as 0,1")
    numbers = [int(part) for part in parts]
    if len(set(numbers)) != len(numbers):
        raise ValueError("names a CPU twice")
    return ",".join(str(number) for number in numbers)


def any_text(value: Any) -> str:
    return str(value)


def nameservers(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_address(str(item).strip())))
        except ValueError as exc:
            raise ValueError(f"'{item}' is not an IP address") from exc
    return tuple(out)


def port_number(value: Any) -> int:
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError("must be a port number (1-65535)")
    return number


def authserv_id(value: Any) -> str:
    text = str(value).strip().lower()
    if text and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{0,252}", text):
        raise ValueError("must be a host-name-like token (letters, digits, dots, hyphens)")
    return text


def delimiters(value: Any) -> str:
    """Postfix's recipient_delimiter: none, or characters each of which starts an address extension."""
    text = str(value).strip()
    if any(c.isalnum() or not c.isprintable() or c.isspace() or c in '@"\\<>()[],;:' for c in text):
        raise ValueError("must be empty or punctuation characters such as + or +-, as Postfix's recipient_delimiter")
    return text


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def rate_limits(value: Any) -> str:
    """A Flask-Limiter limit string such as '5 per minute; 20 per day'."""
    from limits import parse_many
    text = str(value)
    try:
        if not parse_many(text):
            raise ValueError("no limit given")
    except ValueError as exc:
        raise ValueError(f"must be limits like '5 per minute; 20 per day' ({exc})") from exc
    return text
