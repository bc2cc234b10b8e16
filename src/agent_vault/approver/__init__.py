"""The approver's factors (passkeys, authenticator codes) and the proofs they give."""
