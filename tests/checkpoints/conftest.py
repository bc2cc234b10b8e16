"""Fixtures for the checkpoint tests: a real broker on a fake clock (shared with the channel tests)."""

from tests.channels.helpers import start_broker

__all__ = ["start_broker"]
