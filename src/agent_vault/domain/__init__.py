"""The ground floor: what every layer may use and nothing of ours sits below.

- `request`: the access request, who asked, its lifecycle (statuses) and operations;
- `grammar`: what an agent may send (secret names, reasons, values to write);
- `errors`: the error tree and the codes that cross the socket;
- `secret`: the redacting wrapper a value travels in until its last hop;
- `untrusted`: agent-written text made safe to show a person;
- `wire`: what crosses the socket between a front door and the broker (shared by both sides).

These modules import only the standard library and each other (enforced by import-linter, see
pyproject.toml `[tool.importlinter]`).
"""
