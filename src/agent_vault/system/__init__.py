"""System mode: the broker as its own system user, out of reach of an agent running as you.

`layout` (where an install's files are, under an optional prefix), `trust` (a path only root, or
the broker's user, can change), `record` (what an install records: its record in the config dir,
and the front-door markers at a fixed root-owned path), `files` (writing them atomically with owner
and mode), `accounts` (system users and groups), `units` (the systemd unit), `macos` (the launchd
plist and account commands), `install` (`agent-vault system install` and `uninstall`).
See docs/hardened.md.
"""
