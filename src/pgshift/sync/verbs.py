"""The sync verbs as library calls: what ``pgshift sync ...`` and the rollout engine call.

Every verb takes plain arguments or :class:`~pgshift.sync.apply.SyncOptions` and
returns a dataclass (:mod:`pgshift.sync.results`; ``to_dict()`` is the command's
``--json``). Errors are :class:`~pgshift.errors.PgshiftError` subclasses with the
documented exit code: bad input ``UsageError`` (2), SQLite ``SourceError`` (4: a
damaged or truncated file included), PostgreSQL ``TargetError`` (5), an unreachable
server ``ConnectError`` (2). A drain or flip that misses its deadline is a result
(``drained``/``flipped`` false, with the stranded range), not an error.

Contracts shared by the verbs:

- idempotent: running a verb again after it succeeded does no harm (install,
  flip, flip_back, pause, resume, trim, uninstall);
- ``drain``/``flip``/``flip_back`` expect the router to hold the writes of the side
  being drained (the fence); they never release it themselves;
- nothing prints; long calls take a ``stop`` event where they can run for long.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pgshift.dsn import Dsn
from pgshift.errors import SourceError, UsageError
from pgshift.sync import cutover, ops, planning
from pgshift.sync import settings as cfg
from pgshift.sync import state as st
from pgshift.sync.apply import DEFAULT_BATCH, SyncOptions, SyncResult
from pgshift.sync.apply import run as run_to_postgres
from pgshift.sync.results import (
    DrainResult,
    FlipResult,
    PauseResult,
    SyncPlan,
    SyncStatus,
    TrimResult,
    UninstallResult,
)
from pgshift.sync.sqlite_capture import InstallResult

TO_POSTGRES = st.TO_POSTGRES
TO_SQLITE = ops.TO_SQLITE
DUAL = "dual"
MODES = (TO_POSTGRES, TO_SQLITE, DUAL)

OnBatch = Callable[[SyncResult], None]


@contextmanager
def sqlite_failures(path: Path | None) -> Iterator[None]:
    """Turn a raw SQLite error escaping a verb (a damaged or truncated file, an I/O
    error) into ``SourceError`` (exit 4) naming the file, with the check to run."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise SourceError(
            f"SQLite failed on {path}: {exc}",
            hint=f"check the file: sqlite3 {path} 'pragma integrity_check' (a damaged file "
                 "needs the application's backup; a busy one, a retry)") from exc


def install(path: Path, tables: list[str] | None = None, exclude: list[str] | None = None,
            *, dsn: Dsn | None = None, schema: str = "public", green_ids: str = "keep",
            pg_capture_mode: str = "triggers",
            tables_config: Path | dict[str, cfg.TableSettings] | None = None,
            app_role: str | None = None) -> InstallResult:
    """Capture on SQLite (triggers, change log) and, with ``dsn``, on the migrated
    PostgreSQL tables; store the per-table settings; revoke ``app_role``'s writes on
    ``green_writes: forbid`` tables. Idempotent.

    Run it before migrate (migrate's snapshot then records where sync starts), and
    again with ``dsn`` after migrate. ``tables_config``: a cutover/tables file or
    settings already loaded. Checks everything it can first; a failure after SQLite
    was changed removes a capture this call created (:func:`pgshift.sync.ops.install`).
    """
    with sqlite_failures(path):
        settings = planning.load_settings(tables_config) if isinstance(tables_config, Path) \
            else tables_config
        return ops.install(path, tables, exclude, dsn=dsn, schema=schema,
                           green_ids=green_ids, pg_capture_mode=pg_capture_mode,
                           settings=settings, app_role=app_role)


