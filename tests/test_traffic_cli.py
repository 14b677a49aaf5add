"""``pgshift proxy`` and ``pgshift traffic``: thin commands over the library."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pgshift.cli.main import main
from pgshift.traffic.proxy import ThreadedProxy, make_config
from traffic_conformance import TestBackend, backends, free_port

TOKEN = "cli-token"


@pytest.fixture
def running() -> Iterator[tuple[ThreadedProxy, TestBackend, TestBackend]]:
    with backends() as (blue, green):
        p = ThreadedProxy(make_config(blue=blue.url, green=green.url, listen="127.0.0.1:0",
                                      admin="127.0.0.1:0", token=TOKEN)).start()
        try:
            yield p, blue, green
        finally:
            p.stop()


@pytest.mark.parametrize(("args", "message"), [
    (["--blue", "localhost:8001", "--green", "http://127.0.0.1:8002"],
     "Error: --blue: 'localhost:8001': expected http://host:port"),
    (["--blue", "http://127.0.0.1:8001", "--green", "ftp://h:2"], "Error: --green:"),
    (["--blue", "http://127.0.0.1:8001", "--green", "http://127.0.0.1:8002", "--listen", "x"],
     "Error: --listen: 'x' is not host:port"),
])
def test_proxy_bad_input_exits_2_with_one_line(args: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", *args]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith(message), err
    assert "Traceback" not in err


def test_traffic_drives_the_embedded_proxy(running, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    p, _, _ = running
    monkeypatch.setenv("PGSHIFT_ADMIN_TOKEN", TOKEN)
    common = ["--admin-url", p.admin_url]
    assert main(["traffic", "set-weight", "25", *common]) == 0
    assert "green weight 25 %" in capsys.readouterr().out
    assert main(["traffic", "hold", *common]) == 0
    assert "fence HELD" in capsys.readouterr().out
    assert main(["traffic", "release", *common]) == 0
    assert main(["traffic", "set-system-of-record", "green", *common]) == 0
    capsys.readouterr()
    with httpx.Client(base_url=p.url) as c:
        c.get("/")
    assert main(["traffic", "status", "--json", *common]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["weight"] == 25 and info["system_of_record"] == "green"
    assert info["write_fence"] and info["details"]["fence"]["held"] is False
    assert info["figures"]["blue"]["requests"] + info["figures"]["green"]["requests"] == 1
    assert main(["traffic", "set-weight", "101", *common]) == 2
    assert "from 0 to 100" in capsys.readouterr().err


def test_traffic_needs_the_token(running, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    p, _, _ = running
    monkeypatch.delenv("PGSHIFT_ADMIN_TOKEN", raising=False)
    assert main(["traffic", "status", "--admin-url", p.admin_url]) == 2
    assert "admin token" in capsys.readouterr().err
    assert main(["traffic", "status", "--admin-url", p.admin_url, "--token", "nope"]) == 2
    assert "refused the admin token" in capsys.readouterr().err


def test_haproxy_cannot_hold(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["traffic", "hold", "--router", "haproxy"]) == 2
    assert "cannot hold" in capsys.readouterr().err


def test_haproxy_config_prints_a_config(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    assert main(["traffic", "haproxy-config", "--blue", "http://10.0.0.5:8000",
                 "--green", "http://10.0.0.6:8000", "--write-path", "/api/*/claim"]) == 0
    out = capsys.readouterr().out
    assert "server blue 10.0.0.5:8000" in out
    assert "acl write_path var(txn.wpath) -m reg ^/api/.*/claim$" in out
    cfg, m = tmp_path / "h.cfg", tmp_path / "p.map"
    assert main(["traffic", "haproxy-config", "--blue", "http://10.0.0.5:8000",
                 "--green", "http://10.0.0.6:8000", "--map-file", str(m), "-o", str(cfg)]) == 0
    assert cfg.read_text().startswith("# Rendered by pgshift")
    assert m.read_text() == "threshold 0\nsor blue\n"


def test_every_traffic_command_has_help() -> None:
    from typer.main import get_command

    from pgshift.cli.main import app

    group = get_command(app)
    for name in ("proxy", "traffic"):
        cmd = group.commands[name]  # type: ignore[attr-defined]
        assert cmd.help, name
        for sub in getattr(cmd, "commands", {}).values():
            assert sub.help, f"{name} {sub.name}"


def test_pgshift_proxy_runs_and_stops_cleanly_on_sigterm() -> None:
    with backends() as (blue, green):
        port, admin = free_port(), free_port()
        env = {**os.environ, "PGSHIFT_ADMIN_TOKEN": TOKEN}
        proc = subprocess.Popen(
            [sys.executable, "-c", "from pgshift.cli.main import run; run()", "proxy",
             "--blue", blue.url, "--green", green.url, "--listen", f"127.0.0.1:{port}",
             "--admin", f"127.0.0.1:{admin}"],
            env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert f"http://127.0.0.1:{port} -> blue {blue.url}" in line, line
            with httpx.Client() as c:
                assert c.get(f"http://127.0.0.1:{port}/").headers["X-Backend"] == "blue"
                r = c.get(f"http://127.0.0.1:{admin}/status",
                          headers={"Authorization": f"Bearer {TOKEN}"})
                assert r.json()["weight"] == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            rc = proc.wait(10)
            rest = proc.stderr.read() if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
        assert rc == 0, rest
        assert time.monotonic() - t0 < 5
