"""``pgshift provision``: prepare the production PostgreSQL for the app, idempotently.

Every statement is planned from what the server holds now (catalog reads), so a
second run plans nothing and says so. The plan is what ``--print-sql`` shows;
applying it runs the same statements. Passwords are sent as SCRAM verifiers
computed on the client (never as plain text in a statement or the server log)
and are never part of a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import conninfo, sql
from psycopg.sql import SQL, Composable, Composed

from pgshift.dsn import Dsn, connect
from pgshift.errors import ConnectError, TargetError, UsageError
from pgshift.ops.pgbouncer import PgbouncerPlan, plan_pgbouncer, render_pgbouncer, write_pgbouncer
from pgshift.ops.server import Finding, ServerInfo, server_info, setting_findings

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")
# pg_trgm backs the app's LIKE/ILIKE searches; uuid-ossp only where the server ships it
# (core gen_random_uuid() needs no extension).
REQUIRED_EXTENSIONS = ("pg_trgm",)
OPTIONAL_EXTENSIONS = ("uuid-ossp",)
# Where a statement runs: the admin DSN's own database, or the app's database.
ON_SERVER, IN_DB = "server", "database"


@dataclass(frozen=True)
class Statement:
    """One statement of the plan: its text (passwords shown as ***), why, and where it runs."""

    sql: str
    reason: str
    scope: str  # "server" (runs in the admin DSN's database) or "database" (the app's)
    query: Composed | SQL | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, object]:
        return {"sql": self.sql, "reason": self.reason, "scope": self.scope}


@dataclass(frozen=True)
class Connectivity:
    """The app user's own connection test."""

    ok: bool
    server: ServerInfo | None
    can_create_table: bool
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "can_create_table": self.can_create_table, "error": self.error,
                "server": self.server.to_dict() if self.server else None}


@dataclass
class ProvisionResult:
    """What provision planned, whether it ran, and what the app user sees afterwards."""

    admin: str  # the admin DSN without its password
    app_user: str
    database: str
    statements: list[Statement]
    applied: bool  # False with print_sql
    notes: list[str] = field(default_factory=list)
    connectivity: Connectivity | None = None
    findings: list[Finding] = field(default_factory=list)
    pgbouncer: PgbouncerPlan | None = None
    pgbouncer_path: str | None = None
    pgbouncer_written: bool = False

    @property
    def changed(self) -> bool:
        """True when the server (or the PgBouncer file) was, or would be, changed."""
        return bool(self.statements) or self.pgbouncer_written

    def to_dict(self) -> dict[str, object]:
        return {
            "admin": self.admin, "app_user": self.app_user, "database": self.database,
            "applied": self.applied, "changed": self.changed,
            "statements": [s.to_dict() for s in self.statements], "notes": self.notes,
            "connectivity": self.connectivity.to_dict() if self.connectivity else None,
            "findings": [f.to_dict() for f in self.findings],
            "pgbouncer": self.pgbouncer.to_dict() if self.pgbouncer else None,
            "pgbouncer_path": self.pgbouncer_path, "pgbouncer_written": self.pgbouncer_written,
        }


@dataclass(frozen=True)
class _Admin:
    name: str
    superuser: bool
    createrole: bool
    createdb: bool


