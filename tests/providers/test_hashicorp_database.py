"""The openbao-database provider against a real OpenBao dev server whose database secrets engine mints
logins in the tests' real PostgreSQL: a minted login works, its lease is what was asked, revoking it
ends it (and its open session), and nothing stored can be read or written."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent_vault.domain.errors import ProviderError, ReadOnlyVault, SecretNotFound
from agent_vault.domain.secret import SecretValue
from agent_vault.providers.base import ProviderContext, leasing
from agent_vault.providers.hashicorp_database import HashiCorpDatabaseOptions, HashiCorpDatabaseProvider
from tests.providers.database_engine import DatabaseEngine


def provider(engine: DatabaseEngine, tmp_path: Path, **roles: object) -> HashiCorpDatabaseProvider:
    options = HashiCorpDatabaseOptions.model_validate(
        {"address": engine.bao.url, "token": engine.token, "roles": roles or {"MIGRATOR": "migrator"}}
    )
    return HashiCorpDatabaseProvider(options, ProviderContext(vault="db", base_dir=tmp_path))


def test_a_minted_login_works_for_its_lease_and_not_after_revocation(
    database_engine: DatabaseEngine, tmp_path: Path
) -> None:
    import psycopg

    db = provider(database_engine, tmp_path)
    assert leasing(db) is db and db.list_names() == ["MIGRATOR"] and db.has("MIGRATOR")
    lease = db.issue("MIGRATOR", 120)
    credential = lease.value.reveal()
    assert database_engine.can_log_in(credential)
    seen = database_engine.lease(lease.lease_id)
    assert seen is not None and 100 <= seen["ttl"] <= 120  # the role says 1 h; the lease is what was asked
    assert abs((lease.ends_at - datetime.now(UTC)).total_seconds() - 120) < 10
    login = json.loads(credential)
    held = psycopg.connect(database_engine.dsn, user=login["username"], password=login["password"])
    db.revoke(lease.lease_id)
    assert not database_engine.can_log_in(credential)
    with pytest.raises(psycopg.Error):
        held.execute("SELECT 1")  # the revocation ended the session it had open
    held.close()
    db.revoke(lease.lease_id)  # again: not an error


def test_renew_moves_the_end_and_a_format_shapes_the_value(database_engine: DatabaseEngine, tmp_path: Path) -> None:
    db = provider(database_engine, tmp_path, MIGRATOR={"role": "migrator", "format": "{username} {password}"})
    lease = db.issue("MIGRATOR", 30)
    username, password = lease.value.reveal().split(" ")
    assert database_engine.can_log_in(json.dumps({"username": username, "password": password}))
    later = db.renew(lease.lease_id, 300)
    assert (later - lease.ends_at).total_seconds() > 200
    db.revoke(lease.lease_id)


def test_nothing_stored_can_be_read_or_written(database_engine: DatabaseEngine, tmp_path: Path) -> None:
    db = provider(database_engine, tmp_path)
    with pytest.raises(ProviderError, match="mints a new database login"):
        db.get("MIGRATOR")
    with pytest.raises(ReadOnlyVault):
        db.set_many({"MIGRATOR": SecretValue("fake-db-password-1")})
    with pytest.raises(SecretNotFound):
        db.issue("NOPE", 60)


def test_an_unknown_role_and_a_token_without_the_policy_are_clear_errors(
    database_engine: DatabaseEngine, tmp_path: Path
) -> None:
    with pytest.raises(ProviderError, match=r"database/creds/ghost.*roles exist"):
        provider(database_engine, tmp_path, MIGRATOR="ghost").issue("MIGRATOR", 60)
    options = HashiCorpDatabaseOptions.model_validate(
        {"address": database_engine.bao.url, "token": database_engine.bao.token(), "roles": {"M": "migrator"}}
    )
    with pytest.raises(ProviderError, match="database/creds/migrator"):
        HashiCorpDatabaseProvider(options, ProviderContext(vault="db", base_dir=tmp_path)).issue("M", 60)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"roles": {}}, "at least one role"),
        ({"roles": {"M": "migrator"}, "path": "x"}, "`path` is a key of the KV provider"),
        ({"roles": {"M": {"role": "migrator", "format": "{user}"}}}, "{password}"),
        ({"roles": {"M": "bad role"}}, "role name"),
    ],
)
def test_sections_that_cannot_work_are_refused(section: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        HashiCorpDatabaseOptions.model_validate({"address": "http://127.0.0.1:1", **section})
