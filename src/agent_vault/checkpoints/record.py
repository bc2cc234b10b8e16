"""A checkpoint and a heartbeat: what is signed (canonical bytes), and their versioned JSON form.

A checkpoint says, signed: "at `time`, the audit log's row `seq` had hash `head`, its row 1 had hash
`origin`, the enrolled factors hashed to `factors` and settings.toml to `settings`; the checkpoint
before this one was (`prev`)". A heartbeat says, signed: "at `time` the latest checkpoint was this
one; expect the next heartbeat within `every` seconds".

The signed bytes are UTF-8 text, one `name: value` line each, in this fixed order, each ending in a
line feed (docs/checkpoints.md shows them); every value is a decimal number, lower-case hex, a fixed
UTC time or a word, so no value can contain a separator:

    agent-vault checkpoint v1
    seq: 120
    head: <64 hex>
    origin: <64 hex>
    prev: 100 <64 hex>        (or `prev: none`)
    time: 2026-04-10T14:32:01.000000Z
    factors: <64 hex>
    settings: <64 hex>
    reason: rows
    key: <16 hex>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from agent_vault.checkpoints.key import PublicKey, SigningKey

VERSION = 1
CHECKPOINT_FORMAT = "agent-vault/checkpoint"
HEARTBEAT_FORMAT = "agent-vault/heartbeat"
#: why a checkpoint was made
REASONS = ("start", "rows", "timer", "shutdown", "requested")
#: how a reason reads before "checkpoint" in a message
_KINDS = {"start": "start-up ", "timer": "timed ", "shutdown": "shutdown "}
#: the log before its first row (store.audit.GENESIS_HASH)
EMPTY = "0" * 64

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_MAX_SEQ = 2**63 - 1


class RecordError(ValueError):
    """A checkpoint or heartbeat that cannot be read (malformed, another version)."""


@dataclass(frozen=True)
class Link:
    """The checkpoint before: its row and head."""

    seq: int
    head: str


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head: str
    origin: str
    prev: Link | None
    time: datetime
    factors: str
    settings: str
    reason: str
    key_id: str
    signature: bytes = field(default=b"", repr=False)

    def signed_bytes(self) -> bytes:
        prev = "none" if self.prev is None else f"{self.prev.seq} {self.prev.head}"
        lines = (
            f"agent-vault checkpoint v{VERSION}",
            f"seq: {self.seq}",
            f"head: {self.head}",
            f"origin: {self.origin}",
            f"prev: {prev}",
            f"time: {stamp(self.time)}",
            f"factors: {self.factors}",
            f"settings: {self.settings}",
            f"reason: {self.reason}",
            f"key: {self.key_id}",
        )
        return "".join(line + "\n" for line in lines).encode()

    @property
    def digest(self) -> str:
        """Names this signed checkpoint (sha256 of its signed bytes and signature)."""
        return hashlib.sha256(self.signed_bytes() + self.signature).hexdigest()

    @property
    def link(self) -> Link:
        return Link(self.seq, self.head)

    def problem(self, key: PublicKey) -> str | None:
        """Why `key` does not vouch for this checkpoint (None: it does)."""
        return _signature_problem(key, self.key_id, self.signature, self.signed_bytes())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": VERSION,
            "seq": self.seq,
            "head": self.head,
            "origin": self.origin,
            "prev": None if self.prev is None else {"seq": self.prev.seq, "head": self.prev.head},
            "time": stamp(self.time),
            "factors": self.factors,
            "settings": self.settings,
            "reason": self.reason,
            "key": self.key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }

    def line(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    def describe(self) -> str:
        return f"the {_KINDS.get(self.reason, '')}checkpoint of row {self.seq} signed at {shown_time(self.time)}"


@dataclass(frozen=True)
class Heartbeat:
    checkpoint: Checkpoint
    time: datetime
    #: seconds until the next heartbeat is due
    every: int
    key_id: str
    signature: bytes = field(default=b"", repr=False)

    def signed_bytes(self) -> bytes:
        lines = (
            f"agent-vault heartbeat v{VERSION}",
            f"checkpoint: {self.checkpoint.digest}",
            f"time: {stamp(self.time)}",
            f"every: {self.every}",
            f"key: {self.key_id}",
        )
        return "".join(line + "\n" for line in lines).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.signed_bytes() + self.signature).hexdigest()

    def problem(self, key: PublicKey) -> str | None:
        own = _signature_problem(key, self.key_id, self.signature, self.signed_bytes())
        if own is not None:
            return f"heartbeat: {own}"
        inner = self.checkpoint.problem(key)
        return None if inner is None else f"the checkpoint in the heartbeat: {inner}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": HEARTBEAT_FORMAT,
            "version": VERSION,
            "time": stamp(self.time),
            "every": self.every,
            "key": self.key_id,
            "checkpoint": self.checkpoint.to_json(),
            "signature": base64.b64encode(self.signature).decode(),
        }

    def line(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))


Entry = Checkpoint | Heartbeat


def sign_checkpoint(
    key: SigningKey,
    *,
    seq: int,
    head: str,
    origin: str,
    prev: Link | None,
    time: datetime,
    factors: str,
    settings: str,
    reason: str,
) -> Checkpoint:
    unsigned = Checkpoint(seq, head, origin, prev, time, factors, settings, reason, key.public.key_id)
    _check_checkpoint(unsigned)
    return replace(unsigned, signature=key.sign(unsigned.signed_bytes()))


def sign_heartbeat(key: SigningKey, checkpoint: Checkpoint, *, time: datetime, every: int) -> Heartbeat:
    unsigned = Heartbeat(checkpoint, time, every, key.public.key_id)
    return Heartbeat(checkpoint, time, every, key.public.key_id, key.sign(unsigned.signed_bytes()))


# -- times ----------------------------------------------------------------------------------------


def stamp(moment: datetime) -> str:
    """Fixed-width UTC time: 2026-04-10T14:32:01.000000Z."""
    if moment.tzinfo is None:
        raise ValueError("checkpoint times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def shown_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_time(text: object, where: str) -> datetime:
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        raise RecordError(f"{where}: `time` must look like 2026-04-10T14:32:01.000000Z")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise RecordError(f"{where}: `time` is not a real date") from None


# -- reading --------------------------------------------------------------------------------------


def parse_line(text: str) -> Entry:
    """One JSON line (or document) as a checkpoint or heartbeat; RecordError says what is wrong."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise RecordError("not JSON") from None
    return parse_entry(data)


