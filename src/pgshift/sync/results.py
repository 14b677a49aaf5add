"""What the sync verbs return (:mod:`pgshift.sync.verbs`): dataclasses, read by attribute.

Each has ``to_dict()``, which is exactly what the matching ``pgshift sync ... --json``
prints (the JSON shapes predate these classes and stay as they were).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pgshift.sync.state import SyncState


@dataclass
class StrandedRange:
    """Changes written before a fence that were not applied when the drain gave up.

    ``first``/``last`` are change-log seqs (to-postgres), queue ids (to-sqlite over
    the trigger queue) or LSNs as integers (logical capture); ``tables`` counts them
    per table. Empty (``count`` 0, the rest None/{}) after a complete drain.
    """

    count: int = 0
    first: int | None = None
    last: int | None = None
    oldest_age_ms: int | None = None
    tables: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StrandedRange:
        return cls(int(d.get("count", 0)), d.get("first"), d.get("last"),
                   d.get("oldest_age_ms"), dict(d.get("tables") or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DrainResult:
    """A fence and the apply up to it (:func:`pgshift.sync.verbs.drain`).

    ``drained``: every change committed before the fence is on the other side.
    ``last_seq`` is the position the applier reached (same unit as ``fence_seq``);
    ``by_running_applier``: another ``sync run --follow`` of the direction did the
    applying and the drain watched it pass the fence.
    """

    direction: str
    fence_seq: int
    drained: bool
    seconds: float
    applied: int
    parked: int
    conflicts: int
    last_seq: int
    stranded: StrandedRange
    by_running_applier: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["stranded"] = self.stranded.to_dict()
        return d


@dataclass
class FlipResult:
    """A switch of the system of record (:func:`~pgshift.sync.verbs.flip`: to PostgreSQL,
    :func:`~pgshift.sync.verbs.flip_back`: back to SQLite).

    ``flipped`` false means the drain missed its deadline and nothing else was done
    (``drain.stranded`` says what was left). ``identities``: PostgreSQL sequences
    moved (flip: counting up past every key; flip back with ``green_ids="negative"``:
    counting down again). ``rebased``: green's pre-flip queue turned into current
    rows (flip). ``sqlite_sequences``: SQLite AUTOINCREMENT marks raised past green's
    ids (flip back). ``privileges_granted_back`` (flip) / ``privileges_revoked``
    (flip back): ``green_writes: forbid`` privileges of green's role.
    """

    direction: str
    drain: DrainResult
    flipped: bool = False
    postgres_capture: str | None = None  # "triggers", "logical" or None (flip)
    rebased: dict[str, Any] | None = None
    identities: list[dict[str, Any]] = field(default_factory=list)
    sqlite_sequences: list[dict[str, Any]] = field(default_factory=list)
    privileges_granted_back: dict[str, Any] = field(default_factory=dict)
    privileges_revoked: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"direction": self.direction, "drain": self.drain.to_dict(),
                               "flipped": self.flipped}
        if not self.flipped:
            return out
        out["identities"] = self.identities
        if self.direction == "to-postgres":
            out.update(postgres_capture=self.postgres_capture, rebased=self.rebased,
                       privileges_granted_back=self.privileges_granted_back)
        else:
            out.update(sqlite_sequences=self.sqlite_sequences,
                       privileges_revoked=self.privileges_revoked)
        return out


@dataclass
class SyncStatus:
    """Both sides' sync figures (:func:`pgshift.sync.verbs.status`).

    Fields stay None for a side not given (no SQLite path, no DSN) or a part not
    installed. Per direction: ``pending`` / ``lag_ms`` and ``to_sqlite_pending`` /
    ``to_sqlite_lag_ms`` (trigger queue; logical capture reports
    ``to_sqlite_logical["lag_bytes"]``), see :attr:`lag_ms_by_direction`.
    """

    schema: str
    # SQLite side
    captured_tables: list[str] | None = None
    capture_installed: bool | None = None
    max_seq: int | None = None
    # PostgreSQL side (postgres_captured_tables is not None when a DSN was given)
    to_postgres: SyncState | None = None
    parked: list[dict[str, Any]] | None = None  # the first 20 parked changes
    postgres_captured_tables: list[str] | None = None
    to_sqlite_logical: dict[str, Any] | None = None
    conflicts_by_direction: dict[str, int] | None = None
    parked_by_direction: dict[str, int] | None = None
    to_sqlite_applied: int | None = None
    to_sqlite_pending: int | None = None
    to_sqlite_lag_ms: int | None = None
    paused: bool | None = None
    tables: dict[str, dict[str, Any]] | None = None  # stored per-table settings
    # both sides
    pending: int | None = None
    lag_ms: int | None = None

    @property
    def lag_ms_by_direction(self) -> dict[str, int | None]:
        return {"to-postgres": self.lag_ms, "to-sqlite": self.to_sqlite_lag_ms}

    @property
    def pending_by_direction(self) -> dict[str, int | None]:
        return {"to-postgres": self.pending, "to-sqlite": self.to_sqlite_pending}

    @property
    def conflicts(self) -> int:
        """Conflicts recorded, both directions."""
        return sum((self.conflicts_by_direction or {}).values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "to_postgres":
                if self.postgres_captured_tables is not None:  # "never run" is news too
                    out["to_postgres"] = value.to_dict() if value is not None else None
            elif value is not None:
                out[f.name] = value
        return out


@dataclass
class PlanRow:
    """One table of :class:`SyncPlan`."""

    table: str
    kind: str
    writes: str
    conflict: str
    green_writes: str
    key: list[str] | None  # None: no primary key (refused)
    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)


@dataclass
class SyncPlan:
    """Per table: settings, key, notes and refusals (:func:`pgshift.sync.verbs.plan`).

    ``source``: where the settings came from (the file, ``pgshift.sync_tables`` or
    ``defaults``). ``refused`` counts the tables sync would refuse.
    """

    schema: str
    source: str
    tables: list[PlanRow]

    @property
    def refused(self) -> int:
        return sum(bool(r.refusals) for r in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "source": self.source,
                "tables": [asdict(r) for r in self.tables], "refused": self.refused}


@dataclass
class PauseResult:
    """:func:`pgshift.sync.verbs.pause` / :func:`~pgshift.sync.verbs.resume`."""

    schema: str
    paused: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UninstallResult:
    """:func:`pgshift.sync.verbs.uninstall`. The PostgreSQL fields stay None without a DSN."""

    sqlite_removed: bool
    postgres_state_removed: bool = False
    identities_restored: list[dict[str, Any]] | None = None
    postgres_logical_removed: bool | None = None
    postgres_capture_removed: bool | None = None
    privileges_granted_back: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class TrimResult:
    """:func:`pgshift.sync.verbs.trim`: change-log rows deleted, within the time budget.

    ``complete``: nothing trimmable is left; ``plan`` (None when nothing was applied
    yet): the checkpoint, the highest seq deleted and the tables whose history is kept.
    """

    deleted: int
    batches: int
    busy_retries: int
    complete: bool
    plan: dict[str, Any] | None
    seconds: float
    left: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrimResult:
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
