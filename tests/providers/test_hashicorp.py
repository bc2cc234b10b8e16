"""HashiCorpVaultProvider (types `hashicorp` and `openbao`) against a real OpenBao dev server.

The server (tests/providers/openbao_server.py) is started once per session on a free loopback port.
Each provider gets its own folder under the mount (`path`), so tests share the server safely.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_vault.configuration.project import load_config
from agent_vault.domain.errors import (
    ConfigError,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    ReadOnlyVault,
    SecretNotFound,
)
from agent_vault.domain.secret import SecretValue
from agent_vault.providers import hashicorp
from agent_vault.providers.base import ProviderContext, SecretProvider
from agent_vault.providers.hashicorp import INSTALL_HINT, HashiCorpVaultOptions, HashiCorpVaultProvider
from agent_vault.providers.registry import provider_class, provider_entry_points
from tests.providers.contract import SEED, ProviderContract, everything_said, in_threads
from tests.providers.openbao_server import KV1_MOUNT, ROOT_TOKEN, VAULT_VARIABLES, OpenBaoServer, free_port

VALUE = "fake-vault-value-5555"


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    server = OpenBaoServer(tmp_path_factory.mktemp("openbao"))
    try:
        server.set_up()
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_real_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see the user's Vault variables or ~/.vault-token."""
    for name in VAULT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))


def folder() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def make(
    server: OpenBaoServer,
    *,
    writable: bool = False,
    environ: dict[str, str] | None = None,
    home: Path | None = None,
    base_dir: Path = Path("/nonexistent"),
    **keys: Any,
) -> HashiCorpVaultProvider:
    """A provider for `server`; `keys` are config keys (camelCase), token defaulting to the root token."""
    keys.setdefault("address", server.url)
    keys.setdefault("token", ROOT_TOKEN)
    options = HashiCorpVaultOptions.model_validate({k: v for k, v in keys.items() if v is not None})
    context = ProviderContext(vault="team", base_dir=base_dir, writable=writable)
    return HashiCorpVaultProvider(options, context, environ=environ or {}, home=home or Path("/nonexistent"))


def seed(server: OpenBaoServer, mount: str, prefix: str, secrets: dict[str, Any], namespace: str | None = None) -> None:
    for name, value in secrets.items():
        data = value if isinstance(value, dict) else {"value": value}
        server.put(mount, f"{prefix}/{name}", data, namespace=namespace)


# --- the contract, four ways --------------------------------------------------------------------


class _OnServer(ProviderContract):
    unholdable_names = ("trailing/", "empty://part")
    bao: OpenBaoServer

    @pytest.fixture(autouse=True)
    def _server(self, bao: OpenBaoServer) -> None:
        self.bao = bao


class TestKV2Contract(_OnServer):
    """KV v2 at secret/, root token, KV version asked of the server."""

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        prefix = folder()
        seed(self.bao, "secret", prefix, names_to_values)
        return make(self.bao, writable=writable, path=prefix)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        prefix = folder()
        seed(self.bao, "secret", prefix, SEED)
        return make(self.bao, path=prefix, token=self.bao.token("default"))


class TestKV1Contract(_OnServer):
    """KV v1 at kv1/, kvVersion given."""

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        prefix = folder()
        seed(self.bao, KV1_MOUNT, prefix, names_to_values)
        return make(self.bao, writable=writable, mount=KV1_MOUNT, path=prefix, kvVersion=1)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        return make(self.bao, mount=KV1_MOUNT, path=folder(), kvVersion=1, token="fake-revoked-token-0000")


class TestAppRoleContract(_OnServer):
    """AppRole login whose token has exactly the policy the docs ask for (read-write-list)."""

    role: tuple[str, str] | None = None

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        prefix = folder()
        seed(self.bao, "secret", prefix, names_to_values)
        role_id, secret_id = self.bao.approle(f"role-{prefix}", "read-write-list")
        auth = {"method": "approle", "roleId": role_id, "secretId": secret_id}
        return make(self.bao, writable=writable, path=prefix, token=None, auth=auth)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        role_id, _ = self.bao.approle(f"role-{folder()}", "read-write-list")
        auth = {"method": "approle", "roleId": role_id, "secretId": "fake-wrong-secret-id"}
        return make(self.bao, path=folder(), token=None, auth=auth)


