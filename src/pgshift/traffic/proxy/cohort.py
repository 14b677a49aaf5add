"""Sticky, monotone cohorts.

A client's key (a cookie the proxy sets, or a header such as a user id) hashes to a
bucket in 0..9999 that never changes; the client is green iff ``bucket < weight * 100``.
Raising the weight therefore only ever moves clients blue -> green, and a weight in
percent with two decimals maps exactly onto the 10,000 buckets.
"""

from __future__ import annotations

import hashlib
import os

COOKIE = "pgshift_cohort"
COOKIE_B = COOKIE.encode()
BUCKETS = 10_000


def bucket(key: str | bytes) -> int:
    """The key's stable bucket, 0..9999 (blake2b: same on every host and Python version)."""
    raw = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") % BUCKETS


def threshold(weight_pct: float) -> int:
    """Number of buckets on green for a weight in percent."""
    return round(weight_pct * 100)


def is_green(key: str | bytes, weight_pct: float) -> bool:
    return bucket(key) < threshold(weight_pct)


def new_key() -> str:
    return os.urandom(12).hex()


def cookie_value(cookie_header: bytes) -> bytes | None:
    """Our cookie's value in a ``Cookie:`` header, or ``None``."""
    for part in cookie_header.split(b";"):
        name, sep, value = part.strip().partition(b"=")
        if sep and name == COOKIE_B and value:
            return value
    return None


def set_cookie(key: str) -> bytes:
    return (f"{COOKIE}={key}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax").encode()
