"""Fixtures for the channel tests: the recording HTTP stub and a broker on a fake clock."""

from tests.channels.helpers import make_stub, start_broker

__all__ = ["make_stub", "start_broker"]
