"""The 1password provider's edge to `onepassword-sdk`: the lazy import, the private event loop, error mapping.

The SDK raises plain Exceptions whose text is fixed English from its core. That text is matched here
to pick one of our errors, and never repeated: our messages are our own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from types import ModuleType
from typing import Any, TypeVar

from agent_vault.domain.errors import (
    AgentVaultError,
    ConfigError,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    SecretNotFound,
)
from agent_vault.domain.untrusted import shown
from agent_vault.providers.extras import import_extra, install_hint

T = TypeVar("T")

INSTALL_HINT = install_hint("1password", "onepassword-sdk", "onepassword")


def import_sdk() -> ModuleType:
    """The `onepassword` module, or a ConfigError naming the pip command."""
    return import_extra("onepassword", provider_type="1password", package="onepassword-sdk", extra="onepassword")


def plain(value: Any) -> Any:
    """An SDK enum member as its wire value; anything else unchanged."""
    return getattr(value, "value", value)


class LoopThread:
    """One event loop on one daemon thread, where all of a provider's SDK coroutines run."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the loop and wait for it; concurrent.futures.TimeoutError after `timeout`."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a 1Password call was made from the provider's own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()


# --- errors -------------------------------------------------------------------------------------

_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rate_limit", ("rate limit",)),
    ("desktop_missing", ("desktop application not found",)),
    ("desktop_closed", ("connection channel is closed", "unexpectedly dropped by the desktop app")),
    (
        "auth",
        (
            "service account token",
            "not authenticated",
            "bad credentials",
            "failed to authenticate",
            "authentication error",
            "session expired",
            "prefix 'ops_'",
        ),
    ),
    ("permission", ("right permissions", "not sufficient permissions", "permission denied")),
    ("ambiguous", ("more than one",)),
    ("reference", ("secret reference could not be parsed", "secret reference has invalid", "not prefixed with")),
    (
        "not_found",
        (
            "no vault matched",
            "no item matched",
            "no section matched",
            "cannot be found",
            "couldn't be found",
            "not found",
            "does not correspond to",
            "not in an active state",
        ),
    ),
    ("conflict", ("not up to date", "conflict occurred", "incorrect item version", "race condition")),
    (
        "unavailable",
        (
            "error sending request",
            "request timeout",
            "timed out",
            "dns error",
            "connect",
            "network",
            "server error",
            "service unavailable",
            "tls",
            "certificate",
        ),
    ),
)


def classify(exc: BaseException) -> str:
    """A coarse kind for an SDK exception: auth, permission, not_found, unavailable, ... or other."""
    name = type(exc).__name__
    if name == "RateLimitExceededException":
        return "rate_limit"
    if name == "DesktopSessionExpiredException":
        return "auth"
    if isinstance(exc, ImportError):
        return "platform"
    if isinstance(exc, TimeoutError | ConnectionError):
        return "unavailable"
    text = str(getattr(exc, "msg", None) or exc).lower()
    for kind, fragments in _KINDS:
        if any(fragment in text for fragment in fragments):
            return kind
    return "other"


def safe_cause(exc: BaseException) -> BaseException | None:
    """`exc` to chain, when its text is one of the SDK's known messages; else nothing.

    Unrecognised text, and validation errors (which quote their input), may carry a value.
    """
    if classify(exc) == "other" or type(exc).__module__.startswith("pydantic") or isinstance(exc, ValueError):
        return None
    return exc


def not_found(vault: str, name: str) -> SecretNotFound:
    return SecretNotFound(
        f"no secret {shown(name, 200)!r} in vault {vault!r} (1Password). "
        "Call list_secrets to see the names this vault has."
    )


def translate(
    exc: BaseException, vault: str, action: str, name: str | None, *, desktop: bool = False
) -> AgentVaultError:
    """Our error for an SDK failure while doing `action` (for `name`, if one was asked for).

    `desktop`: the provider signs in through the 1Password desktop app rather than a token.
    """
    kind = classify(exc)
    if kind == "desktop_missing":
        return ProviderUnavailable(
            f"vault {vault!r}: the 1Password desktop app is not installed on this machine (the vault signs "
            "in with `account`). Fix: install 1Password and sign in, or use a service account "
            "(serviceAccountToken) instead."
        )
    if kind == "desktop_closed":
        return ProviderUnavailable(
            f"vault {vault!r}: the 1Password desktop app did not answer. Fix: start and unlock 1Password, "
            "turn on Settings > Developer > Integrate with other apps, then try again."
        )
    if kind == "auth" and desktop:
        return ProviderAuthError(
            f"vault {vault!r}: the 1Password desktop app refused or ended the session for `account`. "
            "Fix: unlock 1Password, check the account name, allow agent-vault when the app asks, and try again."
        )
    if kind == "permission" and desktop:
        return ProviderAuthError(
            f"vault {vault!r}: your 1Password account may not {action}. "
            "Fix: check your access to that vault in 1Password (write access for writes)."
        )
    if kind == "auth":
        return ProviderAuthError(
            f"vault {vault!r}: 1Password did not accept the service account token (serviceAccountToken). "
            "Fix: put a current token in the variable the config names (1Password > Developer > "
            "Service Accounts), then try again."
        )
    if kind == "permission":
        return ProviderAuthError(
            f"vault {vault!r}: the 1Password service account may not {action}. "
            "Fix: give the service account access to that vault in 1Password (write access for writes)."
        )
    if kind in ("not_found", "reference") and name is not None:
        return not_found(vault, name)
    if kind == "ambiguous" and name is not None:
        return SecretNotFound(
            f"{shown(name, 200)!r} matches more than one 1Password item or field in vault {vault!r}. "
            "Ask for a name from list_secrets."
        )
    if kind == "rate_limit":
        return ProviderUnavailable(
            f"vault {vault!r}: 1Password's rate limit for this service account was reached. Fix: try again later."
        )
    if kind == "unavailable":
        return ProviderUnavailable(
            f"vault {vault!r}: could not reach 1Password to {action}. Fix: check the network and try again."
        )
    if kind == "conflict":
        return ProviderUnavailable(
            f"vault {vault!r}: the item changed in 1Password while agent-vault wrote it. Fix: try again."
        )
    if kind == "platform":
        return ConfigError(f"vault {vault!r}: onepassword-sdk does not support this machine's architecture.")
    return ProviderError(
        f"vault {vault!r}: 1Password could not {action} ({type(exc).__name__}; its details are withheld "
        "because they can contain secret data)."
    )
