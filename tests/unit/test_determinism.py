"""Same bytes + same model = same score in every process; same training data = same model files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stronghold.modelfile import passport_path, table_path
from tests.conftest import ROOT, corpus_files

pytestmark = pytest.mark.corpus

_SCORE = """
import sys
from pathlib import Path
from stronghold.classifier import Model
from stronghold.training import tokenize
model = Model.load(Path(sys.argv[1]))
for name in sys.stdin.read().split():
    s = model.score(tokenize(Path(name).read_bytes()))
    print(repr(s.probability), repr(s.log_odds), ",".join(c.token for c in s.clues), name)
"""

_TRAIN = """
import sys
from pathlib import Path
from stronghold.training import Sample, train_model
names = sys.stdin.read().split()
samples = [Sample(n[2:], n[0] == "s", Path(n[2:]).read_bytes()) for n in names]
model, _ = train_model(samples, holdout=0.2)
model.save(Path(sys.argv[1]))
"""


def _run(code: str, arg: str, seed: str, **extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT), **extra}
    return subprocess.Popen([sys.executable, "-c", code, arg], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def test_scores_do_not_depend_on_the_hash_seed(models_dir: Path, corpus: Path) -> None:
    files = "\n".join(str(p) for p in corpus_files(corpus, "spam") + corpus_files(corpus, "ham"))
    procs = [_run(_SCORE, str(models_dir / "model.joblib"), seed) for seed in ("1", "2", "3")]
    outputs = [p.communicate(files)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(outputs[0].splitlines()) == 1867
    assert outputs[0] == outputs[1] == outputs[2]


def test_training_twice_gives_the_same_files(tmp_path: Path, corpus: Path) -> None:
    names = "\n".join([f"s:{p}" for p in corpus_files(corpus, "spam", "train")[:300]]
                      + [f"h:{p}" for p in corpus_files(corpus, "ham", "train")[:600]])
    paths = [tmp_path / "a" / "m.joblib", tmp_path / "b" / "m.joblib"]
    procs = [_run(_TRAIN, str(path), seed, SOURCE_DATE_EPOCH="1700000000")
             for path, seed in zip(paths, ("1", "2"), strict=True)]
    for proc in procs:
        proc.communicate(names)
        assert proc.returncode == 0
    a, b = paths
    assert a.read_bytes() == b.read_bytes()
    assert table_path(a).read_bytes() == table_path(b).read_bytes()
    assert passport_path(a).read_bytes() == passport_path(b).read_bytes()  # created: SOURCE_DATE_EPOCH
    passport = json.loads(passport_path(a).read_text())
    assert passport["evaluation"] and passport["created"] == 1700000000  # the holdout was scored the same
