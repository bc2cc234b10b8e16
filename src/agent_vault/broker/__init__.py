"""The broker process's core: the use cases, windows, runs, the audit recorder and the socket API."""
