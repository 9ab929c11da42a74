"""Our own Python per message, stage by stage, old code against new in one process.

    python -m bench.stages --before /path/to/older/checkout [--every 6] [--rounds 5] [--check-only]

Loads ``classifier``, ``tokens``, ``store/messagelog`` and ``logfmt`` of the ``--before``
tree beside this tree's (under other module names; the old classifier with that tree's own
``chisquare`` and ``modelfile`` when it has them, i.e. from the split of ``classifier.py`` on),
then:

1. **identity**: for every corpus message (``corpus/data``), the features,
   the score (probability, log-odds, clues: compared as floats, exactly) and
   the token blob (the new code reads the old code's blobs and its own; where the old code
   cannot read the new blobs, a changed format, that is counted and said, not a difference)
   must be the same;
2. **timing**: the stages (features, ``Model.score``, ``pack_tokens``, the
   text formatter on a log record) of
   every ``--every``-th message, one message after the other as the milter
   runs them, the old code and the new in turn (old new, then new old) for
   ``--rounds`` rounds; prints CPU microseconds per message and new/old.

Parsing is shared (not timed).  Exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from stronghold import classifier, logfmt, tokens
from stronghold.message import ParsedMessage, parse
from stronghold.store import messagelog

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "model.joblib"


def load_before(tree: Path, relpath: str) -> ModuleType:
    """The module at ``tree/relpath`` under a name of its own (its imports resolve to this tree)."""
    name = "before_" + relpath.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, tree / relpath)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


CLASSIFIER_PARTS = ("chisquare", "modelfile")  # split out of classifier.py; older trees have neither


@contextmanager
def _stronghold_modules(replacements: dict[str, ModuleType]) -> Iterator[None]:
    """``stronghold.<name>`` resolves to the given modules inside the block (sys.modules and the
    package attribute), to this tree's own again after it."""
    import stronghold
    saved = {name: (sys.modules.get(f"stronghold.{name}"), getattr(stronghold, name, None))
             for name in replacements}
    try:
        for name, module in replacements.items():
            sys.modules[f"stronghold.{name}"] = module
            setattr(stronghold, name, module)
        yield
    finally:
        for name, (in_modules, attribute) in saved.items():
            if in_modules is None:
                sys.modules.pop(f"stronghold.{name}", None)
            else:
                sys.modules[f"stronghold.{name}"] = in_modules
            if attribute is None:
                delattr(stronghold, name)
            else:
                setattr(stronghold, name, attribute)


def load_classifier_before(tree: Path) -> ModuleType:
    """The ``--before`` tree's classifier, importing that tree's ``chisquare`` and ``modelfile``
    where it has them (so an old tree after the split scores with its own math, not this tree's)."""
    parts = {name: load_before(tree, f"stronghold/{name}.py") for name in CLASSIFIER_PARTS
             if (tree / "stronghold" / f"{name}.py").exists()}
    with _stronghold_modules(parts):
        module = load_before(tree, "stronghold/classifier.py")
    print(f"before: {tree}/stronghold/classifier.py" + (f" with its {', '.join(sorted(parts))}" if parts else ""))
    return module


def corpus_messages() -> list[Path]:
    data = ROOT / "corpus" / "data"
    return sorted(p for folder in sorted(data.iterdir()) if folder.is_dir()
                  for p in folder.iterdir() if p.is_file())


def score_tuple(score: Any) -> tuple[Any, ...]:
    return score.probability, score.log_odds, tuple((c.token, c.spam_prob) for c in score.clues)


def check(paths: list[Path], old: dict[str, ModuleType], old_model: Any, new_model: Any) -> int:
    differ = torn = unreadable = 0
    for path in paths:
        msg = parse(path.read_bytes())
        feats = tokens.features(msg)
        if feats != old["tokens"].features(msg):
            differ += 1
            print(f"features differ: {path}")
            continue
        as_list = sorted(feats)
        if [tokens.family(t) for t in as_list] != [old["tokens"].family(t) for t in as_list]:
            differ += 1  # (the old classifier module imports this tree's tokens.family)
            print(f"families differ: {path}")
        for toks in (feats, as_list):
            if score_tuple(new_model.score(toks)) != score_tuple(old_model.score(toks)):
                differ += 1
                print(f"score differs: {path}")
        # Blobs: each side reads the other's as the old code read its own (a token with a line
        # break in it never came back whole: counted apart, not a difference).
        new_blob, old_blob = messagelog.pack_tokens(feats), old["messagelog"].pack_tokens(feats)
        before = old["messagelog"].unpack_tokens(old_blob)
        torn += before != feats
        try:
            old_reads_new = old["messagelog"].unpack_tokens(new_blob)
        except Exception:  # noqa: BLE001 - the old code's own error for a format it does not know
            unreadable += 1
            old_reads_new = before
        if not (messagelog.unpack_tokens(old_blob) == old_reads_new == messagelog.unpack_tokens(new_blob) == before):
            differ += 1
            print(f"token blob differs: {path}")
    print(f"identity: {len(paths)} messages, {differ} differ (features, families, 2 scores, blobs each); "
          f"{torn} with a token that has a line break (the blob splits it, old and new alike)"
          + (f"; the old code cannot read {unreadable} new blobs (a new format)" if unreadable else ""))
    return differ


