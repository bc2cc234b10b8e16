"""Reading checkpoints back: a file of JSON lines (a file sink's, or messages saved from a channel), a
directory of such files (a copied bucket), or `s3://bucket/prefix`. `poll()` returns what arrived since
the last call, so `audit watch` can follow a sink as it grows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent_vault.checkpoints import s3
from agent_vault.checkpoints.record import Entry, RecordError, parse_line
from agent_vault.configuration.settings import S3CheckpointSink, UserSettings
from agent_vault.domain.errors import InvalidRequest

#: larger objects are not read (a checkpoint line is about 700 bytes, a heartbeat about 1 KiB)
_MAX_OBJECT = 64 * 1024
#: larger files in a directory are not read
_MAX_FILE = 256 * 1024 * 1024


@dataclass(frozen=True)
class Arrival:
    """One entry as read, or why it could not be read; `where` names the file and line, or the object."""

    where: str
    entry: Entry | None
    problem: str | None = None
    #: what the problem is, as a finding (`watching.Finding.kind`)
    kind: str = "unreadable"


class Source(Protocol):
    label: str

    def poll(self) -> list[Arrival]:
        """What arrived since the last poll (everything, the first time)."""
        ...


def _lines(text: str, where: str, first_line: int = 1) -> Iterator[Arrival]:
    for number, line in enumerate(text.splitlines(), start=first_line):
        body = line.strip()
        if not body or not body.startswith("{"):
            continue  # blank lines, and the prose around a line pasted from a channel message
        try:
            yield Arrival(f"{where}:{number}", parse_line(body))
        except RecordError as exc:
            yield Arrival(f"{where}:{number}", None, str(exc))


class FileSource:
    """A file of JSON lines, read from where the last poll stopped. `follow`: the file is still being
    written, so a last line without its line feed waits for the next poll."""

    def __init__(self, path: Path, *, follow: bool = False) -> None:
        self.path = path
        self.label = str(path)
        self._follow = follow
        self._offset = 0
        self._line = 1

    def poll(self) -> list[Arrival]:
        try:
            size = self.path.stat().st_size
            with self.path.open("rb") as handle:
                if size < self._offset:
                    shrank = Arrival(str(self.path), None, f"the file shrank from {self._offset} to {size} bytes: "
                                                           "checkpoints were removed from it", "rollback")  # fmt: skip
                    self._offset, self._line = 0, 1
                    return [shrank, *self.poll()]
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise InvalidRequest(f"cannot read checkpoints from {self.path}: {exc.strerror}") from None
        whole = data[: data.rfind(b"\n") + 1] if self._follow else data
        self._offset += len(whole)
        text = whole.decode("utf-8", errors="replace")
        found = list(_lines(text, str(self.path), self._line))
        self._line += text.count("\n")
        return found


class DirectorySource:
    """Every file under a directory (sorted by path), each one entry or JSON lines; new files on each poll."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = f"{path}/"
        self._seen: set[Path] = set()

    def poll(self) -> list[Arrival]:
        found: list[Arrival] = []
        for file in sorted(p for p in self.path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if file in self._seen:
                continue
            self._seen.add(file)
            try:
                if file.stat().st_size > _MAX_FILE:
                    found.append(Arrival(str(file), None, "too large to be checkpoints"))
                    continue
                text = file.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                found.append(Arrival(str(file), None, f"unreadable ({exc.strerror})"))
                continue
            found += _lines(text, str(file))
        return found


class S3Source:
    """Objects under `s3://bucket/prefix`, in key order (keys start with the signed time)."""

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None, region: str, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.label = f"s3://{bucket}/{prefix}"
        self._client = client if client is not None else s3.client(endpoint_url, region)
        self._after: str | None = None

    def poll(self) -> list[Arrival]:
        found: list[Arrival] = []
        for key in self._keys():
            where = f"s3://{self.bucket}/{key}"
            try:
                obj = self._client.get_object(Bucket=self.bucket, Key=key)
                data = obj["Body"].read(_MAX_OBJECT + 1)
            except Exception as exc:  # botocore's errors: told by their code, never by their text
                found.append(Arrival(where, None, f"could not be read: {s3.error_text(exc)}"))
                continue
            if len(data) > _MAX_OBJECT:
                found.append(Arrival(where, None, "too large to be a checkpoint"))
                continue
            found += _lines(data.decode("utf-8", errors="replace"), where)
            self._after = key
        return found

    def _keys(self) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
            if token:
                args["ContinuationToken"] = token
            elif self._after:
                args["StartAfter"] = self._after
            try:
                page = self._client.list_objects_v2(**args)
            except Exception as exc:
                raise InvalidRequest(f"cannot list {self.label}: {s3.error_text(exc)}") from None
            keys += [item["Key"] for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(keys)


def open_source(
    spec: str,
    *,
    settings: UserSettings | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    follow: bool = False,
) -> Source:
    """SRC as given on the command line: `s3://bucket/prefix` (endpoint and region from the s3 sink of
    that bucket in settings.toml, or `endpoint_url`/`region`), a directory, or a file (`follow`: still
    being written)."""
    if spec.startswith("s3://"):
        try:
            bucket, prefix = s3.parse_url(spec)
        except ValueError as exc:
            raise InvalidRequest(f"{spec}: {exc}") from None
        sink = _s3_sink(settings, bucket)
        endpoint = endpoint_url or (sink.endpoint_url if sink else None)
        return S3Source(bucket, prefix, endpoint_url=endpoint, region=region or (sink.region if sink else "us-east-1"))
    path = Path(spec).expanduser()
    if path.is_dir():
        return DirectorySource(path)
    if not path.exists():
        raise InvalidRequest(f"{spec}: no such file or directory (give a file of checkpoint lines, a directory, or "
                             "s3://bucket/prefix)")  # fmt: skip
    if not os.access(path, os.R_OK):
        raise InvalidRequest(f"{spec}: not readable")
    return FileSource(path, follow=follow)


def _s3_sink(settings: UserSettings | None, bucket: str) -> S3CheckpointSink | None:
    if settings is None:
        return None
    for sink in settings.checkpoints.sinks:
        if isinstance(sink, S3CheckpointSink) and sink.bucket == bucket:
            return sink
    return None
