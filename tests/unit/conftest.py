"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.smtpsink import SmtpSink


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