def provision(
    admin_dsn: Dsn,
    app_user: str,
    database: str,
    *,
    password: str | None = None,
    connection_limit: int = 50,
    extensions: Sequence[str] = (),
    statement_timeout: str = "30s",
    idle_in_transaction_timeout: str = "60s",
    schema: str = "public",
    print_sql: bool = False,
    app_instances: int | None = None,
    pool_size: int | None = None,
    pgbouncer_path: Path | None = None,
) -> ProvisionResult:
    """Create (or bring up to date) the app's role, database, extensions, grants and defaults.

    ``admin_dsn`` needs CREATEROLE and CREATEDB (or superuser). ``password`` is the
    app role's password: required when the role does not exist yet; when it does, the
    password is changed only if logging in with it fails. With ``print_sql`` nothing
    runs and the result lists the statements a real run would execute.
    ``app_instances`` × ``pool_size`` is the planned connection count the server's
    ``max_connections`` is checked against, and what ``pgbouncer_path`` is sized from.

    Raises UsageError (exit 2) naming the missing privilege, ConnectError for an
    unreachable server and TargetError for a failure while applying.
    """
    if connection_limit < -1 or connection_limit == 0:
        raise UsageError(f"connection limit {connection_limit} would lock the app out",
                         hint="--connection-limit 50 (or -1 for no limit)")
    if pgbouncer_path is not None and not (app_instances and pool_size):
        raise UsageError("--pgbouncer needs the planned pools",
                         hint="add --app-instances N --pool-size M")
    result = ProvisionResult(admin=admin_dsn.safe, app_user=app_user, database=database,
                             statements=[], applied=not print_sql)
    planned = app_instances * pool_size if app_instances and pool_size else None
    with connect(admin_dsn, autocommit=True, application_name="pgshift-provision") as conn:
        admin = _admin(conn)
        role_exists = _plan_role(conn, admin, admin_dsn, app_user, database, password,
                                 connection_limit, result)
        _plan_role_settings(conn, app_user, {"statement_timeout": statement_timeout,
                            "idle_in_transaction_session_timeout": idle_in_transaction_timeout},
                            role_exists, result)
        db_exists = _plan_database(conn, admin, app_user, database, result)
        admin_server = server_info(conn)
        if not print_sql:
            _run(conn, result.statements)
    in_db = admin_dsn.with_dbname(database)
    if db_exists or not print_sql:
        with connect(in_db, autocommit=True, application_name="pgshift-provision") as conn:
            before = len(result.statements)
            _plan_inside(conn, admin, app_user, schema, extensions, result)
            if not print_sql:
                _run(conn, result.statements[before:])
    else:
        _plan_inside_new(admin, app_user, schema, extensions, result)
    if not print_sql:
        result.connectivity = _test_as_app(admin_dsn, app_user, database, password, schema)
    # The admin's view: the app role may not see superuser-only settings.
    result.findings = setting_findings(admin_server, planned)
    if pgbouncer_path is not None and app_instances and pool_size:
        usable = admin_server.max_connections - admin_server.reserved_connections
        result.pgbouncer = plan_pgbouncer(app_instances, pool_size, usable)
        result.pgbouncer_path = str(pgbouncer_path)
        if not print_sql:
            text = render_pgbouncer(admin_dsn, database, app_user, result.pgbouncer)
            result.pgbouncer_written = write_pgbouncer(pgbouncer_path, text)
    return result


