"""The front door process: one per agent session, MCP over stdio, a client of the broker."""
