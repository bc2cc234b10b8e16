"""Where checkpoints go: a file, a webhook (Standard Webhooks signature), a push channel, an S3 bucket;
and the outbox in front of each (a queue, a few retries, failures reported without credentials).

Sinks are configured in the user's settings.toml only (`[[checkpoints.sinks]]`), never in a project
config an agent edits. A webhook is signed and checked like a project's webhooks: `sign` and
`WebhookSink` from `broker.webhook_delivery`; every send resolves the host, refuses this machine and
private networks unless this sink's `allowPrivate` names them, and connects to the address checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx2

from agent_vault.broker.webhook_delivery import USER_AGENT, WebhookSink, sign
from agent_vault.channels.base import Channel, Notice
from agent_vault.channels.registry import channel_class
from agent_vault.checkpoints import s3
from agent_vault.checkpoints.record import Checkpoint, Entry, Heartbeat, shown_time
from agent_vault.configuration.destinations import Allowance, RefusedDestination, parse_allowance, resolve_checked
from agent_vault.configuration.settings import (
    ChannelCheckpointSink,
    FileCheckpointSink,
    S3CheckpointSink,
    UserSettings,
    WebhookCheckpointSink,
)
from agent_vault.domain.errors import ChannelError, ConfigError
from agent_vault.domain.untrusted import shown

#: (sink label, what went wrong): a failure to deliver, safe to print and to audit
Report = Callable[[str, str], None]
_PORTS = {"http": 80, "https": 443}


class SinkError(Exception):
    """A delivery that failed; the message names no credential. `retry`: worth another attempt."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Sink(Protocol):
    #: names the sink in messages, without credentials
    label: str
    #: whether heartbeats go here too
    heartbeats: bool

    async def send(self, entry: Entry) -> None:
        """Deliver `entry` or raise SinkError."""
        ...

    async def aclose(self) -> None: ...


# -- a file ---------------------------------------------------------------------------------------


class FileSink:
    """Appends one JSON line per entry (created 0600; a symlink is refused), synced before it returns."""

    def __init__(self, path: Path, *, heartbeats: bool = True) -> None:
        self.path = path
        self.label = f"file {path}"
        self.heartbeats = heartbeats

    async def send(self, entry: Entry) -> None:
        await asyncio.to_thread(self._append, (entry.line() + "\n").encode())

    def _append(self, data: bytes) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except FileNotFoundError:
            raise SinkError(f"the directory {self.path.parent} does not exist", retry=False) from None
        except OSError as exc:
            raise SinkError(f"cannot open it: {exc.strerror}", retry=False) from None
        try:
            os.write(fd, data)  # one write with O_APPEND: lines from two writers never interleave
            os.fsync(fd)
        except OSError as exc:
            raise SinkError(f"cannot write it: {exc.strerror}") from None
        finally:
            os.close(fd)

    async def aclose(self) -> None:
        return None


# -- a webhook ------------------------------------------------------------------------------------


