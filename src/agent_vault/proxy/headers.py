"""Which headers cross the proxy: hop-by-hop ones stay on their own side of it."""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[bytes, bytes]]

#: headers about one connection, never forwarded (h11 writes the framing itself)
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)


def get(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key.lower() == name), None)


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    return {
        token.strip().lower()
        for key, value in headers
        if key.lower() in (b"connection", b"proxy-connection")
        for token in value.split(b",")
    }


def is_websocket_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    headers = list(headers)
    upgrade = (get(headers, b"upgrade") or b"").strip().lower()
    return upgrade == b"websocket" and b"upgrade" in connection_tokens(headers)


def end_to_end(headers: Iterable[tuple[bytes, bytes]], *, drop: Iterable[bytes] = ()) -> Headers:
    """`headers` without hop-by-hop ones, those named in Connection, and `drop`."""
    headers = list(headers)
    gone = HOP_BY_HOP | connection_tokens(headers) | {name.lower() for name in drop}
    return [(key.lower(), value) for key, value in headers if key.lower() not in gone]


def replaced(headers: Headers, name: bytes, value: bytes | None) -> Headers:
    """`headers` with every `name` removed, and `name: value` added when value is not None."""
    kept = [(key, v) for key, v in headers if key != name]
    return [*kept, (name, value)] if value is not None else kept
