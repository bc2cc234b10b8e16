"""The approval web app served by the broker on loopback: pages a person taps."""
