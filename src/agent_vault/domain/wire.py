"""What crosses the socket between a front door and the broker, shared by both sides (client.py and
brokerapi.py), so neither writes the other's names out again. Light on purpose: the front door
imports it at start-up."""

from __future__ import annotations

#: the header that carries the front door's session id on every call after the session is opened
SESSION_HEADER = "x-agent-vault-session"
