"""The console's audit queries against both engines (real SQLite files, a real PostgreSQL database): every
RowFilter field, paging, streaming exports while the broker keeps appending, and the per-day counts the
dashboard's pictures draw."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent_vault.domain.errors import AuditError
from agent_vault.store.audit import AuditEvent, AuditLog, AuditRecord, ReleaseCount, RowFilter

DAY1 = datetime(2026, 3, 1, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY2 + timedelta(days=1)
APP = "/home/fake/src/app"
OTHER = "/home/fake/src/other"
CLAUDE = "claude-code 2.1"


class SetClock:
    """A clock the test sets: each row is dated exactly when the test says."""

    def __init__(self) -> None:
        self.now = DAY1

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> SetClock:
    return SetClock()


@pytest.fixture(params=["sqlite", "postgres"])
def log(request: pytest.FixtureRequest, tmp_path: Path, clock: SetClock) -> Iterator[AuditLog]:
    """The same queries on both engines: SQLite files, and PostgreSQL (the team broker)."""
    if request.param == "postgres":
        from agent_vault.store.postgres_audit import PostgresAuditLog

        url = request.getfixturevalue("postgres").database()
        with PostgresAuditLog(url, clock=clock, busy_timeout=0.5) as pg_log:
            yield pg_log  # type: ignore[misc]  # the same AuditRecords protocol
        return
    with AuditLog(tmp_path / "audit.db", clock=clock, busy_timeout=0.5) as audit_log:
        yield audit_log


def add(log: AuditLog, clock: SetClock, when: datetime, event: str, **fields: Any) -> AuditRecord:
    clock.now = when
    return log.append(AuditEvent(event, **fields))


@pytest.fixture
def rows(log: AuditLog, clock: SetClock) -> dict[str, AuditRecord]:
    """A small log over three UTC days, keyed by a short name for each row."""
    at = {
        "asked": DAY1 + timedelta(hours=9),
        "approved": DAY1 + timedelta(hours=9, minutes=1),
        "delivered": DAY1 + timedelta(hours=9, minutes=2),
        "window_read": DAY1 + timedelta(hours=23, minutes=59, seconds=59),
        "run_auto": DAY2,  # exactly midnight
        "run_delivered": DAY2 + timedelta(hours=10),
        "denied": DAY2 + timedelta(hours=11),
        "listed": DAY3,  # exactly midnight
        "prod_delivered": DAY3 + timedelta(hours=8),
        "anon_delivered": DAY3 + timedelta(hours=9),
    }
    app = {"project_dir": APP, "pid": 4242}
    made = {
        "asked": add(log, clock, at["asked"], "requested", vault="dev", names=("API_KEY",), operation="read",
                     reason="Deploy the Staging API", request_id="req-aaa", client=CLAUDE, detail=app),
        "approved": add(log, clock, at["approved"], "approved", vault="dev", names=("API_KEY",),
                        request_id="req-aaa", client=CLAUDE, detail={**app, "factor": "totp:totp_fake", "via": "web"}),
        "delivered": add(log, clock, at["delivered"], "delivered", vault="dev", names=("API_KEY",),
                         request_id="req-aaa", client=CLAUDE, detail=app),
        "window_read": add(log, clock, at["window_read"], "auto_approved", vault="dev",
                           names=("API_KEY", "DATABASE_URL"), reason="seed the test database", client=CLAUDE,
                           detail={**app, "windows": ["win-1"], "approvals": ["req-aaa"]}),
        "run_auto": add(log, clock, at["run_auto"], "auto_approved", vault="dev", names=("DATABASE_URL",),
                        request_id="req-bbb", client="cursor", detail={"project_dir": OTHER, "run": {"argv": []}}),
        "run_delivered": add(log, clock, at["run_delivered"], "delivered", vault="dev", names=("DATABASE_URL",),
                             request_id="req-bbb", client="cursor", detail={"project_dir": OTHER, "to": "command"}),
        "denied": add(log, clock, at["denied"], "denied", vault="prod", names=("API_KEY",), reason="rotate keys",
                      request_id="req-ccc", client=CLAUDE + ".3", detail={"project": APP, "why": "Quota Exceeded"}),
        "listed": add(log, clock, at["listed"], "listed", vault="dev", client=CLAUDE,
                      detail={"project_dir": APP + "/sub"}),
        "prod_delivered": add(log, clock, at["prod_delivered"], "delivered", vault="prod", names=("API_KEY",),
                              request_id="req-ddd", client=CLAUDE, detail=app),
        "anon_delivered": add(log, clock, at["anon_delivered"], "delivered", vault="dev", names=("API_KEY",),
                              request_id="req-eee"),
    }  # fmt: skip
    return made


def ids(records: list[AuditRecord]) -> list[int]:
    return [r.id for r in records]


def picked(log: AuditLog, wanted: RowFilter) -> set[int]:
    return set(ids(log.rows(wanted, limit=None)))


def of(rows: dict[str, AuditRecord], *names: str) -> set[int]:
    return {rows[n].id for n in names}


# -- each field -------------------------------------------------------------------------------


def test_no_filter_gives_every_row_newest_first(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    every = log.rows(RowFilter(), limit=None)
    assert ids(every) == sorted((r.id for r in rows.values()), reverse=True)
    assert ids(log.rows(RowFilter(), limit=None, newest_first=False)) == sorted(r.id for r in rows.values())
    assert ids(log.rows(RowFilter(), limit=3)) == ids(every)[:3]


def test_vault_name_event_and_request_id_select_exactly(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    assert picked(log, RowFilter(vault="prod")) == of(rows, "denied", "prod_delivered")
    assert picked(log, RowFilter(name="DATABASE_URL")) == of(rows, "window_read", "run_auto", "run_delivered")
    assert picked(log, RowFilter(name="DATABASE")) == set()  # a name is matched whole, not as a piece
    assert picked(log, RowFilter(event="delivered")) == of(
        rows, "delivered", "run_delivered", "prod_delivered", "anon_delivered"
    )
    assert picked(log, RowFilter(request_id="req-aaa")) == of(rows, "asked", "approved", "delivered")


def test_client_is_an_exact_match(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    assert picked(log, RowFilter(client=CLAUDE)) == of(
        rows, "asked", "approved", "delivered", "window_read", "listed", "prod_delivered"
    )
    assert picked(log, RowFilter(client=CLAUDE + ".3")) == of(rows, "denied")
    assert picked(log, RowFilter(client="claude-code")) == set()
    assert picked(log, RowFilter(client="Cursor")) == set()


def test_project_is_the_detail_project_dir_exactly(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    # the denied row has the path under another key, the listed row a sub-directory: neither matches
    assert picked(log, RowFilter(project=APP)) == of(
        rows, "asked", "approved", "delivered", "window_read", "prod_delivered"
    )
    assert picked(log, RowFilter(project=OTHER)) == of(rows, "run_auto", "run_delivered")
    assert picked(log, RowFilter(project="/home/fake/src")) == set()


def test_search_is_case_insensitive_over_the_row_text(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    assert picked(log, RowFilter(search="staging api")) == of(rows, "asked")  # reason
    assert picked(log, RowFilter(search="SEED THE")) == of(rows, "window_read")  # reason
    assert picked(log, RowFilter(search="database_url")) == of(rows, "window_read", "run_auto", "run_delivered")
    assert picked(log, RowFilter(search="PROD")) == of(rows, "denied", "prod_delivered")  # vault
    assert picked(log, RowFilter(search="CURSOR")) == of(rows, "run_auto", "run_delivered")  # client
    assert picked(log, RowFilter(search="quota exceeded")) == of(rows, "denied")  # detail
    assert picked(log, RowFilter(search="win-1")) == of(rows, "window_read")  # detail
    assert picked(log, RowFilter(search="nothing like this")) == set()


def test_search_does_not_match_the_hashes(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    for record in rows.values():
        assert picked(log, RowFilter(search=record.hash[10:30])) == set()
        assert picked(log, RowFilter(search=record.hash.upper())) == set()


def test_search_is_case_insensitive_beyond_ascii(log: AuditLog, clock: SetClock) -> None:
    row = add(log, clock, DAY1, "requested", vault="dev", names=("API_KEY",), reason="Réglage du CAFÉ")
    assert picked(log, RowFilter(search="CAFÉ")) == {row.id}  # the very text of the row
    assert picked(log, RowFilter(search="café")) == {row.id}
    assert picked(log, RowFilter(search="réglage")) == {row.id}


def test_since_is_inclusive_and_until_exclusive(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    day1 = of(rows, "asked", "approved", "delivered", "window_read")
    day2 = of(rows, "run_auto", "run_delivered", "denied")
    day3 = of(rows, "listed", "prod_delivered", "anon_delivered")
    assert picked(log, RowFilter(since=DAY2)) == day2 | day3  # the row at exactly midnight is in
    assert picked(log, RowFilter(until=DAY2)) == day1  # ... and not before it
    assert picked(log, RowFilter(since=DAY2, until=DAY3)) == day2
    assert picked(log, RowFilter(since=rows["window_read"].ts, until=rows["run_auto"].ts)) == of(rows, "window_read")
    # naive means UTC; another offset is the same moment
    assert picked(log, RowFilter(since=DAY2.replace(tzinfo=None), until=DAY3.replace(tzinfo=None))) == day2
    plus_one = timezone(timedelta(hours=1))
    assert picked(log, RowFilter(since=datetime(2026, 3, 2, 1, 0, tzinfo=plus_one))) == day2 | day3


def test_released_keeps_deliveries_and_window_reads_only(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    # the run's auto_approved row has a request (its delivery is the release); approvals release nothing
    assert picked(log, RowFilter(released=True)) == of(
        rows, "delivered", "window_read", "run_delivered", "prod_delivered", "anon_delivered"
    )


def test_before_id_pages_newest_first_without_overlap_or_gaps(log: AuditLog, clock: SetClock) -> None:
    made = [
        add(log, clock, DAY1 + timedelta(minutes=i), "requested", vault="dev", names=("API_KEY",), request_id=f"r{i}")
        for i in range(23)
    ]
    pages: list[list[int]] = []
    before: int | None = None
    while True:
        page = ids(log.rows(RowFilter(before_id=before), limit=5))
        if not page:
            break
        assert all(before is None or i < before for i in page)
        pages.append(page)
        before = page[-1]
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [i for p in pages for i in p] == sorted(ids(made), reverse=True)


def test_filters_combine_with_and(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    assert picked(log, RowFilter(vault="dev", event="delivered")) == of(
        rows, "delivered", "run_delivered", "anon_delivered"
    )
    assert picked(log, RowFilter(vault="dev", event="delivered", client=CLAUDE)) == of(rows, "delivered")
    assert picked(log, RowFilter(name="API_KEY", released=True, since=DAY3)) == of(
        rows, "prod_delivered", "anon_delivered"
    )
    assert picked(log, RowFilter(project=APP, search="seed", name="DATABASE_URL")) == of(rows, "window_read")
    assert picked(log, RowFilter(vault="prod", event="approved")) == set()
    assert picked(log, RowFilter(request_id="req-aaa", before_id=rows["delivered"].id)) == of(rows, "asked", "approved")


def test_an_unknown_event_is_refused_by_name(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="'fetched'"):
        RowFilter(event="fetched")
    with pytest.raises(ValueError, match="'fetched'"):
        log.list(event="fetched")


# -- stream -----------------------------------------------------------------------------------


def test_stream_yields_every_matching_row_oldest_first(log: AuditLog, clock: SetClock) -> None:
    made = [add(log, clock, DAY1, "listed", vault="dev" if i % 3 else "prod") for i in range(130)]
    assert ids(list(log.stream(RowFilter()))) == ids(made)  # no page limit
    assert ids(list(log.stream(RowFilter(vault="prod")))) == [r.id for r in made if r.vault == "prod"]
    assert list(log.stream(RowFilter(vault="nowhere"))) == []


def test_an_append_while_streaming_is_not_blocked(log: AuditLog, clock: SetClock) -> None:
    made = [add(log, clock, DAY1, "listed", vault="dev") for _ in range(5)]
    streamed = log.stream(RowFilter())
    seen = [next(streamed), next(streamed)]
    try:
        # busy_timeout is 0.5 s: an append blocked by the export's read would raise AuditError
        late = add(log, clock, DAY1 + timedelta(minutes=1), "listed", vault="dev")
    except AuditError as exc:  # pragma: no cover - the failure being tested for
        pytest.fail(f"an export blocked an append: {exc}")
    seen.extend(streamed)
    assert ids(seen) == ids(made)  # one read snapshot: the stream ends where it began
    assert log.rows(RowFilter(), limit=1)[0] == late
    assert log.verify().ok


def test_a_stream_left_unfinished_does_not_block_appends(log: AuditLog, clock: SetClock) -> None:
    add(log, clock, DAY1, "listed", vault="dev")
    streamed = log.stream(RowFilter())
    next(streamed)
    streamed.close()
    assert add(log, clock, DAY1, "listed", vault="dev").id == 2


# -- releases and daily -------------------------------------------------------------------------


def test_releases_count_per_day_vault_name_client_and_project(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    counts = log.releases(RowFilter())
    assert Counter(counts) == Counter(
        [
            # the delivery and the window read (which names two secrets: counted once for each)
            ReleaseCount("2026-03-01", "dev", "API_KEY", CLAUDE, APP, 2),
            ReleaseCount("2026-03-01", "dev", "DATABASE_URL", CLAUDE, APP, 1),
            # the run's auto_approved row is not a release, its delivery is
            ReleaseCount("2026-03-02", "dev", "DATABASE_URL", "cursor", OTHER, 1),
            ReleaseCount("2026-03-03", "prod", "API_KEY", CLAUDE, APP, 1),
            ReleaseCount("2026-03-03", "dev", "API_KEY", None, None, 1),
        ]
    )
    assert [c.day for c in counts] == sorted(c.day for c in counts)


def test_releases_take_the_filters(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    assert log.releases(RowFilter(vault="prod")) == [ReleaseCount("2026-03-03", "prod", "API_KEY", CLAUDE, APP, 1)]
    assert Counter(log.releases(RowFilter(since=DAY2, until=DAY3))) == Counter(
        [ReleaseCount("2026-03-02", "dev", "DATABASE_URL", "cursor", OTHER, 1)]
    )
    assert log.releases(RowFilter(event="denied")) == []  # a denial released nothing


def test_releases_of_one_day_add_up_across_rows(log: AuditLog, clock: SetClock) -> None:
    for minute in range(7):
        add(log, clock, DAY2 + timedelta(minutes=minute), "auto_approved", vault="dev", names=("API_KEY",),
            client="cursor", detail={"project_dir": OTHER, "windows": ["win-2"]})  # fmt: skip
    add(
        log,
        clock,
        DAY3,
        "auto_approved",
        vault="dev",
        names=("API_KEY",),
        client="cursor",
        detail={"project_dir": OTHER},
    )
    assert log.releases(RowFilter()) == [
        ReleaseCount("2026-03-02", "dev", "API_KEY", "cursor", OTHER, 7),
        ReleaseCount("2026-03-03", "dev", "API_KEY", "cursor", OTHER, 1),
    ]


def test_daily_counts_each_event_per_day(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    counts = log.daily(RowFilter(), ["delivered", "denied", "expired"])
    assert sorted(counts) == [
        ("2026-03-01", "delivered", 1),
        ("2026-03-02", "delivered", 1),
        ("2026-03-02", "denied", 1),
        ("2026-03-03", "delivered", 2),
    ]
    assert [day for day, _, _ in counts] == sorted(day for day, _, _ in counts)
    assert log.daily(RowFilter(vault="prod"), ["delivered", "denied"]) == [
        ("2026-03-02", "denied", 1),
        ("2026-03-03", "delivered", 1),
    ]
    assert log.daily(RowFilter(since=DAY3), ["denied"]) == []


def test_daily_refuses_an_unknown_event_by_name(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    with pytest.raises(ValueError, match="'fetched'"):
        log.daily(RowFilter(), ["delivered", "fetched"])


def test_releases_and_daily_take_a_row_id_bound(log: AuditLog, rows: dict[str, AuditRecord]) -> None:
    # json_each has an `id` column of its own: the bound must mean the audit row's id
    bound = rows["run_auto"].id
    before = {(c.day, c.name) for c in log.releases(RowFilter(before_id=bound))}
    assert before == {(c.day, c.name) for c in log.releases(RowFilter(until=rows["run_auto"].ts))}
    assert before and all(day == DAY1.strftime("%Y-%m-%d") for day, _ in before)
    assert all(day == DAY1.strftime("%Y-%m-%d") for day, _, _ in log.daily(RowFilter(before_id=bound), ["delivered"]))
