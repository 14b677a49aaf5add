"""Kubernetes Gateway API router: weights on an ``HTTPRoute``'s ``backendRefs``.

Verified against a fake API server only (the tests check the requests it sends).

- Weight: the route's rule(s) that reference both the blue and the green Service get
  ``weight`` = green x 100 and blue = 10000 - that (Gateway API weights are relative
  integers). Changes are JSON patches guarded by a ``test`` of ``resourceVersion``, so
  a concurrent edit fails loudly instead of being overwritten.
- Cohorts: the Gateway API has no hash cohorts; stickiness depends on the implementation
  (``sessionPersistence`` is experimental). Not sticky, not monotone: prefer the
  embedded proxy when that matters.
- Writes: a rule whose matches all carry a ``method`` is the write rule;
  ``set_system_of_record`` points its ``backendRefs`` at the system of record's Service.
- Figures: PromQL queries with ``{service}`` and ``{window}`` placeholders
  (``PromQueries``), answered by the Prometheus HTTP API; latency is a mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from pgshift.errors import UsageError
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

GROUP = "gateway.networking.k8s.io"
TOTAL = 10_000


class GatewayError(RouterError):
    """The Kubernetes or Prometheus API refused a call (exit 6)."""


class GatewayUnreachable(GatewayError, RouterUnreachable):
    """The Kubernetes API cannot be reached (exit 2)."""


@dataclass(frozen=True)
class PromQueries:
    """PromQL per figure; ``{service}`` and ``{window}`` (seconds) are substituted.
    Defaults fit Envoy Gateway's cluster metrics; override for other implementations."""

    requests: str = ('sum(increase(envoy_cluster_upstream_rq_total{{envoy_cluster_name=~'
                     '".*{service}.*"}}[{window}s]))')
    by_class: str = ('sum(increase(envoy_cluster_upstream_rq_xx{{envoy_cluster_name=~'
                     '".*{service}.*",envoy_response_code_class="{digit}"}}[{window}s]))')
    connection_errors: str = ('sum(increase(envoy_cluster_upstream_cx_connect_fail{{'
                              'envoy_cluster_name=~".*{service}.*"}}[{window}s]))')
    mean_ms: str = ('sum(rate(envoy_cluster_upstream_rq_time_sum{{envoy_cluster_name=~'
                    '".*{service}.*"}}[{window}s])) / sum(rate(envoy_cluster_upstream_rq_time_'
                    'count{{envoy_cluster_name=~".*{service}.*"}}[{window}s]))')


