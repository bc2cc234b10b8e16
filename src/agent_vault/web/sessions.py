"""Signed-in approver sessions for the dashboard: short-lived, in memory, HttpOnly + SameSite=Strict.

Only a hash of each session token is kept, and a broker restart signs everyone out. The
cookie cannot carry the `__Host-` prefix on plain http://localhost: that prefix requires the
Secure attribute, which browsers other than Chrome and Firefox refuse on http, so the cookie
would silently vanish. Behind https the prefix and Secure are used.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

from starlette.responses import Response

SESSION_TTL = 600.0
MAX_SESSIONS = 64


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApproverSessions:
    def __init__(self, secure: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.secure = secure
        self.cookie = "__Host-av_session" if secure else "av_session"
        self._clock = clock
        self._live: dict[str, float] = {}

    def create(self) -> str:
        now = self._clock()
        for key in [k for k, end in self._live.items() if end <= now]:
            del self._live[key]
        while len(self._live) >= MAX_SESSIONS:
            self._live.pop(next(iter(self._live)))
        token = secrets.token_urlsafe(32)
        self._live[_key(token)] = now + SESSION_TTL
        return token

    def valid(self, token: str | None) -> bool:
        # Looked up by hash, so the comparison never runs over the secret token itself.
        end = self._live.get(_key(token)) if token else None
        return end is not None and end > self._clock()

    def end(self, token: str | None) -> None:
        if token:
            self._live.pop(_key(token), None)

    def set_cookie(self, response: Response) -> None:
        """Start a session and hand its token to the browser (HttpOnly, SameSite=Strict, short-lived)."""
        response.set_cookie(
            self.cookie,
            self.create(),
            max_age=int(SESSION_TTL),
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )
