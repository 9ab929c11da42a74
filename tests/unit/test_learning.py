"""The learning loop from the command line: ledger, exact undo, input checks, judged promotion."""

from __future__ import annotations

import mailbox
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from stronghold.classifier import Model, token_indices
from stronghold.cli import main
from stronghold.learning import SHARED_MARKS_PER_USER, candidate_path, events, record_event, shared_labels, version_of
from stronghold.message import parse
from stronghold.modelfile import passport_path, read_passport, table_path
from stronghold.store import accounts, ledger, messagelog
from stronghold.store.db import Store
from stronghold.store.tables import PersonalLayerRow
from stronghold.training import tokenize
from stronghold.verdict import Action, Category, Envelope, Verdict
from tests.conftest import corpus_files

pytestmark = pytest.mark.corpus


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STRONGHOLD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STRONGHOLD_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("STRONGHOLD_CLAMD_SOCKET", "none")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    return tmp_path


@pytest.fixture(scope="module")
def base(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small training set: a folder of ham and an mbox of spam."""
    home = tmp_path_factory.mktemp("base")
    ham = home / "ham"
    ham.mkdir()
    for i, path in enumerate(corpus_files(corpus, "ham", "train")[:200]):
        (ham / f"{i}.eml").write_bytes(path.read_bytes())
    spam = home / "spam.mbox"
    box = mailbox.mbox(str(spam), create=True)
    for path in corpus_files(corpus, "spam", "train")[:100]:
        box.add(path.read_bytes())
    box.close()
    return ham, spam


def _train(base: tuple[Path, Path], models: Path) -> Path:
    """`stronghold train` on ``base`` into ``models``.

    Into a folder with nothing in it, the first time per ``base`` it trains and keeps a copy of
    what it wrote; later times it puts that copy there (1.5-3 s of training a test): the same
    files, as training is deterministic (test_determinism; ``env`` sets SOURCE_DATE_EPOCH) and
    writes nothing outside the models folder.  Over a folder holding anything (a live model to
    archive, say) it always trains."""
    out = models / "model.joblib"
    trained = base[0].parent / "trained"
    fresh = not models.exists() or not any(models.iterdir())
    if fresh and trained.is_dir():
        shutil.copytree(trained, models, dirs_exist_ok=True, copy_function=shutil.copy)  # new mtimes, as written now
        return out
    assert main(["train", "--ham", str(base[0]), "--spam", str(base[1]), "--model", str(out)]) == 0
    if fresh:
        shutil.copytree(models, trained)
    return out


def _files(path: Path) -> list[bytes]:
    return [path.read_bytes(), table_path(path).read_bytes(), passport_path(path).read_bytes()]


def test_learn_again_flip_forget_equals_learning_the_end_result_once(
        base: tuple[Path, Path], corpus: Path, env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = (str(p) for p in corpus_files(corpus, "spam", "test")[:3])
    live = _train(base, env / "models")
    steps = [(["--spam", a, b]), (["--spam", a]), (["--ham", a, "--spam", c]), (["--forget", b])]
    for step in steps:
        assert main(["learn", "--no-promote", *step]) == 0
    out = capsys.readouterr().out
    assert "1 new, 0 already known, 1 flipped" in out and "0 new, 1 already known" in out
    cand = candidate_path(live)
    p = read_passport(cand)
    assert (p.learned_ham, p.learned_spam) == (1, 1)  # a as ham, c as spam; b gone, a counted once
    with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store, store.session() as s:
        assert {(r.label, r.applied, r.source) for r in ledger.rows(s)} == {(False, False, "cli"),
                                                                           (True, True, "cli")}

    # a fresh training on the same data, then the final labels learned once, in another folder and store
    monkeypatch.setenv("STRONGHOLD_DATA_DIR", str(env / "data2"))
    live2 = _train(base, env / "models2")
    assert main(["learn", "--no-promote", "--model", str(live2), "--ham", a, "--spam", c]) == 0
    assert _files(cand) == _files(candidate_path(live2))

    # and the counts are exactly those of training on base + final labels in one go
    base_sets = [tokenize(p.read_bytes()) for p in sorted(base[0].iterdir())]
    box = mailbox.mbox(str(base[1]))
    spam_sets = [tokenize(box.get_bytes(key)) for key in box.keys()]
    box.close()
    once = Model.train(base_sets + spam_sets + [tokenize(Path(a).read_bytes()), tokenize(Path(c).read_bytes())],
                       [False] * len(base_sets) + [True] * len(spam_sets) + [False, True])
    learned = Model.load(cand, for_learning=True)
    assert learned.nb is not None and once.nb is not None
    assert np.array_equal(learned.nb.feature_count_, once.nb.feature_count_)
    assert np.array_equal(np.load(table_path(cand)), once._logodds)


@pytest.mark.parametrize("content, message", [
    (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "binary data"),
    (b"just some text\nwith no headers\n", "no header block"),
    (b"", "empty, no message in it"),
])
def test_non_mail_is_refused(content: bytes, message: str, base: tuple[Path, Path], env: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    _train(base, env / "models")
    bad = env / "bad"
    bad.write_bytes(content)
    capsys.readouterr()
    assert main(["learn", "--spam", str(bad)]) == 2
    assert message in capsys.readouterr().err
    assert main(["train", "--ham", str(bad), "--spam", str(base[1]), "--model", str(env / "x.joblib")]) == 2
    assert message in capsys.readouterr().err


def test_empty_inputs_and_contradictions_are_errors(base: tuple[Path, Path], corpus: Path, env: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _train(base, env / "models")
    (env / "empty").mkdir()
    (env / "empty.mbox").write_bytes(b"")
    capsys.readouterr()
    assert main(["learn", "--spam", str(env / "empty")]) == 2
    assert "no messages in this folder" in capsys.readouterr().err
    assert main(["learn", "--spam", str(env / "empty.mbox")]) == 2
    assert "empty, no message in it" in capsys.readouterr().err
    one = str(corpus_files(corpus, "ham", "test")[0])
    assert main(["learn", "--spam", one, "--ham", one]) == 2
    assert "the same message is given as spam" in capsys.readouterr().err
    assert main(["train", "--ham", str(base[0]), one, "--spam", str(base[1]), one,
                 "--model", str(env / "x.joblib")]) == 2
    assert "given as ham" in capsys.readouterr().err
    assert main(["learn"]) == 2
    assert "nothing to learn" in capsys.readouterr().err
    assert main(["learn", "--forget-by", "nobody"]) == 2
    assert "no marks by nobody" in capsys.readouterr().err
    assert not candidate_path(env / "models" / "model.joblib").exists()  # neither wrote a candidate


def test_one_user_feeding_500_spam_as_not_spam_does_not_reach_the_live_model(
        corpus: Path, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = env / "train"
    for label, n in (("ham", 600), ("spam", 300)):
        (train / label).mkdir(parents=True)
        for i, path in enumerate(corpus_files(corpus, label, "train")[:n]):
            (train / label / f"{i}.eml").write_bytes(path.read_bytes())
    live = env / "models" / "model.joblib"
    assert main(["train", "--ham", str(train / "ham"), "--spam", str(train / "spam"), "--holdout", "0.25"]) == 0
    before = _files(live)
    poison = env / "poison"
    poison.mkdir()
    for i, path in enumerate(corpus_files(corpus, "spam", "train")[300:800]):
        (poison / f"{i}.eml").write_bytes(path.read_bytes())
    capsys.readouterr()
    assert main(["learn", "--ham", str(poison), "--source", "web", "--who", "mallory"]) == 0
    got = capsys.readouterr()
    distinct = len({ledger.content_hash(tokenize(f.read_bytes())) for f in poison.iterdir()})
    assert f"{distinct} new" in got.out and "held back" in got.err and "misses more spam" in got.err
    assert _files(live) == before  # everyone keeps the model they had
    # and of mallory's 496 marks only the first SHARED_MARKS_PER_USER reach the shared counts at all
    assert distinct > 490 and read_passport(candidate_path(live)).learned_ham == SHARED_MARKS_PER_USER
    assert main(["model", "promote"]) == 1  # asked again: still no
    assert main(["model", "candidates"]) == 0
    assert "held-back" in capsys.readouterr().out
    # the administrator takes mallory's feedback out, and honest feedback is promoted
    honest = str(corpus_files(corpus, "spam", "test")[0])
    assert main(["learn", "--forget-by", "mallory", "--spam", honest, "--who", "alice"]) == 0
    got = capsys.readouterr()
    assert "promoted" in got.out, got.err
    assert _files(live) != before
    assert (read_passport(live).learned_ham, read_passport(live).learned_spam) == (0, 1)
    capsys.readouterr()
    assert main(["model", "rollback"]) == 0
    assert _files(live) == before
    assert "1 mark(s) the rolled-back model had learned are set aside" in capsys.readouterr().out
    assert main(["learn", "--spam", honest, "--who", "alice"]) == 0  # the same mark again: set aside still
    assert _files(live) == before and read_passport(candidate_path(live)).learned_spam == 0


def test_jobs_learn_applies_web_marks_and_imap_moves_once(base: tuple[Path, Path], corpus: Path, env: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The hourly `stronghold jobs` takes what users marked (web) and moved (IMAP) into the model."""
    live = _train(base, env / "models")
    spam = [str(p) for p in corpus_files(corpus, "spam", "test")[:4]]
    assert main(["learn", "--record-only", "--source", "imap", "--who", "b@example.com", "--spam", *spam]) == 0
    raw = corpus_files(corpus, "ham", "test")[0].read_bytes()
    verdict = Verdict(Action.TAG, Category.SPAM, 0.95, 0.9, None, (), ())
    with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store, store.session() as s:
        user = accounts.add_user(s, "c@example.com", "a long enough passphrase")
        [mid] = messagelog.write(s, [messagelog.entry(Envelope("x@y.example", ("c@example.com",)), parse(raw),
                                                      verdict, tokens=tokenize(raw))])
        messagelog.set_feedback(s, mid, user.id, is_spam=False)
    capsys.readouterr()
    assert main(["jobs", "--only", "learn"]) == 0
    out = capsys.readouterr().out
    assert "learn: 1 web mark(s); personal layers: 2 rebuilt; learned 5 (took out 0)" in out, out
    assert "candidate promoted" in out or "candidate held back" in out
    p = read_passport(candidate_path(live))
    assert (p.learned_ham, p.learned_spam) == (1, 4)
    written = candidate_path(live).stat().st_mtime_ns
    assert main(["jobs", "--only", "learn"]) == 0  # applied once: the next run finds nothing new
    assert "learn: 0 web mark(s); personal layers: unchanged; nothing new for the shared model" in \
        capsys.readouterr().out  # layers not rewritten either: nodes do not reload unchanged layers
    assert candidate_path(live).stat().st_mtime_ns == written  # and writes no model files
    # a candidate left unjudged (a run that failed while judging, or --no-promote) is judged by the next run
    more = [str(p) for p in corpus_files(corpus, "spam", "test")[4:6]]
    assert main(["learn", "--no-promote", "--spam", *more]) == 0
    capsys.readouterr()
    assert main(["jobs", "--only", "learn"]) == 0
    out = capsys.readouterr().out
    assert "learned 0 (took out 0), candidate promoted" in out or "learned 0 (took out 0), candidate held back" in out
    assert main(["jobs", "--only", "learn"]) == 0  # judged once
    assert "nothing new for the shared model" in capsys.readouterr().out


def test_jobs_rebuild_a_layer_after_its_user_withdrew_a_mark(base: tuple[Path, Path], corpus: Path, env: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An IMAP user moving a message back (`learn --record-only --forget`) changes nothing in the
    shared model here (the operator took it out already), yet the next `jobs` rebuilds their layer
    without it, and the run after that finds nothing to do."""
    from stronghold.personal import Layer
    from stronghold.store import layers

    _train(base, env / "models")
    kept, withdrawn = (str(p) for p in corpus_files(corpus, "spam", "test")[:2])
    imap = ["learn", "--record-only", "--source", "imap", "--who", "b@example.com"]
    assert main([*imap, "--spam", kept, withdrawn]) == 0
    assert main(["learn", "--record-only", "--forget", withdrawn]) == 0  # the operator: shared model only
    assert main(["jobs", "--only", "learn"]) == 0
    assert "personal layers: 1 rebuilt" in capsys.readouterr().out

    def layer() -> tuple[int, set[int]]:
        with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store, store.session() as s:
            [(scope, data, _)] = layers.stored(s)
            messages = {scope: n for scope, n in s.execute(select(PersonalLayerRow.scope, PersonalLayerRow.messages))}
        assert scope == "b@example.com"
        return messages[scope], set(Layer.unpack(data).buckets.tolist())
    only_withdrawn = set(token_indices(sorted(tokenize(Path(withdrawn).read_bytes())))) - \
        set(token_indices(sorted(tokenize(Path(kept).read_bytes()))))
    count, buckets = layer()
    assert count == 2 and only_withdrawn <= buckets
    assert main([*imap, "--forget", withdrawn]) == 0
    capsys.readouterr()
    assert main(["jobs", "--only", "learn"]) == 0
    out = capsys.readouterr().out
    assert "personal layers: 1 rebuilt; nothing new for the shared model" in out, out
    count, buckets = layer()
    assert count == 1 and not only_withdrawn & buckets
    with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store, store.session() as s:
        assert ledger.forgotten_personal(s) == []  # the withdrawn mark's row went with the rebuild
    assert main(["jobs", "--only", "learn"]) == 0
    assert "personal layers: unchanged" in capsys.readouterr().out


def test_one_users_marks_reach_the_shared_model_only_up_to_a_bound() -> None:
    """Each user's first SHARED_MARKS_PER_USER marks (web, IMAP, Junk) count, oldest first; the
    operator's own learning ("cli") and other users' marks are not bounded by them."""
    from stronghold.store.tables import LearnedMessage

    def row(n: int, who: str, source: str = "web", label: bool | None = False) -> LearnedMessage:
        return LearnedMessage(content_hash=f"{who}-{n:04d}", label=label, source=source, who=who,
                              created=float(n), updated=float(n), scope="")
    mallory = [row(n, "mallory") for n in range(3 * SHARED_MARKS_PER_USER)]
    rows = [*mallory, row(1, "alice", "imap", True), *(row(n, "admin", "cli", True) for n in range(100)),
            row(-1, "mallory", "web", None)]  # a withdrawn mark takes no place
    wanted = shared_labels(list(reversed(rows)))
    learned = [h for h, label in wanted.items() if label is not None]
    assert sorted(h for h in learned if h.startswith("mallory")) == \
        [f"mallory-{n:04d}" for n in range(SHARED_MARKS_PER_USER)]  # the oldest ones
    assert wanted["alice-0001"] is True and sum(h.startswith("admin") for h in learned) == 100


def test_jobs_says_what_became_of_a_candidate_back_at_a_judged_model(
        base: tuple[Path, Path], corpus: Path, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Marks withdrawn and given again bring the candidate back to the live model, or to a model held
    back before: neither is judged again, and the summary says so instead of 'nothing new' (it had
    learned or taken something out)."""
    live = _train(base, env / "models")
    trained = read_passport(live)
    a = str(corpus_files(corpus, "spam", "test")[0])
    assert main(["learn", "--no-promote", "--spam", a]) == 0
    held = version_of(read_passport(candidate_path(live)))
    with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store:  # a judgement held it back earlier
        record_event(store, "held-back", held, "jobs", "more false positives on the corpus sample")
    capsys.readouterr()

    assert main(["learn", "--record-only", "--forget", a]) == 0
    assert main(["jobs", "--only", "learn"]) == 0
    assert (f"learned 0 (took out 1), the candidate is the live model {version_of(trained)[:12]} again: "
            "nothing to judge") in capsys.readouterr().out
    assert main(["learn", "--record-only", "--spam", a]) == 0
    assert main(["jobs", "--only", "learn"]) == 0
    assert (f"learned 1 (took out 0), candidate {held[:12]} is a model held back before (") in \
        capsys.readouterr().out
    assert version_of(read_passport(candidate_path(live))) == held and read_passport(live) == trained
    with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store:
        assert [e.action for e in events(store) if e.version == held] == ["held-back"]  # not judged again
    assert main(["jobs", "--only", "learn"]) == 0
    assert "nothing new for the shared model" in capsys.readouterr().out  # and then truly nothing new
    assert main(["learn", "--forget", a]) == 0  # learn says it as well, not "held back"
    got = capsys.readouterr()
    assert f"the candidate is the live model {version_of(trained)[:12]}: nothing to judge" in got.out
    assert "held back" not in got.err


def test_a_users_imap_moves_and_web_marks_are_one_authors(base: tuple[Path, Path], corpus: Path, env: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The IMAP hook names the mailbox (an address); when a user owns it, the move is that user's, as
    their web marks are: one personal layer for their address (there were two, one for the login and
    one for the address, both for the same address, and only one of them applied), and one name for
    --forget-by. An address nobody owns keeps its own name."""
    from stronghold.store import layers

    _train(base, env / "models")
    spam, other = (str(p) for p in corpus_files(corpus, "spam", "test")[:2])
    raw = corpus_files(corpus, "ham", "test")[0].read_bytes()
    verdict = Verdict(Action.TAG, Category.SPAM, 0.95, 0.9, None, (), ())
    with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store, store.session() as s:
        store.upgrade()
        carol = accounts.add_user(s, "carol", "a long enough passphrase")
        accounts.assign_address(s, carol, "c@example.com")
        [mid] = messagelog.write(s, [messagelog.entry(Envelope("x@y.example", ("c@example.com",)), parse(raw),
                                                      verdict, tokens=tokenize(raw))])
        messagelog.set_feedback(s, mid, carol.id, is_spam=False)
    imap = ["learn", "--record-only", "--source", "imap", "--spam"]
    assert main([*imap, spam, "--by", "C@example.com"]) == 0
    assert main([*imap, other, "--by", "nobody@example.com"]) == 0
    assert main(["jobs", "--only", "learn"]) == 0
    with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store, store.session() as s:
        assert sorted((r.source, r.who) for r in ledger.rows(s)) == [
            ("imap", "carol"), ("imap", "nobody@example.com"), ("web", "carol")]
        assert sorted((r.source, r.who) for r in ledger.rows(s, "carol")) == [("imap", "carol"), ("web", "carol")]
        assert sorted((scope, targets) for scope, _, targets in layers.stored(s)) == [
            ("carol", ["c@example.com"]), ("nobody@example.com", ["nobody@example.com"])]
    capsys.readouterr()
    assert main(["learn", "--forget-by", "carol"]) == 0
    assert "2 forgotten" in capsys.readouterr().out  # her move and her mark, by one name


def test_an_imap_user_is_one_author_however_the_name_is_cased(corpus: Path, env: Path) -> None:
    """Mailbox names in upper and lower case are one mailbox: one per-user bound, one personal layer
    (each spelling used to be an author of its own, with a bound of its own)."""
    spam = [str(p) for p in corpus_files(corpus, "spam", "test")[:3]]
    for by, path in zip(("Mallory@Example.com", "MALLORY@example.com", "mallory@example.com"), spam, strict=True):
        assert main(["learn", "--record-only", "--source", "imap", "--by", by, "--spam", path]) == 0
    with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store, store.session() as s:
        assert {r.who for r in ledger.rows(s)} == {"mallory@example.com"}
        assert ledger.personal(s).keys() == {"mallory@example.com"}


@pytest.mark.parametrize("damage", ["truncated counts", "deleted"])
def test_a_broken_or_lost_candidate_is_rebuilt_from_the_live_model(
        damage: str, base: tuple[Path, Path], corpus: Path, env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The candidate is derived from the live model and the ledger: a corrupt or deleted one is rebuilt
    by the next `learn`, which must not demand a retraining."""
    a, b, c = (str(p) for p in corpus_files(corpus, "spam", "test")[:3])
    live = _train(base, env / "models")
    assert main(["learn", "--no-promote", "--spam", a]) == 0
    assert main(["model", "promote", "--force"]) == 0  # the live model holds marks: not a fresh start
    assert main(["learn", "--no-promote", "--spam", b]) == 0
    cand = candidate_path(live)
    if damage == "deleted":
        for path in (cand, table_path(cand), passport_path(cand)):
            path.unlink()
    else:
        cand.write_bytes(cand.read_bytes()[:1000])
        capsys.readouterr()  # what the commands tell an operator who looks first: learn, not train
        assert main(["model", "candidates"]) == 0
        shown = capsys.readouterr().out
        assert "'stronghold learn' rebuilds it" in shown and "stronghold train" not in shown
        assert main(["model", "promote"]) == 2
        shown = capsys.readouterr().err
        assert "'stronghold learn' rebuilds it" in shown and "stronghold train" not in shown
    assert main(["learn", "--no-promote", "--spam", c]) == 0
    p = read_passport(cand)
    assert (p.learned_ham, p.learned_spam) == (0, 3)
    capsys.readouterr()

    monkeypatch.setenv("STRONGHOLD_DATA_DIR", str(env / "data2"))  # the same marks learned with no mishap
    live2 = _train(base, env / "models2")
    assert main(["learn", "--no-promote", "--model", str(live2), "--spam", a, b, c]) == 0
    assert _files(cand) == _files(candidate_path(live2))


def test_learning_on_a_second_node_says_to_leave_it_to_one(base: tuple[Path, Path], corpus: Path, env: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Two nodes, each its own models folder, one database: the hourly job learning on both moves the
    one ledger for both, and the second then fails.  It must say that another node learns and how to
    leave it to that one, not only to retrain (which would take the marks out of the first one's ledger)."""
    live = _train(base, env / "models")
    shutil.copytree(live.parent, env / "models-b")  # node B, installed with the same model
    spam = [str(p) for p in corpus_files(corpus, "spam", "test")[:6]]
    outcomes = []
    for marks in (spam[:3], spam[3:]):
        assert main(["learn", "--record-only", "--source", "imap", "--by", "b@example.com", "--spam", *marks]) == 0
        for models in ("models", "models-b"):
            monkeypatch.setenv("STRONGHOLD_MODELS_DIR", str(env / models))
            capsys.readouterr()
            code = main(["jobs", "--only", "learn"])
            outcomes.append((models, code, capsys.readouterr().out))
    assert [code for _, code, _ in outcomes[::2]] == [0, 0]  # node A, the learner, every hour
    failed = [out for _, code, out in outcomes if code]
    assert failed and all("if another node learns for this database, leave 'learn' to that one node" in out
                          for out in failed), outcomes


def test_a_user_past_the_bound_cannot_unlearn_what_others_taught(base: tuple[Path, Path], corpus: Path, env: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Mallory spends her bound on ham, then moves the operator's learned spam out of Junk: her marks
    used to take the operator's out of the shared model, one each, without limit (11 of 11 here,
    once past her bound).  No user's mark overrides one the model holds from another author now,
    within the bound (bob) or past it; their own layers take their labels, and the operator's own
    learning still overrides users'."""
    live = _train(base, env / "models")
    spam = [str(p) for p in corpus_files(corpus, "spam", "test")[:12]]
    ham = [str(p) for p in corpus_files(corpus, "ham", "test")[:SHARED_MARKS_PER_USER]]
    assert main(["learn", "--no-promote", "--spam", *spam, "--by", "postmaster"]) == 0
    taught = read_passport(candidate_path(live)).learned_spam
    imap = ["learn", "--record-only", "--source", "imap", "--by", "mallory@example.com"]
    assert main([*imap, "--ham", *ham]) == 0
    assert main(["jobs", "--only", "learn"]) == 0
    assert main([*imap, "--ham", *spam[1:]]) == 0
    assert main(["learn", "--record-only", "--source", "web", "--by", "bob", "--ham", spam[0]]) == 0
    assert main(["jobs", "--only", "learn"]) == 0
    p = read_passport(candidate_path(live))
    assert (p.learned_spam, p.learned_ham) == (taught, SHARED_MARKS_PER_USER)
    with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store, store.session() as s:
        assert ledger.personal(s, ["bob"])["bob"][1] == [False]  # bob's own layer has his "not spam"
    assert main(["learn", "--no-promote", "--ham", spam[0], "--by", "postmaster"]) == 0
    p = read_passport(candidate_path(live))
    assert (p.learned_spam, p.learned_ham) == (taught - 1, SHARED_MARKS_PER_USER + 1)


def test_marks_past_the_bound_do_not_judge_candidates(base: tuple[Path, Path], corpus: Path, env: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Alice moves spam the model missed into Junk; mallory, her bound spent on ham, moves the rest
    of that spam out of Junk.  Her marks past the bound teach the shared model nothing, and they no
    longer judge it either: they were the "recent feedback" that held back alice's correction (the
    candidate caught the spam mallory called ham: "more errors on recent feedback")."""
    live = _train(base, env / "models")
    model = Model.load(live)
    missed = [str(p) for p in corpus_files(corpus, "spam", "test")
              if model.score(tokenize(p.read_bytes())).probability < model.spam_threshold]
    ham = [str(p) for p in corpus_files(corpus, "ham", "test")[:SHARED_MARKS_PER_USER]]
    imap = ["learn", "--record-only", "--source", "imap", "--by"]
    assert main([*imap, "mallory@example.com", "--ham", *ham, *missed[1:200:2]]) == 0
    assert main([*imap, "alice@example.com", "--spam", *missed[0:50:2]]) == 0
    capsys.readouterr()
    assert main(["jobs", "--only", "learn"]) == 0
    out = capsys.readouterr().out
    assert "candidate promoted" in out and f"recent feedback: live FP 0/{SHARED_MARKS_PER_USER}," in out, out
    assert version_of(read_passport(live)) == version_of(read_passport(candidate_path(live)))


def test_the_imap_hook_reads_no_more_than_the_filter_would_score(env: Path) -> None:
    """A mail user can APPEND a message of any size into Junk; the hook piped it to `learn`, which read
    it whole.  It reads up to ``max_message_bytes`` now: a message of that size is recorded, one byte
    more is refused (the filter never scores such mail whole)."""
    limit = 64 * 1024
    head = b"From: shop@x.example\nTo: b@example.com\nSubject: pills\n\n"

    def hook(size: int) -> subprocess.CompletedProcess[bytes]:
        body = b"cheap pills now\n" * (size // 16 + 1)
        return subprocess.run([sys.executable, "-m", "stronghold.cli", "learn", "--source", "imap", "--record-only",
                               "--by", "b@example.com", "--spam", "-"], input=(head + body)[:size],
                              env={**os.environ, "STRONGHOLD_MAX_MESSAGE_BYTES": str(limit)},
                              capture_output=True, timeout=120, check=False)
    over = hook(limit + 1)
    assert over.returncode == 2 and b"over max_message_bytes (65536 bytes)" in over.stderr, over.stderr
    done = hook(limit)
    assert done.returncode == 0 and b"ledger: 1 new" in done.stdout, done.stderr
    with Store(f"sqlite:///{env / 'data' / 'stronghold.db'}") as store, store.session() as s:
        assert len(ledger.rows(s)) == 1
