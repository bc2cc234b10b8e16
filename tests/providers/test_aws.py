"""AwsSecretsManagerProvider against moto's real server: the contract, and the provider's own rules.

Two moto servers run for this module: an open one (reset before each test) and one that
enforces IAM, with users whose policies allow everything, only listing and describing, or nothing
of Secrets Manager. Replies moto cannot give come from `WireStub`, which speaks AWS's JSON
error format. Every client has a loopback endpoint and fake keys; the AWS config files are
empty temp files, so nothing here can reach real AWS or a real profile.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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
from agent_vault.domain.secret import SecretValue
from agent_vault.providers.aws import INSTALL_HINT, AwsOptions, AwsSecretsManagerProvider
from agent_vault.providers.base import ProviderContext, SecretProvider
from agent_vault.providers.registry import provider_class, provider_entry_points
from tests.providers.aws_backend import (
    AWS_VARIABLES,
    REGION,
    MotoServer,
    SilentServer,
    WireStub,
    isolated_environment,
)
from tests.providers.contract import SEED, ProviderContract, everything_said, in_threads

VALUE = "fake-aws-value-5555"


# --- fixtures: isolation and servers ----------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def aws_isolation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Fake keys and empty AWS config files for the whole module; the real ones are out of reach."""
    aws_dir = tmp_path_factory.mktemp("aws-home")
    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_VARIABLES:
            patch.delenv(name, raising=False)
        for name, value in isolated_environment(aws_dir / ".aws").items():
            patch.setenv(name, value)
        patch.setenv("HOME", str(aws_dir))
        yield aws_dir / ".aws"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory, aws_isolation: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class IamWorld:
    """The IAM-enforcing server and the keys of its users."""

    server: MotoServer
    users: dict[str, dict[str, str]]

    def keys(self, user: str) -> dict[str, str]:
        return self.users[user]


POLICIES = {
    "reader": ["secretsmanager:*"],
    "describer": ["secretsmanager:ListSecrets", "secretsmanager:DescribeSecret"],
    "denied": ["sts:GetCallerIdentity"],
}


@pytest.fixture(scope="module")
def iam(tmp_path_factory: pytest.TempPathFactory, aws_isolation: Path) -> Iterator[IamWorld]:
    server = MotoServer(tmp_path_factory.mktemp("moto-iam"))
    try:
        client = server.client("iam")
        users = {}
        for user, actions in POLICIES.items():
            client.create_user(UserName=user)
            statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
            document = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
            client.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=document)
            key = client.create_access_key(UserName=user)["AccessKey"]
            users[user] = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        secrets = server.client()
        for name, value in SEED.items():
            secrets.create_secret(Name=name, SecretString=value)
        secrets.create_secret(Name="db", SecretString=json.dumps({"username": "fake-user", "password": "fake-pw-1"}))
        server.enforce_iam()
        yield IamWorld(server, users)
    finally:
        server.stop()


@pytest.fixture
def store(moto: MotoServer) -> Any:
    """A boto3 client on the open server, emptied first: the test's view of the store."""
    moto.reset()
    return moto.client()


@pytest.fixture
def stub() -> Iterator[WireStub]:
    server = WireStub()
    yield server
    server.stop()


def make(
    url: str,
    *,
    writable: bool = True,
    vault: str = "aws-test",
    **options: Any,
) -> AwsSecretsManagerProvider:
    settings = {"region": REGION, "endpoint_url": url, **options}
    context = ProviderContext(vault=vault, base_dir=Path("/nonexistent"), writable=writable)
    return AwsSecretsManagerProvider(AwsOptions(**settings), context)


def iam_provider(world: IamWorld, user: str, **options: Any) -> AwsSecretsManagerProvider:
    keys = world.keys(user)
    return make(
        world.server.url,
        access_key_id=keys["aws_access_key_id"],
        secret_access_key=keys["aws_secret_access_key"],
        **options,
    )


def current(store: Any, name: str, stage: str = "AWSCURRENT") -> str:
    text: str = store.get_secret_value(SecretId=name, VersionStage=stage)["SecretString"]
    return text


