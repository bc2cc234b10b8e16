"""The front door's client for the broker API on the Unix socket.

Errors come back as `{"error": {"code", "message"}}` and are raised again here as the same
`AgentVaultError` subclass, so front doors handle broker errors like local ones.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import httpx2

from agent_vault.brokerapi import SESSION_HEADER
from agent_vault.errors import CODES, AgentVaultError, BrokerUnavailable


class BrokerClient:
    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.session: str | None = None
        self._http = httpx2.AsyncClient(
            transport=httpx2.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://agent-vault-broker",
            timeout=timeout,
            trust_env=False,
        )

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> dict[str, Any]:
        headers = {SESSION_HEADER: self.session} if self.session else {}
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        try:
            resp = await self._http.request(method, path, headers=headers, **kw, **extra)
        except httpx2.TransportError as exc:
            raise BrokerUnavailable(
                f"cannot reach the agent-vault broker at {self.socket_path} ({type(exc).__name__}). "
                "Fix: run `agent-vault serve`, or check `agent-vault status`."
            ) from exc
        data = resp.json()
        if isinstance(data, dict) and "error" in data:
            err = data["error"]
            raise CODES.get(err.get("code"), AgentVaultError)(str(err.get("message")))
        if not isinstance(data, dict):
            raise BrokerUnavailable("the broker answered something that is not a JSON object")
        return data

    async def open_session(
        self, config_path: Path, env: dict[str, str], client: dict[str, str], project: dict[str, str | None]
    ) -> dict[str, Any]:
        data = await self._call(
            "POST",
            "/v1/sessions",
            json={"config_path": str(config_path), "env": env, "client": client, "project": project},
        )
        self.session = str(data["session"])
        return data

    async def close_session(self) -> None:
        if self.session:
            await self._call("DELETE", "/v1/sessions/current")
            self.session = None

    async def list_secrets(self) -> dict[str, list[str]]:
        data = await self._call("GET", "/v1/secrets")
        return dict(data["vaults"])

    async def request(
        self,
        vault: str,
        names: list[str],
        reason: str,
        operation: str = "read",
        values: dict[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Ask for secrets; `extra` carries purpose/run (inject) or generate (a generated write)."""
        body: dict[str, Any] = {"vault": vault, "names": names, "reason": reason, "operation": operation, **extra}
        if values is not None:
            body["values"] = values
        return await self._call("POST", "/v1/requests", json=body)

    async def wait(self, request_id: str, timeout: float) -> dict[str, Any]:
        return await self._call(
            "GET", f"/v1/requests/{request_id}/wait", params={"timeout": timeout}, timeout=timeout + 10
        )

    async def status(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/status")

    async def revoke(self, window_id: str) -> dict[str, Any]:
        return await self._call("DELETE", f"/v1/windows/{window_id}")

    async def shutdown(self) -> dict[str, Any]:
        return await self._call("POST", "/v1/shutdown")
