"""Secrets the broker makes itself, so a generated credential never passes through the model.

A spec names a format and a length; the value comes from the OS CSPRNG (`secrets`), is
written to the vault after the human approves, and only its name goes back to the agent.
"""

from __future__ import annotations

import base64
import secrets
import string
import uuid
from dataclasses import dataclass
from typing import Any

from agent_vault.domain.errors import InvalidRequest
from agent_vault.domain.grammar import DEFAULT_GENERATED, GENERATED_FORMATS, MAX_GENERATED, MIN_GENERATED
from agent_vault.domain.secret import SecretValue

FORMATS = GENERATED_FORMATS
MIN_LENGTH, MAX_LENGTH, DEFAULT_LENGTH = MIN_GENERATED, MAX_GENERATED, DEFAULT_GENERATED
_PASSWORD = string.ascii_letters + string.digits + "!#%+,-.:=@^_~"


@dataclass(frozen=True)
class GenerationSpec:
    format: str = "password"
    length: int = DEFAULT_LENGTH

    def describe(self) -> str:
        if self.format == "uuid":
            return "a random UUID (version 4)"
        unit = "bytes" if self.format in ("hex", "base64", "urlsafe") else "characters"
        return f"a random {self.format} value of {self.length} {unit}"

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "length": self.length}


def parse_spec(format: object = "password", length: object = DEFAULT_LENGTH) -> GenerationSpec:
    if format not in FORMATS:
        raise InvalidRequest(f"unknown format {format!r}; use one of: {', '.join(FORMATS)}")
    if not isinstance(length, int) or isinstance(length, bool) or not MIN_LENGTH <= length <= MAX_LENGTH:
        raise InvalidRequest(f"length must be a whole number from {MIN_LENGTH} to {MAX_LENGTH}")
    return GenerationSpec(str(format), length)


def generate(spec: GenerationSpec) -> SecretValue:
    n = spec.length
    match spec.format:
        case "hex":
            value = secrets.token_hex(n)
        case "base64":
            value = base64.b64encode(secrets.token_bytes(n)).decode()
        case "urlsafe":
            value = secrets.token_urlsafe(n)
        case "alphanumeric":
            value = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))
        case "uuid":
            value = str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))
        case _:
            value = _password(n)
    return SecretValue(value)


def _password(n: int) -> str:
    """Random characters with at least one lower, upper, digit and symbol."""
    while True:
        value = "".join(secrets.choice(_PASSWORD) for _ in range(n))
        if (
            any(c.islower() for c in value)
            and any(c.isupper() for c in value)
            and any(c.isdigit() for c in value)
            and any(c in "!#%+,-.:=@^_~" for c in value)
        ):
            return value
