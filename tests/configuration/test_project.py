"""Tests for agent_vault.configuration.project: search path, JSON/TOML loading, env: references, errors, redaction."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import ConfigDict, Field

from agent_vault.configuration import project as cfg
from agent_vault.configuration.project import (
    CONFIG_ENV,
    Config,
    VaultConfig,
    WebhookConfig,
    config_search_path,
    find_config,
    load_config,
    redacted_view,
    referenced_env_vars,
)
from agent_vault.domain.errors import ConfigError
from agent_vault.providers import registry
from agent_vault.providers.base import ProviderOptions
from tests.seed_configs import SEED_EXAMPLES

# --- fake providers, registered in place of the real entry points ----------------------------


class FakeEnvOptions(ProviderOptions):
    file: str = Field(description="the path of a .env-style file, relative to the config file")
    token: str | None = None


class FakeEnvProvider:
    type_name: ClassVar[str] = "env"
    Options: ClassVar[type[ProviderOptions]] = FakeEnvOptions


class WriteOptions(ProviderOptions):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    vault_id: str = Field(alias="vaultId")
    category: str = "login"


class FakeOnePasswordOptions(ProviderOptions):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    service_account_token: str | None = Field(default=None, alias="serviceAccountToken")
    vault_ids: list[str] | None = Field(default=None, alias="vaultIds")
    write: WriteOptions | None = None


class FakeOnePasswordProvider:
    type_name: ClassVar[str] = "1password"
    Options: ClassVar[type[ProviderOptions]] = FakeOnePasswordOptions


class FakeEntryPoint:
    def __init__(self, cls: type) -> None:
        self.cls = cls

    def load(self) -> type:
        return self.cls


@pytest.fixture(autouse=True)
def fake_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = {"env": FakeEntryPoint(FakeEnvProvider), "1password": FakeEntryPoint(FakeOnePasswordProvider)}
    monkeypatch.setattr(registry, "provider_entry_points", lambda: eps)


ENV = {
    "OP_SERVICE_ACCOUNT_TOKEN": "ops_SECRET_service_token",
    "OP_DEV_TOKEN": "ops_SECRET_dev_token",
    "OP_PROD_TOKEN": "ops_SECRET_prod_token",
    "NGROK_AUTHTOKEN": "ngrok_SECRET_token",
    "LOGGING_API_KEY": "Bearer SECRET_logging",
    "DD_API_KEY": "SECRET_datadog",
    "SPLUNK_HEC_TOKEN": "Splunk SECRET_splunk",
}
SECRET_VALUES = list(ENV.values())


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load_json(tmp_path: Path, data: Any, env: dict[str, str] | None = None) -> Config:
    path = write(tmp_path, "agent-vault.config.json", json.dumps(data))
    return load_config(path, ENV if env is None else env)


def config_error(tmp_path: Path, data: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_json(tmp_path, data, env)
    return str(info.value)


MINIMAL = {"vaults": {"local": {"type": "env", "file": ".env.secrets"}}}

# --- search order ----------------------------------------------------------------------------


def test_search_path_order(tmp_path: Path) -> None:
    cwd, home = tmp_path / "proj", tmp_path / "home"
    paths = config_search_path(cwd, home, {CONFIG_ENV: "/etc/av.toml"})
    assert paths == [
        Path("/etc/av.toml"),
        cwd / "agent-vault.toml",
        cwd / "agent-vault.config.json",
        home / ".config" / "agent-vault" / "config.toml",
        home / ".agent-vault.config.json",
    ]


def test_search_path_without_env_and_with_xdg(tmp_path: Path) -> None:
    paths = config_search_path(tmp_path, tmp_path / "h", {"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert len(paths) == 4
    assert paths[2] == tmp_path / "xdg" / "agent-vault" / "config.toml"


def test_relative_xdg_is_ignored(tmp_path: Path) -> None:
    paths = config_search_path(tmp_path, tmp_path / "h", {"XDG_CONFIG_HOME": "relative"})
    assert paths[2] == tmp_path / "h" / ".config" / "agent-vault" / "config.toml"


def test_relative_env_path_is_against_cwd(tmp_path: Path) -> None:
    assert config_search_path(tmp_path, tmp_path, {CONFIG_ENV: "sub/av.json"})[0] == tmp_path / "sub/av.json"


def test_each_position_wins_over_later_ones(tmp_path: Path) -> None:
    cwd, home = tmp_path / "proj", tmp_path / "home"
    files = [
        write(tmp_path, "elsewhere/explicit.toml", ""),
        write(cwd, "agent-vault.toml", ""),
        write(cwd, "agent-vault.config.json", ""),
        write(home, ".config/agent-vault/config.toml", ""),
        write(home, ".agent-vault.config.json", ""),
    ]
    environ = {"HOME": str(home), CONFIG_ENV: str(files[0])}
    assert find_config(cwd, environ) == files[0]
    del environ[CONFIG_ENV]
    for expected in files[1:]:
        assert find_config(cwd, environ) == expected
        expected.unlink()


def test_xdg_config_home_is_searched(tmp_path: Path) -> None:
    found = write(tmp_path, "xdg/agent-vault/config.toml", "")
    write(tmp_path, "home/.config/agent-vault/config.toml", "")
    environ = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert find_config(tmp_path / "proj", environ) == found


def test_env_pointing_to_missing_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "agent-vault.toml", "")  # must not be used as a fallback
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        find_config(tmp_path, {"HOME": str(tmp_path), CONFIG_ENV: str(missing)})
    assert CONFIG_ENV in str(info.value)
    assert str(missing) in str(info.value)


def test_nothing_found_lists_every_place_and_an_example(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path / "home")}
    with pytest.raises(ConfigError) as info:
        find_config(tmp_path / "proj", environ)
    message = str(info.value)
    for path in config_search_path(tmp_path / "proj", tmp_path / "home", environ):
        assert str(path) in message
    assert CONFIG_ENV in message
    assert "[vaults.local]" in message and 'type = "env"' in message


# --- the seed README's examples load verbatim -------------------------------------------------


@pytest.mark.parametrize("text", SEED_EXAMPLES)
def test_seed_examples_load_verbatim(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "agent-vault.config.json", text)
    config = load_config(path, ENV)
    raw = json.loads(text)
    assert set(config.vaults) == set(raw["vaults"])
    for name, vault in config.vaults.items():
        assert vault.name == name
        assert vault.type == raw["vaults"][name]["type"]
        assert vault.base_dir == tmp_path
    assert len(config.webhooks) == len(raw.get("webhooks", []))


def test_multi_vault_seed_example_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "agent-vault.config.json", SEED_EXAMPLES[4]), ENV)
    dev, prod, local = config.vaults["dev"], config.vaults["prod"], config.vaults["local"]
    assert isinstance(dev.options, FakeOnePasswordOptions)
    assert dev.options.service_account_token == ENV["OP_DEV_TOKEN"]
    assert dev.options.vault_ids == ["abc123"]
    assert (dev.ttl, dev.ttl_scope, dev.writable) == (15, "secret", False)
    assert prod.ttl == 0
    assert isinstance(local.options, FakeEnvOptions) and local.options.file == ".env.secrets"
    assert config.ngrok_auth_token == ENV["NGROK_AUTHTOKEN"]
    assert (config.port, config.request_timeout, config.wait_timeout, config.webhooks) == (9999, 300, 50, ())
    assert config.source == tmp_path / "agent-vault.config.json"


def test_webhook_seed_example_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "agent-vault.config.json", SEED_EXAMPLES[9]), ENV)
    first, second = config.webhooks
    assert first.url == "https://logs.example.com/api/events"
    assert first.authorization == ENV["LOGGING_API_KEY"]
    assert first.events == "all"
    assert second.events == ("approved", "denied")
    assert (first.timeout, first.signing_secret) == (5, None)


TOML_EQUIVALENT = """\
ngrokAuthToken = "env:NGROK_AUTHTOKEN"
port = 9999

