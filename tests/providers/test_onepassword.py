"""OnePasswordProvider: the provider contract and its own rules, against a fake of the SDK.

The fake (`fake_onepassword.py`) stands at the SDK boundary; a test below holds its shapes to
the installed SDK. The live test at the end runs only when OP_SERVICE_ACCOUNT_TOKEN is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent_vault.configuration.project import load_config, redacted_view
from agent_vault.domain.errors import (
    ConfigError,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    ReadOnlyVault,
    SecretNotFound,
)
from agent_vault.domain.grammar import check_name
from agent_vault.domain.secret import SecretValue
from agent_vault.providers import onepassword
from agent_vault.providers.base import ProviderContext, SecretProvider
from agent_vault.providers.onepassword import (
    INSTALL_HINT,
    OnePasswordOptions,
    OnePasswordProvider,
    OnePasswordWriteOptions,
)
from agent_vault.providers.registry import provider_class, provider_entry_points
from tests.providers import fake_onepassword as fake
from tests.providers.contract import ProviderContract, everything_said, in_threads
from tests.providers.fake_onepassword import FakeAccount
from tests.seed_configs import SEED_1PASSWORD_EXAMPLES

TOKEN = FakeAccount().token
VALUE = "fake-op-value-5555"


def make(
    account: FakeAccount,
    *,
    writable: bool = False,
    vault_ids: tuple[str, ...] = (),
    write_vault: str | None = None,
    category: str = "login",
    token: str | None = TOKEN,
    desktop_account: str | None = None,
    sdk: Any = None,
) -> OnePasswordProvider:
    write = OnePasswordWriteOptions(vault_id=write_vault, category=category) if write_vault else None
    if desktop_account is not None:
        token = None
    options = OnePasswordOptions(service_account_token=token, account=desktop_account, vault_ids=vault_ids, write=write)
    context = ProviderContext(vault="team", base_dir=Path("/nonexistent"), writable=writable)
    return OnePasswordProvider(options, context, sdk=sdk if sdk is not None else fake.make_sdk(account))


@pytest.fixture
def account() -> FakeAccount:
    return FakeAccount()


@pytest.fixture
def dev(account: FakeAccount) -> str:
    return account.add_vault("Dev")


@pytest.fixture
def prod(account: FakeAccount) -> str:
    return account.add_vault("Prod")


class TestOnePasswordContract(ProviderContract):
    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        account = FakeAccount()
        vault = account.add_vault("Contract")
        for name, value in names_to_values.items():
            account.add_item(vault, name, value)
        return make(account, writable=writable, write_vault=vault)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        account = FakeAccount()
        account.add_vault("Contract")
        return make(account, token="ops_fake-revoked-token-0000")


class TestOnePasswordContractWithRealModels(ProviderContract):
    """The same contract, with requests and results as the installed SDK's own pydantic models."""

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        real = pytest.importorskip("onepassword")
        account = FakeAccount()
        vault = account.add_vault("Contract")
        for name, value in names_to_values.items():
            account.add_item(vault, name, value)
        return make(account, writable=writable, write_vault=vault, sdk=fake.make_sdk(account, types=real))


# --- names --------------------------------------------------------------------------------------


def test_unique_titles_are_listed_as_they_are(account: FakeAccount, dev: str, prod: str) -> None:
    account.add_item(dev, "DATABASE_URL", "fake-db-1")
    account.add_item(prod, "Production DB Password", "fake-db-2")
    account.add_item(dev, "team/api key", "fake-api-3")
    provider = make(account)
    assert provider.list_names() == ["DATABASE_URL", "Production DB Password", "team/api key"]
    assert provider.get("Production DB Password").reveal() == "fake-db-2"
    assert provider.get("team/api key").reveal() == "fake-api-3"


def test_ambiguous_and_awkward_titles_get_qualified_names(account: FakeAccount, dev: str, prod: str) -> None:
    a = account.add_item(dev, "Stripe", "fake-stripe-dev")
    b = account.add_item(prod, "Stripe", "fake-stripe-prod")
    twin1 = account.add_item(dev, "Twin", "fake-twin-1")
    twin2 = account.add_item(dev, "Twin", "fake-twin-2")
    odd = account.add_item(dev, "Stripe (old)", "fake-odd")
    sneaky = account.add_item(dev, "op://Prod/Stripe", "fake-sneaky")
    account.add_item(dev, "Archived", "fake-archived", state="archived")
    provider = make(account)
    names = provider.list_names()
    assert names == sorted(
        [
            "op://Dev/Stripe",
            "op://Prod/Stripe",
            f"op://Dev/{twin1}",
            f"op://Dev/{twin2}",
            f"op://Dev/{odd}",
            f"op://Dev/{sneaky}",
        ]
    )
    for name in names:
        assert check_name(name) == name  # an agent can send every listed name
    assert provider.get("op://Dev/Stripe").reveal() == "fake-stripe-dev"
    assert provider.get("op://Prod/Stripe").reveal() == "fake-stripe-prod"
    assert provider.get(f"op://Dev/{twin2}").reveal() == "fake-twin-2"
    assert provider.get(f"op://Dev/{sneaky}").reveal() == "fake-sneaky"
    assert {provider.get(a).reveal(), provider.get(b).reveal()} == {"fake-stripe-dev", "fake-stripe-prod"}