@pytest.fixture(scope="session")
def namespace(bao: OpenBaoServer) -> str:
    """An OpenBao namespace with its own KV v2 mount at secret/."""
    name = f"ns-{uuid.uuid4().hex[:8]}"
    bao.namespace(name)
    return name


class TestNamespaceContract(_OnServer):
    """Everything inside an OpenBao namespace with its own secret/ mount."""

    namespace: str

    @pytest.fixture(autouse=True)
    def _namespace(self, namespace: str) -> None:
        self.namespace = namespace

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        prefix = folder()
        seed(self.bao, "secret", prefix, names_to_values, namespace=self.namespace)
        return make(self.bao, writable=writable, path=prefix, namespace=self.namespace)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        # a token made outside the namespace, with only the default policy, may do nothing inside it
        return make(self.bao, path=folder(), namespace=self.namespace, token=self.bao.token("default"))


# --- names ----------------------------------------------------------------------------------------


def test_multi_key_secrets_are_listed_per_key_and_the_field_keeps_the_plain_name(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(
        bao,
        "secret",
        prefix,
        {
            "single": {"token": "fake-single"},
            "db": {"value": "fake-db-password", "username": "fake-user"},
            "api": {"id": "fake-id", "secret": "fake-api-secret"},
            "deep/er/one": "fake-deep",
        },
    )
    provider = make(bao, path=prefix)
    assert provider.list_names() == ["api:id", "api:secret", "db", "db:username", "deep/er/one", "single"]
    assert provider.get("single").reveal() == "fake-single"
    assert provider.get("single:token").reveal() == "fake-single"  # a key is always reachable by name
    assert provider.get("db").reveal() == "fake-db-password"
    assert provider.get("db:value").reveal() == "fake-db-password"
    assert provider.get("db:username").reveal() == "fake-user"
    assert provider.get("api:secret").reveal() == "fake-api-secret"
    assert provider.get("deep/er/one").reveal() == "fake-deep"
    with pytest.raises(SecretNotFound) as caught:
        provider.get("api")
    message = str(caught.value)
    assert "several keys" in message and "'api:id'" in message and "'api:secret'" in message
    assert "fake-" not in message
    assert provider.has("db:username") and provider.has("single:token")
    with pytest.raises(SecretNotFound):
        provider.has("api")  # the same helpful message before anyone is asked
    assert not provider.has("db:nope") and not provider.has("nope")


def test_field_option_picks_the_key_plain_names_read(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"login": {"username": "fake-u", "password": "fake-p"}})
    provider = make(bao, path=prefix, field="password")
    assert provider.list_names() == ["login", "login:username"]
    assert provider.get("login").reveal() == "fake-p"


def test_structured_values_are_returned_as_json(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"n": {"value": 42}, "obj": {"value": {"a": [1, "x"]}}, "flag": {"value": True}})
    provider = make(bao, path=prefix)
    assert provider.get("n").reveal() == "42"
    assert provider.get("obj").reveal() == '{"a":[1,"x"]}'
    assert provider.get("flag").reveal() == "true"


def test_path_prefix_limits_what_is_listed_and_read(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"inside/KEY": "fake-in", "outside/KEY": "fake-out"})
    provider = make(bao, path=f"/{prefix}/inside/")
    assert provider.list_names() == ["KEY"]
    assert provider.get("KEY").reveal() == "fake-in"
    for escape in ("../outside/KEY", "./KEY", "a//KEY"):
        assert not provider.has(escape)
        with pytest.raises(SecretNotFound):
            provider.get(escape)


def test_a_path_with_a_colon_wins_over_a_key_of_the_same_name(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"a": {"b": "fake-key-b", "c": "fake-key-c"}, "a:b": "fake-path"})
    provider = make(bao, path=prefix)
    assert provider.list_names() == ["a:b", "a:c"]
    assert provider.get("a:b").reveal() == "fake-path"
    assert provider.get("a:c").reveal() == "fake-key-c"


def test_deleted_secrets_and_names_agents_cannot_ask_for_are_not_listed(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"kept": "fake-kept", "gone": "fake-gone", "odd": {"bad=key": "x", "ok": "y"}})
    bao.client().secrets.kv.v2.delete_latest_version_of_secret(path=f"{prefix}/gone", mount_point="secret")
    provider = make(bao, path=prefix)
    assert provider.list_names() == ["kept", "odd:ok"]
    with pytest.raises(SecretNotFound):
        provider.get("gone")


