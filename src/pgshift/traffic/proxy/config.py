"""The embedded proxy's settings, validated once so bad input fails before anything listens."""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pgshift.errors import UsageError
from pgshift.traffic.proxy import paths
from pgshift.traffic.router import check_weight

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

READ_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


@dataclass(frozen=True)
class Backend:
    """One application server the proxy forwards to (``http://host:port``, no path)."""

    name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_backend(name: str, url: str) -> Backend:
    """``http://host:port`` -> Backend; anything else is a ``UsageError`` naming the option."""
    hint = f"--{name} http://127.0.0.1:8001"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"--{name}: {url!r} is not a valid URL ({exc})", hint=hint) from exc
    if parts.scheme != "http":
        what = "https backends are not supported" if parts.scheme == "https" else \
            "expected http://host:port"
        raise UsageError(f"--{name}: {url!r}: {what}", hint=hint)
    if not parts.hostname:
        raise UsageError(f"--{name}: {url!r} has no host", hint=hint)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise UsageError(f"--{name}: {url!r}: give only scheme, host and port "
                         "(no path, query or credentials)", hint=hint)
    return Backend(name, parts.hostname, port or 80)


def parse_listen(option: str, value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``, ``:port`` = all interfaces) -> (host, port)."""
    m = re.fullmatch(r"\[?(?P<host>[^\[\]]*?)\]?:(?P<port>\d{1,5})", value.strip())
    if not m or not 0 <= int(m["port"]) <= 65535:
        raise UsageError(f"{option}: {value!r} is not host:port", hint=f"{option} 127.0.0.1:8080")
    return (m["host"] or "0.0.0.0"), int(m["port"])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(value: str | None) -> str | None:
    """``env:VAR`` -> the variable's value; a literal token as is; ``None`` stays ``None``."""
    if value is None:
        return None
    if value.startswith("env:"):
        var = value[4:]
        token = os.environ.get(var, "")
        if not token:
            raise UsageError(f"--token: environment variable {var} is empty or unset",
                             hint=f"export {var}=$(openssl rand -hex 16)")
        return token
    if not value:
        raise UsageError("--token is empty", hint="--token env:PGSHIFT_ADMIN_TOKEN")
    return value


def check_number(option: str, value: object, *, minimum: float, integer: bool = False,
                 strict: bool = False, example: str) -> None:
    """``UsageError`` naming ``option`` unless ``value`` is a finite number >= ``minimum``
    (> with ``strict``); booleans are not numbers here."""
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if ok:
        assert isinstance(value, (int, float))
        ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f"above {minimum:g}" if strict else f"at least {minimum:g}"
        raise UsageError(f"{option} must be {kind} {bound}, got {value!r}",
                         hint=f"{option} {example}")


@dataclass(frozen=True)
class HealthCheck:
    """Active check: ``GET path`` every ``interval`` s; ``rise`` successes bring a backend up,
    ``fall`` failures take it down. ``path=None`` disables active checks."""

    path: str | None = None
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3

    def __post_init__(self) -> None:
        check_number("--health-interval", self.interval, minimum=0, strict=True, example="1")
        check_number("--health-timeout", self.timeout, minimum=0, strict=True, example="1")
        check_number("--rise", self.rise, minimum=1, integer=True, example="2")
        check_number("--fall", self.fall, minimum=1, integer=True, example="3")


