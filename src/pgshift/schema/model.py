"""The target schema as plain data: what the plan shows and the DDL renders."""

from __future__ import annotations

from dataclasses import dataclass, field

from pgshift.schema.typemap import TypeDecision
from pgshift.source.catalog import SourceTable


def qident(name: str) -> str:
    """A PostgreSQL identifier, always quoted so the exact SQLite spelling survives."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Column:
    name: str
    pg_type: str
    not_null: bool
    decision: TypeDecision
    default: str | None = None  # translated DEFAULT expression
    generated: str | None = None  # translated STORED generation expression
    # From the profile of the snapshot being copied (exact, it never changes):
    clean: bool = False  # no value needs the slow form, so the copy skips per-row checks
    nulls: int = 0
    nul_texts: int = 0  # texts with a NUL byte: always routed to the slow form (a reject)
    classes: frozenset[str] = frozenset()  # storage classes present (verify orders keys by them)
    # The name in PostgreSQL (schema.names): differs from ``name`` only past 63 bytes.
    pg_name: str = ""

    def __post_init__(self) -> None:
        self.pg_name = self.pg_name or self.name

    @property
    def copied(self) -> bool:
        """Generated columns are computed by PostgreSQL, never loaded."""
        return self.generated is None


@dataclass
class Index:
    name: str
    table: str
    unique: bool
    parts: list[str]  # rendered key parts (quoted column or (expression), with DESC)
    where: str | None = None
    source_name: str = ""  # the SQLite name when ``name`` was shortened


@dataclass
class Check:
    name: str | None
    expr: str


@dataclass
class ForeignKey:
    name: str | None
    columns: list[str]
    ref_table: str
    ref_columns: list[str]
    on_update: str
    on_delete: str
    deferred: bool = False
    # PostgreSQL names of the referenced table and columns (schema.names).
    pg_ref_table: str = ""
    pg_ref_columns: list[str] = field(default_factory=list)


@dataclass
class Table:
    name: str
    columns: list[Column]
    source: SourceTable
    primary_key: list[str] = field(default_factory=list)
    pk_name: str | None = None
    uniques: list[tuple[str | None, list[str]]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    indexes: list[Index] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    identity_column: str | None = None
    sequence_floor: int = 0  # sqlite_sequence value: identity must restart above it
    rows: int = 0
    pg_name: str = ""  # the name in PostgreSQL (schema.names)
    # --fill-null-keys: rows whose key is NULL get identity values past the maximum.
    fill_null_keys: bool = False

    def __post_init__(self) -> None:
        self.pg_name = self.pg_name or self.name

    def pg(self, column: str) -> str:
        """The PostgreSQL name of the source column ``column``."""
        return self.column(column).pg_name

    @property
    def copy_columns(self) -> list[Column]:
        return [c for c in self.columns if c.copied]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass
class View:
    name: str
    sql: str  # translated SELECT


@dataclass
class Note:
    """Something the user must read: an anomaly in the data or a translation gap."""

    level: str  # "anomaly", "untranslated", "warning", "info"
    obj: str  # table, table.column, index or view name
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"level": self.level, "object": self.obj, "message": self.message}
