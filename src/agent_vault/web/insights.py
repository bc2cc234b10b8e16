"""The console's pictures: what the audit log says about releases and refusals, counted per UTC day,
per secret, per agent and per project, drawn by `web.charts` on the server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from markupsafe import Markup

from agent_vault.store.audit import ReleaseCount, RowFilter
from agent_vault.store.interface import AuditRecords
from agent_vault.web.charts import Series, bars, columns

#: days the overview's pictures cover (UTC days, today included)
DAYS = 14
#: days a secret's own page covers
SECRET_DAYS = 30
#: what counts as a refusal in the "denied or failed" picture, with its legend
REFUSALS = (("denied", "denied"), ("auth_failed", "wrong factor"), ("expired", "timed out"))


@dataclass(frozen=True)
class Pictures:
    releases_per_day: Markup
    refusals_per_day: Markup
    per_secret: Markup
    per_agent: Markup
    per_project: Markup


def overview(audit: AuditRecords, now: datetime, days: int = DAYS) -> Pictures:
    days_shown = _days(now, days)
    wanted = RowFilter(since=days_shown[0])
    counts = audit.releases(wanted)
    per_day = _per_day(days_shown, counts)
    refused = audit.daily(wanted, (event for event, _ in REFUSALS))
    series = [
        Series(label, tuple(sum(n for d, e, n in refused if d == _key(day) and e == event) for day in days_shown), kind)
        for (event, label), kind in zip(REFUSALS, ("denied", "failed", "expired"), strict=True)
    ]
    span = f"last {days} days, UTC"
    return Pictures(
        releases_per_day=columns(f"Values released per day ({span})", _labels(days_shown), [per_day]),
        refusals_per_day=columns(f"Denied or failed approvals per day ({span})", _labels(days_shown), series),
        per_secret=bars(f"Releases per secret ({span})", _top(counts, lambda c: f"{c.vault}/{c.name}")),
        per_agent=bars(f"Releases per agent, as the client names itself ({span})", _top(counts, _client)),
        per_project=bars(f"Releases per project ({span})", _top(counts, _project)),
    )


def secret_over_time(audit: AuditRecords, vault: str, name: str, now: datetime, days: int = SECRET_DAYS) -> Markup:
    days_shown = _days(now, days)
    counts = [c for c in audit.releases(RowFilter(since=days_shown[0], vault=vault, name=name)) if c.name == name]
    title = f"Releases of {vault}/{name} per day (last {days} days, UTC)"
    return columns(title, _labels(days_shown), [_per_day(days_shown, counts)])


def _days(now: datetime, days: int) -> list[datetime]:
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return [today - timedelta(days=back) for back in range(days - 1, -1, -1)]


def _key(day: datetime) -> str:
    return day.strftime("%Y-%m-%d")


def _labels(days: list[datetime]) -> list[str]:
    return [f"{day:%b} {day.day}" for day in days]


def _per_day(days: list[datetime], counts: Iterable[ReleaseCount]) -> Series:
    total: Counter[str] = Counter()
    for c in counts:
        total[c.day] += c.count
    return Series("released", tuple(total[_key(day)] for day in days), "reads")


def _top(counts: Iterable[ReleaseCount], key: Callable[[ReleaseCount], str]) -> list[tuple[str, int]]:
    total: Counter[str] = Counter()
    for c in counts:
        total[key(c)] += c.count
    return total.most_common()


def _client(c: ReleaseCount) -> str:
    return c.client or "(no client named)"


def _project(c: ReleaseCount) -> str:
    return c.project or "(no project reported)"
