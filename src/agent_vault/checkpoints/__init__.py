"""Signed checkpoints of the audit log, sent off this machine, and the checks that read them back.

`key` (the Ed25519 signing key in the state dir), `record` (a checkpoint and a heartbeat: canonical
bytes, signature, JSON form), `facts` (what a checkpoint attests, read from the state files), `s3`
(talking to a bucket), `sinks` (where checkpoints go, and their outboxes), `schedule` (the
`Checkpointer`: every N rows, every M minutes, at shutdown, and the heartbeat), `sources` (reading
checkpoints back from a file, a directory or a bucket), `watching` (gaps, rollbacks, forks, bad
signatures in what arrives) and `verification` (audit.db and state.db against the checkpoints).
See docs/checkpoints.md for what they prove and what they do not.
"""
