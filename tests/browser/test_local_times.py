"""Times in the viewer's time zone: in Debian's chromium set to New York, the approval page shows its
expiry in New York time with the UTC time on hover; with JavaScript off, the UTC text stays."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.browser.conftest import PHONE, BackgroundBroker

ZONE = "America/New_York"


@pytest.fixture
def new_york(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(**PHONE, timezone_id=ZONE, locale="en-US")
    yield context.new_page()
    context.close()


@pytest.fixture
def no_script(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(**PHONE, timezone_id=ZONE, locale="en-US", java_script_enabled=False)
    yield context.new_page()
    context.close()


def _spaces(text: str) -> str:
    return text.replace("\u202f", " ").replace("\xa0", " ")  # ICU puts narrow no-break spaces before AM/PM


def test_the_expiry_is_shown_in_the_viewers_time_zone_with_utc_on_hover(
    new_york: Any, broker: BackgroundBroker
) -> None:
    req = broker.ask()
    new_york.goto(f"{broker.url}/approve/{req.id}")
    local = req.expires_at.astimezone(ZoneInfo(ZONE))
    utc = req.expires_at.astimezone(UTC)
    expiry = new_york.locator("#expires time")
    expected = f"{local:%I:%M:%S %p} {local.tzname()}"  # e.g. 01:14:05 PM EST
    new_york.wait_for_function(
        "t => document.querySelector('#expires time').textContent !== t", arg=f"{utc:%H:%M:%S} UTC", timeout=10_000
    )
    assert _spaces(expiry.inner_text()) == expected
    assert expiry.get_attribute("title") == f"{utc:%Y-%m-%d %H:%M:%S} UTC"
    assert expiry.get_attribute("datetime") == f"{utc:%Y-%m-%dT%H:%M:%SZ}"


def test_without_javascript_the_utc_time_stays(no_script: Any, broker: BackgroundBroker) -> None:
    req = broker.ask()
    no_script.goto(f"{broker.url}/approve/{req.id}")
    utc = req.expires_at.astimezone(UTC)
    assert no_script.locator("#expires time").inner_text() == f"{utc:%H:%M:%S} UTC"
