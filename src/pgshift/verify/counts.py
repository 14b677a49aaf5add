"""Row counts per table, as the demo reports them (from verify's per-table figures)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CountRow:
    table: str
    sqlite: int
    postgres: int

    @property
    def equal(self) -> bool:
        return self.sqlite == self.postgres
