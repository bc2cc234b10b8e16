"""The user's settings file (state dir, never the project), the desktop channel and notice text."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from agent_vault.channels.desktop import DesktopChannel
from agent_vault.channels.notice import build_notice
from agent_vault.channels.push import AppriseChannel, safe_label, with_view_action
from agent_vault.configuration.settings import (
    CommandTunnel,
    NgrokTunnel,
    NoTunnel,
    SettingsError,
    UrlTunnel,
    load_settings,
)
from agent_vault.domain.errors import ChannelError, ConfigError
from agent_vault.home import StatePaths
from tests.channels.helpers import fake_request, write_settings

TOKEN = "fake-ngrok-token-2718-DO-NOT-USE"


def test_no_file_means_no_channels_and_no_tunnel(home: StatePaths) -> None:
    settings = load_settings(home)
    assert settings.channels == () and isinstance(settings.tunnel, NoTunnel)
    assert settings.notify.coalesce_seconds == 2 and settings.notify.min_interval_seconds == 10


def test_full_settings_with_env_references(home: StatePaths) -> None:
    write_settings(
        home,
        """
[notify]
coalesceSeconds = 1
minIntervalSeconds = 30
[[channels]]
type = "apprise"
urls = ["env:AV_NTFY_URL", "json://127.0.0.1:9/x"]
[[channels]]
type = "desktop"
[tunnel]
type = "ngrok"
ngrokAuthToken = "env:NGROK_AUTHTOKEN"
domain = "vault-me.ngrok.app"
[passkeys]
rpId = "vault-me.ngrok.app"
""",
    )
    env = {"AV_NTFY_URL": "ntfys://ntfy.sh/av-topic-123", "NGROK_AUTHTOKEN": TOKEN}
    settings = load_settings(home, env)
    assert [c.name for c in settings.channels] == ["apprise", "desktop"]
    assert isinstance(settings.channels[0].options, AppriseChannel.Options)
    assert settings.channels[0].options.urls[0] == "ntfys://ntfy.sh/av-topic-123"
    assert isinstance(settings.tunnel, NgrokTunnel) and settings.tunnel.ngrok_auth_token == TOKEN
    assert settings.passkeys.rp_id == "vault-me.ngrok.app"
    assert TOKEN not in repr(settings) and "av-topic-123" not in repr(settings)


def test_missing_env_variable_is_named_and_no_value_echoed(home: StatePaths) -> None:
    write_settings(home, '[tunnel]\ntype = "ngrok"\nngrokAuthToken = "env:NGROK_AUTHTOKEN"\n')
    with pytest.raises(SettingsError, match=r"tunnel\.ngrokAuthToken refers to env:NGROK_AUTHTOKEN, which is not set"):
        load_settings(home, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[tunnel]\ntype = "carrier-pigeon"\n', "does not match any of the expected tags"),
        ('[tunnel]\ntype = "command"\n', "tunnel.command: Field required"),
        ('[tunnel]\ntype = "url"\npublicUrl = "https://vault.example.com/sub/path"\n', "just the origin"),
        ('[tunnel]\ntype = "url"\npublicUrl = "ftp://vault.example.com"\n', "https://"),
        ('[tunnel]\ntype = "command"\ncommand = "x"\nurlPattern = "(unclosed"\n', "not a valid regular expression"),
        ('[tunnel]\ntype = "ngrok"\nngrokAuthToken = "t"\nport = 1\n', "tunnel.port: Extra inputs are not permitted"),
        ('[[channels]]\ntype = "pager"\n', "unknown channel type 'pager'. Known types: apprise, desktop"),
        ('[[channels]]\ntype = "apprise"\n', "channels[0]: urls: Field required"),
        ('[[channels]]\ntype = "desktop"\n[[channels]]\ntype = "desktop"\nname = "desktop"\n', "used twice"),
        ("[notify]\ncoalesceSeconds = true\n", "expected a number"),
        ('[passkeys]\nrpId = "https://x"\n', "host name"),
        ("[tunnel\n", "invalid TOML"),
        ("[policy]\nmaxPendingPerSession = 0\n", "policy.maxPendingPerSession: Input should be greater than"),
        ("[policy]\nrequestBurst = true\n", "policy.requestBurst: expected a number"),
        ("[policy]\nmaxRequestTimeoutSeconds = 100000\n", "policy.maxRequestTimeoutSeconds: Input should be less than"),
    ],
)
def test_bad_settings_say_where_and_why(home: StatePaths, text: str, message: str) -> None:
    path = write_settings(home, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(home, {})
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_a_bad_token_value_is_never_echoed(home: StatePaths) -> None:
    write_settings(home, f'[tunnel]\ntype = "ngrok"\nngrokAuthToken = "{TOKEN}"\ndomain = "not a host!"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(home, {})
    assert "tunnel.domain" in str(caught.value) and TOKEN not in str(caught.value)


def test_command_tunnel_settings(home: StatePaths) -> None:
    write_settings(home, '[tunnel]\ntype = "command"\ncommand = "cloudflared tunnel --url {local_url}"\n')
    tunnel = load_settings(home).tunnel
    assert isinstance(tunnel, CommandTunnel)
    assert tunnel.command == ("cloudflared", "tunnel", "--url", "{local_url}")
    assert "trycloudflare" in tunnel.pattern() and tunnel.restart
    write_settings(
        home,
        '[tunnel]\ntype = "command"\ncommand = ["tailscale", "serve", "{port}"]\npublicUrl = "https://box.ts.net"\n',
    )
    tunnel = load_settings(home).tunnel
    assert isinstance(tunnel, CommandTunnel) and tunnel.public_url == "https://box.ts.net" and tunnel.pattern() == ""
    write_settings(home, '[tunnel]\ntype = "url"\npublicUrl = "https://vault.example.com/"\n')
    tunnel = load_settings(home).tunnel
    assert isinstance(tunnel, UrlTunnel) and tunnel.public_url == "https://vault.example.com"


def test_a_file_others_can_write_is_refused(home: StatePaths) -> None:
    path = write_settings(home, '[tunnel]\ntype = "command"\ncommand = "sh -c true"\n')
    path.chmod(0o620)
    with pytest.raises(SettingsError, match="chmod 600"):
        load_settings(home)


def test_apprise_channel_refuses_an_unknown_url_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        AppriseChannel("phone", AppriseChannel.Options(urls=("bogus://token-9999@x/y",)))
    assert "urls[0]" in str(caught.value) and "token-9999" not in str(caught.value)


def test_labels_and_ntfy_actions() -> None:
    assert safe_label("ntfys://user:pw@ntfy.sh/secret-topic?priority=high") == "ntfys://ntfy.sh"
    assert safe_label("tgram://123456:bot-token/987") == "tgram://…"
    url = with_view_action("ntfy://127.0.0.1:8/topic?priority=high", "https://t.example/approve/a,b")
    assert "priority=high" in url and "image=no" in url
    # apprise unquotes `actions` once more after the URL's decoding; ntfy must then see %2C, not a comma
    [actions] = parse_qs(urlsplit(url).query)["actions"]
    assert unquote(actions) == "view, View, https://t.example/approve/a%2Cb, clear=true"


# -- the desktop channel, with a recording notify-send on PATH ------------------------------------


@pytest.mark.anyio
async def test_desktop_channel_passes_text_as_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.txt"
    script = bin_dir / "notify-send"
    script.write_text(
        f"#!{sys.executable}\nimport sys, json\nopen({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    notice = build_notice([(fake_request(1, reason="'; rm -rf / #"), "http://localhost:9/approve/req1")], "")
    channel = DesktopChannel("desktop", DesktopChannel.Options())
    assert channel.describe() == "via notify-send"
    await channel.send(notice)
    import json

    argv = json.loads(record.read_text())
    assert argv[:3] == ["--app-name=agent-vault", "--urgency=critical", "--"]
    assert argv[3] == notice.title and argv[4] == notice.body and "rm -rf" in argv[4]


@pytest.mark.anyio
async def test_desktop_channel_without_a_notifier_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.devnull)
    channel = DesktopChannel("desktop", DesktopChannel.Options())
    assert channel.describe() == "no desktop notifier on this machine"
    with pytest.raises(ChannelError, match="no desktop notifier"):
        await channel.send(build_notice([(fake_request(), "http://x/approve/req0")], ""))


# -- notice text ------------------------------------------------------------------------------------


def test_notice_shows_what_why_code_link_and_nothing_that_approves() -> None:
    req = fake_request(3, reason="line one\nline two \u200b hidden")
    notice = build_notice([(req, "https://t.example/approve/req3")], "https://t.example/dashboard")
    assert notice.title == "agent-vault: approve reading API_KEY? (AC3-DEF)"
    assert notice.link == "https://t.example/approve/req3"
    assert "\\x0a" in notice.body and "\\u200b" in notice.body  # agent text cannot add lines or hide text
    assert "Match code: AC3-DEF" in notice.body and "Asked by: pytest-agent" in notice.body
    assert "csrf" not in notice.body.lower() and "code=" not in notice.body


def test_notice_for_a_command_says_what_runs() -> None:
    from dataclasses import replace

    req = replace(fake_request(4), extra={"run": {"argv": ["npm", "run", "migrate\u202e"], "cwd": "/p", "env": []}})
    notice = build_notice([(req, "https://t.example/approve/req4")], "")
    assert notice.title == "agent-vault: approve running a command with API_KEY? (AC4-DEF)"
    assert "RUN with API_KEY in vault dev\nCommand: npm run migrate\\u202e\n" in notice.body