def all_names(store: Any) -> list[str]:
    pages = store.get_paginator("list_secrets").paginate(IncludePlannedDeletion=True)
    return sorted(s["Name"] for page in pages for s in page["SecretList"])


# --- the contract --------------------------------------------------------------------------------------


class TestAwsContract(ProviderContract):
    """The contract on the open moto server, no prefix."""

    # AWS names hold letters, digits and / _ + = . @ -; ':' separates a secret from a JSON key
    odd_names = ("dots.and-dashes", "at@plus+", "nested/path/KEY", "UPPER_lower_9")
    unholdable_names = ("with space", "two words/KEY")
    prefix = ""
    #: secrets outside the prefix, which the vault must not see
    decoys: ClassVar[dict[str, str]] = {}

    @pytest.fixture(autouse=True)
    def _servers(self, store: Any, moto: MotoServer, iam: IamWorld) -> None:
        self.store, self.moto, self.iam = store, moto, iam

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        for name, value in {**self.decoys, **{self.prefix + k: v for k, v in names_to_values.items()}}.items():
            self.store.create_secret(Name=name, SecretString=value)
        return make(self.moto.url, writable=writable, prefix=self.prefix)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        return iam_provider(self.iam, "denied", prefix=self.prefix)

    # AWS cannot hold an empty SecretString: that one case is refused, the others round-trip
    refused_values = ("empty",)


class TestAwsContractWithPrefix(TestAwsContract):
    """The same contract through a prefix, with look-alike secrets outside it."""

    prefix = "team/dev/"
    decoys: ClassVar[dict[str, str]] = {
        "ALPHA_TOKEN": "fake-decoy-1",
        "team/prod/ALPHA_TOKEN": "fake-decoy-2",
        "team/dev-other/BETA_PASSWORD": "fake-decoy-3",
        "TEAM/dev/gamma.key": "fake-decoy-4",
        "team/dev": "fake-decoy-5",
    }


# --- names and the prefix ------------------------------------------------------------------------------


def test_prefix_is_stripped_filters_case_sensitively_and_confines_reads_and_writes(
    store: Any, moto: MotoServer
) -> None:
    for name in ("myapp/dev/API_KEY", "myapp/dev/db/URL", "myapp/prod/API_KEY", "MYAPP/dev/OTHER", "myapp/devX"):
        store.create_secret(Name=name, SecretString=f"fake-{name}")
    provider = make(moto.url, prefix="myapp/dev/")
    assert provider.list_names() == ["API_KEY", "db/URL"]
    assert provider.get("db/URL").reveal() == "fake-myapp/dev/db/URL"
    with pytest.raises(SecretNotFound) as caught:
        provider.get("myapp/prod/API_KEY")  # a full name is taken as relative to the prefix
    assert "names under prefix 'myapp/dev/'" in str(caught.value)
    provider.set_many({"NEW": SecretValue(VALUE)})
    assert current(store, "myapp/dev/NEW") == VALUE
    assert "NEW" not in all_names(store)


