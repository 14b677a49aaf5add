"""The CLI's error contract: exit 2, ``Error: <fact>`` then ``Try: <next step>``, no traceback,
no password; and help for every command."""

from __future__ import annotations

import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from psycopg import conninfo

from pgshift.cli.main import app, main


@pytest.fixture
def good_db(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)")
    con.execute("INSERT INTO t VALUES (1, 'x')")
    con.commit()
    con.close()
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_usage_error(code: int, err: str, *, fact: str) -> None:
    assert code == 2, err
    assert err.startswith("Error: "), err
    assert fact in err.splitlines()[0], err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert any(line.startswith("Try: ") and len(line) > len("Try: ") for line in lines), err



@pytest.mark.parametrize("case", [
    "missing_file",
    "directory",
    "not_sqlite",
    "empty_file",
    "bad_dsn_syntax",
    "env_var_unset",
    "data_only_and_schema_only",
    "jobs_zero",
    "closed_port",
])
def test_input_errors_exit_2_with_error_and_try(case: str, tmp_path: Path, good_db: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    dsn = "postgresql://nobody@127.0.0.1:1/nodb"
    (tmp_path / "not.db").write_text("this is not a SQLite database, just some text\n")
    (tmp_path / "empty.db").write_bytes(b"")
    monkeypatch.delenv("PGSHIFT_TEST_UNSET_VAR", raising=False)
    argv, fact = {
        "missing_file": (["migrate", str(tmp_path / "nope.db"), dsn], "SQLite file not found"),
        "directory": (["migrate", str(tmp_path), dsn], "is a directory"),
        "not_sqlite": (["migrate", str(tmp_path / "not.db"), dsn], "not a SQLite 3 database"),
        "empty_file": (["migrate", str(tmp_path / "empty.db"), dsn], "is an empty file"),
        "bad_dsn_syntax": (["migrate", str(good_db), "host=127.0.0.1 port"],
                           "not a valid PostgreSQL DSN"),
        "env_var_unset": (["migrate", str(good_db), "env:PGSHIFT_TEST_UNSET_VAR"],
                          "PGSHIFT_TEST_UNSET_VAR"),
        "data_only_and_schema_only": (["migrate", str(good_db), dsn, "--data-only",
                                       "--schema-only"], "exclude each other"),
        "jobs_zero": (["migrate", str(good_db), dsn, "--jobs", "0"], "--jobs"),
        "closed_port": (["migrate", str(good_db),
                         f"postgresql://nobody:pw@127.0.0.1:{_closed_port()}/db"],
                        "cannot connect to PostgreSQL"),
    }[case]
    code, _, err = _run(capsys, argv + state)
    _assert_usage_error(code, err, fact=fact)
    if case == "closed_port":
        assert "password=***" in err and ":pw@" not in err


def test_dry_run_does_not_need_a_server_but_still_checks_input(
        tmp_path: Path, good_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, ["migrate", str(good_db), "postgresql://nobody@127.0.0.1:1/x",
                                   "--dry-run", "--state-dir", str(tmp_path / "state")])
    assert code == 0, err
    assert "CREATE TABLE" in out


def test_require_wal_refuses_a_rollback_journal_source(tmp_path: Path, good_db: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, ["migrate", str(good_db), "postgresql://nobody@127.0.0.1:1/x",
                                 "--dry-run", "--require-wal",
                                 "--state-dir", str(tmp_path / "state")])
    # progress lines may precede it: the snapshot step had started
    error = err[err.index("Error: "):]
    _assert_usage_error(code, error, fact="journal_mode=delete")
    assert "PRAGMA journal_mode=WAL" in error


# ------------------------------------------------------------------------- server-side refusals


@pytest.fixture
def server_params(pg_server: Any) -> dict[str, str]:
    return conninfo.conninfo_to_dict(pg_server.dsn().conninfo)


def test_wrong_password_never_printed(server_params: dict[str, str], tmp_path: Path,
                                      good_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = f"Wr0ng-{uuid.uuid4().hex}"
    dsn = (f"postgresql://{server_params['user']}:{wrong}@{server_params['host']}:"
           f"{server_params['port']}/postgres")
    code, out, err = _run(capsys, ["migrate", str(good_db), dsn,
                                   "--state-dir", str(tmp_path / "state")])
    _assert_usage_error(code, err, fact="cannot connect to PostgreSQL")
    assert "password authentication failed" in err
    assert "check the password" in err
    assert wrong not in err and wrong not in out
    # the same through a keyword DSN and through env:VAR
    kw = (f"host={server_params['host']} port={server_params['port']} "
          f"user={server_params['user']} password={wrong} dbname=postgres")
    code, out, err = _run(capsys, ["migrate", str(good_db), kw,
                                   "--state-dir", str(tmp_path / "state")])
    assert code == 2 and wrong not in err + out


def test_nonexistent_database(server_params: dict[str, str], tmp_path: Path, good_db: Path,
                              capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    missing = f"no_such_db_{uuid.uuid4().hex[:8]}"
    dsn = conninfo.make_conninfo(**{**server_params, "dbname": missing})
    monkeypatch.setenv("PGSHIFT_TEST_TARGET", dsn)
    code, out, err = _run(capsys, ["migrate", str(good_db), "env:PGSHIFT_TEST_TARGET",
                                   "--state-dir", str(tmp_path / "state")])
    _assert_usage_error(code, err, fact="cannot connect to PostgreSQL")
    assert f'database "{missing}" does not exist' in err
    assert "createdb" in err
    password = server_params.get("password")
    if password:
        assert password not in err + out


# ------------------------------------------------------------------------- help


def _walk(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, [*path, name])


COMMANDS = list(_walk(typer.main.get_command(app), []))


def test_the_expected_commands_are_registered() -> None:
    paths = [p for p, _ in COMMANDS]
    for expected in ([], ["demo"], ["demo", "seed"], ["migrate"]):
        assert expected in paths


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "root")
def test_every_command_has_help(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    command = dict((tuple(p), c) for p, c in COMMANDS)[tuple(path)]
    assert (command.help or "").strip(), f"{path} has no docstring help"
    for param in command.params:
        if param.name in ("help",):
            continue
        assert (getattr(param, "help", None) or "").strip(), f"{path}: {param.name} has no help"
    code, out, err = _run(capsys, [*path, "--help"])
    assert code == 0, err
    assert out.startswith(f"Usage: pgshift{''.join(' ' + p for p in path)}")
    assert command.help.strip().splitlines()[0][:40] in " ".join(out.split())
    assert err == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, ["--version"])
    assert code == 0 and out.startswith("pgshift ")


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, ["migrate", "--no-such-option"])
    assert code == 2
    assert "Traceback" not in err
