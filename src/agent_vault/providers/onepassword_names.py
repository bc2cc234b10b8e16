"""How 1Password items get the names `list_secrets` shows, and how a name finds its item again.

Only ids and titles are held here, never item contents. The rules are in docs/providers.md.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent_vault.domain.errors import SecretNotFound
from agent_vault.domain.grammar import is_valid_name
from agent_vault.domain.untrusted import shown
from agent_vault.providers.onepassword_sdk import plain

PREFIX = "op://"
#: fields tried, in order, when a name does not say which field it means
DEFAULT_FIELD_IDS = ("password", "credential")
#: what 1Password accepts in one segment of an op:// reference
_REF_SEGMENT = re.compile(r"[A-Za-z0-9_.-](?:[A-Za-z0-9_. -]*[A-Za-z0-9_.-])?")


@dataclass(frozen=True)
class Vault:
    id: str
    title: str


@dataclass(frozen=True)
class Entry:
    """One active item: where it is and what it is called."""

    vault_id: str
    item_id: str
    title: str


@dataclass(frozen=True)
class Reference:
    """A full op:// reference whose vault segment was checked and replaced by the vault's id."""

    text: str


@dataclass
class Index:
    """What the exposed vaults hold, and the one name each item is listed under."""

    #: the agent-vault vault these belong to, for messages
    owner: str
    vaults: tuple[Vault, ...]
    entries: tuple[Entry, ...]
    by_name: dict[str, Entry] = field(default_factory=dict)
    names: dict[Entry, str] = field(default_factory=dict)
    built: float = 0.0

    def lookup(self, name: str) -> Entry | Reference | None:
        """What `name` means: a listed name, an item id, a title or an op:// reference; None if nothing."""
        entry = self.by_name.get(name)
        if entry is not None:
            return entry
        if name.startswith(PREFIX):
            return self._reference(name)
        by_id = [e for e in self.entries if e.item_id == name]
        if by_id:
            return by_id[0]
        return self.one([e for e in self.entries if e.title == name], name)

    def _reference(self, name: str) -> Entry | Reference | None:
        path, question, query = name[len(PREFIX) :].partition("?")
        segments = path.split("/")
        if not 2 <= len(segments) <= 4 or not all(segments):
            raise SecretNotFound(
                f"{shown(name, 200)!r} is not a 1Password reference vault {self.owner!r} understands. "
                "Use op://<vault>/<item>/<field> (or op://<vault>/<item> for its password), "
                "or a name from list_secrets."
            )
        vault = self.vault(segments[0], name)
        if vault is None:
            return None
        entry = self.item(vault, segments[1], name)
        if len(segments) == 2:
            return entry
        item = entry.item_id if entry is not None else segments[1]
        return Reference(f"{PREFIX}{vault.id}/{item}/{'/'.join(segments[2:])}{question}{query}")

    def vault(self, segment: str, name: str) -> Vault | None:
        """The exposed vault with this id, or with this title in any case."""
        exact = [v for v in self.vaults if v.id == segment]
        if exact:
            return exact[0]
        matches = [v for v in self.vaults if v.title.casefold() == segment.casefold()]
        if len(matches) > 1:
            raise SecretNotFound(
                f"{shown(name, 200)!r}: more than one 1Password vault of vault {self.owner!r} is called "
                f"{segment[:80]!r}. Fix: use the vault's ID in the reference, or a name from list_secrets."
            )
        return matches[0] if matches else None

    def item(self, vault: Vault, segment: str, name: str) -> Entry | None:
        """The item of `vault` with this id, or this title (exactly, else in any case)."""
        items = [e for e in self.entries if e.vault_id == vault.id]
        by_id = [e for e in items if e.item_id == segment]
        if by_id:
            return by_id[0]
        exact = [e for e in items if e.title == segment]
        if exact:
            return self.one(exact, name)
        return self.one([e for e in items if e.title.casefold() == segment.casefold()], name)

    def one(self, matches: list[Entry], name: str) -> Entry | None:
        """The only match, None for none; several are an error listing their names."""
        if len(matches) > 1:
            names = ", ".join(repr(self.names[e]) for e in matches[:5])
            raise SecretNotFound(
                f"{shown(name, 200)!r} matches {len(matches)} items in vault {self.owner!r}: {names}. "
                "Ask for one of those names."
            )
        return matches[0] if matches else None


def build_index(owner: str, vaults: list[Vault], entries: list[Entry], write_vault: str | None) -> Index:
    """Give every item one listed name: its title when that is unambiguous, else `op://<vault>/<item>`.

    A title shared by several items belongs to the one in the write vault, if exactly one is there,
    so what an agent writes under a name it can read back under that name.
    """
    index = Index(owner, tuple(vaults), tuple(entries), built=time.monotonic())
    owners: dict[str, list[Entry]] = {}
    for entry in entries:
        owners.setdefault(entry.title, []).append(entry)
    vault_labels = _labels((v.id, v.title) for v in vaults)
    item_labels = {v.id: _labels((e.item_id, e.title) for e in entries if e.vault_id == v.id) for v in vaults}
    for entry in entries:
        name = entry.title if _owns_title(entry, owners[entry.title], write_vault) else None
        if name is None or not is_valid_name(name) or name.lower().startswith(PREFIX) or name in index.by_name:
            name = f"{PREFIX}{vault_labels[entry.vault_id]}/{item_labels[entry.vault_id][entry.item_id]}"
        if not is_valid_name(name) or name in index.by_name:
            name = f"{PREFIX}{entry.vault_id}/{entry.item_id}"
        index.by_name[name] = entry
        index.names[entry] = name
    return index


def _owns_title(entry: Entry, same_title: list[Entry], write_vault: str | None) -> bool:
    if len(same_title) == 1:
        return True
    in_write_vault = [e for e in same_title if e.vault_id == write_vault]
    return len(in_write_vault) == 1 and in_write_vault[0] == entry


def _labels(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """id -> title where the title fits a reference and no other title equals it (in any case); else id."""
    pairs = list(pairs)
    counts: dict[str, int] = {}
    for _, title in pairs:
        counts[title.casefold()] = counts.get(title.casefold(), 0) + 1
    return {
        id_: title
        if _REF_SEGMENT.fullmatch(title) and title not in (".", "..") and counts[title.casefold()] == 1
        else id_
        for id_, title in pairs
    }


def default_field(item: Any) -> Any:
    """The field a name without a field path means: password, then credential, then any concealed one."""
    fields = list(item.fields)
    for wanted in DEFAULT_FIELD_IDS:
        for candidate in fields:
            if candidate.id == wanted:
                return candidate
    return next((f for f in fields if plain(f.field_type) == "Concealed"), None)


def find_vault(vaults: list[Vault], wanted: str) -> Vault | None:
    """A `vaultIds` entry's vault: by id, else by its exact title if only one has it."""
    exact = [v for v in vaults if v.id == wanted]
    if exact:
        return exact[0]
    titled = [v for v in vaults if v.title == wanted]
    return titled[0] if len(titled) == 1 else None


def by_title(vault: Vault) -> tuple[str, str]:
    return (vault.title.casefold(), vault.id)
