"""`stronghold` in-process: train, scan, learn, model info, users and lists, errors."""

from __future__ import annotations

import json
import mailbox
import math
import os
from pathlib import Path

import pytest

from stronghold.cli import main
from tests.conftest import corpus_files


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STRONGHOLD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STRONGHOLD_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("STRONGHOLD_CLAMD_SOCKET", "none")
    return tmp_path


@pytest.fixture
def small_corpus(corpus: Path, env: Path) -> tuple[Path, Path]:
    """A maildir of ham and an mbox of spam, from the training split."""
    ham_dir = env / "ham"
    box = mailbox.Maildir(str(ham_dir), create=True)
    for path in corpus_files(corpus, "ham", "train")[:150]:
        box.add(path.read_bytes())
    spam_mbox = env / "spam.mbox"
    mb = mailbox.mbox(str(spam_mbox), create=True)
    for path in corpus_files(corpus, "spam", "train")[:80]:
        mb.add(path.read_bytes())
    mb.close()
    return ham_dir, spam_mbox


@pytest.mark.corpus
def test_train_scan_learn_info(small_corpus: tuple[Path, Path], corpus: Path, env: Path,
                               capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRONGHOLD_SPAM_ACTION_HIGH", "tag")
    ham, spam = small_corpus
    assert main(["train", "--ham", str(ham), "--spam", str(spam), "--holdout", "0.2"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "ham +" in out and "(1-AUC)%" in out
    assert "spam threshold" in out and "spam messages (fewer than 500)" in captured.err
    spam_file = corpus_files(corpus, "spam")[0]
    ham_file = corpus_files(corpus, "ham")[0]
    assert main(["scan", "--classifier-only", "--format", "tsv", str(spam_file), str(ham_file)]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    scores = {line.split("\t")[2]: float(line.split("\t")[0]) for line in lines}
    assert scores[str(spam_file)] > scores[str(ham_file)]
    for line in lines:  # full precision: the printed probability is the float itself, log-odds beside
        probability, logodds, _ = line.split("\t")
        assert repr(float(probability)) == probability
        assert float(logodds) == pytest.approx(math.log(float(probability) / (1 - float(probability))))
    assert main(["scan", "--format", "json", "--rcpt", "someone@example.com", str(spam_file)]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["score"] == scores[str(spam_file)] and result["reasons"]  # the engine's score is the model's
    assert [r["address"] for r in result["recipients"]] == ["someone@example.com"]
    assert result["action"] == ("tag" if result["score"] >= result["threshold"] else "accept")
    assert main(["model", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["trained_ham"] + info["trained_spam"] > 150
    assert 0.5 <= info["spam_threshold"] < 1 and info["versions"]["scikit-learn"]
    assert main(["learn", "--spam", str(ham_file)]) == 0
    out = capsys.readouterr().out
    assert "holds 1 learned spam + 0 learned ham" in out and "promoted" in out
    assert main(["model", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["learned_spam"] == 1


def _tiny_index(tmp_path: Path) -> Path:
    """Six ham and six spam under ``tmp_path/m``, and an index naming them by relative paths."""
    (tmp_path / "m").mkdir()
    for i in range(6):
        (tmp_path / "m" / f"h{i}").write_text(f"Subject: meeting {i}\n\nagenda minutes project {i}\n")
        (tmp_path / "m" / f"s{i}").write_text(f"Subject: WIN cash {i}\n\nfree money click now {i}\n")
    index = tmp_path / "index"
    index.write_text("".join(f"ham m/h{i}\nspam m/s{i}\n" for i in range(6)))
    return index


def test_index_with_relative_paths(tmp_path: Path, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = _tiny_index(tmp_path)
    assert main(["train", "--index", str(index), "--model", str(tmp_path / "x.joblib")]) == 0
    assert "6 ham + 6 spam" in capsys.readouterr().out


def test_train_refuses_to_clobber_what_is_not_a_model(tmp_path: Path, env: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`train --model` overwrites a model it trained before, never a foreign file or its own passport."""
    index = _tiny_index(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("the operator's notes\n")
    settings = tmp_path / "app.json"
    settings.write_text('{"keep": true}\n')
    for model, message in ((notes, "refusing to overwrite"), (tmp_path / "app.joblib", "refusing to overwrite"),
                           (tmp_path / "x.json", "may not end in .json"),
                           (tmp_path / "x.npy", "may not end in .npy")):
        assert main(["train", "--index", str(index), "--model", str(model)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert notes.read_text() == "the operator's notes\n" and not (tmp_path / "notes.json").exists()
    assert settings.read_text() == '{"keep": true}\n' and not (tmp_path / "app.npy").exists()
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.npy").exists()
    ours = tmp_path / "ours.joblib"
    for _ in range(2):  # a model it trained itself is retrained in place
        assert main(["train", "--index", str(index), "--model", str(ours)]) == 0
        assert "6 ham + 6 spam" in capsys.readouterr().out
    assert main(["scan", str(tmp_path / "m" / "s1"), "--model", str(ours)]) == 0


@pytest.mark.parametrize("argv, message", [
    (["train", "--ham", "/nonexistent"], "needs both --ham and --spam"),
    (["train", "--ham", "/nonexistent", "--spam", "/nonexistent"], "no such file"),
    (["scan", "/etc/hostname", "--model", "/nonexistent/model.joblib"], "no model at"),
    (["scan"], "give message files"),
    (["train", "--index", "/nonexistent", "--model", "/"], "is a folder"),
    (["train", "--index", "/nonexistent", "--model", "/etc/hostname/m.joblib"], "cannot write the model into"),
    (["list", "rm"], "say which entry"),
    (["list", "rm", "block"], "say which entry"),
    (["list", "import", "/nonexistent.csv"], "No such file"),
    (["list", "import", "/"], "Is a directory"),
    (["list", "import", "NOT_UTF8"], "is not UTF-8"),
])
def test_errors_are_one_line_and_nonzero(argv: list[str], message: str, env: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "latin1.csv").write_bytes(b"block,@caf\xe9.example\n")
    argv = [str(tmp_path / "latin1.csv") if a == "NOT_UTF8" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_learn_from_feedback_with_none_waiting_says_so(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing pending is not a usage mistake: the message must not tell the operator to add --from-feedback."""
    from stronghold.classifier import Model
    Model.train([{"meeting", "agenda"}] * 4 + [{"free", "money"}] * 4,
                [False] * 4 + [True] * 4).save(env / "models" / "model.joblib")
    assert main(["learn", "--from-feedback"]) == 2
    err = capsys.readouterr().err
    assert "no feedback from the web UI is waiting" in err and "give --spam" not in err


def test_one_class_corpus_is_refused(tmp_path: Path, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "1").write_text("Subject: a\n\nb\n")
    index = tmp_path / "index"
    index.write_text("ham h/1\n")
    assert main(["train", "--index", str(index)]) == 2
    assert "one class is missing" in capsys.readouterr().err


def test_users_and_lists_from_the_cli(env: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PW", "a long enough password")
    assert main(["user", "add", "olga", "--password-env", "PW", "--address", "olga@example.com"]) == 0
    assert main(["list", "add", "block", "@junk.example", "--owner", "olga@example.com"]) == 0
    assert main(["list", "add", "block", "@junk.example", "--owner", "olga@example.com"]) == 2
    assert "already on the block list" in capsys.readouterr().err
    csv_file = env / "in.csv"
    csv_file.write_text("allow,friend@pal.example,\nblock,not valid,\n")
    assert main(["list", "import", str(csv_file), "--owner", "olga@example.com"]) == 1  # all or nothing
    assert "nothing imported" in capsys.readouterr().out
    csv_file.write_text("allow,friend@pal.example,\n")
    assert main(["list", "import", str(csv_file), "--owner", "olga@example.com"]) == 0
    assert main(["list", "export", "--owner", "olga@example.com"]) == 0
    out = capsys.readouterr().out
    assert "block,'@junk.example" in out and "allow,friend@pal.example" in out
    assert main(["list", "rm", "block", "@junk.example", "--owner", "olga@example.com"]) == 0
    capsys.readouterr()
    assert main(["user", "address", "olga", "--add", "o.second@example.com"]) == 0
    assert capsys.readouterr().out == "olga: o.second@example.com, olga@example.com\n"  # what it holds now
    assert main(["user", "address", "olga", "--rm", "o.second@example.com"]) == 0
    assert capsys.readouterr().out == "olga: olga@example.com\n"
    assert main(["user", "disable", "olga"]) == 0
    assert main(["user", "ls"]) == 0
    assert "olga\tuser disabled\tolga@example.com" in capsys.readouterr().out


def test_user_role_changes_a_role_but_never_the_last_administrators(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PW", "a long enough password")
    assert main(["user", "add", "root", "--admin", "--password-env", "PW"]) == 0
    assert main(["user", "add", "rita", "--password-env", "PW"]) == 0
    assert main(["user", "role", "root", "user"]) == 2  # the only administrator
    assert "last enabled administrator" in capsys.readouterr().err
    assert main(["user", "role", "rita", "admin"]) == 0
    assert main(["user", "role", "root", "user"]) == 0
    capsys.readouterr()
    assert main(["user", "ls"]) == 0
    roles = dict(ln.split("\t")[:2] for ln in capsys.readouterr().out.splitlines())
    assert roles == {"rita": "admin", "root": "user"}
    assert main(["user", "role", "rita", "user"]) == 2  # the only one again


def test_list_trust_without_authentication_is_shown_with_a_warning(env: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "add", "allow", "boss@trusted.example", "--owner", "pia@example.com"]) == 0
    assert main(["list", "add", "allow", "old@legacy.example", "--owner", "pia@example.com",
                 "--trust-unauthenticated"]) == 0
    assert main(["list", "add", "block", "@x.example", "--trust-unauthenticated"]) == 2
    capsys.readouterr()
    assert main(["list", "ls", "--owner", "pia@example.com"]) == 0
    got = capsys.readouterr()
    lines = {ln.split("\t")[2]: ln for ln in got.out.splitlines()}
    assert "TRUSTED WITHOUT AUTHENTICATION" in lines["old@legacy.example"]
    assert "TRUSTED" not in lines["boss@trusted.example"]
    assert "match only authenticated senders" in got.err
    entry_id = lines["boss@trusted.example"].split("\t")[0]
    assert main(["list", "trust", entry_id, "--owner", "pia@example.com"]) == 0
    assert main(["list", "trust", entry_id, "--owner", "someone@else.example"]) == 2  # not that owner's
    capsys.readouterr()
    main(["list", "ls", "--owner", "pia@example.com"])
    assert "TRUSTED WITHOUT" in next(ln for ln in capsys.readouterr().out.splitlines() if "boss@" in ln)


def test_a_database_that_is_down_is_one_line_not_a_migration(env: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STRONGHOLD_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert main(["user", "ls"]) == 2
    err = capsys.readouterr().err
    assert "database unusable" in err and "migration" not in err and "Traceback" not in err


def test_index_lines_may_name_files_whose_names_are_not_utf8(tmp_path: Path, env: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m").mkdir()
    lines = b""
    for i in range(6):
        ham = os.fsencode(tmp_path / "m") + b"/h\xe9t\xe9" + str(i).encode()  # Latin-1 bytes in the name
        Path(os.fsdecode(ham)).write_text(f"Subject: meeting {i}\n\nagenda minutes project {i}\n")
        (tmp_path / "m" / f"s{i}").write_text(f"Subject: WIN cash {i}\n\nfree money click now {i}\n")
        lines += b"ham " + ham + b"\n" + f"spam m/s{i}\n".encode()
    (tmp_path / "index").write_bytes(lines)
    assert main(["train", "--index", str(tmp_path / "index"), "--model", str(tmp_path / "x.joblib")]) == 0
    assert "6 ham + 6 spam" in capsys.readouterr().out


def test_wide_block_entries_are_refused_unless_forced(env: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """As the web UI asks first: a block entry on a hosted domain, the owner's own address, a
    user's address (global list) or a public suffix is refused with one line, added with --force."""
    monkeypatch.setenv("PW", "a long enough password")
    assert main(["user", "add", "rita", "--password-env", "PW", "--address", "rita@example.com"]) == 0
    capsys.readouterr()
    refused = [(["block", "@example.com"], "domain this site hosts"),
               (["block", "rita@example.com", "--owner", "rita@example.com"], "address whose list this is"),
               (["block", "rita@example.com"], "address of a user of this site"),
               (["block", "*.co.uk", "--owner", "rita@example.com"], "public suffix")]
    for argv, why in refused:
        assert main(["list", "add", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert why in err and "--force" in err and err.count("\n") == 1, err
    assert main(["list", "ls"]) == 0 and main(["list", "ls", "--owner", "rita@example.com"]) == 0
    assert "\tblock\t" not in capsys.readouterr().out  # nothing was added
    assert main(["list", "add", "block", "@spammer.example"]) == 0  # an ordinary entry needs no --force
    assert main(["list", "add", "allow", "@example.com", "--owner", "rita@example.com"]) == 0  # not a block
    csv_file = env / "wide.csv"
    csv_file.write_text("block,*.co.uk,\nblock,@junk.example,\n")
    assert main(["list", "import", str(csv_file), "--owner", "rita@example.com"]) == 1  # all or nothing
    assert "public suffix" in capsys.readouterr().err
    assert main(["list", "import", str(csv_file), "--owner", "rita@example.com", "--force"]) == 0
    assert main(["list", "add", "block", "@example.com", "--force"]) == 0
    capsys.readouterr()
    assert main(["list", "ls", "block"]) == 0 and main(["list", "ls", "block", "--owner", "rita@example.com"]) == 0
    out = capsys.readouterr().out
    assert "\t@example.com\t" in out and "\t*.co.uk\t" in out