def test_listing_refuses_a_folder_too_big_to_read(bao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {f"K{i}": f"fake-{i}" for i in range(4)})
    monkeypatch.setattr(hashicorp, "MAX_SECRETS", 3)
    with pytest.raises(ProviderError) as caught:
        make(bao, path=prefix).list_names()
    assert "narrower folder" in str(caught.value)


def test_listing_is_reused_for_a_while_and_dropped_after_a_write(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"A": "fake-a"})
    provider = make(bao, writable=True, path=prefix)
    assert provider.list_names() == ["A"]
    seed(bao, "secret", prefix, {"B": "fake-b"})
    assert provider.list_names() == ["A"]  # cached
    assert provider.has("B")  # names beyond the listing are looked up directly
    provider.set_many({"C": SecretValue("fake-c")})
    assert provider.list_names() == ["A", "B", "C"]


# --- writes ---------------------------------------------------------------------------------------


def test_kv2_writes_are_new_versions_and_keep_other_keys(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"db": {"value": "fake-old", "username": "fake-user"}, "single": {"pw": "fake-1"}})
    provider = make(bao, writable=True, path=prefix)
    provider.set_many({"db": SecretValue("fake-new"), "db:port": SecretValue("5432"), "single": SecretValue("fake-2")})
    assert bao.data("secret", f"{prefix}/db") == {"value": "fake-new", "username": "fake-user", "port": "5432"}
    assert bao.versions(f"{prefix}/db") == 2  # one write for both keys of the same secret
    assert bao.data("secret", f"{prefix}/single") == {"pw": "fake-2"}  # the only key, whatever its name
    provider.set_many({"db:username": SecretValue("fake-user-2")})
    assert bao.versions(f"{prefix}/db") == 3
    old = bao.client().secrets.kv.v2.read_secret_version(
        path=f"{prefix}/db", version=1, mount_point="secret", raise_on_deleted_version=True
    )
    assert old["data"]["data"]["value"] == "fake-old"  # earlier versions stay
    assert provider.list_names() == ["db", "db:port", "db:username", "single"]


def test_writing_the_plain_name_of_an_ambiguous_secret_is_refused(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"api": {"id": "fake-id", "secret": "fake-s"}})
    provider = make(bao, writable=True, path=prefix)
    with pytest.raises(InvalidRequest) as caught:
        provider.set_many({"NEW": SecretValue(VALUE), "api": SecretValue(VALUE)})
    assert "api:<key>" in str(caught.value) or "'<name>:<key>'" in str(caught.value)
    assert VALUE not in str(caught.value)
    assert provider.list_names() == ["api:id", "api:secret"]  # planning failed: nothing was written


def test_a_concurrent_change_is_kept_by_check_and_set(bao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"db": {"value": "fake-old", "username": "fake-user"}})
    provider = make(bao, writable=True, path=prefix)
    real_read = provider._read
    raced = []

    def read_then_race(relative: str) -> Any:
        found = real_read(relative)
        if not raced:  # someone else writes between our read and our write
            raced.append(relative)
            bao.put("secret", f"{prefix}/db", {"value": "fake-old", "username": "fake-user", "theirs": "fake-t"})
        return found

    monkeypatch.setattr(provider, "_read", read_then_race)
    provider.set_many({"db": SecretValue("fake-mine")})
    assert bao.data("secret", f"{prefix}/db") == {"value": "fake-mine", "username": "fake-user", "theirs": "fake-t"}
    assert bao.versions(f"{prefix}/db") == 3


def test_a_secret_that_keeps_changing_gives_up(bao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"hot": "fake-0"})
    provider = make(bao, writable=True, path=prefix)
    real_read = provider._read

    def read_then_race(relative: str) -> Any:
        found = real_read(relative)
        bao.put("secret", f"{prefix}/hot", {"value": "fake-theirs"})
        return found

    monkeypatch.setattr(provider, "_read", read_then_race)
    with pytest.raises(ProviderUnavailable) as caught:
        provider.set_many({"hot": SecretValue(VALUE)})
    assert "check-and-set" in str(caught.value)
    assert VALUE not in everything_said(caught.value)
    assert bao.data("secret", f"{prefix}/hot") == {"value": "fake-theirs"}


def test_a_deleted_secret_can_be_written_again(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"gone": "fake-gone"})
    bao.client().secrets.kv.v2.delete_latest_version_of_secret(path=f"{prefix}/gone", mount_point="secret")
    provider = make(bao, writable=True, path=prefix)
    provider.set_many({"gone": SecretValue("fake-back")})
    assert provider.get("gone").reveal() == "fake-back"
    assert bao.versions(f"{prefix}/gone") == 2


