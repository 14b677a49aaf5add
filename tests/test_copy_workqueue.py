"""The copy workers' queue: tasks before chunks, and no worker leaves while work may still come."""

from __future__ import annotations

import threading
import time

from pgshift.copy.chunks import Chunk
from pgshift.copy.pipeline import WorkQueue


def _chunk(no: int) -> Chunk:
    return Chunk("t", no, ("rowid",), None, None)


def _task(conn: object) -> None:
    """A task that does nothing."""


def test_tasks_go_before_queued_chunks() -> None:
    work = WorkQueue([_chunk(0), _chunk(1)])
    first = work.take(wait=False)
    work.put_task(_task)
    assert first == _chunk(0)
    assert work.take(wait=False) is _task
    assert work.take(wait=False) == _chunk(1)
    assert work.take(wait=False) is None


def test_a_waiting_worker_gets_what_a_finishing_item_queues() -> None:
    work = WorkQueue([_chunk(0)])
    held = work.take(wait=True)
    assert held == _chunk(0)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(work.take(wait=True)))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive()  # nothing queued, but the held chunk may still queue work
    work.put_task(_task)  # e.g. the table's keys, queued when its last chunk committed
    work.done()
    waiter.join(5)
    assert got == [_task]
    work.done()
    assert work.take(wait=True) is None  # nothing queued, nothing held: done


def test_stop_releases_waiting_workers() -> None:
    work = WorkQueue([_chunk(0)])
    work.take(wait=True)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(work.take(wait=True)))
    waiter.start()
    work.stop()
    waiter.join(5)
    assert got == [None]
