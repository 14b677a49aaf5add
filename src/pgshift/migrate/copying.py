"""The copy step's bookkeeping both load paths share: what is left, and what was done.

A resumed run skips the chunks whose checkpoint committed (their figures come
from ``pgshift.migrate_chunks``); the others are the work list. Each finished
chunk adds to its table's summary and to the progress reporter.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import psycopg

from pgshift.copy import checkpoint
from pgshift.copy.checkpoint import RunRecord
from pgshift.copy.chunks import Chunk, decode_bound
from pgshift.copy.pipeline import ChunkResult
from pgshift.migrate.options import TableSummary
from pgshift.progress import Progress


def pending_chunks(coord: psycopg.Connection, run: RunRecord,
                   tables: Iterable[tuple[str, int, Sequence[str]]],
                   summaries: dict[str, TableSummary], progress: Progress,
                   ) -> dict[str, list[Chunk]]:
    """The chunks of ``(name, rows, key columns)`` not yet committed, per table.

    Committed chunks are counted into ``summaries`` and reported as progress
    already made, so a resumed run's figures and bars cover the whole table.
    """
    done = checkpoint.done_chunks(coord, run.run_id)
    todo: dict[str, list[Chunk]] = {}
    for name, rows, key in tables:
        already = 0
        for no, (lo, hi) in enumerate(run.chunks.get(name, [])):
            if (name, no) in done:
                loaded, rejected = done[(name, no)]
                summaries[name].rows += loaded
                summaries[name].rejects += rejected
                already += loaded + rejected
                continue
            todo.setdefault(name, []).append(
                Chunk(name, no, tuple(key), decode_bound(lo), decode_bound(hi)))
        progress.task(name, rows)
        if already:
            progress.advance(name, already)
    return todo


class ChunkCounter:
    """The copy pipeline's ``on_chunk``: adds each finished chunk to the figures.

    Called from the copy workers' threads; the lock keeps two chunks of one
    table from losing an addition.
    """

    def __init__(self, summaries: dict[str, TableSummary], progress: Progress) -> None:
        self.summaries, self.progress = summaries, progress
        self.lock = threading.Lock()

    def __call__(self, r: ChunkResult) -> None:
        with self.lock:
            self._add(r)

    def _add(self, r: ChunkResult) -> None:
        s = self.summaries[r.table]
        s.rows += r.rows
        s.rejects += r.rejects
        s.bytes += r.nbytes
        s.seconds += r.seconds
        self.progress.advance(r.table, r.rows + r.rejects, seconds=r.seconds)
