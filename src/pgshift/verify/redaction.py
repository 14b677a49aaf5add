"""Differing values of secret-looking columns, shown without the secret.

``verify`` reports full differing values, and its output lands in CI logs and the
audit trail. For a column whose name looks like a credential (``access_token``,
``password_hash``, ``api_key``, ``iv``, ...) the value is replaced by its length and a
short keyed hash: enough to see that the two sides differ (and whether two reported
values are the same), not enough to recover a short secret by hashing guesses — the
key is random per process, so hashes compare only within one run's output.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import replace
from typing import Any

from pgshift.verify.segments import RowDiff

# Whole words of a column name (snake_case or camelCase split) that mark a secret.
SECRET_WORDS = frozenset({
    "token", "tokens", "secret", "secrets", "password", "passwords", "passwd", "pwd",
    "passphrase", "key", "keys", "apikey", "iv", "salt", "otp", "pin", "nonce",
    "signature", "credential", "credentials", "cookie", "totp", "mfa", "authorization",
    "bearer", "jwt",
})
# Substrings that mark a secret even inside one word ("accesstoken", "userpassword").
SECRET_PARTS = ("token", "secret", "password", "passwd", "apikey", "privatekey")

_KEY = secrets.token_bytes(16)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_column(name: str, *, key: bool = False) -> bool:
    """True when the column's name looks like it holds a credential.

    For a key column (``key=True``) only the unambiguous parts count (token, secret,
    password): a primary key called ``key`` or ``pin`` is how the reader finds the row.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if w]
    joined = "".join(words)
    if any(p in joined for p in SECRET_PARTS):
        return True
    return not key and any(w in SECRET_WORDS for w in words)


def mask(value: Any) -> Any:
    """``<redacted: N chars, h:xxxxxxxx>`` for a value; None stays None (NULL is no secret)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    digest = hmac.new(_KEY, text.encode("utf-8", "surrogateescape"), hashlib.sha256)
    return f"<redacted: {len(text)} chars, h:{digest.hexdigest()[:8]}>"


def redact_diff(diff: RowDiff) -> RowDiff:
    """The same difference with secret-looking columns (and key parts) masked."""
    key = {k: mask(v) if is_secret_column(k, key=True) else v for k, v in diff.key.items()}
    cols = {c: (mask(a), mask(b)) if is_secret_column(c) else (a, b)
            for c, (a, b) in diff.columns.items()}
    return replace(diff, key=key, columns=cols)