def _admin(conn: psycopg.Connection) -> _Admin:
    row = conn.execute("SELECT current_user, rolsuper, rolcreaterole, rolcreatedb "
                       "FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row is not None  # the connected role always exists
    return _Admin(str(row[0]), bool(row[1]), bool(row[2]), bool(row[3]))


def _need(admin: _Admin, privilege: str, what: str) -> None:
    have = admin.superuser or (admin.createrole if privilege == "CREATEROLE" else admin.createdb)
    if not have:
        raise UsageError(
            f"insufficient privilege: role {admin.name!r} lacks {privilege}, needed to {what}",
            hint=f"connect as a superuser, or have one run: ALTER ROLE \"{admin.name}\" "
                 f"{privilege}",
            operation="provision",
        )


def _add(result: ProvisionResult, conn: psycopg.Connection | None, query: Composed | SQL,
         reason: str, scope: str, shown: sql.Composable | None = None) -> None:
    text = (shown or query).as_string(conn)
    result.statements.append(Statement(text, reason, scope, query))


def _plan_role(conn: psycopg.Connection, admin: _Admin, admin_dsn: Dsn, app_user: str,
               database: str, password: str | None, limit: int,
               result: ProvisionResult) -> bool:
    row = conn.execute("SELECT rolcanlogin, rolconnlimit, rolsuper FROM pg_roles "
                       "WHERE rolname = %s", (app_user,)).fetchone()
    role = sql.Identifier(app_user)
    here = ON_SERVER
    if row is None:
        if password is None:
            raise UsageError(f"role {app_user!r} does not exist and no password was given",
                             hint="export PGSHIFT_APP_PASSWORD=... (or run in a terminal to "
                                  "be prompted)")
        _need(admin, "CREATEROLE", f"create the application role {app_user!r}")
        verifier = _verifier(conn, app_user, password)
        make = "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE CONNECTION LIMIT {} " \
               "PASSWORD {}"
        _add(result, conn, sql.SQL(make).format(role, sql.Literal(limit), sql.Literal(verifier)),
             "the application role", here,
             sql.SQL(make).format(role, sql.Literal(limit), sql.SQL("'***'")))
        return False
    can_login, current_limit, is_super = bool(row[0]), int(row[1]), bool(row[2])
    if is_super:
        result.notes.append(f"role {app_user!r} is a superuser: the app should not be")
    changes: list[Composable] = []
    if not can_login:
        changes.append(sql.SQL("LOGIN"))
    if current_limit != limit:
        changes.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(limit)))
    if changes:
        _need(admin, "CREATEROLE", f"alter the application role {app_user!r}")
        _add(result, conn, sql.SQL("ALTER ROLE {} ").format(role) + sql.SQL(" ").join(changes),
             "login and connection limit as planned", here)
    if password is not None and not _password_works(admin_dsn, app_user, database, password):
        _need(admin, "CREATEROLE", f"set the password of {app_user!r}")
        verifier = _verifier(conn, app_user, password)
        query = sql.SQL("ALTER ROLE {} PASSWORD {}")
        _add(result, conn, query.format(role, sql.Literal(verifier)),
             "the given password does not log in", here, query.format(role, sql.SQL("'***'")))
    return True


