"""The embedded proxy under hostile and careless clients (issue 16).

Each test is one probe a reviewer ran by hand: slow heads, endless headers, connection
floods, ambiguous headers, nonsense settings, malformed admin requests. The proxy must
answer like nginx or HAProxy would (408, 431, 503, 400), keep serving everyone else, and
say what it refused in its log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from pgshift.cli.main import main
from pgshift.errors import UsageError
from pgshift.traffic import embedded
from pgshift.traffic.embedded import EmbeddedRouter
from pgshift.traffic.proxy import ThreadedProxy, make_config
from traffic_conformance import free_port, pair, raw_request, start_proxy

TOKEN = "hostile-token"
__all__ = ["pair"]  # a fixture


def _proxy(*backends_: object, **kw: object) -> ThreadedProxy:
    return start_proxy(*backends_, token=TOKEN, **kw)  # type: ignore[arg-type]


@pytest.fixture
def events(caplog: pytest.LogCaptureFixture) -> Iterator[list[dict[str, object]]]:
    """The proxy's structured log lines, parsed, as they arrive."""
    caplog.set_level(logging.INFO, logger="pgshift.proxy")
    out: list[dict[str, object]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            out.append(json.loads(record.getMessage()))

    handler = Collect()
    logging.getLogger("pgshift.proxy").addHandler(handler)
    try:
        yield out
    finally:
        logging.getLogger("pgshift.proxy").removeHandler(handler)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(s: socket.socket, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return data


def _wait(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


# -- slow clients ----------------------------------------------------------------------------


def test_a_head_that_never_ends_gets_408_and_others_are_served(pair, events) -> None:
    p = _proxy(*pair, header_timeout=1.0)
    slow = []
    try:
        for _ in range(60):  # the probe used 300; 60 show the same on a shared machine
            s = _connect(p.url)
            s.sendall(b"GET / HTTP/1.1\r\n")
            slow.append(s)
        with httpx.Client(base_url=p.url, timeout=5) as c:
            assert c.get("/").status_code == 200  # served while the slow ones hang
        answers = [_read_all(s, 6) for s in slow]
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[:3]
        assert _wait(lambda: p.state.clients == 0)
    finally:
        for s in slow:
            s.close()
        p.stop()
    refused = [e for e in events if e["event"] == "refused"]
    assert refused and refused[0]["reason"] == "header_timeout"
    assert p.state.refusals.counts["header_timeout"] == 60


def test_a_head_trickled_byte_by_byte_still_has_one_deadline(pair) -> None:
    p = _proxy(*pair, header_timeout=1.0)
    try:
        s = _connect(p.url)
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nX-A: ")
        answer = b""
        s.settimeout(0.2)
        while time.monotonic() - t0 < 5 and not answer:
            try:
                s.sendall(b"a")  # one byte every 0.2 s: never idle, never done
                answer = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.monotonic() - t0 < 3.5
        s.close()
    finally:
        p.stop()


def test_the_connection_cap_refuses_with_503_and_a_log_line(pair, events) -> None:
    p = _proxy(*pair, max_connections=10)
    held = []
    try:
        for _ in range(10):
            held.append(_connect(p.url))
        assert _wait(lambda: p.state.clients == 10)
        extra = _connect(p.url)
        answer = _read_all(extra)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"Retry-After: 1" in answer and b"too many connections" in answer
        for s in held:
            s.close()
        held.clear()
        assert _wait(lambda: p.state.clients == 0)
        with httpx.Client(base_url=p.url, timeout=5) as c:
            assert c.get("/").status_code == 200
    finally:
        for s in held:
            s.close()
        p.stop()
    limit = [e for e in events if e.get("reason") == "connection_limit"]
    assert limit and limit[0]["limit"] == 10 and limit[0]["level"] == "warning"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_NOFILE on Linux")
def test_a_low_descriptor_limit_lowers_the_cap_instead_of_failing_everybody(pair) -> None:
    blue, green = pair
    port, admin = free_port(), free_port()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (120, 120))

    proc = subprocess.Popen(
        [sys.executable, "-c", "from pgshift.cli.main import run; run()", "proxy",
         "--blue", blue.url, "--green", green.url, "--listen", f"127.0.0.1:{port}",
         "--admin", f"127.0.0.1:{admin}", "--token", TOKEN],
        stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    conns: list[socket.socket] = []
    try:
        assert proc.stderr is not None
        assert "pgshift proxy:" in proc.stderr.readline()
        url = f"http://127.0.0.1:{port}"
        refused = 0
        for _ in range(80):  # more than the 120 descriptors could carry with backends
            s = _connect(url)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            conns.append(s)
        for s in conns:
            head = _read_all_until_head(s)
            refused += head.startswith(b"HTTP/1.1 503 ")
            assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 503 ")), head
        assert refused >= 80 - 28, refused  # cap = (120 - 64) // 2 = 28
        for s in conns:
            s.close()
        conns.clear()
        time.sleep(0.3)
        with httpx.Client(base_url=url, timeout=5) as c:
            assert c.get("/").status_code == 200  # and it still serves
    finally:
        for s in conns:
            s.close()
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        with proc.stderr:
            err = proc.stderr.read()  # (communicate() would skip what readline() buffered)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    lowered = [e for e in lines if e["event"] == "max_connections_lowered"]
    assert lowered and lowered[0]["effective"] == 28, err
    assert any(e.get("reason") == "connection_limit" for e in lines), err
    assert "Traceback" not in err


def _read_all_until_head(s: socket.socket) -> bytes:
    s.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# -- huge heads ------------------------------------------------------------------------------


def _stream_endless_header(url: str, path: str, most: int) -> tuple[int, bytes]:
    """Send one header line 64 KiB at a time until the server stops reading (or ``most``
    bytes); return the bytes sent and the answer."""
    s = _connect(url)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode())
    sent = 0
    try:
        while sent < most:
            s.sendall(b"a" * 65536)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = _read_all(s)
    s.close()
    return sent, answer


def test_one_endless_header_line_streamed_in_pieces_gets_431(pair, events) -> None:
    p = _proxy(*pair)
    try:
        # the probe streamed 200 MiB; the proxy must stop reading early
        sent, answer = _stream_endless_header(p.url, "/", 50 << 20)
        assert sent < 8 << 20, f"the proxy read {sent} bytes of one header"
        assert answer.startswith(b"HTTP/1.1 431 ") or answer == b"", answer[:100]
    finally:
        p.stop()
    assert p.state.refusals.counts.get("head_too_large") == 1
    assert any(e.get("reason") == "head_too_large" for e in events)


@pytest.mark.parametrize("shape", ["many_small", "few_large_at_once", "long_url"])
def test_oversized_heads_of_every_shape_get_431(pair, shape: str) -> None:
    p = _proxy(*pair, max_header_size=8192)
    try:
        if shape == "many_small":
            target, headers = "/", {f"X-H{i}": "v" * 40 for i in range(300)}
        elif shape == "few_large_at_once":
            target, headers = "/", {f"X-H{i}": "v" * 60_000 for i in range(20)}
        else:
            target, headers = "/" + "a" * 20_000, {}
        try:
            status, _, _ = raw_request(p.url, target, headers)
        except (BrokenPipeError, ConnectionResetError):
            status = 431  # closed while we were still sending: the answer was lost with it
            assert p.state.refusals.counts.get("head_too_large") == 1
        assert status == 431
        assert not pair[0].requests and not pair[1].requests  # nothing was forwarded
    finally:
        p.stop()


def test_a_head_under_the_limit_passes(pair) -> None:
    p = _proxy(*pair, max_header_size=16384)
    try:
        status, _, _ = raw_request(p.url, "/", {"Cookie": "c=" + "x" * 12_000})
        assert status == 200
    finally:
        p.stop()


def test_the_admin_port_caps_its_head_before_checking_the_token(pair) -> None:
    p = _proxy(*pair)
    try:
        sent, answer = _stream_endless_header(p.admin_url, "/status", 16 << 20)
        assert sent < 4 << 20, sent
        assert answer.startswith(b"HTTP/1.1 431 ") or answer == b"", answer[:100]
        with httpx.Client(base_url=p.url, timeout=5) as c:
            assert c.get("/").status_code == 200
    finally:
        p.stop()


# -- ambiguous headers -----------------------------------------------------------------------


def test_two_cohort_headers_are_refused_with_400(pair) -> None:
    p = _proxy(*pair, cohort_header="X-User-Id")
    try:
        host, port = p.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-User-Id: alice\r\nX-User-Id: bob\r\n\r\n")
            answer = _read_all(s)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert b"more than one x-user-id header" in answer.lower()
        status, _, _ = raw_request(p.url, "/", {"X-User-Id": "alice"})
        assert status == 200
    finally:
        p.stop()
    forwarded = pair[0].requests + pair[1].requests
    assert [r[2]["X-User-Id"] for r in forwarded] == ["alice"]  # only the unambiguous one


def test_two_host_headers_are_refused_with_400(pair) -> None:
    p = _proxy(*pair)
    try:
        with _connect(p.url) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            assert _read_all(s).startswith(b"HTTP/1.1 400 ")
    finally:
        p.stop()


def test_a_target_that_is_no_path_is_refused(pair) -> None:
    p = _proxy(*pair)
    try:
        status, _, _ = raw_request(p.url, "ftp://x/y")
        assert status == 400
        assert not pair[0].requests
    finally:
        p.stop()


# -- nonsense settings -----------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "option"), [
    ({"rise": 0}, "--rise"),
    ({"fall": -1}, "--fall"),
    ({"eject_after": 0}, "--eject-after"),
    ({"fence_timeout": -5}, "--fence-timeout"),
    ({"interval": 0}, "--health-interval"),
    ({"header_timeout": 0}, "--header-timeout"),
    ({"max_connections": 0}, "--max-connections"),
    ({"max_header_size": 10}, "--max-header-size"),
    ({"weight": 150}, "--weight"),
    ({"write_paths": ("api/*",)}, "--write-path"),
    ({"trusted_proxies": ("not-an-ip",)}, "--trusted-proxy"),
])
def test_nonsense_settings_are_usage_errors(kw: dict[str, object], option: str) -> None:
    with pytest.raises(UsageError) as err:
        make_config(blue="http://127.0.0.1:1", green="http://127.0.0.1:2",
                    health_path="/health", **kw)  # type: ignore[arg-type]
    assert option in err.value.message
    assert err.value.hint and err.value.hint.startswith(option), err.value.hint