class GatewayRouter:
    """``Router`` + ``WriteRouting`` over the Kubernetes API (``HTTPRoute``) and Prometheus."""

    def __init__(self, api_url: str, namespace: str, route: str, blue_service: str,
                 green_service: str, *, token: str | None = None,
                 prometheus_url: str | None = None, queries: PromQueries | None = None,
                 verify: bool | str = True, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.k8s = httpx.Client(base_url=api_url, headers=headers, verify=verify,
                                timeout=timeout)
        self.prom = httpx.Client(base_url=prometheus_url, timeout=timeout) \
            if prometheus_url else None
        self.path = f"/apis/{GROUP}/v1/namespaces/{namespace}/httproutes/{route}"
        self.svc = {"blue": blue_service, "green": green_service}
        self.queries = queries or PromQueries()

    def close(self) -> None:
        self.k8s.close()
        if self.prom is not None:
            self.prom.close()

    def __enter__(self) -> GatewayRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API plumbing ----------------------------------------------------------------------

    def _route(self) -> dict[str, Any]:
        try:
            resp = self.k8s.get(self.path)
        except httpx.HTTPError as exc:
            raise GatewayUnreachable(f"Kubernetes API unreachable: {exc}",
                                     hint="check --router-option api=URL") from exc
        if resp.status_code != 200:
            raise GatewayError(f"GET {self.path}: HTTP {resp.status_code}: {resp.text[:200]}",
                               hint="check the namespace, the route name and RBAC")
        route: dict[str, Any] = resp.json()
        return route

    def _patch(self, route: dict[str, Any], ops: list[dict[str, Any]]) -> None:
        rv = route["metadata"]["resourceVersion"]
        body = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, *ops]
        try:
            resp = self.k8s.patch(self.path, json=body,
                                  headers={"Content-Type": "application/json-patch+json"})
        except httpx.HTTPError as exc:
            raise GatewayUnreachable(f"Kubernetes API unreachable: {exc}",
                                     hint="check --router-option api=URL") from exc
        if resp.status_code != 200:
            raise GatewayError(f"PATCH {self.path}: HTTP {resp.status_code}: "
                               f"{resp.text[:200]}",
                               hint="someone else changed the route; retry")

    def _split_rules(self, route: dict[str, Any]) -> list[tuple[int, dict[str, int]]]:
        """(rule index, {side: backendRef index}) for rules that reference both Services."""
        out = []
        for i, rule in enumerate(route["spec"].get("rules", [])):
            refs = {ref.get("name"): j for j, ref in enumerate(rule.get("backendRefs", []))}
            if all(self.svc[s] in refs for s in ("blue", "green")):
                out.append((i, {s: refs[self.svc[s]] for s in ("blue", "green")}))
        if not out:
            raise GatewayError(f"HTTPRoute {self.path} has no rule with both "
                               f"{self.svc['blue']} and {self.svc['green']} in backendRefs",
                               hint="add both Services to the route's backendRefs")
        return out

    def _write_rule(self, route: dict[str, Any]) -> int:
        for i, rule in enumerate(route["spec"].get("rules", [])):
            matches = rule.get("matches") or []
            if matches and all("method" in m for m in matches):
                return i
        raise UsageError(f"HTTPRoute {self.path} has no write rule (matches by method)",
                         hint="add a rule matching POST/PUT/PATCH/DELETE to the route")

    # -- Router ----------------------------------------------------------------------------

    def set_weight(self, pct: float) -> None:
        green = round(check_weight(pct) * TOTAL / 100)
        self._set_weights(TOTAL - green, green)

    def _set_weights(self, blue: int, green: int) -> None:
        route = self._route()
        ops = []
        for i, refs in self._split_rules(route):
            for side, weight in (("blue", blue), ("green", green)):
                ops.append({"op": "add", "path": f"/spec/rules/{i}/backendRefs/{refs[side]}"
                                                 "/weight", "value": weight})
        self._patch(route, ops)

    def weight(self) -> float:
        route = self._route()
        i, refs = self._split_rules(route)[0]
        backend_refs = route["spec"]["rules"][i]["backendRefs"]
        blue = int(backend_refs[refs["blue"]].get("weight", 1))
        green = int(backend_refs[refs["green"]].get("weight", 1))
        return round(100.0 * green / (blue + green), 2) if blue + green else 0.0

    def drain_to_blue(self) -> None:
        self._set_weights(1, 0)
        route = self._route()
        try:
            self._write_rule(route)
        except UsageError:
            return
        self.set_system_of_record("blue")

    def figures(self, window: float) -> Figures:
        if self.prom is None:
            raise UsageError("figures need a Prometheus URL", hint="--prometheus-url URL")
        w = max(int(window), 60)
        sides = {side: self._figures(svc, w) for side, svc in self.svc.items()}
        return Figures(window=float(w), blue=sides["blue"], green=sides["green"], lag=30.0,
                       source="gateway-prometheus")

    def _query(self, template: str, **kw: Any) -> float:
        assert self.prom is not None
        q = template.format(**kw)
        try:
            resp = self.prom.get("/api/v1/query", params={"query": q})
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise GatewayError(f"Prometheus query failed: {exc}", operation=q) from exc
        if data.get("status") != "success":
            raise GatewayError(f"Prometheus: {data.get('error', data)}", operation=q)
        result = data["data"]["result"]
        if not result:
            return 0.0
        value = float(result[0]["value"][1])
        return 0.0 if value != value else value  # NaN (0/0) -> 0

    def _figures(self, service: str, window: int) -> BackendFigures:
        q = self.queries
        status = {cls: round(self._query(q.by_class, service=service, window=window,
                                         digit=cls[0]))
                  for cls in STATUS_CLASSES}
        conn = round(self._query(q.connection_errors, service=service, window=window))
        requests = round(self._query(q.requests, service=service, window=window))
        mean = self._query(q.mean_ms, service=service, window=window)
        return BackendFigures(requests=max(requests, sum(status.values()) + conn),
                              status=status, connection_errors=conn, mean_ms=mean or None)

    # -- WriteRouting ------------------------------------------------------------------------

    def system_of_record(self) -> Side:
        route = self._route()
        rule = route["spec"]["rules"][self._write_rule(route)]
        names = {ref.get("name") for ref in rule.get("backendRefs", [])}
        for side, svc in self.svc.items():
            if names == {svc}:
                return check_side(side)
        raise GatewayError(f"the write rule of {self.path} points at {sorted(names)}, "
                           "not at exactly one of blue/green")

    def set_system_of_record(self, side: Side) -> None:
        side = check_side(side)
        route = self._route()
        i = self._write_rule(route)
        refs = route["spec"]["rules"][i].get("backendRefs") or [{}]
        ref = {**refs[0], "name": self.svc[side]}
        ref.pop("weight", None)
        self._patch(route, [{"op": "replace", "path": f"/spec/rules/{i}/backendRefs",
                             "value": [ref]}])
