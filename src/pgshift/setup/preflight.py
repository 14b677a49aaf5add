"""``pgshift preflight``: everything checkable before touching production, read-only.

Each check is one line (pass / warn / fail / skip) with the reason and a hint; the run
fails (exit 1) when any check fails. Nothing is written: the source is opened
read-only, PostgreSQL only answers catalog queries, prerequisite commands are listed,
not run (the rollout's own preflight step runs them).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg

from pgshift.errors import PgshiftError
from pgshift.rollout import config as cfgmod
from pgshift.rollout.config import Cutover
from pgshift.state import StateDir

Status = Literal["pass", "warn", "fail", "skip"]
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "")
# what a secret looks like in a YAML file: a password in a URI, a key named like a secret
# with a literal value, or a well-known token shape (AWS access key, bearer-ish hex)
_SECRET_PATTERNS = (
    (re.compile(r"://[^/\s:@]+:[^/\s@]+@"), "a URI with a password"),
    # (a key ending in _env names a variable, e.g. provision.password_env: APP_PASSWORD)
    (re.compile(r"(?im)^\s*(?![\w.-]*_env\s*:)[\w.-]*(password|passwd|secret|api_key|apikey)"
                r"[\w.-]*\s*:\s*(?!\s*(env:|$|#|null|~))\S"),
     "a key named like a secret with a literal value"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "an AWS access key"),
    (re.compile(r"(?i)password\s*=\s*[^\s$]"), "password= (a DSN or PGPASSWORD)"),
)


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    hint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreflightReport:
    cutover: Path
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(c.status == s for c in self.checks)
                  for s in ("pass", "warn", "fail", "skip")}
        return {"cutover": str(self.cutover), "ok": self.ok, "counts": counts,
                "checks": [c.to_dict() for c in self.checks]}


def _ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "pass", detail)


# -- the source ---------------------------------------------------------------------------------

def source_checks(cfg: Cutover, state_root: Path) -> list[CheckResult]:
    """Readable, WAL, quick_check, capturable tables, disk space for the snapshot."""
    from pgshift.setup.init import profile_database
    from pgshift.source.snapshot import open_source

    path = cfg.source.sqlite
    try:
        profile = profile_database(path)
    except PgshiftError as exc:
        return [CheckResult("source.readable", "fail", exc.message, exc.hint or "")]
    out = [_ok("source.readable", f"{path}: {len(profile.tables)} tables, "
               f"{sum(t.rows for t in profile.tables)} rows, {profile.size_bytes} bytes")]
    if profile.journal_mode == "wal":
        out.append(_ok("source.wal", "journal_mode=wal"))
    else:
        out.append(CheckResult("source.wal", "fail" if cfg.source.require_wal else "warn",
                               f"journal_mode={profile.journal_mode}; the online snapshot "
                               "needs WAL", f"sqlite3 {path} 'PRAGMA journal_mode=WAL'"))
    con = open_source(path)
    try:
        rows = [r[0] for r in con.execute("pragma quick_check").fetchall()]
    finally:
        con.close()
    if rows == ["ok"]:
        out.append(_ok("source.quick_check", "ok"))
    else:
        out.append(CheckResult("source.quick_check", "fail", "; ".join(map(str, rows[:3])),
                               f"sqlite3 {path} 'PRAGMA integrity_check'"))
    if profile.keyless:
        out.append(CheckResult("source.capturable", "fail", "no primary key (sync cannot "
                               "capture them): " + ", ".join(profile.keyless),
                               "add a primary key to each before the rollout"))
    else:
        out.append(_ok("source.capturable", f"all {len(profile.tables)} tables have a key"))
    wal = path.with_name(path.name + "-wal")
    need = profile.size_bytes + (wal.stat().st_size if wal.exists() else 0)
    probe_dir = next(p for p in (state_root, *state_root.parents) if p.exists())
    free = shutil.disk_usage(probe_dir).free
    # the snapshot is a full copy; keep 10 % slack for the copy's own journal
    if free >= need * 1.1:
        out.append(_ok("source.disk", f"{free // 2**20} MiB free at {probe_dir}, the "
                       f"snapshot needs {need // 2**20 + 1} MiB"))
    else:
        out.append(CheckResult("source.disk", "fail", f"{free // 2**20} MiB free at "
                               f"{probe_dir}; the snapshot needs {need * 11 // 10 // 2**20 + 1}"
                               " MiB", "free space next to the cutover file"))
    return out


# -- the target ---------------------------------------------------------------------------------

def _is_local(host: str | None) -> bool:
    return host is None or host in LOCAL_HOSTS or host.startswith("/")


def target_checks(cfg: Cutover, *, assume_remote: bool) -> list[CheckResult]:
    """Reachable with the version; CREATE on the schema; the app role exists and is not a
    superuser nor CREATEROLE; ``public`` not writable by everyone; ssl and password auth
    for remote targets (``assume_remote`` applies those rules to a local server)."""
    from pgshift.dsn import connect, resolve

    try:
        dsn = resolve(cfg.target.dsn)
        conn = connect(dsn, autocommit=True, application_name="pgshift-preflight")
    except PgshiftError as exc:
        return [CheckResult("target.reachable", "fail", exc.message, exc.hint or "")]
    out = []
    schema = cfg.target.schema_
    try:
        version, user, host = conn.execute(
            "select current_setting('server_version'), current_user::text, "
            "inet_server_addr()::text").fetchone() or ("?", "?", None)
        out.append(_ok("target.reachable", f"PostgreSQL {version} as {user}"))
        remote = assume_remote or not (_is_local(conn.info.host)
                                       or host in ("127.0.0.1/32", "::1/128"))
        row = conn.execute("select has_schema_privilege(n.oid, 'CREATE') from pg_namespace n "
                           "where n.nspname = %s", (schema,)).fetchone()
        if row is None:
            out.append(CheckResult("target.privileges", "warn", f"schema {schema} does not "
                                   "exist yet", "pgshift provision creates it"))
        elif row[0]:
            out.append(_ok("target.privileges", f"{user} may CREATE in {schema}"))
        else:
            out.append(CheckResult("target.privileges", "fail", f"{user} may not CREATE in "
                                   f"schema {schema}", f"GRANT CREATE ON SCHEMA {schema} TO "
                                   f"{user}"))
        out.append(_app_role(conn, cfg.target.app_role))
        out.extend(_server(conn, cfg))
        out.append(_public_schema(conn, schema))
        if remote:
            out.append(_ssl(conn))
            out.append(_auth(conn))
    finally:
        conn.close()
    return out


def _server(conn: Any, cfg: Cutover) -> list[CheckResult]:
    """Extensions the provision step will create, connections for the planned pools, and
    whether PostgreSQL could be restored once it is the system of record."""
    out = []
    wanted = ["pg_trgm", *(cfg.provision.extensions if cfg.provision else ())]
    available = {r[0] for r in conn.execute(
        "select name from pg_available_extensions where name = any(%s)", (wanted,))}
    missing = [e for e in dict.fromkeys(wanted) if e not in available]
    out.append(CheckResult("target.extensions", "fail", "not available on the server: "
                           + ", ".join(missing), "install the server's contrib package")
               if missing else _ok("target.extensions", "available: " + ", ".join(wanted)))
    max_conn, reserved, used = conn.execute(
        "select current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int, "
        "(select count(*) from pg_stat_activity where backend_type = 'client backend')"
    ).fetchone()
    # the app's pool (provision's connection limit) + migrate's COPY sessions + sync and
    # the engine's own connections, on top of what is connected now
    need = (cfg.provision.connection_limit if cfg.provision else 0) + cfg.migrate.jobs + 4
    free = max_conn - reserved - used
    out.append(CheckResult("target.connections", "warn", f"{free} connections free "
                           f"(max_connections {max_conn}), {need} planned",
                           "raise max_connections or lower provision.connection_limit")
               if need > free else _ok("target.connections", f"{free} free, {need} planned"))
    mode, command, library = conn.execute(
        "select current_setting('archive_mode'), current_setting('archive_command'), "
        "coalesce(current_setting('archive_library', true), '')").fetchone()
    if mode in ("on", "always") and (command.strip() not in ("", "(disabled)") or library):
        out.append(_ok("target.backup", f"WAL archiving on ({library or command[:40]})"))
    else:
        out.append(CheckResult("target.backup", "warn", "no WAL archiving (archive_mode="
                               f"{mode}): point-in-time recovery is not configured; a recent "
                               "backup cannot be checked from here", "configure PITR or a "
                               "managed backup before PostgreSQL becomes the system of record"))
    return out


def _app_role(conn: Any, role: str | None) -> CheckResult:
    if not role:
        return CheckResult("target.app_role", "warn", "target.app_role is not set: "
                           "green_writes: forbid cannot be enforced",
                           "set target.app_role to green's database role")
    row = conn.execute("select rolsuper, rolcreaterole from pg_roles where rolname = %s",
                       (role,)).fetchone()
    if row is None:
        return CheckResult("target.app_role", "fail", f"role {role} does not exist",
                           "pgshift provision ADMIN_DSN --app-user " + role)
    if row[0] or row[1]:
        what = "a superuser" if row[0] else "allowed to create roles"
        return CheckResult("target.app_role", "fail", f"the app role {role} is {what}",
                           f"ALTER ROLE {role} NOSUPERUSER NOCREATEROLE")
    return _ok("target.app_role", f"{role} exists, not a superuser, cannot create roles")


def _public_schema(conn: Any, schema: str) -> CheckResult:
    row = conn.execute("select has_schema_privilege('public', n.oid, 'CREATE') from "
                       "pg_namespace n where nspname = %s", (schema,)).fetchone()
    if row and row[0]:
        return CheckResult("target.public_create", "fail", f"everyone may CREATE in schema "
                           f"{schema}", f"REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC")
    return _ok("target.public_create", f"PUBLIC may not CREATE in {schema}")


def _ssl(conn: Any) -> CheckResult:
    row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
    if row and row[0]:
        return _ok("target.ssl", "this connection uses ssl")
    return CheckResult("target.ssl", "warn", "the connection to a remote target is not "
                       "encrypted", "add sslmode=verify-full to the DSN")


def _auth(conn: Any) -> CheckResult:
    try:
        rows = conn.execute("select line_number, type, auth_method from pg_hba_file_rules "
                            "where type like 'host%%' and error is null").fetchall()
    except psycopg.Error as exc:  # not allowed to read pg_hba_file_rules
        return CheckResult("target.auth", "warn", "cannot read pg_hba_file_rules "
                           f"({type(exc).__name__})", "ask the DBA: host lines use "
                           "scram-sha-256")
    weak = [f"line {n}: {m}" for n, _t, m in rows if m in ("trust", "md5", "password")]
    if weak:
        return CheckResult("target.auth", "fail", "pg_hba.conf allows weak host auth: "
                           + "; ".join(weak), "use scram-sha-256 on every host line")
    return _ok("target.auth", "host lines use " + ", ".join(sorted({r[2] for r in rows}))
               if rows else "no host lines")


# -- apps, router, settings, prerequisites ------------------------------------------------------

def _get(url: str) -> tuple[bool, str]:
    try:
        resp = httpx.get(url, timeout=3.0)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}"
    return resp.status_code < 400, f"HTTP {resp.status_code}"


def app_checks(cfg: Cutover) -> list[CheckResult]:
    """Blue must answer; green may not be deployed yet when the rollout deploys it."""
    out = []
    for side, app in (("blue", cfg.apps.blue), ("green", cfg.apps.green)):
        url = app.url.rstrip("/") + app.health
        ok, what = _get(url)
        if ok:
            out.append(_ok(f"apps.{side}", f"GET {url}: {what}"))
        elif side == "green" and app.deploy:
            out.append(CheckResult("apps.green", "warn", f"GET {url}: {what} (the rollout "
                                   "deploys green first)", f"or deploy it now: {app.deploy}"))
        else:
            out.append(CheckResult(f"apps.{side}", "fail", f"GET {url}: {what}",
                                   f"curl -i {url}"))
    return out


def _port_free(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host.strip("[]") or "0.0.0.0", int(port)))
        except OSError:
            return False
    return True


def router_check(cfg: Cutover) -> CheckResult:
    """The router answers and reports its weight (a managed proxy: its ports are free)."""
    r = cfg.router
    if r.kind == "embedded" and r.managed:
        busy = [a for a in (r.listen, r.admin) if not _port_free(a)]
        if busy:
            return CheckResult("router", "fail", f"managed proxy: {', '.join(busy)} already "
                               "in use", "stop what listens there, or router.managed: false")
        return _ok("router", f"managed proxy: {r.listen} and {r.admin} are free")
    try:
        if r.kind == "embedded":
            from pgshift.traffic.embedded import EmbeddedRouter
            from pgshift.traffic.proxy.config import resolve_token

            router: Any = EmbeddedRouter(f"http://{r.admin}", resolve_token(r.token) or "")
        else:
            from pgshift.traffic.factory import open_router

            router = open_router(r.kind, socket_path=str(r.haproxy.socket) if r.haproxy
                                 else None, map_file=str(r.haproxy.map_file) if r.haproxy
                                 else None, options=dict(r.options))
        weight = router.weight()
    except PgshiftError as exc:
        return CheckResult("router", "fail", f"{r.kind}: {exc.message}", exc.hint or "")
    return _ok("router", f"{r.kind}: answers, green weight {weight:g} %")


def settings_check(cfg: Cutover) -> CheckResult:
    from pgshift.sync import settings as table_settings

    try:
        parsed = table_settings.parse({"tables": cfg.tables})
    except table_settings.TablesFileError as exc:
        return CheckResult("tables", "fail", str(exc), "see docs/sync.md (per-table settings)")
    return _ok("tables", f"{len(parsed)} table settings valid")


def prerequisite_checks(cfg: Cutover, base: Path) -> list[CheckResult]:
    """Listed, not run (they may be slow or touch things); JUnit reports are read."""
    from pgshift.rollout.hooks import check_prerequisite

    out = []
    for p in cfg.prerequisites:
        name = f"prerequisite.{p.name}"
        if p.junit is not None:
            # the rollout's own judgement; the report's path taken from the file's folder
            junit = p.junit if p.junit.is_absolute() else base / p.junit
            try:
                gate = check_prerequisite(p.model_copy(update={"junit": junit}), {},
                                          confirmations={})
            except PgshiftError as exc:
                out.append(CheckResult(name, "fail", exc.message, exc.hint or ""))
                continue
            out.append(CheckResult(name, "pass" if gate.passed else "fail", gate.detail,
                                   "" if gate.passed else f"see {junit}"))
        elif p.command is not None:
            out.append(CheckResult(name, "skip", f"command, run by the rollout: {p.command}"))
        else:
            out.append(CheckResult(name, "skip", "typed confirmation at the rollout",
                                   f'pgshift rollout CUTOVER --confirm {p.name}="{p.confirm}"'))
    return out


def hook_checks(cfg: Cutover, base: Path) -> list[CheckResult]:
    """Each hook's program can be found (run nothing)."""
    commands = {f"apps.{side}.{k}": v for side, app in (("blue", cfg.apps.blue),
                                                       ("green", cfg.apps.green))
                for k, v in app.model_dump().items()
                if k in ("deploy", "stop", "start_workers", "stop_workers", "integration_tests")
                and v}
    commands.update({f"hooks.{k}": v for k, v in cfg.hooks.model_dump().items() if v})
    missing = []
    for where, cmd in commands.items():
        try:
            prog = shlex.split(cmd)[0]
        except (ValueError, IndexError):
            missing.append(f"{where} (cannot parse)")
            continue
        path = base / prog if "/" in prog and not prog.startswith("/") else Path(prog)
        found = os.access(path, os.X_OK) if "/" in prog else shutil.which(prog) is not None
        if not found:
            missing.append(f"{where}: {prog}")
    if missing:
        return [CheckResult("hooks", "warn", "not found or not executable here: "
                            + "; ".join(missing), "run preflight where the rollout runs")]
    return [_ok("hooks", f"{len(commands)} commands found")] if commands else []


