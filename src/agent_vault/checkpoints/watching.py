"""Following checkpoints as they arrive (`agent-vault audit watch`, meant to run on another machine):
entries not signed by the broker's key, rollbacks (the log went back), forks (two heads for one row, a
new first row, a checkpoint that does not extend the one before) and gaps (no heartbeat for longer than
expected). `audit verify --checkpoints` reads its sources through the same `Watcher`, without gaps."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from agent_vault.checkpoints.key import PublicKey
from agent_vault.checkpoints.record import Checkpoint, Entry, Heartbeat, shown_time
from agent_vault.checkpoints.sources import Arrival, Source
from agent_vault.domain.errors import AgentVaultError

#: seconds between heartbeats assumed until one says (the default `heartbeatMinutes`)
DEFAULT_EVERY = 300
#: slack on top of two heartbeat intervals before silence is a gap
GRACE = 60.0
#: seconds an entry may be signed before the newest seen (clock steps) before it counts as going back
CLOCK_SLACK = 120.0


@dataclass(frozen=True)
class Finding:
    """Something wrong (or, when not `fatal`, worth a look), in words that say what it means."""

    kind: str
    text: str
    fatal: bool = True

    def line(self) -> str:
        return f"{'ALERT' if self.fatal else 'note'} {self.kind}: {self.text}"


def short(digest: str) -> str:
    return digest[:16] + "…"


class Watcher:
    """What has arrived so far, and what is wrong with it. Feed arrivals in the order they were sent."""

    def __init__(self, key: PublicKey, *, max_gap: float | None = None, gaps: bool = True) -> None:
        """`max_gap`: seconds of silence that make a gap (default: two heartbeat intervals and a minute)."""
        self.key = key
        self._max_gap = max_gap
        self._gaps = gaps
        #: every distinct checkpoint signed by `key`, as it arrived
        self.checkpoints: list[Checkpoint] = []
        self.heartbeats = 0
        self.latest: Checkpoint | None = None
        #: the newest signed time seen, and whether the newest entry was a shutdown checkpoint
        self.last_time: datetime | None = None
        self.stopped = False
        self._seen: set[str] = set()
        self._heads: dict[int, Checkpoint] = {}
        self._origin: str | None = None
        self._every: int | None = None
        self._silence_reported: datetime | None = None

    @property
    def max_gap(self) -> float:
        if self._max_gap is not None:
            return self._max_gap
        return 2 * (self._every or DEFAULT_EVERY) + GRACE

    def feed(self, arrival: Arrival) -> list[Finding]:
        entry = arrival.entry
        if entry is None:
            return [Finding(arrival.kind, f"{arrival.where}: {arrival.problem}")]
        problem = entry.problem(self.key)
        if problem is not None:
            return [Finding("bad signature", f"{arrival.where}: {problem}; it was ignored")]
        if entry.digest in self._seen:
            return []  # the same entry again (a retried delivery, a second copy)
        self._seen.add(entry.digest)
        found = self._timing(entry, arrival.where)
        if isinstance(entry, Heartbeat):
            self.heartbeats += 1
            self._every = entry.every
            found += self._heartbeat(entry, arrival.where)
        else:
            found += self._checkpoint(entry, arrival.where)
        if self.last_time is None or entry.time >= self.last_time:
            self.last_time = entry.time
            self.stopped = isinstance(entry, Checkpoint) and entry.reason == "shutdown"
        return found

    def silence(self, now: datetime) -> list[Finding]:
        """A gap if nothing arrived for longer than expected (and the broker did not say it stopped)."""
        last = self.last_time
        if not self._gaps or last is None or self.stopped or self._silence_reported == last:
            return []
        quiet = (now - last).total_seconds()
        if quiet <= self.max_gap:
            return []
        self._silence_reported = last
        every = _span(self._every or DEFAULT_EVERY)
        return [Finding("gap", f"nothing has arrived since {shown_time(last)} ({_span(quiet)} ago; a heartbeat is "
                               f"due every {every}): the broker stopped without its shutdown checkpoint, lost its "
                               "way to this sink, or its heartbeats are held back")]  # fmt: skip

    # -- internals ---------------------------------------------------------------------------------

    def _timing(self, entry: Entry, where: str) -> list[Finding]:
        last = self.last_time
        if last is None:
            return []
        behind = (last - entry.time).total_seconds()
        if behind > CLOCK_SLACK:
            return [Finding("rollback", f"{where}: signed at {shown_time(entry.time)}, {_span(behind)} before an "
                                        "entry already seen: an old entry sent again, or the broker's clock went "
                                        "back")]  # fmt: skip
        gap = -behind
        if self._gaps and not self.stopped and gap > self.max_gap:
            return [Finding("gap", f"nothing arrived between {shown_time(last)} and {shown_time(entry.time)} "
                                   f"({_span(gap)}; a heartbeat is due every {_span(self._every or DEFAULT_EVERY)}): "
                                   "the broker was stopped without its shutdown checkpoint (killed, crashed, the "
                                   "machine slept), or entries were lost or held back")]  # fmt: skip
        return []

    def _heartbeat(self, beat: Heartbeat, where: str) -> list[Finding]:
        checkpoint, latest = beat.checkpoint, self.latest
        if checkpoint.digest not in self._seen:
            return self._checkpoint(checkpoint, where)
        if latest is not None and checkpoint.seq < latest.seq:
            self.latest = checkpoint
            return [Finding("rollback", f"{where}: the heartbeat of {shown_time(beat.time)} carries "
                                        f"{checkpoint.describe()}, older than {latest.describe()}: the broker went "
                                        "back to older state (a restored copy of its state dir)")]  # fmt: skip
        return []

    def _checkpoint(self, cp: Checkpoint, where: str) -> list[Finding]:
        self._seen.add(cp.digest)
        self.checkpoints.append(cp)
        found: list[Finding] = []
        origin = self._origin
        if cp.seq > 0 and origin is not None and cp.origin != origin:
            found.append(Finding("fork", f"{where}: {cp.describe()} is of a log whose row 1 differs from the one "
                                         f"earlier checkpoints vouch for ({short(cp.origin)}, not {short(origin)}): "
                                         "audit.db was re-created, or rebuilt from its first row, and the key "
                                         "signed it"))  # fmt: skip
        if cp.seq > 0:
            self._origin = cp.origin
        latest, other = self.latest, self._heads.get(cp.seq)
        if other is not None and other.head != cp.head:
            found.append(Finding("fork", f"{where}: two checkpoints of row {cp.seq} with different heads: "
                                         f"{other.describe()} says {short(other.head)}, {cp.describe()} says "
                                         f"{short(cp.head)}: the log was rewritten and the key signed the rewritten "
                                         "one"))  # fmt: skip
        elif latest is not None and cp.seq < latest.seq:
            found.append(Finding("rollback", f"{where}: {cp.describe()} comes after {latest.describe()}: the log "
                                             f"went back {latest.seq - cp.seq} row(s) (restored from an older copy, "
                                             "or its end cut)"))  # fmt: skip
        elif latest is not None and cp.seq > latest.seq:
            found += self._link(cp, latest, where)
        self._heads.setdefault(cp.seq, cp)
        if latest is None or cp.seq >= latest.seq or found:
            self.latest = cp  # after a finding, follow the new history (each break is reported once)
        return found

    def _link(self, cp: Checkpoint, latest: Checkpoint, where: str) -> list[Finding]:
        prev = cp.prev
        if prev == latest.link:
            return []
        if prev is None:
            return [Finding("fork", f"{where}: {cp.describe()} starts a new history (it has no previous "
                                    f"checkpoint) after {latest.describe()}: the broker lost its record of its "
                                    "checkpoints (the state dir was reset) or another broker signed it")]  # fmt: skip
        if prev.seq > latest.seq:
            return [Finding("gap", f"{where}: {cp.describe()} follows a checkpoint of row {prev.seq} that never "
                                   f"arrived here (the last one seen was of row {latest.seq}): lost by the sink, or "
                                   "held back")]  # fmt: skip
        known = self._heads.get(prev.seq)
        if known is not None and known.head == prev.head and prev.seq < latest.seq:
            return [Finding("fork", f"{where}: {cp.describe()} extends the checkpoint of row {prev.seq}, not the "
                                    f"later {latest.describe()}: the log went back to row {prev.seq} and grew "
                                    "again (a restored copy)")]  # fmt: skip
        return [Finding("fork", f"{where}: {cp.describe()} does not extend {latest.describe()}: it names as its "
                                f"previous checkpoint row {prev.seq} with head {short(prev.head)}, which this "
                                "history does not have")]  # fmt: skip


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_watch(
    source: Source,
    watcher: Watcher,
    *,
    once: bool,
    interval: float,
    say: Callable[[str], None],
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll `source` and print what is found. With `once`: one pass, exit 1 on any finding (or when
    nothing arrived), 0 otherwise. Without: until interrupted."""
    alarmed = False
    while True:
        try:
            arrivals = source.poll()
        except AgentVaultError as exc:
            if once:
                raise
            say(f"warning: {exc}")
            arrivals = []
        for arrival in arrivals:
            before = len(watcher.checkpoints)
            for finding in watcher.feed(arrival):
                say(finding.line())
                alarmed = alarmed or finding.fatal
            if not once and len(watcher.checkpoints) > before:
                cp = watcher.checkpoints[-1]
                say(f"checkpoint: row {cp.seq}, head {short(cp.head)}, signed {shown_time(cp.time)} ({cp.reason})")
        for finding in watcher.silence(now()):
            say(finding.line())
            alarmed = alarmed or finding.fatal
        if once:
            if not watcher.checkpoints:
                say(f"ALERT empty: no checkpoint signed by key {watcher.key.key_id} in {source.label}")
                return 1
            latest = watcher.latest
            assert latest is not None
            say(f"{len(watcher.checkpoints)} checkpoint(s) and {watcher.heartbeats} heartbeat(s) from {source.label}; "
                f"the latest: row {latest.seq}, signed {shown_time(latest.time)}"
                + (" (the broker then stopped cleanly)" if watcher.stopped else ""))  # fmt: skip
            return 1 if alarmed else 0
        sleep(interval)
