"""authserv_id's quick path (no comment or quoted string before the first ';') reads what the
full split into pieces reads, and forged_positions counts only Authentication-Results fields."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from stronghold.authres import Authenticator, _pieces, authserv_id
from stronghold.dnscache import Dns


def by_pieces(value: str) -> str:
    head = _pieces(value)[0].text.split()
    return head[0].strip('"').lower() if head else ""


@settings(max_examples=1500, deadline=None)
@given(st.text(st.sampled_from('ab.MX;()"\\ \t\r\n='), max_size=30))
@example("mx.example.com; spf=pass")
@example("  MX.Example.COM\r\n ; dkim=pass")
@example('"mx.example" ; spf=pass')
@example("(comment) mx.example; spf=pass")
@example("mx.example (x; y) 1; spf=pass")
@example('mx.example; spf=pass smtp.mailfrom="a(b"@c')
@example("")
@example(";")
def test_the_quick_reading_is_the_full_one(value: str) -> None:
    assert authserv_id(value) == by_pieces(value)


def test_forged_positions_counts_authentication_results_fields_only() -> None:
    auth = Authenticator("check", "mx.test", Dns(("127.0.0.1",), 53, 1.0))
    headers = [("Received", "from x"), ("AUTHENTICATION-RESULTS", "mx.test; spf=pass"),
               ("Authentication-Results", "other.example; spf=pass"), ("X-Authentication-Results", "mx.test"),
               ("Authentication-Results ", "mx.test; spf=pass"), ("authentication-results", "MX.TEST; dkim=pass")]
    assert auth.forged_positions(headers) == [1, 3]
    assert Authenticator("header", "mx.test", auth.dns).forged_positions(headers) == [3]