def options(path: Path, dsn: Dsn, schema: str = "public", *,
            tables_config: Path | None = None, from_hwm: int | None = None,
            batch_size: int = DEFAULT_BATCH, follow: bool = False,
            sor: str | None = None) -> SyncOptions:
    """:class:`SyncOptions` for the run/drain/flip verbs; ``tables_config`` is loaded
    and checked against the captured tables (``UsageError`` for a bad file)."""
    if sor not in (None, cfg.SQLITE, cfg.POSTGRES):
        raise UsageError(f"--sor {sor!r}: use sqlite or postgres",
                         hint="pgshift sync run SQLITE PG --mode dual --sor sqlite")
    with sqlite_failures(path):
        settings = planning.load_settings(tables_config, path) \
            if tables_config is not None else None
    return SyncOptions(sqlite_path=path, dsn=dsn, schema=schema, settings=settings,
                       from_hwm=from_hwm, batch_size=batch_size, follow=follow, sor=sor)


def check_mode(mode: str, *, trim_log: bool = False, from_hwm: int | None = None) -> None:
    """Refuse (``UsageError``) a run mode (a direction or ``dual``) and options that do
    not go together, before anything is started."""
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r}: use to-postgres, to-sqlite, dual or pause",
                         hint="pgshift sync run SQLITE PG --mode to-postgres")
    if trim_log and mode != TO_SQLITE:
        raise UsageError("--trim applies to --mode to-sqlite only (after the flip); before "
                         "it, trimming competes with blue's writes",
                         hint="pgshift sync trim SQLITE PG, while the fence holds")
    if mode == TO_SQLITE and from_hwm is not None:
        raise UsageError("--from-hwm applies to --mode to-postgres only",
                         hint="pgshift sync run SQLITE PG --mode to-sqlite")


def run(opts: SyncOptions, *, direction: str = TO_POSTGRES,
        stop: threading.Event | None = None, on_batch: OnBatch | None = None,
        trim_log: bool = False) -> SyncResult:
    """Apply captured changes in one direction, once (``opts.follow`` false: what is
    pending) or until ``stop`` is set (``opts.follow``).

    ``to-postgres``: the SQLite change log, from the checkpoint (or ``opts.from_hwm``,
    else migrate's snapshot); ``to-sqlite`` (after the flip, while blue takes no
    writes): PostgreSQL's trigger queue or logical slot, whichever is installed;
    ``trim_log`` then also trims the applied SQLite change log. ``on_batch(result)``
    after every committed batch (metrics). Exactly once across ``kill -9``; one
    applier per schema and direction (``LockedError`` otherwise). A paused sync
    applies nothing (``result.paused``). ``result.parked`` counts the changes parked.
    """
    if direction not in (TO_POSTGRES, TO_SQLITE):
        raise UsageError(f"direction {direction!r}: use to-postgres or to-sqlite (dual: "
                         "run_dual)", hint="pgshift sync run SQLITE PG --mode to-postgres")
    check_mode(direction, trim_log=trim_log, from_hwm=opts.from_hwm)
    with sqlite_failures(opts.sqlite_path):
        if direction == TO_SQLITE:
            return cutover.run_back(opts, stop=stop, on_batch=on_batch, trim_log=trim_log)
        return run_to_postgres(opts, stop=stop, on_batch=None if on_batch is None
                               else lambda r, _batch: on_batch(r))


def run_dual(opts: SyncOptions, *, stop: threading.Event | None = None
             ) -> dict[str, SyncResult]:
    """Both directions in one process for ``writes: dual-writer`` tables ({direction:
    result}); see :func:`pgshift.sync.apply_sqlite.run_dual` for the contract."""
    with sqlite_failures(opts.sqlite_path):
        from pgshift.sync.apply_sqlite import run_dual as both

        return both(opts, stop=stop)


def drain(opts: SyncOptions, timeout: float = 30.0,
          direction: str = TO_POSTGRES) -> DrainResult:
    """Fence, then apply until every change committed before the fence is on the other
    side, or ``timeout`` seconds passed (``drained`` false and ``stranded``: count,
    first/last position, age of the oldest, tables). Hold the writes of the side being
    drained first (to-postgres: blue's; to-sqlite, the rollback drain: green's). When a
    ``run --follow`` of the direction is running, it is watched instead
    (``by_running_applier``). ``UsageError`` when sync is paused (a drain would only
    time out)."""
    with sqlite_failures(opts.sqlite_path):
        return cutover.drain(opts, timeout, direction)


