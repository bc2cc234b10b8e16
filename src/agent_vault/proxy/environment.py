"""The variables a child needs to go through the proxy and trust its certificates."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: local addresses stay direct: a local server only ever sees placeholders
DEFAULT_NO_PROXY = ("localhost", "127.0.0.1", "::1")


def child_env(
    proxy_url: str, ca_cert: Path, ca_bundle: Path, *, no_proxy: Iterable[str] = DEFAULT_NO_PROXY
) -> dict[str, str]:
    """Exports for a child process.

    Variables that *replace* a runtime's trust store get the bundle (this CA plus the system's
    roots); those that *add* to it get the CA alone. curl reads only the lower-case http_proxy, so
    both cases are set.
    """
    bypass = ",".join(no_proxy)
    bundle, cert = str(ca_bundle), str(ca_cert)
    return {
        "HTTPS_PROXY": proxy_url,
        "HTTP_PROXY": proxy_url,
        "https_proxy": proxy_url,
        "http_proxy": proxy_url,
        "NO_PROXY": bypass,
        "no_proxy": bypass,
        "SSL_CERT_FILE": bundle,
        "REQUESTS_CA_BUNDLE": bundle,
        "CURL_CA_BUNDLE": bundle,
        "GIT_SSL_CAINFO": bundle,
        "NODE_EXTRA_CA_CERTS": cert,
        "DENO_CERT": cert,
    }
