"""Secrets at rest: argon2id password hashes and API keys stored as sha256."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane. ~20 ms per verify on a small 2-core machine,
# so a burst of logins cannot starve the host (argon2-cffi's defaults cost ~5x more).
HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
MAX_PASSWORD_BYTES = 1024
API_KEY_PREFIX = "fdk_"


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("the password is empty")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return HASHER.hash(password)


def verify_password(phc: str, password: str) -> bool:
    """True when `password` matches the hash. Over-long passwords are refused without hashing."""
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return False
    try:
        return HASHER.verify(phc, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_api_key() -> tuple[str, str]:
    """A new key (32 random bytes) and the sha256 hex digest the config stores."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, api_key_sha256(key)


def api_key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_matches(key: str, sha256_hex: str) -> bool:
    return hmac.compare_digest(api_key_sha256(key), sha256_hex)
