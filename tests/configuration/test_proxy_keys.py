"""A secret's proxy keys (`secrets.NAME.hosts`, `injectInto`, `approveEach`, `plainHttp`): validated with
errors that name the fix, and part of the vault's definition, so editing them ends what was approved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_vault.broker.workspace import _definition
from agent_vault.configuration.project import load_config
from agent_vault.domain.errors import ConfigError


def load(tmp_path: Path, secrets: dict[str, Any]) -> Any:
    (tmp_path / ".env.secrets").write_text("STRIPE_KEY=sk_test_fake\n")
    path = tmp_path / "agent-vault.config.json"
    path.write_text(json.dumps({"vaults": {"dev": {"type": "env", "file": ".env.secrets", "secrets": secrets}}}))
    return load_config(path, {})


def test_the_keys_and_their_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, {"STRIPE_KEY": {"hosts": ["API.Stripe.com", "*.example.com", "127.0.0.1"]}})
    policy = config.vaults["dev"].secrets["STRIPE_KEY"]
    assert policy.hosts == ("api.stripe.com", "*.example.com", "127.0.0.1")
    assert policy.inject_into == ("headers",) and policy.approve_each == () and policy.plain_http is False
    rules = ["POST /v1/refunds", "DELETE *"]
    full = {"hosts": ["api.stripe.com"], "injectInto": ["headers", "body"], "approveEach": rules, "plainHttp": True}
    policy = load(tmp_path, {"STRIPE_KEY": full}).vaults["dev"].secrets["STRIPE_KEY"]
    assert policy.inject_into == ("headers", "body") and policy.approve_each == ("POST /v1/refunds", "DELETE *")


@pytest.mark.parametrize(
    ("secret", "named"),
    [
        ({"hosts": ["https://api.stripe.com"]}, "is not a host name"),
        ({"hosts": ["api.stripe.com/v1"]}, "is not a host name"),
        ({"hosts": ["api.stripe.com"], "injectInto": ["cookies"]}, "injectInto"),
        ({"hosts": ["api.stripe.com"], "injectInto": []}, "injectInto"),
        ({"hosts": ["api.stripe.com"], "approveEach": ["refunds please"]}, "is not a rule"),
        ({"hosts": ["api.stripe.com"], "approvEach": ["POST /x"]}, "approveEach"),
    ],
)
def test_a_bad_key_is_an_error_that_names_it(tmp_path: Path, secret: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"STRIPE_KEY": secret})
    assert named in str(caught.value) and "STRIPE_KEY" in str(caught.value)


@pytest.mark.parametrize(
    "edit",
    [
        {"hosts": ["api.stripe.com", "collector.evil.example"]},
        {"hosts": ["api.stripe.com"], "injectInto": ["headers", "query"]},
        {"hosts": ["api.stripe.com"], "approveEach": []},
        {"hosts": ["api.stripe.com"], "approveEach": ["POST /v1/refunds"], "plainHttp": True},
    ],
)
def test_editing_where_a_value_may_go_changes_the_vaults_definition(tmp_path: Path, edit: dict[str, Any]) -> None:
    before = load(tmp_path, {"STRIPE_KEY": {"hosts": ["api.stripe.com"], "approveEach": ["POST /v1/refunds"]}})
    after = load(tmp_path, {"STRIPE_KEY": edit})
    assert _definition(before.vaults["dev"]) != _definition(after.vaults["dev"])


def test_a_vault_without_proxy_keys_keeps_its_definition(tmp_path: Path) -> None:
    # windows opened before this version must keep applying to vaults that bind no hosts
    plain = load(tmp_path, {})
    with_delivery_only = load(tmp_path, {"STRIPE_KEY": {"delivery": "value"}})
    assert "proxy" not in json.dumps(_definition(plain.vaults["dev"]))
    assert _definition(plain.vaults["dev"]) != "" and _definition(with_delivery_only.vaults["dev"]) != ""
