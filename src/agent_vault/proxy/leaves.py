"""TLS server contexts per host, with short-lived leaf certificates, cached in memory."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Callable

from agent_vault.proxy.ca import LocalCA

LEAF_LIFETIME = dt.timedelta(days=1)
#: a cached leaf this close to its end is replaced before it is used again
RENEW_BEFORE = dt.timedelta(hours=1)
MAX_CACHED = 1024


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeafCache:
    def __init__(
        self,
        ca: LocalCA,
        *,
        lifetime: dt.timedelta = LEAF_LIFETIME,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._ca = ca
        self._lifetime = lifetime
        self._clock = clock
        self._cache: OrderedDict[str, tuple[ssl.SSLContext, dt.datetime]] = OrderedDict()

    def context_for(self, host: str) -> ssl.SSLContext:
        now = self._clock()
        cached = self._cache.get(host)
        if cached is not None and cached[1] - now > RENEW_BEFORE:
            self._cache.move_to_end(host)
            return cached[0]
        leaf = self._ca.issue(host, now=now, lifetime=self._lifetime)
        context = self._server_context(leaf.pem)
        self._cache[host] = (context, leaf.not_after)
        if len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return context

    def _server_context(self, pem: bytes) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        # ssl loads a certificate chain from a file only: a private file beside the CA, gone at once
        fd, path = tempfile.mkstemp(prefix=".leaf-", dir=self._ca.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            context.load_cert_chain(path)
        finally:
            os.unlink(path)
        return context
