#!/usr/bin/env python3
"""Poisoning through the web UI: one user marks corpus spam "not spam" on the real pages; how much
spam does the shared model still catch?

On a private stack (``devtools.devstack``, what ``make run`` starts, in a temporary folder with its
own ports and a copy of models/), N spam of ``index.train`` are sent through Postfix to
m1@example.com; an admin creates the user "mallory" owning m1 in the web UI, and mallory clicks "Not
spam" on each in Recent mail (headless Chromium, Playwright); then ``stronghold jobs`` runs (its learn
job takes the marks in; ``learning.SHARED_MARKS_PER_USER`` caps what one user's marks give the shared
model).  ``stronghold scan --classifier-only --index`` counts the test spam caught before and after,
and, for comparison, after the operator learns the same N as ham (``stronghold learn --ham``: no cap).
Run: python -m bench.webpoison [--marks 75]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright
from sqlalchemy import func, select

from devtools import devstack
from devtools.localstack import free_port, wait_for
from stronghold.store.db import Store
from stronghold.store.tables import Feedback, MessageRecipient
from tests.harness.browser import launch

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "data"
USER, PASSWORD, MAILBOX = "mallory", "a long enough password 1", "m1@example.com"
_LINE = re.compile(r"corpus/data/(\S+?)/\S+: (spam|ham) ")


def cli(config: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "stronghold.cli", "--config", str(config), *args],
                          capture_output=True, text=True, check=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done.stdout


def caught(config: Path) -> tuple[int, int, int]:
    """(test spam caught, test spam, test ham flagged) by the configured model alone."""
    spam = hit = flagged = 0
    for line in cli(config, "scan", "--classifier-only", "--index", str(CORPUS / "index.test")).splitlines():
        match = _LINE.search(line)
        if match is None:
            continue
        is_spam = "ham" not in match.group(1)
        spam += is_spam
        hit += is_spam and match.group(2) == "spam"
        flagged += not is_spam and match.group(2) == "spam"
    return hit, spam, flagged


def send(layout: devstack.Layout, files: list[Path]) -> None:
    with smtplib.SMTP("127.0.0.1", layout.smtp_port) as smtp:
        for path in files:
            data = path.read_bytes()
            if data.startswith(b"From "):
                data = data.split(b"\n", 1)[1]
            smtp.sendmail("poison@spam-source.example", [MAILBOX], data)


def mark_in_browser(layout: devstack.Layout, admin_password: str) -> int:
    """The admin creates mallory (owning m1); mallory clicks "Not spam" on every row; returns the clicks."""
    base = f"http://{layout.web}"
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        for login, password in (("admin", admin_password), (USER, PASSWORD)):
            page.context.clear_cookies()
            page.goto(base + "/login")
            page.fill("#login", login)
            page.fill("#password", password)
            page.click("button[type=submit]")
            if login == "admin":
                page.goto(base + "/admin/users")
                page.fill("#new-login", USER)
                page.fill("#new-password", PASSWORD)
                page.fill("#new-addresses", MAILBOX)
                page.get_by_role("button", name="Create user").click()
        clicks = 0
        for number in range(10):
            page.goto(f"{base}/messages/?page={number}")
            rows = page.locator("table.log tbody tr")
            if not rows.get_by_role("button", name="Not spam").count():
                break
            for i in range(rows.count()):
                button = page.locator("table.log tbody tr").nth(i).get_by_role("button", name="Not spam")
                if button.count():
                    with page.expect_navigation():
                        button.first.click()
                    clicks += 1
        browser.close()
    return clicks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marks", type=int, default=75)
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="stronghold-webpoison-"))
    os.chmod(home, 0o755)  # noqa: S103 - Postfix (another user) reaches the milter socket inside
    shutil.copytree(ROOT / "models", home / "models")
    layout = devstack.Layout(home=home / "stack", smtp_port=free_port(), release_port=free_port(),
                             imap_port=free_port(), web_port=free_port(), models_dir=home / "models")
    spam = [CORPUS / line.split(None, 1)[1].strip() for line in (CORPUS / "index.train").read_text().splitlines()
            if line.startswith("spam ")][:args.marks]
    try:
        devstack.start(layout)
        config = layout.home / "stronghold.toml"
        before = caught(config)
        send(layout, spam)
        store = Store(f"sqlite:///{layout.home / 'store.db'}")

        def logged() -> int:
            with store.session() as s:
                return int(s.scalar(select(func.count(MessageRecipient.id))
                                    .where(MessageRecipient.address == MAILBOX)) or 0)

        wait_for(lambda: logged() >= len(spam), 60, "the message log")
        clicks = mark_in_browser(layout, (layout.home / "admin-password").read_text().strip())
        with store.session() as s:
            marks = s.scalar(select(func.count(Feedback.id)).where(Feedback.is_spam.is_(False)))
        store.dispose()
        learned = [line for line in cli(config, "jobs", "--only", "learn").splitlines() if line.startswith("learn:")]
        after = caught(config)
        shutil.copytree(ROOT / "models", home / "models-operator")  # the same start, a store of its own
        alone = home / "operator.toml"
        alone.write_text(f'data_dir = "{home / "operator"}"\nmodels_dir = "{home / "models-operator"}"\n'
                         f'database_url = "sqlite:///{home / "operator.db"}"\n')
        cli(alone, "learn", "--ham", *map(str, spam), "--source", "cli", "--who", "operator")
        operator = caught(alone)
    finally:
        devstack.stop(layout, quiet=True)
        shutil.rmtree(home, ignore_errors=True)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    print(f"# Poisoning through the web UI ({started} UTC): {len(spam)} train spam sent, {clicks} 'Not spam' "
          f"clicks by one user, {marks} marks stored")
    print(f"jobs: {learned[0] if learned else '(no learn line)'}")
    print("| shared model | test spam caught | ham flagged |")
    print("|---|---|---|")
    for name, (hit, total, flagged) in (("before", before), ("after the user's marks (capped)", after),
                                        ("the same as the operator's ham (no cap)", operator)):
        print(f"| {name} | {hit}/{total} ({100 * hit / max(total, 1):.2f}%) | {flagged} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
