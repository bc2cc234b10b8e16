"""The registry of placeholders: which fake string stands for which secret, where it may go.

The broker fills it; the proxy reads consistent snapshots of it. A placeholder is worthless on
its own: the value is put in its place only on the wire to a host bound to the secret, in the
places the secret allows (headers unless configured otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from agent_vault.domain.errors import ConfigError
from agent_vault.domain.secret import SecretValue
from agent_vault.domain.untrusted import has_hidden, shown
from agent_vault.proxy.hosts import matches_any, normalize_host
from agent_vault.proxy.rules import ApproveRule
from agent_vault.proxy.search import Needles
from agent_vault.proxy.shapes import shaped_placeholder

#: values shorter than this would scrub ordinary words out of every response
MIN_VALUE = 6
MIN_PLACEHOLDER = 12


class Place(StrEnum):
    """Where in a request a placeholder was found, or may be replaced."""

    HEADERS = "headers"
    QUERY = "query"
    BODY = "body"
    PATH = "path"


@dataclass(frozen=True, eq=False)
class Placeholder:
    text: str
    secret_id: str
    value: SecretValue
    #: host names or `*.example.com` patterns the value may be sent to
    hosts: frozenset[str]
    places: frozenset[Place] = frozenset({Place.HEADERS})
    approve_each: tuple[ApproveRule, ...] = ()
    #: the value may also travel over plain http:// (off: a bound host is reached over TLS only)
    plain_http: bool = False

    def bound_to(self, host: str) -> bool:
        return matches_any(host, self.hosts)

    def rule_for(self, methods: frozenset[str], path: str) -> ApproveRule | None:
        return next((rule for rule in self.approve_each if rule.matches(methods, path)), None)


@dataclass(frozen=True)
class Snapshot:
    """The registry at one moment, with its search patterns compiled."""

    by_text: Mapping[bytes, Placeholder]
    #: placeholder text -> value (what a request may carry)
    finder: Needles | None
    #: value -> placeholder text (what a response must not carry)
    scrubber: Needles | None
    #: every scrub replacement keeps the length, so framing can stay as it is
    same_lengths: bool

    def scrub_text(self, text: str) -> str:
        if self.scrubber is None:
            return text
        return self.scrubber.replace(text.encode("utf-8", "surrogateescape"))[0].decode("utf-8", "surrogateescape")

    def secret_ids(self, values: Iterable[bytes]) -> set[str]:
        """The secrets whose values (as found by the scrubber) these are."""
        assert self.scrubber is not None
        return {self.by_text[self.scrubber.pairs[value]].secret_id for value in values}


class Placeholders:
    """Mutable registry (the broker's side); `snapshot()` is what a request uses."""

    def __init__(self) -> None:
        self._by_text: dict[str, Placeholder] = {}
        self._snapshot: Snapshot | None = None

    def add(
        self,
        secret_id: str,
        value: SecretValue,
        *,
        hosts: Iterable[str],
        places: Iterable[Place] = (Place.HEADERS,),
        approve_each: Iterable[str] = (),
        text: str | None = None,
        plain_http: bool = False,
    ) -> Placeholder:
        """Register a secret; `text` is generated in the value's shape unless given."""
        places = frozenset(Place(place) for place in places)
        _check_value(secret_id, value, places)
        placeholder = Placeholder(
            text=text if text is not None else shaped_placeholder(value),
            secret_id=secret_id,
            value=value,
            hosts=_check_hosts(secret_id, hosts),
            places=places,
            approve_each=tuple(ApproveRule.parse(rule) for rule in approve_each),
            plain_http=plain_http,
        )
        self._check_text(placeholder)
        self._by_text[placeholder.text] = placeholder
        self._snapshot = None
        return placeholder

    def remove(self, text: str) -> None:
        self._by_text.pop(text, None)
        self._snapshot = None

    def __iter__(self) -> Iterator[Placeholder]:
        return iter(tuple(self._by_text.values()))

    def __len__(self) -> int:
        return len(self._by_text)

    def bound_hosts(self) -> frozenset[str]:
        return frozenset(host for placeholder in self for host in placeholder.hosts)

    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            self._snapshot = _compile(tuple(self._by_text.values()))
        return self._snapshot

    def _check_text(self, placeholder: Placeholder) -> None:
        text, plain = placeholder.text, placeholder.value.reveal()
        if len(text) < MIN_PLACEHOLDER or has_hidden(text) or any(ch.isspace() for ch in text):
            raise ConfigError(
                f"placeholder for {shown(placeholder.secret_id)!r} must be at least {MIN_PLACEHOLDER} visible "
                "characters without spaces"
            )
        if text in plain or plain in text:
            raise ConfigError(f"placeholder for {shown(placeholder.secret_id)!r} overlaps its value")
        if text in self._by_text:
            raise ConfigError(f"placeholder for {shown(placeholder.secret_id)!r} is already registered")


def _check_value(secret_id: str, value: SecretValue, places: frozenset[Place]) -> None:
    if Place.HEADERS in places and any((ord(ch) < 32 and ch != "\t") or ord(ch) == 127 for ch in value.reveal()):
        raise ConfigError(
            f"the value of {shown(secret_id)!r} contains a line break or control character, "
            "which cannot go in an HTTP header"
        )
    if len(value) < MIN_VALUE:
        raise ConfigError(
            f"the value of {shown(secret_id)!r} is shorter than {MIN_VALUE} characters: too short to scrub "
            "from responses safely, so it cannot go through the proxy"
        )


def _check_hosts(secret_id: str, hosts: Iterable[str]) -> frozenset[str]:
    bound = frozenset(normalize_host(host) for host in hosts)
    if (
        not bound
        or "" in bound
        or any("*" in host[2:] or ("*" in host and not host.startswith("*.")) for host in bound)
    ):
        raise ConfigError(
            f"{shown(secret_id)!r} needs the hosts it may be sent to, as names or '*.example.com' patterns"
        )
    return bound


def _compile(placeholders: tuple[Placeholder, ...]) -> Snapshot:
    by_text = {p.text.encode(): p for p in placeholders}
    finder = Needles({text: p.value.reveal().encode() for text, p in by_text.items()}) if by_text else None
    scrub_pairs: dict[bytes, bytes] = {}
    for text, p in by_text.items():
        scrub_pairs.setdefault(p.value.reveal().encode(), text)
    scrubber = Needles(scrub_pairs) if scrub_pairs else None
    same = all(len(value) == len(text) for value, text in scrub_pairs.items())
    return Snapshot(MappingProxyType(by_text), finder, scrubber, same)
