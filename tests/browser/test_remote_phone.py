"""A phone approves through the public tunnel host. The broker starts a tunnel command (a tiny TLS
relay standing in for cloudflared or `ssh -R`: it prints its https URL and passes bytes through, so
the Host header is the tunnel's), the push notice links to that URL, and chromium, with the name
mapped to loopback, opens the link, types the authenticator code and approves. Another host name
through the same tunnel gets 421."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from agent_vault.domain.request import Status
from agent_vault.home import StatePaths
from tests.browser.conftest import ARGS, CHROMIUM, PHONE, BackgroundBroker
from tests.certs import self_signed
from tests.channels.helpers import Stub, make_stub, toml_list, write_settings
from tests.conftest import FAKE_KEY, StepClock, enrol_totp

__all__ = ["make_stub"]  # a fixture used here
PUBLIC = "tunnel.example.test"
# The phone resolves *.example.test to this machine, as public DNS resolves the tunnel's name to its edge;
# the self-signed certificate stands in for the edge's real one.
PHONE_ARGS = [
    *ARGS,
    "--host-resolver-rules=MAP *.example.test 127.0.0.1",
    "--no-proxy-server",
    "--ignore-certificate-errors",
]

TLS_RELAY = """
import asyncio, ssl, sys
cert, key, target = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()

async def handle(client_r, client_w):
    upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(pipe(client_r, upstream_w), pipe(upstream_r, client_w), return_exceptions=True)

async def main():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    print("INF tunnel ready at https://tunnel.example.test:%d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_approve_on_a_phone_through_the_public_tunnel_host(
    home: StatePaths, tmp_path: Path, step_clock: StepClock, chromium: Any, make_stub: Callable[..., Stub]
) -> None:
    stub = make_stub()
    relay = tmp_path / "tls_relay.py"
    relay.write_text(TLS_RELAY)
    cert, key = self_signed(tmp_path, PUBLIC, [x509.DNSName(f"*.{PUBLIC.split('.', 1)[1]}")])
    write_settings(
        home,
        f"""
[notify]
coalesceSeconds = 0
minIntervalSeconds = 0
[[channels]]
type = "apprise"
name = "phone"
urls = ["{stub.ntfy_url()}"]
[tunnel]
type = "command"
command = {toml_list([sys.executable, str(relay), str(cert), str(key), "{port}"])}
urlPattern = 'https://{PUBLIC}:[0-9]+'
""",
    )
    enrol_totp(home)
    broker = BackgroundBroker(home, step_clock, tmp_path / "project")
    phone_browser = chromium.browser_type.launch(executable_path=CHROMIUM, args=PHONE_ARGS)
    try:
        remote = broker.server.remote
        public = wait_until(remote.public_url, "the tunnel")
        assert public.startswith(f"https://{PUBLIC}:")

        req = broker.ask(reason="deploy from the cloud VM")
        posted = wait_until(lambda: stub.posts, "the push notice")[0]
        link = posted.headers["X-Click"]
        assert link == f"{public}/approve/{req.id}"
        assert posted.headers["X-Actions"] == f"view, View, {link}, clear=true"

        page = phone_browser.new_context(**PHONE).new_page()
        page.goto(link)  # the person taps the notification on the phone
        assert page.locator(".code").inner_text() == req.match_code
        assert broker.status(req.id) is Status.PENDING  # opening the link approved nothing
        page.fill("#code", step_clock.next_code())
        page.tap("#approve-code")
        page.wait_for_selector(".status.approved", timeout=15_000)
        assert page.url == link
        assert broker.status(req.id) is Status.APPROVED
        approved = broker.server.broker.audit.list(request_id=req.id, event="approved")
        assert approved and str(approved[0].detail["factor"]).startswith("totp:")
        got = broker.call(broker.server.broker.wait(broker.session, req.id, 0))
        assert got.status == "delivered" and got.values["API_KEY"].reveal() == FAKE_KEY

        port = public.rsplit(":", 1)[1]
        other = page.goto(f"https://other.example.test:{port}/approve/{req.id}")
        assert other is not None and other.status == 421  # through the tunnel, but not the tunnel's name
        assert FAKE_KEY not in page.content()
    finally:
        phone_browser.close()
        broker.stop()
