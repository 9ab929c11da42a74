"""The web UI's secret key: one for every node sharing the database, unless configured."""

from __future__ import annotations

from pathlib import Path

from stronghold import digest
from stronghold.store.db import Store
from stronghold.webkey import secret_key

OLD_KEY_FILE = "web-secret-key"  # where each node generated its own key before 0010


def test_nodes_with_their_own_data_dir_share_one_key(store: Store, make_config, tmp_path: Path) -> None:
    """A digest link signed on a mail node (cron) opens on a web node: before, each data_dir had its
    own key and every other node refused the link as altered (and the cookies and forms too)."""
    mail_node = make_config(database_url=store.url, data_dir=tmp_path / "mx")
    web_node = make_config(database_url=store.url, data_dir=tmp_path / "web")
    assert secret_key(mail_node) == secret_key(web_node)
    token = digest.make_link_token(mail_node, 7, "alice@example.com")
    assert digest.verify(web_node, token) == (7, "alice@example.com")
    assert secret_key(make_config(database_url=store.url, data_dir=tmp_path / "web",
                                  web_secret_key="configured")) == "configured"


def test_the_key_a_node_generated_before_is_kept(store: Store, make_config, tmp_path: Path) -> None:
    """Upgrading: the first node's own key becomes everyone's (its links and logins stay valid)."""
    for name, key in (("first", "a" * 64), ("second", "b" * 64)):
        (tmp_path / name).mkdir()
        (tmp_path / name / OLD_KEY_FILE).write_text(key + "\n")
    assert secret_key(make_config(database_url=store.url, data_dir=tmp_path / "first")) == "a" * 64
    assert secret_key(make_config(database_url=store.url, data_dir=tmp_path / "second")) == "a" * 64