def migrate_plan_check(cfg: Cutover) -> CheckResult:
    """``pgshift migrate --dry-run``'s notes, summarized: the plan is built from a snapshot
    in a temporary directory (removed after), the target is only read."""
    import tempfile

    from pgshift.dsn import resolve
    from pgshift.migrate.options import MigrateOptions
    from pgshift.migrate.run import migrate

    with tempfile.TemporaryDirectory(prefix="pgshift-preflight-") as tmp:
        try:
            result = migrate(MigrateOptions(
                sqlite_path=cfg.source.sqlite, dsn=resolve(cfg.target.dsn),
                schema=cfg.target.schema_, dry_run=True, state_dir=Path(tmp),
                into_existing=cfg.mapping is not None, mapping=cfg.mapping))
        except PgshiftError as exc:
            return CheckResult("migrate.plan", "fail", exc.message, exc.hint or "")
    notes = [n for n in result.plan.notes if n.level in ("anomaly", "untranslated")]
    if not notes:
        return _ok("migrate.plan", f"{len(result.tables)} tables planned, no anomalies")
    shown = "; ".join(f"{n.obj}: {n.message}" for n in notes[:3])
    return CheckResult("migrate.plan", "warn", f"{len(notes)} anomalies/untranslated: {shown}"
                       + (" ..." if len(notes) > 3 else ""),
                       f"pgshift migrate {cfg.source.sqlite} {cfg.target.dsn} --dry-run")


