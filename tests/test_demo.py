"""``pgshift demo`` end to end at a small scale: seed, embedded PostgreSQL, migrate, verify."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from pgshift.demo.run import run_demo

pytestmark = [pytest.mark.integration, pytest.mark.data]


def test_demo_moves_and_verifies_every_row() -> None:
    # Not tmp_path: pytest keeps that 0700, and the server runs as its own user when root.
    with tempfile.TemporaryDirectory(prefix="pgshift-demo-") as tmp:
        result = run_demo(Path(tmp) / "demo", 500)
    assert result.ok, result.to_dict()
    assert result.verified is not None and result.verified.identical
    assert sum(c.postgres for c in result.counts) == sum(result.seed.rows.values())
    assert result.migrate.rejects == 0
