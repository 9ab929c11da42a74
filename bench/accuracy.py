#!/usr/bin/env python3
"""Accuracy and speed of the classifier beside bogofilter, on two splits of the SpamAssassin corpus.

- **standard**: train on ``index.train`` (last hex digit of md5(file name) in 0-a), score ``index.test``;
- **drift**: train on the 2002 folders ``easy-ham-1`` + ``spam-1``, score ``easy-ham-2`` +
  ``hard-ham-1`` + ``spam-2`` (later mail, and ham of kinds the model never saw).

bogofilter (Debian's package) is trained and scored on the same files in the same run.  Columns:
(1-AUC)%, spam missed at the lowest threshold that keeps false positives <= 0.1% and <= 1%, FP and
FN at each filter's default cut-off (ours: the threshold ``train`` chose; bogofilter: 0.99), ham at
or above the default reject threshold, and scan speed on one core (parse + tokenize + score).
Run: make bench-accuracy (or python -m bench.accuracy [--split standard|drift]).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import bogofilter
from stronghold.classifier import Model
from stronghold.config import SETTINGS
from stronghold.training import Evaluation, Sample, collect, evaluate, tokenize, train_model

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "data"
REJECT_THRESHOLD = float(SETTINGS["reject_threshold"].default)
PEERS = [  # measured earlier on the standard split, trained and tested the same way (issue #2)
    ("SpamAssassin 4.0.1, Bayes alone", 0.035, 6.35, "~65"),
    ("SpamAssassin 4.0.1, rules + Bayes", 0.139, 19.4, "~13"),
    ("rspamd 3.4, Bayes + local rules", 0.84, 63.0, "~170"),
    ("scikit-learn MultinomialNB on raw text", 1.15, 100.0, "~870"),
]


def split(name: str) -> tuple[list[Sample], list[Sample]]:
    if name == "standard":
        return list(collect(index=CORPUS / "index.train")), list(collect(index=CORPUS / "index.test"))
    return (list(collect(ham=[CORPUS / "easy-ham-1"], spam=[CORPUS / "spam-1"])),
            list(collect(ham=[CORPUS / "easy-ham-2", CORPUS / "hard-ham-1"], spam=[CORPUS / "spam-2"])))


@dataclass
class Row:
    name: str
    result: Evaluation
    msg_per_s: float
    ham_at_reject: int | None


def _row(row: Row, bold: bool = False) -> str:
    e = row.result
    cells = [row.name, f"{e.one_minus_auc_pct:.3f}", f"{e.fn_rate_at_fp_0_1pct:.2%}",
             f"{e.fn_rate_at_fp_1pct:.2%}", f"{e.fp_rate:.2%} ({e.threshold:.4g})", f"{e.fn_rate:.2%}",
             "n/a" if row.ham_at_reject is None else str(row.ham_at_reject), f"{row.msg_per_s:,.0f}"]
    if bold:
        cells = [f"**{c}**" for c in cells]
    return "| " + " | ".join(cells) + " |"


def measure(name: str) -> list[str]:
    train, test = split(name)
    labels = [s.is_spam for s in test]
    started = time.perf_counter()
    model, _ = train_model(train)
    train_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "m.joblib")
        file_bytes = os.path.getsize(Path(tmp) / "m.joblib")
        model = Model.load(Path(tmp) / "m.joblib")
    started = time.process_time()
    scores = [model.score(tokenize(s.raw)).probability for s in test]
    cpu = time.process_time() - started
    ours = evaluate(scores, labels, model.spam_threshold)
    ham_scores = [p for p, y in zip(scores, labels, strict=True) if not y]
    rows = [Row("**Mail Stronghold**", ours, len(test) / cpu, sum(p >= REJECT_THRESHOLD for p in ham_scores))]
    if bogofilter.available():
        bogo, bogo_cpu = bogofilter.train_and_score([(s.is_spam, s.source) for s in train],
                                                    [s.source for s in test])
        rows.append(Row(bogofilter.version(), evaluate(bogo, labels, bogofilter.SPAM_CUTOFF),
                        len(test) / bogo_cpu, None))
    spam_over = [p for p, y in zip(scores, labels, strict=True) if y and p >= model.spam_threshold]
    p = model.passport
    lines = [f"### {name} split: trained on {p.trained_ham} ham + {p.trained_spam} spam in {train_seconds:.1f}s, "
             f"tested on {ours.n_ham} ham + {ours.n_spam} spam", "",
             "| filter | (1-AUC)% | FN at ≤0.1% FP | FN at ≤1% FP | FP at default cut-off | FN at default "
             f"cut-off | ham ≥ reject {REJECT_THRESHOLD} | scan msg/s (one core) |",
             "|---|---|---|---|---|---|---|---|"]
    lines.append(_row(rows[0]).replace("| **Mail Stronghold** |", "| **Mail Stronghold** |"))
    lines += [_row(r) for r in rows[1:]]
    if name == "standard":
        lines += [f"| {peer} (earlier run) | {auc} | {fn}% | | | | | {speed} |" for peer, auc, fn, speed in PEERS]
    lines += ["", f"- threshold {p.spam_threshold!r}: {p.threshold_method}"]
    lines += [f"- training warning: {w}" for w in p.warnings]
    lines += [f"- scores: {len(set(spam_over))} distinct values among {len(spam_over)} spam at or above the "
              f"threshold; exactly 1.0: {sum(s == 1.0 for s in scores)}, exactly 0.0: {sum(s == 0.0 for s in scores)}; "
              f"highest ham {max(ham_scores)!r}",
              f"- scan: {cpu / len(test) * 1000:.2f} ms CPU per message (parse + tokenize + score); model: "
              f"{model.memory_bytes / 2**20:.1f} MiB scoring table, counts file {file_bytes / 2**20:.1f} MiB"]
    if name == "drift":
        hard = [(sc, s) for sc, s in zip(scores, test, strict=True) if "hard-ham" in s.source]
        lines.append(f"- hard-ham-1 alone: {sum(sc >= model.spam_threshold for sc, _ in hard)} of {len(hard)} "
                     f"at or above the threshold, {sum(sc >= REJECT_THRESHOLD for sc, _ in hard)} at or above "
                     "the reject threshold")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=("standard", "drift"), action="append",
                        help="only this split (repeatable); default both")
    args = parser.parse_args(argv)
    if not (CORPUS / "index.train").exists():
        print("corpus missing: run python3 corpus/fetch.py", file=sys.stderr)
        return 1
    if not bogofilter.available():
        print("bogofilter not installed: its rows are left out (scripts/install-deps.sh)", file=sys.stderr)
    for name in args.split or ("standard", "drift"):
        print("\n".join(measure(name)))
        print()
    print(f"(this process peaked at {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
