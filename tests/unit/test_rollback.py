"""A model rollback sticks: the ledger follows the restored model, the candidate built from the
rolled-back state goes, and what only the rolled-back model had learned is set aside until an
operator readmits or forgets it (users' personal layers keep it)."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from stronghold import heldback, modelarchive, modelsync
from stronghold.cli import main
from stronghold.learning import awaits_judgement, candidate_path, events, shared_labels
from stronghold.modelarchive import archived, copy_model, marks_path, read_marks
from stronghold.modelfile import passport_path, read_passport, table_path
from stronghold.store import ledger
from stronghold.store.db import Store
from stronghold.store.tables import LearnedMessage
from stronghold.training import tokenize
from tests.conftest import corpus_files
from tests.unit import test_learning

_files, _train = test_learning._files, test_learning._train
env, base = test_learning.env, test_learning.base  # the same fixtures: a models folder, a small corpus


def _ledger(env: Path) -> Store:
    return Store(f"sqlite:///{env / 'data' / 'stronghold.db'}")


def _applied(env: Path) -> dict[str, bool]:
    with _ledger(env) as store, store.session() as s:
        return ledger.applied(s)


def _set_aside(env: Path, capsys: pytest.CaptureFixture[str]) -> int:
    capsys.readouterr()
    assert main(["model", "info", "--json"]) == 0
    return int(json.loads(capsys.readouterr().out)["set_aside"])


def _step(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.mark.corpus
def test_a_rollback_sticks_and_set_aside_marks_wait_for_the_operator(
        base: tuple[Path, Path], corpus: Path, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c, d, e = (str(p) for p in corpus_files(corpus, "spam", "test")[:5])
    h = {name: ledger.content_hash(tokenize(Path(p).read_bytes())) for name, p in zip("abcde", (a, b, c, d, e),
                                                                                        strict=True)}
    live = _train(base, env / "models")
    v0 = _files(live)
    _step(["learn", "--no-promote", "--spam", a, "--by", "alice"])
    _step(["model", "promote", "--force"])
    v1 = _files(live)
    _step(["learn", "--no-promote", "--source", "web", "--by", "mallory", "--spam", b, c])  # also mallory's layer
    _step(["model", "promote", "--force"])
    _step(["learn", "--no-promote", "--spam", d, "--by", "bob"])  # in the candidate only, never live
    capsys.readouterr()

    _step(["model", "rollback"])
    assert "2 mark(s) the rolled-back model had learned are set aside" in capsys.readouterr().out
    assert _files(live) == v1 and not candidate_path(live).exists()
    assert _applied(env) == {h["a"]: True}  # the ledger holds what the restored model holds
    assert read_passport(live).ledger_sha256 == ledger.digest(_applied(env).items())
    assert _set_aside(env, capsys) == 2
    _step(["model", "candidates"])
    assert "2 mark(s) set aside by a rollback" in capsys.readouterr().out
    with _ledger(env) as store, store.session() as s:  # mallory's own layer keeps her marks
        assert len(ledger.personal(s)["mallory"][0]) == 2

    # the next learn run builds on the restored model: bob's mark and a new one, not mallory's
    _step(["learn", "--no-promote", "--spam", e, "--by", "bob"])
    assert "learned 2 (took out 0)" in capsys.readouterr().out
    assert read_passport(candidate_path(live)).learned_spam == 3  # a, d, e
    assert _applied(env) == {h["a"]: True, h["d"]: True, h["e"]: True}
    _step(["model", "promote", "--force"])

    # twice in a row: back to v1 (d, e set aside), then to the trained model (a set aside)
    _step(["model", "rollback"])
    assert _files(live) == v1 and _set_aside(env, capsys) == 4
    _step(["model", "rollback"])
    assert _files(live) == v0 and _applied(env) == {} and _set_aside(env, capsys) == 5
    assert archived(live) == []
    assert main(["model", "rollback"]) == 2
    assert "no earlier model to roll back to" in capsys.readouterr().err
    assert main(["jobs", "--only", "learn"]) == 0  # nothing set aside comes back on its own
    assert "nothing new for the shared model" in capsys.readouterr().out

    # the operator readmits alice's mark, takes mallory's out, then readmits the rest
    assert main(["learn", "--no-promote", "--readmit-by", "nobody"]) == 2
    assert "nothing to readmit: no marks by nobody are set aside" in capsys.readouterr().err
    _step(["learn", "--no-promote", "--readmit-by", "alice"])
    assert "1 readmitted" in capsys.readouterr().out
    assert _applied(env) == {h["a"]: True}
    _step(["learn", "--no-promote", "--forget-by", "mallory"])
    assert _set_aside(env, capsys) == 2
    _step(["learn", "--no-promote", "--readmit"])
    assert "2 readmitted" in capsys.readouterr().out
    assert _applied(env) == {h["a"]: True, h["d"]: True, h["e"]: True} and _set_aside(env, capsys) == 0
    assert read_passport(candidate_path(live)).learned_spam == 3


@pytest.mark.corpus
def test_a_model_that_held_a_mark_since_forgotten_can_still_be_rolled_back_to(
        base: tuple[Path, Path], corpus: Path, env: Path) -> None:
    """The ledger keeps a forgotten mark's features while an archived model holds it."""
    a = str(corpus_files(corpus, "spam", "test")[0])
    live = _train(base, env / "models")
    _step(["learn", "--no-promote", "--spam", a])
    _step(["model", "promote", "--force"])
    with_a = _files(live)
    _step(["learn", "--no-promote", "--forget", a])
    _step(["model", "promote", "--force"])
    assert read_passport(live).learned_spam == 0
    _step(["model", "rollback"])
    assert _files(live) == with_a and len(_applied(env)) == 1
    _step(["learn", "--no-promote", "--forget", a])  # and it can be taken out again
    assert read_passport(candidate_path(live)).learned_spam == 0


