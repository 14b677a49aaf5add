"""``pgshift sync`` on bad input: the documented exit code, one ``Error:`` line and a
``Try:`` hint, and nothing half done to the production SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgshift.cli.main import main
from pgshift.demo.seed import seed
from pgshift.dsn import Dsn
from pgshift.errors import UsageError
from pgshift.sync import ops
from sync_helpers import schema_of

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/x"


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    db = tmp_path / "app.db"
    seed(db, 30, seed=7)
    return db


def test_install_with_an_unreachable_postgres_touches_nothing(
        app_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = schema_of(app_db)
    code, _, err = _run(capsys, ["sync", "install", str(app_db), UNREACHABLE])
    assert code == 2, err
    assert err.startswith("Error: cannot connect to PostgreSQL") and "\nTry: " in err
    assert schema_of(app_db) == before  # no trigger, no change log


def test_install_refused_by_postgres_undoes_the_sqlite_half(app_db: Path,
                                                            pg_dsn: Dsn) -> None:
    before = schema_of(app_db)
    with pytest.raises(UsageError, match="tables missing in PostgreSQL"):
        ops.install(app_db, dsn=pg_dsn)  # reachable, but nothing migrated there
    assert schema_of(app_db) == before
    # an install that was already there stays when a later PostgreSQL step is refused
    ops.install(app_db)
    installed = schema_of(app_db)
    with pytest.raises(UsageError, match="tables missing in PostgreSQL"):
        ops.install(app_db, dsn=pg_dsn)
    assert schema_of(app_db) == installed


@pytest.mark.parametrize("verb", ["pause", "resume"])
def test_pause_and_resume_check_the_sqlite_file(verb: str, tmp_path: Path, app_db: Path,
                                                pg_dsn: Dsn,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, ["sync", verb, str(tmp_path / "missing.db"), pg_dsn.conninfo])
    assert code == 2 and "SQLite file not found" in err and "Try: " in err
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello\n")
    code, _, err = _run(capsys, ["sync", verb, str(not_sqlite), pg_dsn.conninfo])
    assert code == 2 and "not a SQLite 3 database" in err
    code, out, err = _run(capsys, ["sync", verb, str(app_db), pg_dsn.conninfo, "--json"])
    assert code == 0, err
    assert '"paused": ' + ("true" if verb == "pause" else "false") in out


def _damaged(app_db: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the captured file, cut short (a crash mid-copy) or with garbage pages."""
    ops.install(app_db)
    data = app_db.read_bytes()
    bad = tmp_path / f"{how}.db"
    if how == "truncated":
        bad.write_bytes(data[:len(data) // 3])
    else:  # the schema page overwritten after the 100-byte header
        bad.write_bytes(data[:100] + bytes(range(256)) * 15 + data[100 + 256 * 15:])
    return bad


SQLITE_ONLY = [["install"], ["status"], ["plan"], ["uninstall"]]
WITH_PG = [["install"], ["run"], ["status"], ["plan"], ["uninstall"], ["drain"], ["flip"],
           ["trim"], ["drain", "--direction", "to-sqlite"]]


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_sqlite_file_is_a_sqlite_failure_not_a_crash(
        how: str, app_db: Path, tmp_path: Path, pg_dsn: Dsn,
        capsys: pytest.CaptureFixture[str]) -> None:
    bad = _damaged(app_db, tmp_path, how)
    runs = [[c[0], str(bad), *c[1:]] for c in SQLITE_ONLY] + \
        [[c[0], str(bad), pg_dsn.conninfo, *c[1:]] for c in WITH_PG]
    for argv in runs:
        code, _, err = _run(capsys, ["sync", *argv])
        # 4: SQLite failed on the file; 2 only where PostgreSQL said no first (to-sqlite
        # drain without PostgreSQL capture)
        assert code == (2 if "to-sqlite" in argv else 4), (argv, err)
        assert err.startswith("Error: ") and "\nTry: " in err, (argv, err)
        if code == 4:
            assert f"SQLite failed on {bad}" in err and "integrity_check" in err, err
        assert "internal error" not in err and "Traceback" not in err


def test_a_binary_tables_config_is_bad_input(app_db: Path, tmp_path: Path, pg_dsn: Dsn,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "cutover.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    ops.install(app_db)
    for argv in (["install", str(app_db)], ["plan", str(app_db)],
                 ["run", str(app_db), pg_dsn.conninfo]):
        code, _, err = _run(capsys, ["sync", *argv, "--tables-config", str(binary)])
        assert code == 2, (argv, err)
        assert "is not a text file" in err and "Try: " in err


def test_a_truncated_ledger_is_bad_input(app_db: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from pgshift.demo.ledger import Entry, LedgerWriter

    ledger = tmp_path / "w.jsonl"
    with LedgerWriter(ledger) as w:
        w.record(Entry(op="user.create", table="users", key=1, sent=1, ts=2,
                       values={"name": "Zoë Ünal"}))
        w.record(Entry(op="user.create", table="users", key=2, sent=1, ts=2,
                       values={"name": "Ånd €"}))
    data = ledger.read_bytes()
    second = data.index(b"\n") + 1
    # cuts inside line 2: inside each multi-byte UTF-8 character, and a few others
    cuts = {n for n in range(second + 1, len(data) - 1) if data[n] & 0xC0 == 0x80}
    assert cuts
    cuts |= {second + 1, (second + len(data)) // 2, len(data) - 2}
    for n in sorted(cuts):
        ledger.write_bytes(data[:n])
        code, _, err = _run(capsys, ["load", "check-ledger", str(ledger), "--sqlite",
                                     str(app_db)])
        assert code == 2, (n, err)
        assert "line 2" in err and f"head -n 1 {ledger}" in err, (n, err)


@pytest.mark.parametrize("extra, says", [
    (["--mode", "bogus"], "--mode 'bogus'"),
    (["--mode", "dual", "--trim"], "--trim applies to --mode to-sqlite only"),
    (["--mode", "to-sqlite", "--from-hwm", "3"], "--from-hwm applies to --mode to-postgres"),
    (["--mode", "dual", "--sor", "nope"], "--sor 'nope'"),
    (["--once", "--follow"], "exclude each other"),
])
def test_run_refuses_options_that_do_not_go_together_before_connecting(
        extra: list[str], says: str, app_db: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, ["sync", "run", str(app_db), UNREACHABLE, *extra])
    assert code == 2 and says in err and "Try: " in err, err
    assert "cannot connect" not in err


def test_a_failed_write_into_the_app_file_gets_the_hint_of_its_cause(tmp_path: Path) -> None:
    """The fence marker and uninstall write into the app's file: a lock, a read-only
    file and a full disk each need a different hand, so the hint follows the message."""
    import sqlite3

    from pgshift.sync.common import sqlite_write_hint

    db = tmp_path / "app.db"
    con = sqlite3.connect(db, timeout=0)
    con.execute("create table t (x)")
    con.commit()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("begin immediate")
    try:
        with pytest.raises(sqlite3.OperationalError) as locked:
            con.execute("insert into t values (1)")
    finally:
        holder.execute("rollback")
        holder.close()
    assert "write transaction" in sqlite_write_hint(locked.value, db)
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as readonly:
        ro.execute("insert into t values (1)")
    ro.close()
    con.close()
    assert "write access" in sqlite_write_hint(readonly.value, db)
    other = sqlite_write_hint(sqlite3.OperationalError("no such table: t"), db)
    assert "quick_check" in other and str(db) in other
