"""pgshift.dsn: env:VAR resolution, syntax checks, and passwords kept out of every message."""

from __future__ import annotations

import pytest

from pgshift.dsn import Dsn, redact, resolve
from pgshift.errors import ExitCode, UsageError


@pytest.mark.parametrize("text, expected", [
    ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgres://u:s%40cr%2Fet@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
    ("postgresql://u:secret@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
    ("postgresql://u:secret@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
    ("postgresql://u:@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("postgresql://h/db?sslmode=require&password=secret",
     "postgresql://h/db?sslmode=require&password=***"),
    ("host=h password=secret dbname=d", "host=h password=*** dbname=d"),
    ("host=h password='se cret' dbname=d", "host=h password=*** dbname=d"),
    ("host=h password = 'it\\'s secret' dbname=d", "host=h password = *** dbname=d"),
    ("host=h dbname=d", "host=h dbname=d"),
    ("connection to postgresql://app:hunter2@db.example.com/app failed: timeout",
     "connection to postgresql://app:***@db.example.com/app failed: timeout"),
    ("two: postgresql://a:p1@h/x and postgresql://b:p2@h/y",
     "two: postgresql://a:***@h/x and postgresql://b:***@h/y"),
])
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_query_password_keeps_following_parameters() -> None:
    assert redact("postgresql://u@h/db?password=secret&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require")


def test_redact_unterminated_quoted_password() -> None:
    with pytest.raises(UsageError) as info:
        resolve("host=h password='my hunter2")
    assert "hunter2" not in info.value.message


def test_redact_is_case_insensitive() -> None:
    with pytest.raises(UsageError) as info:
        resolve("PASSWORD=hunter2 host=h")
    assert "hunter2" not in info.value.message


def test_resolve_env_var() -> None:
    env = {"DATABASE_URL": "  postgresql://u:pw@h:5/d  "}
    dsn = resolve("env:DATABASE_URL", environ=env)
    assert dsn.conninfo == "postgresql://u:pw@h:5/d"
    assert resolve(" env:DATABASE_URL ", environ=env) == dsn


def test_resolve_env_var_unset_or_empty_name() -> None:
    with pytest.raises(UsageError, match="MISSING_VAR") as info:
        resolve("env:MISSING_VAR", environ={})
    assert info.value.exit_code == ExitCode.USAGE
    assert info.value.hint == "export MISSING_VAR=postgresql://user@host/db"
    with pytest.raises(UsageError, match="empty variable name"):
        resolve("env:", environ={})


def test_resolve_env_var_with_bad_dsn_redacts_it() -> None:
    with pytest.raises(UsageError) as info:
        resolve("env:X", environ={"X": "postgresql://u:hunter2@h:notaport:x/db?bogus=1"})
    assert "hunter2" not in info.value.message


@pytest.mark.parametrize("raw", ["host=h port", "postgresql://u@h/db?bogus=1",
                                 "host=h password=hunter2 bogus=1"])
def test_resolve_rejects_bad_syntax_without_printing_passwords(raw: str) -> None:
    with pytest.raises(UsageError, match="not a valid PostgreSQL DSN") as info:
        resolve(raw)
    assert "hunter2" not in info.value.message
    assert info.value.hint and "postgresql://" in info.value.hint


def test_resolve_accepts_empty_for_libpq_defaults() -> None:
    dsn = resolve("")
    assert dsn.conninfo == ""
    assert dsn.safe == "(libpq defaults)"


@pytest.mark.parametrize("raw", ["postgresql://u:pw%20x@h:5/d",
                                 "host=h port=5 user=u password='pw x' dbname=d"])
def test_dsn_safe_str_and_repr_hide_the_password(raw: str) -> None:
    dsn = resolve(raw)
    for shown in (dsn.safe, str(dsn), repr(dsn), f"{dsn}"):
        assert "pw" not in shown.replace("password", "")
        assert "password=***" in shown
    assert "host=h" in dsn.safe and "dbname=d" in dsn.safe


def test_with_dbname_keeps_server_and_credentials() -> None:
    dsn = Dsn("host=h port=5 user=u password=pw dbname=one")
    other = dsn.with_dbname("two")
    from psycopg import conninfo

    params = conninfo.conninfo_to_dict(other.conninfo)
    assert params == {"host": "h", "port": "5", "user": "u", "password": "pw", "dbname": "two"}
