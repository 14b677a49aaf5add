"""HAProxy router: renders the ``haproxy.cfg`` it needs and drives HAProxy's runtime API.

Cohorts are monotone in HAProxy too, without server weights: the frontend hashes the
client's key (a header such as a user id, else the ``pgshift_cohort`` cookie, else a
fresh ``uuid`` it sets as that cookie) into a bucket 0..9999 and sends the client to green
iff ``bucket < threshold``; ``threshold`` (= weight x 100) and the system of record live
in a map file that ``set map`` updates at runtime. The router also rewrites the map file
(temp file + rename) so a reload keeps the state.

Traps this avoids: server weights (0-256) only steer new sessions and cookie-persistent
clients keep going to a weight-0 server -- so no weights and no server cookies here, and
``drain_to_blue`` also puts green in ``drain`` state. ``show stat`` gives cumulative
counters and averages, not histograms: ``figures(window)`` takes deltas between samples
(each call samples; call ``sample()`` at the start of a window) and reports the average
response time as ``mean_ms`` with no percentiles.

Write routing: methods other than GET/HEAD/OPTIONS and configured path globs go to the
backend the map names as system of record. HAProxy cannot hold requests, so this router
is not a ``WriteFence``: the engine uses a declared short write pause.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pgshift.errors import UsageError
from pgshift.traffic.proxy.cohort import COOKIE, threshold
from pgshift.traffic.proxy.config import Backend, HealthCheck, parse_listen, parse_networks
from pgshift.traffic.proxy.paths import normal_glob
from pgshift.traffic.router import (
    STATUS_CLASSES,
    BackendFigures,
    Figures,
    RouterError,
    RouterUnreachable,
    Side,
    check_side,
    check_weight,
)


class HAProxyError(RouterError):
    """HAProxy's runtime API answered with an error (exit 6)."""


class HAProxyUnreachable(HAProxyError, RouterUnreachable):
    """HAProxy's stats socket cannot be reached (exit 2)."""


@dataclass(frozen=True)
class HAProxySettings:
    """What ``render_config`` needs; ``map_file`` must be the path HAProxy reads."""

    blue: Backend
    green: Backend
    socket: Path
    map_file: Path
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    cohort_header: str | None = None
    write_paths: tuple[str, ...] = ()
    health: HealthCheck = field(default_factory=HealthCheck)
    eject_after: int = 5
    threads: int = 1
    connect_timeout: float = 3.0
    read_timeout: float = 60.0
    header_timeout: float = 30.0
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For/-Proto are kept


def glob_to_regex(pattern: str) -> str:
    """``fnmatch``-style glob (``*`` crosses ``/``, like the embedded proxy) -> PCRE, for
    a path in normal form (so a trailing ``/`` of the glob is dropped, like
    ``paths.normal_glob``)."""
    out = []
    for ch in normal_glob(pattern):
        out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return "^" + "".join(out) + "$"


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


# Write routing matches the path in the embedded proxy's normal form (paths.py):
# normalize-uri decodes %XX of unreserved characters and resolves dot segments (it also
# rewrites what the backend gets, as HAProxy documents), then the var decodes the rest
# once (uvicorn decodes %2F too), drops ;parameters, merges slashes and drops a trailing /.
_NORMALIZE = """\
    http-request normalize-uri percent-decode-unreserved
    http-request normalize-uri path-strip-dot
    http-request normalize-uri path-strip-dotdot full
    http-request normalize-uri path-merge-slashes
    http-request set-var(txn.wpath) path,url_dec,regsub(;[^/]*,,g),regsub(/+,/,g),regsub(/$,)
"""


def _forwarded_rules(s: HAProxySettings) -> str:
    """X-Forwarded-For/-Proto: kept only from ``trusted_proxies`` (``option forwardfor``
    appends the client address after these rules); overwritten for everyone else."""
    cond = "if !trusted_proxy " if s.trusted_proxies else ""
    lines = []
    if s.trusted_proxies:
        lines.append(f"    acl trusted_proxy src {' '.join(s.trusted_proxies)}")
    lines += [f"    http-request del-header X-Forwarded-For {cond}".rstrip(),
              f"    http-request set-header X-Forwarded-Proto http {cond}".rstrip()]
    if s.trusted_proxies:
        lines.append("    http-request set-header X-Forwarded-Proto http "
                     "if trusted_proxy !{ req.hdr(X-Forwarded-Proto) -m found }")
    return "\n".join(lines) + "\n"


