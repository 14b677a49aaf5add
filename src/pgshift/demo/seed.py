"""The one data generator of the project: a "hyperpage-shaped" SQLite database.

Hyperpage is a job dashboard whose Drizzle-ORM schema stores timestamps as epoch-millisecond
INTEGERs, booleans as 0/1 INTEGERs, JSON as TEXT and ids as text UUIDs. ``SCHEMA_SQL`` is that
"blue" schema verbatim; :func:`seed` fills it with deterministic, realistic rows for a scale ``N``
(the number of jobs). Benchmarks, tests and the reference web app all build on it.

Guarantees:

* same ``(scale, seed)`` -> identical logical content (every value comes from ``random.Random``
  streams and a fixed base epoch, never from the wall clock);
* no orphans: every foreign key resolves, ``jobs.user_id`` is sometimes NULL;
* the file ends in WAL mode, fully checkpointed, with no ``-wal`` file left behind;
* an existing file is only replaced (atomically) when ``overwrite=True``.

Measured at scale 1,000,000 (2,210,022 rows, ~490 MB) on a 2-vCPU VM, Python 3.11, SQLite 3.40:
~15-17 s of CPU in each of the two processes, so ~16-18 s wall (~125-140k rows/s) when both
cores are free; the best run seen was 16.1 s (137k rows/s). With one core (or with
``_PARALLEL_MIN_SCALE`` not reached) it is ~23-27 s. Half of the parent's time is SQLite
placing each random v4 UUID in the jobs primary-key index (~6 us/row at 1M rows), which is kept
on purpose: rowid order follows creation time, as in a real app.

Size: ~247 MB of the file is structure (UUID text in three b-trees, history, indexes) before any
job payload, so ~490 MB at 1M jobs with ~85-byte payloads; the file grows ~linearly with scale.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pgshift.demo.seed_build import _build, _remove_with_sidecars, _use_child
from pgshift.demo.seed_rows import BASE_EPOCH_MS, _check_scale, row_counts
from pgshift.demo.seed_schema import SCHEMA_SQL, TABLES, create_schema
from pgshift.errors import SourceError, UsageError

__all__ = [
    "BASE_EPOCH_MS",
    "SCHEMA_SQL",
    "TABLES",
    "SeedResult",
    "create_schema",
    "row_counts",
    "seed",
]


@dataclass(frozen=True)
class SeedResult:
    """What :func:`seed` produced."""

    path: Path
    scale: int
    rows: dict[str, int]
    bytes: int
    seconds: float


def seed(
    path: Path,
    scale: int,
    *,
    seed: int = 42,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> SeedResult:
    """Write a fresh hyperpage-shaped SQLite database of ``scale`` jobs to ``path``.

    The file is built beside ``path`` under a temporary name and renamed into place only once it
    is complete, so a failure never leaves a half-written database nor destroys the old one.
    ``progress(table, done, total)`` is called when a table starts, about every 50k rows, and
    when it is complete. From ``_PARALLEL_MIN_SCALE`` jobs up, rows are generated in a child
    Python process while this one writes them; the content is the same either way.

    Raises :class:`~pgshift.errors.UsageError` when ``scale < 1``, when ``path`` exists and
    ``overwrite`` is false, or when ``path`` cannot be a database file, and
    :class:`~pgshift.errors.SourceError` when SQLite fails to write it (disk full, permissions).
    """
    _check_scale(scale)
    path = Path(path)
    if path.is_dir():
        raise UsageError(
            f"{path} is a directory, not a database file",
            hint=f"pgshift demo seed {path / 'hyperpage.db'}",
            operation="seed",
        )
    if path.exists() and not overwrite:
        raise UsageError(
            f"{path} already exists",
            hint="--overwrite to replace it, or choose another path",
            operation="seed",
        )
    if not path.parent.is_dir():
        raise UsageError(
            f"directory {path.parent} does not exist",
            hint=f"mkdir -p {path.parent}",
            operation="seed",
        )

    started = time.perf_counter()
    counts = row_counts(scale)
    # Not mkstemp: its 0600 mode would make the database unreadable to the app or another user.
    # 0o666 filtered by the umask is what any tool creating the file itself would get.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.seeding")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise UsageError(
            f"cannot create a file in {path.parent}: {exc.strerror}",
            hint=f"choose a directory you can write to, or check its permissions: "
                 f"ls -ld {path.parent}",
            operation="seed",
        ) from exc
    os.close(fd)
    try:
        _build(tmp, scale, seed, counts, progress, parallel=_use_child(scale))
        # A stale -wal/-shm beside the old file would be replayed onto the new one on next open.
        _remove_with_sidecars(path, keep_main=True)
        os.replace(tmp, path)
    except sqlite3.Error as exc:
        _remove_with_sidecars(tmp)
        raise SourceError(
            f"SQLite failed while writing {path}: {exc}",
            hint=f"check free space and write permission in {path.parent}",
            operation="seed",
        ) from exc
    except BaseException:
        _remove_with_sidecars(tmp)
        raise
    return SeedResult(
        path=path,
        scale=scale,
        rows=counts,
        bytes=path.stat().st_size,
        seconds=time.perf_counter() - started,
    )
