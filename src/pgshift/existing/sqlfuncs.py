"""SQL functions pgshift adds to its SQLite sessions for mapping expressions.

SQLite lacks hashing, name-based UUIDs and epoch/ISO helpers. They are
deterministic, so a re-keyed id computed in two tables' mappings (a parent's
``uuid5('url', id)`` and its children's ``uuid5('url', parent_id)``) is the
same value, and a resumed run computes what the first run did.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import uuid
from collections.abc import Callable

_NAMESPACES = {"dns": uuid.NAMESPACE_DNS, "url": uuid.NAMESPACE_URL, "oid": uuid.NAMESPACE_OID,
               "x500": uuid.NAMESPACE_X500}
_SCALE = {"s": 1, "ms": 1000, "us": 1_000_000}


def _bytes(v: object) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v
    return str(v).encode("utf-8")


def uuid5(namespace: object, name: object) -> str | None:
    """Name-based UUID (RFC 4122 v5); namespace: a UUID or dns/url/oid/x500."""
    if namespace is None or name is None:
        return None
    ns = _NAMESPACES.get(str(namespace).lower())
    if ns is None:
        ns = uuid.UUID(str(namespace))  # ValueError -> SQLite error naming the function
    raw = _bytes(name)
    assert raw is not None
    return str(uuid.uuid5(ns, raw.decode("utf-8", "surrogateescape")))


def md5(v: object) -> str | None:
    """Hex MD5 of a text (UTF-8) or blob, like PostgreSQL's md5()."""
    raw = _bytes(v)
    return None if raw is None else hashlib.md5(raw, usedforsecurity=False).hexdigest()


def sha256(v: object) -> str | None:
    """Hex SHA-256 of a text (UTF-8) or blob."""
    raw = _bytes(v)
    return None if raw is None else hashlib.sha256(raw).hexdigest()


def iso_from_epoch(v: object, unit: object = "s") -> str | None:
    """ISO 8601 UTC text of an epoch number: ``iso_from_epoch(1700000000123, 'ms')``."""
    if v is None:
        return None
    scale = _SCALE[str(unit)]
    whole, frac = divmod(int(v), scale)  # type: ignore[call-overload]
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=whole)
    width = len(str(scale)) - 1
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac:0{width}d}" if width else "") + "Z"


def epoch_from_iso(v: object, unit: object = "s") -> int | None:
    """Epoch number of an ISO 8601 / SQLite date-time text (offset-free = UTC)."""
    if v is None:
        return None
    moment = dt.datetime.fromisoformat(str(v).strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros // (1_000_000 // _SCALE[str(unit)])


FUNCTIONS: dict[str, tuple[Callable[..., str | int | None], int]] = {
    "uuid5": (uuid5, 2), "md5": (md5, 1), "sha256": (sha256, 1),
    "iso_from_epoch": (iso_from_epoch, 2), "epoch_from_iso": (epoch_from_iso, 2),
}


def register(con: sqlite3.Connection) -> sqlite3.Connection:
    """Add the helper functions to one SQLite connection (returns it)."""
    for name, (fn, nargs) in FUNCTIONS.items():
        con.create_function(name, nargs, fn, deterministic=True)
    # One-argument forms default the unit to seconds.
    con.create_function("iso_from_epoch", 1, iso_from_epoch, deterministic=True)
    con.create_function("epoch_from_iso", 1, epoch_from_iso, deterministic=True)
    return con
