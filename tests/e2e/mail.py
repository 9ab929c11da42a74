"""Building and sending test messages."""

from __future__ import annotations

import base64
import smtplib
import uuid
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

from stronghold.antivirus import EICAR


def tagged(raw: bytes) -> tuple[str, bytes]:
    """Give a message a unique X-Test-Id header, so the sink can find it."""
    tid = uuid.uuid4().hex
    if raw.startswith(b"From ") and b"\n" in raw:
        raw = raw.split(b"\n", 1)[1]
    return tid, f"X-Test-Id: {tid}\r\n".encode() + raw


def from_file(path: Path) -> tuple[str, bytes]:
    return tagged(path.read_bytes())


def simple(sender: str = "carol@sender.example", subject: str = "Lunch on Thursday",
           body: str = "Hi, are we still on for lunch on Thursday at noon?\n",
           extra: str = "") -> tuple[str, bytes]:
    text = (f"From: Carol <{sender}>\r\nTo: someone@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@sender.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            f"{extra}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}")
    return tagged(text.encode())


def with_eicar(sender: str = "carol@sender.example") -> tuple[str, bytes]:
    encoded = base64.encodebytes(EICAR).decode()
    text = (f"From: {sender}\r\nTo: someone@example.com\r\nSubject: the document you asked for\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            "--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
            "--b1\r\nContent-Type: application/octet-stream; name=\"doc.com\"\r\n"
            "Content-Disposition: attachment; filename=\"doc.com\"\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b1--\r\n")
    return tagged(text.encode())


def send(port: int, sender: str, rcpts: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        return smtp.sendmail(sender, rcpts, data)


def headers(data: bytes):
    return BytesParser(policy=compat32).parsebytes(data, headersonly=True)
