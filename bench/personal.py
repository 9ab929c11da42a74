#!/usr/bin/env python3
"""Personal layers: two simulated users with different tastes, each one's errors with and without
their own layer (and what happens if one user's feedback went into everyone's model instead).

The shared model is trained on the standard split (``index.train``).  The test set (``index.test``)
is read in a fixed mixed order (MD5 of the file name) and cut in half.  User A takes the corpus
labels as they are: the commercial newsletters of ``hard-ham-1`` are wanted mail.  User B does not
want newsletters: for B every ``hard-ham-1`` message is spam.  Each user corrects the shared model's
mistakes (by their own truth) on the first half; those corrections become the user's personal layer
(``stronghold.personal``, each correction weighing ``WEIGHT`` messages) and, in the last column, are
learned into the shared model for everyone instead.  Errors are counted on the second half at the
model's threshold, by each user's own truth.
Run: python -m bench.personal
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path

from bench.accuracy import split
from stronghold.classifier import Model
from stronghold.personal import Layer
from stronghold.training import tokenize, train_model


def _errors(model: Model, sets: Sequence[set[str]], truth: Sequence[bool], threshold: float,
            layer: Layer | None = None) -> tuple[int, int]:
    fp = fn = 0
    for tokens, is_spam in zip(sets, truth, strict=True):
        spam = model.score(list(tokens), layer=layer).probability >= threshold
        fp += spam and not is_spam
        fn += is_spam and not spam
    return fp, fn


def main() -> int:
    train, test = split("standard")
    test.sort(key=lambda s: hashlib.md5(Path(s.source).name.encode()).hexdigest())
    shared, _ = train_model(train)
    threshold = shared.spam_threshold
    sets = [tokenize(s.raw) for s in test]
    newsletter = ["hard-ham" in s.source for s in test]
    truths = {"A (wants newsletters)": [s.is_spam for s in test],
              "B (newsletters are spam)": [s.is_spam or n for s, n in zip(test, newsletter, strict=True)]}
    half = len(test) // 2
    first, second = range(half), range(half, len(test))
    print(f"standard split: {len(test)} test messages, {sum(newsletter)} newsletters (hard-ham-1); "
          f"feedback from the first {half}, errors counted on the other {len(test) - half}; "
          f"threshold {threshold:.4f}")
    print()
    print("| user | feedback given | errors, shared model only | errors with their own layer "
          "| the other user's errors if this feedback went into the shared model |")
    print("|---|---|---|---|---|")
    names = list(truths)
    for name in names:
        truth = truths[name]
        other = truths[names[1 - names.index(name)]]
        fed = [i for i in first if (shared.score(list(sets[i])).probability >= threshold) != truth[i]]
        layer = Layer.build(shared, [sets[i] for i in fed], [truth[i] for i in fed])
        rest_sets = [sets[i] for i in second]
        rest = [truth[i] for i in second]
        n = len(rest)
        fp0, fn0 = _errors(shared, rest_sets, rest, threshold)
        fp1, fn1 = _errors(shared, rest_sets, rest, threshold, layer)
        everyone = Model(copy.deepcopy(shared.nb), shared.passport)
        everyone.learn([sets[i] for i in fed], [truth[i] for i in fed])
        ofp0, ofn0 = _errors(shared, rest_sets, [other[i] for i in second], threshold)
        ofp1, ofn1 = _errors(everyone, rest_sets, [other[i] for i in second], threshold)
        print(f"| {name} | {len(fed)} corrections | {fp0 + fn0} of {n} ({(fp0 + fn0) / n:.2%}; FP {fp0}, FN {fn0}) "
              f"| {fp1 + fn1} ({(fp1 + fn1) / n:.2%}; FP {fp1}, FN {fn1}) "
              f"| {ofp0 + ofn0} -> {ofp1 + ofn1} (FP {ofp0} -> {ofp1}, FN {ofn0} -> {ofn1}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
