"""``pgshift init``: from an app's SQLite file to a reviewed cutover file and templates.

Profiles the database (tables, row counts, which ones sync can capture), renders the
cutover file and the templates for the chosen deploy style and router
(``setup/templates.py``), writes them (never over an existing file without ``force``),
and checks each with the tool that reads it (``setup/validate.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgshift.errors import UsageError
from pgshift.setup import validate
from pgshift.setup.templates import DEPLOYS, ROUTERS, Setup, cutover_yaml, templates
from pgshift.source.snapshot import journal_mode, open_source
from pgshift.state import atomic_write
from pgshift.sync import sqlite_capture as capture

CUTOVER_FILE = "cutover.yaml"


@dataclass(frozen=True)
class TableProfile:
    name: str
    rows: int
    key: tuple[str, ...]  # empty: no primary key, sync cannot capture the table

    @property
    def capturable(self) -> bool:
        return bool(self.key)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "key": list(self.key),
                "capturable": self.capturable}


@dataclass(frozen=True)
class DbProfile:
    """What init learns from the source: its tables, their sizes, what sync can carry."""

    path: Path
    size_bytes: int
    journal_mode: str
    tables: tuple[TableProfile, ...]

    @property
    def keyless(self) -> list[str]:
        return [t.name for t in self.tables if not t.capturable]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes,
                "journal_mode": self.journal_mode, "rows": sum(t.rows for t in self.tables),
                "tables": [t.to_dict() for t in self.tables], "keyless": self.keyless}


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    validation: validate.Validation

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), **self.validation.to_dict()}


@dataclass
class InitResult:
    profile: DbProfile
    files: list[WrittenFile]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.validation.status != "failed" for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "profile": self.profile.to_dict(),
                "files": [f.to_dict() for f in self.files], "warnings": self.warnings}


def profile_database(path: Path) -> DbProfile:
    """Tables (as sync would capture them), row counts and keys; reads only."""
    mode = journal_mode(path)
    con = open_source(path)
    try:
        tables = []
        for name in capture.capturable_tables(con):
            try:
                key = capture.describe(con, name).key
            except UsageError:
                key = ()
            rows = con.execute(f"select count(*) from {capture.q(name)}").fetchone()[0]
            tables.append(TableProfile(name, int(rows), tuple(key)))
    finally:
        con.close()
    return DbProfile(path, path.stat().st_size, mode, tuple(tables))


def default_name(sqlite: Path) -> str:
    """A cutover name from the file's stem (``hyperpage.db`` -> ``hyperpage``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", sqlite.stem).strip("-.") or "app"
    return name if name[0].isalnum() else f"app-{name}"


def check_setup(s: Setup) -> None:
    """Bad answers as one UsageError each (exit 2), before anything is read or written."""
    if s.deploy not in DEPLOYS:
        raise UsageError(f"--deploy {s.deploy!r}: expected one of {', '.join(DEPLOYS)}",
                         hint="--deploy compose")
    if s.router not in ROUTERS:
        raise UsageError(f"--router {s.router!r}: expected one of {', '.join(ROUTERS)}",
                         hint="--router embedded")
    for side, url in (("blue", s.blue_url), ("green", s.green_url)):
        if not re.match(r"^https?://[^/\s]+", url):
            raise UsageError(f"--{side}-url {url!r} is not an http(s):// URL",
                             hint=f"--{side}-url http://10.0.1.10:3000")
        if s.router == "haproxy" and not url.startswith("http://"):
            raise UsageError(f"--{side}-url {url!r}: HAProxy's backends are http://host:port "
                             "(TLS ends at HAProxy)", hint=f"--{side}-url http://10.0.1.10:3000")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", s.dsn_var):
        raise UsageError(f"--dsn-var {s.dsn_var!r} is not an environment variable name",
                         hint="--dsn-var DATABASE_URL")
    if not s.health.startswith("/"):
        raise UsageError(f"--health {s.health!r} must start with '/'", hint="--health /health")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", s.name):
        raise UsageError(f"--name {s.name!r}: letters, digits, '_', '.', '-' only",
                         hint=f"--name {default_name(s.sqlite)}")


def _validate(path: Path, rel: str, s: Setup, texts: dict[str, str]) -> validate.Validation:
    if rel == CUTOVER_FILE:
        return validate.cutover_file(path)
    if rel == "haproxy.cfg":
        return validate.haproxy_cfg(path, texts["pgshift.map"])
    if rel.startswith("docker-compose."):
        return validate.compose_file(path, green=".green." in rel, dsn_var=s.dsn_var)
    if rel.startswith("k8s/"):
        return validate.k8s_file(path)
    if rel.endswith(".service"):
        return validate.systemd_file(path)
    return validate.Validation("none", "skipped", "read by the router itself")


def init(s: Setup, out_dir: Path, *, force: bool = False) -> InitResult:
    """Profile ``s.sqlite``, write the cutover file and templates into ``out_dir``,
    validate each. Refuses (exit 2) when any file exists, unless ``force``."""
    check_setup(s)
    profile = profile_database(s.sqlite)
    texts = {CUTOVER_FILE: cutover_yaml(s, tables=[(t.name, t.rows, t.capturable)
                                                   for t in profile.tables])}
    texts.update(templates(s))
    existing = [rel for rel in texts if (out_dir / rel).exists()]
    if existing and not force:
        raise UsageError(f"would overwrite {', '.join(str(out_dir / r) for r in existing)}",
                         hint="pass --force to overwrite, or --out-dir another directory")
    files = []
    for rel, text in texts.items():
        path = out_dir / rel
        atomic_write(path, text)
        files.append(WrittenFile(path, validate.Validation("pending", "skipped")))
    files = [WrittenFile(f.path, _validate(f.path, rel, s, texts))
             for f, rel in zip(files, texts, strict=True)]
    warnings = []
    if profile.journal_mode != "wal":
        warnings.append(f"{s.sqlite} is in {profile.journal_mode} mode; the online snapshot "
                        f"needs WAL: sqlite3 {s.sqlite} 'PRAGMA journal_mode=WAL' (while the "
                        "app is stopped, or from the app itself)")
    if profile.keyless:
        warnings.append("tables without a primary key (sync cannot capture them): "
                        + ", ".join(profile.keyless) + "; add a primary key before the rollout")
    if s.router == "haproxy":
        warnings.append("install pgshift.map at /etc/haproxy/pgshift.map and haproxy.cfg "
                        "where HAProxy reads it")
    if s.router in ("alb", "gateway"):
        warnings.append(f"router {s.router}: fill in router.options in {CUTOVER_FILE}")
    return InitResult(profile, files, warnings)
