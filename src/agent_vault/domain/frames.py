"""The private socket's framed protocol: the same API calls as HTTP/1.1 on the broker's Unix socket, each a
length-prefixed frame instead of an HTTP message, so neither side parses HTTP on the hot path (issue 18).

A connection opens with `PREAMBLE` from the front door, which the broker echoes (a broker that only speaks
HTTP answers 400 instead: the front door then uses HTTP). Then each call is one request frame, answered by
one response frame, in turn:

    u32 head length | u32 body length | head (JSON object) | body (bytes)

A request's head is {"method", "target", "session"?}; a response's is {"status"}. The body is the JSON body
an HTTP message would carry (empty when it has none). Who calls is still the kernel's word (SO_PEERCRED on
the connection), exactly as for HTTP on the socket.
"""

from __future__ import annotations

import json
import struct
from typing import Any

#: the first bytes of a framed connection: never the start of an HTTP request, and a whole (bad) request head
#: to a server of HTTP only, which answers 400 at once instead of waiting for more
PREAMBLE = b"AVF1\r\n\r\n"
#: the two lengths in front of each frame
LENGTHS = struct.Struct(">II")
#: the longest head either side accepts
MAX_HEAD = 64 * 1024


class FrameError(ValueError):
    """A frame that breaks the layout (a head too long or not a JSON object)."""


def pack(head: dict[str, Any], body: bytes = b"") -> bytes:
    """One frame."""
    raw = json.dumps(head, separators=(",", ":")).encode()
    return LENGTHS.pack(len(raw), len(body)) + raw + body


def lengths(prefix: bytes, max_body: int) -> tuple[int, int]:
    """The head and body lengths of a frame from its first `LENGTHS.size` bytes; FrameError past the limits."""
    head, body = LENGTHS.unpack(prefix)
    if head > MAX_HEAD:
        raise FrameError(f"a frame head of {head} bytes (the limit is {MAX_HEAD})")
    if body > max_body:
        raise FrameError(f"a frame body of {body} bytes (the limit is {max_body})")
    return head, body


def head_of(raw: bytes) -> dict[str, Any]:
    try:
        head = json.loads(raw)
    except ValueError:
        raise FrameError("a frame head that is not JSON") from None
    if not isinstance(head, dict):
        raise FrameError("a frame head that is not a JSON object")
    return head
