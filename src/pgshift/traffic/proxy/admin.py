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
``{"error": ...}``. Changes apply between two requests on the proxy's loop, so they take
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


class _Req:
    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.done = False
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            raise ValueError("body too large")

    def on_message_complete(self) -> None:
        self.done = True


class AdminServer:
    def __init__(self, state: RoutingState, token: str) -> None:
        self.state = state
        self.token = token.encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = _Req()
                while not req.done:
                    data = await asyncio.wait_for(reader.read(65536), 30)
                    if not data:
                        return
                    req.parser.feed_data(data)
                status, ctype, body = self.dispatch(req)
                if status == 202:  # hold: answer once writes already sent have finished
                    status, ctype, body = await self._drained(req)
                keep = req.parser.should_keep_alive()
                writer.write(b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n"
                             b"Connection: %b\r\n\r\n%b" % (
                                 status, _REASONS.get(status, b"OK"), ctype, len(body),
                                 b"keep-alive" if keep else b"close", body))
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, TimeoutError, httptools.HttpParserError, ValueError):
            return
        finally:
            writer.close()

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
        except ValueError as exc:
            return _json(400, {"error": f"bad JSON body: {exc}"})
        route = _ROUTES.get((method, path))
        if route is None:
            known = {p for _, p in _ROUTES}
            return _json(405 if path in known else 404, {"error": f"no route {method.decode()} "
                                                         f"{path}"})
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

    # -- routes ----------------------------------------------------------------------------

    def status(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        return self.state.status()

    def figures(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        window = float(query.get("window", ["60"])[0])
        if not 0 < window <= 3600:
            raise ValueError("window must be in (0, 3600] seconds")
        st = self.state.stats
        return Figures(window=window, blue=st["blue"].window(window),
                       green=st["green"].window(window), source="embedded").to_dict()

    def set_weight(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        self.state.set_weight(payload["weight"])
        return self.state.status()

    def set_sor(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        self.state.set_sor(payload["side"])
        return self.state.status()

    def hold(self, payload: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        wait = float(payload.get("wait", 10.0))
        if not 0 <= wait <= 300:
            raise ValueError("wait must be 0..300 seconds")
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
_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
            405: b"Method Not Allowed", 409: b"Conflict"}


def _json(status: int, payload: Any) -> tuple[int, bytes, bytes]:
    return status, b"application/json", json.dumps(payload).encode()