def render_config(s: HAProxySettings) -> str:
    """The complete ``haproxy.cfg`` for two backends behind monotone cohorts."""
    m = str(s.map_file)
    key_rules = []
    if s.cohort_header:
        # req.fhdr: the whole value (req.hdr would split it at commas); two of them are
        # ambiguous (which one is the user?) and refused, as the embedded proxy does
        key_rules += [
            f"    http-request deny deny_status 400 if {{ req.fhdr_cnt({s.cohort_header}) "
            "gt 1 }",
            f"    http-request set-var(txn.key) req.fhdr({s.cohort_header})"]
    key_rules += [
        f"    http-request set-var(txn.key) req.cook({COOKIE}) if !{{ var(txn.key) -m found }}",
        "    http-request set-var(txn.newkey) uuid if !{ var(txn.key) -m found }",
        "    http-request set-var(txn.key) var(txn.newkey) if { var(txn.newkey) -m found }",
    ]
    write_acl = normalize = experimental = ""
    if s.write_paths:
        # HAProxy 2.4-2.6 ship normalize-uri as "experimental" (it is a documented,
        # tested action; the flag only acknowledges that its options may change)
        experimental = "    expose-experimental-directives\n"
        regs = " ".join(glob_to_regex(p) for p in s.write_paths)
        write_acl = f"    acl write_path var(txn.wpath) -m reg {regs}\n"
        normalize = _NORMALIZE
    conds = ["!is_read"] + (["write_path"] if s.write_paths else [])
    writes_green = " || ".join(f"{c} sor_green" for c in conds)
    writes_blue = " || ".join(conds)
    pause_rule = ("    http-request return status 503 hdr Retry-After 1 content-type text/plain "
                  'string "writes paused for a cutover step" if writes_paused '
                  + " || writes_paused ".join(conds))

    set_cookie = f"{COOKIE}=%[var(txn.newkey)]; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"

    def server(b: Backend) -> str:
        line = f"    server {b.name} {b.host}:{b.port}"
        h = s.health
        if h.path:
            line += (f" check inter {_ms(h.interval)} rise {h.rise} fall {h.fall}"
                     f" observe layer7 error-limit {s.eject_after} on-error mark-down")
        return line

    def backend(b: Backend) -> str:
        lines = [f"backend be_{b.name}", "    http-reuse safe"]
        if s.health.path:
            lines += [f"    option httpchk GET {s.health.path}",
                      f"    timeout check {_ms(s.health.timeout)}"]
        lines.append(server(b))
        return "\n".join(lines) + "\n"

    return f"""# Rendered by pgshift (pgshift traffic haproxy-config). Do not edit by hand:
# re-render instead. Runtime state (green threshold, system of record) lives in
# {m} and changes with `set map` over the stats socket.
global
    stats socket {s.socket} mode 600 expose-fd listeners level admin
    stats timeout 30s
    nbthread {s.threads}
    maxconn 4096
{experimental}
defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect {_ms(s.connect_timeout)}
    timeout client 75s
    timeout server {_ms(s.read_timeout)}
    timeout http-keep-alive 75s
    timeout http-request {_ms(s.header_timeout)}

frontend pgshift
    bind {s.listen[0]}:{s.listen[1]}
    http-request deny deny_status 400 if {{ req.fhdr_cnt(host) gt 1 }}
{_forwarded_rules(s)}{normalize}{chr(10).join(key_rules)}
    http-request set-var(txn.bucket) var(txn.key),xxh32,mod(10000)
    http-request set-var(txn.threshold) str(threshold),map_str({m},0),add(0)
    http-request set-var(txn.diff) var(txn.bucket),sub(txn.threshold)
    http-request set-var(txn.sor) str(sor),map_str({m},blue)
    http-request set-var(txn.writes) str(writes),map_str({m},open)
    acl is_read method GET HEAD OPTIONS
{write_acl}    acl writes_paused var(txn.writes) -m str paused
    # the flip's declared write pause (runtime `add map ... writes paused`): refused, not held
{pause_rule}
    acl green_cohort var(txn.diff) -m int lt 0
    acl sor_green var(txn.sor) -m str green
    acl green_down nbsrv(be_green) lt 1
    acl blue_down nbsrv(be_blue) lt 1
    # writes: always the system of record, never a fallback
    use_backend be_green if {writes_green}
    use_backend be_blue if {writes_blue}
    # reads: a dead side's clients go to the system of record only (never to blue after the flip)
    use_backend be_blue if green_cohort green_down !sor_green
    use_backend be_green if green_cohort
    use_backend be_green if blue_down sor_green
    default_backend be_blue
    http-response add-header Set-Cookie "{set_cookie}" if {{ var(txn.newkey) -m found }}

{backend(s.blue)}
{backend(s.green)}"""


