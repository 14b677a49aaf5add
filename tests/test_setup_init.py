"""``pgshift init``: real SQLite files in, files that their own readers accept out."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from pgshift.cli.main import main
from pgshift.errors import UsageError
from pgshift.rollout import config
from pgshift.setup import validate
from pgshift.setup.init import init, profile_database
from pgshift.setup.templates import DEPLOYS, ROUTERS, Setup

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "shop.db"
    path.parent.mkdir()
    con = sqlite3.connect(path)
    con.execute("pragma journal_mode=wal")
    con.executescript("""
        create table users (id integer primary key, email text not null);
        create table orders (user_id integer, n integer, total real, primary key (user_id, n));
        create table audit_log (at text, what text);   -- no primary key
        insert into users values (1, 'a@x'), (2, 'b@x'), (3, 'c@x');
        insert into orders values (1, 1, 9.5), (1, 2, 3.0);
        insert into audit_log values ('2026-01-01', 'x');
    """)
    con.commit()
    con.close()
    return path


def _setup(db: Path, deploy: str = "compose", router: str = "embedded") -> Setup:
    return Setup(name="shop", sqlite=db, blue_url="http://10.0.1.10:3000",
                 green_url="http://10.0.1.11:3001", deploy=deploy,  # type: ignore[arg-type]
                 router=router)  # type: ignore[arg-type]


def test_profile_counts_rows_and_names_keyless_tables(app_db: Path) -> None:
    p = profile_database(app_db)
    assert {t.name: t.rows for t in p.tables} == {"users": 3, "orders": 2, "audit_log": 1}
    assert {t.name: t.key for t in p.tables}["orders"] == ("user_id", "n")
    assert p.keyless == ["audit_log"]
    assert p.journal_mode == "wal"


@pytest.mark.parametrize("deploy", DEPLOYS)
@pytest.mark.parametrize("router", ROUTERS)
def test_every_setup_writes_files_their_readers_accept(app_db: Path, tmp_path: Path,
                                                      deploy: str, router: str) -> None:
    out = tmp_path / "out"
    result = init(_setup(app_db, deploy, router), out)
    assert result.ok, [f.to_dict() for f in result.files]
    cfg, _ = config.load(out / "cutover.yaml")
    assert cfg.name == "shop" and cfg.router.kind == router
    assert cfg.source.sqlite == app_db and cfg.target.dsn == "env:DATABASE_URL"
    assert cfg.apps.green.url == "http://10.0.1.11:3001"
    assert (cfg.apps.green.deploy is None) == (deploy == "running")
    assert [s.weight for s in cfg.shift.steps] == [10, 25, 50, 100]
    assert any("audit_log" in w for w in result.warnings)
    written = {f.path.relative_to(out).as_posix(): f.validation for f in result.files}
    if router == "haproxy":
        assert written["haproxy.cfg"].status == ("ok" if HAPROXY else "skipped")
        assert "cookie" in (out / "haproxy.cfg").read_text().lower() or \
            "stick" in (out / "haproxy.cfg").read_text().lower()
        assert (out / "pgshift.map").read_text() == "threshold 0\nsor blue\n"
    if deploy == "kubernetes":
        for f in ("k8s/blue.yaml", "k8s/green.yaml", "k8s/route.yaml"):
            assert written[f].status == "ok", written[f]
    if deploy == "compose":
        assert written["docker-compose.green.yml"].status in ("ok", "skipped")
        assert written["docker-compose.green.yml"].detail  # why, when skipped


def test_compose_templates_have_both_engines_and_a_healthy_postgres(app_db: Path,
                                                                   tmp_path: Path) -> None:
    init(_setup(app_db), tmp_path)
    blue = yaml.safe_load((tmp_path / "docker-compose.blue.yml").read_text())
    green = yaml.safe_load((tmp_path / "docker-compose.green.yml").read_text())
    assert blue["services"]["app"]["environment"]["DB_ENGINE"] == "sqlite"
    assert blue["services"]["app"]["volumes"][0]["source"] == str(app_db.parent)
    app = green["services"]["app"]
    assert app["environment"]["DB_ENGINE"] == "postgres"
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in green["services"]["postgres"]["healthcheck"]["test"][1]
    assert app["ports"] == ["3001:3000"]
    assert "pgdata" in green["volumes"]


def test_kubernetes_route_starts_on_blue_and_probes_use_the_health_path(
        app_db: Path, tmp_path: Path) -> None:
    init(_setup(app_db, "kubernetes", "gateway"), tmp_path)
    route = yaml.safe_load((tmp_path / "k8s/route.yaml").read_text())
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("shop-blue", 100), ("shop-green", 0)]
    deploy, _svc = yaml.safe_load_all((tmp_path / "k8s/green.yaml").read_text())
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"


def test_never_overwrites_without_force(app_db: Path, tmp_path: Path) -> None:
    init(_setup(app_db), tmp_path)
    (tmp_path / "cutover.yaml").write_text("# mine\n")
    with pytest.raises(UsageError, match="would overwrite") as exc:
        init(_setup(app_db), tmp_path)
    assert exc.value.hint and "--force" in exc.value.hint
    assert (tmp_path / "cutover.yaml").read_text() == "# mine\n"
    init(_setup(app_db), tmp_path, force=True)
    assert (tmp_path / "cutover.yaml").read_text().startswith("# cutover.yaml -- written")


def test_validators_catch_broken_files(tmp_path: Path) -> None:
    bad = tmp_path / "route.yaml"
    bad.write_text("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
                   "metadata: {name: r}\nspec: {rules: [{backendRefs: [{name: a}]}]}\n")
    v = validate.k8s_file(bad)
    assert v.status == "failed" and "parentRefs" in v.detail
    if HAPROXY:
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text("frontend f\n    bind :8080\n    no-such-keyword\n")
        assert validate.haproxy_cfg(cfg, "").status == "failed"
    broken = tmp_path / "cutover.yaml"
    broken.write_text("name: x\nsource: {sqlite: a.db}\ntarget: {dsn: "
                      "'postgresql://u:secret@h/db'}\napps: {blue: {url: a}, green: {url: b}}\n")
    v = validate.cutover_file(broken)
    assert v.status == "failed" and "password" in v.detail


def test_cli_without_a_terminal_needs_the_urls(app_db: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(app_db), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: --blue-url is required") and "Try:" in err
    assert main(["init", str(app_db), "--out-dir", str(tmp_path), "--blue-url",
                 "http://b:1", "--green-url", "http://g:2", "--deploy", "helm"]) == 2
    assert "--deploy 'helm'" in capsys.readouterr().err
    assert main(["init", str(app_db), "--out-dir", str(tmp_path), "--blue-url",
                 "http://b:1", "--green-url", "http://g:2", "--json"]) == 0
    import json
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] and payload["profile"]["keyless"] == ["audit_log"]
    assert main(["init", str(tmp_path / "missing.db"), "--blue-url", "http://b:1",
                 "--green-url", "http://g:2", "--out-dir", str(tmp_path)]) == 2


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")
def test_generated_haproxy_config_runs_and_preflight_reaches_its_socket(
        app_db: Path, tmp_path: Path) -> None:
    """The written haproxy.cfg, with its two paths moved into tmp, serves the runtime API
    that the cutover file's router section points at."""
    import socket
    import subprocess
    import time

    from pgshift.setup.preflight import router_check
    from pgshift.setup.templates import HAPROXY_MAP, HAPROXY_SOCKET

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    setup = Setup(name="shop", sqlite=app_db, blue_url="http://127.0.0.1:9",
                  green_url="http://127.0.0.1:9", deploy="running", router="haproxy",
                  listen=f"127.0.0.1:{port}")
    init(setup, out)
    sock, map_file = tmp_path / "admin.sock", tmp_path / "pgshift.map"
    for name in ("haproxy.cfg", "cutover.yaml"):
        text = (out / name).read_text()
        (out / name).write_text(text.replace(HAPROXY_SOCKET, str(sock))
                                .replace(HAPROXY_MAP, str(map_file)))
    shutil.copy(out / "pgshift.map", map_file)
    cfg, _ = config.load(out / "cutover.yaml")
    assert router_check(cfg).status == "fail"  # not running yet: named, with a hint
    assert HAPROXY is not None
    log = tmp_path / "haproxy.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(out / "haproxy.cfg")],
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        check = router_check(cfg)
        assert check.status == "pass" and "green weight 0 %" in check.detail, check
    finally:
        proc.terminate()
        proc.wait(5)


def test_haproxy_needs_plain_http_backends(app_db: Path, tmp_path: Path) -> None:
    s = Setup(name="shop", sqlite=app_db, blue_url="https://10.0.1.10", green_url="http://g:1",
              deploy="running", router="haproxy")
    with pytest.raises(UsageError, match="--blue-url"):
        init(s, tmp_path)
    assert not (tmp_path / "cutover.yaml").exists()
