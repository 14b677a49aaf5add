"""Hostile input for secrets: a marker password in every DSN shape, through every command
that takes a DSN, must never appear in stdout, stderr or the state directory."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from psycopg import conninfo

from pgshift.cli.main import main
from pgshift.dsn import Dsn, redact, resolve
from pgshift.errors import UsageError

MARK = "Zq9xMARKpw7"
# A fragment too: a password cut at an unencoded character leaks in pieces.
FRAGMENTS = (MARK, MARK[:6], MARK[4:])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shapes(port: int) -> list[str]:
    h = f"127.0.0.1:{port}"
    return [
        f"postgresql+psycopg2://ux:{MARK}@{h}/db",
        f"postgresql+asyncpg://ux:{MARK}@{h}/db",
        f"mysql://ux:{MARK}@{h}/db",
        f"host=127.0.0.1 port={port} user=u passwd={MARK}",
        f"host=127.0.0.1 port={port} user=u password={MARK}",
        f"host=127.0.0.1 port={port} user=u password='{MARK} x",
        f"postgresql://ux:{MARK}/x@{h}/db",
        f"postgresql://ux:ab@{MARK}@{h}/db",
        f"postgresql://ux:{MARK}?x@{h}/db",
        f"postgresql://ux:{MARK}@{h}/db?sslmode=bogus",
        f"postgresql://ux@{h}/db?password={MARK}",
        f"postgres://ux:{MARK}@[::1:{port}/db",
        f"postgresql://ux:{MARK}@{h}/db bogus",
    ]


def _commands(db: Path, dsn: str) -> list[list[str]]:
    d = str(db)
    return [
        ["migrate", d, dsn],
        ["verify", d, dsn],
        ["sync", "install", d, dsn],
        ["sync", "run", d, dsn],
        ["sync", "status", d, dsn],
        ["sync", "drain", d, dsn],
        ["sync", "trim", d, dsn],
        ["provision", dsn, "--app-user", "app", "--database", "appdb",
         "--password-env", "PGSHIFT_TEST_APP_PW"],
        ["optimize", dsn],
    ]


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE oauth_tokens (id INTEGER PRIMARY KEY, access_token TEXT)")
    con.execute("INSERT INTO oauth_tokens VALUES (1, 'tok-1'), (2, 'tok-2')")
    con.commit()
    con.close()
    return path


def _assert_no_leak(text: str, where: str) -> None:
    for fragment in FRAGMENTS:
        assert fragment not in text, f"{fragment!r} leaked in {where}:\n{text}"


def _state_text(root: Path) -> str:
    parts = []
    for path in root.rglob("*"):
        if path.is_file():
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_marker_password_never_leaks_through_any_dsn_taking_command(
        app_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PGSHIFT_TEST_APP_PW", "app-password-not-the-marker")
    port = _closed_port()
    for shape in _shapes(port):
        monkeypatch.setenv("DATABASE_URL", shape)
        for dsn in (shape, "env:DATABASE_URL"):
            for argv in _commands(app_db, dsn):
                code = main(argv)
                out, err = capsys.readouterr()
                where = f"{argv[:2]} with {shape!r} via {dsn[:4]!r}"
                _assert_no_leak(out + err, where)
                assert code in (2, 5), (where, code, err)
                assert err.startswith("Error: "), (where, err)
                assert "Traceback" not in err
    _assert_no_leak(_state_text(tmp_path / ".pgshift") if (tmp_path / ".pgshift").exists()
                    else "", "the state directory")


def test_wrong_password_against_a_real_server_is_not_echoed(
        app_db: Path, pg_dsn: Dsn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = conninfo.conninfo_to_dict(pg_dsn.conninfo)
    url = (f"postgresql+psycopg2://{params['user']}:{MARK}@{params['host']}:{params['port']}"
           f"/{params['dbname']}")
    for argv in (["migrate", str(app_db), url], ["verify", str(app_db), url]):
        code = main(argv)
        out, err = capsys.readouterr()
        _assert_no_leak(out + err, argv[0])
        assert code == 2, err
        assert "password authentication failed" in err


def test_successful_migrate_and_verify_keep_the_real_password_out_of_output_and_state(
        app_db: Path, pg_dsn: Dsn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = conninfo.conninfo_to_dict(pg_dsn.conninfo)
    password = str(params["password"])
    url = (f"postgresql+psycopg2://{params['user']}:{password}@{params['host']}:"
           f"{params['port']}/{params['dbname']}")
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["migrate", str(app_db), "env:DATABASE_URL", "--keep-snapshot"]) == 0
    assert main(["verify", str(app_db), "env:DATABASE_URL", "--json"]) == 0
    out, err = capsys.readouterr()
    assert password not in out + err
    assert password not in _state_text(tmp_path / ".pgshift")


@pytest.mark.parametrize("text", [
    f"postgresql+psycopg2://u:{MARK}@h/db",
    f"mysql://u:{MARK}@h/db",
    f"redis://:{MARK}@h:6379/0",
    f"postgresql://u:{MARK}/x@h/db",
    f"postgresql://u:ab@{MARK}@h/db",
    f"host=h passwd={MARK}",
    f"host=h pwd={MARK} user=u",
    f"host=h sslpassword={MARK}",
    f"https://h/cb?token={MARK}&x=1",
    f'{{"password": "{MARK}", "user": "u"}}',
    f"API_KEY={MARK}",
])
def test_redact_removes_credentials_of_every_shape(text: str) -> None:
    _assert_no_leak(redact(text), "redact")


def test_sqlalchemy_url_is_accepted_as_postgresql() -> None:
    dsn = resolve("postgresql+psycopg2://u:pw@h:5433/db")
    assert conninfo.conninfo_to_dict(dsn.conninfo) == {
        "user": "u", "password": "pw", "host": "h", "port": "5433", "dbname": "db"}
    assert "pw" not in dsn.safe


@pytest.mark.parametrize("raw, fact", [
    ("mysql://u:p@h/db", "'mysql' URL"),
    ("postgresql://u:p/q@h/db", "unencoded"),
    ("postgresql://u:p@q@h/db", "unencoded"),
    ("host=h passwd=x", "unknown keyword"),
])
def test_unparseable_dsns_are_named_not_echoed(raw: str, fact: str) -> None:
    with pytest.raises(UsageError) as info:
        resolve(raw)
    assert fact in info.value.message
    assert "@h" not in info.value.message and "host=h" not in info.value.message
    assert info.value.__cause__ is None


def test_snapshot_is_private_and_removed_after_success_unless_kept(
        app_db: Path, pg_dsn: Dsn, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os_mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    app_db.chmod(0o600)
    state = tmp_path / "state"
    assert main(["migrate", str(app_db), pg_dsn.conninfo, "--state-dir", str(state)]) == 0
    _, err = capsys.readouterr()
    assert "snapshot: removed" in err and "--keep-snapshot" in err
    assert list((state / "snapshots").iterdir()) == []
    assert os_mode(state) == 0o700 and os_mode(state / "snapshots") == 0o700
    assert os_mode(state / "audit.jsonl") == 0o600
    assert "snapshot.removed" in (state / "audit.jsonl").read_text()

    assert main(["migrate", str(app_db), pg_dsn.conninfo, "--state-dir", str(state),
                 "--restart", "--drop", "--keep-snapshot"]) == 0
    _, err = capsys.readouterr()
    files = sorted((state / "snapshots").iterdir())
    assert [f.suffix for f in files] == [".json", ".sqlite"]
    assert all(os_mode(f) == 0o600 for f in files)
    assert f"snapshot: {files[1]}" in err and "MiB" in err


def test_verify_masks_secret_columns_unless_show_values(
        tmp_path: Path, pg_dsn: Dsn, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    monkeypatch.setenv("COLUMNS", "400")  # one table row per line

    db = tmp_path / "app.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE oauth_tokens (id INTEGER PRIMARY KEY, access_token TEXT, "
                "refreshToken TEXT, aes_iv TEXT, label TEXT)")
    con.execute("INSERT INTO oauth_tokens VALUES (1, 'tokSQLITEsecret1', 'rtSQLITE', "
                "'ivSQLITE', 'monkey business')")
    con.commit()
    con.close()
    assert main(["migrate", str(db), pg_dsn.conninfo, "--state-dir", str(tmp_path / "s")]) == 0
    with psycopg.connect(pg_dsn.conninfo, autocommit=True) as pg:
        pg.execute("""UPDATE oauth_tokens SET access_token = 'tokPGsecret2',
                      "refreshToken" = 'rtPG', aes_iv = 'ivPG', label = 'donkey business'""")
    capsys.readouterr()
    for argv in (["verify", str(db), pg_dsn.conninfo],
                 ["verify", str(db), pg_dsn.conninfo, "--json"]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        for secret in ("tokSQLITEsecret1", "tokPGsecret2", "rtSQLITE", "rtPG", "ivSQLITE",
                       "ivPG"):
            assert secret not in out + err, (argv, secret)
        assert "<redacted: 16 chars, h:" in out and "<redacted: 12 chars, h:" in out
        assert "donkey business" in out  # not secret-looking: shown as before
    assert main(["verify", str(db), pg_dsn.conninfo, "--json", "--show-values"]) == 1
    out, _ = capsys.readouterr()
    assert "tokSQLITEsecret1" in out and "tokPGsecret2" in out and "ivPG" in out


@pytest.mark.parametrize("name, secret", [
    ("access_token", True), ("refreshToken", True), ("password_hash", True), ("api_key", True),
    ("aes_iv", True), ("client_secret", True), ("otp_secret", True), ("key", True),
    ("label", False), ("monkey", False), ("keyboard_layout", False), ("ivory", False),
    ("email", False), ("is_private", False),
])
def test_secret_column_names(name: str, secret: bool) -> None:
    from pgshift.verify.redaction import is_secret_column
    assert is_secret_column(name) is secret


@pytest.mark.parametrize("argv", [
    ["optimize", "a.db", f"postgresql://u:{MARK}@h/db"],  # the DSN in the wrong place
    ["verify", "a.db", "env:X", f"host=h password={MARK}"],
    ["migrate", "a.db", f"postgresql+psycopg2://u:{MARK}@h/db", "--jobs", "many"],
])
def test_usage_errors_from_the_parser_do_not_echo_passwords(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    _assert_no_leak(out + err, "the parser's usage error")
    assert "Error: " in err