@pytest.mark.parametrize(("args", "text", "hint"), [
    (["--weight", "150"], "weight must be from 0 to 100", "Try: --weight 25"),
    (["--rise", "0"], "--rise must be an integer at least 1", "Try: --rise 2"),
    (["--fall", "-1"], "--fall must be", "Try: --fall 3"),
    (["--eject-after", "0"], "--eject-after must be", "Try: --eject-after 5"),
    (["--fence-timeout", "-1"], "--fence-timeout must be", "Try: --fence-timeout 30"),
    (["--health-interval", "0"], "--health-interval must be", "Try: --health-interval 1"),
])
def test_proxy_command_refuses_nonsense_with_the_right_hint(
        args: list[str], text: str, hint: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["proxy", "--blue", "http://127.0.0.1:1", "--green", "http://127.0.0.1:2",
                 "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("Error: ") and text in lines[0], err
    assert lines[1] == hint, err
    assert "set-weight" not in err


# -- the admin API ---------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"weight": True}, {"weight": "25"}, {"weight": None}, {}, {"weight": [1]},
])
def test_admin_refuses_weights_that_are_not_numbers(pair, body: dict[str, object]) -> None:
    p = _proxy(*pair)
    try:
        resp = httpx.put(p.admin_url + "/weight", json=body,
                         headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 400, resp.text
        assert "weight" in resp.json()["error"]
        assert p.state.weight == 0
    finally:
        p.stop()


@pytest.mark.parametrize(("path", "body"), [
    ("/system-of-record", {"side": 1}),
    ("/system-of-record", {}),
    ("/fence/hold", {"wait": True}),
    ("/fence/hold", {"wait": "soon"}),
])
def test_admin_refuses_other_bad_fields(pair, path: str, body: dict[str, object]) -> None:
    p = _proxy(*pair)
    try:
        method = "PUT" if path == "/system-of-record" else "POST"
        resp = httpx.request(method, p.admin_url + path, json=body,
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 400, resp.text
        assert not p.state.fence.held
    finally:
        p.stop()


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /status HTTP/9.9\r\n\r\n",
    b"PUT /weight HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    b"GET /status HTTP/1.1\r\nBad Header\r\n\r\n",
])
def test_malformed_admin_requests_get_400(pair, raw: bytes) -> None:
    p = _proxy(*pair)
    try:
        with _connect(p.admin_url) as s:
            s.sendall(raw)
            answer = _read_all(s)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert b'"error"' in answer
    finally:
        p.stop()


