"""``pgshift demo`` (first form): seed, start PostgreSQL, migrate, verify.

The rollout engine will grow this into the full blue-green rehearsal; today it
proves the data path end to end on this machine with nothing installed.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pgshift.demo.seed import SeedResult, seed
from pgshift.embedded_pg import EmbeddedPostgres
from pgshift.migrate import MigrateOptions, MigrateResult, migrate
from pgshift.progress import NullProgress, Progress
from pgshift.source.snapshot import take_snapshot
from pgshift.state import StateDir
from pgshift.verify.counts import CountRow
from pgshift.verify.run import VerifyOptions, VerifyResult, verify


@dataclass
class DemoResult:
    seed: SeedResult
    migrate: MigrateResult
    counts: list[CountRow]
    postgres_version: str
    seconds: float
    verified: VerifyResult | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        identical = self.verified is None or self.verified.identical
        return all(c.equal for c in self.counts) and self.migrate.rejects == 0 and identical

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "postgres_version": self.postgres_version,
            "seed": {
                "path": str(self.seed.path),
                "scale": self.seed.scale,
                "rows": self.seed.rows,
                "bytes": self.seed.bytes,
                "seconds": round(self.seed.seconds, 3),
            },
            "migrate": self.migrate.to_dict(),
            "verify": self.verified.to_dict() if self.verified else None,
            "counts": [
                {"table": c.table, "sqlite": c.sqlite, "postgres": c.postgres, "equal": c.equal}
                for c in self.counts
            ],
        }


def run_demo(
    workdir: Path,
    scale: int,
    *,
    jobs: int = 2,
    keep: bool = False,
    progress: Progress | None = None,
) -> DemoResult:
    """Rehearse the data path in ``workdir`` (recreated) on an embedded PostgreSQL.

    ``progress`` stays open: whoever made it closes it.
    """
    progress = progress or NullProgress()
    started = time.perf_counter()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    db = workdir / "hyperpage.db"
    progress.step(f"seed {db} at scale {scale:,}")
    seeded = seed(db, scale)
    progress.step("start the embedded PostgreSQL")
    server = EmbeddedPostgres(workdir / "pg")
    server.start()
    try:
        dsn = server.create_database("hyperpage")
        # One snapshot for migrate and verify, as the rollout engine takes it: verify
        # checks exactly the rows migrate copied.
        progress.step("snapshot (one for migrate and verify)")
        snap = take_snapshot(db, StateDir(workdir / "state").snapshots, require_wal=False)
        result = migrate(
            MigrateOptions(sqlite_path=db, dsn=dsn, jobs=jobs, state_dir=workdir / "state",
                           snapshot=snap),
            progress,
        )
        # Content, not only counts: every row compared over canonical encodings.
        progress.step("verify: every row compared")
        verified = verify(VerifyOptions(sqlite_path=db, dsn=dsn, snapshot=snap))
        counts = [CountRow(v.table, v.sqlite_rows, v.postgres_rows) for v in verified.tables]
        version = server.version
    finally:
        if not keep:
            server.stop()
    return DemoResult(seeded, result, counts, version, time.perf_counter() - started, verified)
