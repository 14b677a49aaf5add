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