def test_an_ambiguous_title_names_the_choices(account: FakeAccount, dev: str, prod: str) -> None:
    account.add_item(dev, "Stripe", "fake-stripe-dev")
    account.add_item(prod, "Stripe", "fake-stripe-prod")
    with pytest.raises(SecretNotFound) as caught:
        make(account).get("Stripe")
    message = str(caught.value)
    assert "'op://Dev/Stripe'" in message and "'op://Prod/Stripe'" in message
    assert "fake-stripe" not in message


def test_vaults_with_the_same_title_are_told_apart_by_id(account: FakeAccount) -> None:
    one, two = account.add_vault("Shared"), account.add_vault("shared")
    account.add_item(one, "KEY", "fake-1")
    account.add_item(two, "KEY", "fake-2")
    provider = make(account)
    assert provider.list_names() == sorted([f"op://{one}/KEY", f"op://{two}/KEY"])
    assert provider.get(f"op://{two}/KEY").reveal() == "fake-2"


def test_the_write_vault_owns_a_shared_title(account: FakeAccount, dev: str, prod: str) -> None:
    account.add_item(dev, "API_KEY", "fake-dev")
    account.add_item(prod, "API_KEY", "fake-prod")
    provider = make(account, writable=True, write_vault=dev)
    assert provider.list_names() == ["API_KEY", "op://Prod/API_KEY"]
    assert provider.get("API_KEY").reveal() == "fake-dev"


def test_list_never_fetches_items_or_values(account: FakeAccount, dev: str) -> None:
    account.add_item(dev, "KEY", VALUE)
    provider = make(account)
    assert VALUE not in repr(provider.list_names())
    assert set(account.methods()) == {"authenticate", "vaults.list", "items.list"}


# --- reading by reference, id and field -----------------------------------------------------------


def test_get_accepts_op_references_item_ids_and_fields(account: FakeAccount, dev: str) -> None:
    item = account.add_item(
        dev,
        "Postgres",
        "fake-pg-password",
        fields=[
            {"id": "username", "title": "username", "field_type": "Text", "value": "fake-user"},
            {"id": "h1", "title": "host", "field_type": "Text", "value": "db.example", "section_id": "conn"},
        ],
    )
    provider = make(account)
    assert provider.get(item).reveal() == "fake-pg-password"
    assert provider.get("op://Dev/Postgres/password").reveal() == "fake-pg-password"
    assert provider.get("op://dev/Postgres/username").reveal() == "fake-user"  # titles match in any case
    assert provider.get(f"op://{dev}/{item}/username").reveal() == "fake-user"
    assert provider.get("op://Dev/Postgres/conn/host").reveal() == "db.example"
    assert provider.get("op://Dev/Postgres").reveal() == "fake-pg-password"


def test_default_field_is_password_then_credential_then_any_concealed(account: FakeAccount, dev: str) -> None:
    concealed = {"field_type": "Concealed", "section_id": None}
    account.add_item(
        dev, "API", fields=[{"id": "credential", "title": "credential", "value": "fake-cred", **concealed}]
    )
    account.add_item(dev, "Custom", fields=[{"id": "x1", "title": "token", "value": "fake-custom", **concealed}])
    account.add_item(dev, "Note", fields=[{"id": "notes", "title": "n", "field_type": "Text", "value": "fake-note"}])
    provider = make(account)
    assert provider.get("API").reveal() == "fake-cred"
    assert provider.get("Custom").reveal() == "fake-custom"
    with pytest.raises(SecretNotFound) as caught:
        provider.get("Note")
    assert "no password or credential field" in str(caught.value)
    assert "fake-note" not in str(caught.value)


def test_references_cannot_leave_the_exposed_vaults(account: FakeAccount, dev: str, prod: str) -> None:
    account.add_item(dev, "KEY", "fake-dev")
    account.add_item(prod, "KEY", "fake-prod-must-not-leak")
    provider = make(account, vault_ids=(dev,))
    assert provider.list_names() == ["KEY"]
    for name in ("op://Prod/KEY/password", f"op://{prod}/KEY/password", "op://Prod/KEY"):
        with pytest.raises(SecretNotFound) as caught:
            provider.get(name)
        assert "fake-prod" not in everything_said(caught.value)
    assert "resolve" not in account.methods()


