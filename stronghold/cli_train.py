"""`stronghold train`: a model from ham and spam corpora, with its held-back sample; over the
configured live model, the model it replaces is archived first (``model rollback`` returns to it)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from stronghold import heldback, learning, modelarchive
from stronghold.classifier import Model
from stronghold.config import Config
from stronghold.modelfile import ModelError, passport_path, read_passport, table_path
from stronghold.store.db import Store
from stronghold.training import CorpusError, Sample, check_labels, collect, in_holdout, tokenize, train_model


class TrainUsageError(Exception):
    """`train` was asked something it cannot do (one-line message)."""


KNOWN_ERRORS = (TrainUsageError,)


def _progress(total: int | None, desc: str) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    from tqdm import tqdm

    def wrap(items: Iterator[Sample]) -> Iterator[Sample]:
        return iter(tqdm(items, total=total, desc=desc, unit="msg", file=sys.stderr,
                         disable=None, leave=False))
    return wrap


def _model_path(args: argparse.Namespace, cfg: Config) -> Path:
    return Path(args.model) if getattr(args, "model", None) else cfg.model_path


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
        raise TrainUsageError(f"{model} is a folder: give the model file's path (e.g. {model / 'model.joblib'})")
    folder = model.parent
    if folder.exists() and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        raise TrainUsageError(f"cannot write the model into {folder}")
    _check_not_foreign(model)


def _check_not_foreign(model: Path) -> None:
    """Refuse a path whose files training would clobber: a name its own passport or table would
    overwrite (``.json``, ``.npy``), or existing files that are not a Mail Stronghold model."""
    if model.suffix in (".json", ".npy"):
        raise TrainUsageError(f"{model}: a model may not end in {model.suffix} (its passport and table "
                              "are written beside it as .json and .npy): use e.g. .joblib")
    siblings = (model, passport_path(model), table_path(model))
    if not any(p.exists() for p in siblings):
        return
    try:
        if not read_passport(model).table_sha256:
            raise ModelError(f"{passport_path(model)} is no model passport")
    except ModelError as exc:
        present = ", ".join(str(p) for p in siblings if p.exists())
        raise TrainUsageError(f"refusing to overwrite {present}: not a Mail Stronghold model ({exc}); "
                              "remove it or choose another --model") from exc


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
        raise TrainUsageError("give --ham and --spam corpora, or --index FILE")
    if args.index is None and not (args.ham and args.spam):
        raise TrainUsageError("training needs both --ham and --spam")
    if not 0.0 <= args.holdout < 1.0:
        raise TrainUsageError("--holdout is a fraction between 0 and 1")
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from ham and spam corpora")
    p.add_argument("--ham", nargs="+", metavar="PATH", help="ham: maildirs, mboxes, folders or files")
    p.add_argument("--spam", nargs="+", metavar="PATH", help="spam: maildirs, mboxes, folders or files")
    p.add_argument("--index", metavar="FILE",
                   help="an index file of lines 'spam PATH' / 'ham PATH' (paths relative to the file)")
    p.add_argument("--model", metavar="OUT", help="where to write the model (default: the configured model)")
    p.add_argument("--holdout", type=float, default=0.0, metavar="F",
                   help="fraction held out for evaluation (AUC, FP, FN); default 0: train on everything")
    p.set_defaults(func=cmd_train)