def test_names_no_request_can_take_are_not_listed_and_logged_once(
    store: Any, moto: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("GOOD", "has=equals", "-leading-dash", "a/../b", "p/"):
        store.create_secret(Name=name, SecretString="fake-x")
    provider = make(moto.url)
    with caplog.at_level(logging.WARNING, logger="agent_vault.providers.aws"):
        assert provider.list_names() == ["GOOD", "p/"]
        provider.list_names()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3
    assert all("is not listed" in line and "fake-x" not in line for line in warned)
    assert any("'has=equals'" in line for line in warned)


def test_listing_follows_pages(store: Any, moto: MotoServer) -> None:
    names = [f"bulk/S{i:03d}" for i in range(130)]
    for name in names:
        store.create_secret(Name=name, SecretString="fake-bulk")
    assert make(moto.url).list_names() == names


def test_names_aws_cannot_hold_are_not_found_when_read(store: Any, moto: MotoServer) -> None:
    provider = make(moto.url)
    with pytest.raises(SecretNotFound) as caught:
        provider.get("with space")
    assert "an AWS secret name (letters, digits and / _ + = . @ -), or NAME:KEY" in str(caught.value)
    assert provider.has("with space") is False


# --- JSON secrets ------------------------------------------------------------------------------------------

DB = {"username": "fake-user", "password": "fake-db-pw-1", "port": 5432, "tls": True, "opts": {"a": "fake-b"}}


def test_json_keys_are_addressable_and_the_whole_secret_too(store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="db", SecretString=json.dumps(DB))
    store.create_secret(Name="plain", SecretString="fake-plain-1")
    provider = make(moto.url)
    assert provider.list_names() == ["db", "plain"]  # keys are not listed: that would read every value
    assert provider.get("db:password").reveal() == "fake-db-pw-1"
    assert provider.get("db:port").reveal() == "5432"
    assert provider.get("db:tls").reveal() == "true"
    assert json.loads(provider.get("db:opts").reveal()) == {"a": "fake-b"}
    assert json.loads(provider.get("db").reveal()) == DB
    with pytest.raises(SecretNotFound) as caught:
        provider.get("db:nope")
    assert "has no key 'nope'" in str(caught.value)
    assert "fake-" not in everything_said(caught.value)
    with pytest.raises(SecretNotFound) as caught:
        provider.get("plain:x")
    assert "is not a JSON object" in str(caught.value)
    assert "fake-plain-1" not in everything_said(caught.value)


def test_has_answers_for_name_key_without_reading_the_value(iam: IamWorld) -> None:
    """A user who may list and describe but not read: has() works, get() is refused."""
    provider = iam_provider(iam, "describer")
    assert provider.list_names() == sorted([*SEED, "db"])
    assert provider.has("db:username") is True
    assert provider.has("db") is True
    assert provider.has("nothing:username") is False
    with pytest.raises(ProviderAuthError) as caught:
        provider.get("db:username")
    assert "secretsmanager:GetSecretValue" in str(caught.value)


def test_key_writes_update_one_key_and_keep_the_others(store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="db", SecretString=json.dumps(DB))
    provider = make(moto.url)
    provider.set_many({"db:password": SecretValue("fake-db-pw-2"), "db:host": SecretValue("fake-host")})
    assert json.loads(current(store, "db")) == {**DB, "password": "fake-db-pw-2", "host": "fake-host"}
    assert json.loads(current(store, "db", "AWSPREVIOUS")) == DB  # both keys in one new version
    assert len(store.list_secret_version_ids(SecretId="db")["Versions"]) == 2


def test_key_write_creates_a_json_secret(store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="empty")  # a secret with no value yet
    provider = make(moto.url)
    provider.set_many({"svc:token": SecretValue("fake-t-1"), "empty:k": SecretValue("fake-k-1")})
    assert json.loads(current(store, "svc")) == {"token": "fake-t-1"}
    assert json.loads(current(store, "empty")) == {"k": "fake-k-1"}
    assert provider.get("svc:token").reveal() == "fake-t-1"


def test_key_write_into_a_non_json_secret_is_refused_and_nothing_is_written(store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="plain", SecretString="fake-plain-1")
    provider = make(moto.url)
    with pytest.raises(InvalidRequest) as caught:
        provider.set_many({"NEW_FIRST": SecretValue(VALUE), "plain:k": SecretValue(VALUE)})
    assert "is not a JSON object" in str(caught.value)
    assert VALUE not in everything_said(caught.value)
    assert "fake-plain-1" not in everything_said(caught.value)
    assert all_names(store) == ["plain"]
    assert current(store, "plain") == "fake-plain-1"


def test_whole_and_key_writes_to_one_secret_in_one_batch_are_refused(store: Any, moto: MotoServer) -> None:
    provider = make(moto.url)
    with pytest.raises(InvalidRequest) as caught:
        provider.set_many({"db": SecretValue(json.dumps(DB)), "db:password": SecretValue(VALUE)})
    assert "whole and also keys" in str(caught.value)
    assert all_names(store) == []


def test_concurrent_key_writes_through_one_provider_all_land(store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="shared", SecretString="{}")
    provider = make(moto.url)
    in_threads(lambda i: provider.set_many({f"shared:k{i}": SecretValue(f"fake-v{i}")}), range(8))
    assert json.loads(current(store, "shared")) == {f"k{i}": f"fake-v{i}" for i in range(8)}


# --- writes ------------------------------------------------------------------------------------------------


def test_writes_are_new_versions(store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="API_KEY", SecretString="fake-old-1")
    provider = make(moto.url)
    provider.set_many({"API_KEY": SecretValue("fake-new-2")})
    assert current(store, "API_KEY") == "fake-new-2"
    assert current(store, "API_KEY", "AWSPREVIOUS") == "fake-old-1"
    provider.set_many({"API_KEY": SecretValue("fake-new-3")})
    assert len(store.list_secret_version_ids(SecretId="API_KEY")["Versions"]) == 3


def test_new_secrets_use_kms_key_id(store: Any, moto: MotoServer) -> None:
    key = moto.client("kms").create_key()["KeyMetadata"]["KeyId"]
    store.create_secret(Name="OLD", SecretString="fake-old-1")
    provider = make(moto.url, kms_key_id=key)
    provider.set_many({"NEW": SecretValue(VALUE), "OLD": SecretValue(VALUE)})
    assert store.describe_secret(SecretId="NEW")["KmsKeyId"] == key
    assert "KmsKeyId" not in store.describe_secret(SecretId="OLD")  # existing secrets keep their key
    assert make(moto.url).get("NEW").reveal() == VALUE


def test_secret_scheduled_for_deletion_is_hidden_and_not_written(store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="GONE", SecretString="fake-gone-1")
    store.create_secret(Name="KEPT", SecretString="fake-kept-1")
    store.delete_secret(SecretId="GONE", RecoveryWindowInDays=7)
    provider = make(moto.url)
    assert provider.list_names() == ["KEPT"]
    assert provider.has("GONE") is False
    with pytest.raises(SecretNotFound) as caught:
        provider.get("GONE")
    assert "scheduled for deletion" in str(caught.value)
    assert "restore-secret --secret-id GONE" in str(caught.value)
    with pytest.raises(ProviderError) as written:
        provider.set_many({"KEPT": SecretValue(VALUE), "GONE": SecretValue(VALUE)})
    message = str(written.value)
    assert "scheduled for deletion" in message and "restore-secret --secret-id GONE" in message
    assert "nothing was written" in message
    assert VALUE not in everything_said(written.value)
    assert current(store, "KEPT") == "fake-kept-1"


def test_values_aws_cannot_hold_are_refused_before_anything_is_written(store: Any, moto: MotoServer) -> None:
    provider = make(moto.url)
    with pytest.raises(InvalidRequest) as caught:
        provider.set_many({"A": SecretValue(VALUE), "B": SecretValue("x" * 65537)})
    assert "at most 65536" in str(caught.value)
    with pytest.raises(InvalidRequest):
        provider.set_many({"A": SecretValue(VALUE), "with space": SecretValue(VALUE)})
    with pytest.raises(InvalidRequest):
        provider.set_many({"A": SecretValue(VALUE), "ends:": SecretValue(VALUE)})
    assert all_names(store) == []


def test_a_failure_mid_batch_names_what_was_written(store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="B_EXISTS", SecretString="fake-b-1")
    provider = make(moto.url)
    # B_EXISTS is deleted between planning and writing: its PutSecretValue is refused
    original = provider._execute

    def delete_then_execute(plan: Any) -> None:
        store.delete_secret(SecretId="B_EXISTS", ForceDeleteWithoutRecovery=True)
        original(plan)

    provider._execute = delete_then_execute  # type: ignore[method-assign]
    with pytest.raises(SecretNotFound) as caught:
        provider.set_many({"A_NEW": SecretValue(VALUE), "B_EXISTS": SecretValue(VALUE)})
    assert "Already written: 'A_NEW'; not written: 'B_EXISTS'." in str(caught.value)
    assert current(store, "A_NEW") == VALUE


def test_read_only_vault_refuses_before_calling_aws(stub: WireStub) -> None:
    provider = make(stub.url, writable=False)
    with pytest.raises(ReadOnlyVault) as caught:
        provider.set_many({"A": SecretValue(VALUE)})
    assert "writable: true" in str(caught.value)
    assert stub.calls == {}


def test_secrets_owned_by_another_service_are_not_written(stub: WireStub) -> None:
    stub.replies["DescribeSecret"] = (200, {"Name": "rds-db", "OwningService": "rds"})
    provider = make(stub.url)
    with pytest.raises(ReadOnlyVault) as caught:
        provider.set_many({"rds-db": SecretValue(VALUE)})
    assert "managed by another AWS service" in str(caught.value)
    assert "PutSecretValue" not in stub.calls


# --- reading odd secrets -------------------------------------------------------------------------------


def test_binary_secrets_are_listed_but_not_read(store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="BLOB", SecretBinary=b"\x00fake-binary")
    provider = make(moto.url)
    assert provider.list_names() == ["BLOB"]
    with pytest.raises(ProviderError) as caught:
        provider.get("BLOB")
    assert "binary data (SecretBinary)" in str(caught.value)


def test_secret_without_a_current_value(store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="EMPTY")
    provider = make(moto.url)
    with pytest.raises(SecretNotFound) as caught:
        provider.get("EMPTY")
    assert "has no current (AWSCURRENT) value" in str(caught.value)


# --- credentials and permissions -----------------------------------------------------------------------


def test_denied_identity_gets_auth_errors_naming_the_permission(iam: IamWorld) -> None:
    provider = iam_provider(iam, "denied")
    checks = {
        "secretsmanager:ListSecrets": provider.list_names,
        "secretsmanager:GetSecretValue": lambda: provider.get("ALPHA_TOKEN"),
        "secretsmanager:DescribeSecret": lambda: provider.has("db:x"),
    }
    for permission, call in checks.items():
        with pytest.raises(ProviderAuthError) as caught:
            call()
        assert permission in str(caught.value)
        said = everything_said(caught.value)
        assert "arn:aws" not in said and "not authorized" not in said  # AWS's own text is not repeated
    with pytest.raises(ProviderAuthError):
        provider.set_many({"NEW": SecretValue(VALUE)})


def test_unknown_credentials_are_refused(iam: IamWorld) -> None:
    """The module's environment holds moto's root keys, which the IAM-enforcing server rejects."""
    provider = make(iam.server.url)
    with pytest.raises(ProviderAuthError):
        provider.list_names()


def test_keys_from_env_references_in_the_config(iam: IamWorld, tmp_path: Path) -> None:
    keys = iam.keys("reader")
    path = tmp_path / "agent-vault.toml"
    path.write_text(
        "[vaults.aws]\n"
        'type = "aws"\n'
        f'region = "{REGION}"\n'
        f'endpointUrl = "{iam.server.url}"\n'
        'accessKeyId = "env:MY_KEY_ID"\n'
        'secretAccessKey = "env:MY_SECRET_KEY"\n'
    )
    env = {"MY_KEY_ID": keys["aws_access_key_id"], "MY_SECRET_KEY": keys["aws_secret_access_key"]}
    config = load_config(path, env)
    vault = config.vaults["aws"]
    provider = provider_class("aws")(vault.options, ProviderContext(vault="aws", base_dir=vault.base_dir))  # type: ignore[call-arg]
    assert provider.get("db:username").reveal() == "fake-user"
    shown = repr(config) + repr(vault) + repr(vault.options) + json.dumps(redacted_view(config)) + repr(provider)
    assert keys["aws_secret_access_key"] not in shown
    assert keys["aws_access_key_id"] not in shown


def test_profile_from_the_aws_config_files(iam: IamWorld, aws_isolation: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = iam.keys("reader")
    credentials = aws_isolation.parent / "profile-credentials"
    credentials.write_text(
        f"[agent-vault-test]\naws_access_key_id = {keys['aws_access_key_id']}\n"
        f"aws_secret_access_key = {keys['aws_secret_access_key']}\n"
    )
    config = aws_isolation.parent / "profile-config"
    config.write_text(f"[profile agent-vault-test]\nregion = {REGION}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # else the environment's keys would win over the profile
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    options = AwsOptions(profile="agent-vault-test", endpoint_url=iam.server.url)  # region from the profile
    provider = AwsSecretsManagerProvider(options, ProviderContext(vault="p", base_dir=Path("/nonexistent")))
    assert provider.get("ALPHA_TOKEN").reveal() == SEED["ALPHA_TOKEN"]


def test_missing_profile_is_a_config_error(moto: MotoServer) -> None:
    with pytest.raises(ConfigError) as caught:
        make(moto.url, profile="no-such-profile")
    assert "'no-such-profile' is not in the AWS config files" in str(caught.value)


def test_no_region_anywhere_is_a_config_error(moto: MotoServer) -> None:
    options = AwsOptions(endpoint_url=moto.url)
    with pytest.raises(ConfigError) as caught:
        AwsSecretsManagerProvider(options, ProviderContext(vault="r", base_dir=Path("/nonexistent")))
    assert 'add `region = "us-east-1"`' in str(caught.value)


@pytest.mark.parametrize("variable", ["AWS_REGION", "AWS_DEFAULT_REGION"])
def test_region_from_the_environment(
    moto: MotoServer, store: Any, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    store.create_secret(Name="R", SecretString="fake-r")
    monkeypatch.setenv(variable, REGION)
    provider = AwsSecretsManagerProvider(
        AwsOptions(endpoint_url=moto.url), ProviderContext(vault="r", base_dir=Path("/nonexistent"))
    )
    assert provider.get("R").reveal() == "fake-r"


def test_a_malformed_region_in_the_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "not a region!")
    with pytest.raises(ConfigError) as caught:
        AwsSecretsManagerProvider(AwsOptions(), ProviderContext(vault="r", base_dir=Path("/nonexistent")))
    assert "is not a region name" in str(caught.value)


def test_no_credentials_at_all(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    provider = make(moto.url)
    with pytest.raises(ProviderAuthError) as caught:
        provider.list_names()
    assert "no AWS credentials were found" in str(caught.value)


# --- AWS's own error replies, on the wire --------------------------------------------------------------

LEAK = "fake-leaked-in-message-7777"


@pytest.mark.parametrize(
    ("status", "code", "error", "phrase"),
    [
        (400, "AccessDeniedException", ProviderAuthError, "does not allow secretsmanager:GetSecretValue"),
        (400, "UnrecognizedClientException", ProviderAuthError, "refused the AWS credentials"),
        (400, "ExpiredTokenException", ProviderAuthError, "refused the AWS credentials"),
        (400, "DecryptionFailure", ProviderAuthError, "kms:Decrypt"),
        (400, "ResourceNotFoundException", SecretNotFound, "no secret 'ALPHA'"),
        (400, "ThrottlingException", ProviderUnavailable, "busy or failing"),
        (500, "InternalServiceError", ProviderUnavailable, "busy or failing"),
        (400, "SomethingNewException", ProviderError, "(SomethingNewException, HTTP 400;"),
        (400, "<b>" + LEAK, ProviderError, "(an unrecognised error, HTTP 400;"),
    ],
)
def test_aws_error_replies_map_to_our_errors_without_their_text(
    stub: WireStub, status: int, code: str, error: type[Exception], phrase: str
) -> None:
    stub.error("GetSecretValue", status, code, f"secret value {LEAK} echoed back")
    stub.replies["DescribeSecret"] = (400, {"__type": "ResourceNotFoundException", "message": LEAK})
    provider = make(stub.url)
    with pytest.raises(error) as caught:
        provider.get("ALPHA")
    assert type(caught.value) is error
    assert phrase in str(caught.value)
    assert LEAK not in everything_said(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_kms_failure_on_create_names_kms_key_id(stub: WireStub) -> None:
    stub.error("DescribeSecret", 400, "ResourceNotFoundException", LEAK)
    stub.error("CreateSecret", 400, "EncryptionFailure", LEAK)
    provider = make(stub.url, kms_key_id="alias/fake-key")
    with pytest.raises(ProviderAuthError) as caught:
        provider.set_many({"NEW": SecretValue(VALUE)})
    assert "kmsKeyId" in str(caught.value) and "kms:GenerateDataKey" in str(caught.value)
    assert LEAK not in everything_said(caught.value) and VALUE not in everything_said(caught.value)


def test_a_secret_created_elsewhere_mid_write_is_unavailable_try_again(stub: WireStub) -> None:
    stub.error("DescribeSecret", 400, "ResourceNotFoundException", LEAK)
    stub.error("CreateSecret", 400, "ResourceExistsException", LEAK)
    with pytest.raises(ProviderUnavailable) as caught:
        make(stub.url).set_many({"NEW": SecretValue(VALUE)})
    assert "Fix: try again" in str(caught.value)
    assert LEAK not in everything_said(caught.value) and VALUE not in everything_said(caught.value)


def test_unreachable_endpoint_is_unavailable() -> None:
    silent = SilentServer()
    url = silent.url
    silent.stop()  # nothing listens there now
    provider = make(url, timeout=2)
    with pytest.raises(ProviderUnavailable) as caught:
        provider.list_names()
    assert f"could not reach AWS Secrets Manager at {url}" in str(caught.value)
    assert caught.value.__cause__ is None


def test_hung_endpoint_times_out_as_unavailable() -> None:
    silent = SilentServer()
    try:
        provider = make(silent.url, timeout=0.3)
        with pytest.raises(ProviderUnavailable) as caught:
            provider.get("ALPHA")
        assert "no answer within the timeout" in str(caught.value)
    finally:
        silent.stop()


# --- options and config ----------------------------------------------------------------------------------


def load_section(tmp_path: Path, section: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "agent-vault.config.json"
    path.write_text(json.dumps({"vaults": {"cloud": {"type": "aws", **section}}}))
    return load_config(path, env or {}).vaults["cloud"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"region": "Not A Region"}, "vaults.cloud.region: 'Not A Region' is not an AWS region name"),
        ({"prefix": "team dev/"}, "vaults.cloud.prefix: prefix 'team dev/' has characters AWS secret names cannot"),
        ({"endpointUrl": "http://10.0.0.5:4566"}, "uses plain http to another machine"),
        ({"endpointUrl": "ftp://localhost"}, "must start with https://"),
        ({"endpointUrl": "https://h/path?q=1"}, "must be just scheme, host and port"),
        ({"timeout": 0}, "vaults.cloud.timeout: must be > 0"),
        ({"endpointURL": "https://x"}, "did you mean `endpointUrl`?"),
        ({"kmsKeyID": "k"}, "did you mean `kmsKeyId`?"),
        ({"accessKeyId": "env:K"}, "accessKeyId and secretAccessKey go together"),
        ({"sessionToken": "env:T"}, "sessionToken needs accessKeyId and secretAccessKey as well"),
        ({"profile": "p", "accessKeyId": "env:K", "secretAccessKey": "env:S"}, "either `profile` or accessKeyId"),
    ],
)
def test_options_are_checked_with_messages_naming_the_fix(
    tmp_path: Path, section: dict[str, Any], message: str
) -> None:
    env = {"K": "AKIAFAKEKEYID0000000", "S": "fake-secret-access-key-0000", "T": "fake-session-token-0000"}
    with pytest.raises(ConfigError) as caught:
        load_section(tmp_path, section, env)
    assert message in str(caught.value)
    assert not any(value in str(caught.value) for value in env.values())


def test_loopback_http_and_https_endpoints_are_accepted(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:4566", "http://localhost:5000/", "http://[::1]:1", "https://vpce.example.com"):
        assert load_section(tmp_path, {"endpointUrl": url}).options.endpoint_url == url.rstrip("/")


def test_a_toml_config_builds_a_working_provider(tmp_path: Path, store: Any, moto: MotoServer) -> None:
    store.create_secret(Name="app/prod/DATABASE_URL", SecretString="fake-db-url-1")
    path = tmp_path / "agent-vault.toml"
    path.write_text(
        "[vaults.prod]\n"
        'type = "aws"\n'
        f'region = "{REGION}"\n'
        f'endpointUrl = "{moto.url}"\n'
        'prefix = "app/prod/"\n'
        "timeout = 5\n"
        "writable = true\n"
        "ttl = 15\n"
    )
    vault = load_config(path, {}).vaults["prod"]
    assert isinstance(vault.options, AwsOptions)
    assert (vault.options.prefix, vault.options.timeout) == ("app/prod/", 5)
    context = ProviderContext(vault="prod", base_dir=vault.base_dir, writable=vault.writable)
    provider = provider_class(vault.type)(vault.options, context)  # type: ignore[call-arg]
    assert isinstance(provider, SecretProvider)
    assert provider.list_names() == ["DATABASE_URL"]
    provider.set_many({"API_KEY": SecretValue(VALUE)})
    assert current(store, "app/prod/API_KEY") == VALUE


def test_the_entry_point_is_installed() -> None:
    assert "aws" in provider_entry_points(), "run: .venv/bin/pip install -e '.[test,providers]'"
    assert provider_class("aws") is AwsSecretsManagerProvider


def test_missing_boto3_is_a_config_error_naming_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` now raises ImportError
    with pytest.raises(ConfigError) as caught:
        make("http://127.0.0.1:1")
    assert str(caught.value) == "the aws provider needs the boto3 package: pip install 'agent-vault[aws]'"
    assert str(caught.value) == INSTALL_HINT


def test_loading_an_aws_config_does_not_import_boto3(tmp_path: Path) -> None:
    path = tmp_path / "agent-vault.config.json"
    path.write_text(json.dumps({"vaults": {"cloud": {"type": "aws", "region": REGION}}}))
    code = (
        "import sys; from pathlib import Path; from agent_vault.configuration.project import load_config; "
        f"load_config(Path({str(path)!r}), {{}}); "
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_credentials_never_show_in_reprs(moto: MotoServer) -> None:
    secret = "fake-secret-access-key-9999"
    options = AwsOptions(region=REGION, endpoint_url=moto.url, access_key_id="AKIAFAKE0000", secret_access_key=secret)
    provider = AwsSecretsManagerProvider(options, ProviderContext(vault="c", base_dir=Path("/nonexistent")))
    for text in (repr(options), str(options), repr(provider), str(provider)):
        assert secret not in text
        assert "AKIAFAKE0000" not in text
    provider.close()


# --- through the broker: what an agent sees ------------------------------------------------------------


@pytest.mark.anyio
async def test_through_the_broker(home: Any, tmp_path: Path, store: Any, moto: MotoServer) -> None:
    """List plain names, ask for a JSON key by NAME:KEY (known through has()), write a key as a new version."""
    from agent_vault.domain.request import Operation
    from tests.broker.test_core import OK, Clock, make_broker, store_servers

    store.create_secret(Name="app/db", SecretString=json.dumps({"username": "fake-user", "password": "fake-pw-1"}))
    store.create_secret(Name="app/API_KEY", SecretString="fake-api-key-1")
    project = tmp_path / "project"
    project.mkdir()
    section = {"type": "aws", "region": REGION, "endpointUrl": moto.url, "prefix": "app/", "writable": True}
    config = project / "agent-vault.config.json"
    config.write_text(json.dumps({"vaults": {"cloud": {**section, "ttl": 0}}}))
    # the user's word: this project may send keys to this endpoint
    broker = make_broker(home, Clock(), store_servers(moto.url))
    await broker.start()
    session = broker.open_session(config, {}, {"client_name": "pytest", "pid": 1})

    assert await broker.list_secrets(session) == {"cloud": ["API_KEY", "db"]}
    out = await broker.request_access(session, "cloud", ["db:password", "API_KEY"], "run migration 42")
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    got = await broker.wait(session, out.request.id, 0)
    assert got.values["db:password"].reveal() == "fake-pw-1"
    assert got.values["API_KEY"].reveal() == "fake-api-key-1"
    with pytest.raises(SecretNotFound):  # no such secret: refused before anyone is asked
        await broker.request_access(session, "cloud", ["nothing:password"], "r")

    write = {"db:password": VALUE}
    out = await broker.request_access(session, "cloud", ["db:password"], "rotate", Operation.WRITE, write)
    assert out.request is not None
    await broker.decide(out.request.id, True, OK)
    assert (await broker.wait(session, out.request.id, 0)).status == "written"
    assert json.loads(current(store, "app/db")) == {"username": "fake-user", "password": VALUE}
    assert json.loads(current(store, "app/db", "AWSPREVIOUS"))["password"] == "fake-pw-1"
    for record in broker.audit.list():
        assert VALUE not in repr(record) and "fake-pw-1" not in repr(record)