[vaults.dev]
type = "1password"
serviceAccountToken = "env:OP_DEV_TOKEN"
vaultIds = ["abc123"]
ttl = 15

[vaults.prod]
type = "1password"
serviceAccountToken = "env:OP_PROD_TOKEN"
vaultIds = ["def456"]
ttl = 0

[vaults.local]
type = "env"
file = ".env.secrets"
ttl = 30
"""


def test_toml_equivalent_loads_to_an_equal_config(tmp_path: Path) -> None:
    from_json = load_config(write(tmp_path, "agent-vault.config.json", SEED_EXAMPLES[4]), ENV)
    from_toml = load_config(write(tmp_path, "agent-vault.toml", TOML_EQUIVALENT), ENV)
    assert from_toml.source.name == "agent-vault.toml"
    assert from_toml.model_copy(update={"source": from_json.source}) == from_json
    assert redacted_view(from_toml)["vaults"] == redacted_view(from_json)["vaults"]


def test_toml_webhooks_and_all_top_level_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "agent-vault.toml",
        """\
        port = 8123
        requestTimeout = 600
        waitTimeout = 20

        [vaults.local]
        type = "env"
        file = ".env.secrets"
        ttl = 2.5
        ttlScope = "vault"
        writable = true

        [[webhooks]]
        url = "http://localhost:8080/hook"
        events = ["denied", "expired", "written", "write_failed", "requested", "delivered", "auto_approved"]
        signingSecret = "env:WH_SECRET"
        timeout = 1.5
        """,
    )
    config = load_config(path, {"WH_SECRET": "whsec_SECRET"})
    assert (config.port, config.request_timeout, config.wait_timeout) == (8123, 600, 20)
    vault = config.vaults["local"]
    assert (vault.ttl, vault.ttl_scope, vault.writable) == (2.5, "vault", True)
    (hook,) = config.webhooks
    assert hook.signing_secret == "whsec_SECRET"
    assert hook.timeout == 1.5
    assert "denied" in hook.events and len(hook.events) == 7


# --- env: references -------------------------------------------------------------------------


def test_env_references_resolve_everywhere_including_nested_lists(tmp_path: Path) -> None:
    data = {
        "vaults": {
            "dev": {
                "type": "1password",
                "serviceAccountToken": "env:OP_DEV_TOKEN",
                "vaultIds": ["env:VAULT_A", "literal", "env:VAULT_B"],
                "write": {"vaultId": "env:VAULT_A"},
            },
            "local": {"type": "env", "file": "env:SECRETS_FILE", "token": "env:LOCAL_TOKEN"},
        },
        "port": "env:PORT",
        "webhooks": [{"url": "env:HOOK_URL", "authorization": "env:DD_API_KEY"}],
    }
    env = {
        **ENV,
        "VAULT_A": "va",
        "VAULT_B": "vb",
        "SECRETS_FILE": "s.env",
        "LOCAL_TOKEN": "tok_SECRET",
        "PORT": "8080",
        "HOOK_URL": "https://hooks.example.com/SECRET",
    }
    config = load_json(tmp_path, data, env)
    dev = config.vaults["dev"].options
    assert isinstance(dev, FakeOnePasswordOptions) and dev.write is not None
    assert dev.vault_ids == ["va", "literal", "vb"]
    assert dev.write.vault_id == "va"
    local = config.vaults["local"].options
    assert isinstance(local, FakeEnvOptions)
    assert (local.file, local.token) == ("s.env", "tok_SECRET")
    assert config.port == 8080
    assert config.webhooks[0].url == env["HOOK_URL"]
    assert config.webhooks[0].authorization == ENV["DD_API_KEY"]


def test_only_exact_env_references_are_resolved(tmp_path: Path) -> None:
    data = {"vaults": {"local": {"type": "env", "file": "x env:PORT", "token": "ENV:PORT"}}}
    options = load_json(tmp_path, data, {"PORT": "1"}).vaults["local"].options
    assert isinstance(options, FakeEnvOptions)
    assert (options.file, options.token) == ("x env:PORT", "ENV:PORT")


def test_missing_env_var_names_file_key_and_variable(tmp_path: Path) -> None:
    data = {"vaults": {"dev": {"type": "1password", "serviceAccountToken": "env:OP_DEV_TOKEN"}}}
    message = config_error(tmp_path, data, {"NGROK_AUTHTOKEN": "ngrok_SECRET_token"})
    path = tmp_path / "agent-vault.config.json"
    assert message == (
        f"{path}: vaults.dev.serviceAccountToken refers to env:OP_DEV_TOKEN, which is not set. "
        'Fix: export OP_DEV_TOKEN=... or add it to the "env" block of your MCP client config.'
    )


def test_every_missing_env_var_is_listed_and_no_value_leaks(tmp_path: Path) -> None:
    data = {
        "vaults": {"dev": {"type": "1password", "serviceAccountToken": "env:OP_DEV_TOKEN", "vaultIds": ["env:A"]}},
        "ngrokAuthToken": "env:NGROK_AUTHTOKEN",
    }
    message = config_error(tmp_path, data, {"NGROK_AUTHTOKEN": "ngrok_SECRET_token"})
    assert "vaults.dev.serviceAccountToken refers to env:OP_DEV_TOKEN" in message
    assert "vaults.dev.vaultIds[0] refers to env:A" in message
    assert "ngrok_SECRET_token" not in message


def test_referenced_env_vars(tmp_path: Path) -> None:
    path = write(tmp_path, "agent-vault.config.json", SEED_EXAMPLES[4])
    assert referenced_env_vars(path) == {"OP_DEV_TOKEN", "OP_PROD_TOKEN", "NGROK_AUTHTOKEN"}
    toml = write(tmp_path, "agent-vault.toml", '[vaults.x]\ntype = "env"\nfile = "env:F"\nlist = ["env:L", "y"]\n')
    assert referenced_env_vars(toml) == {"F", "L"}


def test_referenced_env_vars_needs_no_values_and_no_valid_schema(tmp_path: Path) -> None:
    path = write(tmp_path, "agent-vault.toml", 'bogus = "env:ONE"\n[vaults.a]\nb = [{c = "env:TWO"}]\n')
    assert referenced_env_vars(path) == {"ONE", "TWO"}


# --- validation errors -----------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_nearest(tmp_path: Path) -> None:
    message = config_error(tmp_path, {**MINIMAL, "ngrokAuthtoken": "x", "webhook": []})
    path = tmp_path / "agent-vault.config.json"
    assert f"{path}: ngrokAuthtoken: unknown key. Fix: did you mean `ngrokAuthToken`?" in message
    assert f"{path}: webhook: unknown key. Fix: did you mean `webhooks`?" in message
    assert "requestTimeout" in message  # the allowed keys are listed


def test_unknown_vault_key_suggests_the_nearest(tmp_path: Path) -> None:
    data = {"vaults": {"dev": {"type": "env", "file": "f", "ttlscope": "vault", "ttl_scope": "vault"}}}
    message = config_error(tmp_path, data)
    assert "vaults.dev.ttlscope: unknown key. Fix: did you mean `ttlScope`?" in message
    assert "vaults.dev.ttl_scope: unknown key. Fix: did you mean `ttlScope`?" in message
    # the vault's allowed keys are the common ones plus the provider's
    assert (
        "type, ttl, ttlScope, writable, delivery, secrets, approvers, require, ownerMayApprove, file, token" in message
    )


def test_unknown_provider_option_key_suggests_the_nearest(tmp_path: Path) -> None:
    data = {"vaults": {"dev": {"type": "1password", "vaultID": ["a"], "write": {"vaultid": "v"}}}}
    message = config_error(tmp_path, data)
    assert "vaults.dev.vaultID: unknown key. Fix: did you mean `vaultIds`?" in message
    assert "vaults.dev.write.vaultid: unknown key. Fix: did you mean `vaultId`?" in message


def test_unknown_webhook_key_suggests_the_nearest(tmp_path: Path) -> None:
    data = {**MINIMAL, "webhooks": [{"url": "https://x.example", "authorisation": "SECRET_literal"}]}
    message = config_error(tmp_path, data)
    assert "webhooks[0].authorisation: unknown key. Fix: did you mean `authorization`?" in message
    assert "SECRET_literal" not in message


def test_source_is_not_a_config_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, {**MINIMAL, "source": "/etc/passwd"})
    assert "source: unknown key" in message


def test_wrong_types_say_expected_and_got(tmp_path: Path) -> None:
    data = {
        "vaults": {"dev": {"type": "env", "file": "f", "writable": [1], "ttl": True}},
        "port": "abc",
        "webhooks": {"url": "https://x.example"},
    }
    message = config_error(tmp_path, data)
    assert "port: expected a whole number, got string. Fix: set `port`" in message
    assert "vaults.dev.writable: expected true or false, got list" in message
    assert "vaults.dev.ttl: expected a number, got boolean" in message
    assert "webhooks: expected a list, got table" in message
    assert len(message.splitlines()) == 4


def test_wrong_type_of_a_credential_never_echoes_it(tmp_path: Path) -> None:
    data = {
        "vaults": {"dev": {"type": "1password", "serviceAccountToken": ["ops_SECRET_literal"]}},
        "ngrokAuthToken": {"t": "ngrok_SECRET_literal"},
    }
    message = config_error(tmp_path, data)
    assert "vaults.dev.serviceAccountToken: expected a string, got list" in message
    assert "ngrokAuthToken: expected a string, got table" in message
    assert "SECRET" not in message


def test_bounds_and_choices(tmp_path: Path) -> None:
    data = {
        "vaults": {"dev": {"type": "env", "file": "f", "ttl": -5, "ttlScope": "Vault"}},
        "port": 70000,
        "requestTimeout": 5,
        "waitTimeout": 3601,
    }
    message = config_error(tmp_path, data)
    assert "vaults.dev.ttl: must be >= 0, got -5. Fix: set `ttl` to the approval window in minutes" in message
    assert "vaults.dev.ttlScope: must be 'secret' or 'vault', got 'Vault'" in message
    assert "port: must be <= 65535, got 70000" in message
    assert "requestTimeout: must be >= 10, got 5" in message
    assert "waitTimeout: must be <= 3600, got 3601" in message


def test_out_of_range_value_from_env_is_not_echoed(tmp_path: Path) -> None:
    message = config_error(tmp_path, {**MINIMAL, "port": "env:PORT"}, {"PORT": "123456"})
    assert "port: must be <= 65535. Fix" in message
    assert "123456" not in message


def test_missing_file_for_env_vault(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"vaults": {"local": {"type": "env", "ttl": 15}}})
    path = tmp_path / "agent-vault.config.json"
    assert message.startswith(f"{path}: vaults.local.file: required key is missing. Fix: add `file` to vaults.local")


def test_missing_type(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"vaults": {"local": {"file": "f"}}})
    assert "vaults.local.type: required key is missing. Fix: add `type` to vaults.local" in message


def test_unknown_provider_type(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"vaults": {"kp": {"type": "keepass", "file": "x.kdbx"}}})
    path = tmp_path / "agent-vault.config.json"
    assert message.startswith(f"{path}: vaults.kp.type: unknown provider type 'keepass'. Known types: 1password, env.")
    assert "Fix:" in message
    assert len(message.splitlines()) == 1  # the options are not checked against an unknown type


def test_vaults_required_and_non_empty_and_well_named(tmp_path: Path) -> None:
    assert "vaults: required key is missing" in config_error(tmp_path, {"port": 1})
    assert "vaults: no vaults are configured" in config_error(tmp_path, {"vaults": {}})
    message = config_error(tmp_path, {"vaults": {"bad name": {"type": "env", "file": "f"}}})
    assert "vault name 'bad name' is not allowed" in message
    assert "vaults.dev: expected a table" in config_error(tmp_path, {"vaults": {"dev": "env"}})


def test_webhook_url_and_events_are_checked(tmp_path: Path) -> None:
    hooks = [
        {"url": "ftp://x.example"},
        {"url": "https://x.example", "events": ["aproved"]},
        {"events": "all"},
    ]
    message = config_error(tmp_path, {**MINIMAL, "webhooks": hooks})
    assert "webhooks[0].url: must be an http:// or https:// URL with a host" in message
    assert "webhooks[1].events: unknown event(s) 'aproved'" in message
    assert "webhooks[2].url: required key is missing" in message


def test_all_problems_come_in_one_error_one_per_line(tmp_path: Path) -> None:
    data = {"vaults": {"a": {"type": "env"}, "b": {"type": "env", "file": "f", "ttl": -1}}, "prot": 1}
    lines = config_error(tmp_path, data).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(str(tmp_path / "agent-vault.config.json") + ": ") for line in lines)
    assert all("Fix: " in line for line in lines)


# --- file formats ----------------------------------------------------------------------------


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "agent-vault.config.json", '{\n  "vaults": {},\n  "port": 9999,\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(f"{path}: line 4, column 1: invalid JSON")


def test_malformed_toml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "agent-vault.toml", '[vaults.local]\ntype = "env"\nfile = .env.secrets\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(f"{path}: line 3, column 8: invalid TOML")


def test_malformed_toml_at_end_of_file(tmp_path: Path) -> None:
    path = write(tmp_path, "agent-vault.toml", '[vaults.local]\ntype = "env')
    with pytest.raises(ConfigError, match="invalid TOML"):
        referenced_env_vars(path)


def test_duplicate_json_keys_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "agent-vault.config.json", '{"vaults": {}, "vaults": {}}')
    with pytest.raises(ConfigError, match="duplicate key 'vaults'"):
        load_config(path, {})


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, "agent-vault.config.json", "[]")
    with pytest.raises(ConfigError, match="top level must be an object"):
        load_config(path, {})


@pytest.mark.parametrize("name", ["agent-vault.yaml", "agent-vault"])
def test_other_formats_are_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "vaults: {}")
    with pytest.raises(ConfigError, match=r"unsupported config format.*Fix: use a \.toml file"):
        load_config(path, {})


def test_unreadable_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "missing.toml", {})
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"vaults": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, {})


def test_json_with_bom_and_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "agent-vault.config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(MINIMAL).encode())
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("agent-vault.config.json"), {})
    assert config.source == tmp_path / "agent-vault.config.json"
    assert config.vaults["local"].base_dir == tmp_path


# --- redaction -------------------------------------------------------------------------------


def test_redacted_view_hides_every_credential(tmp_path: Path) -> None:
    data = json.loads(SEED_EXAMPLES[4])
    data["vaults"]["local"]["token"] = "literal_SECRET_token"
    data["webhooks"] = [
        {"url": "env:HOOK_URL", "authorization": "env:DD_API_KEY", "signingSecret": "whsec_SECRET_literal"},
        {"url": "https://public.example/hook"},
    ]
    data["port"] = "env:PORT"
    env = {**ENV, "HOOK_URL": "https://hooks.example.com/SECRET", "PORT": "9000"}
    view = redacted_view(load_json(tmp_path, data, env))
    dumped = json.dumps(view)  # JSON-able
    assert "SECRET" not in dumped
    assert view["source"] == str(tmp_path / "agent-vault.config.json")
    assert view["ngrokAuthToken"] == "<redacted: from env:NGROK_AUTHTOKEN>"
    assert view["vaults"]["dev"]["serviceAccountToken"] == "<redacted: from env:OP_DEV_TOKEN>"
    assert view["vaults"]["dev"]["vaultIds"] == ["abc123"]
    assert view["vaults"]["local"] == {
        "type": "env",
        "ttl": 30,
        "ttlScope": "secret",
        "writable": False,
        "file": ".env.secrets",
        "token": "<redacted>",
    }
    hook, public = view["webhooks"]
    assert hook["url"] == "<redacted: from env:HOOK_URL>"
    assert hook["authorization"] == "<redacted: from env:DD_API_KEY>"
    assert hook["signingSecret"] == "<redacted>"
    assert public["url"] == "https://public.example/hook"
    assert public["authorization"] is None
    assert view["port"] == 9000
    assert (view["requestTimeout"], view["waitTimeout"]) == (300, 50)


def test_repr_never_shows_resolved_values(tmp_path: Path) -> None:
    data = json.loads(SEED_EXAMPLES[4])
    data["webhooks"] = [{"url": "env:HOOK_URL", "authorization": "env:DD_API_KEY", "signingSecret": "env:DD_API_KEY"}]
    env = {**ENV, "HOOK_URL": "https://hooks.example.com/SECRET"}
    config = load_json(tmp_path, data, env)
    text = repr(config) + str(config) + repr(config.vaults["dev"]) + repr(config.webhooks[0])
    assert "SECRET" not in text
    assert "hooks.example.com" not in text


def test_credential_key_detection() -> None:
    for key in (
        "serviceAccountToken",
        "apiKey",
        "password",
        "clientSecret",
        "authorization",
        "signingSecret",
    ):
        assert cfg._is_credential_key(key), key
    for key in ("file", "vaultIds", "url", "type"):
        assert not cfg._is_credential_key(key), key


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_json(tmp_path, MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        config.port = 1  # type: ignore[misc]


def test_every_key_has_a_row_in_the_reference() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    keys = [*cfg._wire_names(Config), *cfg._wire_names(VaultConfig), *cfg._wire_names(WebhookConfig), "file"]
    for key in keys:
        assert f"| `{key}` |" in doc, key
