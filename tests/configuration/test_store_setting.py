"""`[store] url` in settings.toml: where the broker keeps its state and audit (SQLite files by default, or a
PostgreSQL database for a team broker). Read on its own, so a mistake elsewhere never moves the storage."""

from __future__ import annotations

import pytest

from agent_vault.configuration.settings import storage, store_url
from agent_vault.domain.errors import SettingsError
from agent_vault.home import StatePaths
from tests.channels.helpers import write_settings

URL = "postgresql://agent_vault@db.example.internal:5432/agent_vault"


def test_without_a_store_table_the_state_and_audit_are_the_sqlite_files(home: StatePaths) -> None:
    write_settings(home, "[policy]\nmaxTtlMinutes = 30\n")
    where = storage(home)
    assert where.url is None and not where.shared
    assert (where.state_db, where.audit_db) == (home.state_db, home.audit_db)


def test_a_postgresql_url_is_the_storage_and_is_never_shown_with_its_password(home: StatePaths) -> None:
    write_settings(home, '[store]\nurl = "postgresql://agent_vault:fake-pw-0000@db.example.internal:5432/av"\n')
    where = storage(home)
    assert where.shared and where.url is not None and "fake-pw-0000" in where.url
    assert where.where == "postgresql://db.example.internal:5432/av"


def test_a_mistake_in_another_section_does_not_move_the_storage(home: StatePaths) -> None:
    # the broker ignores a broken file's channels and tunnel; it must not then run on other storage
    write_settings(home, f'[tunnel]\ntype = "warp-drive"\n\n[store]\nurl = "{URL}"\n')
    assert store_url(home) == URL


def test_the_url_may_come_from_the_broker_environment(home: StatePaths) -> None:
    write_settings(home, '[store]\nurl = "env:AV_TEST_STORE_URL"\n')
    assert store_url(home, {"AV_TEST_STORE_URL": URL}) == URL
    with pytest.raises(SettingsError, match="AV_TEST_STORE_URL, which is not set"):
        store_url(home, {})


@pytest.mark.parametrize("url", ["sqlite:///tmp/state.db", "mysql://db/av", "/var/lib/agent-vault/state.db"])
def test_anything_but_a_postgresql_url_is_refused_by_name(home: StatePaths, url: str) -> None:
    write_settings(home, f'[store]\nurl = "{url}"\n')
    with pytest.raises(SettingsError, match=r"store\.url: must be a postgresql:// URL"):
        storage(home)
