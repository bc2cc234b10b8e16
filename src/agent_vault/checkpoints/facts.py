"""What a checkpoint attests, read from the state files: the audit chain's head and first row, a hash
of the enrolled factor set (state.db) and a hash of settings.toml."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent_vault.broker.integrity import settings_snapshot
from agent_vault.checkpoints.record import EMPTY
from agent_vault.store.engines import open_factors
from agent_vault.store.interface import AuditRecords, StateRecords


@dataclass(frozen=True)
class Facts:
    seq: int
    head: str
    origin: str
    factors: str
    settings: str


def factor_set_hash(fingerprints: Iterable[str]) -> str:
    """sha256 of the sorted factor fingerprints (`FactorRecords.fingerprints`: never a secret)."""
    return hashlib.sha256(json.dumps(sorted(fingerprints), separators=(",", ":")).encode()).hexdigest()


def factors_now(store: StateRecords) -> str:
    return factor_set_hash(open_factors(store).fingerprints().values())


def settings_now(path: Path) -> str:
    """sha256 of settings.toml's bytes: the digest `settings_accepted` rows record."""
    return settings_snapshot(path)[0]


def chain_now(audit: AuditRecords) -> tuple[int, str, str]:
    """(row, head hash, row 1's hash) of the log as it is; an empty log is row 0."""
    newest = audit.list(limit=1)
    if not newest:
        return 0, EMPTY, EMPTY
    first = audit.row(1)
    return newest[0].id, newest[0].hash, first.hash if first is not None else EMPTY


def read_facts(audit: AuditRecords, store: StateRecords, settings_file: Path) -> Facts:
    seq, head, origin = chain_now(audit)
    return Facts(seq, head, origin, factors_now(store), settings_now(settings_file))