def render_map(weight: float, sor: Side) -> str:
    return f"threshold {threshold(weight)}\nsor {sor}\n"


def write_map(path: Path, weight: float, sor: Side) -> None:
    """Write the map file durably: temp file, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pgshift-map-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render_map(weight, sor))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class RuntimeAPI:
    """One command per connection on HAProxy's stats socket."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.path = Path(socket_path)
        self.timeout = timeout

    def __call__(self, command: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(str(self.path))
                s.sendall(command.encode() + b"\n")
                chunks = []
                while data := s.recv(65536):
                    chunks.append(data)
        except OSError as exc:
            raise HAProxyUnreachable(f"HAProxy runtime API at {self.path}: {exc}",
                               hint="is haproxy running with the config from "
                                    "`pgshift traffic haproxy-config`?",
                               operation=command) from exc
        return b"".join(chunks).decode()


_COUNTERS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other",
             "econ", "eresp")


class HAProxyRouter:
    """``Router`` + ``WriteRouting`` + ``WritePause`` over HAProxy's runtime API."""

    def __init__(self, socket_path: Path | str, map_file: Path | str) -> None:
        self.api = RuntimeAPI(Path(socket_path))
        self.map_file = Path(map_file)
        self._samples: list[tuple[float, dict[str, dict[str, int | float]]]] = []

    # -- state ---------------------------------------------------------------------------------

    def _map(self) -> dict[str, str]:
        out = self.api(f"show map {self.map_file}")
        entries = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].startswith("0x"):
                entries[parts[1]] = parts[2]
        if not entries and out.strip():
            raise HAProxyError(f"HAProxy: show map {self.map_file}: {out.strip()}",
                               hint="the --map-file must be the one haproxy.cfg names")
        return entries

    def _set(self, weight: float, sor: Side) -> None:
        write_map(self.map_file, weight, sor)
        for key, value in (("threshold", str(threshold(weight))), ("sor", sor)):
            out = self.api(f"set map {self.map_file} {key} {value}").strip()
            if out:
                raise HAProxyError(f"HAProxy: set map {key}: {out}", operation="set map")

    def pause_writes(self) -> None:
        """Answer new mutating requests 503 Retry-After (a runtime map entry: a reload,
        which reads the map file, never keeps writes paused)."""
        out = self.api(f"add map {self.map_file} writes paused").strip()
        if out:
            raise HAProxyError(f"HAProxy: add map writes: {out}", operation="add map")

    def resume_writes(self) -> None:
        self.api(f"del map {self.map_file} writes")

    def writes_paused(self) -> bool:
        return self._map().get("writes") == "paused"

    def _server_state(self, side: Side, state: str) -> None:
        out = self.api(f"set server be_{side}/{side} state {state}").strip()
        if out:
            raise HAProxyError(f"HAProxy: set server be_{side}/{side} state {state}: {out}")

    # -- Router -------------------------------------------------------------------------------

    def weight(self) -> float:
        return int(self._map().get("threshold", "0")) / 100.0

    def set_weight(self, pct: float) -> None:
        value = check_weight(pct)
        if value > 0:
            self._server_state("green", "ready")
        self._set(value, self.system_of_record())

    def drain_to_blue(self) -> None:
        self._server_state("blue", "ready")
        self._set(0.0, "blue")
        # belt and braces: nothing new reaches green even from a stale rule
        self._server_state("green", "drain")

    def sample(self) -> None:
        """Record the cumulative counters now (call at the start of a window)."""
        self._take()

    def _take(self) -> dict[str, dict[str, int | float]]:
        text = self.api("show stat").lstrip("# ")
        now: dict[str, dict[str, int | float]] = {}
        for row in csv.DictReader(io.StringIO(text)):
            px = row.get("pxname", "")
            if row.get("svname") == "BACKEND" and px in ("be_blue", "be_green"):
                vals: dict[str, int | float] = {k: int(row.get(k) or 0) for k in _COUNTERS}
                vals["ttime"] = float(row.get("ttime") or 0)
                now[px[3:]] = vals
        if set(now) != {"blue", "green"}:
            raise HAProxyError("HAProxy: show stat has no be_blue/be_green backends",
                               hint="render the config with `pgshift traffic haproxy-config`")
        t = time.monotonic()
        self._samples.append((t, now))
        del self._samples[:-1000]
        return now

    def figures(self, window: float) -> Figures:
        """Counter deltas from the newest sample at least ``window`` old (else the oldest one)
        to now; ``Figures.window`` is the span really covered. The first call has nothing to
        compare with and covers 0 s: sample at the start of a step."""
        samples_before = list(self._samples)
        now = self._take()
        t_now = self._samples[-1][0]
        t_base, base = t_now, now
        for t, sample in reversed(samples_before):
            t_base, base = t, sample
            if t <= t_now - window:
                break
        sides = {}
        for side in ("blue", "green"):
            cur, old = now[side], base[side]
            d = {k: int(cur[k]) - int(old[k]) for k in _COUNTERS}
            status = dict(zip(STATUS_CLASSES, (d["hrsp_1xx"] + d["hrsp_2xx"], d["hrsp_3xx"],
                                               d["hrsp_4xx"], d["hrsp_5xx"]), strict=True))
            conn = d["econ"] + d["eresp"]
            sides[side] = BackendFigures(
                requests=sum(status.values()) + d["hrsp_other"] + conn, status=status,
                connection_errors=conn, mean_ms=float(cur["ttime"]) or None)
        return Figures(window=round(t_now - t_base, 3), blue=sides["blue"],
                       green=sides["green"], source="haproxy")

    # -- WriteRouting ---------------------------------------------------------------------------

    def system_of_record(self) -> Side:
        return check_side(self._map().get("sor", "blue"))

    def set_system_of_record(self, side: Side) -> None:
        side = check_side(side)
        self._server_state(side, "ready")
        self._set(self.weight(), side)

    def status(self) -> dict[str, object]:
        servers = {}
        for line in self.api("show servers state").splitlines():
            parts = line.split()
            if len(parts) > 6 and parts[1] in ("be_blue", "be_green"):
                # srv_op_state: 0 stopped, 1 starting, 2 running, 3 stopping;
                # srv_admin_state bit 0x1/0x8 = maintenance, 0x10 = drain
                servers[parts[1][3:]] = {"op_state": int(parts[5]),
                                         "admin_state": int(parts[6])}
        return {"weight": self.weight(), "system_of_record": self.system_of_record(),
                "writes_paused": self.writes_paused(), "servers": servers}


