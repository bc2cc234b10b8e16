"""Checks on what an agent sends, applied before any provider is called.

Names follow a strict grammar (no path tricks, no control characters); reasons and batches
have caps, so a hostile or confused agent gets a fast, clear error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent_vault.domain.errors import InvalidRequest
from agent_vault.domain.untrusted import shown

MAX_NAME = 256
MAX_REASON = 2000
MAX_BATCH = 100
MAX_VALUE_BYTES = 64 * 1024
#: what agent-vault can generate a value as (broker/generate.py), and how long: for `generate_secret` and for
#: a secret's `rotate` settings in a config
GENERATED_FORMATS = ("password", "hex", "base64", "urlsafe", "alphanumeric", "uuid")
MIN_GENERATED, MAX_GENERATED, DEFAULT_GENERATED = 12, 256, 32

# Letters, digits and a few separators used by env keys, 1Password titles and op:// references.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .:@+/-]*")


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidRequest("a secret name must be a non-empty string")
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"secret name is {len(name)} characters; the limit is {MAX_NAME}")
    if not _NAME.fullmatch(name) or name != name.strip():
        raise InvalidRequest(
            f"secret name {shown(name)!r} is not allowed: use letters, digits and _ . : @ + / - "
            "(no leading/trailing spaces); call list_secrets for the exact names"
        )
    if any(part in ("..", ".") for part in name.split("/")) or "//" in name.replace("://", ""):
        raise InvalidRequest(f"secret name {shown(name)!r} contains a path segment that is not allowed")
    return name


def is_valid_name(name: str) -> bool:
    """Whether an agent's request may carry `name`: providers list only names that pass this."""
    try:
        check_name(name)
    except InvalidRequest:
        return False
    return True


def check_names(names: Sequence[object]) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise InvalidRequest("names must be a list of secret names")
    if not names:
        raise InvalidRequest("names is empty: ask for at least one secret")
    if len(names) > MAX_BATCH:
        raise InvalidRequest(f"{len(names)} names in one request; the limit is {MAX_BATCH}")
    checked = tuple(check_name(n) for n in names)
    return tuple(dict.fromkeys(checked))  # drop repeats, keep order


def check_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidRequest(
            "a reason is required: say specifically what you will do with the secret "
            "(for example 'run migration 0042 against the dev database')"
        )
    if len(reason) > MAX_REASON:
        raise InvalidRequest(f"reason is {len(reason)} characters; the limit is {MAX_REASON}")
    return reason.strip()


def check_value(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"the value for {name!r} must be a string")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        raise InvalidRequest(f"the value for {name!r} is larger than {MAX_VALUE_BYTES} bytes")
    if "\x00" in value:
        raise InvalidRequest(f"the value for {name!r} contains a NUL character, which no store keeps")
    return value
