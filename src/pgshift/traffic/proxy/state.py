"""What the proxy decides with: weight, system of record, fence, backend health.

Lives on the proxy's event loop; the admin API changes it between two requests, so a
change takes effect on the next request and never touches one in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgshift.traffic.proxy.cohort import threshold
from pgshift.traffic.proxy.config import ProxyConfig
from pgshift.traffic.proxy.events import Refusals, emit
from pgshift.traffic.proxy.stats import BackendStats
from pgshift.traffic.router import Side, check_side, check_weight


@dataclass
class Health:
    """Active check verdict plus passive ejection for one backend."""

    side: str
    eject_after: int
    eject_seconds: float
    active: bool  # an active check runs: ejection ends on its verdict, not on a timer
    up: bool = True  # active check verdict (always True without one)
    ejected: bool = False
    ejected_until: float = 0.0
    consecutive_failures: int = 0
    check_ok: int = 0
    check_fail: int = 0
    last_check_error: str | None = None
    ejections: int = 0

    def available(self) -> bool:
        if self.ejected and not self.active and time.monotonic() >= self.ejected_until:
            self.ejected = False  # half-open: one more failure ejects again
            self.consecutive_failures = max(self.eject_after - 1, 0)
            emit("backend_restored", side=self.side, after="eject_seconds",
                 eject_seconds=self.eject_seconds)
        return self.up and not self.ejected

    def success(self) -> None:
        self.consecutive_failures = 0

    def failure(self) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.eject_after and not self.ejected:
            self.ejected = True
            self.ejections += 1
            self.ejected_until = time.monotonic() + self.eject_seconds
            emit("backend_ejected", logging.WARNING, side=self.side,
                 consecutive_failures=self.consecutive_failures,
                 retry_in=None if self.active else self.eject_seconds)

    def checked(self, ok: bool, rise: int, fall: int, error: str | None = None) -> None:
        if ok:
            self.check_ok, self.check_fail = self.check_ok + 1, 0
            if self.check_ok >= rise:
                if not self.up or self.ejected:
                    emit("backend_up", side=self.side, passing_checks=self.check_ok,
                         was_ejected=self.ejected)
                self.up = True
                self.ejected = False
                self.consecutive_failures = 0
        else:
            self.check_ok, self.check_fail = 0, self.check_fail + 1
            self.last_check_error = error
            if self.check_fail >= fall:
                if self.up:
                    emit("backend_down", logging.WARNING, side=self.side,
                         failing_checks=self.check_fail, reason=error)
                self.up = False


@dataclass
class Fence:
    held: bool = False
    queued: int = 0
    held_since: float | None = None


class RoutingState:
    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.backends = {"blue": cfg.blue, "green": cfg.green}
        self.weight = check_weight(cfg.weight)
        self.threshold = threshold(self.weight)
        self.sor: Side = check_side(cfg.system_of_record)
        self.fence = Fence()
        active = cfg.health.path is not None
        self.health = {s: Health(s, cfg.eject_after, cfg.eject_seconds, active)
                       for s in ("blue", "green")}
        self.stats = {s: BackendStats(s) for s in ("blue", "green")}
        self.clients = 0
        self.writes_in_flight = 0  # mutating requests sent to a backend, not yet answered
        self.on_release: Callable[[], None] | None = None  # the server lets held writes go
        self.refused = 0  # requests answered by the proxy itself: no backend available
        # The highest controller epoch a change came with: a change with a lower one is
        # from a controller that was superseded and does not know it yet (a fencing token).
        self.epoch = 0
        self.refusals = Refusals()  # every refusal, counted and logged by reason
        self.descriptors = Refusals(event="descriptors_exhausted", level=logging.ERROR)

    # -- decisions -------------------------------------------------------------------------

    def choose(self, is_write: bool, green_cohort: bool) -> Side | None:
        """The side for a request, or ``None`` when no allowed side is available.

        Writes go to the system of record; reads follow the cohort. A dead side's traffic
        goes to the system of record only: before the flip a dead green sends its clients
        to blue; after it nothing ever falls back to blue (blue's writes would not flow
        back) -- only an explicit rollback moves traffic there.
        """
        side: Side = self.sor if is_write else ("green" if green_cohort else "blue")
        if self.health[side].available():
            return side
        return self.fallback(side)

    def fallback(self, side: Side) -> Side | None:
        if side != self.sor and self.health[self.sor].available():
            return self.sor
        return None

    # -- admin changes ---------------------------------------------------------------------

    def set_weight(self, pct: float) -> None:
        old, self.weight = self.weight, check_weight(pct, hint='{"weight": 25}')
        self.threshold = threshold(self.weight)
        if old != self.weight:
            emit("weight_changed", old=old, new=self.weight)

    def set_sor(self, side: str) -> None:
        old, self.sor = self.sor, check_side(side)
        if old != self.sor:
            emit("system_of_record_changed", old=old, new=self.sor)

    def hold(self) -> None:
        if not self.fence.held:
            self.fence.held = True
            self.fence.held_since = time.monotonic()
            emit("fence_held", writes_in_flight=self.writes_in_flight)

    def release(self) -> None:
        f = self.fence
        if f.held:
            held = None if f.held_since is None else round(time.monotonic() - f.held_since, 3)
            emit("fence_released", held_seconds=held, queued=f.queued, system_of_record=self.sor)
        f.held = False
        f.held_since = None
        if self.on_release is not None:
            self.on_release()

    def rollback(self) -> None:
        """Everything to blue: weight 0, system of record blue, fence released."""
        emit("rollback", logging.WARNING, weight=self.weight, system_of_record=self.sor)
        self.set_weight(0)
        self.set_sor("blue")
        self.release()

    def status(self) -> dict[str, Any]:
        f = self.fence
        return {
            "weight": self.weight,
            "system_of_record": self.sor,
            "fence": {"held": f.held, "queued": f.queued,
                      "writes_in_flight": self.writes_in_flight,
                      "held_seconds": None if f.held_since is None
                      else round(time.monotonic() - f.held_since, 3)},
            "backends": {
                s: {"url": self.backends[s].url, "available": h.available(), "up": h.up,
                    "ejected": h.ejected, "ejections": h.ejections,
                    "consecutive_failures": h.consecutive_failures,
                    "last_check_error": h.last_check_error,
                    "active_requests": self.stats[s].active}
                for s, h in self.health.items()},
            "client_connections": self.clients,
            "refused": self.refused,
            "controller_epoch": self.epoch,
            "refusals": dict(self.refusals.counts),
            "warnings": self.warnings(),
        }

    def warnings(self) -> list[str]:
        out = []
        for s in ("blue", "green"):
            if not self.health[s].available():
                if s == self.sor:
                    out.append(f"{s} is the system of record and unavailable: writes get 503; "
                               "the proxy never fails over by itself")
                else:
                    out.append(f"{s} is unavailable: its clients go to {self.sor}")
        return out
