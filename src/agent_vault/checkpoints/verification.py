"""`agent-vault audit verify --checkpoints SRC`: audit.db and state.db against signed checkpoints.

Caught, each in its own words: rows edited or deleted (the chain itself breaks), the end of the log cut
(a checkpoint vouches for rows audit.db no longer has), the chain rebuilt with new hashes (a row a
checkpoint vouches for has another hash now), the database deleted or re-created (its row 1 is not the
one the checkpoints saw), and a factor added outside agent-vault's commands (the factor set's hash moved
with no `factor_added`/`factor_removed` row to explain it). Settings that were never accepted are noted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

from agent_vault.broker.integrity import FACTOR_EVENTS, SETTINGS_DIGEST, recorded_factors
from agent_vault.checkpoints.facts import factors_now, settings_now
from agent_vault.checkpoints.key import PublicKey
from agent_vault.checkpoints.record import Checkpoint, shown_time
from agent_vault.checkpoints.sources import Source
from agent_vault.checkpoints.watching import Finding, Watcher, short
from agent_vault.configuration.settings import storage
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditRecord
from agent_vault.store.engines import Storage, open_factors
from agent_vault.store.interface import AuditRecords

#: a factor change made through agent-vault writes state.db a moment before its audit row
FACTOR_ROW_GRACE = timedelta(seconds=60)


@dataclass
class CheckpointReport:
    findings: list[Finding] = field(default_factory=list)
    #: what was checked, for the summary
    checkpoints: int = 0
    latest: Checkpoint | None = None
    #: rows after the latest checkpoint (not vouched for yet)
    unvouched: int = 0

    @property
    def ok(self) -> bool:
        return not any(f.fatal for f in self.findings)


def verify_with_checkpoints(
    paths: StatePaths, source: Source, key: PublicKey, *, settings_file: Path
) -> CheckpointReport:
    """Every entry of `source` checked with `key`, then audit.db and state.db against the checkpoints."""
    report = CheckpointReport()
    watcher = Watcher(key, gaps=False)
    for arrival in source.poll():
        report.findings += watcher.feed(arrival)
    checkpoints = watcher.checkpoints
    report.checkpoints = len(checkpoints)
    if not checkpoints:
        report.findings.append(Finding("no checkpoints", f"{source.label} holds no checkpoint signed by key "
                                                         f"{key.key_id}: nothing to compare the log with"))  # fmt: skip
        return report
    latest = max(checkpoints, key=lambda c: (c.seq, c.time))
    report.latest = latest
    where = storage(paths)
    if not where.has_audit():
        report.findings.append(Finding("deleted", f"audit.db is missing: {latest.describe()} vouches for "
                                                  f"{latest.seq} rows. It was deleted"))  # fmt: skip
        return report
    with where.audit() as audit:
        report.findings += compare(audit, checkpoints)
        report.findings += factor_findings(audit, checkpoints, _factors_now(where))
        report.findings += settings_findings(audit, checkpoints, settings_now(settings_file))
        newest = audit.list(limit=1)
        report.unvouched = max(0, (newest[0].id if newest else 0) - latest.seq)
    return report


def compare(audit: AuditRecords, checkpoints: Sequence[Checkpoint]) -> list[Finding]:
    """The chain itself, then each checkpoint's row and head against the log."""
    found: list[Finding] = []
    chain = audit.verify()
    if not chain.ok:
        found.append(Finding("chain broken", f"audit.db is broken at row {chain.first_bad_id}: {chain.problem}"))
    first = audit.row(1)
    newest = audit.list(limit=1)
    end = newest[0].id if newest else 0
    other_log = [c for c in checkpoints if c.seq > 0 and (first is None or c.origin != first.hash)]
    if other_log:
        found.append(_recreated(max(other_log, key=lambda c: (c.seq, c.time)), first))
    rewritten: list[tuple[Checkpoint, AuditRecord]] = []
    cut: list[Checkpoint] = []
    matching: list[Checkpoint] = []
    for cp in sorted((c for c in checkpoints if c.seq > 0 and c not in other_log), key=lambda c: c.seq):
        row = audit.row(cp.seq)
        if row is None:
            if cp.seq > end:
                cut.append(cp)  # a row missing inside the log breaks the chain: reported above
        elif row.hash != cp.head:
            rewritten.append((cp, row))
        else:
            matching.append(cp)
    if rewritten:
        cp, row = rewritten[0]
        good = [c for c in matching if c.seq < cp.seq]
        since = (
            f"after row {good[-1].seq} (the last row a checkpoint still vouches for, {good[-1].describe()})"
            if good
            else "from its early rows"
        )
        found.append(Finding("rewritten", f"audit.db was rewritten {since}: row {cp.seq} has hash "
                                          f"{short(row.hash)}, but {cp.describe()} says {short(cp.head)}. Rows up "
                                          f"to row {cp.seq} were edited, removed or inserted and the chain "
                                          f"recomputed with new hashes ({len(rewritten)} checkpoint(s) no longer "
                                          "match)"))  # fmt: skip
    if cut:
        top = cut[-1]
        found.append(Finding("end cut", f"the end of audit.db was cut: {top.describe()} vouches for rows up to "
                                        f"{top.seq}, but audit.db ends at row {end}: rows {end + 1} to {top.seq} "
                                        "are gone"))  # fmt: skip
    return found


