"""The Router conformance suite, and the small real HTTP backends every router test uses.

Every router implementation gets a test class that inherits ``RouterConformance`` and
provides a ``harness`` fixture (a ``Harness``: the router plus the URL clients use).
Optional capabilities (``WriteRouting``, ``WriteFence``) are tested when the router
implements them and reported as skipped otherwise, with the reason.

Backends are threads running ``http.server`` with HTTP/1.1 keep-alive; each answer
names its backend in ``X-Backend`` and in the JSON body.

Every harness's router must be configured with the write path ``WRITE_GLOB``
(``/api/*/claim``): the write-routing cases send each spelling of such a path that a
framework would route to the same handler, and every one must reach the system of record.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from pgshift.errors import UsageError
from pgshift.traffic.proxy import ThreadedProxy, make_config
from pgshift.traffic.router import Figures, Router, WriteFence, WriteRouting

COOKIE = "pgshift_cohort"
WRITE_GLOB = "/api/*/claim"  # every harness's router routes GETs on it as writes

# Spellings of /api/1/claim a backend framework routes to the claim handler: decoded
# unreserved characters, dot segments, a trailing slash, ;parameters, merged slashes, an
# encoded slash (uvicorn decodes it), a query, the absolute form.
WRITE_BYPASS_TARGETS = [
    "/api/1/claim",
    "/api/1/%63laim",
    "/api/1/%63%6C%61%69%6D",
    "/api/1/claim/",
    "/api/1/claim;x",
    "/api/1/claim;jsessionid=1?x=1",
    "//api//1/claim",
    "/api/1/./claim",
    "/static/../api/1/claim",
    "/api/%2e%2e/api/1/claim",
    "/api/1%2Fclaim",
    "/api/1/claim?next=/home",
    "http://{authority}/api/1/claim",
    "http://{authority}/api/1/claim/?x=1",
    "http://other.example/api/1/claim",  # authority other than Host: routed or refused
]


# -- backends ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TestBackend.Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # without it, headers and body leave in two segments and Nagle + delayed ACK add 40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.owner.lock:
            self.server.owner.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.owner.lock:
            self.server.owner.conns.discard(self.connection)
        super().finish()

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _serve(self) -> None:
        owner = self.server.owner
        body = self._body()
        path = self.path.split("?", 1)[0]
        owner.requests.append((self.command, path, dict(self.headers.items()), body))
        if path == "/health":
            code = 200 if owner.healthy else 503
            return self._send(code, {"backend": owner.name, "healthy": owner.healthy})
        if owner.fail_all:
            return self._send(500, {"backend": owner.name, "error": "fail_all"})
        if path == "/drop-after":  # answer as keep-alive, then close: a stale pooled socket
            self.close_connection = True
            return self._send(200, {"backend": owner.name})
        if path == "/cut":  # promise 100 bytes, send 10, hang up
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            self.close_connection = True
            return None
        if path.startswith("/status/"):
            return self._send(int(path.rsplit("/", 1)[1]), {"backend": owner.name})
        if path == "/slow":
            time.sleep(float(self.headers.get("X-Sleep", "0.2")))
        if path == "/chunked":
            self.send_response(200)
            self.send_header("X-Backend", owner.name)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return None
        if path == "/ws" and self.headers.get("Upgrade"):
            self.send_response(101)
            self.send_header("Upgrade", self.headers["Upgrade"])
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while data := self.connection.recv(65536):
                self.connection.sendall(data.upper())
            self.close_connection = True
            return None
        return self._send(200, {"backend": owner.name, "method": self.command, "path": path,
                                "body": body.decode("latin-1"),
                                "headers": dict(self.headers.items())})

    def _send(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("X-Backend", self.server.owner.name)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve


class TestBackend:
    """A real HTTP/1.1 server on a thread: ``blue`` or ``green``."""

    __test__ = False

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128
        owner: TestBackend

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # clients (proxies) closing pooled sockets are normal here

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.fail_all = False
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.server = self.Server(("127.0.0.1", 0), _Handler)
        self.server.owner = self
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for c in list(self.conns):
                with suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)


@contextmanager
def backends() -> Iterator[tuple[TestBackend, TestBackend]]:
    blue, green = TestBackend("blue"), TestBackend("green")
    try:
        yield blue, green
    finally:
        blue.stop()
        green.stop()


@pytest.fixture
def pair() -> Iterator[tuple[TestBackend, TestBackend]]:
    """A fresh blue and green backend for one test."""
    with backends() as bg:
        yield bg


def start_proxy(blue: TestBackend, green: TestBackend, token: str,
                **kw: object) -> ThreadedProxy:
    """The embedded proxy on free ports in front of ``blue`` and ``green`` (started)."""
    cfg = make_config(blue=blue.url, green=green.url, listen="127.0.0.1:0",
                      admin="127.0.0.1:0", token=token, **kw)  # type: ignore[arg-type]
    return ThreadedProxy(cfg).start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the suite ---------------------------------------------------------------------------------


@dataclass
class Harness:
    """What a router's test class hands the suite."""

    router: Router
    url: str  # where clients send requests
    blue: TestBackend
    green: TestBackend
    settle: Callable[[], None] = field(default=lambda: None)  # wait until a change applies
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def close(self) -> None:
        self.client.close()

    def send(self, key: str, path: str = "/", method: str = "GET",
             content: bytes | None = None) -> httpx.Response:
        return self.client.request(method, path, content=content,
                                   headers={"Cookie": f"{COOKIE}={key}"})

    def side(self, key: str, path: str = "/", method: str = "GET") -> str:
        resp = self.send(key, path, method)
        assert resp.status_code == 200, resp.text
        return resp.headers["X-Backend"]

    def set_weight(self, pct: float) -> None:
        self.router.set_weight(pct)
        self.settle()