def test_admin_body_over_64_kib_gets_413(pair) -> None:
    p = _proxy(*pair)
    try:
        resp = httpx.put(p.admin_url + "/weight", content=b"{" + b" " * 70_000 + b"}",
                         headers={"Authorization": f"Bearer {TOKEN}",
                                  "Content-Type": "application/json"})
        assert resp.status_code == 413
    finally:
        p.stop()


# -- logs -------------------------------------------------------------------------------------


def test_changes_and_health_are_logged_one_json_line_each(pair, events) -> None:
    blue, green = pair
    p = _proxy(blue, green, health_path="/health", interval=0.05, rise=1, fall=1)
    try:
        with EmbeddedRouter(p.admin_url, TOKEN) as r:
            r.set_weight(10)
            r.set_system_of_record("green")
            r.hold(wait=1)
            r.release()
            r.drain_to_blue()
        green.healthy = False
        assert _wait(lambda: any(e["event"] == "backend_down" for e in events))
        green.healthy = True
        assert _wait(lambda: any(e["event"] == "backend_up" for e in events))
    finally:
        p.stop()
    names = [e["event"] for e in events]
    for expected in ("weight_changed", "system_of_record_changed", "fence_held",
                     "fence_released", "rollback", "backend_down", "backend_up",
                     "proxy_start", "proxy_stop"):
        assert expected in names, names
    change = next(e for e in events if e["event"] == "weight_changed")
    assert (change["old"], change["new"]) == (0.0, 10.0)
    down = next(e for e in events if e["event"] == "backend_down")
    assert down["side"] == "green" and down["level"] == "warning" and "503" in str(down["reason"])
    assert all({"ts", "level", "event"} <= set(e) for e in events)