def flip(opts: SyncOptions, timeout: float = 30.0,
         check: Callable[[DrainResult], None] | None = None) -> FlipResult:
    """Make PostgreSQL the system of record, while the router holds writes: drain
    to-postgres, rebase green's pre-flip queue, every identity/serial sequence past
    every key (never backwards), green's revoked privileges granted back. ``flipped``
    false: the drain missed ``timeout`` and nothing was switched. Then run to-sqlite
    with ``follow`` and release the writes. Idempotent. ``check(drain)`` runs once the
    drain reached its marker, before anything switches; what it raises stops the flip."""
    with sqlite_failures(opts.sqlite_path):
        return cutover.flip(opts, timeout, check)


def flip_back(opts: SyncOptions, timeout: float = 30.0, *, green_ids: str = "keep",
              app_role: str | None = None) -> FlipResult:
    """Make SQLite the system of record again (the rollback), while the router holds
    green's writes: drain to-sqlite to a fence, SQLite's AUTOINCREMENT marks past every
    id green used; with ``green_ids="negative"`` PostgreSQL's sequences count down
    again; with ``app_role``, ``green_writes: forbid`` is revoked again. ``flipped``
    false: the drain missed ``timeout`` (``drain.stranded``). Then run to-postgres with
    ``follow`` and release the writes to blue; a later :func:`flip` re-advances.
    Idempotent."""
    with sqlite_failures(opts.sqlite_path):
        return cutover.flip_back(opts, timeout, green_ids=green_ids, app_role=app_role)


def status(path: Path | None, dsn: Dsn | None, schema: str = "public", *,
           con: sqlite3.Connection | None = None) -> SyncStatus:
    """Capture, checkpoint, pending changes and lag per direction, parked and conflict
    counts, paused, per-table settings, from whichever sides are given. Reads only.
    ``con``: an open SQLite connection to reuse (the metrics endpoint)."""
    if path is None and dsn is None:
        raise UsageError("give the SQLite file, the PostgreSQL DSN or both",
                         hint="pgshift sync status app.db env:DATABASE_URL")
    with sqlite_failures(path):
        return ops.status(path, dsn, schema, con=con)


def plan(path: Path, dsn: Dsn | None = None, schema: str = "public",
         tables_config: Path | None = None) -> SyncPlan:
    """Per table: settings, key, notes and refusals (``refused`` > 0: sync would refuse
    some). Reads only."""
    with sqlite_failures(path):
        return planning.plan(path, dsn, schema, tables_config)


def pause(path: Path, dsn: Dsn, schema: str = "public") -> PauseResult:
    """Stop applying in both directions (every applier honours it within one poll;
    capture goes on, lag grows). ``path`` must be a readable SQLite file."""
    with sqlite_failures(path):
        ops.set_paused(path, dsn, schema, True)
    return PauseResult(schema, True)


def resume(path: Path, dsn: Dsn, schema: str = "public") -> PauseResult:
    """Undo :func:`pause`."""
    with sqlite_failures(path):
        ops.set_paused(path, dsn, schema, False)
    return PauseResult(schema, False)


def trim(path: Path, dsn: Dsn, schema: str = "public", *, batch: int = 500,
         max_seconds: float = 30.0, stop: threading.Event | None = None) -> TrimResult:
    """Delete the SQLite change-log rows the to-postgres applier applied, in short
    batches within ``max_seconds`` (``complete`` false: run again). A SQLite write
    competing with the app: while the fence holds at the flip, or after it. Never an
    unapplied row, nor the newest."""
    from pgshift.sync import trim as trimming

    with sqlite_failures(path):
        return TrimResult.from_dict(trimming.trim(path, dsn, schema, batch=batch,
                                                  max_seconds=max_seconds, stop=stop))


def uninstall(path: Path, dsn: Dsn | None = None, schema: str = "public"
              ) -> UninstallResult:
    """Remove capture from SQLite and, with ``dsn``, PostgreSQL capture and sync's state
    (green's revoked privileges granted back, sequences counting down turned up).
    Idempotent."""
    with sqlite_failures(path):
        return ops.uninstall(path, dsn, schema)