def _recreated(cp: Checkpoint, first: AuditRecord | None) -> Finding:
    if first is None:
        now = "it has no rows"
    else:
        now = f"its row 1 has hash {short(first.hash)}, not {short(cp.origin)}"
        if first.ts > cp.time:
            now += f", and is dated {shown_time(first.ts)}, after that checkpoint was signed"
    return Finding("re-created", f"audit.db was deleted and re-created (or rebuilt from its first row): it is not "
                                 f"the log {cp.describe()} vouches for ({cp.seq} rows): {now}")  # fmt: skip


def _factors_now(where: Storage) -> tuple[str, list[tuple[str, str]]] | None:
    """(hash of the factor set in the state store, fingerprints by id) or None without state.db."""
    if not where.shared and not where.state_db.exists():
        return None
    with where.state() as store:
        return factors_now(store), sorted(open_factors(store).fingerprints().items())


def factor_findings(
    audit: AuditRecords, checkpoints: Sequence[Checkpoint], now: tuple[str, list[tuple[str, str]]] | None
) -> list[Finding]:
    """The factor set's hash may move only with a factor row (`factor_added`, `factor_removed`,
    `factors_recorded`) after the checkpoint before the move."""
    rows = sorted((r for event in FACTOR_EVENTS for r in audit.list(event=event, limit=None)), key=lambda r: r.id)
    ordered = sorted(checkpoints, key=lambda c: (c.time, c.seq))
    found: list[Finding] = []
    for before, after in pairwise(ordered):
        if before.factors != after.factors and not _explained(rows, before, after):
            found.append(Finding("factor outside the CLI", f"the enrolled factors changed between "
                                 f"{before.describe()} and {after.describe()} with no factor_added or factor_removed "
                                 "row after the first: a factor was added (or changed) in state.db outside "
                                 "agent-vault's commands"))  # fmt: skip
    last = ordered[-1]
    if now is not None and now[0] != last.factors and not any(r.id > last.seq for r in rows):
        recorded = recorded_factors(audit)
        strangers = [fid for fid, fp in now[1] if recorded is not None and fp not in recorded]
        named = f" (not in the audited factor set: {', '.join(strangers)})" if strangers else ""
        found.append(Finding("factor outside the CLI", f"the factors enrolled in state.db now{named} are not the set "
                             f"{last.describe()} attests, and no factor_added or factor_removed row follows it: a "
                             "factor was added (or changed) outside agent-vault's commands. It cannot approve; "
                             "remove it with `agent-vault factors remove ID` and find out who wrote it"))  # fmt: skip
    return found


def _explained(rows: Sequence[AuditRecord], before: Checkpoint, after: Checkpoint) -> bool:
    return any(r.id > before.seq and r.ts <= after.time + FACTOR_ROW_GRACE for r in rows)


def settings_findings(audit: AuditRecords, checkpoints: Sequence[Checkpoint], now: str) -> list[Finding]:
    """Notes (not failures): a settings.toml the checkpoints saw, or the one now, that was never accepted."""
    accepted = {str(r.detail.get(SETTINGS_DIGEST)) for r in audit.list(event="settings_accepted", limit=None)}
    found: list[Finding] = []
    seen: set[str] = set()
    for cp in sorted(checkpoints, key=lambda c: (c.time, c.seq)):
        if cp.settings not in accepted and cp.settings not in seen:
            seen.add(cp.settings)
            found.append(Finding("settings", f"settings.toml was in a version never accepted at {cp.describe()} "
                                             f"(digest {short(cp.settings)})", fatal=False))  # fmt: skip
    if now not in accepted and now not in seen:
        found.append(Finding("settings", "settings.toml as it is now was never accepted: see `agent-vault doctor`",
                             fatal=False))  # fmt: skip
    return found
