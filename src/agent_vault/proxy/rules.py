"""`approveEach` rules: "METHOD /path/glob" strings naming requests that wait for their own approval.

Matching is deliberately generous: the request's path is normalised the way servers commonly
normalise it (percent-decoding, dot segments, repeated slashes, `;params`, trailing slash, case)
so a rule cannot be dodged by spelling the same endpoint differently. Over-matching asks the
person once more; under-matching would skip the question.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import unquote

from agent_vault.domain.errors import ConfigError
from agent_vault.domain.untrusted import shown

_METHOD = re.compile(r"[A-Za-z]+|\*")

#: headers some frameworks read as the "real" method of a POST
METHOD_OVERRIDES = (b"x-http-method-override", b"x-http-method", b"x-method-override")


@dataclass(frozen=True)
class ApproveRule:
    text: str
    method: str
    path: str

    @classmethod
    def parse(cls, text: str) -> ApproveRule:
        """`"POST /v1/refunds"`, `"DELETE *"`, `"DELETE"` (any path) or `"* /admin/*"`."""
        parts = text.split()
        if not 1 <= len(parts) <= 2 or not _METHOD.fullmatch(parts[0]):
            raise ConfigError(
                f"approveEach rule {shown(text)!r} is not 'METHOD /path': "
                "use for example 'POST /v1/refunds' or 'DELETE *'"
            )
        path = parts[1] if len(parts) == 2 else "*"
        if path != "*" and not path.startswith("/"):
            raise ConfigError(f"approveEach rule {shown(text)!r}: the path must start with / (or be *)")
        return cls(text=" ".join(parts), method=parts[0].upper(), path=path)

    def matches(self, methods: Collection[str], path: str) -> bool:
        if self.method != "*" and self.method not in methods:
            return False
        if self.path == "*":
            return True
        return fnmatchcase(normalize_path(path), normalize_path(self.path))


def normalize_path(path: str) -> str:
    """The path (no query) as a lenient server would route it, lower-cased."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    for _ in range(3):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    segments = [segment.split(";", 1)[0] for segment in path.replace("\\", "/").split("/")]
    path = posixpath.normpath("/" + "/".join(s for s in segments if s))
    return path.rstrip("/").lower() or "/"


def effective_methods(method: str, headers: Collection[tuple[bytes, bytes]]) -> frozenset[str]:
    """The request's method plus any method a server may take from an override header."""
    methods = {method.upper()}
    for name, value in headers:
        if name.lower() in METHOD_OVERRIDES:
            methods.add(value.decode("latin-1").strip().upper())
    return frozenset(methods)
