"""The mapping file: how each target table is fed from SQLite (docs/mapping.md).

A target table takes its rows from one SQLite table (``from:``) or from a
SQLite ``query:``; each target column from a source column or a SQLite
expression over the source row. For tables ``pgshift sync`` carries back to
SQLite after the flip, ``reverse:`` gives each source column as a PostgreSQL
expression over the target row and ``key:`` pairs the keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pgshift.errors import UsageError

EPOCH_UNITS = ("epoch_s", "epoch_ms", "epoch_us")


class ColumnMap(BaseModel):
    """One target column: a source column, a SQLite expression, or the PostgreSQL default."""

    model_config = ConfigDict(extra="forbid")

    expr: str | None = None  # a source column name or a SQLite expression over the row
    convert: Literal["epoch_s", "epoch_ms", "epoch_us"] | None = None
    assume_tz: str | None = None  # zone of offset-free text timestamps
    default: bool = False  # leave it to the column's DEFAULT / identity

    @field_validator("expr")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("expression is empty")
        return v


class TableMap(BaseModel):
    """How one target table is fed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str | None = Field(default=None, alias="from")  # a source table
    query: str | None = None  # or a SQLite SELECT (joins, window functions)
    where: str | None = None  # SQLite predicate over the source row
    columns: dict[str, ColumnMap] = Field(default_factory=dict)
    assume_tz: str | None = None
    # For tables pgshift sync carries back to SQLite after the flip:
    sync: bool = False
    key: dict[str, str] = Field(default_factory=dict)  # source key column -> target column
    reverse: dict[str, str] = Field(default_factory=dict)  # source column -> PostgreSQL expr
    skip: bool = False  # do not load this target table
    # Source columns deliberately not loaded: without this, a source column that feeds
    # nothing is a warning (and an error with --strict).
    drop: list[str] = Field(default_factory=list)
    # A query's base table (default: the first table of its FROM): its row count and
    # the rows the query leaves out are reported.
    base: str | None = None
    # target foreign-key column(s) -> the source column(s) holding the same reference
    # ("a, b" for composite keys); verify checks each link (default: the source's FKs).
    relationships: dict[str, str] = Field(default_factory=dict)

    @field_validator("columns", mode="before")
    @classmethod
    def _short_forms(cls, v: Any) -> Any:
        # `col: source_name` and `col: null` (take the default) are the common forms.
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for name, spec in v.items():
            if spec is None:
                out[name] = {"default": True}
            elif isinstance(spec, str | int | float) and not isinstance(spec, bool):
                out[name] = {"expr": str(spec)}
            else:
                out[name] = spec
        return out


class Mapping(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    assume_tz: str | None = None
    strict: bool = False  # as --strict: a source column feeding nothing is a plan error
    tables: dict[str, TableMap] = Field(default_factory=dict)


def load_mapping(path: Path) -> Mapping:
    """Parse and check a mapping file's shape; one clear line per problem (exit 2)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"mapping file {path} does not exist",
                         hint="pass the path of your mapping.yaml (see docs/mapping.md)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"mapping file {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"mapping file {path} is not valid YAML{where}: "
                         f"{getattr(exc, 'problem', exc)}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(f"mapping file {path}: expected a mapping with a `tables:` key",
                         hint="see docs/mapping.md for the format")
    try:
        mapping = Mapping.model_validate(raw)
    except ValidationError as exc:
        # Every shape problem at once: one round of edits fixes them all.
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
            lines.append(f"mapping file {path}: {loc}: {err['msg']}")
        message = lines[0] if len(lines) == 1 else (f"{len(lines)} problems:\n  "
                                                    + "\n  ".join(lines))
        raise UsageError(message, hint="see docs/mapping.md for the format") from exc
    problems = []
    for name, t in mapping.tables.items():
        if t.skip:
            continue
        if t.from_ and t.query:
            problems.append(f"mapping file {path}: tables.{name}: give `from:` or `query:`, "
                            "not both")
        if t.base and not t.query:
            problems.append(f"mapping file {path}: tables.{name}: `base:` names the table "
                            "a `query:` reads; this table has no query")
        if t.sync and (not t.key or not t.reverse):
            problems.append(f"mapping file {path}: tables.{name}: `sync: true` needs `key:` "
                            "and a `reverse:` for every source column")
    if problems:
        sync = any("sync: true" in p for p in problems)
        raise UsageError(problems[0] if len(problems) == 1 else
                         f"{len(problems)} problems:\n  " + "\n  ".join(problems),
                         hint="pgshift sync carries this table back to SQLite after the flip; "
                              "see docs/mapping.md#reverse" if sync and len(problems) == 1
                         else "see docs/mapping.md for the format")
    return mapping
