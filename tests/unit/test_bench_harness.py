"""The A/B harness runs each side's own code (it once measured one tree twice)."""

from __future__ import annotations

from pathlib import Path

from tests.harness.milterproc import MilterProcess

# A stand-in `stronghold` package: its "milter" listens where it is told and says which file it is.
FAKE_CLI = '''
import signal, socket, sys, time
from pathlib import Path
config = Path(sys.argv[sys.argv.index("--config") + 1])
spec = [ln.split("=", 1)[1].strip().strip('"') for ln in config.read_text().splitlines()
        if ln.startswith("milter_socket")][0]
(config.parent / "ran").write_text(__file__)
sock = socket.socket(socket.AF_UNIX)
sock.bind(spec[5:])
sock.listen()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(0.1)
'''


def test_a_milter_from_another_tree_runs_that_trees_code(tmp_path: Path) -> None:
    tree = tmp_path / "other-tree"
    (tree / "stronghold").mkdir(parents=True)
    (tree / "stronghold" / "__init__.py").write_text("")
    (tree / "stronghold" / "cli.py").write_text(FAKE_CLI)
    home = tmp_path / "home"
    home.mkdir()
    milter = MilterProcess(home, {"milter_socket": f"unix:{home / 'm.sock'}"}, source=tree)
    milter.start(timeout=20)
    try:
        assert Path((home / "ran").read_text()).resolve() == (tree / "stronghold" / "cli.py").resolve()
    finally:
        milter.stop()
