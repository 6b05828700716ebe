"""API key format, generation and hashing (docs/security.md).

A key is ``tk_`` + 32 URL-safe characters (192 random bits) + a 6-character base62 CRC-32
checksum of what precedes it. The checksum lets the gateway reject a mistyped or invented key
without touching any store, and gives secret scanners a pattern to recognise.
Keys are stored only as SHA-256 digests: they are random, so a slow hash would add nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Iterable
from datetime import datetime

from starlette.datastructures import Headers

from tenant_gateway.exceptions import AmbiguousCredentials
from tenant_gateway.models import ApiKeyRecord, Role

__all__ = [
    "ID_MAX_LENGTH",
    "KEY_PREFIX",
    "api_key_from",
    "api_key_from_lines",
    "extract_api_key",
    "generate_api_key",
    "hash_api_key",
    "is_id",
    "is_well_formed",
    "key_display_prefix",
    "mint_key",
    "new_id",
    "new_webhook_secret",
    "verify_api_key",
]

KEY_PREFIX = "tk_"
_BODY_LENGTH = 32  # token_urlsafe(24) → 32 characters, 192 bits
_CHECKSUM_LENGTH = 6
_KEY_LENGTH = len(KEY_PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH
_KEY_RE = re.compile(r"tk_[A-Za-z0-9_-]{32}[A-Za-z0-9]{6}")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_MAX_LENGTH = 128
_ID_RE = re.compile(r"[!-~]+")  # printable ASCII, no space


def _checksum(text: str) -> str:
    value = zlib.crc32(text.encode("ascii"))
    digits = []
    for _ in range(_CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def generate_api_key() -> str:
    head = KEY_PREFIX + secrets.token_urlsafe(24)
    return head + _checksum(head)


def is_well_formed(key: str) -> bool:
    """True when ``key`` has our shape and checksum; costs no store lookup."""
    if len(key) != _KEY_LENGTH or _KEY_RE.fullmatch(key) is None:
        return False
    head = key[:-_CHECKSUM_LENGTH]
    return hmac.compare_digest(_checksum(head), key[-_CHECKSUM_LENGTH:])


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def verify_api_key(key: str, stored_hash: bytes) -> bool:
    """Constant-time comparison of a presented key with a stored digest."""
    return hmac.compare_digest(hash_api_key(key), stored_hash)


def key_display_prefix(key: str) -> str:
    """The part of a key that is safe to show in listings (``tk_`` + 8 characters)."""
    return key[: len(KEY_PREFIX) + 8]


def new_id(kind: str) -> str:
    """An opaque unique identifier such as ``tenant_k3j…`` (80 random bits, base32)."""
    return f"{kind}_{secrets.token_hex(10)}"


def mint_key(
    tenant_id: str, name: str | None, role: Role, created_at: datetime, expires_at: datetime | None
) -> tuple[str, ApiKeyRecord]:
    """A new key: its secret (shown once, never stored) and the record kept (its digest)."""
    secret = generate_api_key()
    return secret, ApiKeyRecord(
        id=new_id("key"),
        tenant_id=tenant_id,
        key_hash=hash_api_key(secret),
        prefix=key_display_prefix(secret),
        name=name,
        role=role,
        created_at=created_at,
        expires_at=expires_at,
    )


def new_webhook_secret() -> str:
    """The secret a tenant's webhook deliveries are signed with (``events.sign_webhook``)."""
    return "whsec_" + secrets.token_urlsafe(32)


def is_id(text: str) -> bool:
    """Whether ``text`` could name a stored tenant, user or key: ``new_id`` makes
    ``kind_<hex>``, an import may bring other ids, all printable ASCII without spaces and at
    most ``ID_MAX_LENGTH`` long. Anything else (NUL, non-ASCII, 10,000 characters) names
    nothing, so callers answer "not found" without asking a store."""
    return len(text) <= ID_MAX_LENGTH and _ID_RE.fullmatch(text) is not None


def extract_api_key(headers: Headers) -> str | None:
    """The credential from ``Authorization: Bearer …`` or ``X-API-Key``, every line of both
    counted (see ``api_key_from_lines``); None when absent."""
    return api_key_from_lines(headers.getlist("authorization"), headers.getlist("x-api-key"))


def _bearer(authorization: str) -> str | None:
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    return credentials if credentials and scheme.lower() == "bearer" else None


def api_key_from(authorization: str | None, x_api_key: str | None) -> str | None:
    """The credential of one ``Authorization`` line and one ``X-API-Key`` line. Blank values
    and other schemes than Bearer count as absent; two credentials that differ raise the 400
    ``AmbiguousCredentials`` refusal (either one could be another tenant's)."""
    bearer = None if authorization is None else _bearer(authorization)
    other = None if x_api_key is None else x_api_key.strip() or None
    if bearer is not None and other is not None and bearer != other:
        raise AmbiguousCredentials()
    return bearer if bearer is not None else other


def api_key_from_lines(authorizations: Iterable[str], api_keys: Iterable[str]) -> str | None:
    """``api_key_from`` over any number of header lines: identical repeats are one
    credential, different ones are ambiguous."""
    found: str | None = None
    for credential in [*map(_bearer, authorizations), *(key.strip() for key in api_keys)]:
        if not credential:
            continue
        if found is not None and credential != found:
            raise AmbiguousCredentials()
        found = credential
    return found
