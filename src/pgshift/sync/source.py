"""The seam of sync: where changes come from (``ChangeSource``) and where they go
(``ChangeSink``). One apply loop (:func:`pgshift.sync.loop.run_loop`) drives any
pair of them.

Sources (one per kind of capture):

- :class:`pgshift.sync.sqlite_log.SqliteLogSource`: SQLite's change log
  (``_pgshift_changes``, written by triggers), read by ``seq``;
- :class:`pgshift.sync.pg_queue.PgQueueSource`: PostgreSQL's trigger queue
  (``pgshift.pg_changes``), read by ``id``;
- :class:`pgshift.sync.pg_logical.LogicalSource`: a logical replication slot
  (``test_decoding``), read by commit LSN.

Sinks: :class:`pgshift.sync.apply.PostgresSink` (SQLite's changes into
PostgreSQL, plain or mapped tables) and :class:`pgshift.sync.sqlite_sink.SqliteSink`
(PostgreSQL's changes into SQLite, plain or mapped tables).

Contracts every source keeps (checked by ``tests/sync_conformance.py``):

- **position**: an integer that only grows; every change a source returns has a
  higher position than every change acknowledged before it, in the capturing
  database's commit order (SQLite: ``seq``; the queue: ``id``; the slot: the
  commit LSN, every transaction ending in a marker change that carries it).
- **read(limit)**: the next changes after the position, oldest first, at most
  about ``limit`` (a slot returns whole transactions); ``[]`` when there is
  nothing. Reading twice without an ack returns the same changes. A read may lag
  behind commit (a slot decodes flushed WAL only); every change committed before a
  ``fence()`` is readable once the fence is placed. Changes the
  sinks wrote themselves are never returned (**echo suppression**: the SQLite
  triggers skip the applier's transactions by a flag; the queue's trigger skips
  ``pgshift.applying``; the slot skips transactions that moved the to-postgres
  checkpoint).
- **ack(outcome)**: the sink committed the batch ending at ``outcome.position``;
  the source moves past it, writing the batch record with its position where it
  keeps one (the queue: records and dequeue in one transaction; the slot: records,
  then advance). Called once per batch. A source whose position the sink keeps
  (the SQLite log: the checkpoint commits with the data in PostgreSQL) only moves
  its read position.
- **recover(record)**: exactly once across ``kill -9``. A sink that cannot commit
  the source's position with its data (SQLite cannot write PostgreSQL's queue)
  commits a *batch record* with it instead; after a crash between that commit and
  the ack, ``recover`` finishes the ack from the record, so the batch is neither
  applied twice nor lost. Returns the outcome it finished, or None for a record
  already acknowledged (calling it again is harmless).
- **fence()**: writes a marker into the capture stream and returns its position:
  every change committed before the fence has a lower position, so a loop whose
  position reached the fence has applied all of them (**fence order**).
- **stranded(upto)**: the changes captured but not acknowledged, at or below
  ``upto`` (fence markers and echoes aside): ``count``, first/last position, age
  of the oldest, count per table (``pg_capture.range_summary``'s shape).
- **rebase()**: at the flip, the changes captured before it (written while the
  other side was the system of record) become the current row of each key they
  touched; None for a source that has nothing to rebase (the SQLite log).
- **pending()**: how many changes wait (0 where that is not cheap to count).
- **horizon()**: for a run that is not ``follow``: the position to reach before
  stopping (a slot places a flush fence), or None (stop when ``read`` is empty).

A sink applies one batch in one transaction of its database (``apply``), keeps
or does not keep the position (``position``), and stores the batch record
``recover`` needs (``last_record``). ``NeedMore`` from ``apply`` asks the loop for
a longer batch (a batch cut inside a SQLite transaction whose foreign keys only
hold at its end).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pgshift.errors import PgshiftError
from pgshift.sync.common import SyncResult


class NeedMore(Exception):
    """A batch failed on a foreign key and more changes follow it: read a longer one."""


@dataclass
class Outcome:
    """What one committed batch did."""

    position: int  # the source position the batch ends at
    applied: int = 0
    parked: int = 0
    conflicts: int = 0
    record: dict[str, Any] | None = None  # the batch record, for the source's ack


@runtime_checkable
class ChangeSource(Protocol):
    """Where changes come from (see the module docstring for the contracts)."""

    direction: str

    def position(self) -> int: ...

    def seek(self, position: int) -> None:
        """Resume after ``position`` (the sink keeps it: the SQLite log)."""

    def read(self, limit: int) -> Sequence[Any]: ...

    def ack(self, outcome: Outcome) -> None: ...

    def recover(self, record: dict[str, Any] | None) -> Outcome | None: ...

    def fence(self) -> int: ...

    def stranded(self, upto: int) -> dict[str, Any]: ...

    def rebase(self) -> dict[str, Any] | None: ...

    def pending(self) -> int: ...

    def horizon(self) -> int | None: ...

    def close(self) -> None: ...


@runtime_checkable
class ChangeSink(Protocol):
    """Where changes go: one batch per transaction of the sink's database."""

    def ensure(self) -> None:
        """(Re)open what a transient failure closed; raises the transient error."""

    def position(self) -> int | None:
        """The position the sink committed with its data, or None (the source keeps it)."""

    def paused(self) -> bool:
        """``pgshift sync pause`` is in force: apply nothing."""

    def last_record(self) -> dict[str, Any] | None:
        """The batch record committed with the last batch (None: the sink keeps none)."""

    def apply(self, batch: Sequence[Any], *, final: bool = True) -> Outcome: ...

    def reset(self, exc: BaseException) -> None:
        """After a transient failure: drop connections it broke."""

    def failed(self, exc: BaseException) -> PgshiftError:
        """The error to raise for ``exc`` when the run does not retry."""

    def finish(self, result: SyncResult) -> None:
        """Fill in the run's end figures (conflicts, parked reasons)."""

    def close(self) -> None: ...
