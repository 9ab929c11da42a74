"""The native core under AddressSanitizer and UndefinedBehaviorSanitizer.

Every ``stronghold/native/*.c`` is built again with ``-fsanitize=address,undefined`` into a
folder of its own, and the native core's tests that need no corpus and measure no time
(generated input, hostile sizes, wrong types; up to CAP inputs per property) run once more in a Python that loads those
builds: a read past a buffer,
a use after free or undefined behaviour on any input they make stops the run with the
sanitizer's report.  A plain build can read a byte too far and still return the right
answer; this is the test that notices.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
CAP = 60  # generated inputs per property test here (the plain run makes its full count)
# fd 2 stays the terminal's (the sanitizer's report survives the crash); hypothesis is imported first
INNER = ["-q", "-p", "no:cacheprovider", "--capture=sys", "-W", "ignore::pytest.PytestAssertRewriteWarning",
         "-m", "not corpus and not timing"]  # a sanitized build is slower: its clocks prove nothing


def _runtime() -> str:
    found = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                           check=True).stdout.strip()
    if not os.path.isabs(found) or not os.path.exists(found):
        pytest.fail("gcc's AddressSanitizer runtime (libasan) is missing: apt-get install gcc")
    return found


def test_native_core_tests_pass_with_sanitizers(tmp_path: Path) -> None:
    sources = sorted((ROOT / "stronghold" / "native").glob("*.c"))
    assert sources
    env = {**os.environ, "CFLAGS": f"{SANITIZE} -g -O1", "LDFLAGS": SANITIZE}
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                    "--build-temp", str(tmp_path / "obj"), "--force"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    built = tmp_path / "lib" / "stronghold"
    names = [f"_{source.stem}" for source in sources]
    assert all(list(built.glob(f"{name}.*.so")) for name in names), sorted(p.name for p in built.iterdir())
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "unit").glob("test_native_*.py")
                   if p.name != Path(__file__).name)
    # The sanitized builds come first on the package's path; each is checked to be the one loaded.
    run = (
        "import importlib, sys, stronghold\n"
        f"stronghold.__path__.insert(0, {str(built)!r})\n"
        f"for name in {names!r}:\n"
        "    module = importlib.import_module('stronghold.' + name)\n"
        f"    assert module.__file__.startswith({str(built)!r}), module.__file__\n"
        # a sanitized Python runs several times slower: at most CAP generated inputs per test
        "import hypothesis\n"
        "init = hypothesis.settings.__init__\n"
        "def capped(self, parent=None, **given):\n"
        f"    given['max_examples'] = min(given.get('max_examples', {CAP}), {CAP})\n"
        "    init(self, parent, **given)\n"
        "hypothesis.settings.__init__ = capped\n"
        "import pytest\n"
        f"sys.exit(pytest.main([*{INNER!r}, *{tests!r}]))\n"
    )
    env = {**os.environ, "LD_PRELOAD": _runtime(), "PYTHONMALLOC": "malloc",  # every object where ASan sees it
           "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    env.pop("STRONGHOLD_NATIVE", None)
    done = subprocess.run([sys.executable, "-c", run], cwd=ROOT, env=env, capture_output=True, text=True)
    report = (done.stdout[-4000:] + done.stderr[-8000:])
    assert done.returncode == 0, report
    assert "ERROR: AddressSanitizer" not in report and "runtime error:" not in report, report
    assert " passed" in done.stdout, report
