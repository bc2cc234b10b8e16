"""Synchronizer tokens for forms: a random per-browser cookie, and a per-form HMAC of it.

The form token is bound to the browser's cookie and to the purpose (for example one request
id), so a token scraped from one page or one browser is useless anywhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

COOKIE = "av_csrf"


class CsrfTokens:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(32)

    def token(self, cookie: str, purpose: str) -> str:
        mac = hmac.new(self._key, f"{cookie}\x00{purpose}".encode(), hashlib.sha256)
        return mac.hexdigest()

    def check(self, cookie: str | None, purpose: str, token: str | None) -> bool:
        if not cookie or not token:
            return False
        return hmac.compare_digest(self.token(cookie, purpose), token)
