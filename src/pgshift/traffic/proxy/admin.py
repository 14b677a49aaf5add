"""The admin API: a small HTTP/1.1 JSON server on its own port, Bearer-token protected.

    GET  /status                     weight, system of record, fence, backend health
    GET  /figures?window=60          per-backend figures (pgshift.traffic.router.Figures)
    GET  /metrics                    Prometheus text
    PUT  /weight                     {"weight": 25}
    PUT  /system-of-record           {"side": "green"}
    POST /fence/hold {"wait": 10}    hold new writes; answers once writes already sent are
                                     answered (409 if some are still in flight after wait s)
    POST /fence/release
    POST /rollback                   everything to blue (weight 0, SoR blue, fence released)

Every endpoint needs ``Authorization: Bearer <token>``; bad input is a 400 with
``{"error": ...}`` (a malformed request too, then the connection closes); a head over
the proxy's ``max_header_size`` is a 431, a body over 64 KiB a 413, a request not complete
within 30 s a 408. Changes apply between two requests on the proxy's loop, so they take
effect on the next request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any
from urllib.parse import parse_qs

import httptools

from pgshift.errors import PgshiftError
from pgshift.traffic.proxy.state import RoutingState
from pgshift.traffic.proxy.stats import PROMETHEUS_HELP
from pgshift.traffic.router import Figures

MAX_BODY = 64 * 1024
REQUEST_TIMEOUT = 30.0  # seconds for one whole admin request (head and body) to arrive
MAX_CONNECTIONS = 64  # admin clients at once: one rollout engine and a few operators


class _TooLarge(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class _Req:
    def __init__(self, max_head: int) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.done = False
        self.head_done = False
        self.max_head = max_head
        self.head_size = 0  # bytes seen by the callbacks
        self.head_raw = 0  # bytes of reads that began inside the head
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value
        self.head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.head_done = True
        if self.head_size > self.max_head:
            raise _TooLarge(431, f"request head larger than {self.max_head} bytes")

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            raise _TooLarge(413, f"body larger than {MAX_BODY} bytes")

    def on_message_complete(self) -> None:
        self.done = True

    def feed(self, data: bytes) -> None:
        """Parse ``data``; ``_TooLarge`` or ``httptools.HttpParserError`` on bad input."""
        started = self.head_size > 0 or self.head_raw > 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _TooLarge):
                raise exc.__context__ from None
            raise
        if not self.head_done:
            if started:
                self.head_raw += len(data)
            if max(self.head_raw, self.head_size) > self.max_head:
                raise _TooLarge(431, f"request head larger than {self.max_head} bytes")


def _response(status: int, ctype: bytes, body: bytes, keep: bool) -> bytes:
    return (b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n"
            b"Connection: %b\r\n\r\n%b" % (
                status, _REASONS.get(status, b"OK"), ctype, len(body),
                b"keep-alive" if keep else b"close", body))


class AdminServer:
    def __init__(self, state: RoutingState, token: str, max_head: int = 16 * 1024) -> None:
        self.state = state
        self.token = token.encode()
        self.max_head = max_head
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one admin connection: requests one after another, each within
        ``REQUEST_TIMEOUT``; malformed ones get 400, oversized ones 431/413, then close."""
        self.connections += 1
        peer = writer.get_extra_info("peername")
        peer = peer[0] if isinstance(peer, tuple) else "unix"
        try:
            if self.connections > MAX_CONNECTIONS:
                self.state.refusals("admin_connection_limit", peer=peer, limit=MAX_CONNECTIONS)
                writer.write(_response(*_json(503, {"error": "too many admin connections"}),
                                       keep=False))
                return
            while True:
                req = _Req(self.max_head)
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        while not req.done:
                            data = await reader.read(65536)
                            if not data:
                                return
                            req.feed(data)
                except TimeoutError:
                    if req.head_size or req.head_raw:
                        self._refuse(writer, peer, 408, "request not received in time",
                                     "admin_timeout")
                    return
                except _TooLarge as exc:
                    self._refuse(writer, peer, exc.status, str(exc), "admin_too_large")
                    return
                except httptools.HttpParserError as exc:
                    self._refuse(writer, peer, 400, f"malformed request: {exc}",
                                 "admin_bad_request")
                    return
                status, ctype, body = self.dispatch(req)
                if status == 202:  # hold: answer once writes already sent have finished
                    status, ctype, body = await self._drained(req)
                keep = req.parser.should_keep_alive()
                writer.write(_response(status, ctype, body, keep))
                await writer.drain()
                if not keep:
                    return
        except ConnectionError:
            return
        finally:
            self.connections -= 1
            writer.close()

    def _refuse(self, writer: asyncio.StreamWriter, peer: str, status: int, why: str,
                reason: str) -> None:
        self.state.refusals(reason, peer=peer, status=status)
        writer.write(_response(*_json(status, {"error": why}), keep=False))

    def dispatch(self, req: _Req) -> tuple[int, bytes, bytes]:
        auth = req.headers.get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            return _json(401, {"error": "missing or wrong admin token (Authorization: Bearer)"})
        method = req.parser.get_method()
        url = httptools.parse_url(req.url)
        path = url.path.decode()
        query = parse_qs((url.query or b"").decode())
        try:
            payload = json.loads(req.body) if req.body else {}
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            return _json(400, {"error": f"bad JSON body: {exc}"})
        route = _ROUTES.get((method, path))
        if route is None:
            known = {p for _, p in _ROUTES}
            return _json(405 if path in known else 404, {"error": f"no route {method.decode()} "
                                                         f"{path}"})
        if method != b"GET":
            refused = self._fence_epoch(req.headers.get(EPOCH_HEADER))
            if refused is not None:
                return refused
        try:
            result = route(self, payload, query)
        except PgshiftError as exc:
            return _json(400, {"error": exc.message})
        except (KeyError, TypeError, ValueError) as exc:
            return _json(400, {"error": f"bad request: {exc}"})
        if isinstance(result, bytes):
            return 200, b"text/plain; version=0.0.4; charset=utf-8", result
        if "_drain" in result:
            return 202, b"", b""
        return _json(200, result)

    def _fence_epoch(self, given: bytes | None) -> tuple[int, bytes, bytes] | None:
        """A change sent with a controller epoch below the highest seen is refused (409,
        ``stale_epoch``): that controller lost its lease and must not steer traffic any
        more (Argo Rollouts #2117). Changes without an epoch (an operator's own
        ``pgshift traffic``) are taken: the break-glass path stays open."""
        if given is None:
            return None
        try:
            epoch = int(given)
            if epoch < 1:
                raise ValueError
        except ValueError:
            return _json(400, {"error": f"{EPOCH_HEADER.decode()} must be a positive "
                                        f"integer, got {given[:40]!r}"})
        if epoch < self.state.epoch:
            self.state.refusals("stale_epoch", epoch=epoch, current=self.state.epoch)
            return _json(409, {"error": f"controller epoch {epoch} is stale: a controller "
                                        f"with epoch {self.state.epoch} took over",
                               "stale_epoch": True, "controller_epoch": self.state.epoch})
        self.state.epoch = epoch
        return None

    # -- routes ----------------------------------------------------------------------------

    def status(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        return self.state.status()

    def figures(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        window = float(query.get("window", ["60"])[0])
        if not 0 < window <= 3600:  # (NaN fails this too)
            raise ValueError("window must be in (0, 3600] seconds")
        st = self.state.stats
        return Figures(window=window, blue=st["blue"].window(window),
                       green=st["green"].window(window), source="embedded").to_dict()

    def set_weight(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        if "weight" not in payload:
            raise ValueError('expected {"weight": <0..100>}')
        self.state.set_weight(payload["weight"])
        return self.state.status()

    def set_sor(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        side = payload.get("side")
        if not isinstance(side, str):
            raise ValueError('expected {"side": "blue"} or {"side": "green"}')
        self.state.set_sor(side)
        return self.state.status()

    def hold(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        wait = payload.get("wait", 10.0)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or \
                not 0 <= wait <= 300:
            raise ValueError(f"wait must be a number of seconds from 0 to 300, got {wait!r}")
        self.state.hold()
        return {"_drain": wait}

    async def _drained(self, req: _Req) -> tuple[int, bytes, bytes]:
        """The fence is up; wait for writes sent before it to be answered (the flip must
        not start while one may still commit on the old system of record)."""
        wait = float(json.loads(req.body or b"{}").get("wait", 10.0))
        deadline = time.monotonic() + wait
        while self.state.writes_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        status = self.state.status()
        if self.state.writes_in_flight:
            return _json(409, {"error": f"fence held, but {self.state.writes_in_flight} "
                                        f"write(s) sent before it are still in flight after "
                                        f"{wait:g}s", **status})
        return _json(200, status)

    def release(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        self.state.release()
        return self.state.status()

    def rollback(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        self.state.rollback()
        return self.state.status()

    def metrics(self, payload: dict[str, Any], query: dict[str, list[str]]) -> bytes:
        st = self.state
        lines: list[str] = []
        samples: list[str] = []
        for s in ("blue", "green"):
            st.stats[s].prometheus(samples)
            samples.append(f'pgshift_proxy_backend_up{{backend="{s}"}} '
                           f"{int(st.health[s].available())}")
            samples.append(f'pgshift_proxy_system_of_record{{side="{s}"}} {int(st.sor == s)}')
        samples += [f"pgshift_proxy_green_weight_percent {st.weight}",
                    f"pgshift_proxy_fence_held {int(st.fence.held)}",
                    f"pgshift_proxy_fence_queue {st.fence.queued}",
                    f"pgshift_proxy_client_connections {st.clients}"]
        for name, (kind, text) in PROMETHEUS_HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [x for x in samples if x.startswith((name + "{", name + " ", name + "_"))
                      and not any(x.startswith(o) for o in PROMETHEUS_HELP
                                  if o != name and o.startswith(name))]
        return ("\n".join(lines) + "\n").encode()


_ROUTES = {
    (b"GET", "/status"): AdminServer.status,
    (b"GET", "/figures"): AdminServer.figures,
    (b"GET", "/metrics"): AdminServer.metrics,
    (b"PUT", "/weight"): AdminServer.set_weight,
    (b"PUT", "/system-of-record"): AdminServer.set_sor,
    (b"POST", "/fence/hold"): AdminServer.hold,
    (b"POST", "/fence/release"): AdminServer.release,
    (b"POST", "/rollback"): AdminServer.rollback,
}
EPOCH_HEADER = b"x-pgshift-epoch"
_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
            405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict",
            413: b"Content Too Large", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


def _json(status: int, payload: Any) -> tuple[int, bytes, bytes]:
    return status, b"application/json", json.dumps(payload).encode()
