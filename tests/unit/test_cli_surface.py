"""The command line's surface: --version, a help text on everything, one name per option, log levels."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from stronghold import __version__, nativecore
from stronghold.cli import build_parser, log_level, main
from stronghold.modelfile import FORMAT_VERSION
from stronghold.tokens import TOKENIZER_VERSION


def _walk(parser: argparse.ArgumentParser, path: str = "stronghold") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, f"{path} {name}")


def _missing_help(parser: argparse.ArgumentParser) -> list[str]:
    """Every option, positional and subcommand of the tree that has no help text."""
    missing: list[str] = []
    for path, p in _walk(parser):
        shown = {a.dest for a in p._actions if a.help not in (None, "", argparse.SUPPRESS)}
        for action in p._actions:
            name = "/".join(action.option_strings) or action.dest
            if isinstance(action, argparse._SubParsersAction):
                helped = {c.dest for c in action._choices_actions if c.help}
                missing += [f"{path} {cmd}" for cmd in action.choices if cmd not in helped]
            elif action.help == argparse.SUPPRESS:
                if action.dest not in shown:  # hidden only as the alias of an option that is shown
                    missing.append(f"{path} {name} (hidden, and no visible option of its own)")
            elif not action.help:
                missing.append(f"{path} {name}")
    return missing


def test_every_subcommand_and_option_has_a_help_text() -> None:
    assert _missing_help(build_parser()) == []


def test_the_help_walk_finds_an_option_without_help() -> None:
    parser = build_parser()
    scan = dict(_walk(parser))["stronghold scan"]
    scan.add_argument("--new-option")
    scan.add_argument("--hidden", help=argparse.SUPPRESS)
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subs.add_parser("undocumented")
    assert _missing_help(parser) == ["stronghold undocumented", "stronghold scan --new-option",
                                     "stronghold scan --hidden (hidden, and no visible option of its own)"]


def test_version_names_the_package_and_the_model_files_it_reads(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out == (f"stronghold {__version__} (model format {FORMAT_VERSION}, tokenizer {TOKENIZER_VERSION})\n"
                   f"{nativecore.status()}\n")
    assert "native core: " in out
    assert __version__ != "0+unknown"  # the installed package's metadata was found


def _parsed(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


ACTING = ["learn", "model publish", "model promote", "model rollback", "quarantine release"]


def test_no_other_option_names_the_person_acting() -> None:
    found = sorted(f"{path} {option}" for path, p in _walk(build_parser()) for a in p._actions
                   for option in a.option_strings if option in ("--by", "--who", "--user", "--actor"))
    assert found == sorted([f"stronghold {c} {o}" for c in ACTING for o in ("--by", "--who")]
                           + ["stronghold digest --user"])  # digest --user: whose digest, not who acts


@pytest.mark.parametrize("command", ACTING)
def test_the_person_acting_is_by_everywhere_and_who_still_works(command: str) -> None:
    argv = command.split() + {"learn": ["--spam", "x"], "quarantine release": ["1"]}.get(command, [])
    assert _parsed(*argv, "--by", "alice").by == "alice"
    assert _parsed(*argv, "--who", "bob").by == "bob"  # old scripts and IMAP hooks
    assert _parsed(*argv).by is None
    usage = dict(_walk(build_parser()))[f"stronghold {command}"].format_help()
    assert "--by WHO" in usage and "--who" not in usage


@pytest.mark.parametrize("argv, level", [
    (["scan", "f"], logging.WARNING),
    (["-v", "scan", "f"], logging.INFO),
    (["scan", "-v", "f"], logging.INFO),
    (["-vv", "scan", "f"], logging.DEBUG),
    (["-v", "scan", "-v", "f"], logging.DEBUG),
    (["-q", "scan", "f"], logging.ERROR),
    (["quarantine", "ls"], logging.WARNING),
    (["milter", "--check-config"], logging.WARNING),
    (["milter"], logging.INFO),
    (["-v", "milter"], logging.DEBUG),
    (["web"], logging.INFO),
    (["jobs"], logging.INFO),
    (["jobs", "-q"], logging.WARNING),
    (["mailbox", "expire"], logging.WARNING),
    (["mailbox", "expire", "--every", "60"], logging.INFO),
])
def test_one_shot_commands_log_warnings_services_info(argv: list[str], level: int) -> None:
    assert log_level(_parsed(*argv)) == level


@pytest.fixture
def root_level() -> Iterator[None]:
    """main() sets the root logger's level; put it back for the tests after this one."""
    before = logging.getLogger().level
    yield
    logging.getLogger().setLevel(before)


def test_scan_says_nothing_on_stderr_but_its_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str],
                                                      caplog: pytest.LogCaptureFixture, root_level: None) -> None:
    for name, value in (("DATA_DIR", "data"), ("MODELS_DIR", "models")):
        monkeypatch.setenv(f"STRONGHOLD_{name}", str(tmp_path / value))
    monkeypatch.setenv("STRONGHOLD_CLAMD_SOCKET", "none")
    (tmp_path / "m").mkdir()
    for i in range(4):
        (tmp_path / "m" / f"h{i}").write_text(f"Subject: meeting {i}\n\nagenda minutes project {i}\n")
        (tmp_path / "m" / f"s{i}").write_text(f"Subject: WIN cash {i}\n\nfree money click now {i}\n")
    (tmp_path / "index").write_text("".join(f"ham m/h{i}\nspam m/s{i}\n" for i in range(4)))
    assert main(["train", "--index", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    caplog.clear()
    assert main(["scan", str(tmp_path / "m" / "s1")]) == 0
    assert [r for r in caplog.records if r.levelno < logging.WARNING] == []
    assert "s1: " in capsys.readouterr().out
    assert main(["scan", "-v", str(tmp_path / "m" / "s1")]) == 0
    assert any(r.name == "stronghold.modelholder" and r.levelno == logging.INFO for r in caplog.records)
