"""Typed settings: defaults, file, environment, validation."""

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from stronghold import config
from stronghold.config import ConfigError


def test_defaults_are_safe() -> None:
    cfg = config.load(None, {}, environ={})
    assert cfg.on_scanner_error == cfg.on_model_error == cfg.on_store_error == "tempfail"
    assert cfg.web_bind.startswith("127.0.0.1:")
    assert cfg.db_url.startswith("sqlite:///")


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('spam_action = "quarantine"\nreject_threshold = 0.95\n')
    cfg = config.load(f, {"reject_threshold": 0.97}, environ={"STRONGHOLD_SPAM_ACTION": "reject"})
    assert cfg.spam_action == "reject" and cfg.reject_threshold == 0.97


@pytest.mark.parametrize("overrides, message", [
    ({"spam_actoin": "tag"}, "unknown setting 'spam_actoin'"),
    ({"reject_threshold": 2}, "between 0 and 1"),
    ({"milter_socket": "tcp:1"}, "unix:/PATH or inet:PORT@HOST"),
    ({"on_scanner_error": "ignore"}, "must be one of"),
    ({"model": "../evil.joblib"}, "file name inside models_dir"),
    ({"model_versions_kept": 0}, "positive whole number"),
    ({"model_versions_kept": "ten"}, "model_versions_kept"),
])
def test_invalid_settings_are_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(None, overrides, environ={})


def test_unknown_environment_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="STRONGHOLD_SPAM_TRESHOLD"):
        config.load(None, {}, environ={"STRONGHOLD_SPAM_TRESHOLD": "0.5"})


def test_every_setting_is_read_as_its_declared_type() -> None:
    """Config's field types and the validators in their Settings agree (mypy trusts the former)."""
    hints = typing.get_type_hints(config.Config)
    assert list(config.SETTINGS) == [f.name for f in dataclasses.fields(config.Config)]
    cfg = config.load(None, {"spam_threshold": 0.9, "dns_nameservers": "127.0.0.1"}, environ={})
    for name in config.SETTINGS:
        declared = hints[name]
        kind = typing.get_origin(declared) if isinstance(declared, types.GenericAlias) else declared
        assert isinstance(getattr(cfg, name), kind), (name, declared, getattr(cfg, name))
    assert config.load(None, {}, environ={}).spam_threshold is None


def test_a_test_that_names_no_folders_gets_temporary_ones() -> None:
    """The checkout's models/ and var/ belong to the developer (conftest's autouse fixture)."""
    cfg = config.load()
    checkout = config.ROOT.resolve()
    assert checkout not in cfg.models_dir.resolve().parents and checkout not in cfg.data_dir.resolve().parents


def test_the_example_file_loads_back_as_printed_and_uncommented(tmp_path: Path) -> None:
    """Every line `stronghold config example` prints is valid as it stands and once uncommented,
    including list settings (dns_nameservers was printed as Python text, "()")."""
    defaults = config.load(None, {}, environ={})
    setting_line = re.compile(r"# [a-z_]+ = ")
    uncommented = "\n".join(line[2:] if setting_line.match(line) else line for line in config.example().splitlines())
    (tmp_path / "all.toml").write_text(uncommented + "\n")
    assert config.load(tmp_path / "all.toml", environ={}) == defaults
    (tmp_path / "set.toml").write_text(config.example({"dns_nameservers": ("192.0.2.1", "192.0.2.2")}))
    assert config.load(tmp_path / "set.toml", environ={}).dns_nameservers == ("192.0.2.1", "192.0.2.2")


@pytest.mark.parametrize("name", ["clamd_timeout", "dns_timeout"])
@pytest.mark.parametrize("raw", ["inf", "nan", "1e20", "-1", "86401"])
def test_timeouts_are_bounded_seconds(name: str, raw: str) -> None:
    """inf, nan or a huge value would make the socket layer raise at every message."""
    with pytest.raises(ConfigError, match=name):
        config.load(None, {name: raw}, environ={})
    assert getattr(config.load(None, {name: "0"}, environ={}), name) == 0.0
