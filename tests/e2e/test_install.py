"""`make install` on Debian: files, owners and modes as docs/install.md says; units that verify."""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localstack import Clamd, Postfix, free_port, wait_for
from stronghold import config as config_mod
from tests.conftest import shared_tmpdir
from tests.e2e import mail
from tests.harness.milterproc import write_config
from tests.harness.smtpsink import SmtpSink

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
    version = subprocess.run([str(python), "-m", "stronghold.cli", "--version"], capture_output=True,
                             text=True, cwd="/", env=env, check=True).stdout
    released = configparser.ConfigParser()
    released.read(ROOT / "setup.cfg")
    assert version.startswith(f"stronghold {released['metadata']['version']} (model format ")  # from its metadata
    native = ("native core: classifier scoring, HTML to text, tokenizing, message reading, milter protocol, "
              "clamd exchange")
    assert version.splitlines()[1] == native  # pip built it


def test_installed_package_holds_only_the_product(installed: Path) -> None:
    """The dev stack (private Postfix, clamd, Dovecot for make run and the tests) is not installed."""
    site = next((installed / "opt/stronghold/lib").glob("python3*/site-packages"))
    product = {p.relative_to(site).as_posix() for p in site.glob("stronghold/**/*.py")}
    assert "stronghold/milter.py" in product and "stronghold/engine.py" in product
    assert not any(name.split("/")[-1].startswith(("localstack", "localdovecot", "devstack")) for name in product)
    assert not (site / "devtools").exists() and not (site / "tests").exists()
    help_text = subprocess.run([str(installed / "opt/stronghold/bin/python"), "-m", "stronghold.cli", "--help"],
                               capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}).stdout
    commands = set(re.findall(r"^    ([a-z][a-z-]*) ", help_text, re.MULTILINE))
    assert {"milter", "web", "train", "scan"} <= commands and "stack" not in commands


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


@pytest.mark.postfix
@pytest.mark.clamd
@pytest.mark.corpus
def test_installed_milter_as_its_unit_runs_it_under_chrooted_postfix(installed: Path, models_dir: Path,
                                                                       clamd: Clamd, tmp_path: Path) -> None:
    """The installed program, as user stronghold with the unit's paths (under the scratch root),
    behind a Postfix whose smtpd is chrooted into the queue directory that holds the socket."""
    state = installed / "var/lib/stronghold"
    for f in models_dir.glob("model.*"):
        shutil.copy(f, state / "models" / f.name)
        shutil.chown(state / "models" / f.name, "stronghold", "stronghold")
    spool = installed / "var/spool/postfix"
    config = write_config(installed / "etc/stronghold/e2e.toml", {
        "data_dir": state, "models_dir": state / "models", "milter_socket": f"unix:{spool}/stronghold/milter.sock",
        "clamd_socket": clamd.address, "milter_workers": 1})
    shutil.chown(config, "root", "stronghold")
    config.chmod(0o640)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("STRONGHOLD_")}
    # the unit's user, group and supplementary group; the program from the scratch root (its
    # scripts' first line names /opt/stronghold, where a real install puts it)
    as_unit = ["runuser", "-u", "stronghold", "-g", "stronghold", "-G", "postfix", "--",
               str(installed / "opt/stronghold/bin/python"), "-m", "stronghold.cli", "--config", str(config)]
    subprocess.run([*as_unit, "db", "upgrade"], env=env, check=True, capture_output=True, cwd="/")
    said = tmp_path / "milter.out"
    with open(said, "wb") as out:
        milter = subprocess.Popen([*as_unit, "milter"], env=env, cwd="/", stdout=out, stderr=subprocess.DEVNULL)
    sink = SmtpSink()
    postfix = Postfix(shared_tmpdir("stronghold-chroot-") / "postfix", free_port(),
                      milter="unix:/stronghold/milter.sock", relay=f"127.0.0.1:{sink.port}",
                      queue_dir=spool, chroot=True)
    try:
        sock = spool / "stronghold/milter.sock"
        # the socket file exists from its bind(), its group and mode come a moment later: wait for
        # the line the milter prints once the socket is shared
        wait_for(lambda: milter.poll() is None and "stronghold milter: listening on" in said.read_text(), 60,
                 "the installed milter listening")
        assert _mode(sock)[:2] == ("stronghold", "postfix") and _mode(sock)[2] == 0o660
        postfix.start()
        master = (postfix.home / "master.cf").read_text().splitlines()[0].split()
        assert master[4] == "y"  # smtpd chrooted
        tid, data = mail.simple()
        assert mail.send(postfix.port, "carol@sender.example", ["alice@example.com"], data) == {}
        [got] = sink.wait_for(lambda m: f"X-Test-Id: {tid}".encode() in m.data)
        assert b"X-Spam-Flag: NO" in got.data and b"antivirus=clean" in got.data
        assert (state / "stronghold.db").stat().st_uid == pwd.getpwnam("stronghold").pw_uid
    finally:
        postfix.stop()
        shutil.rmtree(postfix.home.parent, ignore_errors=True)
        sink.close()
        milter.terminate()
        milter.wait(30)
