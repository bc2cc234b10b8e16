"""BitwardenProvider: the provider contract and its own rules, against a fake of the SDK and the real SDK.

The fake (`fake_bitwarden.py`) stands at the SDK boundary and records every call; tests below hold its
shapes to the installed SDK. The real SDK runs in the provider's worker process against loopback
servers only (its token parsing, a refused sign-in, an unreachable and a silent server). The live
test at the end runs only when BWS_ACCESS_TOKEN and BWS_ORGANIZATION_ID are set.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
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
from agent_vault.providers import bitwarden_sdk_edge as edge
from agent_vault.providers.base import ProviderContext, SecretProvider
from agent_vault.providers.bitwarden import (
    INSTALL_HINT,
    BitwardenOptions,
    BitwardenProvider,
    BitwardenWriteOptions,
    Entry,
    Index,
    Project,
)
from agent_vault.providers.registry import provider_class, provider_entry_points
from tests.providers import fake_bitwarden as fake
from tests.providers.contract import ProviderContract, everything_said, in_threads
from tests.providers.fake_bitwarden import FakeAccount

VALUE = "fake-bw-value-5555"


def make(
    account: FakeAccount,
    *,
    writable: bool = False,
    project_ids: tuple[str, ...] = (),
    write_project: str | None = None,
    token: str | None = None,
    sdk: Any = None,
    **urls: str,
) -> BitwardenProvider:
    write = BitwardenWriteOptions(project_id=write_project) if write_project else None
    options = BitwardenOptions(
        access_token=token or account.token,
        organization_id=account.organization_id,
        project_ids=project_ids,
        write=write,
        **urls,
    )
    context = ProviderContext(vault="team", base_dir=Path("/nonexistent"), writable=writable)
    return BitwardenProvider(options, context, sdk=sdk if sdk is not None else fake.make_sdk(account))


@pytest.fixture
def account() -> FakeAccount:
    return FakeAccount()


@pytest.fixture
def dev(account: FakeAccount) -> str:
    return account.add_project("Dev")


@pytest.fixture
def prod(account: FakeAccount) -> str:
    return account.add_project("Prod")


class BitwardenContract(ProviderContract):
    """Secrets Manager cannot hold an empty value: a write of one is refused, and none is seeded."""

    refused_values = ("empty",)


class TestBitwardenContract(BitwardenContract):
    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        account = FakeAccount()
        project = account.add_project("Contract")
        for name, value in names_to_values.items():
            account.add_secret(name, value, project)
        return make(account, writable=writable, write_project=project)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        account = FakeAccount()
        account.add_project("Contract")
        return make(account, token=fake.make_token(secret="fakeRevokedSecret"))


class TestBitwardenContractWithRealModels(BitwardenContract):
    """The same contract, with settings and responses as the installed SDK's own models."""

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        real = pytest.importorskip("bitwarden_sdk")
        account = FakeAccount()
        project = account.add_project("Contract")
        for name, value in names_to_values.items():
            account.add_secret(name, value, project)
        return make(account, writable=writable, write_project=project, sdk=fake.make_sdk(account, types=real))

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        real = pytest.importorskip("bitwarden_sdk")
        account = FakeAccount()
        account.add_project("Contract")
        token = fake.make_token(secret="fakeRevokedSecret")
        return make(account, token=token, sdk=fake.make_sdk(account, types=real))


# --- the exact SDK calls --------------------------------------------------------------------------------


def test_list_signs_in_once_and_lists_projects_and_secrets(account: FakeAccount, dev: str) -> None:
    account.add_secret("KEY", VALUE, dev)
    provider = make(account)
    assert provider.list_names() == ["KEY"]
    org = account.organization_id
    assert account.calls == [
        ("auth.login_access_token", {"access_token": account.token, "state_file": None}),
        ("projects.list", {"organization_id": org}),
        ("secrets.list", {"organization_id": org}),
    ]
    assert VALUE not in repr(account.calls)  # a listing reads no value
    assert account.clients == [
        {
            "apiUrl": "https://api.bitwarden.com",
            "identityUrl": "https://identity.bitwarden.com",
            "userAgent": f"agent-vault/{__import__('agent_vault').__version__}",
            "deviceType": "SDK",
        }
    ]


def test_get_reads_one_secret_by_id(account: FakeAccount, dev: str) -> None:
    secret = account.add_secret("KEY", VALUE, dev)
    provider = make(account)
    assert provider.get("KEY").reveal() == VALUE
    assert account.calls[-1] == ("secrets.get_by_ids", {"ids": [secret]})
    assert account.methods().count("auth.login_access_token") == 1


def test_server_urls_go_to_the_client(account: FakeAccount, dev: str) -> None:
    make(account, api_url="https://api.bitwarden.eu/", identity_url="https://identity.bitwarden.eu").list_names()
    assert account.clients[0]["apiUrl"] == "https://api.bitwarden.eu"
    assert account.clients[0]["identityUrl"] == "https://identity.bitwarden.eu"


def test_an_update_keeps_key_note_and_project(account: FakeAccount, dev: str, prod: str) -> None:
    secret = account.add_secret("DB_PASSWORD", "fake-old", prod, note="fake rotation note")
    provider = make(account, writable=True, write_project=dev)
    provider.set_many({"DB_PASSWORD": SecretValue(VALUE)})
    org = account.organization_id
    assert account.calls[-2:] == [
        ("secrets.get_by_ids", {"ids": [secret]}),
        (
            "secrets.update",
            {
                "organization_id": org,
                "id": secret,
                "key": "DB_PASSWORD",
                "value": VALUE,
                "note": "fake rotation note",
                "project_ids": [prod],
            },
        ),
    ]
    stored = account.secrets[secret]
    assert (stored.key, stored.value, stored.note, stored.project_id) == (
        "DB_PASSWORD",
        VALUE,
        "fake rotation note",
        prod,
    )
    assert len(account.secrets) == 1