def _row(n: int, label: bool | None, applied: bool | None, set_aside: bool = False) -> LearnedMessage:
    return LearnedMessage(content_hash=f"{n:064d}", scope=ledger.SHARED, label=label, applied=applied,
                          set_aside=set_aside, source="web", who=f"user{n % 2}", created=float(n),
                          updated=float(n), tokens=b"")


def test_restore_sets_aside_only_what_the_rolled_back_model_learned(store: Store) -> None:
    """On SQLite and PostgreSQL (migration 0007 adds the column to both)."""
    def key(n: int) -> str:
        return f"{n:064d}"
    with store.session() as s:
        s.add_all([_row(1, True, True), _row(2, False, True), _row(3, True, False), _row(4, True, True),
                   _row(5, None, True), _row(6, True, True), _row(7, False, False)])
    rolled = {key(1): True, key(2): False, key(3): False, key(4): True, key(7): False}
    restored = {key(1): True, key(3): True, key(5): True, key(7): True}
    with store.session() as s:
        assert ledger.missing(s, [*restored, key(9)]) == [key(9)]
        # 2, 4 and 7 (flipped to ham) were learned by the rolled-back model alone; 3 was flipped
        # again since (a newer mark), 6 was in the candidate only, 5 is forgotten
        assert ledger.restore(s, restored, {k: v for k, v in rolled.items() if restored.get(k) != v}) == 3
    with store.session() as s:
        rows = {int(r.content_hash): r for r in ledger.rows(s)}
        assert {n for n, r in rows.items() if r.set_aside} == {2, 4, 7}
        assert ledger.applied(s) == restored and ledger.set_aside_count(s) == 3
        assert {int(r.content_hash) for r in ledger.recent(s, 0.0)} == {1, 3, 6}  # set aside: judges nothing
        wanted = shared_labels(list(rows.values()))  # set aside: what the restored model holds
        assert {int(k): v for k, v in wanted.items()} == \
            {1: True, 2: None, 3: True, 4: None, 5: None, 6: True, 7: True}
        assert shared_labels(list(rows.values()), fresh=True)[key(7)] is None  # a new model: nothing
        assert ledger.readmit(s, "user0") == 2  # 2 and 4
    with store.session() as s:
        assert ledger.set_aside_count(s) == 1
        assert ledger.forget_by(s, "user1") == 3  # 1, 3 and 7
    with store.session() as s:
        assert ledger.set_aside_count(s) == 0
        assert shared_labels(ledger.rows(s))[key(7)] is None  # forgotten: taken out, not kept


