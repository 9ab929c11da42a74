"""The ``stronghold`` command: one entry point, subcommands, errors in one place."""

from __future__ import annotations

import argparse
import logging
import sys
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
    cli_train,
    jobs,
    nativecore,
)
from stronghold import config as config_mod
from stronghold.config import Config, ConfigError
from stronghold.modelfile import FORMAT_VERSION, ModelError
from stronghold.tokens import TOKENIZER_VERSION
from stronghold.training import CorpusError

log = logging.getLogger("stronghold")


KNOWN_ERRORS: tuple[type[Exception], ...] = (ConfigError, ModelError, CorpusError, *cli_train.KNOWN_ERRORS,
                                              *cli_services.KNOWN_ERRORS, *cli_admin.KNOWN_ERRORS,
                                              *cli_quarantine.KNOWN_ERRORS, *cli_learn.KNOWN_ERRORS,
                                              cli_scan.ScanUsageError)
Handler = Callable[[argparse.Namespace, Config], int]


# -- parser and main ------------------------------------------------------------

def version_line() -> str:
    """What ``--version`` prints: the package, and the model files this code reads and writes."""
    return (f"stronghold {__version__} (model format {FORMAT_VERSION}, tokenizer {TOKENIZER_VERSION})\n"
            f"{nativecore.status()}")


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


class _Version(argparse.Action):
    """``--version``: ``version_line()`` as it is (argparse's own action would rewrap its lines)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stronghold", description="Mail Stronghold spam and virus filter")
    parser.add_argument("--version", action=_Version,
                        help="print the version, the model format and tokenizer it reads"
                        " and which parts run natively, then exit")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML settings file (default: $STRONGHOLD_CONFIG, else none: built-in defaults); "
                             "STRONGHOLD_<SETTING> variables override it")
    parser.add_argument("--traceback", action="store_true", help="show the stack on errors")
    _add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cli_train.register(sub)
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