def test_kv1_writes_overwrite_in_place_and_keep_other_keys(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, KV1_MOUNT, prefix, {"db": {"value": "fake-old", "username": "fake-user"}})
    provider = make(bao, writable=True, mount=KV1_MOUNT, path=prefix)  # version asked of the server
    provider.set_many({"db": SecretValue("fake-new"), "fresh": SecretValue("fake-fresh")})
    assert bao.data(KV1_MOUNT, f"{prefix}/db") == {"value": "fake-new", "username": "fake-user"}
    assert bao.data(KV1_MOUNT, f"{prefix}/fresh") == {"value": "fake-fresh"}
    assert provider._kv == 1


def test_partial_failure_names_what_was_written(bao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = folder()
    provider = make(bao, writable=True, path=prefix)
    real_write = provider._write

    def fail_second(relative: str, data: dict[str, Any], version: int) -> None:
        if relative == "B":
            raise ProviderUnavailable("fake outage")
        real_write(relative, data, version)

    monkeypatch.setattr(provider, "_write", fail_second)
    with pytest.raises(ProviderUnavailable) as caught:
        provider.set_many({"A": SecretValue("fake-a"), "B": SecretValue("fake-b")})
    assert "Already written: 'A'; not written: 'B'." in str(caught.value)


def test_read_only_vault_names_the_fix(bao: OpenBaoServer) -> None:
    provider = make(bao, path=folder())
    with pytest.raises(ReadOnlyVault) as caught:
        provider.set_many({"X": SecretValue(VALUE)})
    assert "writable = true" in str(caught.value)


# --- permissions ----------------------------------------------------------------------------------


def test_a_token_that_may_read_but_not_list(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"db": {"value": "fake-db", "username": "fake-user"}})
    token = bao.token("read-write-no-list")
    listing = make(bao, path=prefix, token=token)
    with pytest.raises(ProviderAuthError) as caught:
        listing.list_names()
    message = str(caught.value)
    assert "`list`" in message and f'"secret/metadata/{prefix}/*"' in message and "list = false" in message
    assert listing.get("db").reveal() == "fake-db"  # reading needs no listing

    exact = make(bao, writable=True, path=prefix, token=token, list=False)
    assert exact.list_names() == []
    assert exact.has("db:username") and not exact.has("nope")
    assert exact.get("db:username").reveal() == "fake-user"
    exact.set_many({"db:port": SecretValue("5432")})
    assert bao.data("secret", f"{prefix}/db")["port"] == "5432"


def test_a_read_only_policy_refuses_writes_naming_the_capability(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"db": "fake-db"})
    provider = make(bao, writable=True, path=prefix, token=bao.token("read-only"))
    assert provider.list_names() == ["db"]
    with pytest.raises(ProviderAuthError) as caught:
        provider.set_many({"db": SecretValue(VALUE)})
    message = everything_said(caught.value)
    assert "policy does not allow" in message and "`create` and `update`" in message
    assert VALUE not in message and "fake-db" not in message


def test_secrets_outside_the_read_policy_are_left_out_of_the_listing(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"open/A": "fake-a", "closed/B": "fake-b"})
    policy = f'path "secret/metadata/{prefix}/*" {{ capabilities = ["list"] }}\n'
    policy += f'path "secret/data/{prefix}/open/*" {{ capabilities = ["read"] }}\n'
    bao.client().sys.create_or_update_policy(name=f"p-{prefix}", policy=policy)
    provider = make(bao, path=prefix, token=bao.token(f"p-{prefix}"))
    assert provider.list_names() == ["open/A"]
    with pytest.raises(ProviderAuthError):
        provider.get("closed/B")


def test_an_unaccepted_token_is_an_auth_error_naming_where_it_came_from(bao: OpenBaoServer) -> None:
    token = bao.token("read-write-list")
    bao.revoke(token)
    provider = make(bao, path=folder(), token=token)
    with pytest.raises(ProviderAuthError) as caught:
        provider.get("X")
    message = everything_said(caught.value)
    assert "did not accept the token from `token` in the config" in message
    assert token not in message


