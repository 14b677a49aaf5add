"""``pgshift preflight`` against real files, the test PostgreSQL and real HTTP servers."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn, connect
from pgshift.setup.preflight import PreflightReport, preflight


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _db(path: Path, *, keyless: bool = False, wal: bool = True) -> Path:
    con = sqlite3.connect(path)
    if wal:
        con.execute("pragma journal_mode=wal")
    con.execute("create table users (id integer primary key, email text)")
    if keyless:
        con.execute("create table audit_log (at text)")
    con.execute("insert into users values (1, 'a@x')")
    con.commit()
    con.close()
    return path


def _cutover(tmp: Path, db: Path, blue: str, green: str, *, role: str | None = None,
             extra: str = "", deploy: str = "") -> Path:
    path = tmp / "cutover.yaml"
    path.write_text(f"""name: shop
source: {{sqlite: {db.name}}}
target:
  dsn: env:PREFLIGHT_DSN
{f"  app_role: {role}" if role else ""}
apps:
  blue: {{url: "{blue}", health: /health}}
  green: {{url: "{green}", health: /health{deploy}}}
router:
  listen: 127.0.0.1:{_free_port()}
  admin: 127.0.0.1:{_free_port()}
{extra}""")
    return path


def _status(report: PreflightReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


@pytest.fixture
def app_role(pg_dsn: Dsn) -> Iterator[str]:
    """A cluster-wide role made for this test (roles outlive the test's database)."""
    name = f"app_{uuid.uuid4().hex[:10]}"
    conn = connect(pg_dsn, autocommit=True)
    conn.execute(f"create role {name} login superuser")
    try:
        yield name
    finally:
        conn.execute(f"drop role if exists {name}")
        conn.close()


def test_flags_superuser_role_trust_auth_and_public_create_then_passes_once_fixed(
        tmp_path: Path, pg_dsn: Dsn, app_role: str, health_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFLIGHT_DSN", pg_dsn.conninfo)
    db = _db(tmp_path / "shop.db")
    cutover = _cutover(tmp_path, db, health_url, health_url, role=app_role)
    conn = connect(pg_dsn, autocommit=True)
    # pg_hba_file_rules reads the file on disk, not what the server loaded: a trust line
    # appended (and removed) without a reload is seen by the check and by nobody else
    hba = Path(conn.execute("show hba_file").fetchone()[0])
    if not os.access(hba, os.W_OK):
        pytest.skip("the test server's pg_hba.conf is not on this machine")
    original = hba.read_text()
    try:
        conn.execute("grant create on schema public to public")
        hba.write_text(original + "host all all 10.99.0.0/16 trust\n")
        report = preflight(cutover, assume_remote=True)
        hba.write_text(original)
        st = _status(report)
        assert st["target.app_role"] == "fail" and st["target.public_create"] == "fail"
        assert st["target.auth"] == "fail"
        assert "trust" in _detail(report, "target.auth")
        assert "superuser" in _detail(report, "target.app_role")
        assert st["target.ssl"] == "warn"  # the test server has no ssl
        assert not report.ok
        conn.execute(f"alter role {app_role} nosuperuser nocreaterole")
        conn.execute("revoke create on schema public from public")
        report = preflight(cutover, assume_remote=True)
    finally:
        hba.write_text(original)
        conn.close()
    st = _status(report)
    for name in ("source.readable", "source.wal", "source.quick_check", "source.capturable",
                 "source.disk", "target.reachable", "target.privileges", "target.app_role",
                 "target.extensions", "target.connections", "target.public_create",
                 "target.auth", "apps.blue", "apps.green", "router", "tables",
                 "security.secrets", "security.env", "security.state_dir"):
        assert st[name] == "pass", (name, _detail(report, name))
    assert st["target.backup"] == "warn"  # no WAL archiving on the test server
    assert report.ok
    assert "PostgreSQL" in _detail(report, "target.reachable")
    assert "target.ssl" not in _status(preflight(cutover))  # local, no --assume-remote


def _detail(report: PreflightReport, name: str) -> str:
    return next(c.detail for c in report.checks if c.name == name)


def test_source_and_security_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      health_url: str) -> None:
    monkeypatch.delenv("PREFLIGHT_DSN", raising=False)
    db = _db(tmp_path / "shop.db", keyless=True, wal=False)
    cutover = _cutover(tmp_path, db, health_url, "http://127.0.0.1:9",
                       deploy=', deploy: "PGPASSWORD=hunter2 ./deploy.sh"')
    state = tmp_path / ".pgshift" / "shop"
    state.mkdir(parents=True)
    state.chmod(0o777)
    report = preflight(cutover)
    st = _status(report)
    assert st["source.wal"] == "fail" and st["source.capturable"] == "fail"
    assert "audit_log" in next(c.detail for c in report.checks if c.name == "source.capturable")
    assert st["target.reachable"] == "fail"  # $PREFLIGHT_DSN is unset
    assert st["security.env"] == "fail" and st["security.secrets"] == "fail"
    assert st["security.state_dir"] == "fail"
    assert st["apps.blue"] == "pass" and st["apps.green"] == "warn"  # deploy will bring it
    assert st["hooks"] == "warn"  # ./deploy.sh does not exist
    assert all(c.hint for c in report.checks if c.status == "fail")


def test_cli_json_and_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PREFLIGHT_DSN", raising=False)
    db = _db(tmp_path / "shop.db")
    cutover = _cutover(tmp_path, db, "http://127.0.0.1:9", "http://127.0.0.1:9")
    assert main(["preflight", str(cutover), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False and payload["counts"]["fail"] >= 2
    assert {c["name"] for c in payload["checks"]} >= {"source.wal", "apps.blue", "router"}
    assert main(["preflight", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.startswith("Error: cutover file")
    assert main(["preflight", str(cutover)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  apps.blue" in out and "PASS  source.wal" in out


def test_migrate_plan_summarizes_anomalies_and_leaves_nothing(
        tmp_path: Path, pg_dsn: Dsn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFLIGHT_DSN", pg_dsn.conninfo)
    db = _db(tmp_path / "shop.db")
    con = sqlite3.connect(db)
    con.execute("create table items (id integer primary key, qty integer)")
    con.execute("insert into items values (1, 5), (2, 'a dozen')")  # text in an INTEGER column
    con.commit()
    con.close()
    cutover = _cutover(tmp_path, db, "http://127.0.0.1:9", "http://127.0.0.1:9")
    def files() -> list[str]:  # SQLite's own -wal/-shm come and go with any reader
        return sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))

    before = files()
    report = preflight(cutover, migrate_plan=True)
    check = next(c for c in report.checks if c.name == "migrate.plan")
    assert check.status == "warn", check
    assert "items.qty" in check.detail
    assert files() == before  # no state, no snapshot left
    conn = connect(pg_dsn, autocommit=True)
    try:
        assert conn.execute("select count(*) from pg_tables where schemaname = 'public'"
                            ).fetchone() == (0,)
    finally:
        conn.close()


def test_prerequisites_junit_judged_commands_listed(tmp_path: Path) -> None:
    from pgshift.rollout import config
    from pgshift.setup.preflight import prerequisite_checks

    cases = "".join(f'<testcase name="t{i}">{"<failure/>" if i == 0 else ""}</testcase>'
                    for i in range(20))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "junit.xml").write_text(f"<testsuite>{cases}</testsuite>")
    db = _db(tmp_path / "shop.db")
    cutover = _cutover(tmp_path, db, "http://b:1", "http://g:1", extra="""prerequisites:
  - {name: staging, junit: reports/junit.xml, min_pass_rate: 95%}
  - {name: strict, junit: reports/junit.xml}
  - {name: gone, junit: reports/missing.xml}
  - {name: smoke, command: ./smoke.sh}
""")
    cfg, base = config.load(cutover)
    got = {c.name: c for c in prerequisite_checks(cfg, base)}
    assert got["prerequisite.staging"].status == "pass"
    assert "19/20" in got["prerequisite.staging"].detail
    assert got["prerequisite.strict"].status == "fail"
    assert got["prerequisite.gone"].status == "fail"
    assert got["prerequisite.smoke"].status == "skip"
