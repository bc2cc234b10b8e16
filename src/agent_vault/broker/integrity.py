"""Tampering with the state files is seen: state.db and the audit log vouch for each other.

state.db says what may happen without asking (approved requests, open windows, enrolled factors);
anyone who can write that file could say anything. So:

- an approval or window is trusted only when the audit log has the `approved` row that made it,
  with the same vault, names and end (checked once per window, then cached: rows never change);
- the enrolled factors and `settings.toml` are hashed into the chain whenever agent-vault changes
  them, so a factor or setting put in by hand does not match the last recorded set;
- state.db keeps a checkpoint of the chain (row count and head hash), so a deleted, re-created or
  consistently rebuilt audit log no longer verifies.

What does not match is ignored, reported once as `tamper_detected`, and listed by `agent-vault
doctor`. This detects; it does not prevent: someone who edits both files consistently is caught
only by a record kept off the machine (webhooks). See docs/security.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tomllib
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent_vault.broker.recorder import Recorder
from agent_vault.domain.errors import AuditError
from agent_vault.domain.request import AccessRequest, Status
from agent_vault.home import StatePaths
from agent_vault.store.audit import AuditRecord
from agent_vault.store.engines import Storage, open_factors
from agent_vault.store.interface import AuditRecords, FactorRecords, StateRecords
from agent_vault.store.sqlite import Window

log = logging.getLogger("agent_vault.broker.integrity")

#: state.db meta key: the audit chain's row count and head hash, as last seen
CHECKPOINT = "audit_checkpoint"
#: audit detail keys
FACTOR_SET = "factor_set"
SETTINGS_DIGEST = "settings_digest"
SETTINGS_KEYS = "settings_keys"
FACTOR_EVENTS = ("factor_added", "factor_removed", "factors_recorded")
#: one approver's approval of a request that needs several (broker/approvals.py)
APPROVAL_COUNTED = "approval_counted"
#: an enrolment link for a named approver made by `agent-vault approvers invite` (cli/approvers.py)
APPROVER_INVITED = "approver_invited"
#: rows only a running broker writes, each the decision behind an approval or window (or a part of one)
DECISION_EVENTS = frozenset({"approved", "auto_approved", APPROVAL_COUNTED})
#: rows that leave the checkpoint where it is: the hot path of windowed reads, listings, deliveries
_HOT_EVENTS = frozenset({"auto_approved", "listed", "delivered", "command_finished"})
#: settings whose new value is safe to print (no credentials); everything else is named only
_SHOWN = ("tunnel.type", "tunnel.publicUrl", "tunnel.domain", "tunnel.command", "passkeys.rpId", "policy.maxTtlMinutes")
_LINK_KEYS = ("tunnel.publicUrl", "tunnel.domain")
_MAX_CACHED = 10_000

UNAUDITED_APPROVAL = (
    "request {id} is marked approved in state.db, but the audit log has no such decision: it was changed "
    "outside agent-vault, so nothing was released. Ask again; the user can see what happened with "
    "`agent-vault doctor`."
)


def approved_window_end(req: AccessRequest) -> datetime | None:
    """When the window an approval opens ends (None for no window): the `window_end` of its audit row."""
    if req.ttl_minutes <= 0 or req.decided_at is None:
        return None
    return req.decided_at + timedelta(minutes=req.ttl_minutes)


def next_factor_set(
    factors: FactorRecords,
    recorded: Collection[str] | None,
    added: str | None = None,
    removed: str | Collection[str] | None = None,
) -> list[str]:
    """The audited factor set after one change made through agent-vault: the last recorded set (or, if
    none was ever recorded, the factors as they are) plus `added`, minus `removed` (a factor id, or the
    ids of every factor of an approver who was removed). Built from the record, not from state.db, so a
    factor slipped into state.db is not taken in by a later change."""
    current = factors.fingerprints()
    fingerprints = set(current.values() if recorded is None else recorded)
    for gone in [removed] if isinstance(removed, str) else removed or ():
        fingerprints.discard(current.get(gone, ""))
    if added is not None:
        fingerprints.add(current[added])
    return sorted(fingerprints)


def invite_link(token_key: str) -> str:
    """What an `approver_invited` row records of its enrolment link: a digest of the token's hash, so the
    enrolment page can tell a link `approvers invite` made from one put into the state store by hand."""
    return hashlib.sha256(f"invite\x00{token_key}".encode()).hexdigest()


def recorded_factors(audit: AuditRecords) -> Collection[str] | None:
    """The fingerprints of the factor set the audit log last recorded (None: never recorded)."""
    row = audit.latest_with(FACTOR_SET, FACTOR_EVENTS)
    return None if row is None else frozenset(row.detail[FACTOR_SET])


def recorded_factors_at(paths: StatePaths) -> Collection[str] | None:
    """`recorded_factors` for commands outside the broker (never creates audit.db)."""
    where = _storage(paths)
    if not where.has_audit():
        return None
    with where.audit() as audit:
        return recorded_factors(audit)


def _storage(paths: StatePaths) -> Storage:
    from agent_vault.configuration.settings import storage  # the user's settings say where

    return storage(paths)


class Integrity:
    """The broker's side: vouches for windows and approvals, records baselines, reports tampering."""

    def __init__(self, store: StateRecords, recorder: Recorder, *, shared: bool = False) -> None:
        """`recorder`: the broker's audit writer (tamper_detected, the baselines); its log is read here.
        `shared`: other broker processes append to the same log (replicas on PostgreSQL), so a decision row
        this one did not write is not a sign of tampering there; the database's roles guard that log."""
        self._shared = shared
        self._store = store
        self._recorder = recorder
        self._audit = audit = recorder.audit
        self._factors = open_factors(store)
        self._windows: dict[str, bool] = {}
        self._reported: set[str] = set()
        #: what was found since this broker started, for a warning on the approval page (latest few)
        self.warnings: list[str] = []
        # Before anything is appended: a checkpoint moved past a re-created log would hide it.
        self.audit_problem = checkpoint_problem(store, audit)
        #: the first row this broker appended, and the decision rows it appended since: while it runs it
        #: writes every decision, so a decision row after its first that it did not write was appended
        #: to audit.db from outside (by someone who can compute the chain, e.g. with our own code)
        self._first_own: int | None = None
        self._own_decisions: set[int] = set()
        #: the `approved` rows this broker wrote, by request, until the value's delivery checks one (`own_approval`;
        #: the oldest dropped past _MAX_CACHED, then read from the log as before)
        self._own_approvals: dict[str, AuditRecord] = {}
        audit.subscribe(self._note_own)
        audit.subscribe(self._checkpoint)

    # -- windows and approvals --------------------------------------------------------------------

    def window(self, window: Window) -> bool:
        """Whether the audit log holds the approval that opened `window` (cached per window)."""
        verdict = self._windows.get(window.id)
        if verdict is None:
            row = self._audit.approval(window.request_id)
            verdict = window_audited(window, row) and not self._appended_outside(row)
            if len(self._windows) >= _MAX_CACHED:
                self._windows.pop(next(iter(self._windows)))
            self._windows[window.id] = verdict
            if not verdict:
                what = f"{window.vault}/{window.name or '*'}"
                self.report(window.id, f"window {window.id} ({what}) has no audited approval; it was ignored")
        return verdict

    def approval(self, req: AccessRequest, *, in_flight: bool = False) -> bool | None:
        """Whether the audit log holds the decision that approved `req`; None while this broker is still
        writing it (`in_flight`); False (reported) when state.db was edited to approve it."""
        row = self._audit.approval(req.id)
        if request_audited(req, row) and not self._appended_outside(row):
            return True
        if in_flight:
            return None
        self.report(req.id, f"request {req.id} was marked approved without an audited decision; nothing released")
        return False

    def own_approval(self, req: AccessRequest) -> bool:
        """Whether this broker itself wrote the row that approved `req`, and it matches the request: answered
        from memory (no query, no trip to a thread), once per request. False says nothing: ask `approval`."""
        row = self._own_approvals.pop(req.id, None)
        return row is not None and request_audited(req, row)

    def _note_own(self, record: AuditRecord) -> None:
        if self._first_own is None:
            self._first_own = record.id
        if record.event in DECISION_EVENTS and record.request_id is not None:  # not every windowed read
            self._own_decisions.add(record.id)
            if record.event == "approved" and record.request_id not in self._own_approvals:
                if len(self._own_approvals) >= _MAX_CACHED:  # approvals never collected (writes, gone agents)
                    self._own_approvals.pop(next(iter(self._own_approvals)))
                self._own_approvals[record.request_id] = record

    def _appended_outside(self, row: AuditRecord | None) -> bool:
        """A decision row written after this broker started, but not by it."""
        if self._shared:
            return False  # other processes append decisions too; the database's roles guard that log
        first = self._first_own
        return row is not None and first is not None and row.id > first and row.id not in self._own_decisions

    def report(self, object_id: str, why: str) -> None:
        """One `tamper_detected` row per object and broker run (never per read)."""
        if object_id in self._reported:
            return
        self._reported.add(object_id)
        self._warn(why)
        try:
            self._recorder.write("tamper_detected", {"object": object_id, "why": why})
        except AuditError:
            log.exception("could not record the tampering")

    # -- factors, settings, the chain -------------------------------------------------------------

    def recorded_factors(self) -> Collection[str] | None:
        return recorded_factors(self._audit)

    def approvers_of(self, request_id: str) -> frozenset[str]:
        """The names of the approvers whose approval of `request_id` the audit log holds:
        an approval in the state store without its `approval_counted` row (put there by hand, or whose row
        failed) counts for nothing, nor does a row appended from outside while this broker runs."""
        rows = self._audit.list(request_id=request_id, event=APPROVAL_COUNTED, limit=None)
        return frozenset(str(r.detail.get("approver", "")) for r in rows if not self._appended_outside(r))

    def invite_recorded(self, approver: str, token_key: str) -> bool:
        """Whether `agent-vault approvers invite` audited the enrolment link `token_key` for `approver`."""
        link = invite_link(token_key)
        rows = self._audit.list(event=APPROVER_INVITED, limit=200)
        return any(r.detail.get("link") == link and r.detail.get("approver") == approver for r in rows)

    def on_start(self, settings: Path) -> list[str]:
        """At broker start: report a broken checkpoint, then compare factors and settings with the audit
        (taking them as the user's the first time). Returns what was found, for the log."""
        found = []
        if self.audit_problem is not None:
            found.append(self.audit_problem)
            self.report(CHECKPOINT, self.audit_problem)
            self.audit_problem = None
        recorded = self.recorded_factors()
        current = self._factors.fingerprints()
        if recorded is None:
            self._append("factors_recorded", {FACTOR_SET: sorted(current.values()), "via": "first broker start"})
        else:
            for fid in sorted(fid for fid, fp in current.items() if fp not in recorded):
                found.append(f"factor {fid} is not in the audited factor set: it cannot approve")
                self.report(f"factor:{fid}", found[-1])
        change = settings_change(settings, self._audit)
        if change is None:
            self._append("settings_accepted", settings_accepted(settings, via="first start"))
        elif change.digest != change.accepted_digest:
            found.append(change.describe())
            self._warn(found[-1])
            last = self._audit.latest_with(SETTINGS_DIGEST, ("settings_changed",))
            if last is None or last.id < change.accepted_id or last.detail[SETTINGS_DIGEST] != change.digest:
                detail = {SETTINGS_DIGEST: change.digest, "changed": change.keys, "why": found[-1]}
                self._append("settings_changed", detail)  # once per new version of the file
        return found

    def _warn(self, why: str) -> None:
        log.warning("tampering detected: %s", why)
        self.warnings = [*self.warnings[-4:], why]

    def _append(self, event: str, detail: dict[str, Any]) -> None:
        self._recorder.write(event, detail)

    def _checkpoint(self, record: AuditRecord) -> None:
        if record.event in _HOT_EVENTS or self.audit_problem is not None:
            return  # a broken checkpoint stays until a broker start has reported it
        try:
            self._store.set_meta(CHECKPOINT, _mark(record))
        except Exception:  # either engine's error; a listener must not fail the append it heard of
            log.exception("could not record the audit checkpoint in the state store")


