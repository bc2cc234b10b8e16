"""A request's path as events show it: the path, and the query's keys without their values."""

from __future__ import annotations

from agent_vault.domain.untrusted import visible
from agent_vault.proxy.placeholders import Snapshot


def event_path(target: bytes, snapshot: Snapshot) -> str:
    path, sep, query = target.decode("latin-1").partition("?")
    if sep:
        keys = [pair.partition("=")[0] for pair in query.split("&") if pair]
        path += "?" + "&".join(keys)
    # a value the client somehow has is shown as its placeholder, like everywhere else
    return visible(snapshot.scrub_text(path))