# -- security -----------------------------------------------------------------------------------

def security_checks(cfg: Cutover, path: Path, state_root: Path) -> list[CheckResult]:
    """No secrets in the file, the env vars it names set, the state dir not world-readable."""
    text = path.read_text(errors="replace")
    found = [what for rx, what in _SECRET_PATTERNS
             if any(not ln.lstrip().startswith("#") and rx.search(ln)
                    for ln in text.splitlines())]
    out = [CheckResult("security.secrets", "fail", "the cutover file holds " + ", ".join(found),
                       "move it to an environment variable and write env:VAR")
           if found else _ok("security.secrets", "no secrets in the file")]
    needed = {"target.dsn": cfg.target.dsn}
    if not (cfg.router.kind == "embedded" and cfg.router.managed):
        needed["router.token"] = cfg.router.token if cfg.router.kind == "embedded" else ""
    needed.update({f"router.options.{k}": v for k, v in cfg.router.options.items()})
    if cfg.provision:
        needed["provision.admin_dsn"] = cfg.provision.admin_dsn
        if cfg.provision.password_env:
            needed["provision.password_env"] = "env:" + cfg.provision.password_env
    if cfg.notify.webhook:
        needed["notify.webhook"] = cfg.notify.webhook
    unset = [f"{k} (${v[4:]})" for k, v in needed.items()
             if v.startswith("env:") and not os.environ.get(v[4:])]
    out.append(CheckResult("security.env", "fail", "unset: " + ", ".join(unset),
                           "export them in the shell that runs the rollout")
               if unset else _ok("security.env", "every env:VAR the file names is set"))
    if state_root.exists():
        mode = stat.S_IMODE(state_root.stat().st_mode)
        if mode & 0o007:
            out.append(CheckResult("security.state_dir", "fail", f"{state_root} is "
                                   f"world-accessible (mode {mode:o})",
                                   f"chmod o-rwx {state_root}"))
        else:
            out.append(_ok("security.state_dir", f"{state_root} mode {mode:o}"))
    else:
        out.append(_ok("security.state_dir", f"{state_root} does not exist yet"))
    return out


def preflight(path: Path, *, assume_remote: bool = False,
              migrate_plan: bool = False) -> PreflightReport:
    """Every check, in the order an operator reads them; ``UsageError`` only when the
    cutover file itself cannot be loaded (exit 2). ``migrate_plan`` adds the migrate
    dry run's anomalies (it snapshots the source: a full copy, in a temporary directory)."""
    cfg, base = cfgmod.load(path)
    state_root = StateDir.for_name(base, cfg.name).root
    report = PreflightReport(path)
    groups: list[Callable[[], list[CheckResult]]] = [
        lambda: source_checks(cfg, state_root),
        lambda: target_checks(cfg, assume_remote=assume_remote),
        lambda: app_checks(cfg),
        lambda: [router_check(cfg)],
        lambda: [settings_check(cfg)],
        lambda: prerequisite_checks(cfg, base),
        lambda: hook_checks(cfg, base),
        lambda: security_checks(cfg, path, state_root),
    ]
    if migrate_plan:
        groups.insert(2, lambda: [migrate_plan_check(cfg)])
    for group in groups:
        report.checks.extend(group())
    return report