class SignedWebhookSink:
    """POSTs each entry's JSON with Standard Webhooks headers (`webhook-id` stays the same on retries)."""

    def __init__(
        self,
        sink: WebhookSink,
        *,
        allow_private: Sequence[Allowance] = (),
        heartbeats: bool = True,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        if sink.signing_secret is None:
            raise ConfigError(f"checkpoint webhook {sink.safe_url}: `signingSecret` is required")
        self._sink = sink
        self._allow = tuple(allow_private)
        self._transport = transport
        self._client: httpx2.AsyncClient | None = None
        self.label = f"webhook {sink.safe_url}"
        self.heartbeats = heartbeats

    async def send(self, entry: Entry) -> None:
        sink = self._sink
        assert sink.signing_secret is not None
        if self._client is None:
            self._client = httpx2.AsyncClient(transport=self._transport, follow_redirects=False)
        body = entry.line().encode()
        msg_id = f"msg_{entry.digest[:32]}"
        target = httpx2.URL(sink.url)
        try:
            async with asyncio.timeout(sink.timeout):
                # resolve once, check every address, then connect to the one checked (no rebinding)
                address = await resolve_checked(target.host, target.port or _PORTS[target.scheme], self._allow)
                stamp = int(time.time())
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    "Host": target.netloc.decode("ascii"),
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(stamp),
                    "webhook-signature": sign(sink.signing_secret, msg_id, stamp, body),
                }
                if sink.authorization:
                    headers["Authorization"] = sink.authorization
                response = await self._client.post(
                    target.copy_with(host=address),
                    content=body,
                    headers=headers,
                    timeout=sink.timeout,
                    extensions={"sni_hostname": target.host} if target.scheme == "https" else None,
                )
        except RefusedDestination as exc:
            raise SinkError(
                f"refused: {exc}; nothing was sent. Fix: if this endpoint is yours, add its host:port to this "
                "sink's `allowPrivate` in settings.toml",
                retry=False,
            ) from None
        except (TimeoutError, httpx2.TimeoutException):
            raise SinkError(f"no answer within {sink.timeout:g}s") from None
        except (httpx2.HTTPError, httpx2.InvalidURL, OSError) as exc:
            raise SinkError(f"connection failed ({type(exc).__name__})") from None
        status = response.status_code
        if not 200 <= status < 300:
            hint = " (redirects are not followed)" if 300 <= status < 400 else ""
            raise SinkError(f"HTTP {status}{hint}", retry=status == 429 or status >= 500)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# -- a push channel -------------------------------------------------------------------------------


class ChannelSink:
    """Sends each checkpoint as a notice whose body carries the JSON line (keep the message: `audit
    verify --checkpoints` reads a file of such lines)."""

    def __init__(self, channel: Channel, *, link: str, heartbeats: bool = False) -> None:
        self._channel = channel
        self._link = link
        self.label = f"channel {channel.name}"
        self.heartbeats = heartbeats

    async def send(self, entry: Entry) -> None:
        checkpoint = entry.checkpoint if isinstance(entry, Heartbeat) else entry
        what = "still at" if isinstance(entry, Heartbeat) else "at"
        title = f"agent-vault audit checkpoint: row {checkpoint.seq}"
        body = (
            f"Your audit log was {what} row {checkpoint.seq} (head {checkpoint.head[:16]}…) at "
            f"{shown_time(entry.time)}, signed by key {checkpoint.key_id}. Keep this message: "
            "`agent-vault audit verify --checkpoints FILE` checks the log against the line below.\n\n" + entry.line()
        )
        try:
            await self._channel.send(Notice(title, body, self._link, (), ()))
        except ChannelError as exc:
            raise SinkError(shown(str(exc), 300)) from None
        except Exception as exc:  # a plug-in's own error: its text may carry a URL with a token
            raise SinkError(f"unexpected {type(exc).__name__}") from None

    async def aclose(self) -> None:
        return None


# -- an S3 bucket ---------------------------------------------------------------------------------