def test_without_kv_version_a_token_that_cannot_see_the_mount_is_told_to_set_it(bao: OpenBaoServer) -> None:
    provider = make(bao, path=folder(), token=bao.token("default"))
    with pytest.raises(ProviderAuthError) as caught:
        provider.list_names()
    assert "kvVersion" in str(caught.value)


# --- signing in -----------------------------------------------------------------------------------


def test_the_stores_own_login_from_environment_and_token_file(bao: OpenBaoServer, tmp_path: Path) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"A": "fake-a"})
    for variable in ("VAULT_TOKEN", "BAO_TOKEN"):
        provider = make(bao, path=prefix, token=None, environ={variable: ROOT_TOKEN})
        assert provider.get("A").reveal() == "fake-a"
    home = tmp_path / "login-home"
    home.mkdir()
    (home / ".vault-token").write_text("fake-stale-token\n")
    provider = make(bao, path=prefix, token=None, home=home)
    with pytest.raises(ProviderAuthError) as caught:
        provider.get("A")
    assert "VAULT_TOKEN, BAO_TOKEN or ~/.vault-token" in str(caught.value)
    (home / ".vault-token").write_text(bao.token("read-write-list") + "\n")  # `bao login` again
    assert provider.get("A").reveal() == "fake-a"  # the file is read afresh


def test_the_address_and_namespace_come_from_the_environment_when_not_configured(bao: OpenBaoServer) -> None:
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    bao.namespace(namespace)
    prefix = folder()
    seed(bao, "secret", prefix, {"A": "fake-in-namespace"}, namespace=namespace)
    environ = {"BAO_ADDR": bao.url, "BAO_NAMESPACE": namespace, "BAO_TOKEN": ROOT_TOKEN}
    provider = make(bao, path=prefix, token=None, address=None, environ=environ)
    assert provider.get("A").reveal() == "fake-in-namespace"
    assert make(bao, path=prefix).list_names() == []  # the root namespace has no such folder


def test_no_token_anywhere_is_an_auth_error_with_every_fix(bao: OpenBaoServer) -> None:
    provider = make(bao, path=folder(), token=None, home=Path("/nonexistent"))
    with pytest.raises(ProviderAuthError) as caught:
        provider.list_names()
    message = str(caught.value)
    assert 'token = "env:VAULT_TOKEN"' in message and "bao login" in message and "approle" in message


def test_approle_logs_in_again_when_its_token_is_revoked(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"A": "fake-a"})
    role_id, secret_id = bao.approle(f"role-{prefix}", "read-write-list")
    provider = make(bao, path=prefix, token=None, auth={"method": "approle", "roleId": role_id, "secretId": secret_id})
    assert provider.get("A").reveal() == "fake-a"
    first = provider._client.token
    bao.revoke(first)
    assert provider.get("A").reveal() == "fake-a"
    assert provider._client.token != first


def test_approle_at_the_wrong_mount_names_the_key(bao: OpenBaoServer) -> None:
    auth = {"method": "approle", "roleId": "fake-role", "secretId": "fake-secret-id-7777", "mount": "elsewhere"}
    provider = make(bao, path=folder(), token=None, auth=auth)
    with pytest.raises(ProviderAuthError) as caught:
        provider.list_names()
    assert "auth.mount" in str(caught.value)
    assert "fake-secret-id-7777" not in everything_said(caught.value)


# --- mounts ---------------------------------------------------------------------------------------


def test_a_mount_that_is_not_kv_is_a_config_error(bao: OpenBaoServer) -> None:
    with pytest.raises(ConfigError) as caught:
        make(bao, mount="cubbyhole").list_names()
    assert "not KV" in str(caught.value)


def test_a_kv_version_that_does_not_match_the_mount_is_a_config_error(bao: OpenBaoServer) -> None:
    with pytest.raises(ConfigError) as caught:
        make(bao, kvVersion=1).list_names()
    assert "`kvVersion = 1`, but secret" in str(caught.value) and "KV version 2" in str(caught.value)


def test_a_kv_version_is_trusted_when_the_token_may_not_look_up_the_mount(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"A": "fake-a"})
    policy = f'path "secret/data/{prefix}/A" {{ capabilities = ["read"] }}\n'
    bao.client().sys.create_or_update_policy(name=f"p-{prefix}", policy=policy)
    # the mount lookup is allowed with any capability under the mount, so refuse it on purpose
    provider = make(bao, path=prefix, token=bao.token(f"p-{prefix}"), kvVersion=2)
    real_mount_version = provider._mount_version
    asked = []

    def refused() -> int:
        asked.append(True)
        raise ProviderAuthError("fake refusal")

    provider._mount_version = refused  # type: ignore[method-assign]
    assert provider.get("A").reveal() == "fake-a"
    assert asked and provider._kv == 2
    assert real_mount_version() == 2