def test_a_new_name_is_created_in_the_write_project(account: FakeAccount, dev: str, prod: str) -> None:
    provider = make(account, writable=True, write_project="Dev")
    provider.set_many({"NEW KEY/one": SecretValue(VALUE)})
    assert account.calls[-1] == (
        "secrets.create",
        {
            "organization_id": account.organization_id,
            "key": "NEW KEY/one",
            "value": VALUE,
            "note": "",
            "project_ids": [dev],
        },
    )
    assert account.value("NEW KEY/one", dev) == VALUE
    assert account.in_project(prod) == []
    assert provider.get("NEW KEY/one").reveal() == VALUE


# --- names ------------------------------------------------------------------------------------------


def test_unique_keys_are_listed_as_they_are(account: FakeAccount, dev: str, prod: str) -> None:
    account.add_secret("DATABASE_URL", "fake-db-1", dev)
    account.add_secret("Production DB Password", "fake-db-2", prod)
    account.add_secret("team/api key", "fake-api-3", dev)
    provider = make(account)
    assert provider.list_names() == ["DATABASE_URL", "Production DB Password", "team/api key"]
    assert provider.get("Production DB Password").reveal() == "fake-db-2"
    assert provider.get("team/api key").reveal() == "fake-api-3"


def test_a_key_in_two_projects_is_listed_with_its_project(account: FakeAccount, dev: str, prod: str) -> None:
    a = account.add_secret("STRIPE_KEY", "fake-stripe-dev", dev)
    b = account.add_secret("STRIPE_KEY", "fake-stripe-prod", prod)
    provider = make(account)
    assert provider.list_names() == ["Dev/STRIPE_KEY", "Prod/STRIPE_KEY"]
    assert provider.get("Dev/STRIPE_KEY").reveal() == "fake-stripe-dev"
    assert provider.get("Prod/STRIPE_KEY").reveal() == "fake-stripe-prod"
    assert provider.get(f"{prod}/STRIPE_KEY").reveal() == "fake-stripe-prod"  # the project's ID works too
    assert provider.get(a).reveal() == "fake-stripe-dev"  # and so does the secret's ID, in any case
    assert provider.get(b.upper()).reveal() == "fake-stripe-prod"


def test_an_ambiguous_key_names_the_choices(account: FakeAccount, dev: str, prod: str) -> None:
    account.add_secret("STRIPE_KEY", "fake-stripe-dev", dev)
    account.add_secret("STRIPE_KEY", "fake-stripe-prod", prod)
    provider = make(account)
    for call in (provider.get, provider.has):
        with pytest.raises(SecretNotFound) as caught:
            call("STRIPE_KEY")
        message = str(caught.value)
        assert "'Dev/STRIPE_KEY'" in message and "'Prod/STRIPE_KEY'" in message
        assert "fake-stripe" not in message
    assert "secrets.get_by_ids" not in account.methods()


def test_keys_that_are_no_valid_name_or_repeat_in_a_project_are_listed_by_id(
    account: FakeAccount, dev: str, prod: str
) -> None:
    odd = account.add_secret("Stripe (old)", "fake-odd", dev)
    twin1 = account.add_secret("TWIN", "fake-twin-1", dev)
    twin2 = account.add_secret("TWIN", "fake-twin-2", dev)
    same_name = account.add_project("Dev")  # two projects called Dev
    twin3 = account.add_secret("TWIN", "fake-twin-3", same_name)
    provider = make(account)
    names = provider.list_names()
    assert names == sorted([odd, twin1, twin2, f"{same_name}/TWIN"])
    for name in names:
        assert check_name(name) == name  # an agent can send every listed name
    assert provider.get(twin2).reveal() == "fake-twin-2"
    assert provider.get(f"{same_name}/TWIN").reveal() == "fake-twin-3"
    assert provider.get(twin3).reveal() == "fake-twin-3"
    with pytest.raises(SecretNotFound) as caught:
        provider.get("Dev/TWIN")
    assert twin1 in str(caught.value) and twin2 in str(caught.value)


def test_a_key_that_looks_like_a_qualified_name_does_not_shadow_it(account: FakeAccount, dev: str, prod: str) -> None:
    sneaky = account.add_secret("Dev/API_KEY", "fake-sneaky", prod)
    account.add_secret("API_KEY", "fake-real", dev)
    provider = make(account)
    assert provider.list_names() == sorted(["API_KEY", "Prod/Dev/API_KEY"])
    assert provider.get("API_KEY").reveal() == "fake-real"
    assert provider.get("Prod/Dev/API_KEY").reveal() == "fake-sneaky"
    with pytest.raises(SecretNotFound):
        provider.get("Dev/API_KEY")  # both: one by key, one by project and key
    assert provider.get(sneaky).reveal() == "fake-sneaky"


def test_a_secret_added_after_the_listing_is_found(account: FakeAccount, dev: str) -> None:
    provider = make(account)
    assert provider.list_names() == []
    account.add_secret("LATE", "fake-late", dev)
    assert provider.has("LATE")
    assert provider.get("LATE").reveal() == "fake-late"
    assert not provider.has("NEVER")
    assert not provider.has(str(uuid.uuid4()))


def test_listing_is_reused_for_a_while(account: FakeAccount, dev: str, monkeypatch: pytest.MonkeyPatch) -> None:
    account.add_secret("KEY", "fake-1", dev)
    provider = make(account)
    provider.list_names()
    provider.list_names()
    provider.get("KEY")
    assert account.methods().count("secrets.list") == 1
    monkeypatch.setattr(BitwardenProvider, "listing_ttl", 0.0)
    provider.list_names()
    assert account.methods().count("secrets.list") == 2


# --- projectIds ------------------------------------------------------------------------------------------


