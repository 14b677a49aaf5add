"""Proxy benchmark: wrk through the embedded proxy vs HAProxy vs straight to nginx.

    .venv/bin/python benchmarks/proxy.py [--duration 5] [--connections 16,64,256]
                                         [--markdown out.md] [--json]

Needs Debian's ``nginx-light`` (or ``nginx``), ``haproxy`` and ``wrk``. Everything runs on
loopback on this machine: nginx (one worker) answers a small static body on two ports
(blue and green); the embedded proxy (``pgshift proxy``, one process, one loop) and
HAProxy (one thread, the config ``pgshift traffic haproxy-config`` renders) sit in front.

Measured:

1. throughput: ``wrk -t1 -cN`` for each connection count -> requests/s, p50, p99, and
   each proxy process's CPU time per request (steadier than requests/s on a busy
   machine); ``--baseline-src OTHER/src`` adds ``pgshift proxy`` from another tree;
2. added latency at a fixed 1,000 requests/s (open loop, latency counted from each
   request's scheduled send time, so a stall cannot hide: no coordinated omission) --
   proxy minus direct, at p50 and p99;
3. weight flapping: wrk GETs and POSTs through the proxy while the weight goes
   0 -> 100 -> 0 every second and the system of record flips under the write fence;
   counts non-2xx answers and socket errors (target: zero);
4. rollback: time from the admin call until a client's next answers come from blue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httptools

from pgshift.traffic.embedded import EmbeddedRouter
from pgshift.traffic.haproxy import render_config, settings_from_cli, write_map

TOKEN = "bench-token"
WRITE_PATH = "/api/*/claim"  # as a real setup has: every GET's path is normalised and matched
BODY = "x" * 100  # a small static answer


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def nginx(workdir: Path, blue: int, green: int):  # type: ignore[no-untyped-def]
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = workdir / "nginx.conf"
    servers = "".join(f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{ add_header X-Backend {name}; return 200 "{name}:{BODY}\\n"; }}
    }}""" for name, port in (("blue", blue), ("green", green)))
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 75s;{servers}
}}
""")
    proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(blue)
        wait_port(green)
        yield
    finally:
        stop(proc)


@contextmanager
def embedded(blue: int, green: int, port: int, admin: int,  # type: ignore[no-untyped-def]
             src: Path | None = None):
    """``pgshift proxy`` as a subprocess; ``src``: run the code of another tree (a
    baseline) instead of the installed one."""
    env = {**os.environ, "PGSHIFT_ADMIN_TOKEN": TOKEN}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pgshift.cli.main import run; run()", "proxy",
         "--blue", f"http://127.0.0.1:{blue}", "--green", f"http://127.0.0.1:{green}",
         "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
         "--write-path", WRITE_PATH],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        wait_port(admin)
        yield proc
    finally:
        stop(proc)


@contextmanager
def haproxy(workdir: Path, blue: int, green: int, port: int):  # type: ignore[no-untyped-def]
    s = settings_from_cli(blue=f"http://127.0.0.1:{blue}", green=f"http://127.0.0.1:{green}",
                          listen=f"127.0.0.1:{port}", socket_path=str(workdir / "ha.sock"),
                          map_file=str(workdir / "ha.map"), write_paths=(WRITE_PATH,))
    (workdir / "haproxy.cfg").write_text(render_config(s))
    write_map(s.map_file, 0, "blue")
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    proc = subprocess.Popen([exe, "-db", "-f", str(workdir / "haproxy.cfg")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield proc
    finally:
        stop(proc)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc). CPU per request moves far
    less with other load on the machine than requests/s do."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- wrk ---------------------------------------------------------------------------------------


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m[2]]


def wrk(url: str, connections: int, duration: float, script: Path | None = None
        ) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    if script:
        argv[1:1] = ["-s", str(script)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"50%\s+(\S+)", out)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"99%\s+(\S+)", out)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "requests": total,
            "non_2xx": int(non2xx[1]) if non2xx else 0,
            "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0}


# -- fixed-rate client ---------------------------------------------------------------------------


class _Resp:
    def __init__(self) -> None:
        self.done = False
        self.status = 0
        self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        self.done = True
        self.status = self.parser.get_status_code()


async def _fixed_rate(port: int, rate: float, seconds: float, conns: int) -> list[float]:
    """Open-loop GETs at ``rate``/s over ``conns`` keep-alive connections; latencies in ms
    from each request's scheduled time."""
    n = int(rate * seconds)
    start = time.perf_counter() + 0.2
    lat: list[float] = []
    req = b"GET / HTTP/1.1\r\nHost: bench\r\nCookie: pgshift_cohort=bench\r\n\r\n"

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(k, n, conns):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(req)
                resp = _Resp()
                while not resp.done:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("closed")
                    resp.parser.feed_data(data)
                lat.append((time.perf_counter() - due) * 1000)
        finally:
            writer.close()

    await asyncio.gather(*(worker(k) for k in range(conns)))
    return lat


