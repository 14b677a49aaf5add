"""The rollout's calls into sync: capture, the applier service per direction, drains,
the flip and its way back.

The applier runs as a service (``pgshift sync run --follow``) so it outlives the engine;
drains and the flip are library calls made while the router holds writes (a drain with
a running applier watches it pass the fence marker).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pgshift.rollout.context import Context
from pgshift.rollout.procs import pgshift_argv
from pgshift.sync import settings as table_settings
from pgshift.sync import verbs
from pgshift.sync.apply import SyncOptions
from pgshift.sync.results import DrainResult

TO_POSTGRES, TO_SQLITE = "to-postgres", "to-sqlite"
SERVICE = {TO_POSTGRES: "sync-to-postgres", TO_SQLITE: "sync-to-sqlite"}


def options(ctx: Context) -> SyncOptions:
    return SyncOptions(sqlite_path=ctx.cfg.source.sqlite, dsn=ctx.dsn(), schema=ctx.schema)


def install_sqlite(ctx: Context) -> dict[str, Any]:
    """Capture triggers and the change log on the live SQLite file (idempotent)."""
    return verbs.install(ctx.cfg.source.sqlite).to_dict()


def install_postgres(ctx: Context) -> dict[str, Any]:
    """Capture on the migrated PostgreSQL tables (for the way back), the per-table settings
    from the cutover file, and green's privileges on ``green_writes: forbid`` tables."""
    s = ctx.cfg.sync
    return verbs.install(ctx.cfg.source.sqlite, dsn=ctx.dsn(), schema=ctx.schema,
                         green_ids=s.green_ids, pg_capture_mode=s.capture,
                         tables_config=table_settings.parse({"tables": ctx.cfg.tables}),
                         app_role=ctx.cfg.target.app_role).to_dict()


def start_applier(ctx: Context, direction: str) -> None:
    """Make sure the applier of ``direction`` runs (and the other one does not)."""
    other = TO_SQLITE if direction == TO_POSTGRES else TO_POSTGRES
    ctx.procs.stop(SERVICE[other])
    ctx.procs.start(SERVICE[direction], pgshift_argv(
        "sync", "run", str(ctx.cfg.source.sqlite), ctx.cfg.target.dsn, "--schema", ctx.schema,
        "--follow", "--mode", direction))


def stop_appliers(ctx: Context) -> None:
    for name in SERVICE.values():
        ctx.procs.stop(name)


def final_drain(ctx: Context) -> dict[str, Any]:
    """Before blue is archived: every change green committed up to a fence marker into
    SQLite (green keeps serving; nothing is held), so the archive is PostgreSQL as of
    that marker, not a few changes behind it. Never raises: what kept it from draining
    is recorded (``error``; ``drained`` false with the stranded range)."""
    from pgshift.errors import PgshiftError

    try:
        d = verbs.drain(options(ctx), ctx.cfg.flip.drain_timeout, direction=TO_SQLITE)
    except PgshiftError as exc:
        return {"drained": False, "error": exc.message}
    return {"drained": d.drained, "fence_seq": d.fence_seq, "seconds": round(d.seconds, 3),
            "applied": d.applied, "by_running_applier": d.by_running_applier,
            "stranded": d.stranded.count}


def running_direction(ctx: Context) -> str | None:
    for direction, name in SERVICE.items():
        if ctx.procs.find(name) is not None:
            return direction
    return None


def status(ctx: Context) -> dict[str, Any]:
    return verbs.status(ctx.cfg.source.sqlite, ctx.dsn(), ctx.schema).to_dict()


def brief(ctx: Context) -> dict[str, Any]:
    """Lag both ways, conflicts and parked rows: what a step records (never raises)."""
    from pgshift.errors import PgshiftError

    try:
        s = status(ctx)
    except PgshiftError as exc:
        return {"error": exc.message}
    return {"lag_ms": s.get("lag_ms"), "pending": s.get("pending"),
            "to_sqlite_lag_ms": s.get("to_sqlite_lag_ms"),
            "to_sqlite_pending": s.get("to_sqlite_pending"),
            "conflicts": sum((s.get("conflicts_by_direction") or {}).values()),
            "parked": sum((s.get("parked_by_direction") or {}).values())}


def flip(ctx: Context, timeout: float,
         check: Callable[[DrainResult], None] | None = None) -> dict[str, Any]:
    """Drain to PostgreSQL behind a fence, rebase green's early writes, move identities past
    every key, give green its privileges back (the router holds writes meanwhile);
    ``check`` runs between the drain and the rest (the tail check)."""
    return verbs.flip(options(ctx), timeout, check).to_dict()


def flip_back(ctx: Context, timeout: float) -> dict[str, Any]:
    """Drain green's writes into SQLite behind a fence, move SQLite's AUTOINCREMENT marks
    past green's ids, take green's forbid privileges again (the router holds writes)."""
    return verbs.flip_back(options(ctx), timeout, green_ids=ctx.cfg.sync.green_ids,
                           app_role=ctx.cfg.target.app_role).to_dict()


def blue_writes_after(ctx: Context, seq: int) -> dict[str, Any]:
    """Changes blue committed into the SQLite change log after ``seq`` (a fence marker):
    count, seq range, tables. After a flip without a write fence, anything here is a
    write that missed the drain."""
    from pgshift.sync.cutover import sqlite_stranded

    return sqlite_stranded(ctx.cfg.source.sqlite, seq)


def uninstall(ctx: Context) -> dict[str, Any]:
    return verbs.uninstall(ctx.cfg.source.sqlite, ctx.dsn(), ctx.schema).to_dict()
