"""A real `stronghold web` process and headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools.localstack import free_port, wait_for
from tests.harness.milterproc import write_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "var" / "screenshots"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class WebProcess:
    def __init__(self, home: Path, settings: Mapping[str, Any]) -> None:
        self.port = free_port()
        self.home = home
        self.config = write_config(home / "web.toml", {**settings, "web_bind": f"127.0.0.1:{self.port}"})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WebProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGHOLD_")}
        self._log = open(self.home / "web.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "stronghold.cli", "--config", str(self.config), "web"],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: self.proc.poll() is None and _port_open(self.port), 60, f"web UI ({self.home / 'web.log'})")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
        self._log.close()


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
