"""Real clients, driven as a program the agent runs would be: a subprocess with the proxy's exports."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass

from tests.proxy.harness import RunningProxy

CURL = "/usr/bin/curl"
NODE = "/usr/bin/node"
#: the interpreter running the tests (it has requests and httpx2), however the suite was started
PYTHON = sys.executable


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: str


def child_env(proxy: RunningProxy) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return {**base, **proxy.env}


def curl(proxy: RunningProxy | None, url: str, *args: str, env: dict[str, str] | None = None) -> Reply:
    """curl with the proxy's exports (or none), headers and body parsed."""
    done = curl_run(proxy, url, *args, env=env)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return parse_reply(done.stdout)


def curl_run(
    proxy: RunningProxy | None, url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    run_env = env if env is not None else child_env(proxy) if proxy else None
    return subprocess.run(
        [CURL, "-sS", "-i", "--max-time", "20", *args, url], env=run_env, capture_output=True, timeout=30
    )


def parse_reply(raw: bytes) -> Reply:
    """The last response in curl -i output (after a CONNECT's 200 and any 1xx)."""
    while True:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if (status == 200 and b"Connection established" in head.split(b"\r\n", 1)[0]) or status < 200:
            raw = rest
            continue
        break
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(status, headers, rest.decode("utf-8", "replace"))


def python_client(proxy: RunningProxy, library: str, url: str, headers: dict[str, str]) -> str:
    """`requests` or `httpx2` in a child process using only the exports: prints status and body."""
    code = (
        f"import sys, {library} as lib\n"
        f"r = lib.get({url!r}, headers={headers!r}, timeout=20)\n"
        "sys.stdout.write(str(r.status_code) + '\\n' + r.text)\n"
    )
    done = subprocess.run([PYTHON, "-c", code], env=child_env(proxy), capture_output=True, timeout=60, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


NODE_THROUGH_PROXY = r"""
// Node 20's fetch ignores HTTPS_PROXY and undici's ProxyAgent is not importable offline, so this
// opens the CONNECT tunnel itself, as proxy agents do, and trusts the CA from NODE_EXTRA_CA_CERTS.
const http = require('http'), https = require('https'), tls = require('tls');
const proxy = new URL(process.env.HTTPS_PROXY);
const target = new URL(process.argv[1]);
const user = decodeURIComponent(proxy.username) + ':' + decodeURIComponent(proxy.password);
const auth = 'Basic ' + Buffer.from(user).toString('base64');
const req = http.request({host: proxy.hostname, port: proxy.port, method: 'CONNECT',
  path: `${target.hostname}:${target.port}`, headers: {'Proxy-Authorization': auth}});
req.on('connect', (res, socket) => {
  if (res.statusCode !== 200) { console.log(res.statusCode); process.exit(0); }
  const secure = tls.connect({socket, servername: target.hostname});
  const get = https.request({host: target.hostname, port: target.port, path: target.pathname + target.search,
    headers: JSON.parse(process.argv[2]), createConnection: () => secure}, (r) => {
      let body = ''; r.on('data', (d) => body += d); r.on('end', () => { console.log(r.statusCode + '\n' + body); });
  });
  get.on('error', (e) => { console.error(e.message); process.exit(2); });
  get.end();
});
req.on('error', (e) => { console.error(e.message); process.exit(2); });
req.end();
"""

NODE_FETCH = r"""
fetch(process.argv[1], {headers: JSON.parse(process.argv[2])})
  .then(async (r) => console.log(r.status + '\n' + await r.text()))
  .catch((e) => { console.error(String(e.cause || e)); process.exit(2); });
"""


def node(script: str, url: str, headers: dict[str, str], env: dict[str, str]) -> str:
    import json

    done = subprocess.run(
        [NODE, "-e", script, url, json.dumps(headers)], env=env, capture_output=True, timeout=60, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def tunnel(proxy: RunningProxy, host: str, port: int) -> ssl.SSLSocket:
    """A raw TLS socket through a CONNECT tunnel, trusting the proxy's CA (for WebSocket tests)."""
    raw = socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10)
    token = proxy.server.token
    import base64

    auth = base64.b64encode(f"agent-vault:{token}".encode()).decode()
    raw.sendall(
        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += raw.recv(1024)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    context = ssl.create_default_context(cafile=str(proxy.server.ca.cert_path))
    return context.wrap_socket(raw, server_hostname=host)
