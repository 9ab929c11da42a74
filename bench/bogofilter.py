"""bogofilter (Debian's package) trained and scored on the same messages as Mail Stronghold.

Each run trains a fresh word list in a temporary folder (``-s`` / ``-n`` on
file names read from standard input) and scores with ``-TT`` (16 significant
digits); its default spam cut-off is 0.99.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

SPAM_CUTOFF = 0.99  # bogofilter's default spam_cutoff


def available() -> bool:
    return shutil.which("bogofilter") is not None


def version() -> str:
    out = subprocess.run(["bogofilter", "-V"], capture_output=True, text=True, check=False).stdout
    words = out.split()
    return f"bogofilter {words[2]}" if len(words) > 2 else "bogofilter"


def _run(args: list[str], names: Sequence[str]) -> str:
    done = subprocess.run(["bogofilter", *args], input="\n".join(names) + "\n", capture_output=True,
                          text=True, check=False)
    if done.returncode > 2:  # 0, 1, 2: spam, ham, unsure (of the last message); 3: error
        raise RuntimeError(f"bogofilter {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def train_and_score(train: Sequence[tuple[bool, str]], test: Sequence[str]) -> tuple[list[float], float]:
    """Spamicity of each ``test`` file after training on ``train`` (is_spam, file) pairs,
    and the CPU seconds bogofilter spent scoring them."""
    with tempfile.TemporaryDirectory(prefix="bogo-") as wordlist:
        _run(["-d", wordlist, "-s", "-b"], [name for is_spam, name in train if is_spam])
        _run(["-d", wordlist, "-n", "-b"], [name for is_spam, name in train if not is_spam])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = _run(["-d", wordlist, "-TT", "-b"], list(test))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    scores: dict[str, float] = {}
    for line in out.splitlines():
        name, _, value = line.rpartition(" ")
        scores[name] = float(value)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return [scores[name] for name in test], cpu