def test_no_user_can_readmit_a_set_aside_mark_by_marking_again(store: Store) -> None:
    """Flipping a set-aside mark twice, from one account or two, must not bring it back into the
    shared model, nor can a mark given with 'stronghold learn'."""
    tokens = {"w:cheap", "w:pills"}
    key = ledger.content_hash(tokens)
    with store.session() as s:
        ledger.record(s, [tokens], [False], source="web", who="mallory", now=1.0)
        ledger.mark_applied(s, ledger.SHARED, {key: False})
    with store.session() as s:  # rolled back to a model that held nothing of it
        assert ledger.restore(s, {}, {key: False}) == 1
    for label in (True, False):  # mallory: "spam", then "not spam" again
        with store.session() as s:
            ledger.record(s, [tokens], [label], source="web", who="mallory", now=2.0)
        with store.session() as s:
            assert ledger.set_aside_count(s) == 1
            assert shared_labels(ledger.rows(s))[key] is None  # the restored model's state, not hers
    with store.session() as s:  # nor does a second account's mark (a sock puppet)
        ledger.record(s, [tokens], [True], source="web", who="mallory2", now=3.0)
    with store.session() as s:
        assert ledger.set_aside_count(s) == 1 and shared_labels(ledger.rows(s))[key] is None
    with store.session() as s:  # nor the operator's 'stronghold learn': only --readmit lets it in
        ledger.record(s, [tokens], [False], source="cli", who="postmaster", now=4.0)
    with store.session() as s:
        assert ledger.set_aside_count(s) == 1 and shared_labels(ledger.rows(s))[key] is None


@pytest.mark.corpus
def test_rolling_back_across_a_retraining_and_to_a_model_from_before_marks_were_recorded(
        base: tuple[Path, Path], corpus: Path, env: Path) -> None:
    a, b, c = (str(p) for p in corpus_files(corpus, "spam", "test")[:3])
    live = _train(base, env / "models")
    _step(["learn", "--no-promote", "--spam", a])
    _step(["model", "promote", "--force"])
    with_a = _files(live)
    marks_path(live).unlink()  # as an older version left the live model
    _step(["learn", "--no-promote", "--spam", b])  # the ledger still holds exactly its state: noted now
    assert read_marks(live) == {ledger.content_hash(tokenize(Path(a).read_bytes())): True}
    _step(["model", "promote", "--force"])
    with_ab, sample = _files(live), heldback.read(live)
    # retrained on another split: a new training run with a sample of its own
    _step(["train", "--ham", str(base[0]), "--spam", str(base[1]), "--holdout", "0.5"])
    retrained = _files(live)
    assert len(heldback.read(live)[1]) < len(sample[1])
    _step(["learn", "--no-promote", "--spam", c])
    _step(["model", "promote", "--force"])
    _step(["model", "rollback"])
    assert _files(live) == retrained
    _step(["model", "rollback"])  # to the model the training replaced: its own sample comes back with it
    assert _files(live) == with_ab and heldback.read(live) == sample
    _step(["model", "rollback"])
    assert _files(live) == with_a and heldback.read(live) == sample


