"""SecretValue: a secret that does not print itself.

Providers return values wrapped in this type; only the last hop (the MCP tool result, the
env file writer, a child's environment) calls `.reveal()`. `repr`, `str`, `format` and
pickling all hide the value, so an accidental log line or exception shows a mask.
"""

from __future__ import annotations

import hmac
from typing import Any, NoReturn

_MASK = "SecretValue('********')"


class SecretValue:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("SecretValue wraps a str")
        self._value = value

    def reveal(self) -> str:
        """The plain value. Call only where the value must leave the product."""
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretValue cannot be pickled")

    def __getstate__(self) -> Any:
        raise TypeError("SecretValue cannot be pickled")
