"""Persistent broker state: requests and approval windows."""
