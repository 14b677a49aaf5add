"""``pgshift verify SQLITE DSN``: exit 0 identical, 1 differences, 2 bad input; ``--json``."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgshift.cli.main import main
from pgshift.cli.verify import verify_command
from pgshift.dsn import Dsn
from pgshift.embedded_pg import PostgresServer
from verify_helpers import MigratedCopy, migrated_module, pg_exec

pytestmark = pytest.mark.data

DDL = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, tags JSON);
CREATE TABLE notes (body TEXT);
"""


@pytest.fixture(scope="module")
def cli_module(pg_server: PostgresServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedCopy]:
    data = {"items": [(i, f"item {i}", i * 0.5, json.dumps({"n": i, "t": ["a", "b"]}))
                      for i in range(1, 301)],
            "notes": [("hello",), ("",), (None,), ("hello",)]}
    with migrated_module(pg_server, tmp_path_factory.mktemp("cli"), "cli", DDL, data) as copy:
        yield copy


@pytest.fixture
def copy(cli_module: MigratedCopy, tmp_path: Path) -> Iterator[MigratedCopy]:
    yield cli_module.for_test(tmp_path)
    cli_module.restore()


def run_cli(capsys: pytest.CaptureFixture[str], copy: MigratedCopy | None, *args: str,
            db: str | None = None, dsn: str | None = None) -> tuple[int, str, str]:
    argv = ["verify", db if db is not None else str(copy.db if copy else ""),
            dsn if dsn is not None else (copy.dsn.conninfo if copy else ""), *args]
    if copy is not None and "state_dir" in inspect.signature(verify_command).parameters:
        argv += ["--state-dir", str(copy.state)]
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], copy: MigratedCopy,
             *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run_cli(capsys, copy, "--json", *args)
    assert out.strip(), err
    return code, json.loads(out)


def test_identical_exit_0(capsys: pytest.CaptureFixture[str], copy: MigratedCopy) -> None:
    code, out, err = run_cli(capsys, copy)
    assert code == 0, out + err
    assert "identical" in out
    assert "items" in out and "notes" in out


def test_identical_json(capsys: pytest.CaptureFixture[str], copy: MigratedCopy) -> None:
    code, payload = run_json(capsys, copy)
    assert code == 0
    assert payload["identical"] is True
    assert payload["exit_code"] == 0
    assert {t["table"] for t in payload["tables"]} == {"items", "notes"}
    assert payload["schema_differences"] == []


def test_difference_exit_1_json_locates_it(capsys: pytest.CaptureFixture[str],
                                           copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "UPDATE items SET tags = jsonb_set(tags, '{t,1}', '\"c\"') WHERE id = 123")
    pg_exec(copy.dsn, "INSERT INTO notes VALUES ('hello')")
    code, payload = run_json(capsys, copy)
    assert code == 1
    assert payload["identical"] is False
    assert payload["exit_code"] == 1
    tables = {t["table"]: t for t in payload["tables"]}
    assert tables["items"]["equal"] is False
    assert tables["items"]["differences"] == [{
        "table": "items", "key": {"id": "123"}, "kind": "changed",
        "columns": {"tags": {"sqlite": '{"n": 123, "t": ["a", "b"]}',
                             "postgres": '{"n": 123, "t": ["a", "c"]}'}}}]
    (notes_diff,) = tables["notes"]["differences"]
    assert notes_diff["kind"] == "count_differs"
    assert notes_diff["columns"] == {"*": {"sqlite": "2", "postgres": "3"}}
    assert (tables["notes"]["sqlite_rows"], tables["notes"]["postgres_rows"]) == (4, 5)


def test_difference_exit_1_human_output(capsys: pytest.CaptureFixture[str],
                                        copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "DELETE FROM items WHERE id = 77")
    code, out, err = run_cli(capsys, copy)
    assert code == 1
    text = out + err
    assert "DIFFERENT" in text
    assert "id=77" in text
    assert "missing_in_postgres" in text


