"""OpenBao's database secrets engine pointed at the tests' real throw-away PostgreSQL (issue 17).

`DatabaseEngine` makes a database in the `postgres` fixture's cluster that only password logins may enter
(a `pg_hba.conf` line for it alone, so a minted password is really checked), a role OpenBao connects as
(CREATEROLE, a fake password, allowed to end sessions), and, on a dev OpenBao server, a `database` mount
whose roles mint PostgreSQL logins: `migrator` (revocation ends the login's sessions, then drops it) and
`reporter`. `can_log_in` tries a minted login with psycopg. Nothing here touches a real Vault or database.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.providers.openbao_server import ROOT_TOKEN, OpenBaoServer
from tests.store.postgres_server import PostgresServer

MOUNT = "database"
ROLES = ("migrator", "reporter")
#: the password OpenBao signs in to PostgreSQL with
ADMIN_PASSWORD = "fake-bao-admin-password-1"
CREATION = ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"]
REVOCATION = [
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
    'DROP ROLE IF EXISTS "{{name}}";',
]
#: what the token agent-vault uses may do: mint from the roles, renew and revoke their leases
MINTING_POLICY = """
path "database/creds/*" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
"""


class DatabaseEngine:
    def __init__(self, bao: OpenBaoServer, postgres: PostgresServer) -> None:
        import psycopg

        self.bao = bao
        self.postgres = postgres
        url = postgres.database()
        self.dbname = url.rsplit("/", 1)[1]
        self.admin = "bao_admin_" + secrets.token_hex(3)
        with psycopg.connect(postgres.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {self.admin} LOGIN CREATEROLE PASSWORD '{ADMIN_PASSWORD}'")  # generated names
            conn.execute(f"GRANT pg_signal_backend TO {self.admin}")
            hba = postgres.data / "pg_hba.conf"
            hba.write_text(f"host {self.dbname} all 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
        root = bao.client()
        if f"{MOUNT}/" not in root.sys.list_mounted_secrets_engines()["data"]:
            root.sys.enable_secrets_engine("database", path=MOUNT)
        root.write(
            f"{MOUNT}/config/pg",
            plugin_name="postgresql-database-plugin",
            connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{postgres.port}/{self.dbname}",
            username=self.admin,
            password=ADMIN_PASSWORD,
            allowed_roles=",".join(ROLES),
        )
        for role in ROLES:  # a long default lease: agent-vault must shorten it to the window
            root.write(
                f"{MOUNT}/roles/{role}", db_name="pg", creation_statements=CREATION,
                revocation_statements=REVOCATION, default_ttl="1h", max_ttl="24h",
            )  # fmt: skip
        root.sys.create_or_update_policy(name="minting", policy=MINTING_POLICY)
        self.token = bao.token("minting")

    @property
    def dsn(self) -> str:
        return f"postgresql://127.0.0.1:{self.postgres.port}/{self.dbname}"

    def can_log_in(self, credential: str) -> bool:
        """Whether a minted login (the JSON agent-vault hands over) opens a session now."""
        import psycopg

        login = json.loads(credential)
        try:
            with psycopg.connect(self.dsn, user=login["username"], password=login["password"], connect_timeout=5) as c:
                return c.execute("SELECT current_user").fetchone() == (login["username"],)
        except psycopg.OperationalError:
            return False

    def lease(self, lease_id: str) -> dict[str, Any] | None:
        """OpenBao's own view of a lease (None once revoked or expired)."""
        import hvac

        try:
            found: dict[str, Any] = self.bao.client().write("sys/leases/lookup", lease_id=lease_id)["data"]
        except hvac.exceptions.InvalidRequest:
            return None
        return found

    def vault_section(self, **extra: object) -> dict[str, object]:
        """A project's vault section minting from these roles (the token from env:BAO_TEST_TOKEN)."""
        return {
            "type": "openbao-database",
            "address": self.bao.url,
            "token": "env:BAO_TEST_TOKEN",
            "roles": {"MIGRATOR": "migrator", "REPORTER": {"role": "reporter"}},
            **extra,
        }

    def roles(self) -> tuple[str, ...]:
        """The `[leases] allowRoles` entries for `vault_section`."""
        return tuple(f"{MOUNT}/creds/{role}" for role in ROLES)


@pytest.fixture(scope="session")
def database_engine(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[DatabaseEngine]:
    server = OpenBaoServer(tmp_path_factory.mktemp("openbao-db"))
    try:
        yield DatabaseEngine(server, postgres)
    finally:
        server.stop()


__all__ = ["ROOT_TOKEN", "DatabaseEngine", "database_engine"]
