"""Shared fixtures: corpus, a trained model, real clamd, PostgreSQL, Dovecot, Postfix + milter stacks."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.localdovecot import Dovecot
from devtools.localstack import TEST_SIGNATURES, Clamd, Postfix, free_port
from stronghold import config as config_mod
from stronghold.classifier import Model
from stronghold.config import Config
from stronghold.store.db import Store
from stronghold.training import collect, train_model
from tests.harness.dnsserver import LoopbackDns, publish_test_zones
from tests.harness.imapbox import Mailboxes
from tests.harness.milterproc import MilterProcess
from tests.harness.postgres import PostgresCluster
from tests.harness.smtpsink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "data"


# The real part each shared fixture starts or reads, named by the marker a test using it must carry
# (setup.cfg lists the markers; `pytest -m "not clamd"` must deselect every test that needs clamd).
FIXTURE_MARKERS = {"corpus": "corpus", "clamd": "clamd", "postgres": "postgres", "dovecot": "dovecot",
                   "stack": "postfix", "dovecot_stack": "postfix", "browser": "browser"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run a test that uses a real part through a shared fixture without its marker."""
    missing = []
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        needed = {FIXTURE_MARKERS[name] for name in getattr(item, "fixturenames", ()) if name in FIXTURE_MARKERS}
        if needed - marks:
            missing.append(f"{item.nodeid}: needs marker(s) {', '.join(sorted(needed - marks))}")
    if missing:
        raise pytest.UsageError("tests without the marker of a real part they use:\n" + "\n".join(missing))


def shared_tmpdir(prefix: str) -> Path:
    """A temp folder other users (Postfix) can traverse; pytest's are 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


@pytest.fixture(autouse=True)
def _state_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that names no config of its own gets one with temporary folders, never the checkout's
    models/ and var/ (a `jobs` test once promoted a developer's stale candidate model into models/).
    A config file (``--config``) and STRONGHOLD_* variables a test gives still win."""
    base = tmp_path_factory.getbasetemp() / "unnamed-state"
    config = base / "stronghold.toml"
    if not config.exists():
        base.mkdir(parents=True, exist_ok=True)
        config.write_text(f'data_dir = "{base / "data"}"\nmodels_dir = "{base / "models"}"\n')
    monkeypatch.setenv("STRONGHOLD_CONFIG", str(config))


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (CORPUS / "index.test").exists():
        pytest.fail("the corpus is missing: run 'make corpus' (python3 corpus/fetch.py)")
    return CORPUS


@pytest.fixture(scope="session")
def corpus_raws(corpus: Path) -> list[bytes]:
    """The bytes of every corpus message, in a fixed order."""
    paths = sorted(p for folder in sorted(corpus.iterdir()) if folder.is_dir() for p in folder.iterdir()
                   if p.is_file())
    assert len(paths) > 6000
    return [p.read_bytes() for p in paths]


def mbox_stripped(raw: bytes) -> bytes:
    """The message without its mbox ``From `` line, as ``message.parse`` reads it."""
    return raw.split(b"\n", 1)[1] if raw.startswith(b"From ") and b"\n" in raw else raw


def corpus_files(corpus: Path, label: str, part: str = "test") -> list[Path]:
    lines = (corpus / f"index.{part}").read_text().split("\n")
    return [corpus / line.split(" ", 1)[1] for line in lines if line.startswith(label + " ")]


@pytest.fixture(scope="session")
def models_dir(corpus: Path) -> Iterator[Path]:
    """A model trained on the standard training split, in a folder of its own."""
    home = shared_tmpdir("stronghold-models-")
    model, _ = train_model(list(collect(index=corpus / "index.train")))
    model.save(home / "model.joblib")
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def model(models_dir: Path) -> Model:
    return Model.load(models_dir / "model.joblib")


@pytest.fixture(scope="session")
def clamd() -> Iterator[Clamd]:
    home = shared_tmpdir("stronghold-clamd-")
    daemon = Clamd(home, TEST_SIGNATURES)
    daemon.start()
    yield daemon
    daemon.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def test_dns() -> Iterator[LoopbackDns]:
    """A DNS server on loopback with the test domains (SPF, DKIM keys, DMARC)."""
    home = Path(tempfile.mkdtemp(prefix="stronghold-dns-"))
    server = LoopbackDns()
    server.keys = publish_test_zones(server, home)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


def dns_settings(server: LoopbackDns, timeout: float = 1.0) -> dict[str, object]:
    return {"dns_nameservers": "127.0.0.1", "dns_port": server.port, "dns_timeout": timeout}


