"""`make install` on Debian: files, owners and modes as docs/install.md says; units that verify."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from stronghold import config as config_mod

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("stronghold-milter.service", "stronghold-web.service", "stronghold-jobs.service",
         "stronghold-jobs.timer")
pytestmark = pytest.mark.install


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """Everything `make install` writes, under a scratch root (the package from this checkout)."""
    if os.geteuid() != 0:
        pytest.fail("the install test runs as root (as make install does)")
    dest = Path(os.environ.get("TMPDIR", "/tmp")) / f"stronghold-root-{os.getpid()}"
    shutil.rmtree(dest, ignore_errors=True)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env={**os.environ, "DESTDIR": str(dest)},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    yield dest
    shutil.rmtree(dest, ignore_errors=True)


def _mode(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def test_files_owners_and_modes(installed: Path) -> None:
    assert _mode(installed / "etc/stronghold") == ("root", "stronghold", 0o750)
    assert _mode(installed / "etc/stronghold/stronghold.toml") == ("root", "stronghold", 0o640)
    assert _mode(installed / "var/lib/stronghold") == ("stronghold", "stronghold", 0o750)
    assert _mode(installed / "var/lib/stronghold/models") == ("stronghold", "stronghold", 0o755)
    assert _mode(installed / "var/spool/postfix/stronghold") == ("stronghold", "postfix", 0o750)
    assert "postfix" in [g.gr_name for g in grp.getgrall() if "stronghold" in g.gr_mem]
    for unit in UNITS:
        assert _mode(installed / "etc/systemd/system" / unit) == ("root", "root", 0o644)
    # scripts name where the program lives, not the scratch root
    assert (installed / "opt/stronghold/bin/stronghold").read_text().startswith("#!/opt/stronghold/bin/python")


def test_settings_file_lists_every_setting_and_points_at_system_paths(installed: Path) -> None:
    path = installed / "etc/stronghold/stronghold.toml"
    text = path.read_text()
    for name, setting in config_mod.SETTINGS.items():
        assert f"# {setting.help}\n" in text and f"{name} = " in text, name
    cfg = config_mod.load(path, environ={})
    assert cfg.data_dir == Path("/var/lib/stronghold") and cfg.models_dir == Path("/var/lib/stronghold/models")
    assert cfg.milter_socket == "unix:/var/spool/postfix/stronghold/milter.sock"
    assert set(tomllib.loads(text)["stronghold"]) == {"data_dir", "models_dir", "milter_socket"}


def test_installed_package_defaults_to_system_paths_and_runs(installed: Path) -> None:
    python = installed / "opt/stronghold/bin/python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("STRONGHOLD_")}
    code = "from stronghold import config; c = config.load(None, environ={}); print(c.data_dir, c.models_dir)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd="/", env=env,
                         check=True)
    assert out.stdout.split() == ["/var/lib/stronghold", "/var/lib/stronghold/models"]
    help_text = subprocess.run([str(python), "-m", "stronghold.cli", "--help"], capture_output=True,
                               text=True, cwd="/", env=env, check=True).stdout
    assert "milter" in help_text and "jobs" in help_text


def test_units_verify(installed: Path, tmp_path: Path) -> None:
    """systemd-analyze verify, with the program's path moved into the scratch root."""
    for unit in UNITS:
        text = (installed / "etc/systemd/system" / unit).read_text()
        assert "/opt/stronghold/bin/stronghold" in text or unit.endswith(".timer")
        (tmp_path / unit).write_text(text.replace("/opt/stronghold/", f"{installed}/opt/stronghold/"))
    out = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / u) for u in UNITS)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    milter = (installed / "etc/systemd/system/stronghold-milter.service").read_text()
    for hardening in ("ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes", "User=stronghold",
                      "ReadWritePaths=/var/lib/stronghold /var/spool/postfix/stronghold"):
        assert hardening in milter


def test_uninstall_keeps_data_unless_purged(installed: Path, tmp_path: Path) -> None:
    dest = tmp_path / "root"
    shutil.copytree(installed, dest, symlinks=True)
    env = {**os.environ, "DESTDIR": str(dest)}
    subprocess.run(["bash", str(ROOT / "scripts/uninstall.sh")], env=env, check=True, capture_output=True)
    assert not (dest / "opt/stronghold").exists() and not (dest / "etc/systemd/system/stronghold-web.service").exists()
    assert (dest / "etc/stronghold/stronghold.toml").exists() and (dest / "var/lib/stronghold/models").is_dir()
    subprocess.run(["bash", str(ROOT / "scripts/uninstall.sh")], env={**env, "PURGE": "1"}, check=True,
                   capture_output=True)
    assert not (dest / "etc/stronghold").exists() and not (dest / "var/lib/stronghold").exists()
