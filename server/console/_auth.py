"""Who is calling the console, and may they: the sidecar's bearer tokens and roles.

A request carries a token in an `Authorization: Bearer ...` header (scripts, tests), or a
browser logs in once with its token and gets an HttpOnly, SameSite=Strict session cookie (a
random id; the token itself is never stored in the browser). Pages need the role of the RPC
they stand for, read from `server.auth.PERMISSIONS`, so the console and gRPC cannot disagree.
A form that changes something (a review, logging out) also carries a CSRF token derived from
the session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from latentguard.server.auth import PERMISSIONS, Authenticator
from latentguard.server.config import TokenEntry

__all__ = ["COOKIE", "PAGE_PERMISSIONS", "Caller", "ConsoleAuth", "Refused"]

COOKIE = "lg_session"
MAX_SESSIONS = 10_000
"""Most browser logins kept at once; the oldest goes first."""

_RPC = "/latentguard.v1."
#: The role set of each console action: that of the RPC it stands for.
PAGE_PERMISSIONS: dict[str, frozenset[str]] = {
    "traces": PERMISSIONS[_RPC + "Traces/ListTraces"],
    "trace": PERMISSIONS[_RPC + "Traces/GetTrace"],
    "review": PERMISSIONS[_RPC + "Traces/ReviewTrace"],
    "alerts": PERMISSIONS[_RPC + "Traces/StreamAlerts"],
    "stats": PERMISSIONS[_RPC + "Traces/ListTraces"],
    "features": PERMISSIONS[_RPC + "Features/GetFeature"],
}


@dataclass(frozen=True)
class Caller:
    entry: TokenEntry
    session: str = ""
    """The browser session id; empty for a request that sent its token in a header."""

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def role(self) -> str:
        return self.entry.role

    def may(self, action: str) -> bool:
        return self.entry.role in PAGE_PERMISSIONS[action]


class Refused(Exception):
    """401 (no known token) or 403 (a token whose role may not)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConsoleAuth:
    def __init__(self, auth: Authenticator, session_s: float) -> None:
        self._auth = auth
        self._session_s = session_s
        self._sessions: OrderedDict[str, tuple[TokenEntry, float]] = OrderedDict()
        self._secret = secrets.token_bytes(32)

    def login(self, token: str) -> tuple[Caller, str] | None:
        """A new session for a known token: (caller, cookie value); None for an unknown one."""
        entry = self._auth.identify([("authorization", f"Bearer {token.strip()}")])
        if entry is None:
            return None
        sid = secrets.token_urlsafe(32)
        self._sessions[_digest(sid)] = (entry, time.monotonic() + self._session_s)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return Caller(entry, sid), sid

    def logout(self, caller: Caller) -> None:
        if caller.session:
            self._sessions.pop(_digest(caller.session), None)

    def identify(self, authorization: str | None, cookie: str | None) -> Caller | None:
        """The caller of a request: its Authorization header first, else its session."""
        if authorization:
            entry = self._auth.identify([("authorization", authorization)])
            return Caller(entry) if entry is not None else None
        if not cookie:
            return None
        key = _digest(cookie)
        found = self._sessions.get(key)
        if found is None:
            return None
        entry, expires = found
        if time.monotonic() > expires:
            del self._sessions[key]
            return None
        return Caller(entry, cookie)

    def require(self, caller: Caller | None, action: str) -> Caller:
        if caller is None:
            raise Refused(401, "log in with a bearer token (or send Authorization: Bearer ...)")
        if not caller.may(action):
            need = " or ".join(sorted(PAGE_PERMISSIONS[action]))
            raise Refused(403, f"this page needs role {need}; token {caller.name!r} has "
                          f"{caller.role}")
        return caller

    def csrf(self, caller: Caller) -> str:
        """The CSRF token of the caller's forms (empty for header callers, who need none:
        a browser never adds an Authorization header to another site's request)."""
        if not caller.session:
            return ""
        return hmac.new(self._secret, caller.session.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, caller: Caller, token: str) -> bool:
        return not caller.session or hmac.compare_digest(self.csrf(caller), token)


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()