# -- matching rows --------------------------------------------------------------------------------


def window_audited(window: Window, row: AuditRecord | None) -> bool:
    """The `approved` row matches the window: vault, name (or whole vault), end, config and action."""
    if row is None or row.event != "approved" or row.vault != window.vault or row.window_end != window.ends_at:
        return False
    if (window.name is None) != (row.scope == "vault") or (window.name is not None and window.name not in row.names):
        return False
    config, action = row.detail.get("config"), row.detail.get("action")
    return (config is None or config == window.workspace) and (action is None or action == window.action)


def request_audited(req: AccessRequest, row: AuditRecord | None) -> bool:
    """The `approved` / `auto_approved` row matches the request: vault, operation, names, window end."""
    if row is None or row.vault != req.vault or row.operation != req.operation.value:
        return False
    if tuple(row.names) not in (req.names, req.all_names):
        return False
    return row.event != "approved" or row.window_end == approved_window_end(req)


# -- the checkpoint of the chain ------------------------------------------------------------------


def _mark(record: AuditRecord) -> str:
    return json.dumps({"rows": record.id, "head": record.hash, "at": record.ts.isoformat()})


def checkpoint_problem(store: StateRecords, audit: AuditRecords | None) -> str | None:
    """What is wrong with the audit log compared with the checkpoint in state.db (None: nothing).
    `audit` None means audit.db does not exist."""
    raw = store.get_meta(CHECKPOINT)
    if raw is None:
        return None
    try:
        mark = json.loads(raw)
        rows, head, at = int(mark["rows"]), str(mark["head"]), str(mark["at"])
    except (ValueError, KeyError, TypeError):
        return "the audit checkpoint in state.db is unreadable: state.db was edited outside agent-vault"
    fix = (
        "Fix: restore audit.db from a backup, compare it with what your webhooks sent, and treat approvals "
        "since then as unverified (docs/audit.md)."
    )
    row = audit.row(rows) if audit is not None else None
    if row is None:
        return (
            f"audit.db is missing or was re-created: state.db recorded at least {rows} rows, chain head "
            f"{head[:16]}... (at {at}). {fix}"
        )
    if row.hash != head:
        return (
            f"audit.db was rewritten: row {rows} has hash {row.hash[:16]}..., but state.db recorded chain head "
            f"{head[:16]}... at {at} (a rebuilt chain). {fix}"
        )
    return None


@contextmanager
def _opened(paths: StatePaths) -> Iterator[tuple[StateRecords, AuditRecords | None]]:
    """The state store and (if it exists: never create audit.db here) the audit log."""
    where = _storage(paths)
    store = where.open_state()
    audit = where.open_audit() if where.has_audit() else None
    try:
        yield store, audit
    finally:
        store.close()
        if audit is not None:
            audit.close()


def audit_problem(paths: StatePaths) -> str | None:
    """For `audit verify`: the checkpoint compared with the log, without creating either file."""
    if not paths.state_db.exists() and not _storage(paths).shared:
        return None
    with _opened(paths) as (store, audit):
        return checkpoint_problem(store, audit)


# -- settings.toml --------------------------------------------------------------------------------


def settings_snapshot(path: Path) -> tuple[str, list[list[str]]]:
    """(digest of the file, [[dotted key, digest of its value], ...]): digests only, never values."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return hashlib.sha256(b"(no settings.toml)").hexdigest(), []
    keys: list[list[str]] = []
    with suppress(tomllib.TOMLDecodeError, UnicodeDecodeError):
        for key, value in _leaves(tomllib.loads(data.decode()), ""):
            keys.append([key, hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()[:16]])
    return hashlib.sha256(data).hexdigest(), keys


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list) and any(isinstance(item, dict) for item in node):
        for index, item in enumerate(node):
            yield from _leaves(item, f"{prefix}[{index}]")
    else:
        yield prefix, node


class SettingsChange:
    """settings.toml now, against the version last accepted in the audit log."""

    def __init__(self, path: Path, accepted: AuditRecord) -> None:
        self.path = path
        self.digest, current = settings_snapshot(path)
        self.accepted_digest = str(accepted.detail[SETTINGS_DIGEST])
        self.accepted_id = accepted.id
        self.since = accepted.ts
        before = {k: d for k, d in accepted.detail.get(SETTINGS_KEYS, [])}
        now = dict((k, d) for k, d in current)
        self.keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        self._added = now.keys() - before.keys()
        self._removed = before.keys() - now.keys()

    def describe(self) -> str:
        parts = [self._describe_key(key) for key in self.keys[:6]]
        if len(self.keys) > 6:
            parts.append(f"and {len(self.keys) - 6} more")
        what = "; ".join(parts) or "the file's content"
        return (
            f"{self.path.name} changed since {self.since.isoformat(timespec='seconds')} outside agent-vault: {what}. "
            "If you made this change: `agent-vault settings accept`; if not, restore the file."
        )

    def _describe_key(self, key: str) -> str:
        if key in self._removed:
            return f"{key} was removed"
        if key in _SHOWN:
            value = _value_at(self.path, key)
            if key in _LINK_KEYS:
                return f"{key} is now {value} (approval links now go to {value})"
            return f"{key} is now {value}"
        return f"{key} was added" if key in self._added else f"{key} changed"


def _value_at(path: Path, key: str) -> str:
    with suppress(OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        for leaf, value in _leaves(tomllib.loads(path.read_text(encoding="utf-8")), ""):
            if leaf == key:
                return str(value)
    return "?"


def settings_accepted(path: Path, *, via: str) -> dict[str, Any]:
    """The detail of a `settings_accepted` row for settings.toml as it is now (digests only), taken `via` a
    proof, the first start, or agent-vault's own edit."""
    digest, keys = settings_snapshot(path)
    return {SETTINGS_DIGEST: digest, SETTINGS_KEYS: keys, "via": via}