def test_a_namespace_or_mount_that_does_not_exist(bao: OpenBaoServer) -> None:
    with pytest.raises(ConfigError) as caught:
        make(bao, namespace="fake-no-such-namespace").list_names()
    assert "no mount secret in namespace 'fake-no-such-namespace'" in str(caught.value)
    with pytest.raises(ProviderAuthError) as refused:  # Vault answers 403 for a mount that does not exist
        make(bao, mount="fake-no-such-mount").list_names()
    message = str(refused.value)
    assert "`mount`" in message and "`namespace`" in message and "kvVersion" in message


def test_a_folder_given_as_mount_is_a_config_error_naming_the_split(bao: OpenBaoServer) -> None:
    with pytest.raises(ConfigError) as caught:
        make(bao, mount="secret/team").list_names()
    assert "set `mount = 'secret'` and put the folder in `path`" in str(caught.value)


# --- the network --------------------------------------------------------------------------------


def test_an_unreachable_server_is_unavailable(bao: OpenBaoServer) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    provider = make(bao, address=address, timeout=2)
    for call in (provider.list_names, lambda: provider.get("X"), lambda: provider.has("X")):
        with pytest.raises(ProviderUnavailable) as caught:
            call()
        assert address in str(caught.value) and "Fix:" in str(caught.value)


def test_a_server_that_never_answers_is_unavailable_after_the_timeout(bao: OpenBaoServer) -> None:
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        provider = make(bao, address=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5, kvVersion=2)
        with pytest.raises(ProviderUnavailable) as caught:
            provider.get("X")
    assert "did not answer within 0.5 seconds" in str(caught.value)


@pytest.fixture(scope="module")
def tls_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    server = OpenBaoServer(tmp_path_factory.mktemp("openbao-tls"), tls=True)
    try:
        yield server
    finally:
        server.stop()


def test_https_with_ca_cert(tls_bao: OpenBaoServer, tmp_path: Path) -> None:
    assert tls_bao.ca_cert is not None
    prefix = folder()
    seed(tls_bao, "secret", prefix, {"A": "fake-tls"})
    with pytest.raises(ProviderUnavailable) as caught:
        make(tls_bao, path=prefix).get("A")
    assert "caCert" in str(caught.value)
    (tmp_path / "ca.pem").write_bytes(tls_bao.ca_cert.read_bytes())
    assert make(tls_bao, path=prefix, caCert="ca.pem", base_dir=tmp_path).get("A").reveal() == "fake-tls"
    environ = {"VAULT_CACERT": str(tls_bao.ca_cert)}
    assert make(tls_bao, path=prefix, environ=environ).get("A").reveal() == "fake-tls"
    with pytest.raises(ConfigError) as missing:
        make(tls_bao, caCert="absent.pem", base_dir=tmp_path)
    assert "absent.pem" in str(missing.value) and "not a file" in str(missing.value)


def test_concurrent_reads_from_worker_threads(bao: OpenBaoServer) -> None:
    prefix = folder()
    secrets = {f"K{i}": f"fake-{i}" for i in range(8)}
    seed(bao, "secret", prefix, secrets)
    provider = make(bao, path=prefix)
    results: dict[str, str] = {}

    def read(name: str) -> None:
        for _ in range(5):
            results[name] = provider.get(name).reveal()
            provider.list_names()

    in_threads(read, secrets)
    assert results == secrets


def test_close_and_use_again(bao: OpenBaoServer) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"A": "fake-a"})
    provider = make(bao, path=prefix)
    assert provider.get("A").reveal() == "fake-a"
    provider.close()
    assert provider.get("A").reveal() == "fake-a"


# --- no credential or value in what is shown -------------------------------------------------------


def test_credentials_stay_out_of_reprs(bao: OpenBaoServer) -> None:
    options = HashiCorpVaultOptions.model_validate(
        {"address": bao.url, "auth": {"method": "approle", "roleId": "fake-role-id-1", "secretId": "fake-sid-2"}}
    )
    token_options = HashiCorpVaultOptions.model_validate({"address": bao.url, "token": "fake-token-3"})
    provider = make(bao, token="fake-token-3")
    shown = " ".join(repr(x) + str(x) for x in (options, token_options, provider))
    for secret in ("fake-role-id-1", "fake-sid-2", "fake-token-3"):
        assert secret not in shown


