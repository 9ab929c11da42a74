"""The ``stronghold`` command: one entry point, subcommands, errors in one place."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from stronghold import (
    __version__,
    cli_admin,
    cli_learn,
    cli_quarantine,
    cli_scan,
    cli_services,
    heldback,
    jobs,
    learning,
    modelarchive,
)
from stronghold import config as config_mod
from stronghold.classifier import Model
from stronghold.config import Config, ConfigError
from stronghold.modelfile import FORMAT_VERSION, ModelError, passport_path
from stronghold.store.db import Store
from stronghold.tokens import TOKENIZER_VERSION
from stronghold.training import CorpusError, Sample, check_labels, collect, in_holdout, tokenize, train_model

log = logging.getLogger("stronghold")


class UsageError(Exception):
    """The command line asks for something that cannot be done."""


KNOWN_ERRORS: tuple[type[Exception], ...] = (ConfigError, ModelError, CorpusError, UsageError,
                                              *cli_services.KNOWN_ERRORS, *cli_admin.KNOWN_ERRORS,
                                              *cli_quarantine.KNOWN_ERRORS, *cli_learn.KNOWN_ERRORS,
                                              cli_scan.ScanUsageError)
Handler = Callable[[argparse.Namespace, Config], int]


def _progress(total: int | None, desc: str) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    from tqdm import tqdm

    def wrap(items: Iterator[Sample]) -> Iterator[Sample]:
        return iter(tqdm(items, total=total, desc=desc, unit="msg", file=sys.stderr,
                         disable=None, leave=False))
    return wrap


def _model_path(args: argparse.Namespace, cfg: Config) -> Path:
    return Path(args.model) if getattr(args, "model", None) else cfg.model_path


# -- train / scan / learn / model ----------------------------------------------

def _heldback_sample(samples: Sequence[Sample], holdout: float) -> tuple[list[set[str]], list[bool]]:
    """The fixed sample candidates are judged on: the holdout, else every k-th training message."""
    chosen = [s for s in samples if in_holdout(s.source, holdout)] if holdout > 0 else list(samples)
    step = max(1, len(chosen) // heldback.SIZE)
    chosen = chosen[::step][:heldback.SIZE]
    return [tokenize(s.raw) for s in chosen], [s.is_spam for s in chosen]


def _save_with_sample(model: Model, out: Path, sample: tuple[list[set[str]], list[bool]]) -> None:
    """Save the model and its held-back sample as a pair: the sample goes to a temporary name first
    and into place after the model; interrupted in between, the new model stands beside the old
    sample, which names the other training run and is refused when a candidate is judged."""
    tmp = heldback.prepare(out, model.passport, *sample)
    try:
        model.save(out)
        heldback.commit(out, tmp)
    finally:
        tmp.unlink(missing_ok=True)


def _check_writable(model: Path) -> None:
    """Refuse a model path training could not write (a folder, a missing or read-only folder)."""
    if model.is_dir():
        raise UsageError(f"{model} is a folder: give the model file's path (e.g. {model / 'model.joblib'})")
    folder = model.parent
    if folder.exists() and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        raise UsageError(f"cannot write the model into {folder}")


def _archive_live(cfg: Config, out: Path) -> Path | None:
    """Archive the configured live model before training writes over it (``learning.archive_replaced``);
    a side model (``--model`` elsewhere) or a first training archives nothing."""
    if out.resolve() != cfg.model_path.resolve() or not passport_path(out).exists():
        return None
    with Store(cfg.db_url) as store:
        store.upgrade()
        return learning.archive_replaced(store, out, cfg.model_versions_kept)


def cmd_train(args: argparse.Namespace, cfg: Config) -> int:
    if not (args.ham or args.spam or args.index):
        raise UsageError("give --ham and --spam corpora, or --index FILE")
    if args.index is None and not (args.ham and args.spam):
        raise UsageError("training needs both --ham and --spam")
    if not 0.0 <= args.holdout < 1.0:
        raise UsageError("--holdout is a fraction between 0 and 1")
    out = _model_path(args, cfg)
    _check_writable(out)  # before minutes of training, not after
    started = time.monotonic()
    samples = list(collect([Path(p) for p in args.ham or ()], [Path(p) for p in args.spam or ()],
                           Path(args.index) if args.index else None))
    if not samples:
        raise CorpusError("the corpora hold no messages")
    check_labels(samples)
    model, evaluation = train_model(samples, holdout=args.holdout,
                                    progress=_progress(len(samples), "training"))
    sample = _heldback_sample(samples, args.holdout)
    with learning.model_lock(out):
        archived = _archive_live(cfg, out)
        _save_with_sample(model, out, sample)
        modelarchive.marks_path(out).unlink(missing_ok=True)  # the replaced model's: this one learned nothing
        modelarchive.remove_model(learning.candidate_path(out))  # grew from the replaced model
    p = model.passport
    if archived is not None:
        print(f"the model it replaces is archived as {archived.parent.name} ('stronghold model rollback' "
              "returns to it)")
    seconds = time.monotonic() - started
    print(f"trained on {p.trained_ham} ham + {p.trained_spam} spam in {seconds:.1f}s -> {out}")
    print(f"spam threshold {p.spam_threshold!r}: {p.threshold_method}")
    for warning in p.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if evaluation is not None:
        e = evaluation
        print(f"holdout: {e.n_ham} ham, {e.n_spam} spam; (1-AUC)% {e.one_minus_auc_pct:.4f}; "
              f"at threshold FP {e.fp_rate:.4%} FN {e.fn_rate:.2%}; "
              f"FN at <=0.1% FP {e.fn_rate_at_fp_0_1pct:.2%}")
    return 0


# -- parser and main ------------------------------------------------------------

def version_line() -> str:
    """What ``--version`` prints: the package, and the model files this code reads and writes."""
    return f"stronghold {__version__} (model format {FORMAT_VERSION}, tokenizer {TOKENIZER_VERSION})"


VERBOSITY_HELP = "more log output: one-shot commands show INFO with -v, DEBUG with -vv; services DEBUG with -v"
QUIET_HELP = "less log output: errors only for one-shot commands, warnings and errors for services"


def _add_verbosity(parser: argparse.ArgumentParser, dest_prefix: str = "") -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, dest=f"{dest_prefix}verbose",
                        help=VERBOSITY_HELP)
    parser.add_argument("-q", "--quiet", action="count", default=0, dest=f"{dest_prefix}quiet", help=QUIET_HELP)


def _leaves(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parsers that run a command (those without subcommands of their own)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):  # an alias names the same parser
            yield from _leaves(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stronghold", description="Mail Stronghold spam and virus filter")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print the version and the model format and tokenizer it reads, then exit")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML settings file (default: $STRONGHOLD_CONFIG, else none: built-in defaults); "
                             "STRONGHOLD_<SETTING> variables override it")
    parser.add_argument("--traceback", action="store_true", help="show the stack on errors")
    _add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from ham and spam corpora")
    p.add_argument("--ham", nargs="+", metavar="PATH", help="ham: maildirs, mboxes, folders or files")
    p.add_argument("--spam", nargs="+", metavar="PATH", help="spam: maildirs, mboxes, folders or files")
    p.add_argument("--index", metavar="FILE",
                   help="an index file of lines 'spam PATH' / 'ham PATH' (paths relative to the file)")
    p.add_argument("--model", metavar="OUT", help="where to write the model (default: the configured model)")
    p.add_argument("--holdout", type=float, default=0.0, metavar="F",
                   help="fraction held out for evaluation (AUC, FP, FN); default 0: train on everything")
    p.set_defaults(func=cmd_train)

    cli_scan.register(sub)

    cli_learn.register(sub)
    cli_services.register(sub)
    jobs.register(sub)
    cli_admin.register(sub)
    cli_quarantine.register(sub)
    for leaf in _leaves(parser):  # -v/-q also after the command: 'stronghold scan -v FILE'
        _add_verbosity(leaf, dest_prefix="command_")
    return parser


LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)


def log_level(args: argparse.Namespace) -> int:
    """Services (milter, web, jobs) log INFO, one-shot commands only warnings and errors;
    each -v is one step more, each -q one step less."""
    service = getattr(args, "service", False)
    if callable(service):
        service = service(args)
    steps = args.verbose + getattr(args, "command_verbose", 0) - args.quiet - getattr(args, "command_quiet", 0)
    base = LEVELS.index(logging.INFO if service else logging.WARNING)
    return LEVELS[min(max(base - steps, 0), len(LEVELS) - 1)]


def setup_logging(level: int) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger().setLevel(level)  # also when handlers exist already (main called twice, tests)
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(log_level(args))
    try:
        cfg = config_mod.load(Path(args.config) if args.config else None)
        return int(args.func(args, cfg))
    except KNOWN_ERRORS as exc:
        if args.traceback:
            traceback.print_exc()
        print(f"stronghold: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