def test_project_ids_choose_the_projects_by_id_or_name(account: FakeAccount, dev: str, prod: str) -> None:
    other = account.add_project("Other")
    for project, key in ((dev, "D"), (prod, "P"), (other, "O")):
        account.add_secret(key, f"fake-{key}", project)
    assert make(account, project_ids=(dev, "Prod")).list_names() == ["D", "P"]
    assert make(account, project_ids=(dev.upper(),)).list_names() == ["D"]
    assert make(account).list_names() == ["D", "O", "P"]
    assert make(account, project_ids=(dev,), writable=True, write_project=other).list_names() == ["D", "O"]
    with pytest.raises(SecretNotFound):
        make(account, project_ids=(dev,)).get("P")


def test_a_project_the_account_cannot_see_is_a_config_error(account: FakeAccount, dev: str) -> None:
    hidden = account.add_project("Hidden")
    account.hidden.add(hidden)
    for kwargs, key in (
        ({"project_ids": (dev, "nosuchproject")}, "projectIds[1] is 'nosuchproject'"),
        ({"project_ids": (hidden,)}, f"projectIds[0] is '{hidden}'"),
        ({"writable": True, "write_project": "nosuchproject"}, "write.projectId is 'nosuchproject'"),
    ):
        with pytest.raises(ConfigError) as caught:
            make(account, **kwargs).list_names()  # type: ignore[arg-type]
        assert key in str(caught.value) and "Fix:" in str(caught.value)


def test_a_project_name_used_twice_must_be_given_by_id(account: FakeAccount, dev: str) -> None:
    twin = account.add_project("Dev")
    with pytest.raises(ConfigError) as caught:
        make(account, project_ids=("Dev",)).list_names()
    assert "names more than one project" in str(caught.value)
    assert make(account, project_ids=(twin,)).list_names() == []


# --- writes ---------------------------------------------------------------------------------------------


def test_a_qualified_new_name_creates_the_key_in_the_write_project(account: FakeAccount, dev: str, prod: str) -> None:
    provider = make(account, writable=True, write_project=dev)
    provider.set_many({"Dev/TOKEN": SecretValue(VALUE)})
    (created,) = account.in_project(dev)
    assert created.key == "TOKEN"
    with pytest.raises(ReadOnlyVault) as caught:
        provider.set_many({"Prod/TOKEN": SecretValue("fake-other")})
    assert "write.projectId" in str(caught.value)
    assert account.in_project(prod) == []


def test_a_write_updates_a_secret_named_by_id_or_project(account: FakeAccount, dev: str, prod: str) -> None:
    a = account.add_secret("SHARED", "fake-a", dev)
    b = account.add_secret("SHARED", "fake-b", prod)
    provider = make(account, writable=True, write_project=dev)
    provider.set_many({"Prod/SHARED": SecretValue("fake-b2"), a: SecretValue("fake-a2")})
    assert (account.secrets[a].value, account.secrets[b].value) == ("fake-a2", "fake-b2")
    with pytest.raises(SecretNotFound) as caught:
        provider.set_many({"SHARED": SecretValue(VALUE)})  # never guessed, never created beside them
    assert "'Dev/SHARED'" in str(caught.value)
    assert len(account.secrets) == 2


def test_writes_that_cannot_work_are_refused_before_anything_is_written(account: FakeAccount, dev: str) -> None:
    account.add_secret("KEY", "fake-old", dev)
    provider = make(account, writable=True, write_project=dev)
    bad: list[dict[str, SecretValue]] = [
        {"OK_ONE": SecretValue("fake-1"), "EMPTY": SecretValue("")},
        {"OK_ONE": SecretValue("fake-1"), "HUGE": SecretValue("x" * 25_001)},
        {"OK_ONE": SecretValue("fake-1"), str(uuid.uuid4()): SecretValue("fake-2")},
        {"KEY": SecretValue("fake-1"), "Dev/KEY": SecretValue("fake-2")},
        {"NEW": SecretValue("fake-1"), "Dev/NEW": SecretValue("fake-2")},
    ]
    for values in bad:
        with pytest.raises((InvalidRequest, SecretNotFound)) as caught:
            provider.set_many(values)
        assert "fake-" not in str(caught.value)
    assert "secrets.create" not in account.methods() and "secrets.update" not in account.methods()
    assert provider.set_many({"x" * 0 + "BIG": SecretValue("x" * 25_000)}) is None


def test_writable_needs_a_write_project(account: FakeAccount) -> None:
    options = BitwardenOptions(access_token=account.token, organization_id=account.organization_id)
    context = ProviderContext(vault="team", base_dir=Path("/nonexistent"), writable=True)
    with pytest.raises(ConfigError) as caught:
        BitwardenProvider(options, context, sdk=fake.make_sdk(account))
    assert "write.projectId" in str(caught.value) and "Fix:" in str(caught.value)


def test_write_permission_denied_is_an_auth_error_without_the_value(account: FakeAccount, dev: str) -> None:
    account.read_only.add(dev)
    account.add_secret("KEY", "fake-old", dev)
    provider = make(account, writable=True, write_project=dev)
    for name in ("KEY", "NEW"):
        with pytest.raises(ProviderAuthError) as caught:
            provider.set_many({name: SecretValue(VALUE)})
        assert "Can read, write" in str(caught.value)
        assert VALUE not in everything_said(caught.value)
    assert account.value("KEY") == "fake-old"


def test_a_failure_midway_says_what_was_written(account: FakeAccount, dev: str) -> None:
    provider = make(account, writable=True, write_project=dev)
    account.fail("secrets.create", None, Exception(fake.unreachable("https://api.bitwarden.com/x")))
    with pytest.raises(ProviderUnavailable) as caught:
        provider.set_many({"ONE": SecretValue("fake-1"), "TWO": SecretValue("fake-2"), "THREE": SecretValue("f-3")})
    message = str(caught.value)
    assert "Already written: 'ONE'; not written: 'TWO', 'THREE'." in message
    assert "fake-" not in message
    assert caught.value.__cause__ is None