def foreign_settings_edit(path: Path, edited: Path, accepted: AuditRecord | None) -> SettingsChange | None:
    """The change to settings.toml (`path`) that nobody accepted, when agent-vault is about to replace it with
    its own edit (`edited`); None when there is none: the file is what the log last `accepted` (or none was
    ever recorded), or the edit itself is (an earlier run accepted it). Agent-vault takes its own edit
    without proof, never anyone else's."""
    if accepted is None or SETTINGS_DIGEST not in accepted.detail:
        return None
    change = SettingsChange(path, accepted)
    if change.digest == change.accepted_digest or settings_snapshot(edited)[0] == change.accepted_digest:
        return None
    return change


def settings_change(path: Path, audit: AuditRecords) -> SettingsChange | None:
    """None when no settings were ever recorded; otherwise the comparison (maybe without a change)."""
    accepted = audit.latest_with(SETTINGS_DIGEST, ("settings_accepted",))
    return None if accepted is None else SettingsChange(path, accepted)


def accept_settings(paths: StatePaths, prove: Callable[[FactorRecords], str]) -> str:
    """`agent-vault settings accept`: with proof from a factor (`prove`, on the user's terminal), record
    settings.toml as the user's."""
    from agent_vault.configuration.settings import load_settings, settings_path

    path = settings_path(paths)
    load_settings(paths)  # refuse a file the broker would refuse (syntax, keys, permissions)
    with _opened(paths) as (store, audit):
        if audit is None:
            raise AuditError(f"no audit log at {paths.audit_db}: start the broker once (`agent-vault serve`)")
        change = settings_change(path, audit)
        if change is not None and change.digest == change.accepted_digest:
            return f"{path.name} is unchanged since {change.since.isoformat(timespec='seconds')}; nothing to accept"
        print(change.describe() if change is not None else f"{path.name} was never recorded")
        factors = open_factors(store)
        via = prove(factors) if factors.all() else "no factor enrolled"
        if checkpoint_problem(store, audit) is None:  # never move a checkpoint past a broken log
            audit.subscribe(lambda row: store.set_meta(CHECKPOINT, _mark(row)))
        detail = settings_accepted(path, via=via)
        Recorder(audit).write("settings_accepted", detail)
    settings = len(detail[SETTINGS_KEYS])
    return f"accepted {path} as it is now ({settings} settings); `agent-vault doctor` no longer flags it"