def fixed_rate(port: int, rate: float = 1000, seconds: float = 10, conns: int = 20
               ) -> dict[str, float]:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        lat = sorted(loop.run_until_complete(_fixed_rate(port, rate, seconds, conns)))
    finally:
        loop.close()
    q = statistics.quantiles(lat, n=100)
    return {"p50_ms": statistics.median(lat), "p99_ms": q[98], "max_ms": lat[-1],
            "requests": len(lat)}


# -- flapping and rollback -------------------------------------------------------------------


def flapping(proxy_port: int, admin_port: int, workdir: Path, seconds: float,
             connections: int) -> dict[str, Any]:
    post = workdir / "post.lua"
    post.write_text('wrk.method = "POST"\nwrk.body = "x"\n'
                    'wrk.headers["Content-Type"] = "text/plain"\n')
    url = f"http://127.0.0.1:{proxy_port}/"
    results: dict[str, Any] = {}
    stop_flag = threading.Event()
    flips = {"weight": 0, "sor": 0}

    def flap() -> None:
        with EmbeddedRouter(f"http://127.0.0.1:{admin_port}", TOKEN) as r:
            w, i = 0, 0
            while not stop_flag.is_set():
                w = 100 - w
                r.set_weight(w)
                flips["weight"] += 1
                if i % 2 == 1:  # the flip under the fence, every 2 s
                    r.hold()
                    time.sleep(0.05)
                    r.set_system_of_record("green" if w else "blue")
                    r.release()
                    flips["sor"] += 1
                i += 1
                stop_flag.wait(1.0)
            r.drain_to_blue()

    def run(name: str, script: Path | None, conns: int) -> None:
        results[name] = wrk(url, conns, seconds, script)

    threads = [threading.Thread(target=run, args=("GET", None, connections)),
               threading.Thread(target=run, args=("POST", post, max(connections // 4, 1)))]
    flapper = threading.Thread(target=flap)
    flapper.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop_flag.set()
    flapper.join()
    return {**results, "weight_changes": flips["weight"], "sor_flips": flips["sor"]}


def rollback_delay(proxy_port: int, admin_port: int, tries: int = 5) -> list[float]:
    """Milliseconds from the rollback call until the next request is answered by blue."""
    import httpx

    out = []
    with EmbeddedRouter(f"http://127.0.0.1:{admin_port}", TOKEN) as r, \
            httpx.Client(base_url=f"http://127.0.0.1:{proxy_port}") as c:
        for _ in range(tries):
            r.set_weight(100)
            r.set_system_of_record("green")
            assert c.get("/").text.startswith("green")
            t0 = time.perf_counter()
            r.drain_to_blue()
            while not c.get("/").text.startswith("blue"):
                pass
            out.append((time.perf_counter() - t0) * 1000)
    return out


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", default="16,64,256")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--rate-seconds", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3, help="fixed-rate runs per target; the "
                    "median is reported (other load on the machine shows up as outliers)")
    ap.add_argument("--flap-seconds", type=float, default=10.0)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--baseline-src", type=Path, help="also run `pgshift proxy` from this "
                    "source tree (e.g. another checkout's src/) in the same run, as "
                    "'pgshift proxy (baseline)'")
    args = ap.parse_args()
    for tool in ("wrk", "haproxy", "nginx"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            print(f"Error: {tool} is not installed\nTry: apt-get install -y wrk haproxy "
                  "nginx-light", file=sys.stderr)
            return 2
    conns = [int(c) for c in args.connections.split(",")]
    blue, green, emb, adm, hap, base, base_adm = (free_port() for _ in range(7))
    report: dict[str, Any] = {
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": os.getloadavg(),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "throughput": [], "fixed_rate": {}, "flapping": {}, "rollback_ms": []}
    with tempfile.TemporaryDirectory(prefix="pgshift-bench-proxy-") as tmp:
        work = Path(tmp)
        with contextlib.ExitStack() as stack:
            stack.enter_context(nginx(work, blue, green))
            pids = {"pgshift proxy": stack.enter_context(embedded(blue, green, emb, adm)).pid,
                    "HAProxy 1 thread": stack.enter_context(haproxy(work, blue, green, hap)).pid}
            targets = {"nginx direct": blue, "HAProxy 1 thread": hap, "pgshift proxy": emb}
            if args.baseline_src is not None:
                pids["pgshift proxy (baseline)"] = stack.enter_context(
                    embedded(blue, green, base, base_adm, args.baseline_src)).pid
                targets["pgshift proxy (baseline)"] = base
            for c in conns:
                for name, port in targets.items():
                    log(f"wrk {name} c={c}")
                    cpu0 = cpu_seconds(pids[name]) if name in pids else 0.0
                    r = wrk(f"http://127.0.0.1:{port}/", c, args.duration)
                    if name in pids and r["requests"]:
                        r["cpu_us_per_request"] = round(
                            (cpu_seconds(pids[name]) - cpu0) / r["requests"] * 1e6, 1)
                    report["throughput"].append({"target": name, "connections": c, **r})
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for rep in range(args.repeat):  # interleaved, so load from elsewhere hits all
                for name, port in targets.items():
                    log(f"fixed rate {args.rate:g}/s {name} (run {rep + 1}/{args.repeat})")
                    runs[name].append(fixed_rate(port, args.rate, args.rate_seconds))
            for name, rs in runs.items():
                report["fixed_rate"][name] = {
                    "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                    "p99_ms_runs": [round(r["p99_ms"], 2) for r in rs],
                    "requests": sum(int(r["requests"]) for r in rs)}
            log("flapping weight and system of record under load")
            report["flapping"] = flapping(emb, adm, work, args.flap_seconds, 64)
            log("rollback delay")
            report["rollback_ms"] = rollback_delay(emb, adm)
    if args.json:
        print(json.dumps(report, indent=2))
    md = markdown(report)
    if args.markdown:
        args.markdown.write_text(md)
    if not args.json:
        print(md)
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = ["| target | connections | requests/s | p50 ms | p99 ms | vs HAProxy | "
             "CPU us/request |", "|---|---:|---:|---:|---:|---:|---:|"]
    hap = {t["connections"]: t["rps"] for t in r["throughput"] if t["target"].startswith("HA")}
    for t in r["throughput"]:
        ratio = t["rps"] / hap[t["connections"]] if hap.get(t["connections"]) else float("nan")
        cpu = t.get("cpu_us_per_request")
        lines.append(f"| {t['target']} | {t['connections']} | {t['rps']:,.0f} | "
                     f"{t['p50_ms']:.2f} | {t['p99_ms']:.2f} | {ratio:.2f}x | "
                     f"{'' if cpu is None else f'{cpu:.1f}'} |")
    fr = r["fixed_rate"]
    direct = fr.get("nginx direct", {})
    lines += ["", "| at a fixed 1,000 requests/s (median of runs) | p50 ms | p99 ms | added p50 "
                  "| added p99 | p99 of each run |", "|---|---:|---:|---:|---:|---|"]
    for name, v in fr.items():
        lines.append(f"| {name} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | "
                     f"{v['p50_ms'] - direct.get('p50_ms', 0):+.2f} | "
                     f"{v['p99_ms'] - direct.get('p99_ms', 0):+.2f} | "
                     f"{', '.join(f'{x:g}' for x in v['p99_ms_runs'])} |")
    f = r["flapping"]
    lines += ["", "| weight flapping 0->100->0 every 1 s + SoR flips under the fence | "
                  "requests | non-2xx | socket errors |", "|---|---:|---:|---:|"]
    for kind in ("GET", "POST"):
        v = f[kind]
        lines.append(f"| wrk {kind} ({f['weight_changes']} weight changes, {f['sor_flips']} "
                     f"flips) | {v['requests']:,} | {v['non_2xx']} | {v['socket_errors']} |")
    rb = r["rollback_ms"]
    lines += ["", f"Rollback: everything on blue {min(rb):.1f}-{max(rb):.1f} ms after the "
                  f"admin call (median {statistics.median(rb):.1f} ms, {len(rb)} tries).",
              f"Machine: {r['machine']['nproc']} CPUs, Python {r['machine']['python']}, "
              f"load average at start {r['machine']['load_avg_at_start'][0]:.1f}, "
              f"{r['machine']['date']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