def test_a_secret_deleted_before_its_update_is_not_found(account: FakeAccount, dev: str) -> None:
    secret = account.add_secret("KEY", "fake-old", dev)
    provider = make(account, writable=True, write_project=dev)
    provider.list_names()
    account.fail("secrets.get_by_ids", Exception(fake.NOT_FOUND))
    with pytest.raises(SecretNotFound) as caught:
        provider.set_many({"KEY": SecretValue(VALUE)})
    assert "no secret 'KEY'" in str(caught.value)
    assert account.secrets[secret].value == "fake-old"


# --- failures ---------------------------------------------------------------------------------------------


def test_a_bad_token_is_an_auth_error_that_never_shows_the_token(account: FakeAccount, dev: str) -> None:
    account.add_secret("KEY", VALUE, dev)
    for token in (fake.make_token(secret="fakeWrongSecret7777"), "not-even-a-token-7777", "0.abc.def:ghi7777"):
        provider = make(account, token=token)
        for call in (provider.list_names, lambda p=provider: p.get("KEY")):
            with pytest.raises(ProviderAuthError) as caught:
                call()
            said = everything_said(caught.value)
            assert "accessToken" in str(caught.value)
            assert token not in said and VALUE not in said and "invalid_client" not in said
            assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_sign_in_is_tried_again_after_a_failure(account: FakeAccount, dev: str) -> None:
    account.add_secret("KEY", VALUE, dev)
    account.fail("auth.login_access_token", Exception(fake.unreachable("https://identity.bitwarden.com/connect/token")))
    provider = make(account)
    with pytest.raises(ProviderUnavailable) as caught:
        provider.list_names()
    assert "https://identity.bitwarden.com" in str(caught.value) and "sign in" in str(caught.value)
    assert provider.list_names() == ["KEY"]


def test_an_expired_session_signs_in_again(account: FakeAccount, dev: str) -> None:
    account.add_secret("KEY", VALUE, dev)
    provider = make(account)
    assert provider.get("KEY").reveal() == VALUE
    account.fail("secrets.get_by_ids", Exception(fake.UNAUTHORIZED))
    with pytest.raises(ProviderAuthError):
        provider.get("KEY")
    assert provider.get("KEY").reveal() == VALUE
    assert account.methods().count("auth.login_access_token") == 2


def test_an_unreachable_server_is_unavailable_naming_it(account: FakeAccount, dev: str) -> None:
    account.unreachable = True
    provider = make(account, api_url="https://bw.example.test/api", identity_url="https://bw.example.test/identity")
    with pytest.raises(ProviderUnavailable) as caught:
        provider.list_names()
    assert "https://bw.example.test/identity" in str(caught.value)


@pytest.mark.parametrize(
    ("error", "expected", "words"),
    [
        (Exception(fake.unreachable("https://api.bitwarden.com/secrets/x")), ProviderUnavailable, "could not reach"),
        (Exception(fake.SERVER_ERROR + "fake-bw-value-5555"), ProviderUnavailable, "could not reach"),
        (Exception(fake.TOO_MANY), ProviderUnavailable, "rate limit"),
        (Exception(fake.FORBIDDEN), ProviderAuthError, "may not read a secret"),
        (Exception(fake.NOT_FOUND), SecretNotFound, "no secret 'KEY'"),
        (Exception(fake.SERVER + "[409 Conflict] fake-bw-value-5555"), ProviderError, "HTTP 409"),
        (Exception("error decoding response body"), ProviderUnavailable, "could not reach"),
    ],
)
def test_sdk_failures_map_to_our_errors(
    account: FakeAccount, dev: str, error: Exception, expected: type[Exception], words: str
) -> None:
    account.add_secret("KEY", VALUE, dev)
    provider = make(account)
    provider.list_names()
    account.fail("secrets.get_by_ids", error)
    with pytest.raises(expected) as caught:
        provider.get("KEY")
    assert words in str(caught.value)
    assert VALUE not in everything_said(caught.value)
    assert caught.value.__cause__ is None


def test_unrecognised_sdk_text_and_panics_are_withheld(account: FakeAccount, dev: str) -> None:
    account.add_secret("KEY", VALUE, dev)
    provider = make(account)

    class PanicException(BaseException):  # as pyo3_runtime.PanicException: not an Exception
        pass

    for error in (Exception(f"weird core failure near {VALUE} and {account.token}"), PanicException(VALUE)):
        account.fail("secrets.get_by_ids", error)
        with pytest.raises(ProviderError) as caught:
            provider.get("KEY")
        said = everything_said(caught.value)
        assert VALUE not in said and account.token not in said
        assert "withheld" in str(caught.value)


def test_an_unknown_organization_is_a_config_error(account: FakeAccount) -> None:
    options = BitwardenOptions(access_token=account.token, organization_id=str(uuid.uuid4()))
    provider = BitwardenProvider(
        options, ProviderContext(vault="team", base_dir=Path("/x")), sdk=fake.make_sdk(account)
    )
    with pytest.raises(ConfigError) as caught:
        provider.list_names()
    assert "organizationId" in str(caught.value)


def test_edge_classifies_fixed_texts_only() -> None:
    cases = {
        ("Doesn't contain a decryption key", "login"): ("auth", None),
        ('Received error message from server: [400 Bad Request] {"error":"invalid_client"}', "login"): ("auth", 400),
        ("Received error message from server: [400 Bad Request] x", "create_secret"): ("rejected", 400),
        ("Received error message from server: [404 Not Found] x", "get_secrets"): ("not_found", 404),
        ("Received error message from server: [503 Service Unavailable] x", "list_secrets"): ("unavailable", 503),
        ("builder error for url (http://x/identity/connect/token)", "login"): ("config", None),
        ("value must not be empty", "create_secret"): ("invalid", None),
        ("Access token isn't associated with an organization", "create_secret"): ("auth", None),
        ("Error while decrypting EncString", "login"): ("auth", None),
        ("Error while decrypting EncString", "get_secrets"): ("other", None),
        ("something new", "login"): ("other", None),
    }
    for (text, op), (kind, status) in cases.items():
        found = edge.classify(text, op)
        assert (found.kind, found.status) == (kind, status), text
        assert text not in str(found)


