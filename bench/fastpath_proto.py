#!/usr/bin/env python3
"""What-if prototype for the cold-start proposal (not product code): a front door that answers the
handshake and tools/list from replies recorded from the real front door, while the MCP SDK and
agent_vault.mcp_server load in a background thread.

Used by cold_start.py only to size the gain: it answers initialize, server/discover and
tools/list, and says on stderr when the real server code finished loading ("sdk-ready"); it does
not serve tool calls. Usage: python bench/fastpath_proto.py CACHE.json
"""

import json
import sys
import threading
import time

T0 = time.perf_counter()


def load_sdk() -> None:
    import agent_vault.mcp_server  # noqa: F401 (the import is the work being overlapped)

    sys.stderr.write(f"sdk-ready {time.perf_counter() - T0:.4f}\n")
    sys.stderr.flush()


def main() -> None:
    threading.Thread(target=load_sdk, daemon=True).start()
    with open(sys.argv[1]) as f:
        cache = json.load(f)
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        message = json.loads(line)
        method = message.get("method")
        if "id" not in message or method not in cache:
            continue  # notifications; anything else would go to the real server once loaded
        reply = {"jsonrpc": "2.0", "id": message["id"], "result": cache[method]}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
