"""Run `stronghold milter` as a real process with a config written for the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools.localstack import StackError, _unix_connects, wait_for


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    lines = []
    for key, value in settings.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    path.write_text("\n".join(lines) + "\n")
    return path


class MilterProcess:
    """``source``: run the milter of another source tree (benchmarks' A/B).  Its folder
    is the child's working directory as well as its PYTHONPATH: ``python -m`` puts the
    working directory first on sys.path, so PYTHONPATH alone would import this tree."""

    def __init__(self, home: Path, settings: Mapping[str, Any], source: Path | None = None) -> None:
        self.home = home
        self.source = source
        self.settings = dict(settings)
        self.spec = str(self.settings["milter_socket"])
        self.config = write_config(home / "stronghold.toml", self.settings)
        self.log_path = home / "milter.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The socket as Postfix names it."""
        if self.spec.startswith("unix:"):
            return self.spec
        port, _, host = self.spec.split(":", 1)[1].partition("@")
        return f"inet:{host or '127.0.0.1'}:{port}"

    def ready(self) -> bool:
        if self.spec.startswith("unix:"):
            return _unix_connects(Path(self.spec[5:]))
        _, _, rest = self.address.partition(":")
        host, _, port = rest.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return True
        except OSError:
            return False

    def command(self) -> list[str]:
        """What runs the milter (benchmarks run it through modules of their own)."""
        return [sys.executable, "-m", "stronghold.cli", "--config", str(self.config), "milter"]

    def start(self, timeout: float = 60) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGHOLD_")}
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.source, start_new_session=True)
        wait_for(lambda: self.proc.poll() is None and self.ready(), timeout,
                 f"milter ({self.log_path})")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole process group (parent and workers), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(20)
        self._close_log()

    def _close_log(self) -> None:
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def stop(self, grace: float = 15) -> None:
        """SIGTERM; the milter must finish within ``grace`` seconds (libmilter
        polls its stop flag every 5 s), else it is killed and StackError raised."""
        hung = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                hung = True
                self.kill()
        if self.proc is not None and self.proc.poll() is None:
            raise StackError("milter did not stop")
        self.proc = None
        self._close_log()
        if hung:
            raise StackError(f"milter ignored SIGTERM for {grace:.0f}s (killed); see {self.log_path}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 20) -> None:
        wait_for(lambda: text in self.log(), timeout, f"'{text}' in milter log")