def test_schema_drift_exit_1(capsys: pytest.CaptureFixture[str], copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "ALTER TABLE items ALTER COLUMN name DROP NOT NULL")
    try:
        code, payload = run_json(capsys, copy)
        assert code == 1
        assert payload["schema_differences"] == [{"object": "items.name", "what": "not null",
                                                  "expected": "True", "actual": "False"}]
        assert all(t["differences"] == [] for t in payload["tables"])
        code, _, _ = run_cli(capsys, copy, "--no-schema")
        assert code == 0
    finally:
        pg_exec(copy.dsn, "ALTER TABLE items ALTER COLUMN name SET NOT NULL")


def test_sample_option(capsys: pytest.CaptureFixture[str], copy: MigratedCopy) -> None:
    code, payload = run_json(capsys, copy, "--sample", "1%")
    assert code == 0
    assert payload["sample"] == pytest.approx(0.01)
    code, payload = run_json(capsys, copy, "--sample", "0.5")
    assert code == 0
    assert payload["sample"] == pytest.approx(0.5)


@pytest.mark.parametrize("bad", ["abc", "150%", "0%", "-5%"])
def test_bad_sample_exit_2(capsys: pytest.CaptureFixture[str], copy: MigratedCopy,
                           bad: str) -> None:
    code, out, err = run_cli(capsys, copy, "--sample", bad)
    assert code == 2, out + err
    assert "sample" in (out + err).lower()


def test_live_option_identical(capsys: pytest.CaptureFixture[str], copy: MigratedCopy) -> None:
    code, payload = run_json(capsys, copy, "--live")
    assert code == 0
    assert payload["identical"] is True


def test_tables_option(capsys: pytest.CaptureFixture[str], copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "DELETE FROM notes")
    code, payload = run_json(capsys, copy, "--tables", "items")
    assert code == 0
    assert [t["table"] for t in payload["tables"]] == ["items"]
    code, payload = run_json(capsys, copy, "--exclude", "items")
    assert code == 1
    assert [t["table"] for t in payload["tables"]] == ["notes"]


def test_bad_sqlite_path_exit_2(capsys: pytest.CaptureFixture[str], copy: MigratedCopy,
                                tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, copy, db=str(tmp_path / "nope.db"))
    assert code == 2, out + err
    assert "nope.db" in out + err
    not_sqlite = tmp_path / "text.db"
    not_sqlite.write_text("this is not a database\n" * 100)
    code, out, err = run_cli(capsys, copy, db=str(not_sqlite))
    assert code == 2, out + err
    code, out, err = run_cli(capsys, copy, db=str(tmp_path))
    assert code == 2, out + err


@pytest.mark.parametrize("dsn", ["not a dsn", "env:PGSHIFT_TEST_SURELY_UNSET_VAR",
                                 "postgresql://host:notaport/db"])
def test_bad_dsn_exit_2(capsys: pytest.CaptureFixture[str], copy: MigratedCopy,
                        dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSHIFT_TEST_SURELY_UNSET_VAR", raising=False)
    code, out, err = run_cli(capsys, copy, dsn=dsn)
    assert code == 2, out + err
    assert "Traceback" not in out + err


def test_unknown_table_exit_2(capsys: pytest.CaptureFixture[str], copy: MigratedCopy) -> None:
    code, out, err = run_cli(capsys, copy, "--tables", "no_such_table")
    assert code == 2, out + err
    assert "no_such_table" in out + err


def test_empty_target_exit_1(capsys: pytest.CaptureFixture[str], copy: MigratedCopy,
                             pg_dsn: Dsn) -> None:
    """Nothing migrated yet: every table is a schema difference, not a crash."""
    code, out, err = run_cli(capsys, copy, "--json", dsn=pg_dsn.conninfo)
    assert code == 1, out + err
    payload = json.loads(out)
    assert {(d["object"], d["what"], d["actual"]) for d in payload["schema_differences"]} == {
        ("items", "table", "missing"), ("notes", "table", "missing")}
    assert {t["mode"] for t in payload["tables"]} == {"missing"}


def test_missing_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["verify"]) == 2
    assert main(["verify", "only-one-arg.db"]) == 2
