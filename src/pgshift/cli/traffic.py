"""``pgshift traffic``: drive any router (embedded proxy, HAProxy) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pgshift.cli.output import out_console, print_json
from pgshift.errors import UsageError
from pgshift.traffic.factory import close, describe, open_router, parse_options
from pgshift.traffic.router import Router, WriteFence, WriteRouting

traffic_app = typer.Typer(
    help="Steer traffic between blue and green through a router: status, weight, system of "
         "record, write fence, and the HAProxy config. To send everything back to blue: "
         "`pgshift traffic set-weight 0` and `pgshift traffic set-system-of-record blue` "
         "(writes made on green do not flow back by themselves). Unreachable router: "
         "exit 2; a change the router refused: exit 6.",
    no_args_is_help=True,
)

RouterOpt = Annotated[str, typer.Option("--router", help="embedded, haproxy, alb or gateway.")]
OptionsOpt = Annotated[list[str] | None, typer.Option(
    "--router-option", help="KEY=VALUE for --router alb (listener, blue, green; region, "
                            "endpoint, write_rule) or gateway (api, namespace, route, blue, "
                            "green; token, prometheus, ca). Repeatable.")]
AdminOpt = Annotated[str, typer.Option("--admin-url", help="Embedded proxy's admin API.")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", help="Admin token or env:VAR (default $PGSHIFT_ADMIN_TOKEN).")]
SocketOpt = Annotated[str | None, typer.Option("--socket", help="HAProxy stats socket "
                                               "(admin level).")]
MapOpt = Annotated[str | None, typer.Option("--map-file", help="HAProxy map file the config "
                                            "names.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON on stdout.")]


def _open(router: str, admin_url: str, token: str | None, socket: str | None,
          map_file: str | None, options: list[str] | None = None) -> Router:
    return open_router(router, admin_url=admin_url, token=token, socket_path=socket,
                       map_file=map_file, options=parse_options(options or []))


def _report(r: Router, json_output: bool, window: float = 60.0) -> None:
    info = describe(r, window)
    if json_output:
        print_json(info)
        return
    con = out_console()
    line = f"green weight {info['weight']:g} %"
    if "system_of_record" in info:
        line += f", system of record {info['system_of_record']}"
    details = info.get("details") or {}
    fence = details.get("fence") if isinstance(details, dict) else None
    if fence:
        line += f", fence {'HELD' if fence['held'] else 'open'} ({fence['queued']} queued)"
    con.print(line)
    f = info["figures"]
    if f is None:
        con.print(f"  figures unavailable: {info['figures_unavailable']}")
    for side in ("blue", "green") if f else ():
        s = f[side]
        rate = "-" if s["error_rate"] is None else f"{s['error_rate']:.3%}"
        p = "-" if s["p99_ms"] is None else f"{s['p99_ms']:.1f} ms"
        con.print(f"  {side:5} {s['requests']:>8} requests in {f['window']:g}s, "
                  f"errors {rate}, p99 {p}")
    for w in details.get("warnings", []) if isinstance(details, dict) else []:
        con.print(f"  warning: {w}")


@traffic_app.command("status")
def status_command(router: RouterOpt = "embedded",
                   admin_url: AdminOpt = "http://127.0.0.1:9180", token: TokenOpt = None,
                   socket: SocketOpt = None, map_file: MapOpt = None,
                   router_option: OptionsOpt = None,
                   window: Annotated[float, typer.Option("--window", help="Seconds of "
                                                         "figures.")] = 60.0,
                   json_output: JsonOpt = False) -> None:
    """Weight, system of record, fence and per-backend figures.

    Examples:

    \b
      pgshift traffic status
      pgshift traffic status --window 300 --json
      pgshift traffic status --router haproxy --socket /run/haproxy/pgshift.sock \\
          --map-file /etc/haproxy/pgshift.map
    """
    r = _open(router, admin_url, token, socket, map_file, router_option)
    try:
        _report(r, json_output, window)
    finally:
        close(r)


@traffic_app.command("set-weight")
def set_weight_command(
        weight: Annotated[float, typer.Argument(help="Percent of clients on green, 0-100.",
                                                show_default=False)],
        router: RouterOpt = "embedded", admin_url: AdminOpt = "http://127.0.0.1:9180",
        token: TokenOpt = None, socket: SocketOpt = None, map_file: MapOpt = None,
        router_option: OptionsOpt = None, json_output: JsonOpt = False) -> None:
    """Send WEIGHT % of clients (a sticky cohort; raising it never moves one back) to green.

    Examples:

    \b
      pgshift traffic set-weight 5
      pgshift traffic set-weight 0 --admin-url http://127.0.0.1:9180 --token env:ADMIN_TOKEN
    """
    r = _open(router, admin_url, token, socket, map_file, router_option)
    try:
        r.set_weight(weight)
        _report(r, json_output)
    finally:
        close(r)


@traffic_app.command("set-system-of-record")
def set_sor_command(
        side: Annotated[str, typer.Argument(help="blue or green.", show_default=False)],
        router: RouterOpt = "embedded", admin_url: AdminOpt = "http://127.0.0.1:9180",
        token: TokenOpt = None, socket: SocketOpt = None, map_file: MapOpt = None,
        router_option: OptionsOpt = None, json_output: JsonOpt = False) -> None:
    """Send mutating requests to SIDE (the flip: hold the write fence around it).

    Example (the flip by hand, embedded proxy):

    \b
      pgshift traffic hold && pgshift traffic set-system-of-record green \\
          && pgshift traffic release
    """
    r = _open(router, admin_url, token, socket, map_file, router_option)
    try:
        if not isinstance(r, WriteRouting):
            raise UsageError(f"the {router} router does not route writes")
        r.set_system_of_record(side)  # type: ignore[arg-type]
        _report(r, json_output)
    finally:
        close(r)


def _fence(router: str, admin_url: str, token: str | None, json_output: bool,
           hold: bool) -> None:
    r = _open(router, admin_url, token, None, None) if router == "embedded" else None
    if r is None or not isinstance(r, WriteFence):
        raise UsageError(f"the {router} router cannot hold requests",
                         hint="use the embedded proxy (pgshift proxy) or a declared write "
                              "pause")
    try:
        r.hold() if hold else r.release()
        _report(r, json_output)
    finally:
        close(r)


@traffic_app.command("hold")
def hold_command(router: RouterOpt = "embedded", admin_url: AdminOpt = "http://127.0.0.1:9180",
                 token: TokenOpt = None, router_option: OptionsOpt = None,
                 json_output: JsonOpt = False) -> None:
    """Hold new mutating requests at the proxy (reads keep flowing).

    Returns once the writes already sent are answered (exit 6 if some are still in flight
    after 10 s; the fence stays held). Embedded proxy only.

    Example:

    \b
      pgshift traffic hold --admin-url http://127.0.0.1:9180
    """
    _fence(router, admin_url, token, json_output, hold=True)


@traffic_app.command("release")
def release_command(router: RouterOpt = "embedded",
                    admin_url: AdminOpt = "http://127.0.0.1:9180", token: TokenOpt = None,
                    router_option: OptionsOpt = None, json_output: JsonOpt = False) -> None:
    """Release held mutating requests to the system of record in effect.

    Example:

    \b
      pgshift traffic release --admin-url http://127.0.0.1:9180
    """
    _fence(router, admin_url, token, json_output, hold=False)


@traffic_app.command("haproxy-config")
def haproxy_config_command(
        blue: Annotated[str, typer.Option("--blue", help="Blue app http://host:port.",
                                          show_default=False)],
        green: Annotated[str, typer.Option("--green", help="Green app http://host:port.",
                                           show_default=False)],
        socket: Annotated[str, typer.Option("--socket", help="Stats socket path to declare.")
                          ] = "/run/haproxy/pgshift.sock",
        map_file: Annotated[str, typer.Option("--map-file", help="Map file with the green "
                                              "threshold and system of record.")]
        = "/etc/haproxy/pgshift.map",
        listen: Annotated[str, typer.Option("--listen", help="Frontend bind address.")]
        = "0.0.0.0:80",
        cohort_header: Annotated[str | None, typer.Option(
            "--cohort-header", help="Hash this request header (e.g. X-User-Id) for cohorts "
            "instead of the proxy's cookie.")] = None,
        write_path: Annotated[list[str] | None, typer.Option(
            "--write-path", help="Path glob whose requests are writes whatever the method "
            "(repeatable).")] = None,
        health_path: Annotated[str | None, typer.Option(
            "--health-path", help="Active health check path on each backend.")] = None,
        threads: Annotated[int, typer.Option("--threads", help="HAProxy nbthread.")] = 1,
        header_timeout: Annotated[float, typer.Option(
            "--header-timeout", help="Seconds a client has to send a request head "
            "(timeout http-request).")] = 30.0,
        trusted_proxy: Annotated[list[str] | None, typer.Option(
            "--trusted-proxy", help="Address or CIDR whose X-Forwarded-For/-Proto are kept "
            "(repeatable); overwritten for others.")] = None,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the config "
                                                    "here (and the map next to --map-file).")]
        = None,
) -> None:
    """Print the haproxy.cfg the HAProxy router drives (monotone cohorts via a map).

      pgshift traffic haproxy-config --blue http://10.0.0.5:8000 \\
          --green http://10.0.0.6:8000 -o /etc/haproxy/haproxy.cfg
    """
    from pgshift.traffic.haproxy import render_config, settings_from_cli, write_map

    s = settings_from_cli(blue=blue, green=green, listen=listen, socket_path=socket,
                          map_file=map_file, cohort_header=cohort_header,
                          write_paths=tuple(write_path or ()), health_path=health_path,
                          threads=threads, header_timeout=header_timeout,
                          trusted_proxies=tuple(trusted_proxy or ()))
    text = render_config(s)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    if not s.map_file.exists():
        write_map(s.map_file, 0, "blue")
