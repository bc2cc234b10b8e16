#!/usr/bin/env python3
"""The credential-injecting proxy (issue 13): added latency, throughput and memory.

Three processes on this machine's cores: a TLS upstream (asyncio, fixed answer), the proxy
(`agent_vault.proxy.ProxyServer`, injecting a placeholder and scrubbing every response), and this
script as the client. Every request carries the placeholder, so each proxied one is injected,
approved (the hook answers at once) and scrubbed: the full path, not a pass-through.

1. Added latency: the same keep-alive client, one request at a time, alternately direct to the
   upstream and through the proxy (CONNECT + TLS interception), p50/p99 of each and the difference.
2. Requests/s through one proxy: 16 keep-alive connections from an asyncio client for a few
   seconds; also the proxy's own CPU time per request (its capacity per core).
3. Memory: the proxy's resident set idle, and with 100 open client connections (each with its
   upstream connection kept alive).

Usage: .venv/bin/python bench/proxy.py [--quick] [--json PATH]
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as b

sys.path.insert(0, str(b.ROOT))
from tests.proxy.upstream_certs import make_upstream_certs

HOST = "bench.test"
VALUE = "sk_test_fake_bench_value_000000000000"
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n" + b'{"ok": true, "n": 12345678}'
)


# -- the upstream process ------------------------------------------------------------------------------


async def _upstream_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        writer.close()


async def serve_upstream(cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(_upstream_conn, "127.0.0.1", 0, ssl=context, backlog=512)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.Event().wait()


# -- the proxy process ---------------------------------------------------------------------------------


async def serve_proxy(ca_dir: str, upstream_ca: str) -> None:
    from agent_vault.domain.secret import SecretValue
    from agent_vault.proxy import Decision, LocalCA, Placeholders, ProxyConfig, ProxyHooks, ProxyServer, ProxyUse

    async def approve(use: ProxyUse) -> Decision:
        return Decision.ALLOW

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    registry = Placeholders()
    placeholder = registry.add("bench/KEY", SecretValue(VALUE), hosts=[HOST])
    context = ssl.create_default_context(cafile=upstream_ca)
    context.set_alpn_protocols(["http/1.1"])
    config = ProxyConfig(allow_private=frozenset({HOST}), upstream_ssl=context)
    server = ProxyServer(
        ca=LocalCA.load_or_create(Path(ca_dir)),
        placeholders=registry,
        hooks=ProxyHooks(approve),
        config=config,
        resolver=resolve,
    )
    port = await server.start()
    print(json.dumps({"port": port, "token": server.token, "placeholder": placeholder.text}), flush=True)
    await asyncio.Event().wait()


# -- the client side -----------------------------------------------------------------------------------


def spawn(*args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def direct_connection(port: int, upstream_ca: Path) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=str(upstream_ca)))


def proxied_connection(proxy: dict[str, Any], upstream_port: int, ca_cert: Path) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", proxy["port"], context=ssl.create_default_context(cafile=str(ca_cert))
    )
    conn.set_tunnel(HOST, upstream_port, headers={"Proxy-Authorization": _proxy_auth(proxy["token"])})
    return conn


def _proxy_auth(token: str) -> str:
    return "Basic " + base64.b64encode(f"agent-vault:{token}".encode()).decode()


def timed_get(conn: http.client.HTTPSConnection, placeholder: str) -> float:
    started = time.perf_counter()
    conn.request("GET", "/v1/balance?limit=3", headers={"Authorization": f"Bearer {placeholder}"})
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    assert response.status == 200 and VALUE.encode() not in body, response.status
    return elapsed * 1000


def latency(report: b.Report, proxy: dict[str, Any], upstream_port: int, files: tuple[Path, Path], n: int) -> None:
    direct = direct_connection(upstream_port, files[0])
    proxied = proxied_connection(proxy, upstream_port, files[1])
    for _ in range(50):
        timed_get(direct, proxy["placeholder"]), timed_get(proxied, proxy["placeholder"])
    samples: dict[str, list[float]] = {"direct": [], "proxied": []}
    for _ in range(n):
        samples["direct"].append(timed_get(direct, proxy["placeholder"]))
        samples["proxied"].append(timed_get(proxied, proxy["placeholder"]))
    direct_fig = report.add("direct", "one keep-alive request, direct to the upstream", samples["direct"])
    proxied_fig = report.add("proxied", "the same request through the proxy (injected + scrubbed)", samples["proxied"])
    for stat in ("median", "p99"):
        added = proxied_fig.stats[stat] - direct_fig.stats[stat]
        report.value(f"added_{stat}", f"added latency per request, {stat}", added, "ms")


async def _tunnel(
    proxy: dict[str, Any], upstream_port: int, ca_cert: Path
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A CONNECT tunnel through the proxy with TLS to its leaf for HOST, as a client opens one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy["port"])
    auth = _proxy_auth(proxy["token"])
    writer.write(
        f"CONNECT {HOST}:{upstream_port} HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: {auth}\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    await writer.start_tls(ssl.create_default_context(cafile=str(ca_cert)), server_hostname=HOST)
    return reader, writer


def _request(proxy: dict[str, Any], upstream_port: int) -> bytes:
    auth = f"Authorization: Bearer {proxy['placeholder']}"
    return f"GET /v1/balance HTTP/1.1\r\nHost: {HOST}:{upstream_port}\r\n{auth}\r\n\r\n".encode()


async def _answer(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    await reader.readexactly(int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]))


async def _load_worker(
    proxy: dict[str, Any], upstream_port: int, ca_cert: Path, until: float, counts: list[int]
) -> None:
    reader, writer = await _tunnel(proxy, upstream_port, ca_cert)
    request = _request(proxy, upstream_port)
    while time.perf_counter() < until:
        writer.write(request)
        await _answer(reader)
        counts[0] += 1
    writer.close()


async def _load(proxy: dict[str, Any], upstream_port: int, ca_cert: Path, seconds: float, connections: int) -> int:
    counts = [0]
    until = time.perf_counter() + seconds
    await asyncio.gather(*(_load_worker(proxy, upstream_port, ca_cert, until, counts) for _ in range(connections)))
    return counts[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def throughput(
    report: b.Report, proxy: dict[str, Any], pid: int, upstream_port: int, ca_cert: Path, seconds: float
) -> None:
    asyncio.run(_load(proxy, upstream_port, ca_cert, 0.5, 16))  # warm-up (leaf certificate, pools)
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    done = asyncio.run(_load(proxy, upstream_port, ca_cert, seconds, 16))
    wall = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    report.value("requests_per_s", "requests/s through one proxy, 16 keep-alive connections", done / wall, "req/s")
    report.value("proxy_cpu_per_request", "proxy CPU time per request", cpu / done * 1000, "ms")
    report.value(
        "proxy_capacity_per_core", "proxy capacity per core (1 / CPU per request)", done / cpu if cpu else 0, "req/s"
    )


async def _hold(proxy: dict[str, Any], upstream_port: int, ca_cert: Path, count: int) -> list[asyncio.StreamWriter]:
    held = []
    for _ in range(count):
        reader, writer = await _tunnel(proxy, upstream_port, ca_cert)
        writer.write(_request(proxy, upstream_port))
        await _answer(reader)
        held.append(writer)
    return held


def memory(report: b.Report, proxy: dict[str, Any], pid: int, upstream_port: int, ca_cert: Path, count: int) -> None:
    idle = rss_mib(pid)

    async def measure() -> float:
        held = await _hold(proxy, upstream_port, ca_cert, count)
        await asyncio.sleep(0.5)
        rss = rss_mib(pid)
        for writer in held:
            writer.close()
        return rss

    loaded = asyncio.run(measure())
    report.value("rss_idle", "proxy resident memory, after the runs above, idle", idle, "MiB")
    report.value("rss_open", f"proxy resident memory with {count} open connections", loaded, "MiB")
    report.value(
        "rss_per_connection", "per open connection (client + upstream TLS)", (loaded - idle) / count * 1024, "KiB"
    )


def main() -> None:
    args = b.parse_args(__doc__ or "")
    b.exit_on_sigterm()
    report = b.Report("proxy", args.quick)
    with tempfile.TemporaryDirectory() as temp:
        tmp = Path(temp)
        upstream_ca, cert, key = make_upstream_certs(tmp, [HOST])
        upstream_proc, upstream = spawn("--role", "upstream", str(cert), str(key))
        proxy_proc, proxy = spawn("--role", "proxy", str(tmp / "ca"), str(upstream_ca))
        try:
            ca_cert = tmp / "ca" / "ca.pem"
            latency(report, proxy, upstream["port"], (upstream_ca, ca_cert), 200 if args.quick else 3000)
            throughput(report, proxy, proxy_proc.pid, upstream["port"], ca_cert, 1.0 if args.quick else 5.0)
            memory(report, proxy, proxy_proc.pid, upstream["port"], ca_cert, 100)
        finally:
            for proc in (proxy_proc, upstream_proc):
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
    report.save(args.json)


def role(argv: list[str]) -> None:
    if argv[0] == "upstream":
        asyncio.run(serve_upstream(argv[1], argv[2]))
    else:
        asyncio.run(serve_proxy(argv[1], argv[2]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        role(sys.argv[2:])
    else:
        main()
