"""``pgshift verify`` after ``migrate --into-existing``: compare through the mapping.

Migrate stores each mapped table's feed (source, expressions, conversions) in
the target. Verify recreates it in its own SQLite session as TEMP views named
like the target tables (query sources are materialized once into TEMP
tables), so the segment checksums compare mapped source rows with the rows
PostgreSQL holds, column by column, with the canonical encodings of the
conversions migrate used.
"""

from __future__ import annotations

import fnmatch
import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from pgshift.errors import UsageError
from pgshift.existing import sqlfuncs
from pgshift.existing.target import read_target
from pgshift.schema.model import Column, Table
from pgshift.schema.plan import Plan
from pgshift.schema.typemap import TypeDecision
from pgshift.source.catalog import SourceColumn, SourceTable, read_catalog
from pgshift.source.snapshot import open_source
from pgshift.verify.relationships import LinkCheck, SourceCount, check_links, source_counts

PROFILE_MARK = "into_existing"


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def stored_plan(tables: list[dict[str, Any]]) -> dict[str, Any]:
    """What migrate keeps in pgshift.migrate_runs.profile for verify."""
    return {PROFILE_MARK: {"version": 1, "tables": tables}}


def is_into_existing(profile: dict[str, Any] | None) -> bool:
    """True when the stored run was a ``--into-existing`` load."""
    return bool(profile) and PROFILE_MARK in profile  # type: ignore[operator]


def verify_conversion(conversion: str, base: str) -> str:
    """The canonical encoding verify compares a mapped column with."""
    if base == "json":  # json keeps the text as given; jsonb normalizes it
        return "text"
    if conversion.partition("@")[0] == "numeric":
        return "numeric_trim"  # numeric(p, s) pads to its scale: compare by value
    return conversion


def mapped_plan(con: sqlite3.Connection, stored: dict[str, Any], *, schema: str,
                tables: list[str], exclude: list[str]) -> Plan:
    """Temp views for the stored feeds, and the Plan verify's comparers read."""
    data = stored[PROFILE_MARK]
    chosen = [t for t in data["tables"] if _chosen(t["table"], tables, exclude)]
    if tables and not chosen:
        raise UsageError(f"no loaded table matches {', '.join(tables)}")
    sqlfuncs.register(con)
    # Queries first: they name source tables the views below would shadow.
    for t in chosen:
        if t["query"] is not None:
            con.execute(f"DROP TABLE IF EXISTS temp.{q(_query_table(t))}")
            con.execute(f"CREATE TEMP TABLE {q(_query_table(t))} AS {t['query']}")
    out = []
    for t in chosen:
        src = (f"temp.{q(_query_table(t))}" if t["query"] is not None
               else f"main.{q(t['source'])}")
        cols = ", ".join(f"({c['expr']}) AS {q(c['name'])}" for c in t["columns"])
        where = f" WHERE ({t['where']})" if t["where"] else ""
        con.execute(f"DROP VIEW IF EXISTS temp.{q(t['table'])}")
        con.execute(f"CREATE TEMP VIEW {q(t['table'])} AS SELECT {cols} FROM {src}{where}")
        columns = [Column(c["name"], c["type"], c["not_null"],
                          TypeDecision(c["type"], verify_conversion(c["conversion"], c["base"]),
                                       "mapped"),
                          classes=frozenset(c["classes"]))
                   for c in t["columns"]]
        source = SourceTable(t["table"], "", [SourceColumn(c["name"], i, "", False, None, 0)
                                              for i, c in enumerate(t["columns"])], [])
        pk = [k for k in t["primary_key"] if any(c["name"] == k for c in t["columns"])]
        out.append(Table(t["table"], columns, source, primary_key=pk, rows=t["rows"]))
    return Plan(schema, out)


def mapped_checks(con: sqlite3.Connection, pg: psycopg.Connection, sqlite_path: Path,
                  stored: dict[str, Any], *, schema: str, tables: list[str],
                  exclude: list[str]) -> tuple[list[LinkCheck], list[SourceCount]]:
    """The checks that do not trust the mapping: links and per-source row counts.

    Runs in verify's SQLite session after :func:`mapped_plan` (its TEMP views and
    materialized queries); the source's structure is read on a connection of its
    own, where those views do not shadow the source tables.
    """
    feeds = [t for t in stored[PROFILE_MARK]["tables"] if _chosen(t["table"], tables, exclude)]
    structure = open_source(sqlite_path)
    try:
        catalog = read_catalog(structure)
    finally:
        structure.close()
    links = check_links(con, feeds, read_target(pg, schema), catalog)
    return links, source_counts(con, feeds)


def _query_table(t: dict[str, Any]) -> str:
    return f"_pgshift_q_{t['table']}"


def _chosen(name: str, tables: list[str], exclude: list[str]) -> bool:
    if tables and not any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in tables):
        return False
    return not any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in exclude)
