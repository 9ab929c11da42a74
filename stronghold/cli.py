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

from stronghold import cli_admin, cli_learn, cli_quarantine, cli_scan, cli_services, heldback, jobs
from stronghold import config as config_mod
from stronghold.classifier import Model
from stronghold.config import Config, ConfigError
from stronghold.modelfile import ModelError
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
    _save_with_sample(model, out, _heldback_sample(samples, args.holdout))
    p = model.passport
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

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stronghold", description="Mail Stronghold spam and virus filter")
    parser.add_argument("--config", help="TOML settings file (default: $STRONGHOLD_CONFIG)")
    parser.add_argument("--traceback", action="store_true", help="show the stack on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from ham and spam corpora")
    p.add_argument("--ham", nargs="+", metavar="PATH", help="maildir, mbox, folder or file")
    p.add_argument("--spam", nargs="+", metavar="PATH", help="maildir, mbox, folder or file")
    p.add_argument("--index", metavar="FILE", help="lines 'spam PATH' / 'ham PATH'")
    p.add_argument("--model", metavar="OUT", help="where to write the model")
    p.add_argument("--holdout", type=float, default=0.0, metavar="F",
                   help="fraction held out for evaluation (AUC, FP, FN)")
    p.set_defaults(func=cmd_train)

    cli_scan.register(sub)

    cli_learn.register(sub)
    cli_services.register(sub)
    jobs.register(sub)
    cli_admin.register(sub)
    cli_quarantine.register(sub)
    return parser


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
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
