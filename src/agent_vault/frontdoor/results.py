"""What each tool call answers, as the plain JSON of an MCP `CallToolResult`.

Built from the standard library only, so that the tools on the MCP SDK (tools.py, which turn these
into the SDK's result model) and the fast path that answers hot calls without the SDK (fastpath.py)
give one answer from one place. Keys are the wire's (`structuredContent`, `isError`, which the SDK
writes even when false), in the order the SDK writes them, so that the fast path's reply is the SDK's
byte for byte (tests/frontdoor/test_fastpath.py).
"""

from __future__ import annotations

import json
from typing import Any

from agent_vault.domain.errors import AgentVaultError
from agent_vault.domain.wire import OutcomeView, RunView

JsonObject = dict[str, Any]


def _text_result(text: str, structured: JsonObject, *, error: bool = False) -> JsonObject:
    return {"content": [{"text": text, "type": "text"}], "isError": error, "structuredContent": structured}


def error_result(exc: AgentVaultError) -> JsonObject:
    """A broker or session error as the tool's isError result (the agent reads the message and the fix)."""
    return _text_result(str(exc), {"status": "error", "code": exc.code, "message": str(exc)}, error=True)


def listing_result(listing: dict[str, list[str]]) -> JsonObject:
    parts: list[str] = []
    for vault, names in listing.items():  # one join per vault: a listing of 10,000 names is on a hot path
        parts.append(f"[{vault}]\n" + ("  - " + "\n  - ".join(names) if names else "  (no secrets)") + "\n\n")
    return _text_result("".join(parts).rstrip() + "\n", {"vaults": listing})


def answer_result(answer: OutcomeView, single: bool) -> JsonObject:
    status = answer["status"]
    if status == "ran":
        return _ran_result(answer["run"])
    if status == "responded":
        return _http_result(answer["http"])
    if status == "running":  # running, pending and written always come with their request
        req = answer["request"]
        text = (
            f"The command was approved and is still running (request id {req['id']}). Call "
            "await_approval with this request_id to collect its output; do not run it again."
        )
        return _text_result(text, {"status": "running", "requestId": req["id"], "progress": answer.get("progress")})
    if status == "pending":
        req = answer["request"]
        text = (
            f"Still pending: the user has not decided yet. Request id {req['id']}, match code "
            f"{req['match_code']}. Approval page: {answer['url']} . Call await_approval with this "
            "request_id to keep waiting; do not request the secret again."
        )
        structured = {"status": "pending", "requestId": req["id"], "matchCode": req["match_code"],
                      "url": answer["url"], "expiresAt": req["expires_at"]}  # fmt: skip
        return _text_result(text, structured)
    if status == "written":
        req = answer["request"]
        names = ", ".join(req["names"])
        text = f"Stored {names} in vault {req['vault']!r}. Refer to it by name; the value was not echoed."
        return _text_result(text, {"status": "written", "vault": req["vault"], "names": req["names"]})
    values: dict[str, str] = answer.get("values") or {}
    text = next(iter(values.values())) if single and len(values) == 1 else json.dumps(values, ensure_ascii=False)
    return _text_result(text, {"status": "approved", "values": values, "windowEnd": answer.get("window_end")})


def _http_result(http: dict[str, Any]) -> JsonObject:
    headers = "".join(f"{k}: {v}\n" for k, v in http["headers"].items())
    cut = "\nnote: the body was cut at 256 KiB" if http["truncated"] else ""
    text = f"HTTP {http['status']} {http['reason']}\n{headers}\n{http['body']}{cut}"
    structured = {"status": "responded", "httpStatus": http["status"], "headers": http["headers"],
                  "body": http["body"], "truncated": http["truncated"]}  # fmt: skip
    return _text_result(text, structured)


def _ran_result(run: RunView) -> JsonObject:
    notes = []
    if run["timed_out"]:
        notes.append("the command hit its timeout and was stopped (with everything it started)")
    if run["truncated"]:
        notes.append("output was cut at the size limit")
    if run["masked"]:
        notes.append(
            f"the output contained {', '.join(run['masked'])} (shown as [masked:NAME]); this was reported to the "
            "user as a possible leak and its approval window was closed. Do not try to reveal it"
        )
    code = run["exit_code"]
    text = f"exit code: {code if code is not None else 'none (not started or killed)'}\n"
    text += "".join(f"note: {n}\n" for n in notes)
    text += f"--- stdout ---\n{run['stdout']}"
    text += f"{'' if run['stdout'].endswith(chr(10)) or not run['stdout'] else chr(10)}--- stderr ---\n{run['stderr']}"
    structured = {
        "status": "ran",
        "exitCode": code,
        "stdout": run["stdout"],
        "stderr": run["stderr"],
        "timedOut": run["timed_out"],
        "truncated": run["truncated"],
        "masked": run["masked"],
    }
    return _text_result(text, structured)