@dataclass(frozen=True)
class ProxyConfig:
    """Everything ``pgshift proxy`` is told.

    ``eject_after``: consecutive connection errors or 5xx answers that eject a backend
    (passive check); without an active check it is retried after ``eject_seconds``.
    ``fence_timeout``: how long a held write waits before it is answered 503 with
    ``Retry-After`` (never forwarded to a side mid-flip).
    ``header_timeout``: a request head must be complete this many seconds after its first
    byte (or after the connection opened); else 408 and close (nginx's
    ``client_header_timeout``, HAProxy's ``timeout http-request``).
    ``max_connections``: open client connections; past it a new one gets 503 and is closed.
    ``max_header_size``: bytes of request line plus headers; past it 431 and close.
    ``trusted_proxies``: peers whose ``X-Forwarded-For``/``-Proto`` are kept (appended to);
    from anyone else they are overwritten.
    """

    blue: Backend
    green: Backend
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    admin: tuple[str, int] = ("127.0.0.1", 9180)
    token: str = ""
    cohort_header: str | None = None
    write_paths: tuple[str, ...] = ()
    health: HealthCheck = field(default_factory=HealthCheck)
    eject_after: int = 5
    eject_seconds: float = 5.0
    connect_timeout: float = 3.0
    read_timeout: float = 60.0
    idle_timeout: float = 4.0  # below uvicorn's 5 s keep-alive, so a pooled socket is rarely stale
    fence_timeout: float = 30.0
    max_idle_per_backend: int = 256
    weight: float = 0.0
    system_of_record: str = "blue"
    header_timeout: float = 30.0
    max_connections: int = 4096
    max_header_size: int = 16 * 1024  # HAProxy's tune.bufsize; nginx allows 4 x 8 KiB lines
    trusted_proxies: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        try:
            check_weight(self.weight, hint="--weight 25")
        except UsageError as exc:
            raise UsageError(f"--weight: {exc.message}", hint=exc.hint) from None
        for option, value, example in (
                ("--fence-timeout", self.fence_timeout, "30"),
                ("--header-timeout", self.header_timeout, "30"),
                ("--connect-timeout", self.connect_timeout, "3"),
                ("--read-timeout", self.read_timeout, "60"),
                ("--idle-timeout", self.idle_timeout, "4"),
                ("--eject-seconds", self.eject_seconds, "5")):
            check_number(option, value, minimum=0, strict=True, example=example)
        check_number("--eject-after", self.eject_after, minimum=1, integer=True, example="5")
        check_number("--max-connections", self.max_connections, minimum=1, integer=True,
                     example="4096")
        check_number("--max-header-size", self.max_header_size, minimum=1024, integer=True,
                     example="16384")
        if self.max_header_size > 1 << 20:
            raise UsageError(f"--max-header-size {self.max_header_size} is above 1 MiB",
                             hint="--max-header-size 16384")
        for glob in self.write_paths:
            if not glob.startswith("/"):
                raise UsageError(f"--write-path must start with '/', got {glob!r}",
                                 hint="--write-path '/api/*/claim'")

    def is_write(self, method: bytes, path: str) -> bool:
        """Mutating method, or a path matching a configured ``--write-path`` glob (both
        in normal form, ``pgshift.traffic.proxy.paths``)."""
        return self.is_write_target(method, path.encode("latin-1"))

    def is_write_target(self, method: bytes, target: bytes) -> bool:
        """``is_write`` for a raw request target (``paths.BadTarget`` if it is none)."""
        if method not in READ_METHODS:
            return True
        if not self.write_paths:
            return False
        return self.write_regex.match(paths.normal_path(target)) is not None

    @functools.cached_property
    def write_regex(self) -> re.Pattern[str]:
        """``write_paths`` compiled once (``paths.compile_globs``)."""
        return paths.compile_globs(self.write_paths)

    def trusts(self, ip: str) -> bool:
        """Whether ``ip`` is a trusted proxy (its forwarding headers are kept)."""
        if not self.trusted_proxies:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_proxies)


def parse_networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    """``--trusted-proxy`` values (addresses or CIDR blocks) -> networks."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as exc:
            raise UsageError(f"--trusted-proxy: {v!r} is not an address or CIDR block",
                             hint="--trusted-proxy 10.0.0.0/8") from exc
    return tuple(out)


def make_config(*, blue: str, green: str, listen: str = "127.0.0.1:8080",
                admin: str = "127.0.0.1:9180", token: str | None = None,
                cohort_header: str | None = None, write_paths: tuple[str, ...] = (),
                health_path: str | None = None, trusted_proxies: tuple[str, ...] = (),
                **kw: object) -> ProxyConfig:
    """Validate user-facing strings into a ``ProxyConfig`` (``UsageError`` on bad input)."""
    b, g = parse_backend("blue", blue), parse_backend("green", green)
    if (b.host, b.port) == (g.host, g.port):
        raise UsageError(f"--blue and --green are the same server ({b.url})",
                         hint="give green its own port, e.g. --green http://127.0.0.1:8002")
    admin_addr = parse_listen("--admin", admin)
    resolved = resolve_token(token)
    if resolved is None and not is_loopback(admin_addr[0]):
        raise UsageError(f"--admin {admin} listens beyond localhost: a --token is required",
                         hint="--token env:PGSHIFT_ADMIN_TOKEN")
    if health_path is not None and not health_path.startswith("/"):
        raise UsageError(f"--health-path must start with '/', got {health_path!r}",
                         hint="--health-path /health")
    health = HealthCheck(path=health_path, **{k: kw.pop(k) for k in  # type: ignore[arg-type]
                                              ("interval", "timeout", "rise", "fall")
                                              if k in kw})
    return ProxyConfig(blue=b, green=g, listen=parse_listen("--listen", listen),
                       admin=admin_addr, token=resolved or os.urandom(16).hex(),
                       cohort_header=cohort_header.lower() if cohort_header else None,
                       write_paths=tuple(write_paths), health=health,
                       trusted_proxies=parse_networks(tuple(trusted_proxies)),
                       **kw)  # type: ignore[arg-type]
