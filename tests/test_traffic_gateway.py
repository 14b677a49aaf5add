"""The Gateway API router against a fake Kubernetes API server (and a fake Prometheus): the
requests it sends and the route they leave. Verified against a fake only."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pgshift.errors import UsageError
from pgshift.traffic.gateway import GatewayError, GatewayRouter
from pgshift.traffic.router import Router, WriteFence, WriteRouting

PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/app"
ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "app", "namespace": "shop", "resourceVersion": "1"},
    "spec": {"parentRefs": [{"name": "gw"}], "rules": [
        {"matches": [{"method": m} for m in ("POST", "PUT", "PATCH", "DELETE")],
         "backendRefs": [{"name": "app-blue", "port": 8000}]},
        {"backendRefs": [{"name": "app-blue", "port": 8000, "weight": 1},
                         {"name": "app-green", "port": 8000, "weight": 0}]},
    ]},
}


def _pointer(doc: Any, path: str) -> tuple[Any, str]:
    parts = path.lstrip("/").split("/")
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc, parts[-1]


class FakeApi:
    """Enough of the Kubernetes API (GET + JSON patch on one HTTPRoute) and of Prometheus."""

    def __init__(self) -> None:
        self.route = copy.deepcopy(ROUTE)
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.prom: dict[str, float] = {}
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _reply(self, code: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                api.requests.append(("GET", self.path, dict(self.headers), None))
                if self.path.startswith("/api/v1/query"):
                    from urllib.parse import parse_qs, urlsplit

                    q = parse_qs(urlsplit(self.path).query)["query"][0]
                    value = next((v for k, v in api.prom.items() if k in q), None)
                    result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
                    return self._reply(200, {"status": "success",
                                             "data": {"resultType": "vector",
                                                      "result": result}})
                if self.path != PATH:
                    return self._reply(404, {"kind": "Status", "code": 404})
                return self._reply(200, api.route)

            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append(("PATCH", self.path, dict(self.headers), body))
                if self.headers["Content-Type"] != "application/json-patch+json":
                    return self._reply(415, {"code": 415})
                doc = copy.deepcopy(api.route)
                for op in body:
                    parent, key = _pointer(doc, op["path"])
                    if op["op"] == "test":
                        if parent[key] != op["value"]:
                            return self._reply(422, {"code": 422, "message": "test failed"})
                    elif isinstance(parent, list):
                        parent[int(key)] = op["value"]
                    else:
                        parent[key] = op["value"]
                doc["metadata"]["resourceVersion"] = str(
                    int(doc["metadata"]["resourceVersion"]) + 1)
                api.route = doc
                return self._reply(200, doc)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def weights(self) -> dict[str, int]:
        return {r["name"]: r["weight"] for r in self.route["spec"]["rules"][1]["backendRefs"]}


@pytest.fixture
def api() -> Iterator[FakeApi]:
    a = FakeApi()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def router(api: FakeApi) -> Iterator[GatewayRouter]:
    with GatewayRouter(api.url, "shop", "app", "app-blue", "app-green", token="k8s-token",
                       prometheus_url=api.url) as r:
        yield r


def test_capabilities(router: GatewayRouter) -> None:
    assert isinstance(router, Router) and isinstance(router, WriteRouting)
    assert not isinstance(router, WriteFence)


def test_set_weight_sends_a_guarded_json_patch(router: GatewayRouter, api: FakeApi) -> None:
    router.set_weight(12.5)
    method, path, headers, body = api.requests[-1]
    assert (method, path) == ("PATCH", PATH)
    assert headers["Authorization"] == "Bearer k8s-token"
    assert body[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "1"}
    assert body[1:] == [{"op": "add", "path": "/spec/rules/1/backendRefs/0/weight",
                         "value": 8750},
                        {"op": "add", "path": "/spec/rules/1/backendRefs/1/weight",
                         "value": 1250}]
    assert api.weights() == {"app-blue": 8750, "app-green": 1250}
    assert router.weight() == 12.5
    with pytest.raises(UsageError):
        router.set_weight(150)


def test_concurrent_edit_fails_loudly(router: GatewayRouter, api: FakeApi) -> None:
    original = router._route

    def stale() -> dict[str, Any]:
        route = original()
        api.route["metadata"]["resourceVersion"] = "99"  # someone else edited meanwhile
        return route

    router._route = stale  # type: ignore[method-assign]
    with pytest.raises(GatewayError, match="HTTP 422"):
        router.set_weight(50)


def test_write_rule_and_drain(router: GatewayRouter, api: FakeApi) -> None:
    assert router.system_of_record() == "blue"
    router.set_weight(100)
    router.set_system_of_record("green")
    assert api.route["spec"]["rules"][0]["backendRefs"] == [{"name": "app-green", "port": 8000}]
    assert router.system_of_record() == "green"
    router.drain_to_blue()
    assert api.weights() == {"app-blue": 1, "app-green": 0}
    assert router.system_of_record() == "blue" and router.weight() == 0


def test_figures_from_prometheus(router: GatewayRouter, api: FakeApi) -> None:
    api.prom = {'app-green.*",envoy_response_code_class="5"': 4,
                'app-green.*",envoy_response_code_class="2"': 96,
                'upstream_rq_total{envoy_cluster_name=~".*app-green': 100,
                'upstream_rq_time_sum{envoy_cluster_name=~".*app-green': 12.0,
                'upstream_rq_total{envoy_cluster_name=~".*app-blue': 50,
                'app-blue.*",envoy_response_code_class="2"': 50}
    f = router.figures(120)
    assert (f.green.requests, f.green.errors, f.green.status["2xx"]) == (100, 4, 96)
    assert f.blue.requests == 50 and f.blue.errors == 0
    assert f.green.mean_ms == 12.0 and f.source == "gateway-prometheus"
    queries = [p for m, p, *_ in api.requests if p.startswith("/api/v1/query")]
    assert any("%5B120s%5D" in q or "[120s]" in q for q in queries)


def test_missing_route_is_a_clear_error(api: FakeApi) -> None:
    with GatewayRouter(api.url, "shop", "nope", "a", "b") as r, \
            pytest.raises(GatewayError, match="HTTP 404"):
        r.weight()


def test_route_without_both_services(api: FakeApi) -> None:
    with GatewayRouter(api.url, "shop", "app", "app-blue", "other") as r, \
            pytest.raises(GatewayError, match="no rule with both"):
        r.weight()


def test_cli_drives_the_gateway_router(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    from pgshift.cli.main import main

    opts = ["--router", "gateway"] + [x for kv in (
        f"api={api.url}", "namespace=shop", "route=app", "blue=app-blue", "green=app-green")
        for x in ("--router-option", kv)]
    assert main(["traffic", "set-weight", "25", *opts]) == 0
    assert api.weights() == {"app-blue": 7500, "app-green": 2500}
    out = capsys.readouterr().out
    assert "green weight 25 %" in out and "figures unavailable" in out
    assert main(["traffic", "status", "--json", *opts]) == 0
    assert '"system_of_record": "blue"' in capsys.readouterr().out
    assert main(["traffic", "status", "--router", "gateway",
                 "--router-option", "api=http://x"]) == 2
    assert "missing namespace, route, blue, green" in capsys.readouterr().err
    assert main(["traffic", "hold", *opts]) == 2
    assert "cannot hold" in capsys.readouterr().err
