"""The HAProxy router against a real haproxy (Debian's package) in front of two real backends."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pgshift.errors import UsageError
from pgshift.traffic.haproxy import (
    HAProxyError,
    HAProxyRouter,
    glob_to_regex,
    render_config,
    settings_from_cli,
    write_map,
)
from pgshift.traffic.router import WriteFence, WriteRouting
from traffic_conformance import (
    WRITE_GLOB,
    Harness,
    RouterConformance,
    TestBackend,
    backends,
    free_port,
    raw_request,
)

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (apt-get install -y haproxy)")


class RunningHAProxy:
    def __init__(self, workdir: Path, blue: TestBackend, green: TestBackend, **kw: object):
        self.port = free_port()
        self.socket = workdir / "admin.sock"
        self.map_file = workdir / "pgshift.map"
        self.cfg_file = workdir / "haproxy.cfg"
        self.settings = settings_from_cli(
            blue=blue.url, green=green.url, listen=f"127.0.0.1:{self.port}",
            socket_path=str(self.socket), map_file=str(self.map_file), **kw)  # type: ignore[arg-type]
        self.cfg_file.write_text(render_config(self.settings))
        write_map(self.map_file, 0, "blue")
        self.log = open(workdir / "haproxy.log", "wb")  # noqa: SIM115 - closed in stop()
        assert HAPROXY is not None
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.cfg_file)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError((workdir / "haproxy.log").read_text())
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.router = HAProxyRouter(self.socket, self.map_file)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def module_pair() -> Iterator[tuple[TestBackend, TestBackend]]:
    with backends() as bg:
        yield bg


@pytest.fixture(scope="module")
def haproxy(module_pair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHAProxy]:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (apt-get install -y haproxy)")
    h = RunningHAProxy(tmp_path_factory.mktemp("haproxy"), *module_pair,
                       write_paths=(WRITE_GLOB,))
    try:
        yield h
    finally:
        h.stop()


@needs_haproxy
class TestHAProxyConformance(RouterConformance):
    @pytest.fixture
    def harness(self, haproxy: RunningHAProxy, module_pair) -> Iterator[Harness]:
        haproxy.router.drain_to_blue()
        haproxy.router.set_weight(0)
        haproxy.router._server_state("green", "ready")
        h = Harness(router=haproxy.router, url=haproxy.url, blue=module_pair[0],
                    green=module_pair[1])
        try:
            yield h
        finally:
            h.close()


@needs_haproxy
def test_haproxy_routes_writes_but_cannot_fence(haproxy: RunningHAProxy) -> None:
    r = haproxy.router
    assert isinstance(r, WriteRouting)
    assert not isinstance(r, WriteFence)
    r.set_weight(100)
    r.set_system_of_record("blue")
    with httpx.Client(base_url=haproxy.url) as c:
        assert c.get("/api/jobs/claim").headers["X-Backend"] == "blue"
        assert c.get("/api/jobs").headers["X-Backend"] == "green"
    r.drain_to_blue()


@needs_haproxy
def test_haproxy_sets_the_cohort_cookie_and_forwards(haproxy: RunningHAProxy) -> None:
    haproxy.router.set_weight(50)
    with httpx.Client(base_url=haproxy.url) as c:
        first = c.get("/")
        assert first.cookies.get("pgshift_cohort")
        side = first.headers["X-Backend"]
        assert {c.get("/").headers["X-Backend"] for _ in range(8)} == {side}
        seen = {k.lower(): v for k, v in c.get("/").json()["headers"].items()}
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
    haproxy.router.drain_to_blue()


@needs_haproxy
def test_map_file_survives_a_reload(haproxy: RunningHAProxy) -> None:
    haproxy.router.set_weight(37.5)
    assert haproxy.map_file.read_text() == "threshold 3750\nsor blue\n"
    haproxy.router.drain_to_blue()


@needs_haproxy
def test_dead_green_sends_clients_to_blue(tmp_path: Path) -> None:
    with backends() as (blue, green):
        h = RunningHAProxy(tmp_path, blue, green, health_path="/health", health_interval=0.2)
        try:
            h.router.set_weight(100)
            with httpx.Client(base_url=h.url) as c:
                assert c.get("/").headers["X-Backend"] == "green"
                green.healthy = False
                deadline = time.monotonic() + 15
                while True:
                    resp = c.get("/")
                    assert resp.status_code == 200, (resp.status_code, resp.text)
                    if resp.headers["X-Backend"] == "blue":
                        break
                    assert time.monotonic() < deadline, "haproxy never marked green down"
                    time.sleep(0.2)
        finally:
            h.stop()


def test_rendered_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    s = settings_from_cli(blue="http://127.0.0.1:8001", green="http://127.0.0.1:8002",
                          listen="127.0.0.1:8080", socket_path=str(tmp_path / "s.sock"),
                          map_file=str(tmp_path / "m.map"), cohort_header="X-User-Id",
                          write_paths=("/admin/*",), health_path="/health")
    text = render_config(s)
    assert "expose-fd listeners level admin" in text
    assert "req.fhdr(X-User-Id)" in text and "var(txn.wpath) -m reg ^/admin/.*$" in text
    assert "normalize-uri percent-decode-unreserved" in text
    assert "expose-experimental-directives" in text  # (HAProxy 2.6 needs it for normalize-uri)
    assert "weight" not in text.split("frontend", 1)[1].replace("weight_", "")
    if HAPROXY is None:
        pytest.skip("haproxy is not installed: only the text was checked")
    (tmp_path / "h.cfg").write_text(text)
    write_map(tmp_path / "m.map", 0, "blue")
    out = subprocess.run([HAPROXY, "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_haproxy
def test_haproxy_refuses_ambiguous_heads_and_bounds_them(tmp_path: Path) -> None:
    with backends() as (blue, green):
        h = RunningHAProxy(tmp_path, blue, green, cohort_header="X-User-Id")
        try:
            status, _, _ = raw_request(h.url, "/", {"X-User-Id": "alice, bob"})
            assert status == 200  # one header whose value has a comma: one key
            for dup in ({"X-User-Id": "alice", "x-user-id": "bob"},
                        {"Host": "other.example"}):  # (raw_request sends a Host too)
                status, _, _ = raw_request(h.url, "/", dup)
                assert status == 400, dup
            status, _, _ = raw_request(h.url, "/", {"X-Big": "a" * 40_000})
            assert status in (400, 431)  # HAProxy's own limit (tune.bufsize)
            seen = [{k.lower(): v for k, v in r[2].items()} for r in blue.requests]
            assert [r.get("x-user-id") for r in seen] == ["alice, bob"]
        finally:
            h.stop()


def test_config_without_write_paths_needs_no_experimental_directive(tmp_path: Path) -> None:
    s = settings_from_cli(blue="http://127.0.0.1:8001", green="http://127.0.0.1:8002",
                          listen="127.0.0.1:8080", socket_path=str(tmp_path / "s.sock"),
                          map_file=str(tmp_path / "m.map"), trusted_proxies=("10.0.0.0/8",))
    text = render_config(s)
    assert "expose-experimental-directives" not in text and "normalize-uri" not in text
    assert "acl trusted_proxy src 10.0.0.0/8" in text
    assert "del-header X-Forwarded-For if !trusted_proxy" in text


def test_haproxy_settings_refuse_nonsense(tmp_path: Path) -> None:
    common = {"blue": "http://127.0.0.1:1", "green": "http://127.0.0.1:2",
              "listen": "127.0.0.1:8080", "socket_path": str(tmp_path / "s"),
              "map_file": str(tmp_path / "m")}
    for kw, option in (({"threads": 0}, "--threads"), ({"header_timeout": -1},
                                                       "--header-timeout"),
                       ({"write_paths": ("api",)}, "--write-path"),
                       ({"trusted_proxies": ("x",)}, "--trusted-proxy")):
        with pytest.raises(UsageError, match=option):
            settings_from_cli(**common, **kw)  # type: ignore[arg-type]


def test_glob_to_regex() -> None:
    assert glob_to_regex("/api/*/claim") == r"^/api/.*/claim$"
    assert glob_to_regex("/api/*/claim/") == r"^/api/.*/claim$"  # normal form: no trailing /
    assert glob_to_regex("/a.b?") == r"^/a\.b.$"


def test_relative_paths_are_refused() -> None:
    with pytest.raises(UsageError, match="absolute"):
        settings_from_cli(blue="http://127.0.0.1:1", green="http://127.0.0.1:2",
                          listen="127.0.0.1:8080", socket_path="s.sock", map_file="/m.map")


def test_unreachable_socket_is_a_clear_error(tmp_path: Path) -> None:
    r = HAProxyRouter(tmp_path / "nope.sock", tmp_path / "m.map")
    with pytest.raises(HAProxyError, match="runtime API"):
        r.weight()



@needs_haproxy
def test_haproxy_write_pause_refuses_writes_and_keeps_reads(haproxy: RunningHAProxy) -> None:
    r = haproxy.router
    r.pause_writes()
    try:
        assert r.writes_paused() and r.status()["writes_paused"]
        with httpx.Client(base_url=haproxy.url) as c:
            refused = c.post("/w", content=b"x")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert c.get("/r").status_code == 200
        # runtime only: the map file HAProxy reloads from never keeps writes paused
        assert "writes" not in haproxy.map_file.read_text()
    finally:
        r.resume_writes()
    assert not r.writes_paused()
    with httpx.Client(base_url=haproxy.url) as c:
        assert c.post("/w", content=b"x").status_code == 200
