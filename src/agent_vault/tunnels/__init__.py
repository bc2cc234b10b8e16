"""Reachability from outside: no tunnel, ngrok in-process, a tunnel command the user names, or a fixed public URL.

The public host joins the approval pages' Host allowlist only while its tunnel is up; the
local pages always keep working, and a dropped tunnel never turns anything weaker on.
"""
