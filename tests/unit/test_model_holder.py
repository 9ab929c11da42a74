"""ModelHolder: the milter's current model, swapped only for one that verifies."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from stronghold.classifier import Model
from stronghold.incidents import Incidents
from stronghold.modelfile import ModelError, passport_path, sha256_of, table_path
from stronghold.modelholder import ModelHolder


def _model(threshold: float) -> Model:
    model = Model.train([{"meeting", "agenda"}] * 4 + [{"free", "money"}] * 4, [False] * 4 + [True] * 4)
    model.passport.spam_threshold = threshold
    return model


@pytest.fixture
def holder(tmp_path: Path) -> ModelHolder:
    _model(0.7).save(tmp_path / "model.joblib")
    h = ModelHolder(tmp_path / "model.joblib", Incidents())
    h.CHECK_SECONDS = 0.0  # look at the files on every call
    return h


def test_a_new_model_replaces_the_old_one(holder: ModelHolder) -> None:
    assert holder().spam_threshold == 0.7
    _model(0.8).save(holder.path)
    assert holder().spam_threshold == 0.8 and holder.generation == 2


def test_a_corrupt_replacement_keeps_the_old_model(holder: ModelHolder, caplog) -> None:
    first = holder()
    table = table_path(holder.path)
    data = bytearray(table.read_bytes())
    data[-1] ^= 0xFF
    table.write_bytes(bytes(data))
    assert holder() is first
    assert "does not match its passport" in caplog.text


def test_no_model_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        ModelHolder(tmp_path / "missing.joblib", Incidents())()


def test_reload_on_request_even_within_the_check_interval(holder: ModelHolder, tmp_path: Path) -> None:
    holder.CHECK_SECONDS = 3600.0
    assert holder().spam_threshold == 0.7
    other = tmp_path / "other"
    other.mkdir()
    _model(0.9).save(other / "model.joblib")
    for suffix in (".joblib", ".npy", ".json"):
        shutil.copy(other / f"model{suffix}", holder.path.with_suffix(suffix))
    assert holder().spam_threshold == 0.7  # not looked at yet
    generation = [0]
    holder.external_generation = lambda: generation[0]
    generation[0] = 1  # what SIGHUP does
    assert holder().spam_threshold == 0.9


class _Planted:
    """A pickle that leaves a marker file behind if anything ever unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "unpickled"))


def _replace_table(holder: ModelHolder, data: bytes | None, *, fix_passport: bool) -> None:
    """Put ``data`` where the table was (None: delete it); ``fix_passport``: as a tamperer who also
    rewrites the passport's checksum would."""
    table = table_path(holder.path)
    if data is None:
        table.unlink()
        return
    table.write_bytes(data)
    if fix_passport:
        side = passport_path(holder.path)
        passport = json.loads(side.read_text())
        passport["table_sha256"] = sha256_of(table)
        side.write_text(json.dumps(passport))


@pytest.mark.parametrize("what", ["truncated", "pickle", "pickle with a matching passport", "deleted"])
def test_a_running_milter_keeps_its_model_when_the_table_is_broken(holder: ModelHolder, tmp_path: Path, what: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Truncated, replaced by a pickle (even one its passport vouches for) or deleted: the old model
    stays, the incident is recorded, and nothing is unpickled."""
    first = holder()
    marker = tmp_path / "marker"
    table = table_path(holder.path).read_bytes()
    planted = pickle.dumps(_Planted(marker))
    data = {"truncated": table[:1000], "deleted": None}.get(what, planted)
    _replace_table(holder, data, fix_passport=what.endswith("matching passport"))
    assert holder() is first and holder.generation == 1
    assert "model failing" in caplog.text
    assert not marker.exists()
    _model(0.8).save(holder.path)  # a good model written afterwards is taken
    assert holder().spam_threshold == 0.8 and "model recovered" in caplog.text
