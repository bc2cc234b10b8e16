"""The channel plug-in contract: a `Notice` to send, the `Channel` protocol, its options and errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from agent_vault.domain.errors import ChannelError

#: what a plug-in needs, in one import (ChannelError lives with the other errors in domain/errors.py)
__all__ = ["Channel", "ChannelError", "ChannelOptions", "Notice"]


class ChannelOptions(BaseModel):
    """A channel's own keys in its `[[channels]]` section. Subclasses add fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


@dataclass(frozen=True)
class Notice:
    """One message about one or more pending requests; every agent-written part already escaped."""

    title: str
    body: str
    #: the page to open: the request's page, or the dashboard when several wait
    link: str
    request_ids: tuple[str, ...]
    match_codes: tuple[str, ...]


@runtime_checkable
class Channel(Protocol):
    """A way to reach the human. Constructed as `cls(name, options)`; `send` raises ChannelError."""

    #: the `type` key in a `[[channels]]` section
    type_name: ClassVar[str]
    Options: ClassVar[type[ChannelOptions]]
    name: str

    def __init__(self, name: str, options: ChannelOptions) -> None: ...

    def describe(self) -> str:
        """A short description for `agent-vault status`, without credentials."""
        ...

    async def send(self, notice: Notice) -> None:
        """Deliver `notice` or raise ChannelError; must not block the event loop."""
        ...
