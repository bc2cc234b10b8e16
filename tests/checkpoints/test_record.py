"""The signed bytes and JSON form of a checkpoint and a heartbeat, and the key that signs them."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent_vault.checkpoints.key import PublicKey, SigningKey, key_path, load_key, load_or_create_key, public_key_arg
from agent_vault.checkpoints.record import (
    Checkpoint,
    Heartbeat,
    Link,
    RecordError,
    parse_line,
    sign_checkpoint,
    sign_heartbeat,
)
from agent_vault.domain.errors import AuditError, InvalidRequest
from agent_vault.home import StatePaths

T = datetime(2026, 4, 10, 14, 32, 1, 250000, tzinfo=UTC)
KEY = SigningKey.generate()


def sample(**changes: Any) -> Checkpoint:
    fields: dict[str, Any] = dict(seq=120, head="1" * 64, origin="2" * 64, prev=Link(100, "3" * 64), time=T,
                                     factors="4" * 64, settings="5" * 64, reason="rows")  # fmt: skip
    fields.update(changes)
    return sign_checkpoint(KEY, **fields)


def test_the_signed_bytes_are_fixed_lines() -> None:
    cp = sample()
    assert cp.signed_bytes().decode() == (
        "agent-vault checkpoint v1\n"
        "seq: 120\n"
        f"head: {'1' * 64}\n"
        f"origin: {'2' * 64}\n"
        f"prev: 100 {'3' * 64}\n"
        "time: 2026-04-10T14:32:01.250000Z\n"
        f"factors: {'4' * 64}\n"
        f"settings: {'5' * 64}\n"
        "reason: rows\n"
        f"key: {KEY.public.key_id}\n"
    )
    first = sample(prev=None, seq=1)
    assert b"prev: none\n" in first.signed_bytes()


def test_the_json_form_round_trips_and_verifies() -> None:
    cp = sample()
    data = json.loads(cp.line())
    assert list(data) == ["format", "version", "seq", "head", "origin", "prev", "time", "factors", "settings",
                          "reason", "key", "signature"]  # fmt: skip
    assert data["format"] == "agent-vault/checkpoint" and data["version"] == 1
    assert data["prev"] == {"seq": 100, "head": "3" * 64} and data["time"] == "2026-04-10T14:32:01.250000Z"
    again = parse_line(cp.line())
    assert again == cp and again.problem(KEY.public) is None


def test_a_heartbeat_binds_the_checkpoint_it_carries() -> None:
    cp = sample()
    beat = sign_heartbeat(KEY, cp, time=T, every=300)
    assert beat.signed_bytes().decode() == (
        f"agent-vault heartbeat v1\ncheckpoint: {cp.digest}\n"
        f"time: 2026-04-10T14:32:01.250000Z\nevery: 300\nkey: {KEY.public.key_id}\n"
    )
    again = parse_line(beat.line())
    assert isinstance(again, Heartbeat) and again == beat and again.problem(KEY.public) is None
    swapped = Heartbeat(sample(seq=121), beat.time, beat.every, beat.key_id, beat.signature)
    assert swapped.problem(KEY.public) == "heartbeat: the signature does not match: forged, or changed after signing"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.update(version=2), "version 2 is not one this agent-vault reads"),
        (lambda d: d.update(extra=1), "unknown keys ['extra']"),
        (lambda d: d.pop("origin"), "missing keys ['origin']"),
        (lambda d: d.update(seq=True), "seq must be a whole number"),
        (lambda d: d.update(head="XYZ"), "head must be 64 lower-case hex digits"),
        (lambda d: d.update(time="2026-04-10 14:32"), "`time` must look like"),
        (lambda d: d.update(reason="because"), "`reason` must be one of"),
        (lambda d: d.update(signature="c2hvcnQ="), "64-byte Ed25519 signature"),
        (lambda d: d.update(format="other"), "`format` is neither"),
    ],
)
def test_malformed_entries_are_refused_with_the_reason(change: object, problem: str) -> None:
    data = json.loads(sample().line())
    change(data)  # type: ignore[operator]
    with pytest.raises(RecordError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_line(json.dumps(data))


# -- the key ------------------------------------------------------------------------------------------


def test_the_key_is_made_once_private_and_shared_by_racers(home: StatePaths) -> None:
    made: list[tuple[SigningKey, bool]] = []
    threads = [threading.Thread(target=lambda: made.append(load_or_create_key(home))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(created for _, created in made) == 1
    assert len({key.public.text for key, _ in made}) == 1
    assert oct(key_path(home).stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in home.root.iterdir() if p.name.endswith(".tmp")] == []
    assert repr(made[0][0]) == f"SigningKey(key id {made[0][0].public.key_id})"


def test_a_key_file_others_can_read_or_a_symlink_is_refused(home: StatePaths, tmp_path: Path) -> None:
    load_or_create_key(home)
    key_path(home).chmod(0o640)
    with pytest.raises(AuditError, match="not a private file of yours"):
        load_key(home)
    real = tmp_path / "elsewhere.pem"
    key_path(home).rename(real)
    real.chmod(0o600)
    os.symlink(real, key_path(home))
    with pytest.raises(AuditError, match="a symlink is refused") as caught:
        load_key(home)
    assert "PRIVATE" not in str(caught.value)


def test_a_public_key_is_given_as_text_or_a_file(tmp_path: Path) -> None:
    text = KEY.public.text
    assert text.startswith("ed25519:") and PublicKey.parse(text) == KEY.public
    assert public_key_arg(text) == KEY.public
    file = tmp_path / "pub"
    file.write_text(f"# the broker on my laptop\n{text}\n")
    assert public_key_arg(str(file)) == KEY.public
    for bad, problem in (("ed25519:AAAA", "has 3 bytes"), ("ed25519:!!", "not valid base64"),
                         (str(tmp_path / "none"), "not a readable file")):  # fmt: skip
        with pytest.raises(InvalidRequest, match=problem):
            public_key_arg(bad)
    private = tmp_path / "private.pem"
    private.write_bytes(KEY.pem())
    with pytest.raises(InvalidRequest) as caught:
        public_key_arg(str(private))
    assert "exactly one line" in str(caught.value) and "PRIVATE" not in str(caught.value)