def settings_from_cli(*, blue: str, green: str, listen: str, socket_path: str, map_file: str,
                      cohort_header: str | None = None, write_paths: tuple[str, ...] = (),
                      health_path: str | None = None, health_interval: float = 1.0,
                      threads: int = 1, header_timeout: float = 30.0,
                      trusted_proxies: tuple[str, ...] = ()) -> HAProxySettings:
    from pgshift.traffic.proxy.config import check_number, parse_backend

    b, g = parse_backend("blue", blue), parse_backend("green", green)
    if not os.path.isabs(socket_path) or not os.path.isabs(map_file):
        raise UsageError("--socket and --map-file must be absolute paths (HAProxy reads them)",
                         hint="--socket /run/haproxy/pgshift.sock "
                              "--map-file /etc/haproxy/pgshift.map")
    check_number("--threads", threads, minimum=1, integer=True, example="1")
    check_number("--header-timeout", header_timeout, minimum=0, strict=True, example="30")
    for glob in write_paths:
        if not glob.startswith("/"):
            raise UsageError(f"--write-path must start with '/', got {glob!r}",
                             hint="--write-path '/api/*/claim'")
    return HAProxySettings(blue=b, green=g, socket=Path(socket_path), map_file=Path(map_file),
                           listen=parse_listen("--listen", listen), cohort_header=cohort_header,
                           write_paths=tuple(write_paths),
                           health=HealthCheck(path=health_path, interval=health_interval),
                           threads=threads, header_timeout=header_timeout,
                           trusted_proxies=tuple(str(n) for n in
                                                 parse_networks(tuple(trusted_proxies))))
