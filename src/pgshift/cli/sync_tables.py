"""``pgshift sync plan|pause|resume`` and the per-table settings helpers of ``sync``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pgshift.cli.output import out_console, print_json
from pgshift.cli.sync_args import Json, PostgresDsn, Schema, SqlitePath
from pgshift.dsn import Dsn, connect, resolve
from pgshift.errors import ExitCode, UsageError
from pgshift.sync import settings as cfg
from pgshift.sync import state as st


def settings_file(path: Path, sqlite_path: Path | None, *,
                  lenient: bool = False) -> dict[str, cfg.TableSettings]:
    """Load a --tables-config file; with ``sqlite_path``, against its captured tables."""
    captured = _captured(sqlite_path) if sqlite_path is not None else None
    try:
        return cfg.load(path, captured, lenient=lenient)
    except cfg.TablesFileError as exc:
        raise UsageError(f"--tables-config {path}: {exc}",
                         hint="see docs/sync.md (per-table settings) and "
                              "docs/cutover.example.yaml") from None


def _captured(sqlite_path: Path) -> list[str]:
    from pgshift.sync import sqlite_capture as capture
    from pgshift.sync.apply import open_sqlite

    con = open_sqlite(sqlite_path)
    try:
        return capture.installed(con) or capture.capturable_tables(con)
    finally:
        con.close()


def install_settings(result: Any, postgres_dsn: str | None, schema: str,
                     tables_config: Path | None, app_role: str | None) -> dict[str, Any]:
    """After ``sync install``: store the settings; revoke writes on forbid tables."""
    if tables_config is None:
        return {}
    settings = cfg.parse({n: s.model_dump() for n, s in
                          settings_file(tables_config, None).items()},
                         [t.name for t in result.tables])
    out: dict[str, Any] = {"settings": {n: s.model_dump() for n, s in settings.items()}}
    if postgres_dsn is None:
        return out
    from pgshift.sync import privileges

    conn = connect(resolve(postgres_dsn), application_name="pgshift-sync")
    try:
        st.ensure_schema(conn)
        st.store_settings(conn, schema, settings)
        forbid = [n for n, s in settings.items() if s.green_writes == "forbid"]
        if app_role and forbid:
            out["revoked"] = privileges.revoke(conn, schema, app_role, forbid)
    finally:
        conn.close()
    return out


def restore_privileges(dsn: Dsn, schema: str) -> dict[str, Any]:
    """Grant back what ``--app-role`` revoked (flip, uninstall)."""
    from pgshift.sync import privileges

    conn = connect(dsn, application_name="pgshift-sync")
    try:
        return privileges.restore(conn, schema)
    finally:
        conn.close()


def set_paused(sqlite_path: Path, postgres_dsn: str, schema: str, paused: bool,
               json_output: bool) -> None:
    """Set or clear the paused flag and say so."""
    from pgshift.sync import ops

    ops.set_paused(sqlite_path, resolve(postgres_dsn), schema, paused)
    if json_output:
        print_json({"schema": schema, "paused": paused})
    else:
        out_console().print(
            f"sync into schema {schema} {'paused' if paused else 'resumed'}"
            + (": running appliers stop applying within one poll; changes keep being "
               "captured" if paused else ""))


def status_settings(dsn: Dsn, schema: str) -> dict[str, Any]:
    """``paused`` and the per-table settings for ``sync status``."""
    conn = connect(dsn, application_name="pgshift-sync")
    try:
        return {"paused": st.is_paused(conn, schema),
                "tables": {n: {k: v for k, v in row.items() if k != "table_name"}
                           for n, row in st.stored_settings(conn, schema).items()}}
    finally:
        conn.close()


def plan(sqlite_path: Path, dsn: Dsn | None, schema: str,
         tables_config: Path | None) -> dict[str, Any]:
    """Per table: kind, writes, conflict policy, green_writes, key, notes and refusals."""
    from pgshift.sync import sqlite_capture as capture
    from pgshift.sync.apply import open_sqlite

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
    idents: dict[str, Any] = {}
    if dsn is not None:
        from pgshift.sync import identity
        from pgshift.sync.apply import captured_on_postgres

        conn = connect(dsn, application_name="pgshift-sync")
        try:
            pg_captured = captured_on_postgres(conn, schema)
            stored = st.stored_settings(conn, schema)
            idents = {c.table: c for c in identity.find(conn, schema)}
        finally:
            conn.close()
    if tables_config is not None:
        settings = settings_file(tables_config, sqlite_path, lenient=True)
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
        rows.append({"table": n, "kind": s.kind, "writes": s.writes, "conflict": s.conflict,
                     "green_writes": s.green_writes, "key": keys[n],
                     "notes": _notes(s, n, pg_captured) + _identity_note(idents.get(n)),
                     "refusals": refusals})
    return {"schema": schema, "source": source, "tables": rows,
            "refused": sum(bool(r["refusals"]) for r in rows)}


def _identity_note(col: Any) -> list[str]:
    from pgshift.sync.identity import plan_note

    return plan_note(col)


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


def register(app: typer.Typer) -> None:
    """Add ``plan``, ``pause`` and ``resume`` to ``pgshift sync``."""

    @app.command("plan", no_args_is_help=True)
    def plan_command(
        sqlite_path: SqlitePath,
        postgres_dsn: Annotated[str | None, typer.Argument(
            help="The PostgreSQL copy (optional: stored settings, PostgreSQL capture).",
            show_default=False)] = None,
        tables_config: Annotated[Path | None, typer.Option(
            "--tables-config", help="Per-table settings: a cutover file or a tables: "
                                    "mapping.", show_default=False)] = None,
        schema: Schema = "public",
        json_output: Json = False,
    ) -> None:
        """Per table: kind, writes, conflict policy, green_writes, key, and refusals.

        Exit 2 when a table's settings are refused (the reason is printed).

          pgshift sync plan app.db env:DATABASE_URL --tables-config cutover.yaml
        """
        out = plan(sqlite_path, resolve(postgres_dsn) if postgres_dsn else None, schema,
                   tables_config)
        if json_output:
            print_json(out)
        else:
            con = out_console()
            con.print(f"sync plan for schema {schema} (settings from {out['source']}):")
            for r in out["tables"]:
                key = ", ".join(r["key"]) if r["key"] else "-"
                con.print(f"  {r['table']}: kind {r['kind']}, {r['writes']}, conflict "
                          f"{r['conflict']}, green_writes {r['green_writes']}, key ({key})",
                          highlight=False)
                for note in r["notes"]:
                    con.print(f"      note: {note}", highlight=False)
                for why in r["refusals"]:
                    con.print(f"      REFUSED: {why}", highlight=False)
        if out["refused"]:
            raise typer.Exit(int(ExitCode.USAGE))

    @app.command("pause", no_args_is_help=True)
    def pause_command(sqlite_path: SqlitePath, postgres_dsn: PostgresDsn,
                      schema: Schema = "public", json_output: Json = False) -> None:
        """Pause applying in both directions (captures keep accumulating).

        A running `sync run --follow` stops applying within one poll; status shows
        `paused` and the growing lag.

          pgshift sync pause app.db env:DATABASE_URL
        """
        set_paused(sqlite_path, postgres_dsn, schema, True, json_output)

    @app.command("resume", no_args_is_help=True)
    def resume_command(sqlite_path: SqlitePath, postgres_dsn: PostgresDsn,
                       schema: Schema = "public", json_output: Json = False) -> None:
        """Resume applying after `pgshift sync pause`.

          pgshift sync resume app.db env:DATABASE_URL
        """
        set_paused(sqlite_path, postgres_dsn, schema, False, json_output)
