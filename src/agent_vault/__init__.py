"""agent-vault: a human between AI coding agents and your secrets."""

__version__ = "0.1.0"
