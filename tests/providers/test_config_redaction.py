"""`config check`'s redacted view of real provider sections: credentials hidden, paths and IDs shown."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from agent_vault.configuration.project import load_config, redacted_view


def test_paths_and_ids_named_like_keys_are_shown_credentials_are_not(tmp_path: Path) -> None:
    path = tmp_path / "agent-vault.toml"
    path.write_text(
        '[vaults.kp]\ntype = "keepass"\nfile = "team.kdbx"\nkeyFile = "team.keyx"\npassword = "env:KP_PASS"\n'
        '[vaults.cloud]\ntype = "aws"\nregion = "eu-west-1"\nkmsKeyId = "alias/agents"\n'
        'accessKeyId = "env:AWS_ID"\nsecretAccessKey = "env:AWS_SECRET"\n'
    )
    view = redacted_view(
        load_config(path, {"KP_PASS": "fake-hidden-1", "AWS_ID": "AKIAFAKE", "AWS_SECRET": "fake-hidden-2"})
    )
    dumped = json.dumps(view)
    assert "fake-hidden" not in dumped and "AKIAFAKE" not in dumped
    assert view["vaults"]["kp"]["keyFile"] == "team.keyx"
    assert view["vaults"]["kp"]["password"] == "<redacted: from env:KP_PASS>"
    assert view["vaults"]["cloud"]["kmsKeyId"] == "alias/agents"
    assert view["vaults"]["cloud"]["secretAccessKey"] == "<redacted: from env:AWS_SECRET>"


def test_webhooks_are_shown_with_the_events_they_take_and_their_credential_hidden(tmp_path: Path) -> None:
    path = tmp_path / "agent-vault.config.json"
    hooks = [
        {"url": "https://logs.example.com/hook", "authorization": "env:LOG_TOKEN", "events": ["approved", "denied"]},
        {"url": "https://audit.example.com/all"},
    ]
    path.write_text(json.dumps({"vaults": {"dev": {"type": "env", "file": ".env"}}, "webhooks": hooks}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warned while it serialized a list of events
        view = redacted_view(load_config(path, {"LOG_TOKEN": "fake-hidden-token"}))
    assert "fake-hidden" not in json.dumps(view)
    assert [hook["events"] for hook in view["webhooks"]] == [["approved", "denied"], "all"]
    assert view["webhooks"][0]["authorization"] == "<redacted: from env:LOG_TOKEN>"