# --- threads -------------------------------------------------------------------------------------------


def test_concurrent_reads_sign_in_once(account: FakeAccount, dev: str) -> None:
    for i in range(20):
        account.add_secret(f"KEY_{i}", f"fake-{i}", dev)
    account.delay = 0.002
    provider = make(account)
    assert account.calls == [] and account.clients == []  # nothing happens until the first call
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = provider.get(f"KEY_{i}").reveal()

    in_threads(worker, range(20), timeout=10)
    assert results == {i: f"fake-{i}" for i in range(20)}
    assert account.methods().count("auth.login_access_token") == 1
    assert account.methods().count("secrets.list") == 1
    assert len(account.clients) == 1


def test_close_forgets_the_session(account: FakeAccount, dev: str) -> None:
    account.add_secret("KEY", VALUE, dev)
    provider = make(account)
    provider.list_names()
    provider.close()
    assert provider.get("KEY").reveal() == VALUE
    assert account.methods().count("auth.login_access_token") == 2
    assert len(account.clients) == 2


class DyingWorker:
    """A worker whose process dies in every call."""

    def __init__(self) -> None:
        self.generation = 1
        self.dead = False
        self.ops: list[str] = []

    def start(self) -> int:
        if self.dead:  # a new process
            self.generation += 1
            self.dead = False
        return self.generation

    def call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        self.ops.append(op)
        self.dead = True
        raise edge.WorkerGone()

    def signed_in_afresh(self, provider: BitwardenProvider) -> None:
        self.ops.clear()
        self.dead = False
        provider._signed_in = self.generation

    def close(self) -> None:
        pass


def test_a_read_is_tried_once_more_when_the_worker_dies_and_a_write_is_not(account: FakeAccount, dev: str) -> None:
    provider = make(account, writable=True, write_project=dev)
    provider._index = Index("team", [Entry(str(uuid.uuid4()), "KEY", None)], [Project(dev, "Dev")], Project(dev, "Dev"))
    worker = DyingWorker()
    provider._worker = worker  # type: ignore[assignment]
    with pytest.raises(ProviderUnavailable) as caught:
        provider.get("KEY")
    assert "stopped unexpectedly" in str(caught.value)
    assert worker.ops == ["login", "login"]  # each try signs in in a new worker
    worker.signed_in_afresh(provider)
    with pytest.raises(ProviderUnavailable):
        provider._call("read a secret", "get_secrets", "KEY", ids=["x"])
    assert worker.ops == ["get_secrets", "login"]
    worker.signed_in_afresh(provider)
    with pytest.raises(ProviderUnavailable):
        provider._call("create a secret", "create_secret", organization_id=account.organization_id)
    assert worker.ops == ["create_secret"]


# --- secrets stay secret ---------------------------------------------------------------------------------


def test_token_is_not_in_any_repr(account: FakeAccount) -> None:
    provider = make(account)
    options = BitwardenOptions(access_token=account.token, organization_id=account.organization_id)
    for text in (repr(options), str(options), repr(provider), str(provider)):
        assert account.token not in text


# --- options -------------------------------------------------------------------------------------------


ENV = {"BWS_ACCESS_TOKEN": "0.SECRET-token-value.x:y", "BWS_PROD_TOKEN": "0.SECRET-prod-token.x:y"}
ORG = "f1b1c1d1-0000-4000-8000-00000000000a"


def _load(tmp_path: Path, section: dict[str, Any]) -> Any:
    path = tmp_path / "agent-vault.config.json"
    path.write_text(json.dumps({"vaults": {"bw": {"type": "bitwarden", **section}}}))
    return load_config(path, ENV)


def test_options_defaults_and_url_rules(tmp_path: Path) -> None:
    base = {"accessToken": "env:BWS_ACCESS_TOKEN", "organizationId": ORG.upper()}
    options = _load(tmp_path, base).vaults["bw"].options
    assert isinstance(options, BitwardenOptions)
    assert (options.organization_id, options.project_ids, options.write) == (ORG, (), None)
    assert (options.api_url, options.identity_url) == ("https://api.bitwarden.com", "https://identity.bitwarden.com")
    options = (
        _load(
            tmp_path,
            {**base, "apiUrl": "https://bw.example.test/api/", "identityUrl": " https://bw.example.test/identity"},
        )
        .vaults["bw"]
        .options
    )
    assert (options.api_url, options.identity_url) == (
        "https://bw.example.test/api",
        "https://bw.example.test/identity",
    )
    for bad in ("http://bw.example.test/api", "bw.example.test", "https://"):
        with pytest.raises(ConfigError) as caught:
            _load(tmp_path, {**base, "apiUrl": bad})
        assert "vaults.bw.apiUrl" in str(caught.value) and "https://api.bitwarden.eu" in str(caught.value)


def test_options_errors_name_the_key_and_never_the_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"accessToken": "env:BWS_ACCESS_TOKEN", "organizationId": "my-org"})
    assert "vaults.bw.organizationId" in str(caught.value) and "#/sm/<organization ID>" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"projectID": ["a"]})
    message = str(caught.value)
    assert "vaults.bw.accessToken: required key is missing" in message
    assert "vaults.bw.organizationId: required key is missing" in message
    assert "vaults.bw.projectID: unknown key. Fix: did you mean `projectIds`?" in message
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"accessToken": ["0.SECRET-x"], "organizationId": ORG})
    assert "SECRET" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"accessToken": "env:BWS_ACCESS_TOKEN", "organizationId": ORG, "write": {}})
    assert "vaults.bw.write.projectId: required key is missing" in str(caught.value)


TOML = """
[vaults.team]
type = "bitwarden"
accessToken = "env:BWS_ACCESS_TOKEN"
organizationId = "{org}"
projectIds = ["{dev}", "Prod"]
writable = true
ttl = 0

[vaults.team.write]
projectId = "{dev}"
"""