def _verifier(conn: psycopg.Connection, user: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed by libpq on the client."""
    return conn.pgconn.encrypt_password(password.encode(), user.encode(),
                                        b"scram-sha-256").decode()


def _as_user(admin_dsn: Dsn, user: str, dbname: str, password: str | None) -> Dsn:
    """The admin DSN's server as ``user``; never with the admin's password."""
    params = {k: v for k, v in conninfo.conninfo_to_dict(admin_dsn.conninfo).items()
              if k not in ("password", "passfile")}
    params.update(user=user, dbname=dbname)
    if password is not None:
        params["password"] = password
    return Dsn(conninfo.make_conninfo("", **params))


def _password_works(admin_dsn: Dsn, user: str, database: str, password: str) -> bool:
    for dbname in (database, "postgres"):
        dsn = _as_user(admin_dsn, user, dbname, password)
        try:
            with connect(dsn, autocommit=True, application_name="pgshift-provision"):
                return True
        except ConnectError as exc:
            cause = str(exc.__cause__ or exc).lower()
            if "password authentication failed" in cause:
                return False
            # Any other refusal (no such database yet, not allowed to connect there): the
            # password itself was not judged; try the next database.
    return False


def _plan_role_settings(conn: psycopg.Connection, app_user: str, wanted: dict[str, str],
                        role_exists: bool, result: ProvisionResult) -> None:
    current: dict[str, str] = {}
    if role_exists:
        row = conn.execute(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = %s AND s.setdatabase = 0", (app_user,)).fetchone()
        for item in (row[0] if row and row[0] else []):
            name, _, value = str(item).partition("=")
            current[name] = value
    for name, value in wanted.items():
        if current.get(name) != value:
            _add(result, conn, sql.SQL("ALTER ROLE {} SET {} = {}").format(
                sql.Identifier(app_user), sql.Identifier(name), sql.Literal(value)),
                f"the app role's {name} default", ON_SERVER)


def _plan_database(conn: psycopg.Connection, admin: _Admin, app_user: str, database: str,
                   result: ProvisionResult) -> bool:
    row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                       (database,)).fetchone()
    db, role = sql.Identifier(database), sql.Identifier(app_user)
    found = conn.execute("SELECT pg_has_role(current_user, r.oid, 'MEMBER') FROM pg_roles r "
                         "WHERE r.rolname = %s", (app_user,)).fetchone()
    member = admin.superuser or bool(found and found[0])
    if row is None:
        _need(admin, "CREATEDB", f"create the database {database!r}")
    elif row[0] == app_user:
        return True
    if not member:
        # A non-superuser may only give a database to a role it belongs to (and on
        # PostgreSQL 16+ the creator of a role holds only ADMIN on it, not membership).
        _add(result, conn, sql.SQL("GRANT {} TO CURRENT_USER").format(role),
             "a non-superuser admin must be a member of the role it gives a database to",
             ON_SERVER)
    if row is None:
        _add(result, conn, sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 "
                                   "ENCODING 'UTF8'").format(db, role),
             "the app's database, owned by the app role", ON_SERVER)
        return False
    _add(result, conn, sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, role),
         f"the database is owned by {row[0]!r}, not the app role", ON_SERVER)
    return True


def _extension_plan(available: set[str], installed: set[str],
                    extensions: Sequence[str], result: ProvisionResult) -> list[str]:
    wanted = list(dict.fromkeys([*REQUIRED_EXTENSIONS, *extensions]))
    missing = [e for e in wanted if e not in available]
    if missing:
        raise UsageError(
            f"extension(s) not available on the server: {', '.join(missing)}",
            hint="install the server's contrib package (e.g. postgresql-contrib) or drop "
                 "them from --extension", operation="provision")
    for optional in OPTIONAL_EXTENSIONS:
        if optional in available:
            wanted.append(optional)
        elif optional not in installed:
            result.notes.append(f"{optional} is not available on this server; core "
                                "gen_random_uuid() needs no extension")
    return [e for e in wanted if e not in installed]


def _plan_inside(conn: psycopg.Connection, admin: _Admin, app_user: str, schema: str,
                 extensions: Sequence[str], result: ProvisionResult) -> None:
    available = {str(r[0]) for r in conn.execute("SELECT name FROM pg_available_extensions")}
    installed = {str(r[0]) for r in conn.execute("SELECT extname FROM pg_extension")}
    for ext in _extension_plan(available, installed, extensions, result):
        _add(result, conn, sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(
            sql.Identifier(ext)), f"extension {ext}", IN_DB)
    role, nsp = sql.Identifier(app_user), sql.Identifier(schema)
    if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone():
        _add(result, conn, sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(nsp, role),
             f"schema {schema}", IN_DB)
    else:
        ok = conn.execute("SELECT has_schema_privilege(%s, %s, 'USAGE') AND "
                          "has_schema_privilege(%s, %s, 'CREATE')",
                          (app_user, schema, app_user, schema)).fetchone()
        if not (ok and ok[0]):
            _add(result, conn, sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(
                nsp, role), "the app creates its tables (its migrations)", IN_DB)
        _plan_existing_grants(conn, app_user, schema, result)
    _plan_default_privileges(conn, admin, app_user, schema, result)


def _plan_existing_grants(conn: psycopg.Connection, app_user: str, schema: str,
                          result: ProvisionResult) -> None:
    for kind, relkinds, privileges, fn in (
            ("TABLES", "('r','p','v','m','f')", TABLE_PRIVILEGES, "has_table_privilege"),
            ("SEQUENCES", "('S')", SEQUENCE_PRIVILEGES, "has_sequence_privilege")):
        checks = " AND ".join(f"{fn}(%(u)s, c.oid, '{p}')" for p in privileges)
        lacking = conn.execute(
            f"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = %(s)s AND c.relkind IN {relkinds} AND NOT ({checks})",
            {"u": app_user, "s": schema}).fetchone()
        if lacking and lacking[0]:
            _add(result, conn, sql.SQL("GRANT {} ON ALL {} IN SCHEMA {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.SQL(kind),
                sql.Identifier(schema), sql.Identifier(app_user)),
                f"{lacking[0]} existing {kind.lower()} the app cannot use yet", IN_DB)


def _plan_default_privileges(conn: psycopg.Connection, admin: _Admin, app_user: str,
                             schema: str, result: ProvisionResult) -> None:
    for kind, objtype, privileges in (("TABLES", "r", TABLE_PRIVILEGES),
                                      ("SEQUENCES", "S", SEQUENCE_PRIVILEGES)):
        have = {str(r[0]) for r in conn.execute(
            "SELECT a.privilege_type FROM pg_default_acl d "
            "JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a "
            "WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = current_user) "
            "AND n.nspname = %s AND d.defaclobjtype = %s "
            "AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)",
            (schema, objtype, app_user))}
        if not set(privileges) <= have:
            _add(result, conn, _default_privileges(admin.name, schema, kind, privileges,
                                                   app_user),
                 f"future {kind.lower()} created by {admin.name!r} (pgshift migrate) are the "
                 "app's to use", IN_DB)


def _default_privileges(owner: str, schema: str, kind: str, privileges: Sequence[str],
                        app_user: str) -> sql.Composed:
    return sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}"
                   ).format(sql.Identifier(owner), sql.Identifier(schema),
                            sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.SQL(kind),
                            sql.Identifier(app_user))


def _plan_inside_new(admin: _Admin, app_user: str, schema: str,
                     extensions: Sequence[str], result: ProvisionResult) -> None:
    """--print-sql before the database exists: everything inside it is still to do."""
    for ext in dict.fromkeys([*REQUIRED_EXTENSIONS, *extensions]):
        _add(result, None, sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(
            sql.Identifier(ext)), f"extension {ext}", IN_DB)
    result.notes.append("the database does not exist yet: its statements are planned "
                        "without reading it (uuid-ossp is added where the server has it)")
    if schema != "public":
        _add(result, None, sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
            sql.Identifier(schema), sql.Identifier(app_user)), f"schema {schema}", IN_DB)
    for kind, privileges in (("TABLES", TABLE_PRIVILEGES), ("SEQUENCES", SEQUENCE_PRIVILEGES)):
        _add(result, None, _default_privileges(admin.name, schema, kind, privileges, app_user),
             f"future {kind.lower()} created by {admin.name!r} are the app's to use", IN_DB)


def _run(conn: psycopg.Connection, statements: Sequence[Statement]) -> None:
    for st in statements:
        try:
            conn.execute(st.query or sql.SQL(st.sql))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise UsageError(
                f"insufficient privilege for {st.sql!r}: {exc.diag.message_primary or exc}",
                hint="run provision as a superuser (or a role with CREATEROLE and CREATEDB)",
                operation="provision") from exc
        except psycopg.Error as exc:
            raise TargetError(f"provision failed at {st.sql!r}: {exc.diag.message_primary}",
                              hint="fix the cause and rerun: provision resumes where it "
                                   "stopped", operation="provision") from exc


def _test_as_app(admin_dsn: Dsn, app_user: str, database: str, password: str | None,
                 schema: str) -> Connectivity:
    # Without a password libpq may still find one in PGPASSWORD or ~/.pgpass.
    dsn = _as_user(admin_dsn, app_user, database, password)
    try:
        conn = connect(dsn, autocommit=True, application_name="pgshift-provision-test")
    except ConnectError as exc:
        return Connectivity(False, None, False, exc.message)
    with conn:
        info = server_info(conn)
        can_create = True
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(sql.SQL("CREATE TABLE {}.pgshift_provision_probe (id int)").format(
                    sql.Identifier(schema)))
        except psycopg.Error:
            can_create = False
    return Connectivity(True, info, can_create)
