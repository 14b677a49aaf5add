"""The reference app's fault switch: ``PGSHIFT_DEMO_FAULTS``, off by default.

A comma-separated list of settings, for tests and demos that must exercise rollback paths::

    PGSHIFT_DEMO_FAULTS="error_rate=0.05,latency_ms=200,db=dead"

* ``error_rate=R``  -- that share (0..1) of API requests answers 500 without touching the
  database (so an injected error never half-applies a write);
* ``latency_ms=N``  -- every API request waits N ms more before it is served;
* ``db=dead``       -- every database call fails: API requests 503, ``/health`` 503.

``/health`` and ``/metrics`` are never delayed nor failed by ``error_rate``/``latency_ms``:
probes should see the database, and dashboards should keep seeing the app.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgshift.errors import UsageError

ENV = "PGSHIFT_DEMO_FAULTS"


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0
    latency_ms: float = 0.0
    db_dead: bool = False

    @property
    def active(self) -> bool:
        return bool(self.error_rate or self.latency_ms or self.db_dead)

    def describe(self) -> str:
        parts = []
        if self.error_rate:
            parts.append(f"error_rate={self.error_rate:g}")
        if self.latency_ms:
            parts.append(f"latency_ms={self.latency_ms:g}")
        if self.db_dead:
            parts.append("db=dead")
        return ",".join(parts) or "off"

    def to_dict(self) -> dict[str, object]:
        return {"error_rate": self.error_rate, "latency_ms": self.latency_ms,
                "db": "dead" if self.db_dead else "ok", "spec": self.describe()}


def parse_faults(spec: str | None) -> Faults:
    """Parse a fault spec; empty, ``off`` or ``none`` mean no faults. Bad specs: UsageError."""
    spec = (spec or "").strip()
    if spec.lower() in ("", "off", "none", "0"):
        return Faults()
    error_rate, latency_ms, db_dead = 0.0, 0.0, False
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip().lower(), value.strip().lower()
        try:
            if not sep:
                raise ValueError
            if name == "error_rate":
                error_rate = float(value)
                if not 0.0 <= error_rate <= 1.0:
                    raise ValueError
            elif name == "latency_ms":
                latency_ms = float(value)
                if latency_ms < 0:
                    raise ValueError
            elif name == "db":
                if value not in ("dead", "ok"):
                    raise ValueError
                db_dead = value == "dead"
            else:
                raise KeyError(name)
        except KeyError:
            raise UsageError(f"unknown fault {name!r} in {ENV}={spec!r}",
                             hint="use error_rate=0.05, latency_ms=200 or db=dead") from None
        except ValueError:
            raise UsageError(f"bad fault setting {item!r} in {ENV}={spec!r}",
                             hint="error_rate is 0..1, latency_ms >= 0, db is dead or ok"
                             ) from None
    return Faults(error_rate, latency_ms, db_dead)
