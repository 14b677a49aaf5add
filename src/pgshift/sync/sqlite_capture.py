"""Change capture on SQLite: plain-SQL triggers writing a change log.

``install(con, tables)`` adds AFTER INSERT/UPDATE/DELETE triggers on every
captured table; each writes one row to ``_pgshift_changes``:

| column | holds |
|---|---|
| ``seq`` | INTEGER PRIMARY KEY AUTOINCREMENT: the order of changes, never reused |
| ``tbl`` | the table |
| ``op`` | ``I``, ``U`` or ``D`` |
| ``key_old`` / ``key_new`` | the primary key before / after (both set on updates) |
| ``row`` | the after-image (NULL for deletes) |
| ``before`` | the before-image (updates and deletes), for conflict detection |
| ``origin`` | ``sqlite`` (the app) |
| ``txid`` | reserved (SQLite has no transaction id visible to SQL) |
| ``schema_version`` | a fingerprint of the table's columns when the trigger was made |
| ``ts`` | capture time, ms since the epoch |

Keys and images are ``quote(col)`` literals joined by ``,`` (see
:mod:`pgshift.sync.image`): no JSON functions, so an app linking an older SQLite
can still open the file. The snapshot's high-water mark is ``max(seq)`` of
this table (:func:`pgshift.source.snapshot.read_hwm`).

Echo suppression: the triggers fire only ``WHEN NOT EXISTS`` a row
``('applying', '1')`` in ``_pgshift_state``. pgshift's SQLite applier sets that
row at the start of its own write transaction and clears it before COMMIT, so
no other connection ever sees it and none of the applier's writes is captured.
(A main-schema trigger cannot reference a temp table, so the flag is a real
table.)

Install and uninstall are idempotent; uninstall removes exactly what install
created: the change log, the state table, the triggers and the change log's
``sqlite_sequence`` row. SQLite cannot drop ``sqlite_sequence`` itself: in a
database with no AUTOINCREMENT table of its own it stays behind, empty.
"""

from __future__ import annotations

import sqlite3
import uuid
import zlib
from dataclasses import dataclass, field

from pgshift.errors import UsageError
from pgshift.source.catalog import PGSHIFT_PREFIX
from pgshift.source.snapshot import CAPTURE_STATE_TABLE, CHANGELOG_TABLE

STATE_TABLE = CAPTURE_STATE_TABLE
TRIGGER_PREFIX = "_pgshift_trg_"
ORIGIN = "sqlite"

# ts in ms since the epoch from julianday (unixepoch('subsec') needs SQLite 3.42).
_TS_SQL = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class CapturedTable:
    """What the triggers of one table capture, in image order."""

    name: str
    columns: tuple[str, ...]  # every stored or generated column, table_xinfo order
    key: tuple[str, ...]  # primary key columns, in key order
    fingerprint: int  # schema_version written by the triggers

    @property
    def trigger_names(self) -> tuple[str, str, str]:
        return tuple(f"{TRIGGER_PREFIX}{op}_{self.name}" for op in ("ins", "upd", "del"))  # type: ignore[return-value]


def describe(con: sqlite3.Connection, table: str) -> CapturedTable:
    """The capture shape of ``table`` from the live catalog (raises UsageError without a key)."""
    rows = con.execute(f"select cid, name, type, pk, hidden from pragma_table_xinfo({lit(table)})"
                       ).fetchall()
    if not rows:
        raise UsageError(f"table {table!r} does not exist",
                         hint="list the tables: sqlite3 FILE .tables")
    columns = tuple(r[1] for r in rows if r[4] in (0, 2, 3))
    key = tuple(r[1] for r in sorted((r for r in rows if r[3]), key=lambda r: r[3]))
    if not key:
        raise UsageError(
            f"table {table!r} has no primary key: sync needs a key to apply updates and "
            "deletes",
            hint=f"add a primary key to {table}, or leave it out: pgshift sync install FILE "
                 f"--exclude {table}", table=table)
    shape = "|".join(f"{r[1]}:{(r[2] or '').upper()}:{r[3]}:{r[4]}" for r in rows)
    fingerprint = zlib.crc32(f"{table}|{shape}".encode()) & 0x7FFFFFFF
    return CapturedTable(table, columns, key, fingerprint)


def capturable_tables(con: sqlite3.Connection) -> list[str]:
    """Every ordinary table of the main schema that pgshift migrates."""
    rows = con.execute(
        "select name, sql from sqlite_schema where type = 'table' order by rowid").fetchall()
    return [name for name, sql in rows
            if not name.startswith("sqlite_") and not name.startswith(PGSHIFT_PREFIX)
            and not (sql or "").upper().startswith("CREATE VIRTUAL")]


def _image(alias: str, columns: tuple[str, ...]) -> str:
    return " || ',' || ".join(f"quote({alias}.{q(c)})" for c in columns)


def trigger_sql(t: CapturedTable) -> list[str]:
    """The three CREATE TRIGGER statements of one table."""
    when = (f"WHEN NOT EXISTS (SELECT 1 FROM {q(STATE_TABLE)} "
            "WHERE k = 'applying' AND v = '1')")
    cols = "(tbl, op, key_old, key_new, row, before, origin, schema_version, ts)"
    head = f"INSERT INTO {q(CHANGELOG_TABLE)} {cols} VALUES ({lit(t.name)}, "
    tail = f"{lit(ORIGIN)}, {t.fingerprint}, {_TS_SQL})"
    ins, upd, dele = t.trigger_names
    kn, ko = _image("NEW", t.key), _image("OLD", t.key)
    rn, ro = _image("NEW", t.columns), _image("OLD", t.columns)
    return [
        f"CREATE TRIGGER IF NOT EXISTS {q(ins)} AFTER INSERT ON {q(t.name)} {when} BEGIN "
        f"{head}'I', NULL, {kn}, {rn}, NULL, {tail}; END",
        f"CREATE TRIGGER IF NOT EXISTS {q(upd)} AFTER UPDATE ON {q(t.name)} {when} BEGIN "
        f"{head}'U', {ko}, {kn}, {rn}, {ro}, {tail}; END",
        f"CREATE TRIGGER IF NOT EXISTS {q(dele)} AFTER DELETE ON {q(t.name)} {when} BEGIN "
        f"{head}'D', {ko}, NULL, NULL, {ro}, {tail}; END",
    ]


CHANGELOG_SQL = f"""CREATE TABLE IF NOT EXISTS {q(CHANGELOG_TABLE)} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    op TEXT NOT NULL,
    key_old TEXT,
    key_new TEXT,
    row TEXT,
    before TEXT,
    origin TEXT NOT NULL,
    txid INTEGER,
    schema_version INTEGER NOT NULL,
    ts INTEGER NOT NULL
)"""
STATE_SQL = (f"CREATE TABLE IF NOT EXISTS {q(STATE_TABLE)} "
             "(k TEXT PRIMARY KEY NOT NULL, v TEXT NOT NULL)")


@dataclass
class InstallResult:
    tables: list[CapturedTable]
    created: bool  # False when everything already existed
    # PostgreSQL identity/serial sequences and what install did to them (--green-ids)
    identities: list[dict[str, object]] = field(default_factory=list)
    postgres_capture: dict[str, object] | None = None  # with PG: triggers or logical slot
    # with per-table settings: those stored (every captured table), and with an app
    # role, the privileges revoked from it per green_writes: forbid table
    settings: dict[str, dict[str, object]] | None = None
    revoked: dict[str, list[str]] | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "tables": [{"table": t.name, "key": list(t.key), "columns": len(t.columns),
                        "schema_version": t.fingerprint} for t in self.tables],
            "created": self.created, "identities": self.identities,
            "postgres_capture": self.postgres_capture}
        if self.settings is not None:
            out["settings"] = self.settings
        if self.revoked is not None:
            out["revoked"] = self.revoked
        return out


