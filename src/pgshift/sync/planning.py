"""``pgshift sync plan`` and the ``--tables-config`` file: per-table settings, checked.

:func:`load_settings` reads a cutover file's ``tables:`` (or a bare mapping) as
:class:`~pgshift.sync.settings.TableSettings` per table, bad input as ``UsageError``;
:func:`plan` says, per captured table, what sync will do with it: kind, writes,
conflict policy, green_writes, key, notes (risks) and refusals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgshift.dsn import Dsn, connect
from pgshift.errors import UsageError
from pgshift.sync import identity
from pgshift.sync import settings as cfg
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync.apply import captured_on_postgres, open_sqlite
from pgshift.sync.results import PlanRow, SyncPlan

SETTINGS_HINT = "see docs/sync.md (per-table settings) and docs/cutover.example.yaml"


def load_settings(path: Path, sqlite_path: Path | None = None, *,
                  lenient: bool = False) -> dict[str, cfg.TableSettings]:
    """Load a ``--tables-config`` file; with ``sqlite_path``, against its captured tables
    (or, before install, the tables install would capture). ``UsageError`` (exit 2)
    for a file that cannot be used; ``lenient`` lets refused combinations through
    (``plan`` reports them instead)."""
    captured = captured_or_capturable(sqlite_path) if sqlite_path is not None else None
    try:
        return cfg.load(path, captured, lenient=lenient)
    except cfg.TablesFileError as exc:
        raise UsageError(f"--tables-config {path}: {exc}", hint=SETTINGS_HINT) from None


def for_tables(settings: dict[str, cfg.TableSettings], tables: list[str],
               source: Path | str) -> dict[str, cfg.TableSettings]:
    """``settings`` for exactly ``tables`` (defaults for the others); ``UsageError`` when
    the settings name a table not among them."""
    try:
        return cfg.parse({n: s.model_dump() for n, s in settings.items()}, tables)
    except cfg.TablesFileError as exc:
        raise UsageError(f"--tables-config {source}: {exc}", hint=SETTINGS_HINT) from None


def captured_or_capturable(sqlite_path: Path) -> list[str]:
    """The captured tables of ``sqlite_path``, or those install would capture."""
    con = open_sqlite(sqlite_path)
    try:
        return capture.installed(con) or capture.capturable_tables(con)
    finally:
        con.close()


def plan(sqlite_path: Path, dsn: Dsn | None = None, schema: str = "public",
         tables_config: Path | None = None) -> SyncPlan:
    """Per table: kind, writes, conflict policy, green_writes, key, notes and refusals.

    Settings come from ``tables_config`` when given, else those stored in
    ``pgshift.sync_tables`` (with ``dsn``), else the defaults. Reads only.
    """
    con = open_sqlite(sqlite_path)
    try:
        names = capture.installed(con) or capture.capturable_tables(con)
        keys: dict[str, list[str] | None] = {}
        for n in names:
            try:
                keys[n] = list(capture.describe(con, n).key)
            except UsageError:
                keys[n] = None
    finally:
        con.close()
    pg_captured: set[str] | None = None
    stored: dict[str, dict[str, Any]] = {}
    idents: dict[str, identity.IdentityColumn] = {}
    if dsn is not None:
        conn = connect(dsn, application_name="pgshift-sync")
        try:
            pg_captured = captured_on_postgres(conn, schema)
            stored = st.stored_settings(conn, schema)
            idents = {c.table: c for c in identity.find(conn, schema)}
        finally:
            conn.close()
    if tables_config is not None:
        settings = load_settings(tables_config, sqlite_path, lenient=True)
        source = str(tables_config)
    else:
        settings = {n: cfg.TableSettings.model_validate(
            {k: stored[n][k] for k in ("kind", "writes", "conflict", "green_writes")},
            context={"lenient": True}) if n in stored else cfg.DEFAULT for n in names}
        source = "pgshift.sync_tables" if stored else "defaults"
    rows = []
    for n in names:
        s = settings.get(n, cfg.DEFAULT)
        refusals = [r for r in [s.refusal()] if r]
        if keys[n] is None:
            refusals.append("no primary key: sync needs a key to apply updates and deletes "
                            f"(--exclude {n})")
        rows.append(PlanRow(n, s.kind, s.writes, s.conflict, s.green_writes, keys[n],
                            _notes(s, n, pg_captured) + identity.plan_note(idents.get(n)),
                            refusals))
    return SyncPlan(schema, source, rows)


def _notes(s: cfg.TableSettings, name: str, pg_captured: set[str] | None) -> list[str]:
    notes = []
    if s.kind in ("queue", "counter"):
        notes.append(f"kind {s.kind}: single-writer only (dual-writer would be a bug, not a "
                     "conflict)")
    if s.dual:
        notes.append("dual-writer: sync run --mode dual writes SQLite while blue writes: "
                     "blue's deferred transactions may fail with SQLITE_BUSY_SNAPSHOT")
        if pg_captured is not None and name not in pg_captured:
            notes.append("dual-writer needs PostgreSQL capture: pgshift sync install "
                         "SQLITE PG")
    if s.conflict == "last-writer-wins":
        notes.append("last-writer-wins compares blue's and PostgreSQL's clocks: only where "
                     "they are trusted; an unknown time falls back to sor-wins")
    if s.conflict in ("green-wins", "last-writer-wins") and not s.dual:
        notes.append("before the flip green's winning version stays in PostgreSQL and "
                     "reaches SQLite at the flip (PostgreSQL capture), not before")
    if s.green_writes == "forbid":
        notes.append("green's role gets no INSERT/UPDATE/DELETE/TRUNCATE until the flip "
                     "(sync install --app-role)")
    return notes
