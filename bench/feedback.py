#!/usr/bin/env python3
"""Feedback on the drift split: does learning users' corrections of the first mistakes help later mail?

The model is trained on the drift split's 2002 folders (easy-ham-1 + spam-1) and reads the test
folders (easy-ham-2, hard-ham-1, spam-2) in one fixed mixed order (by MD5 of the file name: the
folders hold no usable arrival times), as mail would arrive.  Its mistakes at its
own threshold are what users would correct ("not spam" / "spam").  For each fraction of those
mistakes, the first ones in arrival order are fed back through the learning ledger (the same
``ledger.record`` + ``learning.sync`` that ``stronghold learn`` uses), and the updated model is
scored on every test message that was not fed back.  Columns: errors (FP + FN) at the threshold,
FP, FN, (1-AUC)% of what remains, and the same errors on the mail that arrived after the last
correction (the part a user would actually see improve).
Run: python -m bench.feedback [--fractions 0,0.025,0.05,0.1,0.2]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from bench.accuracy import split
from stronghold import learning
from stronghold.classifier import Model
from stronghold.store import ledger
from stronghold.store.db import Store
from stronghold.training import evaluate, tokenize, train_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0,0.025,0.05,0.1,0.2")
    args = parser.parse_args(argv)
    fractions = [float(x) for x in args.fractions.split(",")]
    train, test = split("drift")
    test.sort(key=lambda s: hashlib.md5(Path(s.source).name.encode()).hexdigest())
    started = time.perf_counter()
    base, _ = train_model(train)
    sets = [tokenize(s.raw) for s in test]
    labels = [s.is_spam for s in test]
    threshold = base.spam_threshold
    first = [base.score(t).probability for t in sets]
    mistakes = [i for i, (p, y) in enumerate(zip(first, labels, strict=True)) if (p >= threshold) != y]
    print(f"drift split: trained on {len(train)} in {time.perf_counter() - started:.0f}s, "
          f"{len(test)} test messages, {len(mistakes)} mistakes at threshold {threshold:.4f}")
    print()
    print("| mistakes fed back | messages learned | errors on the rest | FP | FN | (1-AUC)% of the rest "
          "| errors after the last correction |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for fraction in fractions:
            store = Store(f"sqlite:///{Path(tmp) / f'{fraction}.db'}")
            store.upgrade()
            fed = mistakes[:round(fraction * len(mistakes))]
            with tempfile.TemporaryDirectory() as mtmp:
                base.save(Path(mtmp) / "m.joblib")  # a fresh copy of the base counts each time
                model = Model.load(Path(mtmp) / "m.joblib", for_learning=True)
            with store.session() as session:
                ledger.record(session, [sets[i] for i in fed], [labels[i] for i in fed], source="web", who="bench")
            learning.sync(store, model)
            store.dispose()
            fed_set = set(fed)
            rest = [i for i in range(len(sets)) if i not in fed_set]
            scores = {i: model.score(sets[i]).probability for i in rest}
            fp = sum(1 for i in rest if scores[i] >= threshold and not labels[i])
            fn = sum(1 for i in rest if scores[i] < threshold and labels[i])
            e = evaluate([scores[i] for i in rest], [labels[i] for i in rest], threshold)
            after = [i for i in rest if i > (fed[-1] if fed else -1)]
            late = sum(1 for i in after if (scores[i] >= threshold) != labels[i])
            late_base = sum(1 for i in after if (first[i] >= threshold) != labels[i])
            rate = (fp + fn) / len(rest)
            print(f"| {fraction:.1%} ({len(fed)}) | {len(fed)} | {fp + fn} of {len(rest)} ({rate:.2%}) "
                  f"| {fp} | {fn} | {e.one_minus_auc_pct:.3f} "
                  f"| {late} of {len(after)} (without feedback {late_base}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