def test_a_toml_config_builds_a_working_provider(tmp_path: Path, account: FakeAccount, dev: str, prod: str) -> None:
    account.add_secret("API_KEY", "fake-api", prod)
    account.add_secret("HIDDEN", "fake-hidden", account.add_project("Other"))
    path = tmp_path / "agent-vault.toml"
    path.write_text(TOML.format(org=account.organization_id, dev=dev))
    config = load_config(path, {"BWS_ACCESS_TOKEN": account.token})
    vault = config.vaults["team"]
    assert vault.type == "bitwarden" and vault.writable
    context = ProviderContext(vault="team", base_dir=vault.base_dir, writable=vault.writable)
    provider = provider_class("bitwarden")(vault.options, context, sdk=fake.make_sdk(account))  # type: ignore[call-arg]
    assert isinstance(provider, SecretProvider)
    assert provider.list_names() == ["API_KEY"]
    provider.set_many({"NEW": SecretValue(VALUE)})
    assert account.value("NEW", dev) == VALUE
    assert provider.list_names() == ["API_KEY", "NEW"]
    shown = repr(config) + repr(vault) + json.dumps(redacted_view(config)) + repr(provider)
    assert account.token not in shown


def test_the_entry_point_is_installed() -> None:
    assert "bitwarden" in provider_entry_points(), "run: .venv/bin/pip install -e '.[test,notify]'"
    assert provider_class("bitwarden") is BitwardenProvider


# --- the SDK is an extra ---------------------------------------------------------------------------------


def test_missing_sdk_is_a_config_error_naming_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitwarden_sdk", None)  # `import bitwarden_sdk` now raises ImportError
    options = BitwardenOptions(access_token="0.x.y:z", organization_id=ORG)
    context = ProviderContext(vault="team", base_dir=Path("/nonexistent"))
    with pytest.raises(ConfigError) as caught:
        BitwardenProvider(options, context)
    assert (
        str(caught.value)
        == "the bitwarden provider needs the bitwarden-sdk package: pip install 'agent-vault[bitwarden]'"
    )
    assert str(caught.value) == INSTALL_HINT


