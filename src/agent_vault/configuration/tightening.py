"""What a project's config may still say when a system broker serves it: name the system's vaults it
uses and tighten them (a shorter `ttl`, `only` some secrets, not `writable`, `delivery = "inject"`, and
for who approves: more `require`d approvers, fewer `approvers`, `ownerMayApprove = false`), never widen or
repoint them. Anything else in the project's vault sections (a `type`, a `file`, a
token) is ignored and reported, because the store a vault reads is the system config's alone.

The front door sends the project config's `vaults` section as it is written (it runs as the user,
so the broker never opens a path an agent names); it is agent-editable, which is why it can only
take access away.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_vault.configuration.project import Config, VaultConfig
from agent_vault.domain.approval import MAX_REQUIRE, is_approver_name
from agent_vault.domain.errors import ConfigError

#: the keys a project may set on a system vault; every other key is ignored (and said)
KEYS = ("ttl", "only", "writable", "delivery", "approvers", "require", "ownerMayApprove")


@dataclass(frozen=True)
class VaultTightening:
    ttl: float | None = None
    #: the only secrets of the vault this project sees (None: all of them)
    only: frozenset[str] | None = None
    writable: bool | None = None
    delivery: str | None = None
    #: who approves: only these of the system's approvers, at least this many of them, the owner barred
    approvers: tuple[str, ...] | None = None
    require: int | None = None
    owner_may_approve: bool | None = None


@dataclass(frozen=True)
class Tightening:
    vaults: Mapping[str, VaultTightening]
    #: "vaults.dev.file" and the like: keys the project set that a system broker ignores
    ignored: tuple[str, ...] = field(default=())

    @property
    def digest(self) -> str:
        """Tells tightenings apart (a workspace, and its windows, per project tightening)."""
        data = {
            name: [
                t.ttl, sorted(t.only) if t.only is not None else None, t.writable, t.delivery,
                sorted(t.approvers) if t.approvers is not None else None, t.require, t.owner_may_approve,
            ]
            for name, t in sorted(self.vaults.items())
        }  # fmt: skip
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def apply(self, config: Config) -> Config:
        """`config` (the system's) with only the vaults named here, each tightened; an unknown vault is an error."""
        unknown = [name for name in self.vaults if name not in config.vaults]
        if unknown:
            known = ", ".join(sorted(config.vaults))
            raise ConfigError(
                f"the project config names vault {unknown[0]!r}, which the system broker does not have "
                f"(its vaults: {known}). Fix: name one of those, or remove the vault from the project config."
            )
        vaults = {name: _tightened(name, config.vaults[name], t) for name, t in self.vaults.items()}
        return config.model_copy(update={"vaults": vaults})

    def only(self, vault: str) -> frozenset[str] | None:
        t = self.vaults.get(vault)
        return t.only if t is not None else None


def parse(raw: Any) -> Tightening:
    """The project config's `vaults` section (as the front door read it) as a tightening."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("the project config's `vaults` must name at least one of the system's vaults")
    vaults: dict[str, VaultTightening] = {}
    ignored: list[str] = []
    for name, section in raw.items():
        if not isinstance(section, Mapping):
            raise ConfigError(f"vaults.{name}: expected a table of keys, got {type(section).__name__}")
        ignored.extend(f"vaults.{name}.{key}" for key in section if key not in KEYS)
        vaults[str(name)] = VaultTightening(
            ttl=_ttl(name, section.get("ttl")),
            only=_only(name, section.get("only")),
            writable=_flag(name, "writable", section.get("writable")),
            delivery=_delivery(name, section.get("delivery")),
            approvers=_approvers(name, section.get("approvers")),
            require=_require(name, section.get("require")),
            owner_may_approve=_flag(name, "ownerMayApprove", section.get("ownerMayApprove")),
        )
    return Tightening(vaults, tuple(ignored))


def _tightened(name: str, vault: VaultConfig, t: VaultTightening) -> VaultConfig:
    update: dict[str, Any] = {}
    if t.ttl is not None:
        update["ttl"] = min(vault.ttl, t.ttl)
    if t.writable is False:
        update["writable"] = False
    if t.delivery == "inject":
        update["delivery"] = "inject"
    rule = vault.approval_rule().stricter(t.approvers, t.require, t.owner_may_approve)
    problem = rule.problem()
    if problem is not None:
        raise ConfigError(
            f"vaults.{name}: with the project's `approvers`/`require` on top of the system's ({_rule_text(vault)}), "
            f"{problem}. Fix: name approvers the system's vault allows, or require fewer."
        )
    update.update(approvers=rule.approvers, require=rule.require, owner_may_approve=rule.owner_may_approve)
    return vault.model_copy(update=update)


def _rule_text(vault: VaultConfig) -> str:
    who = ", ".join(vault.approvers) if vault.approvers is not None else "everyone enrolled"
    return f"approvers: {who}; require {vault.require}"


def _ttl(vault: object, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"vaults.{vault}.ttl: must be a number of minutes, 0 or more")
    return float(value)


def _only(vault: object, value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'vaults.{vault}.only: must be a list of secret names, e.g. ["API_KEY"]')
    return frozenset(value)


def _flag(vault: object, key: str, value: object) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ConfigError(f"vaults.{vault}.{key}: must be true or false")
    return value


def _approvers(vault: object, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(is_approver_name(v) for v in value):
        raise ConfigError(f'vaults.{vault}.approvers: must be a non-empty list of approver names, e.g. ["alice"]')
    return tuple(value)


def _require(vault: object, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REQUIRE:
        raise ConfigError(f"vaults.{vault}.require: must be a whole number of approvers, 1 to {MAX_REQUIRE}")
    return value


def _delivery(vault: object, value: object) -> str | None:
    if value is None:
        return None
    if value not in ("value", "inject"):
        raise ConfigError(f'vaults.{vault}.delivery: must be "value" or "inject"')
    return str(value)
