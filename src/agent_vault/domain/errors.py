"""One exception tree for the whole product.

Front doors (CLI, MCP tools, web pages, broker API) turn these into their own form in one
place. Messages are written for the person (or agent) who must act: they name the problem
and the fix, and never contain a secret value.
"""

from __future__ import annotations


class AgentVaultError(Exception):
    """Base of every error agent-vault raises on purpose."""

    #: a short machine-readable code used by the broker API
    code = "error"


class ConfigError(AgentVaultError):
    """The configuration is missing, unreadable or invalid."""

    code = "config"


class SettingsError(ConfigError):
    """The user's settings.toml is missing a piece, malformed, or not private."""

    code = "settings"


class ProviderError(AgentVaultError):
    """A secret store failed or refused."""

    code = "provider"


class SecretNotFound(ProviderError):
    code = "not_found"


class ProviderUnavailable(ProviderError):
    code = "unavailable"


class ProviderAuthError(ProviderError):
    code = "provider_auth"


class ReadOnlyVault(ProviderError):
    code = "read_only"


class InvalidRequest(AgentVaultError):
    """The agent asked for something malformed (bad name, oversized reason, unknown vault)."""

    code = "invalid"


class SessionUnknown(InvalidRequest):
    """The broker does not know the front door's session: it restarted, or this is another replica."""

    code = "session_unknown"


class ApprovalError(AgentVaultError):
    """A request did not end in an approval."""

    code = "approval"


class RequestDenied(ApprovalError):
    code = "denied"


class RequestExpired(ApprovalError):
    code = "expired"


class TooManyRequests(ApprovalError):
    """An agent asked more, or faster, than the user's limits allow; nothing new was opened."""

    code = "too_many_requests"


class NotAuthorized(ApprovalError):
    """The approver's proof (passkey, TOTP code, session) was missing or wrong."""

    code = "not_authorized"

    def __init__(self, message: str, *, deny: bool = False) -> None:
        super().__init__(message)
        #: the failure was one too many: the request is to be denied
        self.deny = deny


class AuditError(AgentVaultError):
    """The audit log could not be written or failed verification; nothing is released."""

    code = "audit"


class BrokerUnavailable(AgentVaultError):
    """The front door could not reach or start the broker."""

    code = "broker_unavailable"


class StoreUnavailable(AgentVaultError):
    """The broker's database cannot be reached (a restart, a failover, the network): the call failed and
    nothing was released; calls work again once it is back, without restarting the broker."""

    code = "store_unavailable"


class BrokerRunning(AgentVaultError):
    """Another broker already serves this state home."""

    code = "broker_running"


class PeerRefused(AgentVaultError):
    """The local user on the other end of the broker's socket may not use this broker."""

    code = "peer_refused"


class AgentRefused(PeerRefused):
    """A team broker's listener refused a call: no agent token, or one unknown or revoked (HTTP 401), or too
    many failed attempts from that address (429). The message never contains the token."""

    code = "agent_refused"


class SystemModeError(AgentVaultError):
    """Installing, finding or running the system broker (system mode) failed; the message says what to do."""

    code = "system_mode"


class StoreMigrationError(AgentVaultError):
    """`agent-vault store migrate` refused or failed to move the storage (a broker runs, the target has rows,
    the chain does not verify, the copy failed midway and was rolled back, ...): the message says why and
    what to do."""

    code = "store_migration"


class ChannelError(AgentVaultError):
    """A channel could not deliver. The message is safe to show: no URL credentials, no values."""

    code = "channel"


CODES: dict[str, type[AgentVaultError]] = {
    cls.code: cls
    for cls in (
        AgentVaultError,
        ConfigError,
        ProviderError,
        SecretNotFound,
        ProviderUnavailable,
        ProviderAuthError,
        ReadOnlyVault,
        InvalidRequest,
        SessionUnknown,
        ApprovalError,
        RequestDenied,
        RequestExpired,
        TooManyRequests,
        NotAuthorized,
        AuditError,
        BrokerUnavailable,
        StoreUnavailable,
        SettingsError,
        BrokerRunning,
        ChannelError,
        PeerRefused,
        AgentRefused,
        SystemModeError,
        StoreMigrationError,
    )
}
