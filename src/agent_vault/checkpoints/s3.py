"""Talking to an S3-compatible bucket (boto3, the `aws` extra): the client, object names, safe errors.

Credentials come from boto3's own chain (the `AWS_*` variables, `~/.aws`, an instance role), never
from settings.toml. Object names start with the signed time, so a listing is in time order.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from agent_vault.checkpoints.record import Checkpoint, Entry, Heartbeat
from agent_vault.domain.errors import ConfigError

INSTALL_HINT = "pip install 'agent-vault[aws]'"


def client(endpoint_url: str | None, region: str) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(f"an s3 checkpoint sink needs boto3. Fix: {INSTALL_HINT}") from None
    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=10)
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def object_key(prefix: str, entry: Entry) -> str:
    """`<prefix><signed time>-<kind>-<row>-<digest>.json`: unique, and sorted by time."""
    kind = "checkpoint" if isinstance(entry, Checkpoint) else "heartbeat"
    checkpoint = entry.checkpoint if isinstance(entry, Heartbeat) else entry
    moment = entry.time.strftime("%Y%m%dT%H%M%S%fZ")
    return f"{folder(prefix)}{moment}-{kind}-{checkpoint.seq}-{entry.digest[:16]}.json"


def folder(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def label(bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{folder(prefix)}"


def parse_url(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("an S3 source looks like s3://bucket/prefix")
    return parts.netloc, parts.path.lstrip("/")


def retryable(exc: BaseException) -> bool:
    """Worth another attempt: the endpoint did not answer, throttled, or failed on its side (5xx)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
        code = (response.get("Error") or {}).get("Code") or ""
        return int(status) >= 500 or int(status) == 429 or "Throttl" in str(code) or code == "SlowDown"
    return type(exc).__name__ != "NoCredentialsError"


def error_text(exc: BaseException) -> str:
    """What went wrong, without anything the error might quote from a request (signatures, keys)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = error.get("Code") or "error"
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return f"S3 answered {code}" + (f" (HTTP {status})" if status else "")
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile where the broker runs)"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
        return f"could not reach the endpoint ({name})"
    return name
