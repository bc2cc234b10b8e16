"""The approver's side: factors and their proofs (passkeys, authenticator codes, recovery codes) and
the broker's live table of open requests. The request model itself is in `agent_vault.domain`."""
