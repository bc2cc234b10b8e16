"""ngrok through its Python SDK in the broker's process, imported only when configured.
Failures (offline, bad token) are shown plainly and retried with backoff; the token never appears."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

from agent_vault.domain.untrusted import shown
from agent_vault.tunnels.base import Report, State, TunnelStatus, backoff

INSTALL_HINT = "pip install 'agent-vault[ngrok]'"
CONNECT_TIMEOUT = 30.0


def _load_sdk() -> Any:
    import ngrok

    return ngrok


class NgrokTunnel:
    kind = "ngrok"

    def __init__(self, authtoken: str, domain: str | None = None) -> None:
        self._authtoken = authtoken
        self.domain = domain
        self._task: asyncio.Task[None] | None = None
        self._session: Any = None
        self._report: Report = lambda status: None
        self._url: str | None = None
        self._was_lost = False

    def __repr__(self) -> str:
        return f"NgrokTunnel(domain={self.domain!r})"

    async def start(self, local_url: str, report: Report) -> None:
        self._report = report
        self._task = asyncio.create_task(self._supervise(local_url))

    def _status(self, state: State, detail: str, url: str | None = None) -> None:
        self._report(TunnelStatus("ngrok", state, url, detail=detail))

    def _clean(self, exc: BaseException) -> str:
        text = ": ".join(str(a) for a in exc.args) if exc.args else type(exc).__name__
        return shown(text.replace(self._authtoken, "<token>"), 200)

    async def _supervise(self, local_url: str) -> None:
        try:
            sdk = _load_sdk()
        except ImportError:
            self._status("down", f"the ngrok tunnel needs the ngrok package. Fix: {INSTALL_HINT}")
            return
        attempt = 0
        while True:
            self._status("starting", "connecting to ngrok")
            try:
                await self._connect(sdk, local_url)
            except (ValueError, OSError, TimeoutError) as exc:
                why = "no answer from ngrok" if isinstance(exc, TimeoutError) else self._clean(exc)
                await self._close_session()
                delay = backoff(attempt)
                attempt += 1
                fix = "Check the network and ngrokAuthToken"
                self._status("down", f"ngrok could not connect ({why}). {fix}; retrying in {delay:g}s")
                await asyncio.sleep(delay)
                continue
            # Connected: from here the SDK keeps the session alive and reconnects by itself.
            await asyncio.Event().wait()

    async def _connect(self, sdk: Any, local_url: str) -> None:
        loop = asyncio.get_running_loop()

        def on_disconnect(addr: str, error: str) -> None:  # called from the SDK's own thread
            loop.call_soon_threadsafe(self._lost, error)

        def on_heartbeat(latency: int) -> None:
            loop.call_soon_threadsafe(self._alive)

        builder = sdk.SessionBuilder().authtoken(self._authtoken)
        builder = builder.handle_disconnection(on_disconnect).handle_heartbeat(on_heartbeat)
        self._session = await asyncio.wait_for(builder.connect(), CONNECT_TIMEOUT)
        endpoint = self._session.http_endpoint()
        if self.domain:
            endpoint = endpoint.domain(self.domain)
        listener = await asyncio.wait_for(endpoint.listen_and_forward(local_url), CONNECT_TIMEOUT)
        self._url = str(listener.url())
        self._status("up", f"ngrok forwarding to {local_url}", self._url)

    def _lost(self, error: str) -> None:
        # Until a heartbeat says the session is back, the public host stays off the allowlist.
        self._was_lost = True
        self._status("down", f"ngrok lost its connection ({shown(error, 120)}); reconnecting")

    def _alive(self) -> None:
        if self._was_lost and self._url:
            self._was_lost = False
            self._status("up", "ngrok reconnected", self._url)

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with suppress(Exception):
                await session.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        await self._close_session()
