"""Reading users' mailboxes over IMAP (stdlib imaplib), as a mail client would."""

from __future__ import annotations

import imaplib
import re
import time
from collections.abc import Callable, Mapping

from devtools.localstack import StackError

_LIST_LINE = re.compile(rb'\((?P<flags>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')


def _folder_name(raw: bytes) -> str:
    match = _LIST_LINE.match(raw)
    if match is None:
        raise ValueError(f"unexpected LIST line {raw!r}")
    name = match.group("name")
    if name.startswith(b'"'):
        name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
    return name.decode()


class Mailboxes:
    """Logs in as a test user and reads every folder; ``users`` maps address -> password."""

    def __init__(self, port: int, users: Mapping[str, str], host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.users = users

    def connect(self, user: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4(self.host, self.port, timeout=20)
        client.login(user, self.users[user])
        return client

    def folders(self, user: str) -> dict[str, list[bytes]]:
        """Every folder of ``user`` and the raw messages in it (read without setting \\Seen)."""
        client = self.connect(user)
        try:
            status, listing = client.list()
            if status != "OK":
                raise StackError(f"IMAP LIST for {user}: {status}")
            result: dict[str, list[bytes]] = {}
            for line in listing:
                if not isinstance(line, bytes):
                    continue
                if b"\\Noselect" in line.split(b")", 1)[0]:
                    continue
                name = _folder_name(line)
                client.select(f'"{name}"', readonly=True)
                _, data = client.uid("SEARCH", "ALL")
                uids = data[0].split() if data and data[0] else []
                messages = []
                for uid in uids:
                    _, fetched = client.uid("FETCH", uid, "(BODY.PEEK[])")
                    messages += [part[1] for part in fetched if isinstance(part, tuple)]
                result[name] = messages
                client.close()
            return result
        finally:
            client.logout()

    def where(self, user: str, test_id: str) -> dict[str, list[bytes]]:
        """The folders holding the message tagged ``X-Test-Id: test_id``, and those copies."""
        marker = f"X-Test-Id: {test_id}".encode()
        found = {name: [m for m in msgs if marker in m] for name, msgs in self.folders(user).items()}
        return {name: msgs for name, msgs in found.items() if msgs}

    def wait_for(self, user: str, test_id: str, timeout: float = 20) -> dict[str, list[bytes]]:
        """Like ``where``, waiting (polling IMAP with backoff) until the message has arrived."""
        return self.wait_until(user, lambda: self.where(user, test_id), timeout,
                               f"message {test_id} in {user}'s mailbox")

    def wait_until(self, user: str, probe: Callable[[], dict[str, list[bytes]]], timeout: float,
                   what: str) -> dict[str, list[bytes]]:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            found = probe()
            if found:
                return found
            if time.monotonic() > deadline:
                raise StackError(f"{what}: not there after {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def append(self, user: str, folder: str, raw: bytes, when: float) -> None:
        """APPEND ``raw`` to ``folder`` with INTERNALDATE ``when`` (epoch seconds)."""
        client = self.connect(user)
        try:
            status, data = client.append(f'"{folder}"', None, imaplib.Time2Internaldate(when), raw)
            if status != "OK":
                raise StackError(f"IMAP APPEND to {user}/{folder}: {data!r}")
        finally:
            client.logout()
