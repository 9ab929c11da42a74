"""A milter that does nothing, on pymilter: the floor any pymilter filter stands on.

    python -m bench.noop_milter unix:/path/to/socket

Every callback answers CONTINUE (no reply at all where Postfix allows), the
message is not kept, end of message accepts.  The throughput benchmark runs it
as a reference (--noop) so the cost of the protocol library can be told apart
from the cost of filtering.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import Milter
import milter


class NoopMilter(Milter.Base):
    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom: str, *params: str) -> int:
        return Milter.CONTINUE

    def envrcpt(self, to: str, *params: str) -> int:
        return Milter.CONTINUE

    def data(self) -> int:  # see StrongholdMilter.data: without it a macro packet waits for a reply
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: Any) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        return Milter.ACCEPT


def main(argv: list[str] | None = None) -> int:
    spec = (argv or sys.argv[1:])[0]
    Milter.factory = NoopMilter
    milter.setbacklog(1024)  # as the Stronghold milter: a busy Postfix is not refused
    os.umask(0o000)  # the socket in the benchmark's private folder must be writable by Postfix
    Milter.runmilter("noop", spec, timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
