"""Open a router by name from CLI-style options (``pgshift traffic --router ...``)."""

from __future__ import annotations

import os
from typing import Any

from pgshift.errors import UsageError
from pgshift.traffic.router import Router, WriteFence, WriteRouting

ROUTERS = ("embedded", "haproxy", "alb", "gateway")
# --router-option KEY=VALUE keys each cloud router needs (and may take)
ROUTER_OPTIONS = {
    "alb": (("listener", "blue", "green"), ("region", "endpoint", "write_rule")),
    "gateway": (("api", "namespace", "route", "blue", "green"),
                ("token", "prometheus", "ca")),
}


def parse_options(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["k=v", ...]`` -> dict; ``UsageError`` on a pair without ``=``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--router-option {pair!r} is not KEY=VALUE",
                             hint="--router-option listener=arn:aws:elasticloadbalancing:...")
        out[key.strip()] = value.strip()
    return out


def _check_options(kind: str, options: dict[str, str]) -> None:
    required, optional = ROUTER_OPTIONS[kind]
    missing = [k for k in required if not options.get(k)]
    unknown = sorted(set(options) - set(required) - set(optional))
    if missing or unknown:
        what = (f"missing {', '.join(missing)}" if missing else "") + \
            ("; " if missing and unknown else "") + \
            (f"unknown {', '.join(unknown)}" if unknown else "")
        raise UsageError(f"--router {kind}: {what} (--router-option KEY=VALUE)",
                         hint=f"keys: {', '.join(required)} (required), "
                              f"{', '.join(optional)} (optional)")
TOKEN_ENV = "PGSHIFT_ADMIN_TOKEN"


def open_router(kind: str, *, admin_url: str = "http://127.0.0.1:9180",
                token: str | None = None, socket_path: str | None = None,
                map_file: str | None = None, options: dict[str, str] | None = None) -> Router:
    """The router ``kind`` names; ``UsageError`` when its options are missing."""
    options = dict(options or {})
    if kind == "alb":
        _check_options(kind, options)
        from pgshift.traffic.alb import AlbRouter

        return AlbRouter(options["listener"], options["blue"], options["green"],
                         write_rule_arn=options.get("write_rule"),
                         region=options.get("region"), endpoint_url=options.get("endpoint"))
    if kind == "gateway":
        _check_options(kind, options)
        from pgshift.traffic.gateway import GatewayRouter
        from pgshift.traffic.proxy.config import resolve_token

        return GatewayRouter(options["api"], options["namespace"], options["route"],
                             options["blue"], options["green"],
                             token=resolve_token(options["token"]) if options.get("token")
                             else None,
                             prometheus_url=options.get("prometheus"),
                             verify=options.get("ca") or True)
    if options:
        raise UsageError(f"--router {kind} takes no --router-option",
                         hint="--router-option is for --router alb|gateway")
    if kind == "embedded":
        from pgshift.traffic.embedded import EmbeddedRouter
        from pgshift.traffic.proxy.config import resolve_token

        resolved = resolve_token(token) if token else os.environ.get(TOKEN_ENV)
        if not resolved:
            raise UsageError("the embedded proxy's admin token is needed",
                             hint=f"export {TOKEN_ENV}=... or pass --token env:VAR")
        return EmbeddedRouter(admin_url, resolved)
    if kind == "haproxy":
        from pgshift.traffic.haproxy import HAProxyRouter

        if not socket_path or not map_file:
            raise UsageError("--router haproxy needs --socket and --map-file",
                             hint="pgshift traffic status --router haproxy "
                                  "--socket /run/haproxy/pgshift.sock "
                                  "--map-file /etc/haproxy/pgshift.map")
        return HAProxyRouter(socket_path, map_file)
    raise UsageError(f"unknown router {kind!r} (known: {', '.join(ROUTERS)})",
                     hint="--router embedded")


def describe(router: Router, window: float = 60.0) -> dict[str, Any]:
    """Weight, system of record, fence support and figures: what ``traffic status`` shows."""
    out: dict[str, Any] = {"router": type(router).__name__, "weight": router.weight(),
                           "write_routing": isinstance(router, WriteRouting),
                           "write_fence": isinstance(router, WriteFence)}
    if isinstance(router, WriteRouting):
        try:
            out["system_of_record"] = router.system_of_record()
        except UsageError as exc:  # e.g. an ALB listener without a write rule
            out["write_routing"] = False
            out["write_routing_unavailable"] = exc.message
    status = getattr(router, "status", None)
    if callable(status):
        out["details"] = status()
    try:
        out["figures"] = router.figures(window).to_dict()
    except UsageError as exc:  # e.g. the Gateway router without a Prometheus URL
        out["figures"] = None
        out["figures_unavailable"] = exc.message
    return out


def close(router: Router) -> None:
    closer = getattr(router, "close", None)
    if callable(closer):
        closer()