# -- what doctor shows ----------------------------------------------------------------------------


def inspect(paths: StatePaths, settings: Path) -> list[tuple[str, str]]:
    """(level, text) for each sign of tampering: the checkpoint, windows and approvals without an
    audited decision, factors outside the audited set, changed settings, and what brokers reported."""
    if not paths.state_db.exists() and not _storage(paths).shared:
        return []
    with _opened(paths) as (store, audit):
        found = []
        problem = checkpoint_problem(store, audit)
        if problem is not None:
            found.append(("FAIL", problem))
        if audit is None:
            return found
        found += _state_findings(store, audit)
        change = settings_change(settings, audit)
        if change is not None and change.digest != change.accepted_digest:
            found.append(("FAIL", change.describe()))
        for row in audit.list(event="tamper_detected", limit=5):
            found.append(("warn", f"a broker saw tampering at {row.ts.isoformat(timespec='seconds')}: "
                                  f"{row.detail.get('why')}"))  # fmt: skip
    if not found:
        found.append(("ok", "state.db agrees with the audit log: windows, approvals, factors and settings"))
    return found


def _state_findings(store: StateRecords, audit: AuditRecords) -> list[tuple[str, str]]:
    found = []
    for w in store.active_windows(datetime.now(UTC)):
        if not window_audited(w, audit.approval(w.request_id)):
            found.append(("FAIL", f"window {w.id} ({w.vault}/{w.name or '*'}) has no audited approval: it was "
                                  "put into state.db outside agent-vault and lets nothing through. Fix: "
                                  f"`agent-vault grants revoke {w.id}`"))  # fmt: skip
    for req in store.requests_with_status(Status.APPROVED):
        if not request_audited(req, audit.approval(req.id)):
            found.append(("FAIL", f"request {req.id} is marked approved in state.db without an audited decision "
                                  "(edited outside agent-vault); nothing will be released for it"))  # fmt: skip
    latest = audit.latest_with(FACTOR_SET, FACTOR_EVENTS)
    if latest is not None:
        recorded = set(latest.detail[FACTOR_SET])
        for fid, fp in sorted(open_factors(store).fingerprints().items()):
            if fp not in recorded:
                found.append(("FAIL", f"factor {fid} is not in the factor set the audit log recorded "
                                      f"({latest.ts.isoformat(timespec='seconds')}): it was added or changed "
                                      "outside agent-vault and cannot approve. Fix: remove it with "
                                      f"`agent-vault factors remove {fid}`"))  # fmt: skip
    return found
