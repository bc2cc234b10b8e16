"""Placeholders in an outgoing request: where they are, whether they may be there, and the swap.

Looked at: every header value (and the user:password inside `Authorization: Basic`), the path,
the query, and the body (as sent: a compressed request body is not looked into).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from agent_vault.proxy.placeholders import Place, Placeholder, Snapshot
from agent_vault.proxy.search import Needles

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Found:
    placeholder: Placeholder
    place: Place


@dataclass(frozen=True)
class Misplaced:
    found: Found
    #: host_not_bound | place_not_allowed | plain_http
    reason: str


@dataclass(frozen=True)
class Outgoing:
    target: bytes
    headers: Headers
    body: bytes


def find(snapshot: Snapshot, request: Outgoing) -> list[Found]:
    """Every (placeholder, place) pair in the request, each once, in a stable order."""
    if snapshot.finder is None:
        return []
    path, query = _split_target(request.target)
    texts: dict[tuple[bytes, Place], None] = {}
    for place, data in _places(path, query, request):
        for text in snapshot.finder.found(data):
            texts[(text, place)] = None
    return [Found(snapshot.by_text[text], place) for text, place in texts]


def misplaced(found: list[Found], host: str, *, tls: bool) -> list[Misplaced]:
    """The uses that must not happen: wrong host, place not allowed, or a value over plain HTTP."""
    wrong = []
    for use in found:
        if not use.placeholder.bound_to(host):
            wrong.append(Misplaced(use, "host_not_bound"))
        elif use.place not in use.placeholder.places:
            wrong.append(Misplaced(use, "place_not_allowed"))
        elif not tls and not use.placeholder.plain_http:
            wrong.append(Misplaced(use, "plain_http"))
    return wrong


def inject(snapshot: Snapshot, request: Outgoing) -> Outgoing:
    """The request with every placeholder replaced by its value (call only once all are allowed)."""
    finder = snapshot.finder
    if finder is None:
        return request
    path, query = _split_target(request.target)
    target = _swap(finder, path) + (b"?" + _swap(finder, query) if query is not None else b"")
    headers = [(name, _swap_header(finder, name, value)) for name, value in request.headers]
    return Outgoing(target, headers, _swap(finder, request.body))


def _split_target(target: bytes) -> tuple[bytes, bytes | None]:
    path, sep, query = target.partition(b"?")
    return path, (query if sep else None)


def _places(path: bytes, query: bytes | None, request: Outgoing) -> list[tuple[Place, bytes]]:
    places = [(Place.PATH, path), (Place.BODY, request.body)]
    if query is not None:
        places.append((Place.QUERY, query))
    for name, value in request.headers:
        places.append((Place.HEADERS, value))
        decoded = _basic_credentials(name, value)
        if decoded is not None:
            places.append((Place.HEADERS, decoded))
    return places


def _basic_credentials(name: bytes, value: bytes) -> bytes | None:
    if name.lower() != b"authorization" or value[:6].lower() != b"basic ":
        return None
    try:
        return base64.b64decode(value[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _swap(finder: Needles, data: bytes) -> bytes:
    return finder.replace(data)[0] if data else data


def _swap_header(finder: Needles, name: bytes, value: bytes) -> bytes:
    decoded = _basic_credentials(name, value)
    if decoded is not None and finder.found(decoded):
        return value[:6] + base64.b64encode(_swap(finder, decoded))
    return _swap(finder, value)
