"""`agent-vault agents add|list|revoke`: a team broker's agents, managed on the broker host (docs/team.md).

Whoever can open the broker's storage (its state dir, or the `[store] url` database its settings name) may
run these: the broker's administrator. `add` prints the new agent's token once, on stdout, and keeps only its
hash; `list` never shows a token; adding and revoking are audited (`agent_added`, `agent_revoked`). A running
broker sees a change at the agent's next call: it reads the agents from the store on every call.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime

from agent_vault.broker.recorder import Recorder
from agent_vault.cli.table import table
from agent_vault.configuration.settings import UserSettings, load_settings, settings_path, storage
from agent_vault.domain.errors import AgentVaultError, SettingsError
from agent_vault.home import StatePaths, state_paths
from agent_vault.store.agents import Agent, AgentLimits, token_check, token_digest
from agent_vault.store.engines import open_agents


def add_agent(name: str, owner: str, max_pending: int | None, per_minute: float | None) -> str:
    """Add the agent; the text to print, its token in it (the only time it is shown)."""
    paths = state_paths()
    settings = _settings(paths)
    where = storage(paths, settings)
    with where.state() as state:
        records = open_agents(state)
        agent, token = records.add_agent(name, owner, AgentLimits(max_pending, per_minute))
        try:
            record_agent_change(paths, settings, "agent_added", agent, via="agents add", token=token)
        except BaseException:  # an agent the audit does not know of must not work: take it back
            records.revoke_agent(agent.name)
            raise
    lines = [
        f"agent {agent.name} added (owner {agent.owner}, id {agent.id}; limits: {agent.limits.describe()}).",
        "Its token, shown this once (only its hash is kept; if it is lost, revoke the agent and add it again):",
        "",
        f"  {token}",
        "",
        "On the agent's machine, in its MCP client's env block (docs/team.md):",
        f"  AGENT_VAULT_URL={_url(settings)}",
        "  AGENT_VAULT_TOKEN=<the token above>   (or AGENT_VAULT_TOKEN_FILE=<a file only its user reads>)",
    ]
    if settings.team.cert_file is None and not settings.team.behind_proxy:
        cert = paths.root / "team-tls" / "cert.pem"
        lines.append(f"  AGENT_VAULT_CA=<a copy of {cert}>   (the certificate the broker made; check its fingerprint)")
    if settings.team.listen is None:
        lines.append(f"This broker has no team listener yet: set [team] listen and config in {settings_path(paths)}.")
    return "\n".join(lines)


def list_agents(as_json: bool = False) -> str:
    paths = state_paths()
    with storage(paths, _settings(paths)).state() as state:
        agents = open_agents(state).agents()
    if as_json:
        return json.dumps([_view(a) for a in agents], indent=2)
    if not agents:
        return "no agents (add one with `agent-vault agents add NAME --owner PERSON`)"
    rows = [
        [a.name, a.owner, _when(a.created_at), _when(a.last_seen_at) or "never", _when(a.revoked_at) or "-",
         a.limits.describe(), a.id]
        for a in agents
    ]  # fmt: skip
    return table(["NAME", "OWNER", "CREATED", "LAST SEEN", "REVOKED", "LIMITS", "ID"], rows, caps={0: 64, 1: 64})


def revoke_agent(name: str) -> str:
    paths = state_paths()
    settings = _settings(paths)
    with storage(paths, settings).state() as state:
        agent = open_agents(state).revoke_agent(name)
    if agent is None:
        raise AgentVaultError(f"no live agent is named {name!r}; see `agent-vault agents list`")
    record_agent_change(paths, settings, "agent_revoked", agent, via="agents revoke")
    return (
        f"agent {agent.name} (owner {agent.owner}) revoked: its token is refused from its next call on, "
        "and its open sessions end then."
    )


def _settings(paths: StatePaths) -> UserSettings:
    try:
        return load_settings(paths)
    except SettingsError as exc:
        raise SettingsError(f"{exc}\nagents are kept where the broker's settings say; fix them first.") from None


def record_agent_change(
    paths: StatePaths, settings: UserSettings, event: str, agent: Agent, via: str, token: str | None = None
) -> None:
    """Audit an agent added or revoked (`agent_added`, `agent_revoked`): who, whose, which limits, and for an
    added one a check of its token (`token_check`: a digest of the stored digest, never the token), which the
    team listener requires before it takes the agent's word (team/gate.py)."""
    detail: dict[str, object] = {"agent": agent.name, "owner": agent.owner, "agent_id": agent.id, "via": via}
    if event == "agent_added":
        detail["limits"] = agent.limits.to_json()
        if token is not None:
            detail["token_check"] = token_check(token_digest(token))
    with storage(paths, settings).audit() as log:
        Recorder(log).write(event, detail)  # the broker's writer, on this command's own log handle


def _url(settings: UserSettings) -> str:
    team = settings.team
    if team.behind_proxy:
        return "https://<your reverse proxy's address>"
    host = team.host_names[0] if team.host_names else socket.getfqdn()
    port = team.listen.rpartition(":")[2] if team.listen is not None else "<port of [team] listen>"
    return f"https://{host}:{port}"


def _view(agent: Agent) -> dict[str, object]:
    return {
        "name": agent.name,
        "owner": agent.owner,
        "id": agent.id,
        "created_at": agent.created_at.isoformat(),
        "last_seen_at": agent.last_seen_at.isoformat() if agent.last_seen_at else None,
        "revoked_at": agent.revoked_at.isoformat() if agent.revoked_at else None,
        "limits": agent.limits.to_json(),
    }


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")
