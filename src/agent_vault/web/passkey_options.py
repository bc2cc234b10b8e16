"""The WebAuthn options the pages' passkey script fetches before it asks the authenticator."""

from __future__ import annotations

from starlette.responses import Response


def options_response(**blobs: str) -> Response:
    """WebAuthn options for the page script: {"get": ..., "create": ...}, each already JSON text."""
    body = "{" + ", ".join(f'"{key}": {blob}' for key, blob in blobs.items()) + "}"
    return Response(body, media_type="application/json")
