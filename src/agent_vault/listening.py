"""Listening TCP sockets, made the one way both of the broker's TCP listeners need (the approval pages on
loopback, daemon.py; the team listener for remote front doors, team/listener.py).

`IPPROTO_TCP` is given explicitly: only then does asyncio set TCP_NODELAY on accepted connections; without
it every answer after the first on a kept-alive connection waits ~40 ms for a delayed ACK.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from agent_vault.domain.errors import ConfigError


def listen_tcp(family: socket.AddressFamily, address: tuple[Any, ...], in_use: str) -> socket.socket:
    """A non-blocking socket listening on `address`; ConfigError(`in_use`) when another program has the port,
    any other OSError as it is."""
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(in_use) from None
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock
