"""SQLite capture: triggers, change log, images, install/uninstall (real SQLite files only)."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from pgshift.errors import UsageError
from pgshift.source.snapshot import read_hwm, take_snapshot
from pgshift.sync import image
from pgshift.sync import sqlite_capture as capture
from pgshift.sync.apply import open_sqlite
from sync_helpers import schema_of, write

SCHEMA = """
CREATE TABLE parent (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT UNIQUE, score REAL);
CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id), note TEXT);
CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB, n INTEGER) WITHOUT ROWID;
CREATE TABLE two (a INTEGER, b TEXT, c TEXT, PRIMARY KEY (a, b));
"""


def make(tmp_path: Path, script: str = SCHEMA, wal: bool = True) -> Path:
    db = tmp_path / "cap.db"
    con = sqlite3.connect(db)
    con.executescript(script)
    if wal:
        con.execute("pragma journal_mode=wal")
    con.close()
    return db


def changes(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("select seq, tbl, op, key_old, key_new, row, before, origin "
                           "from _pgshift_changes order by seq").fetchall()
    finally:
        con.close()


def installed(db: Path, **kw: object) -> capture.InstallResult:
    con = open_sqlite(db, readonly=False)
    try:
        return capture.install(con, **kw)  # type: ignore[arg-type]
    finally:
        con.close()


def test_install_is_idempotent_and_uninstall_restores_the_schema(tmp_path: Path) -> None:
    db = make(tmp_path)
    write(db, "insert into parent(email) values ('x')")  # sqlite_sequence exists already
    before = schema_of(db)
    first = installed(db)
    assert first.created and {t.name for t in first.tables} == {"parent", "child", "kv", "two"}
    middle = schema_of(db)
    again = installed(db)
    assert not again.created and schema_of(db) == middle
    con = open_sqlite(db, readonly=False)
    try:
        assert capture.uninstall(con) is True
        assert capture.uninstall(con) is False
        assert con.execute("select count(*) from sqlite_sequence where name = ?",
                           ("_pgshift_changes",)).fetchone()[0] == 0
    finally:
        con.close()
    assert schema_of(db) == before


def test_trigger_sql_is_plain(tmp_path: Path) -> None:
    db = make(tmp_path)
    installed(db)
    con = sqlite3.connect(db)
    sql = " ".join(r[0] for r in con.execute(
        "select sql from sqlite_schema where type = 'trigger'")).lower()
    con.close()
    assert "quote(" in sql
    for banned in ("json", "->", "unixepoch", "temp."):
        assert banned not in sql


def test_keyless_table_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    db = make(tmp_path, SCHEMA + "CREATE TABLE log (line TEXT);")
    with pytest.raises(UsageError) as err:
        installed(db)
    assert "log" in err.value.message and "primary key" in err.value.message
    assert "--exclude log" in (err.value.hint or "")
    assert installed(db, exclude=["log"]).tables  # the rest installs fine
    con = sqlite3.connect(db)
    try:
        assert capture.installed(con) == ["child", "kv", "parent", "two"]
    finally:
        con.close()


def test_insert_update_delete_and_key_update(tmp_path: Path) -> None:
    db = make(tmp_path)
    installed(db)
    write(db, "insert into parent(email, score) values ('a', 1.5)",
          "update parent set score = 2.5 where id = 1",
          "update parent set id = 7 where id = 1",
          "delete from parent where id = 7")
    rows = changes(db)
    assert [(r[2], r[3], r[4]) for r in rows] == [
        ("I", None, "1"), ("U", "1", "1"), ("U", "1", "7"), ("D", "7", None)]
    assert rows[0][5] == "1,'a',1.5"
    assert rows[1][6] == "1,'a',1.5" and rows[1][5] == "1,'a',2.5"  # before and after
    assert rows[3][5] is None and rows[3][6] == "7,'a',2.5"
    assert {r[7] for r in rows} == {"sqlite"}


def test_replace_and_upsert(tmp_path: Path) -> None:
    db = make(tmp_path)
    installed(db)
    write(db, "insert into parent(id, email) values (1, 'a')",
          "insert into parent(id, email) values (2, 'b')",
          # evicts row 1 (same email) without a delete trigger, then inserts id 2 anew
          "insert or replace into parent(id, email) values (2, 'a')",
          "insert into parent(id, email) values (3, 'c') on conflict(id) do nothing",
          "insert into parent(id, email) values (3, 'c') on conflict(id) "
          "do update set email = 'c2'")
    ops = [(r[2], r[4]) for r in changes(db)]
    assert ops == [("I", "1"), ("I", "2"), ("I", "2"), ("I", "3"), ("U", "3")]


def test_recursive_triggers_log_the_eviction(tmp_path: Path) -> None:
    db = make(tmp_path)
    installed(db)
    con = sqlite3.connect(db)
    con.execute("pragma recursive_triggers = on")
    con.execute("insert into parent(id, email) values (1, 'a')")
    con.execute("insert or replace into parent(id, email) values (2, 'a')")
    con.commit()
    con.close()
    assert [(r[2], r[3] or r[4]) for r in changes(db)] == [("I", "1"), ("D", "1"), ("I", "2")]


def test_without_rowid_and_composite_keys(tmp_path: Path) -> None:
    db = make(tmp_path)
    installed(db)
    write(db, ("insert into kv values (?, ?, ?)", ("k'1", b"\x00\xff", 2**62)),
          "insert into two values (1, 'x,y', 'z')",
          "update two set b = 'w' where a = 1")
    rows = changes(db)
    assert image.decode(rows[0][4]) == ["k'1"]
    assert image.decode(rows[0][5]) == ["k'1", b"\x00\xff", 2**62]
    assert image.decode(rows[2][3]) == [1, "x,y"] and image.decode(rows[2][4]) == [1, "w"]


def test_echo_suppression_flag(tmp_path: Path) -> None:
    db = make(tmp_path)
    installed(db)
    con = open_sqlite(db, readonly=False)
    con.execute("BEGIN IMMEDIATE")
    con.execute("update _pgshift_state set v = '1' where k = 'applying'")
    con.execute("insert into parent(email) values ('from-postgres')")
    con.execute("update _pgshift_state set v = '0' where k = 'applying'")
    con.execute("COMMIT")
    con.close()
    write(db, "insert into parent(email) values ('from-app')")
    assert [image.decode(r[5])[1] for r in changes(db)] == ["from-app"]


def test_snapshot_hwm_is_the_last_seq(tmp_path: Path) -> None:
    db = make(tmp_path)
    installed(db)
    write(db, "insert into parent(email) values ('a')", "insert into parent(email) values ('b')")
    snap = take_snapshot(db, tmp_path / "snaps")
    assert snap.hwm == 2
    con = sqlite3.connect(db)
    try:
        assert read_hwm(con) == 2
    finally:
        con.close()


def test_seq_is_never_reused_after_the_log_is_emptied(tmp_path: Path) -> None:
    db = make(tmp_path)
    installed(db)
    write(db, "insert into parent(email) values ('a')", "delete from _pgshift_changes")
    write(db, "insert into parent(email) values ('b')")
    assert [r[0] for r in changes(db)] == [2]


def test_wal_with_a_concurrent_writer(tmp_path: Path) -> None:
    db = make(tmp_path)
    installed(db)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            con = sqlite3.connect(db, timeout=10)
            for i in range(100):
                con.execute("insert into child(parent_id, note) values (null, ?)", (f"{n}-{i}",))
                con.commit()
            con.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    reader = open_sqlite(db)
    for t in threads:
        t.start()
    seen = 0
    while any(t.is_alive() for t in threads):
        seen = max(seen, reader.execute("select count(*) from _pgshift_changes").fetchone()[0])
    for t in threads:
        t.join()
    reader.close()
    assert not errors
    rows = changes(db)
    assert len(rows) == 300 and [r[0] for r in rows] == list(range(1, 301))
    assert sorted(image.decode(r[5])[2] for r in rows) == sorted(
        f"{n}-{i}" for n in range(3) for i in range(100))


def test_column_change_changes_the_fingerprint(tmp_path: Path) -> None:
    db = make(tmp_path)
    con = open_sqlite(db, readonly=False)
    before = capture.describe(con, "parent").fingerprint
    con.execute("alter table parent add column extra TEXT")
    assert capture.describe(con, "parent").fingerprint != before
    con.close()


_values = hs.one_of(
    hs.none(), hs.integers(-(2**63), 2**63 - 1),
    # quote()'s documented exact range (docs/sync.md, "Limits of quote()"): 0 and
    # magnitudes 1e-100..1e100; SQLite 3.40 prints a few reals outside it one ulp off
    hs.floats(allow_nan=False, min_value=-1e100, max_value=1e100).filter(
        lambda x: x == 0 or abs(x) >= 1e-100),
    hs.floats(allow_nan=False).filter(math.isinf),
    hs.text(alphabet=hs.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])),
    hs.binary(max_size=20),
)


@given(hs.lists(_values, min_size=1, max_size=6))
def test_quote_images_round_trip(values: list[object]) -> None:
    con = sqlite3.connect(":memory:")
    try:
        marks = " || ',' || ".join("quote(?)" for _ in values)
        text = con.execute(f"select {marks}", values).fetchone()[0]
    finally:
        con.close()
    decoded = image.decode(text)
    assert len(decoded) == len(values)
    for got, want in zip(decoded, values, strict=True):
        assert type(got) is type(want) or (want is None and got is None)
        if isinstance(want, float):
            assert got == want or (want == 0 and got == 0)
        else:
            assert got == want


def test_bad_image_is_an_error() -> None:
    with pytest.raises(image.ImageError):
        image.decode("1,,2")
    with pytest.raises(image.ImageError):
        image.decode("'unterminated")