def test_malformed_references_are_not_found(account: FakeAccount, dev: str) -> None:
    account.add_item(dev, "KEY", "fake-1")
    provider = make(account)
    for name in ("op://Dev", "op://Dev/KEY/a/b/c", "op:///KEY/password"):
        with pytest.raises(SecretNotFound) as caught:
            provider.get(name)
        assert "op://<vault>/<item>/<field>" in str(caught.value)
    with pytest.raises(SecretNotFound) as caught:
        provider.get("op://Dev/KEY/nosuchfield")
    assert "'op://Dev/KEY/nosuchfield'" in str(caught.value) and "list_secrets" in str(caught.value)


def test_an_item_added_after_the_listing_is_found(account: FakeAccount, dev: str) -> None:
    provider = make(account)
    assert provider.list_names() == []
    account.add_item(dev, "LATE", "fake-late")
    assert provider.get("LATE").reveal() == "fake-late"


def test_listing_is_reused_for_a_while(account: FakeAccount, dev: str, monkeypatch: pytest.MonkeyPatch) -> None:
    account.add_item(dev, "KEY", "fake-1")
    provider = make(account)
    provider.list_names()
    provider.list_names()
    provider.get("KEY")
    assert account.methods().count("vaults.list") == 1
    monkeypatch.setattr(OnePasswordProvider, "listing_ttl", 0.0)
    provider.list_names()
    assert account.methods().count("vaults.list") == 2


# --- vaultIds ---------------------------------------------------------------------------------------


def test_vault_ids_choose_the_vaults_by_id_or_title(account: FakeAccount, dev: str, prod: str) -> None:
    other = account.add_vault("Other")
    for vault, title in ((dev, "D"), (prod, "P"), (other, "O")):
        account.add_item(vault, title, f"fake-{title}")
    assert make(account, vault_ids=(dev, "Prod")).list_names() == ["D", "P"]
    assert make(account).list_names() == ["D", "O", "P"]
    assert make(account, vault_ids=(dev,), writable=True, write_vault=other).list_names() == ["D", "O"]