class S3Sink:
    """One object per entry under `prefix` (`s3.object_key`); an existing object is never replaced."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        heartbeats: bool = True,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._endpoint_url = endpoint_url
        self._region = region
        self._client = client
        self.label = s3.label(bucket, prefix)
        self.heartbeats = heartbeats

    async def send(self, entry: Entry) -> None:
        await asyncio.to_thread(self._put, entry)

    def _put(self, entry: Entry) -> None:
        if self._client is None:
            self._client = s3.client(self._endpoint_url, self._region)
        body = (entry.line() + "\n").encode()
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=s3.object_key(self.prefix, entry),
                Body=body,
                ContentType="application/json",
            )
        except Exception as exc:  # botocore's errors: told by their code, never by their text
            raise SinkError(s3.error_text(exc), retry=s3.retryable(exc)) from None

    async def aclose(self) -> None:
        return None


# -- from settings --------------------------------------------------------------------------------


def build_sinks(settings: UserSettings, *, link: str = "") -> list[Sink]:
    """The sinks `[[checkpoints.sinks]]` names; ConfigError (naming the sink) when one cannot be built."""
    built: list[Sink] = []
    channels = {c.name: c for c in settings.channels}
    for index, spec in enumerate(settings.checkpoints.sinks):
        where = f"checkpoints.sinks[{index}]"
        try:
            built.append(_build(spec, channels, link))
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"{where} ({spec.kind}): {exc}") from None
    return built


def _build(spec: Any, channels: dict[str, Any], link: str) -> Sink:
    if isinstance(spec, FileCheckpointSink):
        return FileSink(spec.resolved(), heartbeats=spec.heartbeats)
    if isinstance(spec, WebhookCheckpointSink):
        sink = WebhookSink(
            url=spec.url,
            authorization=spec.authorization,
            signing_secret=spec.signing_secret,
            timeout=spec.timeout_seconds,
        )
        allow = [parse_allowance(entry) for entry in spec.allow_private]
        return SignedWebhookSink(sink, allow_private=allow, heartbeats=spec.heartbeats)
    if isinstance(spec, ChannelCheckpointSink):
        settings = channels[spec.channel]  # the settings model checked that it exists
        channel = channel_class(settings.type)(settings.name, settings.options)
        return ChannelSink(channel, link=link or "http://localhost/", heartbeats=spec.heartbeats)
    if isinstance(spec, S3CheckpointSink):
        return S3Sink(spec.bucket, spec.prefix, endpoint_url=spec.endpoint_url, region=spec.region,
                      heartbeats=spec.heartbeats)  # fmt: skip
    raise ConfigError(f"unknown checkpoint sink {spec!r}")


# -- the outbox -----------------------------------------------------------------------------------


class Outbox:
    """One sink's queue and worker: in order, a few attempts each, failures reported; never raises."""

    def __init__(
        self,
        sink: Sink,
        *,
        report: Report,
        attempts: int = 3,
        base_delay: float = 1.0,
        timeout: float = 30.0,
        queue_size: int = 200,
    ) -> None:
        self.sink = sink
        self._report = report
        self._attempts = attempts
        self._base_delay = base_delay
        self._timeout = timeout
        self._queue: asyncio.Queue[Entry] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        #: entries delivered and failed, for status
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"checkpoints to {self.sink.label}")

    def put(self, entry: Entry) -> None:
        if isinstance(entry, Heartbeat) and not self.sink.heartbeats:
            return
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self._failed(f"{self._queue.maxsize} entries wait already; dropped {_what(entry)}")

    async def aclose(self, drain_timeout: float) -> None:
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await self._queue.join()
            left = self._queue.qsize() + self._busy
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if left:
                self._failed(f"{left} entr{'y' if left == 1 else 'ies'} not delivered: shutting down")
        with contextlib.suppress(Exception):
            await self.sink.aclose()

    async def _run(self) -> None:
        while True:
            entry = await self._queue.get()
            self._busy = True
            try:
                await self._deliver(entry)
            except Exception as exc:  # a bug here must not end the worker
                self._failed(f"delivery crashed ({type(exc).__name__})")
            finally:
                self._busy = False
                self._queue.task_done()

    async def _deliver(self, entry: Entry) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                async with asyncio.timeout(self._timeout):
                    await self.sink.send(entry)
            except SinkError as exc:
                if not exc.retry or attempt == self._attempts:
                    self._failed(f"{_what(entry)} not delivered: {exc}; gave up after {attempt} attempt(s)")
                    return
            except TimeoutError:
                if attempt == self._attempts:
                    self._failed(f"{_what(entry)} not delivered: no answer within {self._timeout:g}s")
                    return
            else:
                self.sent += 1
                return
            delay = self._base_delay * 2 ** (attempt - 1)
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))  # noqa: S311 - jitter, not a secret

    def _failed(self, message: str) -> None:
        self.failed += 1
        self.last_error = message
        try:
            self._report(self.sink.label, message)
        except Exception as exc:
            print(f"agent-vault: checkpoint report failed ({type(exc).__name__})", file=sys.stderr)


def _what(entry: Entry) -> str:
    if isinstance(entry, Checkpoint):
        return f"the checkpoint of row {entry.seq}"
    return f"a heartbeat (row {entry.checkpoint.seq})"
