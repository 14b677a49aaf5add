"""The one apply loop: any :class:`ChangeSource` into any :class:`ChangeSink`.

Per batch: read after the position, apply in one sink transaction, acknowledge.
Around it: ``until_seq`` (a drain stops once the position reached the fence),
``stop`` (set by a signal, a timer or the caller), pause (``pgshift sync pause``:
nothing is applied, ``follow`` waits), backoff on transient failures (a locked
SQLite file, a lost PostgreSQL session: retried with ``follow``, raised
otherwise), ``batch_lock`` (dual mode serializes the two directions' batches),
``on_batch`` after each committed batch and ``trim`` (to-sqlite ``--trim``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from pgshift.errors import ConnectError, LockedError, PgshiftError
from pgshift.sync.common import BACKOFF_MAX, MAX_BATCH_GROWTH, SyncOptions, SyncResult
from pgshift.sync.source import ChangeSink, ChangeSource, NeedMore, Outcome

# Failures a retry may cure: the checkpoint (or the batch record) makes a retried
# batch harmless.
TRANSIENT: tuple[type[BaseException], ...] = (
    sqlite3.OperationalError, psycopg.OperationalError, ConnectError, LockedError)

OnBatch = Callable[[SyncResult, Sequence[Any]], None]


def run_loop(source: ChangeSource, sink: ChangeSink, opts: SyncOptions, result: SyncResult,
             *, stop: threading.Event, on_batch: OnBatch | None = None,
             batch_lock: threading.Lock | None = None,
             trim: Callable[[], int] | None = None) -> SyncResult:
    """Apply batches until done (see the module docstring); fills in ``result``."""
    started = time.perf_counter()
    kept = sink.position()
    if kept is not None:
        source.seek(kept)
    _count(result, source.recover(sink.last_record()))
    result.last_seq = source.position()
    until = opts.until_seq
    if until is None and not opts.follow:
        until = source.horizon()
    backoff = opts.poll
    failed = False
    while not stop.is_set():
        try:
            sink.ensure()
            kept = sink.position()
            if kept is not None:
                source.seek(kept)
            if failed:
                # a batch the sink committed before the failure, not acknowledged
                _count(result, source.recover(sink.last_record()))
                failed = False
            if until is not None and source.position() >= until:
                break
            if sink.paused():
                result.paused = True
                if not opts.follow:
                    break
                stop.wait(opts.poll)
                continue
            result.paused = False
            batch_started = time.perf_counter()
            with batch_lock or contextlib.nullcontext():
                batch, outcome = _one(source, sink, opts)
                if outcome is not None:
                    source.ack(outcome)
        except TRANSIENT as exc:
            if not opts.follow:
                if isinstance(exc, PgshiftError):
                    raise  # a held lock, a refused connection: already said well
                raise sink.failed(exc) from exc
            sink.reset(exc)
            failed = True
            stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        except psycopg.Error as exc:
            raise sink.failed(exc) from exc
        backoff = opts.poll
        if outcome is None:
            if not opts.follow and until is None:
                break
            stop.wait(opts.poll)
            continue
        _count(result, outcome)
        result.last_batch_seconds = time.perf_counter() - batch_started
        if trim is not None:
            try:
                result.trimmed += trim()
            except sqlite3.OperationalError as exc:
                if not opts.follow:
                    raise sink.failed(exc) from exc
                # a busy file: the batch is applied; the next one trims again
        if on_batch is not None:
            on_batch(result, batch)
    result.pending = source.pending()
    sink.finish(result)
    result.seconds = time.perf_counter() - started
    return result


def _one(source: ChangeSource, sink: ChangeSink, opts: SyncOptions
         ) -> tuple[Sequence[Any], Outcome | None]:
    """Read and apply one batch; a sink's NeedMore doubles the batch, up to a bound."""
    limit = opts.batch_size
    while True:
        batch = source.read(limit)
        if not batch:
            return batch, None
        final = len(batch) < limit or limit >= MAX_BATCH_GROWTH * opts.batch_size
        try:
            return batch, sink.apply(batch, final=final)
        except NeedMore:
            limit *= 2


def _count(result: SyncResult, outcome: Outcome | None) -> None:
    if outcome is None:
        return
    result.batches += 1
    result.applied += outcome.applied
    result.parked += outcome.parked
    result.conflicts += outcome.conflicts
    result.last_seq = outcome.position