def test_an_inaccessible_vault_id_is_a_config_error(account: FakeAccount, dev: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make(account, vault_ids=(dev, "nosuchvault")).list_names()
    assert "vaultIds[1] is 'nosuchvault'" in str(caught.value) and "Fix:" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        make(account, writable=True, write_vault="nosuchvault").list_names()
    assert "write.vaultId is 'nosuchvault'" in str(caught.value)


# --- writes ---------------------------------------------------------------------------------------------


def test_a_write_creates_a_login_with_a_concealed_password(account: FakeAccount, dev: str, prod: str) -> None:
    provider = make(account, writable=True, write_vault=dev)
    provider.set_many({"NEW KEY/one": SecretValue(VALUE)})
    (item,) = account.in_vault(dev)
    assert (item.title, item.category) == ("NEW KEY/one", "Login")
    assert item.fields == [
        {"id": "password", "title": "password", "field_type": "Concealed", "value": VALUE, "section_id": None}
    ]
    assert account.in_vault(prod) == []
    assert provider.get("NEW KEY/one").reveal() == VALUE


def test_write_category_is_configurable(account: FakeAccount, dev: str) -> None:
    provider = make(account, writable=True, write_vault=dev, category="API Credential")
    provider.set_many({"TOKEN": SecretValue(VALUE)})
    (item,) = account.in_vault(dev)
    assert item.category == "ApiCredentials"
    assert [f["id"] for f in item.fields] == ["credential"]
    assert provider.get("TOKEN").reveal() == VALUE


def test_a_write_updates_the_existing_item_in_place(account: FakeAccount, dev: str) -> None:
    username = {"id": "username", "title": "username", "field_type": "Text", "value": "fake-user"}
    item = account.add_item(dev, "DB", "fake-old", fields=[username])
    provider = make(account, writable=True, write_vault=dev)
    provider.set_many({"DB": SecretValue("fake-new")})
    assert list(account.items) == [item]
    assert account.value(dev, "DB") == "fake-new"
    assert account.value(dev, "DB", "username") == "fake-user"
    assert account.items[item].version == 2
    provider.set_many({"op://Dev/DB": SecretValue("fake-newer"), item: SecretValue("fake-newest")})
    assert account.value(dev, "DB") == "fake-newest"


def test_a_write_never_touches_another_vault(account: FakeAccount, dev: str, prod: str) -> None:
    account.add_item(prod, "SHARED", "fake-prod")
    provider = make(account, writable=True, write_vault=dev)
    with pytest.raises(ReadOnlyVault):
        provider.set_many({"op://Prod/SHARED": SecretValue(VALUE)})
    provider.set_many({"SHARED": SecretValue(VALUE)})  # a new item in the write vault
    assert account.value(prod, "SHARED") == "fake-prod"
    assert provider.list_names() == ["SHARED", "op://Prod/SHARED"]
    assert provider.get("SHARED").reveal() == VALUE


def test_a_write_to_a_field_path_is_refused(account: FakeAccount, dev: str) -> None:
    account.add_item(dev, "DB", "fake-old")
    provider = make(account, writable=True, write_vault=dev)
    with pytest.raises(InvalidRequest):
        provider.set_many({"op://Dev/DB/username": SecretValue(VALUE)})
    assert account.value(dev, "DB") == "fake-old"


def test_writable_needs_a_write_vault() -> None:
    options = OnePasswordOptions(service_account_token=TOKEN)
    context = ProviderContext(vault="team", base_dir=Path("/nonexistent"), writable=True)
    with pytest.raises(ConfigError) as caught:
        OnePasswordProvider(options, context, sdk=fake.make_sdk(FakeAccount()))
    assert "write.vaultId" in str(caught.value) and "Fix:" in str(caught.value)


def test_write_permission_denied_is_an_auth_error_without_the_value(account: FakeAccount, dev: str) -> None:
    account.read_only.add(dev)
    provider = make(account, writable=True, write_vault=dev)
    with pytest.raises(ProviderAuthError) as caught:
        provider.set_many({"KEY": SecretValue(VALUE)})
    assert "write access" in str(caught.value)
    assert VALUE not in everything_said(caught.value)


def test_a_failure_midway_says_what_was_written(account: FakeAccount, dev: str) -> None:
    provider = make(account, writable=True, write_vault=dev)
    account.fail("items.create", None, Exception(fake.UNREACHABLE))
    with pytest.raises(ProviderUnavailable) as caught:
        provider.set_many({"ONE": SecretValue("fake-1"), "TWO": SecretValue("fake-2"), "THREE": SecretValue("f-3")})
    message = str(caught.value)
    assert "Already written: 'ONE'; not written: 'TWO', 'THREE'." in message
    assert "fake-" not in message


def test_a_stale_item_is_reported_as_a_retryable_conflict(account: FakeAccount, dev: str) -> None:
    account.add_item(dev, "DB", "fake-old")
    provider = make(account, writable=True, write_vault=dev)
    account.fail("items.put", Exception(fake.STALE))
    with pytest.raises(ProviderUnavailable) as caught:
        provider.set_many({"DB": SecretValue(VALUE)})
    assert "try again" in str(caught.value)
    provider.set_many({"DB": SecretValue(VALUE)})
    assert account.value(dev, "DB") == VALUE


# --- failures -----------------------------------------------------------------------------------------


def test_a_bad_token_is_an_auth_error_that_never_shows_the_token(account: FakeAccount, dev: str) -> None:
    account.add_item(dev, "KEY", VALUE)
    for token in ("ops_fake-wrong-token-7777", "not-even-a-token-7777"):
        provider = make(account, token=token)
        for call in (provider.list_names, lambda p=provider: p.get("KEY")):
            with pytest.raises(ProviderAuthError) as caught:
                call()
            said = everything_said(caught.value)
            assert "serviceAccountToken" in str(caught.value)
            assert token not in said and VALUE not in said
            assert caught.value.__cause__ is not None  # chained: the SDK's text was one it is known to say


def test_auth_is_retried_after_a_failure(account: FakeAccount, dev: str) -> None:
    account.add_item(dev, "KEY", VALUE)
    account.fail("authenticate", Exception(fake.UNREACHABLE))
    provider = make(account)
    with pytest.raises(ProviderUnavailable):
        provider.list_names()
    assert provider.list_names() == ["KEY"]


def test_a_lost_session_signs_in_again(account: FakeAccount, dev: str) -> None:
    account.add_item(dev, "KEY", VALUE)
    provider = make(account)
    assert provider.get("KEY").reveal() == VALUE
    account.fail("items.get", Exception("you are not authenticated"))
    with pytest.raises(ProviderAuthError):
        provider.get("KEY")
    assert provider.get("KEY").reveal() == VALUE
    assert account.methods().count("authenticate") == 2


@pytest.mark.parametrize(
    ("error", "expected", "words"),
    [
        (Exception(fake.UNREACHABLE), ProviderUnavailable, "could not reach 1Password"),
        (fake.RateLimitExceededException("rate limit exceeded"), ProviderUnavailable, "rate limit"),
        (Exception("request timeout"), ProviderUnavailable, "could not reach"),
        (Exception(fake.NO_PERMISSION), ProviderAuthError, "may not"),
        (Exception("item couldn't be found"), SecretNotFound, "no secret 'KEY'"),
    ],
)
def test_sdk_failures_map_to_our_errors(
    account: FakeAccount, dev: str, error: Exception, expected: type[Exception], words: str
) -> None:
    account.add_item(dev, "KEY", VALUE)
    provider = make(account)
    provider.list_names()
    account.fail("items.get", error)
    with pytest.raises(expected) as caught:
        provider.get("KEY")
    assert words in str(caught.value)
    assert VALUE not in everything_said(caught.value)


def test_unrecognised_sdk_text_is_withheld_and_not_chained(account: FakeAccount, dev: str) -> None:
    account.add_item(dev, "KEY", VALUE)
    provider = make(account)
    account.fail("items.get", Exception(f"weird core failure near {VALUE} and {TOKEN}"))
    with pytest.raises(ProviderError) as caught:
        provider.get("KEY")
    said = everything_said(caught.value)
    assert VALUE not in said and TOKEN not in said
    assert "withheld" in str(caught.value)
    assert caught.value.__cause__ is None


def test_a_validation_error_in_the_sdk_is_not_chained(account: FakeAccount, dev: str) -> None:
    pydantic = pytest.importorskip("pydantic")
    account.add_item(dev, "KEY", VALUE)
    provider = make(account)
    try:
        pydantic.TypeAdapter(int).validate_python(VALUE)
    except pydantic.ValidationError as exc:
        account.fail("items.get", exc)
    with pytest.raises(ProviderError) as caught:
        provider.get("KEY")
    assert VALUE not in everything_said(caught.value)


def test_a_hung_call_times_out_as_unavailable(account: FakeAccount, dev: str, monkeypatch: pytest.MonkeyPatch) -> None:
    account.add_item(dev, "KEY", VALUE)
    account.delay = 0.5
    monkeypatch.setattr(OnePasswordProvider, "call_timeout", 0.1)
    with pytest.raises(ProviderUnavailable) as caught:
        make(account).list_names()
    assert "did not answer within 0.1 seconds" in str(caught.value)


# --- the private loop -----------------------------------------------------------------------------------


def test_construction_is_quiet_and_the_client_is_made_once(account: FakeAccount, dev: str) -> None:
    for i in range(20):
        account.add_item(dev, f"KEY_{i}", f"fake-{i}")
    account.delay = 0.005
    provider = make(account)
    assert account.calls == []
    assert provider._thread is None  # no thread, no sign-in until the first call
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = provider.get(f"KEY_{i}").reveal()

    in_threads(worker, range(20), timeout=10)
    assert results == {i: f"fake-{i}" for i in range(20)}
    assert account.methods().count("authenticate") == 1
    assert account.methods().count("vaults.list") == 1
    assert {name for _, name in account.calls} == {"agent-vault-1password-team"}
    provider.close()


def test_close_stops_the_thread_and_a_later_call_starts_again(account: FakeAccount, dev: str) -> None:
    account.add_item(dev, "KEY", VALUE)
    provider = make(account)
    provider.list_names()
    thread = provider._thread
    assert thread is not None and thread.is_alive()
    provider.close()
    thread.join(5)
    assert not thread.is_alive()
    assert provider.get("KEY").reveal() == VALUE
    provider.close()


def test_a_dropped_provider_stops_its_thread(account: FakeAccount, dev: str) -> None:
    account.add_item(dev, "KEY", VALUE)
    provider = make(account)
    provider.list_names()
    thread = provider._thread
    assert thread is not None
    del provider
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_calls_from_inside_a_running_event_loop_work(account: FakeAccount, dev: str) -> None:
    import asyncio

    account.add_item(dev, "KEY", VALUE)
    provider = make(account)

    async def main() -> str:
        return await asyncio.to_thread(lambda: provider.get("KEY").reveal())

    assert asyncio.run(main()) == VALUE
    provider.close()


# --- secrets stay secret ---------------------------------------------------------------------------------


def test_token_is_not_in_any_repr(account: FakeAccount) -> None:
    provider = make(account)
    options = OnePasswordOptions(service_account_token=TOKEN)
    for text in (repr(options), str(options), repr(provider), str(provider), repr(provider.__dict__.get("_thread"))):
        assert TOKEN not in text


# --- the SDK is an extra ---------------------------------------------------------------------------------


def test_missing_sdk_is_a_config_error_naming_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onepassword", None)  # `import onepassword` now raises ImportError
    options = OnePasswordOptions(service_account_token=TOKEN)
    context = ProviderContext(vault="team", base_dir=Path("/nonexistent"))
    with pytest.raises(ConfigError) as caught:
        OnePasswordProvider(options, context)
    assert str(caught.value) == (
        "the 1password provider needs the onepassword-sdk package: pip install 'agent-vault[onepassword]'"
    )
    assert str(caught.value) == INSTALL_HINT


def test_loading_a_1password_config_does_not_import_the_sdk(tmp_path: Path) -> None:
    path = tmp_path / "agent-vault.config.json"
    path.write_text(json.dumps({"vaults": {"dev": {"type": "1password", "serviceAccountToken": "env:T"}}}))
    code = (
        "import sys; from pathlib import Path; from agent_vault.configuration.project import load_config; "
        f"load_config(Path({str(path)!r}), {{'T': 'ops_x'}}); "
        "assert 'onepassword' not in sys.modules, 'the SDK was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- config: the seed README's 1Password examples, through the real registry --------------------------


ENV = {
    "OP_SERVICE_ACCOUNT_TOKEN": "ops_SECRET_service_token",
    "OP_DEV_TOKEN": "ops_SECRET_dev_token",
    "OP_PROD_TOKEN": "ops_SECRET_prod_token",
    "NGROK_AUTHTOKEN": "ngrok_SECRET_token",
}


def test_the_entry_point_is_installed() -> None:
    assert "1password" in provider_entry_points(), "run: .venv/bin/pip install -e '.[test,notify]'"
    assert provider_class("1password") is OnePasswordProvider


@pytest.mark.parametrize("text", SEED_1PASSWORD_EXAMPLES)
def test_seed_examples_load_verbatim_and_build_providers(tmp_path: Path, text: str) -> None:
    path = tmp_path / "agent-vault.config.json"
    path.write_text(text)
    config = load_config(path, ENV)
    raw = json.loads(text)
    for name, vault in config.vaults.items():
        section = raw["vaults"][name]
        if vault.type != "1password":
            continue
        options = vault.options
        assert isinstance(options, OnePasswordOptions)
        assert options.service_account_token == ENV[section["serviceAccountToken"][len("env:") :]]
        assert options.vault_ids == tuple(section.get("vaultIds", ()))
        if "write" in section:
            assert options.write is not None
            assert (options.write.vault_id, options.write.category) == (section["write"]["vaultId"], "Login")
        context = ProviderContext(vault=name, base_dir=vault.base_dir, writable=vault.writable)
        provider = OnePasswordProvider(options, context, sdk=fake.make_sdk(FakeAccount()))
        assert isinstance(provider, SecretProvider)
        shown = repr(config) + repr(vault) + repr(options) + json.dumps(redacted_view(config)) + repr(provider)
        assert not any(secret in shown for secret in ENV.values())


def test_write_category_defaults_to_login_and_is_checked(tmp_path: Path) -> None:
    def load(write: dict[str, Any]) -> Any:
        path = tmp_path / "agent-vault.config.json"
        section = {"type": "1password", "serviceAccountToken": "env:OP_DEV_TOKEN", "write": write}
        path.write_text(json.dumps({"vaults": {"dev": section}}))
        return load_config(path, ENV).vaults["dev"].options

    assert load({"vaultId": "v1"}).write.category == "Login"
    assert load({"vaultId": "v1", "category": "API_CREDENTIALS"}).write.category == "ApiCredentials"
    with pytest.raises(ConfigError) as caught:
        load({"vaultId": "v1", "category": "spaceship"})
    assert "vaults.dev.write.category: unknown item category 'spaceship'; use one of:" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load({"category": "login"})
    assert "vaults.dev.write.vaultId: required key is missing" in str(caught.value)


def test_config_errors_name_the_key_and_never_the_token(tmp_path: Path) -> None:
    path = tmp_path / "agent-vault.config.json"
    path.write_text(json.dumps({"vaults": {"dev": {"type": "1password", "vaultID": ["a"]}}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV)
    message = str(caught.value)
    assert "vaults.dev.vaultID: unknown key. Fix: did you mean `vaultIds`?" in message
    path.write_text(json.dumps({"vaults": {"dev": {"type": "1password", "serviceAccountToken": ["ops_SECRET_x"]}}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV)
    assert "SECRET" not in str(caught.value)


# --- through the broker: what an agent sees ---------------------------------------------------------------


@pytest.mark.anyio
async def test_through_the_broker(home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seed-style 1Password vault behind the real broker: list, read after approval, write."""
    from agent_vault.domain.request import Operation
    from tests.broker.test_core import OK, Clock, make_broker

    account = FakeAccount()
    dev, prod = account.add_vault("Dev"), account.add_vault("Prod")
    account.add_item(dev, "DATABASE_URL", "fake-db-url-1111")
    account.add_item(dev, "Stripe", "fake-stripe-dev")
    account.add_item(prod, "Stripe", "fake-stripe-prod")
    monkeypatch.setattr(onepassword, "_import_sdk", lambda: fake.make_sdk(account))
    project = tmp_path / "project"
    project.mkdir()
    section = {
        "type": "1password",
        "serviceAccountToken": "env:OP_SERVICE_ACCOUNT_TOKEN",
        "ttl": 0,
        "writable": True,
        "write": {"vaultId": dev, "category": "login"},
    }
    config = project / "agent-vault.config.json"
    config.write_text(json.dumps({"vaults": {"team": section}}))
    broker = make_broker(home, Clock())
    await broker.start()
    session = broker.open_session(config, {"OP_SERVICE_ACCOUNT_TOKEN": TOKEN}, {"client_name": "pytest", "pid": 1})

    listing = await broker.list_secrets(session)
    assert listing == {"team": ["DATABASE_URL", "Stripe", "op://Prod/Stripe"]}

    out = await broker.request_access(session, "team", ["DATABASE_URL", "op://Prod/Stripe"], "run migration 42")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    got = await broker.wait(session, out.request.id, 0)
    assert got.values["DATABASE_URL"].reveal() == "fake-db-url-1111"
    assert got.values["op://Prod/Stripe"].reveal() == "fake-stripe-prod"

    # names beyond the listing (a full reference) are asked for, not refused as missing ...
    full = await broker.request_access(session, "team", ["op://Dev/Stripe/password"], "deploy with the dev key")
    assert full.request is not None
    await broker.decide(full.request.id, True, OK)
    assert (await broker.wait(session, full.request.id, 0)).values["op://Dev/Stripe/password"].reveal() == (
        "fake-stripe-dev"
    )
    # ... while a name that points nowhere still fails before anyone is asked
    with pytest.raises(SecretNotFound):
        await broker.request_access(session, "team", ["op://Dev/Nothing"], "r")

    out = await broker.request_access(session, "team", ["NEW TOKEN"], "store", Operation.WRITE, {"NEW TOKEN": VALUE})
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    assert (await broker.wait(session, out.request.id, 0)).status == "written"
    assert account.value(dev, "NEW TOKEN") == VALUE
    assert "NEW TOKEN" in (await broker.list_secrets(session))["team"]
    for record in broker.audit.list():
        assert VALUE not in repr(record) and TOKEN not in repr(record)


# --- the fake against the real SDK --------------------------------------------------------------------------


def _shape(function: Any) -> list[tuple[str, Any, Any]]:
    params = inspect.signature(function).parameters.values()
    return [(p.name, p.kind, p.default) for p in params]


def test_the_fake_has_the_real_sdks_shapes() -> None:
    real = pytest.importorskip("onepassword")
    pairs = [
        (real.Client.authenticate, fake.Client.authenticate),
        (real.Secrets.resolve, fake.Secrets.resolve),
        (real.Vaults.list, fake.Vaults.list),
        (real.Items.list, fake.Items.list),
        (real.Items.get, fake.Items.get),
        (real.Items.create, fake.Items.create),
        (real.Items.put, fake.Items.put),
    ]
    for real_fn, fake_fn in pairs:
        assert _shape(real_fn) == _shape(fake_fn), real_fn.__qualname__
        assert inspect.iscoroutinefunction(real_fn) == inspect.iscoroutinefunction(fake_fn), real_fn.__qualname__
    assert isinstance(inspect.getattr_static(real.Client, "authenticate"), classmethod)
    assert isinstance(inspect.getattr_static(fake.Client, "authenticate"), classmethod)
    assert set(real.Client.__annotations__) >= {"secrets", "items", "vaults"}
    for model in fake.MODELS:
        real_model = getattr(real, model.__name__)
        assert {f.name for f in dataclasses.fields(model)} == set(real_model.model_fields), model.__name__
    for enum_class in fake.ENUMS:
        real_values = {member.value for member in getattr(real, enum_class.__name__)}
        assert {member.value for member in enum_class} <= real_values, enum_class.__name__
    assert real.RateLimitExceededException.__name__ == fake.RateLimitExceededException.__name__
    assert _shape(real.DesktopAuth.__init__) == _shape(fake.DesktopAuth.__init__)
    real_desktop = inspect.getsource(importlib.import_module("onepassword.desktop_core"))
    assert fake.DESKTOP_MISSING in real_desktop
    assert fake.DESKTOP_CLOSED.split(". ")[0] in real_desktop


def test_the_provider_uses_only_what_the_sdk_has() -> None:
    real = pytest.importorskip("onepassword")
    assert set(onepassword.CATEGORIES.values()) <= {c.value for c in real.ItemCategory}
    for name in ("Client", "ItemCreateParams", "ItemField", "ItemCategory", "ItemFieldType"):
        assert hasattr(real, name), name
    assert real.ItemFieldType.CONCEALED.value == "Concealed"
    assert real.ItemState.ACTIVE.value == "active"


def test_the_fake_refuses_a_reference_the_sdk_would_refuse() -> None:
    real = pytest.importorskip("onepassword")
    account = FakeAccount()
    vault = account.add_vault("Dev")
    account.add_item(vault, "Item", VALUE)
    for reference in ("op://Dev/It+em/password", "op://Dev/Item", "op://Dev/Item/password"):
        try:
            real.Secrets.validate_secret_reference(reference)
            real_ok = True
        except Exception:
            real_ok = False
        try:
            fake._resolve(account, reference)
            fake_ok = True
        except Exception as exc:
            fake_ok = "could not be parsed" not in str(exc)
        assert real_ok == fake_ok, reference


def test_the_real_sdk_refuses_a_bad_token_as_an_auth_error() -> None:
    real = pytest.importorskip("onepassword")
    options = OnePasswordOptions(service_account_token="ops_not-a-real-token-8888")
    provider = OnePasswordProvider(options, ProviderContext(vault="real", base_dir=Path("/nonexistent")), sdk=real)
    try:
        with pytest.raises(ProviderAuthError) as caught:
            provider.list_names()
        assert "ops_not-a-real-token-8888" not in everything_said(caught.value)
    finally:
        provider.close()


# --- live: a real 1Password account, only when a token is given -------------------------------------------

LIVE_TOKEN = os.environ.get("OP_SERVICE_ACCOUNT_TOKEN")


@pytest.mark.skipif(not LIVE_TOKEN, reason="set OP_SERVICE_ACCOUNT_TOKEN to run against a real 1Password account")
def test_live_service_account() -> None:
    """Lists, reads the first listed secret, and, when AGENT_VAULT_OP_WRITE_VAULT names a vault, writes
    an item there, reads it back and deletes it. Values are compared, never printed."""
    real = pytest.importorskip("onepassword")
    assert LIVE_TOKEN is not None
    write_vault = os.environ.get("AGENT_VAULT_OP_WRITE_VAULT")
    write = OnePasswordWriteOptions(vault_id=write_vault) if write_vault else None
    options = OnePasswordOptions(service_account_token=LIVE_TOKEN, write=write)
    context = ProviderContext(vault="live", base_dir=Path("/nonexistent"), writable=write is not None)
    provider = OnePasswordProvider(options, context, sdk=real)
    try:
        names = provider.list_names()
        assert names == sorted(names)
        for name in names[:1]:
            with contextlib.suppress(SecretNotFound):  # an item without a password field
                assert isinstance(provider.get(name), SecretValue)
        if write is not None:
            title = f"agent-vault live test {time.time_ns()}"
            value = f"fake-live-{time.time_ns()}"
            provider.set_many({title: SecretValue(value)})
            try:
                assert provider.get(title).reveal() == value
                assert title in provider.list_names()
            finally:
                _live_delete(provider, write_vault or "", title)
    finally:
        provider.close()


def _live_delete(provider: OnePasswordProvider, vault_id: str, title: str) -> None:
    async def delete() -> None:
        client = await provider._signed_in()
        for item in await client.items.list(vault_id):
            if item.title == title:
                await client.items.delete(vault_id, item.id)

    provider._run(delete())


# --- signing in through the desktop app ------------------------------------------------------------------------


class TestOnePasswordDesktopContract(ProviderContract):
    """The whole contract with `account` (desktop-app sign-in) instead of a service account token."""

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        account = FakeAccount()
        vault = account.add_vault("Contract")
        for name, value in names_to_values.items():
            account.add_item(vault, name, value)
        return make(account, writable=writable, write_vault=vault, desktop_account="fake-family")


def test_desktop_sign_in_passes_the_account_to_the_sdks_desktop_auth(account: FakeAccount) -> None:
    real = pytest.importorskip("onepassword")
    vault = account.add_vault("Dev")
    account.add_item(vault, "API_KEY", VALUE)
    provider = make(account, desktop_account="fake-family", sdk=fake.make_sdk(account, types=real))
    assert provider.get("API_KEY").reveal() == VALUE
    [auth] = account.desktop_sign_ins
    assert isinstance(auth, real.DesktopAuth) and auth.account_name == "fake-family"


@pytest.mark.parametrize(
    ("app", "kind", "fix"),
    [
        ("missing", ProviderUnavailable, "install 1Password"),
        ("closed", ProviderUnavailable, "Integrate with other apps"),
    ],
)
def test_desktop_app_problems_name_the_fix(account: FakeAccount, app: str, kind: type[Exception], fix: str) -> None:
    account.add_vault("Dev")
    account.desktop_app = app
    with pytest.raises(kind) as caught:
        make(account, desktop_account="fake-family").list_names()
    assert fix in str(caught.value)
    assert "serviceAccountToken" not in str(caught.value) or app == "missing"


def test_desktop_sign_in_to_an_unknown_account_withholds_the_sdks_text(account: FakeAccount) -> None:
    account.add_vault("Dev")
    with pytest.raises(ProviderError) as caught:
        make(account, desktop_account="fake-other").list_names()
    assert "fake: no account" not in str(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    "keys",
    [{}, {"serviceAccountToken": "env:OP_DEV_TOKEN", "account": "fake-family"}],
    ids=["neither", "both"],
)
def test_exactly_one_way_to_sign_in(tmp_path: Path, keys: dict[str, str]) -> None:
    path = tmp_path / "agent-vault.config.json"
    path.write_text(json.dumps({"vaults": {"dev": {"type": "1password", **keys}}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV)
    message = str(caught.value)
    assert "exactly one way to sign in" in message and "vaults.dev" in message
    assert not any(secret in message for secret in ENV.values())


def test_a_desktop_config_loads_without_a_token(tmp_path: Path) -> None:
    path = tmp_path / "agent-vault.toml"
    path.write_text('[vaults.mine]\ntype = "1password"\naccount = "fake-family"\n')
    options = load_config(path, {}).vaults["mine"].options
    assert isinstance(options, OnePasswordOptions)
    assert options.account == "fake-family" and options.service_account_token is None