@pytest.mark.corpus
def test_train_archives_the_model_it_replaces_and_the_ledger_follows_a_rollback_across_it(
        base: tuple[Path, Path], corpus: Path, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = (str(p) for p in corpus_files(corpus, "spam", "test")[:3])
    ha, hb, hc = (ledger.content_hash(tokenize(Path(p).read_bytes())) for p in (a, b, c))
    side = env / "models" / "side.joblib"
    _step(["train", "--ham", str(base[0]), "--spam", str(base[1]), "--model", str(side)])
    live = _train(base, env / "models")
    _train(base, env / "models")  # the same run again: archived too (a model no different from the live one)
    assert len(archived(live)) == 1  # the first training replaced nothing, the side model is no live one
    _step(["learn", "--no-promote", "--spam", a, "--by", "alice"])
    _step(["model", "promote", "--force"])
    learned, sample = _files(live), heldback.read(live)
    _step(["train", "--ham", str(base[0]), "--spam", str(base[1]), "--holdout", "0.5", "--model", str(side)])
    assert len(archived(live)) == 2  # a side model replaces nothing live
    capsys.readouterr()

    _step(["train", "--ham", str(base[0]), "--spam", str(base[1]), "--holdout", "0.5"])
    assert "is archived as 0003-" in capsys.readouterr().out
    retrained = _files(live)
    kept = archived(live)[-1]
    assert _files(kept) == learned and read_marks(kept) == {ha: True} and heldback.read(kept) == sample
    assert not marks_path(live).exists() and read_marks(live) == {}  # the new model learned nothing
    _step(["learn", "--no-promote", "--spam", b, "--by", "bob"])  # the fresh model's candidate learns a and b
    assert _applied(env) == {ha: True, hb: True}
    _step(["model", "promote", "--force"])

    _step(["model", "rollback"])  # to the retrained model: it holds nothing, a and b set aside
    assert _files(live) == retrained and _applied(env) == {} and _set_aside(env, capsys) == 2
    _step(["model", "rollback"])  # across the training: the ledger holds what that model holds again
    assert _files(live) == learned and heldback.read(live) == sample
    assert _applied(env) == {ha: True}
    assert read_passport(live).ledger_sha256 == ledger.digest(_applied(env).items())
    _step(["learn", "--no-promote", "--readmit"])
    _step(["learn", "--no-promote", "--spam", c])  # builds on the restored model
    assert _applied(env) == {ha: True, hb: True, hc: True} and _set_aside(env, capsys) == 0
    assert read_passport(candidate_path(live)).learned_spam == 3


@pytest.mark.corpus
def test_versions_keeps_the_newest_archived_models_and_the_ledger_forgets_what_none_holds(
        base: tuple[Path, Path], corpus: Path, env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``model_versions_kept``: archiving one more deletes the oldest; a forgotten mark's ledger row
    goes once no kept model holds it (nothing can roll back to one that did)."""
    monkeypatch.setenv("STRONGHOLD_MODEL_VERSIONS_KEPT", "2")
    a, b, c = (str(p) for p in corpus_files(corpus, "spam", "test")[:3])
    ha = ledger.content_hash(tokenize(Path(a).read_bytes()))

    def rows() -> set[str]:
        with _ledger(env) as store, store.session() as s:
            return {r.content_hash for r in ledger.rows(s)}
    live = _train(base, env / "models")
    (env / "models" / "versions" / "backup-of-june").mkdir(parents=True)  # an admin's folder: not an archive
    _step(["learn", "--no-promote", "--spam", a])
    _step(["model", "promote", "--force"])  # versions: trained
    v1 = _files(live)
    _step(["learn", "--no-promote", "--forget", a])
    _step(["model", "promote", "--force"])  # versions: trained, v1 (holds a)
    v2 = _files(live)
    _step(["learn", "--no-promote", "--spam", b])
    _step(["model", "promote", "--force"])  # versions: v1, v2: the trained model deleted
    v3 = _files(live)
    assert [_files(m) for m in archived(live)] == [v1, v2] and ha in rows()
    _step(["train", "--ham", str(base[0]), "--spam", str(base[1]), "--holdout", "0.5"])  # archives v3
    retrained = _files(live)
    assert [_files(m) for m in archived(live)] == [v2, v3]
    assert ha not in rows()  # v1 was the last model holding the forgotten mark
    _step(["learn", "--no-promote", "--spam", c])
    _step(["model", "promote", "--force"])  # versions: v3, retrained
    _step(["model", "rollback"])
    assert _files(live) == retrained
    _step(["model", "rollback"])
    assert _files(live) == v3
    capsys.readouterr()
    assert main(["model", "rollback"]) == 2
    assert "no earlier model to roll back to" in capsys.readouterr().err
    assert (env / "models" / "versions" / "backup-of-june").is_dir()  # never pruned, never restored


@pytest.mark.corpus
def test_a_candidate_from_before_a_retraining_is_never_promoted(
        base: tuple[Path, Path], corpus: Path, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``train`` removes the candidate grown from the model it replaces; one put back (restored from a
    backup, say) is refused by promote and not counted as awaiting judgement."""
    a = str(corpus_files(corpus, "spam", "test")[0])
    live = _train(base, env / "models")
    _step(["learn", "--no-promote", "--spam", a])
    stale = env / "stale" / live.name
    copy_model(candidate_path(live), stale)
    _step(["train", "--ham", str(base[0]), "--spam", str(base[1]), "--holdout", "0.5"])
    assert not candidate_path(live).exists()
    copy_model(stale, candidate_path(live))
    with _ledger(env) as store:
        assert not awaits_judgement(store, live)
    retrained = _files(live)
    capsys.readouterr()
    assert main(["model", "promote", "--force"]) == 2
    assert "another training run" in capsys.readouterr().err
    assert _files(live) == retrained


def test_a_set_aside_mark_given_again_stays_set_aside(store: Store) -> None:
    """Flipping a set-aside mark (and flipping it back) does not let it into the shared model: it
    did, so a rolled-back user's 'Not spam', 'This is spam' clicks undid the rollback unasked."""
    tokens = {"cheap", "pills", "now"}
    digest = ledger.content_hash(tokens)
    with store.session() as s:
        s.add(LearnedMessage(content_hash=digest, scope=ledger.SHARED, label=True, applied=None, set_aside=True,
                             source="web", who="mallory", created=1.0, updated=1.0, tokens=b""))
    for label in (False, True):
        with store.session() as s:
            assert ledger.record(s, [tokens], [label], source="web", who="mallory").flipped == 1
        with store.session() as s:
            assert ledger.set_aside_count(s) == 1
            assert shared_labels(ledger.rows(s))[digest] is None  # what the restored model holds: not it
    with store.session() as s:
        assert ledger.readmit(s, "mallory") == 1
    with store.session() as s:
        assert shared_labels(ledger.rows(s))[digest] is True


def _rolled_back_events(env: Path) -> list[str]:
    with _ledger(env) as store:
        return [e.reason for e in events(store, 100) if e.action == "rolled-back"]


def _break_before_files(real: Callable[..., None]) -> Callable[..., None]:
    def copy(src: Path, dst: Path) -> None:
        raise KeyboardInterrupt  # killed before the model files are replaced
    return copy


def _break_after_files(real: Callable[..., None]) -> Callable[..., None]:
    def copy(src: Path, dst: Path) -> None:
        real(src, dst)
        raise KeyboardInterrupt  # killed once the files are replaced
    return copy


BREAKS = {"before the files": ("copy_model", _break_before_files),
          "after the files": ("copy_model", _break_after_files),
          "before the archive is removed": ("publish", _break_before_files)}


@pytest.mark.corpus
@pytest.mark.parametrize("broken, then", [("before the files", "learn"), ("before the files", "model rollback"),
                                          ("after the files", "jobs"), ("after the files", "model rollback"),
                                          ("before the archive is removed", "learn")])
def test_an_interrupted_rollback_is_finished_by_the_next_command_once(
        broken: str, then: str, base: tuple[Path, Path], corpus: Path, env: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A rollback killed between its steps (files, store, archive) leaves no half-done state: the
    next rollback, learn or jobs run finishes that rollback (and says so) before anything else, and
    never rolls back a second version or sets anything aside twice.  It used to make the next learn
    fail with 'retrain', and a second rollback recorded it twice and set aside nothing."""
    monkeypatch.setenv("STRONGHOLD_DOVECOT_CONFIG", str(env / "no-dovecot.conf"))
    a, b, d, e = (str(p) for p in corpus_files(corpus, "spam", "test")[:4])
    ha, hd, he = (ledger.content_hash(tokenize(Path(p).read_bytes())) for p in (a, d, e))
    live = _train(base, env / "models")
    v0 = _files(live)
    _step(["learn", "--no-promote", "--spam", a, "--by", "alice"])
    _step(["model", "promote", "--force"])
    v1 = _files(live)
    _step(["learn", "--no-promote", "--source", "web", "--by", "mallory", "--spam", b])
    _step(["model", "promote", "--force"])
    _step(["learn", "--no-promote", "--spam", d, "--by", "bob"])  # in the candidate only
    name, breaking = BREAKS[broken]
    target = modelsync if name == "publish" else modelarchive
    with monkeypatch.context() as patched:
        patched.setattr(target, name, breaking(getattr(target, name)))
        assert main(["model", "rollback"]) == 130  # interrupted
    capsys.readouterr()
    _step(["model", "candidates"])  # looks, changes nothing
    assert "a 'model rollback' to 0002-" in capsys.readouterr().out

    promoted = False
    if then == "model rollback":
        _step(["model", "rollback"])
        out = capsys.readouterr().out
        assert "finished the interrupted 'model rollback'" in out and "no further rollback was done" in out
        assert _files(live) == v1 and not candidate_path(live).exists()
        assert _applied(env) == {ha: True}
    elif then == "learn":
        _step(["learn", "--no-promote", "--spam", e, "--by", "bob"])
        out = capsys.readouterr().out
        assert "finished the interrupted 'model rollback'" in out and "learned 2 (took out 0)" in out
        assert _files(live) == v1 and _applied(env) == {ha: True, hd: True, he: True}
    else:
        assert main(["jobs", "--only", "learn"]) == 0
        out = capsys.readouterr().out
        assert "learn: finished the interrupted rollback to 0002-" in out and "learned 1 (took out 0)" in out
        assert _applied(env) == {ha: True, hd: True}  # bob's mark, not mallory's
        promoted = "candidate promoted" in out  # then the restored model is archived anew
    # the restored archive left the archive
    assert [m.parent.name[:4] for m in archived(live)] == ["0001", "0002"][:1 + promoted]
    assert not list((env / "models").glob("*.rollback.json"))
    assert _set_aside(env, capsys) == 1  # mallory's mark, once
    [event] = _rolled_back_events(env)  # recorded once
    assert event.startswith("restored 0002-") and event.endswith("; 1 mark(s) set aside")
    if not promoted:  # and the next rollback goes one version further, as ever
        _step(["model", "rollback"])
        assert _files(live) == v0 and archived(live) == []


def _disk_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What reaches the disk, in order: ('fsync', file or folder), ('rename', target) (the real calls run)."""
    seen: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def spy_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(("rename", str(dst)))
        replace(src, dst)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    return seen


def _synced_then_renamed(seen: list[tuple[str, str]], path: Path) -> bool:
    """``path`` was renamed into place after its temporary file was synced, and its folder synced after."""
    renamed = seen.index(("rename", str(path)))
    synced_before = any(op == "fsync" and Path(p).parent == path.parent and Path(p).name.startswith(".tmp-")
                        for op, p in seen[:renamed])
    return synced_before and ("fsync", str(path.parent)) in seen[renamed:]


def test_marks_and_copied_model_files_are_written_durably_and_atomically(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``model.marks.json.gz`` and the files a promotion or rollback copies are synced before their
    rename and the folder after it, as ``Model.save`` does (they were only renamed: a crash could leave
    an empty marks file beside a passport that names them, and the model could not be rolled back to)."""
    model = tmp_path / "model.joblib"
    seen = _disk_writes(monkeypatch)
    modelarchive.write_marks(model, {"a" * 64: True, "b" * 64: False})
    assert _synced_then_renamed(seen, marks_path(model))
    with gzip.open(marks_path(model), "rt") as fh:
        assert json.load(fh) == {"a" * 64: "s", "b" * 64: "h"}
    for path in (model, table_path(model), passport_path(model)):
        path.write_bytes(path.name.encode())
    seen.clear()
    copy = tmp_path / "versions" / "0001-x" / "model.joblib"
    copy_model(model, copy)
    for path in (copy, table_path(copy), passport_path(copy), marks_path(copy)):
        assert _synced_then_renamed(seen, path), path
    assert [p.read_bytes() for p in (copy, table_path(copy))] == [b"model.joblib", b"model.npy"]

    def failing(fd: int) -> None:  # the disk fails while the new marks are written
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError):
        modelarchive.write_marks(model, {"c" * 64: True})
    with gzip.open(marks_path(model), "rt") as fh:  # the old marks stay, whole; no temporary file is left
        assert json.load(fh) == {"a" * 64: "s", "b" * 64: "h"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.joblib", "model.json", "model.marks.json.gz",
                                                          "model.npy", "versions"]
