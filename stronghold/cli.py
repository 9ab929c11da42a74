"""The ``stronghold`` command: one entry point, subcommands, errors in one place."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from stronghold import cli_admin, cli_quarantine, cli_scan, cli_services, jobs
from stronghold import config as config_mod
from stronghold.classifier import Model, ModelError, read_passport
from stronghold.config import Config, ConfigError
from stronghold.feedback import pending_feedback
from stronghold.store.db import Store
from stronghold.training import CorpusError, Sample, collect, iter_messages, tokenize, train_model

log = logging.getLogger("stronghold")


class UsageError(Exception):
    """The command line asks for something that cannot be done."""


KNOWN_ERRORS: tuple[type[Exception], ...] = (ConfigError, ModelError, CorpusError, UsageError,
                                              *cli_services.KNOWN_ERRORS, *cli_admin.KNOWN_ERRORS,
                                              *cli_quarantine.KNOWN_ERRORS, cli_scan.ScanUsageError)
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

def cmd_train(args: argparse.Namespace, cfg: Config) -> int:
    if not (args.ham or args.spam or args.index):
        raise UsageError("give --ham and --spam corpora, or --index FILE")
    if args.index is None and not (args.ham and args.spam):
        raise UsageError("training needs both --ham and --spam")
    if not 0.0 <= args.holdout < 1.0:
        raise UsageError("--holdout is a fraction between 0 and 1")
    started = time.monotonic()
    samples = list(collect([Path(p) for p in args.ham or ()], [Path(p) for p in args.spam or ()],
                           Path(args.index) if args.index else None))
    if not samples:
        raise CorpusError("the corpora hold no messages")
    model, evaluation = train_model(samples, holdout=args.holdout,
                                    progress=_progress(len(samples), "training"))
    out = _model_path(args, cfg)
    model.save(out)
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


def cmd_learn(args: argparse.Namespace, cfg: Config) -> int:
    path = _model_path(args, cfg)
    model = Model.load(path, for_learning=True)
    token_sets: list[set[str]] = []
    labels: list[bool] = []
    for is_spam, names in ((True, args.spam or ()), (False, args.ham or ())):
        for name in names:
            for _source, raw in iter_messages(Path(name)):
                token_sets.append(tokenize(raw))
                labels.append(is_spam)
    with Store(cfg.db_url) as store:
        extra = 0
        mark_done = None
        if args.from_feedback:
            fb_sets, fb_labels, mark_done = pending_feedback(store)
            token_sets += fb_sets
            labels += fb_labels
            extra = len(fb_sets)
        if not token_sets:
            raise UsageError("nothing to learn: give --spam/--ham files or --from-feedback with pending feedback")
        model.learn(token_sets, labels)
        model.save(path)
        if mark_done is not None:
            mark_done()
    print(f"learned {sum(labels)} spam + {len(labels) - sum(labels)} ham"
          + (f" ({extra} from feedback)" if args.from_feedback else "") + f" -> {path}")
    return 0


def cmd_model_info(args: argparse.Namespace, cfg: Config) -> int:
    path = _model_path(args, cfg)
    passport = read_passport(path)
    data = dict(passport.__dict__)
    data["path"] = str(path)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")
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

    p = sub.add_parser("learn", help="update the model incrementally")
    p.add_argument("--spam", nargs="+", metavar="FILE")
    p.add_argument("--ham", nargs="+", metavar="FILE")
    p.add_argument("--from-feedback", action="store_true",
                   help="learn what users marked spam / not spam in the web UI")
    p.add_argument("--model", metavar="M")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("model", help="model information")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    pi = msub.add_parser("info", help="the model's passport")
    pi.add_argument("--model", metavar="M")
    pi.add_argument("--json", action="store_true")
    pi.set_defaults(func=cmd_model_info)

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
