"""Reachability from outside: no tunnel, ngrok in-process, the user's tunnel command, or a fixed public URL.
The public host is on the Host allowlist only while its tunnel is up; local approval always works."""
