"""A throwaway PostgreSQL cluster on a loopback port (Debian's server binaries)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from devtools.localstack import StackError, free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise StackError(f"PostgreSQL's {name} not found (apt-get install postgresql)")
    return found[-1]


class PostgresCluster:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="stronghold-pg-"))
        os.chmod(self.home, 0o755)
        self.data = self.home / "data"
        self.port = free_port()
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> None:
        out = subprocess.run([*self._as_postgres, *cmd], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise StackError(f"{cmd[0]}: {(out.stderr or out.stdout).strip()[:400]}")

    def start(self) -> None:
        if self._as_postgres:
            shutil.chown(self.home, "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        self.start_server()

    def stop_server(self) -> None:
        """Stop the server, keeping its data (to play a database outage)."""
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def start_server(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.home / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database; with ``template``, a copy of that one (which nobody may be connected to)."""
        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{copy}')  # type: ignore[arg-type]  # names are ours
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run([*self._as_postgres, _bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)
