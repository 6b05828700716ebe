"""The console's sessions: what a signed-in browser holds, and the tokens that guard changes.

Signing in exchanges a credential for a session; the credential itself is never stored, in the
browser or on the server. The session is a cookie whose value is a signed document (HMAC-SHA256
over its JSON, with ``console_secret``): who signed in (a tenant's key id, or an operator's
subject), when it expires, and a random nonce. Each request checks the signature and the expiry
against the injected clock; a tenant's key is looked up again on every page (``base.py``), so
revoking it ends the session at once, and signing out records the nonce in the directory
(``end_session``), so a copy of the cookie is refused by every process until it expires.

Every change is a POST carrying a CSRF token: HMAC of the session's nonce, so it is bound to
the one session and cannot be computed without the secret. The sign-in form, which has no
session yet, carries a token bound to a short-lived pre-session cookie the same way (a site
cannot sign a victim in to its own account).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass

from tenant_gateway.clock import Clock

__all__ = ["PRESESSION_LIFETIME", "Session", "SessionSigner", "console_key"]

PRESESSION_LIFETIME = 3600.0
"""Seconds a sign-in form stays usable."""
_VALUE_MAX = 2048
"""A cookie value longer than this is not one of ours: refused before any work."""


def console_key(console_secret: str | None, admin_jwt_secret: str | None) -> bytes:
    """The signing key: ``console_secret``; else derived from the operator token secret (so
    every worker that verifies operators signs alike); else random for this process."""
    if console_secret is not None:
        return hashlib.sha256(b"tenant-gateway console\0" + console_secret.encode()).digest()
    if admin_jwt_secret is not None:
        return hmac.new(admin_jwt_secret.encode(), b"tenant-gateway console", "sha256").digest()
    return secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class Session:
    kind: str
    """``tenant`` or ``operator``."""
    expires: int
    """Unix time."""
    nonce: str
    tenant_id: str | None = None
    key_id: str | None = None
    subject: str | None = None
    """The operator token's subject."""

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    def __init__(self, key: bytes, clock: Clock, lifetime: float) -> None:
        self._key = key
        self._clock = clock
        self.lifetime = lifetime

    def _mac(self, purpose: str, data: bytes) -> bytes:
        return hmac.new(self._key, purpose.encode() + b"\0" + data, "sha256").digest()

    def _seal(self, purpose: str, document: dict[str, object]) -> str:
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        return _b64(body) + "." + _b64(self._mac(purpose, body))

    def _open(self, purpose: str, value: str | None) -> dict[str, object] | None:
        if not value or len(value) > _VALUE_MAX or value.count(".") != 1:
            return None
        body_text, mac_text = value.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, self._mac(purpose, body)):
            return None
        try:
            document = json.loads(body)
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        expires = document.get("expires")
        if type(expires) is not int or expires <= self._clock():
            return None
        return document

    def issue(
        self,
        kind: str,
        *,
        tenant_id: str | None = None,
        key_id: str | None = None,
        subject: str | None = None,
        not_after: float | None = None,
    ) -> tuple[Session, str]:
        """A new session and its cookie value; it ends ``lifetime`` from now, or at
        ``not_after`` when that is sooner (an operator token's own expiry)."""
        ends = self._clock() + self.lifetime
        if not_after is not None:
            ends = min(ends, not_after)
        session = Session(
            kind=kind,
            expires=int(ends),
            nonce=secrets.token_urlsafe(16),
            tenant_id=tenant_id,
            key_id=key_id,
            subject=subject,
        )
        return session, self._seal("session", asdict(session))

    def read(self, value: str | None) -> Session | None:
        """The session a cookie holds, or None (absent, forged, expired, malformed)."""
        document = self._open("session", value)
        if document is None:
            return None
        try:
            session = Session(**document)  # type: ignore[arg-type]
        except TypeError:
            return None
        fields = (session.kind, session.nonce, session.tenant_id, session.key_id, session.subject)
        if session.kind not in ("tenant", "operator") or not all(
            value is None or isinstance(value, str) for value in fields
        ):
            return None
        if session.kind == "tenant" and not (session.tenant_id and session.key_id):
            return None
        return session

    def csrf_token(self, nonce: str) -> str:
        """The token a form of the session (or pre-session) with this nonce must carry."""
        return _b64(self._mac("csrf", nonce.encode()))

    def csrf_valid(self, nonce: str | None, token: object) -> bool:
        if not nonce or not isinstance(token, str) or len(token) > 100:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(nonce).encode())

    def presession(self) -> tuple[str, str]:
        """(the pre-session cookie value, its nonce) for a sign-in form."""
        nonce = secrets.token_urlsafe(16)
        expires = int(self._clock() + PRESESSION_LIFETIME)
        return self._seal("presession", {"nonce": nonce, "expires": expires}), nonce

    def presession_nonce(self, value: str | None) -> str | None:
        document = self._open("presession", value)
        nonce = None if document is None else document.get("nonce")
        return nonce if isinstance(nonce, str) else None