# --- options --------------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent-vault.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('address = "vault.example.com"', "vaults.v.address: must be an http:// or https:// URL with a host"),
        ("kvVersion = 3", "vaults.v.kvVersion: must be 1 or 2"),
        ('mount = "secret/../sys"', "vaults.v.mount: `mount` must be slash-separated names"),
        ('mount = "/"', "vaults.v.mount: `mount` is empty"),
        ('path = "a//b"', "vaults.v.path: `path` must be slash-separated names"),
        ('field = "a:b"', "vaults.v.field: must be a key name"),
        ("timeout = 0", "vaults.v.timeout: must be > 0, got 0"),
        ("timeout = true", "vaults.v.timeout: expected a number, got boolean"),
        ('auth = { method = "ldap", roleId = "r", secretId = "s" }', "vaults.v.auth.method: must be 'approle'"),
        ('auth = { method = "approle", roleId = "r" }', "vaults.v.auth.secretId: required key is missing"),
        ('caCerts = "ca.pem"', "vaults.v.caCerts: unknown key. Fix: did you mean `caCert`?"),
    ],
)
def test_options_are_checked_with_messages_naming_the_key(tmp_path: Path, line: str, expected: str) -> None:
    path = write_config(tmp_path, f'[vaults.v]\ntype = "hashicorp"\naddress = "http://127.0.0.1:1"\n{line}\n')
    if line.startswith("address"):
        path.write_text(f'[vaults.v]\ntype = "hashicorp"\n{line}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert expected in str(caught.value)


def test_token_and_auth_together_are_refused_without_showing_either(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [vaults.v]
        type = "openbao"
        address = "http://127.0.0.1:1"
        token = "env:T"
        auth = { method = "approle", roleId = "fake-role", secretId = "env:S" }
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"T": "fake-token-0001", "S": "fake-secret-0002"})
    message = str(caught.value)
    assert "set either `token` or an `auth` table, not both" in message
    assert "fake-token-0001" not in message and "fake-secret-0002" not in message


def test_no_address_anywhere_is_a_config_error() -> None:
    options = HashiCorpVaultOptions.model_validate({"token": "fake-t"})
    context = ProviderContext(vault="v", base_dir=Path("/nonexistent"))
    with pytest.raises(ConfigError) as caught:
        HashiCorpVaultProvider(options, context, environ={})
    assert "set `address`" in str(caught.value) and "VAULT_ADDR" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        HashiCorpVaultProvider(options, context, environ={"VAULT_ADDR": "vault:8200"})
    assert "not an http:// or https:// URL" in str(caught.value)


def test_a_toml_config_loads_and_builds_working_providers(bao: OpenBaoServer, tmp_path: Path) -> None:
    prefix = folder()
    seed(bao, "secret", prefix, {"login": {"username": "fake-u", "password": "fake-p"}})
    seed(bao, KV1_MOUNT, prefix, {"A": "fake-kv1"})
    role_id, secret_id = bao.approle(f"role-{prefix}", "read-write-list")
    path = write_config(
        tmp_path,
        f"""
        [vaults.team]
        type = "openbao"
        address = "{bao.url}"
        token = "env:BAO_TEST_TOKEN"
        mount = "secret"
        path = "{prefix}"
        field = "password"
        writable = true
        timeout = 5
        ttl = 60

        [vaults.legacy]
        type = "hashicorp"
        address = "{bao.url}"
        mount = "{KV1_MOUNT}"
        path = "{prefix}"
        kvVersion = 1
        list = false

        [vaults.legacy.auth]
        method = "approle"
        roleId = "env:ROLE_ID"
        secretId = "env:SECRET_ID"
        """,
    )
    environ = {"BAO_TEST_TOKEN": ROOT_TOKEN, "ROLE_ID": role_id, "SECRET_ID": secret_id}
    config = load_config(path, environ)
    providers = {}
    for name, vault in config.vaults.items():
        cls = provider_class(vault.type)
        assert cls is HashiCorpVaultProvider
        context = ProviderContext(vault=name, base_dir=vault.base_dir, writable=vault.writable)
        providers[name] = cls(vault.options, context)  # type: ignore[call-arg]
    team, legacy = providers["team"], providers["legacy"]
    assert team.list_names() == ["login", "login:username"]
    assert team.get("login").reveal() == "fake-p"
    team.set_many({"login": SecretValue("fake-p2")})
    assert bao.data("secret", f"{prefix}/login") == {"username": "fake-u", "password": "fake-p2"}
    assert legacy.list_names() == []
    assert legacy.get("A").reveal() == "fake-kv1"
    with pytest.raises(ReadOnlyVault):
        legacy.set_many({"A": SecretValue(VALUE)})
    shown = repr(config) + "".join(repr(p) for p in providers.values())
    assert not any(secret in shown for secret in environ.values())


