"""``pgshift proxy``: the embedded reverse proxy in the foreground."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from pgshift.traffic.factory import TOKEN_ENV


def proxy_command(
    blue: Annotated[str, typer.Option("--blue", help="Blue (current, SQLite) app: "
                                      "http://host:port.", show_default=False)],
    green: Annotated[str, typer.Option("--green", help="Green (PostgreSQL) app: "
                                       "http://host:port.", show_default=False)],
    listen: Annotated[str, typer.Option("--listen", help="Where clients connect (host:port).")
                      ] = "127.0.0.1:8080",
    admin: Annotated[str, typer.Option("--admin", help="Admin API address (host:port); keep it "
                                       "on localhost.")] = "127.0.0.1:9180",
    token: Annotated[str | None, typer.Option(
        "--token", help=f"Admin API bearer token, or env:VAR. Default: ${TOKEN_ENV}; without "
                        "it a random token is generated and printed once.")] = None,
    cohort_header: Annotated[str | None, typer.Option(
        "--cohort-header", help="Take each client's cohort key from this header (e.g. "
                                "X-User-Id) instead of the pgshift_cohort cookie.")] = None,
    write_path: Annotated[list[str] | None, typer.Option(
        "--write-path", help="Path glob whose requests are writes even when they are GETs "
                             "(repeatable), e.g. '/api/*/claim'.")] = None,
    health_path: Annotated[str | None, typer.Option(
        "--health-path", help="Active health check path (GET, 2xx/3xx = healthy).")] = None,
    health_interval: Annotated[float, typer.Option("--health-interval", help="Seconds between "
                                                   "checks.")] = 1.0,
    rise: Annotated[int, typer.Option("--rise", help="Passing checks that bring a backend "
                                      "up.")] = 2,
    fall: Annotated[int, typer.Option("--fall", help="Failing checks that take a backend "
                                      "down.")] = 3,
    eject_after: Annotated[int, typer.Option(
        "--eject-after", help="Consecutive connection errors or 5xx that eject a backend.")] = 5,
    fence_timeout: Annotated[float, typer.Option(
        "--fence-timeout", help="Seconds a held write waits before a 503 Retry-After.")] = 30.0,
    weight: Annotated[float, typer.Option("--weight", help="Initial green weight, percent.")
                      ] = 0.0,
    header_timeout: Annotated[float, typer.Option(
        "--header-timeout", help="Seconds a client has to send a whole request head (else "
                                 "408 and close).")] = 30.0,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", help="Open client connections at most (lowered to fit the "
                                  "descriptor limit); more get 503.")] = 4096,
    max_header_size: Annotated[int, typer.Option(
        "--max-header-size", help="Bytes of request line plus headers at most (data and "
                                  "admin ports); more get 431.")] = 16384,
    trusted_proxy: Annotated[list[str] | None, typer.Option(
        "--trusted-proxy", help="Address or CIDR of a proxy in front whose X-Forwarded-For/"
                                "-Proto are kept (repeatable); from others they are "
                                "overwritten.")] = None,
) -> None:
    """Run the embedded reverse proxy: weighted sticky cohorts, write routing, write fence.

    Reads go to green for a stable, monotone cohort of clients (weight in percent);
    mutating requests go to the system of record (blue until the flip). Drive it with
    `pgshift traffic ... --router embedded` or its admin API. Logs one JSON line per
    event on stderr. Stops on Ctrl-C / SIGTERM.

    Examples:

      pgshift proxy --blue http://127.0.0.1:8001 --green http://127.0.0.1:8002

      PGSHIFT_ADMIN_TOKEN=s3cret pgshift proxy --listen 0.0.0.0:80 \\
          --blue http://10.0.0.5:8000 --green http://10.0.0.6:8000 --health-path /health
    """
    from pgshift.traffic.proxy import make_config, run_foreground

    given = token or (f"env:{TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else None)
    cfg = make_config(blue=blue, green=green, listen=listen, admin=admin, token=given,
                      cohort_header=cohort_header, write_paths=tuple(write_path or ()),
                      health_path=health_path, interval=health_interval, rise=rise, fall=fall,
                      eject_after=eject_after, fence_timeout=fence_timeout, weight=weight,
                      header_timeout=header_timeout, max_connections=max_connections,
                      max_header_size=max_header_size,
                      trusted_proxies=tuple(trusted_proxy or ()))

    def ready(p: object) -> None:
        from pgshift.traffic.proxy import Proxy

        assert isinstance(p, Proxy)
        print(f"pgshift proxy: http://{cfg.listen[0]}:{p.listen_port} -> blue {cfg.blue.url}, "
              f"green {cfg.green.url} (green {cfg.weight:g} %); admin "
              f"http://{cfg.admin[0]}:{p.admin_port}", file=sys.stderr, flush=True)
        if given is None:
            print(f"admin token (generated): {cfg.token}  -- export {TOKEN_ENV}=<it> for "
                  "`pgshift traffic`", file=sys.stderr, flush=True)

    run_foreground(cfg, ready)