KEYS = [f"client-{i}" for i in range(200)]


def raw_request(url: str, target: str, headers: dict[str, str] | None = None,
                method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Send one request with ``target`` byte for byte (no client library normalises it)
    and return (status, headers with lower-case names, body)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


class RouterConformance:
    """Inherit and provide a ``harness`` fixture (function scope is fine)."""

    def test_is_a_router(self, harness: Harness) -> None:
        assert isinstance(harness.router, Router)

    def test_weight_round_trips(self, harness: Harness) -> None:
        for pct in (0, 12.5, 100, 0):
            harness.set_weight(pct)
            assert harness.router.weight() == pytest.approx(pct)

    @pytest.mark.parametrize("bad", [-1, 100.5, float("nan")])
    def test_weight_out_of_range_is_a_usage_error(self, harness: Harness, bad: float) -> None:
        with pytest.raises(UsageError):
            harness.router.set_weight(bad)

    def test_weight_0_and_100_are_absolute(self, harness: Harness) -> None:
        harness.set_weight(0)
        assert {harness.side(k) for k in KEYS[:40]} == {"blue"}
        harness.set_weight(100)
        assert {harness.side(k) for k in KEYS[:40]} == {"green"}

    def test_split_is_close_to_the_weight(self, harness: Harness) -> None:
        harness.set_weight(50)
        green = sum(harness.side(k) == "green" for k in KEYS)
        assert 60 <= green <= 140, green  # 200 keys, p=0.5: far outside 5 sigma otherwise

    def test_cohorts_are_sticky(self, harness: Harness) -> None:
        harness.set_weight(30)
        first = {k: harness.side(k) for k in KEYS[:50]}
        for _ in range(2):
            assert {k: harness.side(k) for k in KEYS[:50]} == first

    def test_raising_the_weight_never_moves_a_client_back_to_blue(self, harness: Harness) -> None:
        previous: set[str] = set()
        for pct in (10, 35, 60, 90):
            harness.set_weight(pct)
            green = {k for k in KEYS[:100] if harness.side(k) == "green"}
            assert previous <= green, f"at {pct}%: {sorted(previous - green)} went back to blue"
            previous = green

    def test_drain_to_blue_sends_everything_to_blue(self, harness: Harness) -> None:
        harness.set_weight(100)
        if isinstance(harness.router, WriteRouting):
            harness.router.set_system_of_record("green")
        harness.router.drain_to_blue()
        harness.settle()
        assert harness.router.weight() == 0
        assert {harness.side(k) for k in KEYS[:30]} == {"blue"}
        assert harness.send("w", "/", "POST", b"x").headers["X-Backend"] == "blue"
        harness.router.drain_to_blue()  # idempotent

    def test_figures_count_requests_per_backend(self, harness: Harness) -> None:
        harness.set_weight(0)
        before = harness.router.figures(60)
        for k in KEYS[:20]:
            assert harness.send(k).status_code == 200
        for _ in range(5):
            assert harness.send("k", "/status/503").status_code == 503
        harness.set_weight(100)
        for k in KEYS[:10]:
            assert harness.send(k, "/status/404").status_code == 404
        after = harness.router.figures(60)
        assert isinstance(after, Figures)
        assert after.blue.requests - before.blue.requests >= 25
        assert after.blue.status["5xx"] - before.blue.status["5xx"] >= 5
        assert after.green.status["4xx"] - before.green.status["4xx"] >= 10
        assert after.green.requests - before.green.requests >= 10
        assert 0 < after.window <= 60  # what the figures really cover

    # -- optional capabilities -------------------------------------------------------------

    def test_writes_go_to_the_system_of_record(self, harness: Harness) -> None:
        router = harness.router
        if not isinstance(router, WriteRouting):
            pytest.skip(f"{type(router).__name__} does not route writes")
        harness.set_weight(50)
        router.set_system_of_record("blue")
        harness.settle()
        assert router.system_of_record() == "blue"
        for k in KEYS[:20]:
            assert harness.send(k, "/items", "POST", b"{}").headers["X-Backend"] == "blue"
        router.set_system_of_record("green")
        harness.settle()
        for k in KEYS[:20]:
            assert harness.send(k, "/items", "DELETE").headers["X-Backend"] == "green"
        with pytest.raises(UsageError):
            router.set_system_of_record("purple")  # type: ignore[arg-type]
        # reads still follow the cohort
        sides = {harness.side(k) for k in KEYS[:60]}
        assert sides == {"blue", "green"}

    @pytest.mark.parametrize("target", WRITE_BYPASS_TARGETS)
    def test_every_spelling_of_a_write_path_goes_to_the_system_of_record(
            self, harness: Harness, target: str) -> None:
        router = harness.router
        if not isinstance(router, WriteRouting):
            pytest.skip(f"{type(router).__name__} does not route writes")
        harness.set_weight(100)  # reads to green: only write routing can send it to blue
        router.set_system_of_record("blue")
        harness.settle()
        cookie = {"Cookie": f"{COOKIE}=bypass"}
        target = target.format(authority=harness.url.removeprefix("http://"))
        status, headers, _ = raw_request(harness.url, target, cookie)
        if status == 400 and "other.example" in target:
            return  # refused (HAProxy: authority and Host disagree): it reached no backend
        assert status == 200, (target, status)
        assert headers["x-backend"] == "blue", f"{target} went to {headers['x-backend']}"
        # and the control: a read path next to it still follows the weight
        status, headers, _ = raw_request(harness.url, "/api/1/claims", cookie)
        assert headers["x-backend"] == "green"

    def test_forwarded_headers_from_an_untrusted_client_are_overwritten(
            self, harness: Harness) -> None:
        harness.set_weight(0)
        resp = harness.client.get("/", headers={"X-Forwarded-For": "10.9.9.9",
                                                "X-Forwarded-Proto": "https"})
        seen = {k.lower(): v for k, v in resp.json()["headers"].items()}
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"

    def test_fence_holds_writes_and_releases_them(self, harness: Harness) -> None:
        router = harness.router
        if not isinstance(router, WriteFence):
            pytest.skip(f"{type(router).__name__} cannot hold requests (declared write pause)")
        assert isinstance(router, WriteRouting)
        harness.set_weight(100)
        router.set_system_of_record("blue")
        router.hold()
        harness.settle()
        results: list[httpx.Response] = []

        def write(i: int) -> None:
            with httpx.Client(base_url=harness.url, timeout=20) as c:
                results.append(c.post("/items", content=f"w{i}".encode()))

        threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        assert results == [], "a write passed the fence"
        assert harness.side("reader") in {"blue", "green"}  # reads keep flowing
        router.set_system_of_record("green")  # the flip, under the fence
        router.release()
        for t in threads:
            t.join(10)
        assert len(results) == 8
        assert {r.status_code for r in results} == {200}
        assert {r.headers["X-Backend"] for r in results} == {"green"}
