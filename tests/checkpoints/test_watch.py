"""`audit watch`'s judgement of what arrives: gaps, rollbacks, forks and bad signatures, each caught, and
a healthy stream (checkpoints, heartbeats, a clean shutdown and restart) caught as nothing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent_vault.checkpoints.key import SigningKey
from agent_vault.checkpoints.record import Checkpoint, Entry, Link, sign_checkpoint, sign_heartbeat
from agent_vault.checkpoints.sources import Arrival, FileSource
from agent_vault.checkpoints.watching import Finding, Watcher, run_watch

T0 = datetime(2026, 4, 10, 14, 0, tzinfo=UTC)
FACTORS = "a" * 64
SETTINGS = "b" * 64


def head(seq: int, log: str = "real") -> str:
    return hashlib.sha256(f"{log}:{seq}".encode()).hexdigest()


@dataclass
class Broker:
    """Signs what a broker would, on a clock the test moves."""

    key: SigningKey = field(default_factory=SigningKey.generate)
    now: datetime = T0
    latest: Checkpoint | None = None
    sent: list[Entry] = field(default_factory=list)

    def checkpoint(self, seq: int, *, log: str = "real", first: str = "real", reason: str = "rows",
                   after: float = 60, prev: Link | str | None = "latest") -> Checkpoint:  # fmt: skip
        self.now += timedelta(seconds=after)
        link = (self.latest.link if self.latest else None) if prev == "latest" else prev
        assert not isinstance(link, str)
        cp = sign_checkpoint(self.key, seq=seq, head=head(seq, log), origin=head(1, first), prev=link, time=self.now,
                             factors=FACTORS, settings=SETTINGS, reason=reason)  # fmt: skip
        self.latest = cp
        self.sent.append(cp)
        return cp

    def heartbeat(self, after: float = 300, checkpoint: Checkpoint | None = None) -> None:
        self.now += timedelta(seconds=after)
        target = checkpoint or self.latest
        assert target is not None
        self.sent.append(sign_heartbeat(self.key, target, time=self.now, every=300))


def watch(entries: list[Entry], broker: Broker, **kw: float) -> list[Finding]:
    watcher = Watcher(broker.key.public, **kw)  # type: ignore[arg-type]
    found: list[Finding] = []
    for number, entry in enumerate(entries, start=1):
        found += watcher.feed(Arrival(f"sink:{number}", entry))
    return found


def healthy() -> Broker:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.heartbeat()
    broker.checkpoint(105)
    broker.heartbeat()
    broker.heartbeat()
    broker.checkpoint(205)
    broker.checkpoint(210, reason="shutdown")
    broker.checkpoint(212, reason="start", after=3 * 86400)  # a long quiet after a clean shutdown is fine
    broker.heartbeat()
    return broker


def test_a_healthy_stream_is_quiet() -> None:
    broker = healthy()
    assert watch(broker.sent, broker) == []
    watcher = Watcher(broker.key.public)
    for entry in broker.sent:
        watcher.feed(Arrival("sink", entry))
    assert watcher.silence(broker.now + timedelta(minutes=5)) == []
    assert len(watcher.checkpoints) == 5 and watcher.heartbeats == 4


def test_the_same_entry_twice_is_not_a_finding() -> None:
    broker = healthy()
    assert watch([*broker.sent, *broker.sent[-3:]], broker) == []


# -- gaps ---------------------------------------------------------------------------------------------


def test_a_gap_between_entries() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.heartbeat()
    broker.heartbeat(after=3600)  # killed for an hour, then back: no shutdown checkpoint
    (finding,) = watch(broker.sent, broker)
    assert finding.kind == "gap" and finding.fatal
    assert "nothing arrived between 2026-04-10 14:06:00 UTC and 2026-04-10 15:06:00 UTC (60 min" in finding.text
    assert "a heartbeat is due every 5 min" in finding.text


def test_silence_now_is_a_gap_once() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.heartbeat()
    watcher = Watcher(broker.key.public)
    for entry in broker.sent:
        watcher.feed(Arrival("sink", entry))
    assert watcher.silence(broker.now + timedelta(minutes=10)) == []  # within two heartbeats and a minute
    (finding,) = watcher.silence(broker.now + timedelta(minutes=12))
    assert finding.kind == "gap" and "nothing has arrived since 2026-04-10 14:06:00 UTC (12 min ago" in finding.text
    assert watcher.silence(broker.now + timedelta(minutes=30)) == []  # said once per silence


def test_the_gap_limit_can_be_set() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.heartbeat(after=100)
    assert [f.kind for f in watch(broker.sent, broker, max_gap=60)] == ["gap"]


def test_a_checkpoint_that_never_arrived_is_a_gap() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    lost = broker.checkpoint(105)
    broker.checkpoint(205)
    (finding,) = watch([e for e in broker.sent if e is not lost], broker)
    assert finding.kind == "gap"
    assert "follows a checkpoint of row 105 that never arrived here (the last one seen was of row 5)" in finding.text


# -- rollbacks ----------------------------------------------------------------------------------------


def test_a_rollback_the_sequence_goes_back() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.checkpoint(105)
    broker.checkpoint(205, reason="shutdown")
    broker.latest = broker.sent[0]  # type: ignore[assignment]  # restored from an older copy of the state dir
    broker.checkpoint(40, reason="start")
    (finding,) = watch(broker.sent, broker)
    assert finding.kind == "rollback"
    assert "the start-up checkpoint of row 40 signed at" in finding.text
    assert "comes after the shutdown checkpoint of row 205" in finding.text and "went back 165 row(s)" in finding.text


def test_a_rollback_a_heartbeat_carries_an_older_checkpoint() -> None:
    broker = Broker()
    first = broker.checkpoint(5, reason="start")
    broker.checkpoint(105)
    broker.heartbeat(checkpoint=first)
    (finding,) = watch(broker.sent, broker)
    assert finding.kind == "rollback" and "carries the start-up checkpoint of row 5" in finding.text


def test_a_rollback_an_old_entry_signed_again_in_the_past() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.heartbeat()
    broker.now -= timedelta(hours=2)  # the broker's clock set back
    broker.heartbeat()
    (finding,) = watch(broker.sent, broker)
    assert finding.kind == "rollback" and "before an entry already seen" in finding.text


# -- forks --------------------------------------------------------------------------------------------


def test_a_fork_two_heads_for_one_row() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.checkpoint(105)
    broker.latest = broker.sent[0]  # type: ignore[assignment]
    broker.checkpoint(105, log="rewritten")
    findings = watch(broker.sent, broker)
    assert [f.kind for f in findings] == ["fork"]
    assert "two checkpoints of row 105 with different heads" in findings[0].text


def test_a_fork_a_head_that_does_not_extend_the_one_before() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.checkpoint(105)
    broker.checkpoint(205, prev=Link(105, head(105, "rewritten")))
    (finding,) = watch(broker.sent, broker)
    assert finding.kind == "fork"
    assert "does not extend the checkpoint of row 105" in finding.text


def test_a_fork_grown_again_from_an_older_checkpoint() -> None:
    broker = Broker()
    first = broker.checkpoint(5, reason="start")
    broker.checkpoint(105)
    broker.checkpoint(205, prev=first.link, log="restored")
    findings = watch(broker.sent, broker)
    assert "fork" in [f.kind for f in findings]
    assert any("extends the checkpoint of row 5, not the later" in f.text for f in findings)


def test_a_fork_a_new_first_row() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.checkpoint(105, log="re-created", first="re-created")
    findings = watch(broker.sent, broker)
    assert [f.kind for f in findings] == ["fork"]
    assert "is of a log whose row 1 differs" in findings[0].text


def test_a_fork_a_new_history() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.checkpoint(105, prev=None, reason="start")
    (finding,) = watch(broker.sent, broker)
    assert finding.kind == "fork" and "starts a new history" in finding.text


# -- signatures ---------------------------------------------------------------------------------------


def test_bad_signatures_are_reported_and_ignored() -> None:
    broker = Broker()
    real = broker.checkpoint(5, reason="start")
    other = Broker()
    forged = other.checkpoint(900)
    altered = replace(real, seq=905)
    findings = watch([real, forged, altered], broker)
    assert [f.kind for f in findings] == ["bad signature", "bad signature"]
    assert f"signed by key {other.key.public.key_id}, not by the key given" in findings[0].text
    assert "the signature does not match: forged, or changed after signing" in findings[1].text
    watcher = Watcher(broker.key.public)
    for entry in (real, forged, altered):
        watcher.feed(Arrival("sink", entry))
    assert watcher.checkpoints == [real] and watcher.latest == real  # neither moved anything


def test_a_heartbeat_wrapping_a_forged_checkpoint_is_refused() -> None:
    broker = Broker()
    real = broker.checkpoint(5, reason="start")
    forged = replace(real, seq=6)
    beat = sign_heartbeat(broker.key, forged, time=broker.now, every=300)
    (finding,) = watch([real, beat], broker)
    assert finding.kind == "bad signature" and "the checkpoint in the heartbeat:" in finding.text


def test_unreadable_lines_are_reported() -> None:
    watcher = Watcher(Broker().key.public)
    (finding,) = watcher.feed(Arrival("sink:3", None, "not JSON"))
    assert finding.line() == "ALERT unreadable: sink:3: not JSON"


# -- run_watch ----------------------------------------------------------------------------------------


class Listing:
    def __init__(self, batches: list[list[Entry]]) -> None:
        self.label = "test sink"
        self._batches = batches

    def poll(self) -> list[Arrival]:
        batch = self._batches.pop(0) if self._batches else []
        return [Arrival("test sink", entry) for entry in batch]


def test_once_exits_non_zero_on_a_finding_and_zero_without() -> None:
    broker = healthy()
    said: list[str] = []
    now = broker.now + timedelta(minutes=1)
    code = run_watch(Listing([broker.sent]), Watcher(broker.key.public), once=True, interval=0, say=said.append,
                     now=lambda: now)  # fmt: skip
    assert code == 0 and said == [
        "5 checkpoint(s) and 4 heartbeat(s) from test sink; the latest: row 212, signed 2026-04-13 14:19:00 UTC"
    ]
    said.clear()
    later = broker.now + timedelta(hours=1)
    code = run_watch(Listing([broker.sent]), Watcher(broker.key.public), once=True, interval=0, say=said.append,
                     now=lambda: later)  # fmt: skip
    assert code == 1 and said[0].startswith("ALERT gap: nothing has arrived since")


def test_once_on_an_empty_sink_is_a_finding() -> None:
    broker = Broker()
    said: list[str] = []
    assert run_watch(Listing([]), Watcher(broker.key.public), once=True, interval=0, say=said.append) == 1
    assert said == [f"ALERT empty: no checkpoint signed by key {broker.key.public.key_id} in test sink"]


def test_following_prints_checkpoints_and_findings_as_they_come() -> None:
    broker = Broker()
    broker.checkpoint(5, reason="start")
    broker.checkpoint(105)
    broker.checkpoint(50)
    batches = [[broker.sent[0]], [broker.sent[1]], [broker.sent[2]]]
    said: list[str] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_watch(Listing(batches), Watcher(broker.key.public), once=False, interval=7, say=said.append,
                  now=lambda: broker.now, sleep=sleep)  # fmt: skip
    assert said[0].startswith("checkpoint: row 5, head ") and said[0].endswith("(start)")
    assert said[1].startswith("checkpoint: row 105, head ")
    assert said[2].startswith("ALERT rollback: test sink: the checkpoint of row 50")
    assert sleeps == [7, 7, 7]


def test_a_sink_file_that_shrinks_is_reported(tmp_path: Path) -> None:
    broker = healthy()
    sink = tmp_path / "cp.jsonl"
    sink.write_text("".join(entry.line() + "\n" for entry in broker.sent))
    source = FileSource(sink, follow=True)
    watcher = Watcher(broker.key.public)
    assert [f for a in source.poll() for f in watcher.feed(a)] == []
    sink.write_text("".join(entry.line() + "\n" for entry in broker.sent[:3]))  # lines removed
    arrivals = source.poll()
    assert arrivals[0].problem is not None and "the file shrank from" in arrivals[0].problem
    (finding,) = [f for a in arrivals for f in watcher.feed(a)]
    assert finding.kind == "rollback" and "checkpoints were removed from it" in finding.text
