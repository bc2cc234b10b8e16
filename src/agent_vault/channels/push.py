"""Push through apprise: any apprise URL (ntfy, Telegram, Slack, Discord, email, Pushover, ...).
ntfy URLs get the page as click target and a "View" action button (ntfy's Actions header);
apprise is imported only when such a channel is built."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import Field

from agent_vault.channels.base import ChannelOptions, Notice
from agent_vault.domain.errors import ChannelError, ConfigError

NTFY_SCHEMES = ("ntfy", "ntfys")
#: schemes whose host part is a server name, safe to show; for all others only the scheme is shown
_HOSTED = frozenset(
    {
        "ntfy",
        "ntfys",
        "json",
        "jsons",
        "xml",
        "xmls",
        "form",
        "forms",
        "gotify",
        "gotifys",
        "matrix",
        "matrixs",
        "mmost",
        "mmosts",
        "rocket",
        "rockets",
        "apprise",
        "apprises",
    }
)
INSTALL_HINT = "pip install 'agent-vault[notify]'"


def safe_label(url: str) -> str:
    """scheme://host[:port] of a self-hosted apprise URL (paths, users and queries may hold tokens)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _HOSTED:
        return f"{scheme or '(no scheme)'}://…"  # e.g. tgram, slack: their "host" is a token or an address
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{scheme}://…"
    return f"{scheme}://{host}{port}"


_STATUS = re.compile(r"(?:error|status|code|http)\D{0,12}\b([1-5]\d\d)\b", re.IGNORECASE)
_UNREACHABLE = re.compile(r"connect|resolv|timed? ?out|refused|unreachable|socket|ssl|certificate", re.IGNORECASE)


def failure_reason(logs: list[str]) -> str:
    """What went wrong, told from apprise's log lines without repeating them.

    apprise's lines name topics, tokens and chat ids (a ntfy topic is the channel's only secret),
    so nothing of them is passed on but an HTTP status or the fact that the server was not reached.
    """
    text = " ".join(logs)
    status = _STATUS.search(text)
    if status:
        return (
            f"the server answered HTTP {status.group(1)}. Fix: check the URL's topic or token and its "
            "credentials, then run `agent-vault status` after the next request"
        )
    if _UNREACHABLE.search(text):
        return "the server could not be reached. Fix: check the URL's host and that the server is up"
    return "the notification service did not accept it. Fix: check the URL against the apprise wiki"


def with_view_action(url: str, link: str) -> str:
    """`url` (ntfy) with the page as click target, a View button and no icon fetched from GitHub."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    # ntfy splits actions on , and ; so those are escaped in the button's URL; apprise unquotes the
    # parameter once more after the URL's own decoding, so every % of that is escaped once again
    button = link.replace(",", "%2C").replace(";", "%3B").replace("%", "%25")
    query["click"] = link
    query["actions"] = f"view, View, {button}, clear=true"
    query.setdefault("image", "no")
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote, safe="")))


def _apprise() -> Any:
    try:
        import apprise
    except ImportError as exc:
        raise ConfigError(f"push channels need the apprise package. Fix: {INSTALL_HINT}") from exc
    # apprise logs failures with target URLs; we report a scrubbed line ourselves instead.
    logger = logging.getLogger("apprise")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return apprise


class AppriseChannel:
    """One or more apprise URLs; a notice is sent to each, failures named by scheme and host only."""

    type_name: ClassVar[str] = "apprise"

    class Options(ChannelOptions):
        urls: tuple[str, ...] = Field(min_length=1, repr=False, description="apprise URLs (env: references allowed)")

    def __init__(self, name: str, options: ChannelOptions) -> None:
        assert isinstance(options, AppriseChannel.Options)
        self.name = name
        self.urls = options.urls
        apprise = _apprise()
        for index, url in enumerate(self.urls):
            if apprise.Apprise.instantiate(url) is None:
                raise ConfigError(
                    f"channel {name!r}: urls[{index}] ({safe_label(url)}) is not a URL apprise understands. "
                    "Fix: check it against https://github.com/caronc/apprise/wiki"
                )

    def describe(self) -> str:
        return ", ".join(safe_label(u) for u in self.urls)

    async def send(self, notice: Notice) -> None:
        failures = await asyncio.to_thread(self._send_all, notice)
        if failures:
            raise ChannelError("; ".join(failures))

    def _send_all(self, notice: Notice) -> list[str]:
        apprise = _apprise()
        failures = []
        for url in self.urls:
            scheme = urlsplit(url).scheme.lower()
            target = with_view_action(url, notice.link) if scheme in NTFY_SCHEMES else url
            client = apprise.Apprise()
            client.add(target)
            logs: list[str] = []
            ok = client.notify(
                body=notice.body,
                title=notice.title,
                notify_type=apprise.NotifyType.WARNING,
                body_format=apprise.NotifyFormat.TEXT,
                log_callback=_collector(logs),
            )
            if not ok:
                failures.append(f"{safe_label(url)}: {failure_reason(logs)}")
        return failures


def _collector(logs: list[str]) -> Callable[[Any, Any], None]:
    return lambda entry, _plugin: logs.append(str(entry.message))