def install(con: sqlite3.Connection, tables: list[str] | None = None, *,
            exclude: list[str] | None = None) -> InstallResult:
    """Create the change log, the state table and the triggers, in one transaction.

    Every table must have a primary key (UsageError names the keyless ones).
    Re-running is harmless; a table whose columns changed since its triggers
    were made has them recreated.
    """
    names = tables if tables else capturable_tables(con)
    names = [n for n in names if n not in set(exclude or [])]
    keyless = []
    shapes = []
    for name in names:
        try:
            shapes.append(describe(con, name))
        except UsageError as exc:
            if "no primary key" not in exc.message:
                raise
            keyless.append(name)
    if keyless:
        excl = " ".join(f"--exclude {n}" for n in keyless)
        raise UsageError(
            f"sync needs a primary key on every captured table; without one: "
            f"{', '.join(keyless)}",
            hint=f"add primary keys, or capture the others only: pgshift sync install FILE {excl}")
    before = _schema(con)
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute(CHANGELOG_SQL)
        con.execute(STATE_SQL)
        con.execute(f"INSERT OR IGNORE INTO {q(STATE_TABLE)} VALUES ('applying', '0')")
        # Identifies this change log: a reinstall restarts seq at 1, and an applier whose
        # checkpoint belongs to the old log must refuse rather than skip changes.
        con.execute(f"INSERT OR IGNORE INTO {q(STATE_TABLE)} VALUES ('install_id', ?)",
                    (uuid.uuid4().hex,))
        for t in shapes:
            existing = con.execute(
                "select sql from sqlite_schema where type = 'trigger' and name = ?",
                (t.trigger_names[0],)).fetchone()
            if existing and f", {t.fingerprint}, " not in existing[0]:
                for trig in t.trigger_names:
                    con.execute(f"DROP TRIGGER IF EXISTS {q(trig)}")
            for stmt in trigger_sql(t):
                con.execute(stmt)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return InstallResult(shapes, created=_schema(con) != before)


def uninstall(con: sqlite3.Connection) -> bool:
    """Drop everything install created; True when something was removed."""
    triggers = [r[0] for r in con.execute(
        "select name from sqlite_schema where type = 'trigger' and name like ? escape '\\'",
        (TRIGGER_PREFIX.replace("_", "\\_") + "%",))]
    if not triggers and not _exists(con, CHANGELOG_TABLE) and not _exists(con, STATE_TABLE):
        return False
    con.execute("BEGIN IMMEDIATE")
    try:
        for name in triggers:
            con.execute(f"DROP TRIGGER IF EXISTS {q(name)}")
        con.execute(f"DROP TABLE IF EXISTS {q(CHANGELOG_TABLE)}")
        con.execute(f"DROP TABLE IF EXISTS {q(STATE_TABLE)}")
        if _exists(con, "sqlite_sequence"):
            # SQLite cannot drop sqlite_sequence: when install created it, it stays, empty.
            con.execute("DELETE FROM sqlite_sequence WHERE name = ?", (CHANGELOG_TABLE,))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return True


def install_id(con: sqlite3.Connection) -> str | None:
    """The id of the installed change log (None without capture)."""
    if not _exists(con, STATE_TABLE):
        return None
    row = con.execute(f"select v from {q(STATE_TABLE)} where k = 'install_id'").fetchone()
    return str(row[0]) if row else None


def installed(con: sqlite3.Connection) -> list[str]:
    """The tables that have capture triggers."""
    return sorted({r[0] for r in con.execute(
        "select tbl_name from sqlite_schema where type = 'trigger' and name like ? escape '\\'",
        (TRIGGER_PREFIX.replace("_", "\\_") + "%",))})


def _exists(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("select 1 from sqlite_schema where name = ?", (name,)).fetchone() \
        is not None


def _schema(con: sqlite3.Connection) -> list[tuple]:
    return con.execute("select type, name, tbl_name, sql from sqlite_schema order by name"
                       ).fetchall()