STAGES = ("tokens.features", "Model.score", "pack_tokens", "log line format")


def _pipeline(features: Callable[[Any], Any], score: Callable[[Any], Any], pack: Callable[[Any], Any],
              formatter: logging.Formatter, parsed: list[ParsedMessage]) -> list[float]:
    """CPU µs per stage and message, message by message as the milter does (each stage's input warm)."""
    clock = time.process_time_ns
    spent = [0, 0, 0, 0]
    for msg in parsed:
        t0 = clock()
        feats = features(msg)
        t1 = clock()
        found = score(feats)
        t2 = clock()
        pack(feats)
        t3 = clock()
        record = logging.LogRecord("stronghold.milter", logging.INFO, __file__, 1, "%s",
                                   (f"Q1: score={found.probability:.4f} subject={msg.header('subject')!r}",), None)
        record.worker = "w1"
        t4 = clock()
        formatter.format(record)
        t5 = clock()
        spent[0] += t1 - t0
        spent[1] += t2 - t1
        spent[2] += t3 - t2
        spent[3] += t5 - t4
    return [ns / len(parsed) / 1000 for ns in spent]


def _text_formatter(module: ModuleType) -> logging.Formatter:
    """What ``logfmt.configure("text")`` of that tree installs."""
    made = getattr(module, "TextFormatter", logging.Formatter)
    return cast(logging.Formatter, made(module.TEXT_FORMAT))


def timing(paths: list[Path], old: dict[str, ModuleType], old_model: Any, new_model: Any, rounds: int) -> None:
    parsed: list[ParsedMessage] = [parse(p.read_bytes()) for p in paths]
    runs = {"old": (old["tokens"].features, old_model.score, old["messagelog"].pack_tokens,
                    _text_formatter(old["logfmt"])),
            "new": (tokens.features, new_model.score, messagelog.pack_tokens, _text_formatter(logfmt))}
    spent: dict[str, list[list[float]]] = {"old": [], "new": []}
    for fns in runs.values():  # warm
        _pipeline(*fns, parsed[:50])
    for r in range(rounds):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            spent[name].append(_pipeline(*runs[name], parsed))
    print(f"timing: {len(paths)} messages, {rounds} rounds (old new / new old alternating), "
          "CPU µs per message, median of rounds")
    total_old = total_new = 0.0
    for i, stage in enumerate(STAGES):
        old_us = statistics.median(r[i] for r in spent["old"])
        new_us = statistics.median(r[i] for r in spent["new"])
        ratios = [n[i] / o[i] for n, o in zip(spent["new"], spent["old"], strict=True)]
        total_old, total_new = total_old + old_us, total_new + new_us
        print(f"  {stage:16} old {old_us:7.1f}  new {new_us:7.1f}  new/old {statistics.median(ratios):.3f} "
              f"(rounds {min(ratios):.3f}-{max(ratios):.3f})")
    print(f"  {'together':16} old {total_old:7.1f}  new {total_new:7.1f}  new/old {total_new / total_old:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="an older checkout (its stronghold/)")
    parser.add_argument("--every", type=int, default=6, help="time every N-th corpus message")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args()
    old = {name: load_before(args.before, f"stronghold/{rel}")
           for name, rel in (("tokens", "tokens.py"), ("messagelog", "store/messagelog.py"),
                             ("logfmt", "logfmt.py"))}
    old["classifier"] = load_classifier_before(args.before)
    old_model, new_model = old["classifier"].Model.load(MODEL), classifier.Model.load(MODEL)
    paths = corpus_messages()
    differ = 0 if args.no_check else check(paths, old, old_model, new_model)
    if not args.check_only:
        timing(paths[::args.every], old, old_model, new_model, args.rounds)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
