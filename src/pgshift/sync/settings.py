"""Per-table sync settings: the ``tables:`` section of the cutover file.

Each table may declare (defaults in brackets)::

    tables:
      jobs:
        kind: queue              # plain | queue | counter          [plain]
        green_writes: forbid     # allow | forbid                   [allow]
      tool_configs:
        writes: dual-writer      # single-writer | dual-writer      [single-writer]
        conflict: last-writer-wins   # sor-wins | last-writer-wins | blue-wins | green-wins
                                                                    # [sor-wins]

Refused combinations (the reason is part of the message, and ``pgshift sync plan``
prints it):

- ``writes: dual-writer`` on ``kind: queue`` or ``kind: counter``: a job claimed on
  both sides or a lost decrement is not a conflict, it is a bug;
- ``writes: dual-writer`` with ``green_writes: forbid``: green could not write the
  table it is declared to write.

``last-writer-wins`` compares capture times taken from two clocks (blue's host for
SQLite, the PostgreSQL server for PostgreSQL): use it only where those clocks are
trusted (NTP-synchronised, same order of magnitude as the writes' spacing).

The models are self-contained (pydantic v2, no pgshift imports) so the cutover
file's model (``config.py``, rollout issue) can embed :class:`TableSettings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator

Kind = Literal["plain", "queue", "counter"]
GreenWrites = Literal["allow", "forbid"]
Writes = Literal["single-writer", "dual-writer"]
Policy = Literal["sor-wins", "last-writer-wins", "blue-wins", "green-wins"]
Side = Literal["sqlite", "postgres"]

SQLITE: Side = "sqlite"
POSTGRES: Side = "postgres"

POLICY_HELP = {
    "sor-wins": "the system of record's version wins (SQLite before the flip, PostgreSQL "
                "after)",
    "last-writer-wins": "the later capture time wins; only where blue's and PostgreSQL's "
                        "clocks are trusted; an unknown time falls back to sor-wins",
    "blue-wins": "SQLite's version wins",
    "green-wins": "PostgreSQL's version wins",
}


class TableSettings(BaseModel):
    """How sync treats one table (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = "plain"
    green_writes: GreenWrites = "allow"
    writes: Writes = "single-writer"
    conflict: Policy = "sor-wins"

    @model_validator(mode="after")
    def _refuse(self, info: ValidationInfo) -> TableSettings:
        if not (info.context or {}).get("lenient"):
            reason = self.refusal()
            if reason:
                raise ValueError(reason)
        return self

    def refusal(self) -> str | None:
        """Why this combination is refused, or None."""
        if self.writes == "dual-writer" and self.kind in ("queue", "counter"):
            return (f"writes: dual-writer is refused for kind: {self.kind}: a job claimed on "
                    "both sides or a lost decrement is not a conflict, it is a bug")
        if self.writes == "dual-writer" and self.green_writes == "forbid":
            return ("writes: dual-writer is refused with green_writes: forbid: green could "
                    "not write the table it is declared to write")
        return None

    @property
    def dual(self) -> bool:
        return self.writes == "dual-writer"


DEFAULT = TableSettings()


def winner(policy: str, sor: str, *, sqlite_ts: int | None = None,
           postgres_ts: int | None = None) -> tuple[Side, str]:
    """(the side whose version wins, the rule that decided) for one conflict.

    ``sor`` is the system of record (``sqlite`` before the flip, ``postgres`` after,
    or what ``--sor`` says in dual mode). Capture times are ms since the epoch; for
    ``last-writer-wins`` an unknown time on either side (PostgreSQL rows green
    wrote on a table without PostgreSQL capture) or a tie falls back to the
    system of record, and the rule says so.
    """
    sor_side: Side = SQLITE if sor == SQLITE else POSTGRES
    if policy == "blue-wins":
        return SQLITE, policy
    if policy == "green-wins":
        return POSTGRES, policy
    if policy == "last-writer-wins":
        if sqlite_ts is None or postgres_ts is None:
            return sor_side, "last-writer-wins: time unknown, sor-wins"
        if sqlite_ts == postgres_ts:
            return sor_side, "last-writer-wins: same time, sor-wins"
        return (SQLITE if sqlite_ts > postgres_ts else POSTGRES), policy
    return sor_side, "sor-wins"


class TablesFileError(ValueError):
    """A tables file that cannot be used; the message is one line."""


def parse(data: Any, captured: list[str] | None = None, *,
          lenient: bool = False) -> dict[str, TableSettings]:
    """Settings per table from a cutover file's data (its ``tables:`` key) or a bare
    ``tables:`` mapping. Tables not named get the defaults.

    Raises :class:`TablesFileError` for unknown keys, bad values, tables not in
    ``captured`` (when given), and, unless ``lenient``, refused combinations.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TablesFileError("expected a mapping with a 'tables:' key, or a mapping of "
                              "table names")
    tables = data.get("tables", data) if "tables" in data else data
    if "tables" not in data and any(k in data for k in ("name", "source", "target")):
        tables = {}  # a full cutover file without a tables: section
    if tables is None:
        tables = {}
    if not isinstance(tables, dict):
        raise TablesFileError("'tables:' must be a mapping of table names to settings")
    out: dict[str, TableSettings] = {}
    for name, raw in tables.items():
        if not isinstance(name, str):
            raise TablesFileError(f"table name {name!r} is not a string")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise TablesFileError(f"tables.{name}: expected a mapping of settings, "
                                  f"not {raw!r}")
        try:
            out[name] = TableSettings.model_validate(raw, context={"lenient": lenient})
        except ValidationError as exc:
            raise TablesFileError(f"tables.{name}: {_one_line(exc)}") from None
    if captured is not None:
        unknown = sorted(set(out) - set(captured))
        if unknown:
            raise TablesFileError(
                f"tables not captured by sync: {', '.join(unknown)} (captured: "
                f"{', '.join(sorted(captured)) or 'none'})")
        out = {n: out.get(n, DEFAULT) for n in sorted(captured)}
    return out


def load(path: Path, captured: list[str] | None = None, *,
         lenient: bool = False) -> dict[str, TableSettings]:
    """:func:`parse` of a YAML file (a cutover file, or just a ``tables:`` mapping)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TablesFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TablesFileError(f"{path} is not a text file (UTF-8 YAML expected)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TablesFileError(f"{path} is not valid YAML{where}") from None
    return parse(data, captured, lenient=lenient)


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (known: kind, green_writes, writes, conflict)"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