def test_ejection_is_logged(pair, events) -> None:
    blue, green = pair
    p = _proxy(blue, green, eject_after=2, eject_seconds=0.3)
    try:
        blue.fail_all = True
        with httpx.Client(base_url=p.url, timeout=5) as c:
            for _ in range(3):
                c.get("/")
    finally:
        p.stop()
    ejected = [e for e in events if e["event"] == "backend_ejected"]
    assert ejected and ejected[0]["side"] == "blue"


# -- the traffic commands' exit codes -------------------------------------------------------


def test_an_unreachable_admin_url_exits_2_with_a_hint(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSHIFT_ADMIN_TOKEN", TOKEN)
    url = f"http://127.0.0.1:{free_port()}"
    for cmd in (["status"], ["set-weight", "5"], ["set-system-of-record", "green"], ["hold"],
                ["release"]):
        assert main(["traffic", *cmd, "--admin-url", url]) == 2, cmd
        err = capsys.readouterr().err
        assert err.startswith("Error: embedded proxy admin API at"), err
        assert "Try: " in err and "Traceback" not in err
    with pytest.raises(embedded.RouterUnreachable):  # (looked up late: main lacks it)
        EmbeddedRouter(url, TOKEN).status()


def test_an_unreachable_haproxy_socket_exits_2(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["traffic", "status", "--router", "haproxy", "--socket",
                 str(tmp_path / "none.sock"), "--map-file", str(tmp_path / "m.map")])
    assert code == 2
    assert "HAProxy runtime API" in capsys.readouterr().err


def test_a_refused_hold_exits_6(pair, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    p = _proxy(*pair)
    monkeypatch.setenv("PGSHIFT_ADMIN_TOKEN", TOKEN)
    try:
        def write() -> None:
            with contextlib.suppress(httpx.HTTPError):  # cut when the proxy stops
                httpx.post(p.url + "/slow", content=b"w", headers={"X-Sleep": "12"},
                           timeout=20)

        slow = threading.Thread(target=write, daemon=True)
        slow.start()
        assert _wait(lambda: p.state.writes_in_flight == 1)
        assert main(["traffic", "hold", "--admin-url", p.admin_url]) == 6
        assert "still in flight" in capsys.readouterr().err
    finally:
        p.stop()


def test_proxy_help_and_env_token_are_unchanged() -> None:
    """The rollout engine runs `pgshift proxy` as a subprocess: its first stderr line and
    its flags stay as they were."""
    out = subprocess.run([sys.executable, "-c", "from pgshift.cli.main import run; run()",
                          "proxy", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"}, check=True).stdout
    for flag in ("--blue", "--green", "--listen", "--admin", "--token", "--cohort-header",
                 "--write-path", "--health-path", "--health-interval", "--rise", "--fall",
                 "--eject-after", "--fence-timeout", "--weight", "--header-timeout",
                 "--max-connections", "--max-header-size", "--trusted-proxy"):
        assert flag in out, flag
