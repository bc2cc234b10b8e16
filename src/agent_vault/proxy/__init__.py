"""The credential-injecting proxy (issue 13): the agent's process holds placeholders, and the value
goes on the wire only to the hosts bound to the secret. See docs/proxy.md.

The seams the broker wires:

- `LocalCA.load_or_create(directory)`: the CA (key 0600), `cert_path` and `bundle_path` for children;
- `Placeholders`: `add(secret_id, SecretValue, hosts=..., places=..., approve_each=...)` returns the
  `Placeholder` whose `.text` the child gets; `shaped_placeholder` makes one in the value's shape;
- `ProxyHooks(approve, on_violation, on_request, on_blocked)`: async callbacks with `ProxyUse`,
  `Violation`, `RequestRecord`, `BlockedDestination`; `approve` answers a `Decision`;
- `ProxyConfig`: allow_only, allow_private, timeouts, upstream ssl context;
- `ProxyServer(...).start()` on 127.0.0.1, `.url`, `.child_env()`, `.stop()`.
"""

from __future__ import annotations

from agent_vault.proxy.ca import LocalCA
from agent_vault.proxy.config import ProxyConfig, default_upstream_context
from agent_vault.proxy.destinations import Resolver, system_resolver
from agent_vault.proxy.environment import DEFAULT_NO_PROXY, child_env
from agent_vault.proxy.events import (
    BlockedDestination,
    Decision,
    Outcome,
    ProxyHooks,
    ProxyUse,
    RequestRecord,
    UseKind,
    Violation,
)
from agent_vault.proxy.placeholders import Place, Placeholder, Placeholders
from agent_vault.proxy.rules import ApproveRule
from agent_vault.proxy.server import ProxyServer
from agent_vault.proxy.shapes import shaped_placeholder

__all__ = [
    "DEFAULT_NO_PROXY",
    "ApproveRule",
    "BlockedDestination",
    "Decision",
    "LocalCA",
    "Outcome",
    "Place",
    "Placeholder",
    "Placeholders",
    "ProxyConfig",
    "ProxyHooks",
    "ProxyServer",
    "ProxyUse",
    "RequestRecord",
    "Resolver",
    "UseKind",
    "Violation",
    "child_env",
    "default_upstream_context",
    "shaped_placeholder",
    "system_resolver",
]