def test_loading_a_bitwarden_config_does_not_import_the_sdk(tmp_path: Path) -> None:
    path = tmp_path / "agent-vault.config.json"
    section = {"type": "bitwarden", "accessToken": "env:T", "organizationId": ORG}
    path.write_text(json.dumps({"vaults": {"bw": section}}))
    code = (
        "import sys; from pathlib import Path; from agent_vault.configuration.project import load_config; "
        f"load_config(Path({str(path)!r}), {{'T': '0.x.y:z'}}); "
        "assert 'bitwarden_sdk' not in sys.modules and 'bitwarden_py' not in sys.modules, 'the SDK was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- the fake against the real SDK --------------------------------------------------------------------------


def _shape(function: Any) -> list[tuple[str, Any, Any]]:
    params = inspect.signature(function).parameters.values()
    return [(p.name, p.kind, p.default) for p in params]


def test_the_fake_has_the_real_sdks_shapes() -> None:
    real = pytest.importorskip("bitwarden_sdk")
    from bitwarden_sdk import bitwarden_client as client_module

    pairs = [
        (real.BitwardenClient.__init__, fake.BitwardenClient.__init__),
        (real.BitwardenClient.auth, fake.BitwardenClient.auth),
        (real.BitwardenClient.secrets, fake.BitwardenClient.secrets),
        (real.BitwardenClient.projects, fake.BitwardenClient.projects),
        (client_module.AuthClient.login_access_token, fake.AuthClient.login_access_token),
        (client_module.SecretsClient.get, fake.SecretsClient.get),
        (client_module.SecretsClient.get_by_ids, fake.SecretsClient.get_by_ids),
        (client_module.SecretsClient.create, fake.SecretsClient.create),
        (client_module.SecretsClient.list, fake.SecretsClient.list),
        (client_module.SecretsClient.update, fake.SecretsClient.update),
        (client_module.SecretsClient.delete, fake.SecretsClient.delete),
        (client_module.ProjectsClient.list, fake.ProjectsClient.list),
        (real.client_settings_from_dict, fake.client_settings_from_dict),
    ]
    for real_fn, fake_fn in pairs:
        assert _shape(real_fn) == _shape(fake_fn), real_fn.__qualname__
    for model in fake.MODELS:
        real_model = getattr(real, model.__name__)
        assert [f.name for f in dataclasses.fields(model)] == [f.name for f in dataclasses.fields(real_model)], (
            model.__name__
        )
    assert real.DeviceType.SDK.value == fake.DeviceType.SDK.value == "SDK"


def test_the_calls_the_provider_makes_exist_in_the_real_sdk() -> None:
    """Every call in Operations, made on a real client with keyword arguments, binds to the real methods."""
    real = pytest.importorskip("bitwarden_sdk")
    client = real.BitwardenClient(real.client_settings_from_dict({"deviceType": real.DeviceType.SDK}))
    org, some = str(uuid.uuid4()), str(uuid.uuid4())
    calls = [
        (client.auth().login_access_token, {"access_token": "t"}),
        (client.secrets().list, {"organization_id": org}),
        (client.projects().list, {"organization_id": org}),
        (client.secrets().get_by_ids, {"ids": [some]}),
        (
            client.secrets().create,
            {"organization_id": org, "key": "k", "value": "v", "note": "", "project_ids": [some]},
        ),
        (
            client.secrets().update,
            {"organization_id": org, "id": some, "key": "k", "value": "v", "note": "", "project_ids": None},
        ),
        (client.secrets().delete, {"ids": [some]}),
    ]
    for method, kwargs in calls:
        inspect.signature(method).bind(**kwargs)
    source = inspect.getsource(edge.Operations)
    for name in ("login_access_token(", "secrets().list(", "projects().list(", "get_by_ids(", "create(", "update("):
        assert name in source


def test_the_fake_refuses_what_the_real_sdk_refuses_before_any_request() -> None:
    """The SDK's own checks (token format, empty or long values) run offline; the fake must agree."""
    real = pytest.importorskip("bitwarden_sdk")
    closed = _closed_port()
    settings = {"apiUrl": f"https://127.0.0.1:{closed}/api", "identityUrl": f"https://127.0.0.1:{closed}/identity"}
    client = real.BitwardenClient(real.client_settings_from_dict(settings))
    account = FakeAccount()
    fake_client = fake.make_sdk(account).BitwardenClient(fake.client_settings_from_dict(settings))
    for token in ("not-a-token", "0.not-a-uuid.secret:key", "garbage:key", "1.a.b:key", f"0.{uuid.uuid4()}:key"):
        texts = []
        for c in (client, fake_client):
            with pytest.raises(Exception) as caught:
                c.auth().login_access_token(access_token=token)
            texts.append(str(caught.value))
        assert texts[0] == texts[1], token
    org = str(uuid.uuid4())
    fake_client.signed_in = True
    for value, text in (("", fake.EMPTY_VALUE), ("v" * 25_001, fake.LONG_VALUE)):
        for c in (client, fake_client):
            with pytest.raises(Exception) as caught:
                c.secrets().create(organization_id=org, key="KEY", value=value, note="", project_ids=[org])
            assert str(caught.value) == text


# --- the real SDK in the worker process, against loopback servers only -----------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _real_provider(org: str, base: str, token: str | None = None) -> BitwardenProvider:
    pytest.importorskip("bitwarden_sdk")
    options = BitwardenOptions(
        access_token=token or fake.make_token(),
        organization_id=org,
        api_url=f"{base}/api",
        identity_url=f"{base}/identity",
    )
    return BitwardenProvider(options, ProviderContext(vault="real", base_dir=Path("/nonexistent")))


def test_the_real_sdk_refuses_a_malformed_token_as_an_auth_error() -> None:
    provider = _real_provider(ORG, f"https://127.0.0.1:{_closed_port()}", token="0.not-a-real-token-8888")
    try:
        with pytest.raises(ProviderAuthError) as caught:
            provider.list_names()
        assert "0.not-a-real-token-8888" not in everything_said(caught.value)
    finally:
        provider.close()


def test_the_real_sdk_against_a_closed_port_is_unavailable_naming_the_server() -> None:
    base = f"https://127.0.0.1:{_closed_port()}"
    provider = _real_provider(ORG, base)
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            provider.list_names()
        assert f"{base}/identity" in str(caught.value)
    finally:
        provider.close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1; the worker trusts it through SSL_CERT_FILE."""
    from tests.providers.bitwarden_server import make_certificate

    return make_certificate(tmp_path_factory.mktemp("bw-tls"))


@pytest.fixture
def trusting(tls: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls / "cert.pem"))
    return tls


def test_the_real_sdk_refused_by_the_identity_server_is_an_auth_error(trusting: Path) -> None:
    from tests.providers.bitwarden_server import serving

    with serving(trusting, refuse_logins=True) as server:
        provider = _real_provider(server.organization_id, server.base)
        try:
            with pytest.raises(ProviderAuthError) as caught:
                provider.list_names()
            assert "accessToken" in str(caught.value)
            assert "invalid_client" not in everything_said(caught.value)
            assert server.requests[-1][:2] == ("POST", "/identity/connect/token")
        finally:
            provider.close()


def test_a_silent_server_times_out_and_the_worker_is_stopped(trusting: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    monkeypatch.setattr(BitwardenProvider, "call_timeout", 2.0)
    provider = _real_provider(ORG, f"https://127.0.0.1:{silent.getsockname()[1]}")
    try:
        provider._worker.start()
        pid = provider._worker.pid()  # type: ignore[union-attr]
        assert pid is not None
        with pytest.raises(ProviderUnavailable) as caught:
            provider.list_names()
        assert "did not answer within 2 seconds" in str(caught.value)
        assert _gone(pid)
        ticks: list[float] = []
        beat = threading.Thread(target=lambda: [ticks.append(time.monotonic()) or time.sleep(0.05) for _ in range(10)])
        beat.start()
        with pytest.raises(ProviderUnavailable):
            provider.list_names()  # a new worker; this process's threads ran meanwhile
        beat.join(10)
        assert len(ticks) == 10
    finally:
        provider.close()
        silent.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --- the real SDK against a local Secrets Manager stand-in (tests/providers/bitwarden_server.py) -----------------


@pytest.fixture
def server(trusting: Path) -> Iterator[Any]:
    from tests.providers.bitwarden_server import serving

    with serving(trusting) as running:
        yield running


class TestBitwardenContractRealSdk(BitwardenContract):
    """The contract through the real SDK in its worker process, against the local HTTPS stand-in."""

    @pytest.fixture(autouse=True)
    def _server(self, server: Any) -> Iterator[None]:
        self.server = server
        self.providers: list[BitwardenProvider] = []
        yield
        for provider in self.providers:
            provider.close()

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        server = self.server
        server.reset()
        project = server.add_project("Contract")
        for name, value in names_to_values.items():
            server.add_secret(name, value, project)
        options = BitwardenOptions(
            access_token=server.token,
            organization_id=server.organization_id,
            api_url=f"{server.base}/api",
            identity_url=f"{server.base}/identity",
            write=BitwardenWriteOptions(project_id=project),
        )
        context = ProviderContext(vault="contract", base_dir=tmp_path, writable=writable)
        provider = BitwardenProvider(options, context)
        self.providers.append(provider)
        return provider

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        server = self.server
        server.reset()
        options = BitwardenOptions(
            access_token=fake.make_token(secret="fakeRevokedSecret"),
            organization_id=server.organization_id,
            api_url=f"{server.base}/api",
            identity_url=f"{server.base}/identity",
        )
        provider = BitwardenProvider(options, ProviderContext(vault="contract", base_dir=tmp_path))
        self.providers.append(provider)
        return provider


@pytest.mark.anyio
async def test_through_the_broker_with_the_real_sdk(home: Any, server: Any, tmp_path: Path) -> None:
    """A Bitwarden vault behind the real broker, the real SDK in its worker: list, read after approval, write."""
    from agent_vault.domain.request import Operation
    from tests.broker.test_core import OK, Clock, make_broker, store_servers

    dev, prod = server.add_project("Dev"), server.add_project("Prod")
    server.add_secret("DATABASE_URL", "fake-db-url-1111", dev)
    server.add_secret("STRIPE_KEY", "fake-stripe-dev", dev)
    server.add_secret("STRIPE_KEY", "fake-stripe-prod", prod)
    project = tmp_path / "project"
    project.mkdir()
    section = {
        "type": "bitwarden",
        "accessToken": "env:BWS_ACCESS_TOKEN",
        "organizationId": server.organization_id,
        "apiUrl": f"{server.base}/api",
        "identityUrl": f"{server.base}/identity",
        "ttl": 0,
        "writable": True,
        "write": {"projectId": "Dev"},
    }
    config = project / "agent-vault.config.json"
    config.write_text(json.dumps({"vaults": {"team": section}}))
    # the user's word: this project may sign in to this server
    broker = make_broker(home, Clock(), store_servers(server.base))
    await broker.start()
    try:
        session = broker.open_session(config, {"BWS_ACCESS_TOKEN": server.token}, {"client_name": "pytest", "pid": 1})
        listing = await broker.list_secrets(session)
        assert listing == {"team": ["DATABASE_URL", "Dev/STRIPE_KEY", "Prod/STRIPE_KEY"]}

        out = await broker.request_access(session, "team", ["DATABASE_URL", "Prod/STRIPE_KEY"], "run migration 42")
        assert out.request is not None
        await broker.decide(out.request.id, True, OK)
        got = await broker.wait(session, out.request.id, 0)
        assert got.values["DATABASE_URL"].reveal() == "fake-db-url-1111"
        assert got.values["Prod/STRIPE_KEY"].reveal() == "fake-stripe-prod"

        # an ambiguous key fails before anyone is asked, naming the choices
        with pytest.raises(SecretNotFound) as caught:
            await broker.request_access(session, "team", ["STRIPE_KEY"], "deploy")
        assert "'Dev/STRIPE_KEY'" in str(caught.value)

        values = {"NEW TOKEN": VALUE}
        out = await broker.request_access(session, "team", ["NEW TOKEN"], "store", Operation.WRITE, values)
        assert out.request is not None
        await broker.decide(out.request.id, True, OK)
        assert (await broker.wait(session, out.request.id, 0)).status == "written"
        assert server.value("NEW TOKEN") == VALUE
        assert "NEW TOKEN" in (await broker.list_secrets(session))["team"]
        for record in broker.audit.list():
            assert VALUE not in repr(record) and server.token not in repr(record)
    finally:
        await broker.stop()


def test_a_worker_killed_from_outside_is_replaced(server: Any) -> None:
    project = server.add_project("Dev")
    server.add_secret("KEY", VALUE, project)
    provider = _real_provider(server.organization_id, server.base, token=server.token)
    try:
        assert provider.get("KEY").reveal() == VALUE
        pid = provider._worker.pid()  # type: ignore[union-attr]
        assert pid is not None
        os.kill(pid, 9)
        assert provider.get("KEY").reveal() == VALUE  # a read is tried again in a new worker, signed in again
        assert provider._worker.pid() not in (None, pid)  # type: ignore[union-attr]
        assert [r for r in server.requests if r[1] == "/identity/connect/token"] == [
            ("POST", "/identity/connect/token")
        ] * 2
    finally:
        provider.close()


# --- live: a real Secrets Manager organization, only when a token is given -------------------------------------

LIVE_TOKEN = os.environ.get("BWS_ACCESS_TOKEN")
LIVE_ORG = os.environ.get("BWS_ORGANIZATION_ID")


@pytest.mark.skipif(
    not (LIVE_TOKEN and LIVE_ORG),
    reason="set BWS_ACCESS_TOKEN and BWS_ORGANIZATION_ID to run against a real Bitwarden Secrets Manager",
)
def test_live_machine_account() -> None:
    """Lists, reads the first listed secret, and, when BWS_WRITE_PROJECT_ID names a project, creates a
    secret there, reads it back, updates it and deletes it. Values are compared, never printed.
    BWS_API_URL and BWS_IDENTITY_URL point it at the EU cloud or a self-hosted server."""
    pytest.importorskip("bitwarden_sdk")
    assert LIVE_TOKEN is not None and LIVE_ORG is not None
    write_project = os.environ.get("BWS_WRITE_PROJECT_ID")
    urls = {
        key: value
        for key, value in (
            ("api_url", os.environ.get("BWS_API_URL")),
            ("identity_url", os.environ.get("BWS_IDENTITY_URL")),
        )
        if value
    }
    options = BitwardenOptions(
        access_token=LIVE_TOKEN,
        organization_id=LIVE_ORG,
        write=BitwardenWriteOptions(project_id=write_project) if write_project else None,
        **urls,
    )
    context = ProviderContext(vault="live", base_dir=Path("/nonexistent"), writable=write_project is not None)
    provider = BitwardenProvider(options, context)
    try:
        names = provider.list_names()
        assert names == sorted(names)
        for name in names[:1]:
            assert isinstance(provider.get(name), SecretValue)
        if write_project:
            key = f"agent-vault-live-test-{time.time_ns()}"
            value = f"fake-live-{time.time_ns()}"
            provider.set_many({key: SecretValue(value)})
            try:
                assert provider.get(key).reveal() == value
                provider.set_many({key: SecretValue(value + "-2")})
                assert provider.get(key).reveal() == value + "-2"
                assert key in provider.list_names()
            finally:
                secret_id = provider._find(key).id
                provider._call("delete the test secret", "delete_secrets", ids=[secret_id])
    finally:
        provider.close()