_db_counter = iter(range(1, 1_000_000))
STORE_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class StoreTemplates:
    """Stores migrated by ``Store.upgrade`` (then filled by ``prepare``, if given) once a session;
    each test gets a copy: the SQLite file copied, the PostgreSQL database created from it with
    CREATE DATABASE ... TEMPLATE (nobody connects to a template again).  Migrating each test's
    database anew cost 0.07 s on SQLite and 0.2-0.4 s on PostgreSQL; seeding the web UI's users
    (three argon2 hashes) another 0.5 s."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.made: dict[tuple[str, str], tuple[str, str, object]] = {}

    def get(self, kind: str, request: pytest.FixtureRequest,
            prepare: Callable[[Store], object] | None) -> tuple[str, str, object]:
        """(the template's file or database name, its revision, what ``prepare`` returned)."""
        key = (kind, prepare.__qualname__ if prepare else "")
        if key not in self.made:
            name = f"template{os.getpid()}_{len(self.made)}"
            if kind == "sqlite":
                where = str(self.home / f"{name}.db")
                url = f"sqlite:///{where}"
            else:
                where = name
                url = request.getfixturevalue("postgres").create_database(name)
            db = Store(url)
            revision = db.upgrade()
            made = prepare(db) if prepare else None
            db.dispose()  # on SQLite the last connection checkpoints the WAL into the file
            assert not Path(f"{where}-wal").exists()
            self.made[key] = (where, revision, made)
        return self.made[key]


@pytest.fixture(scope="session")
def store_templates(tmp_path_factory: pytest.TempPathFactory) -> StoreTemplates:
    return StoreTemplates(tmp_path_factory.mktemp("store-templates"))


def fresh_store(request: pytest.FixtureRequest, tmp_path: Path,
                prepare: Callable[[Store], object] | None = None) -> tuple[Store, object]:
    """A fresh, migrated store of the kind ``request.param`` names (a copy of the session's
    template), and what ``prepare`` returned when it filled the template."""
    templates: StoreTemplates = request.getfixturevalue("store_templates")
    where, revision, made = templates.get(request.param, request, prepare)
    if request.param == "sqlite":
        path = tmp_path / "store.db"
        shutil.copyfile(where, path)
        url = f"sqlite:///{path}"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        url = cluster.create_database(f"t{os.getpid()}_{next(_db_counter)}", template=where)
    db = Store(url)
    assert db.upgrade() == revision  # the copy is at the newest revision: nothing left to migrate
    return db, made


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, migrated store: SQLite file or a new PostgreSQL database."""
    db, _ = fresh_store(request, tmp_path)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def module_sink() -> Iterator[SmtpSink]:
    s = SmtpSink()
    yield s
    s.close()


@pytest.fixture
def sink(module_sink: SmtpSink) -> SmtpSink:
    """An SMTP sink shared by a module, emptied for each test (item ids restart with each database)."""
    module_sink.messages.clear()
    return module_sink


@pytest.fixture
def make_config(tmp_path: Path):
    def build(**overrides: object) -> Config:
        base: dict[str, object] = {"data_dir": tmp_path / "data", "models_dir": tmp_path / "models"}
        base.update(overrides)
        return config_mod.load(None, base, environ={})
    return build


# Mailbox users of the shared Dovecot (fixture ``dovecot``); passwords in dovecot.users.
MAIL_USERS = ("m1@example.com", "m2@example.com", "m3@example.com", "m4@example.com",
              "postmaster@example.com")


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """One Dovecot for the session: IMAP on dovecot.imap_port, LMTP for Postfix, Sieve into Junk.

    Mailboxes are shared by every test of the session: find your own message
    by its X-Test-Id (``mailboxes.wait_for(user, tid)``).
    """
    home = shared_tmpdir("stronghold-dovecot-")
    server = Dovecot(home, {address: secrets.token_urlsafe(12) for address in MAIL_USERS})
    server.start()
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def mailboxes(dovecot: Dovecot) -> Mailboxes:
    """Read users' folders over IMAP: ``mailboxes.folders("m1@example.com") -> {folder: [raw]}``."""
    return Mailboxes(dovecot.imap_port, dovecot.users)


class Stack:
    """sink (or Dovecot) <- Postfix(milter) <- test; the milter is a real `stronghold milter` process.

    With ``dovecot`` given, Postfix delivers the users of that Dovecot over LMTP
    (other addresses are refused at RCPT) instead of relaying to the sink.
    ``postfix.release_port`` is the milter-less listener releases go to.
    """

    def __init__(self, home: Path, models_dir: Path, clamd_address: str, db_url: str,
                 dovecot: Dovecot | None = None, **settings: object) -> None:
        self.home = home
        self.sink = SmtpSink()
        self.db_url = db_url
        self.store = Store(db_url)
        self.store.upgrade()
        defaults: dict[str, object] = {
            "data_dir": str(home / "milter"), "models_dir": str(models_dir),
            "milter_socket": f"unix:{home / 'milter' / 'milter.sock'}",
            "clamd_socket": clamd_address, "clamd_timeout": 10, "database_url": db_url,
            "lists_refresh_seconds": 0, "milter_workers": 2, "max_message_bytes": 2_000_000,
        }
        defaults.update(settings)
        (home / "milter").mkdir(parents=True, exist_ok=True)
        os.chmod(home / "milter", 0o755)
        self.milter = MilterProcess(home, defaults)
        self.dovecot = dovecot
        if dovecot is None:
            self.postfix = Postfix(home / "postfix", free_port(), milter=self.milter.address,
                                   relay=f"127.0.0.1:{self.sink.port}")
        else:
            self.postfix = Postfix(home / "postfix", free_port(), milter=self.milter.address,
                                   lmtp=dovecot.lmtp_address, mailboxes=dovecot.addresses)

    def start(self) -> Stack:
        self.milter.start()
        self.postfix.start()
        return self

    def stop(self) -> None:
        self.postfix.stop()
        self.milter.stop()
        self.sink.close()
        self.store.dispose()


@pytest.fixture(scope="module")
def stack(models_dir: Path, clamd: Clamd, test_dns: LoopbackDns) -> Iterator[Stack]:
    home = shared_tmpdir("stronghold-stack-")
    s = Stack(home, models_dir, clamd.address, f"sqlite:///{home / 'store.db'}",
              **dns_settings(test_dns)).start()
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot_stack(models_dir: Path, clamd: Clamd, dovecot: Dovecot) -> Iterator[Stack]:
    """Postfix + milter delivering over LMTP into the session's Dovecot; spam is tagged, never
    rejected (spam_action and spam_action_high "tag"), so Sieve files it into Junk."""
    home = shared_tmpdir("stronghold-mailstack-")
    s = Stack(home, models_dir, clamd.address, f"sqlite:///{home / 'store.db'}", dovecot=dovecot,
              spam_action="tag", spam_action_high="tag").start()
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)