def parse_entry(data: object) -> Entry:
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    kind = data.get("format")
    if kind == CHECKPOINT_FORMAT:
        return _parse_checkpoint(data, "checkpoint")
    if kind == HEARTBEAT_FORMAT:
        return _parse_heartbeat(data)
    raise RecordError(f"`format` is neither {CHECKPOINT_FORMAT!r} nor {HEARTBEAT_FORMAT!r}")


_CHECKPOINT_KEYS = {"format", "version", "seq", "head", "origin", "prev", "time", "factors", "settings", "reason",
                    "key", "signature"}  # fmt: skip
_HEARTBEAT_KEYS = {"format", "version", "time", "every", "key", "checkpoint", "signature"}


def _parse_checkpoint(data: dict[str, Any], where: str) -> Checkpoint:
    _check_keys(data, _CHECKPOINT_KEYS, where)
    prev_data = data["prev"]
    prev = None
    if prev_data is not None:
        if not isinstance(prev_data, dict) or set(prev_data) != {"seq", "head"}:
            raise RecordError(f"{where}: `prev` must be null or {{seq, head}}")
        prev = Link(_seq(prev_data["seq"], f"{where}: prev.seq"), _hex(prev_data["head"], f"{where}: prev.head"))
    checkpoint = Checkpoint(
        seq=_seq(data["seq"], f"{where}: seq"),
        head=_hex(data["head"], f"{where}: head"),
        origin=_hex(data["origin"], f"{where}: origin"),
        prev=prev,
        time=_parse_time(data["time"], where),
        factors=_hex(data["factors"], f"{where}: factors"),
        settings=_hex(data["settings"], f"{where}: settings"),
        reason=_reason(data["reason"], where),
        key_id=_key_id(data["key"], where),
        signature=_signature(data["signature"], where),
    )
    _check_checkpoint(checkpoint, RecordError)
    return checkpoint


def _parse_heartbeat(data: dict[str, Any]) -> Heartbeat:
    _check_keys(data, _HEARTBEAT_KEYS, "heartbeat")
    every = data["every"]
    if isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= 10**7:
        raise RecordError("heartbeat: `every` must be a whole number of seconds")
    inner = data["checkpoint"]
    if not isinstance(inner, dict) or inner.get("format") != CHECKPOINT_FORMAT:
        raise RecordError("heartbeat: `checkpoint` must be a checkpoint")
    return Heartbeat(
        checkpoint=_parse_checkpoint(inner, "heartbeat's checkpoint"),
        time=_parse_time(data["time"], "heartbeat"),
        every=every,
        key_id=_key_id(data["key"], "heartbeat"),
        signature=_signature(data["signature"], "heartbeat"),
    )


def _check_keys(data: dict[str, Any], keys: set[str], where: str) -> None:
    if data.get("version") != VERSION:
        raise RecordError(f"{where}: version {data.get('version')!r} is not one this agent-vault reads ({VERSION})")
    if set(data) != keys:
        missing, extra = sorted(keys - set(data)), sorted(set(data) - keys)
        raise RecordError(f"{where}: missing keys {missing}, unknown keys {extra}")


def _check_checkpoint(cp: Checkpoint, error: type[ValueError] = ValueError) -> None:
    if cp.reason not in REASONS:
        raise error(f"unknown checkpoint reason {cp.reason!r}")
    if cp.seq == 0 and (cp.head != EMPTY or cp.origin != EMPTY):
        raise error("a checkpoint of an empty log has the empty head and origin")
    for value in (cp.head, cp.origin, cp.factors, cp.settings):
        if not _HEX64.fullmatch(value):
            raise error("hashes in a checkpoint are 64 lower-case hex digits")


def _seq(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SEQ:
        raise RecordError(f"{where} must be a whole number of 0 or more")
    return value


def _hex(value: object, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise RecordError(f"{where} must be 64 lower-case hex digits")
    return value


def _key_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
        raise RecordError(f"{where}: `key` must be 16 lower-case hex digits")
    return value


def _reason(value: object, where: str) -> str:
    if value not in REASONS:
        raise RecordError(f"{where}: `reason` must be one of {', '.join(REASONS)}")
    return str(value)


def _signature(value: object, where: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except binascii.Error:
        raw = b""
    if len(raw) != 64:
        raise RecordError(f"{where}: `signature` must be a 64-byte Ed25519 signature in base64")
    return raw


def _signature_problem(key: PublicKey, key_id: str, signature: bytes, data: bytes) -> str | None:
    if key_id != key.key_id:
        return f"signed by key {key_id}, not by the key given ({key.key_id})"
    if not key.verify(signature, data):
        return "the signature does not match: forged, or changed after signing"
    return None
