"""The blue schema of the demo database: hyperpage's tables, verbatim, and their DDL split apart.

``SCHEMA_SQL`` is the Drizzle-ORM schema hyperpage runs on SQLite (epoch-millisecond INTEGER
timestamps, 0/1 INTEGER booleans, JSON as TEXT, text UUID ids). :mod:`pgshift.demo.seed` fills
it; the reference app creates it on an empty file; the bulk loader builds it table by table.
"""

from __future__ import annotations

import sqlite3

__all__ = ["SCHEMA_SQL", "TABLES", "create_schema"]

SCHEMA_SQL: str = """\
CREATE TABLE users (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  email TEXT NOT NULL UNIQUE,
  name TEXT,
  is_admin INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE user_sessions (
  id TEXT PRIMARY KEY NOT NULL,
  user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  user_agent TEXT,
  ip TEXT,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE INDEX idx_user_sessions_user ON user_sessions(user_id);
CREATE TABLE jobs (
  id TEXT PRIMARY KEY NOT NULL,
  type TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
  priority INTEGER NOT NULL DEFAULT 0,
  payload TEXT NOT NULL,
  result TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL DEFAULT 3,
  user_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
  scheduled_at INTEGER NOT NULL,
  started_at INTEGER,
  completed_at INTEGER,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE INDEX idx_jobs_status_scheduled ON jobs(status, scheduled_at);
CREATE INDEX idx_jobs_user ON jobs(user_id) WHERE user_id IS NOT NULL;
CREATE TABLE job_history (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  status TEXT NOT NULL,
  message TEXT,
  created_at INTEGER NOT NULL
);
CREATE INDEX idx_job_history_job ON job_history(job_id, created_at);
CREATE TABLE tool_configs (
  tool_name TEXT PRIMARY KEY NOT NULL,
  enabled INTEGER NOT NULL DEFAULT 1,
  config TEXT NOT NULL DEFAULT '{}',
  refresh_interval INTEGER NOT NULL DEFAULT 300000,
  notifications INTEGER NOT NULL DEFAULT 1,
  updated_at INTEGER NOT NULL
);
CREATE TABLE rate_limits (
  key TEXT PRIMARY KEY NOT NULL,
  remaining INTEGER NOT NULL,
  limit_total INTEGER NOT NULL,
  reset_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE app_state (
  key TEXT PRIMARY KEY NOT NULL,
  value TEXT NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE oauth_tokens (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  provider TEXT NOT NULL,
  access_token TEXT NOT NULL,
  refresh_token TEXT,
  expires_at INTEGER,
  scope TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  UNIQUE (user_id, provider)
);
"""

TABLES: tuple[str, ...] = (
    "users",
    "user_sessions",
    "jobs",
    "job_history",
    "tool_configs",
    "rate_limits",
    "app_state",
    "oauth_tokens",
)


def create_schema(con: sqlite3.Connection) -> None:
    """Create every table and index of the blue schema on ``con`` (an empty database)."""
    con.executescript(SCHEMA_SQL)


def _split_schema() -> tuple[list[str], dict[str, list[str]]]:
    """SCHEMA_SQL as (CREATE TABLE statements, {table: its CREATE INDEX statements}).

    The DDL holds no ';' inside literals, so splitting on it is safe.
    """
    tables: list[str] = []
    indexes: dict[str, list[str]] = {}
    for statement in (s.strip() + ";" for s in SCHEMA_SQL.split(";") if s.strip()):
        if statement.startswith("CREATE INDEX"):
            table = statement.split(" ON ", 1)[1].split("(", 1)[0]
            indexes.setdefault(table, []).append(statement)
        else:
            tables.append(statement)
    return tables, indexes


def _table_ddl(table: str) -> str:
    return next(s for s in _split_schema()[0] if s.startswith(f"CREATE TABLE {table} ("))