# --- the extra ------------------------------------------------------------------------------------


def test_both_type_names_are_installed() -> None:
    points = provider_entry_points()
    assert "hashicorp" in points and "openbao" in points, "run: .venv/bin/pip install -e '.[test,providers]'"
    assert provider_class("hashicorp") is HashiCorpVaultProvider
    assert provider_class("openbao") is HashiCorpVaultProvider


def test_missing_hvac_is_a_config_error_naming_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hvac", None)  # `import hvac` now raises ImportError
    options = HashiCorpVaultOptions.model_validate({"address": "http://127.0.0.1:1", "token": "fake-t"})
    with pytest.raises(ConfigError) as caught:
        HashiCorpVaultProvider(options, ProviderContext(vault="v", base_dir=Path("/nonexistent")), environ={})
    assert str(caught.value) == "the hashicorp provider needs the hvac package: pip install 'agent-vault[hashicorp]'"
    assert str(caught.value) == INSTALL_HINT


def test_loading_a_vault_config_does_not_import_hvac(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[vaults.v]\ntype = "openbao"\naddress = "http://127.0.0.1:1"\ntoken = "env:T"\n')
    code = (
        "import sys; from pathlib import Path; from agent_vault.configuration.project import load_config; "
        f"load_config(Path({str(path)!r}), {{'T': 'fake-t'}}); "
        "assert 'hvac' not in sys.modules, 'hvac was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- through the broker: what an agent sees ---------------------------------------------------------


@pytest.mark.anyio
async def test_through_the_broker(bao: OpenBaoServer, home: Any, tmp_path: Path) -> None:
    """Two Vault vaults behind the real broker: one listed, one asked by exact name (`list = false`)."""
    from agent_vault.domain.request import Operation
    from tests.broker.test_core import OK, Clock, make_broker, store_servers

    prefix = folder()
    seed(bao, "secret", prefix, {"db": {"value": "fake-db-password", "username": "fake-user"}})
    token = bao.token("read-write-no-list")
    project = tmp_path / "project"
    project.mkdir()
    config = write_config(
        project,
        f"""
        [vaults.listed]
        type = "openbao"
        address = "{bao.url}"
        token = "env:BAO_ROOT"
        path = "{prefix}"

        [vaults.exact]
        type = "hashicorp"
        address = "{bao.url}"
        token = "env:VAULT_TOKEN"
        path = "{prefix}"
        list = false
        writable = true
        """,
    )
    # the user's word: this project may send tokens to this server
    broker = make_broker(home, Clock(), store_servers(bao.url))
    await broker.start()
    environ = {"BAO_ROOT": ROOT_TOKEN, "VAULT_TOKEN": token}
    session = broker.open_session(config, environ, {"client_name": "pytest", "pid": 1})

    assert await broker.list_secrets(session) == {"listed": ["db", "db:username"], "exact": []}

    out = await broker.request_access(session, "exact", ["db", "db:username"], "run migration 42")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    got = await broker.wait(session, out.request.id, 0)
    assert got.values["db"].reveal() == "fake-db-password"
    assert got.values["db:username"].reveal() == "fake-user"
    with pytest.raises(SecretNotFound):  # a name that points nowhere fails before anyone is asked
        await broker.request_access(session, "exact", ["db:nope"], "r")

    out = await broker.request_access(session, "exact", ["db:port"], "store", Operation.WRITE, {"db:port": "5432"})
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    assert (await broker.wait(session, out.request.id, 0)).status == "written"
    assert bao.data("secret", f"{prefix}/db") == {"value": "fake-db-password", "username": "fake-user", "port": "5432"}
    for record in broker.audit.list():
        assert "fake-db-password" not in repr(record) and token not in repr(record)
