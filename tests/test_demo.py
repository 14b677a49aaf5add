"""``pgshift demo`` end to end: a real rollout under 300 requests/s, clean and with a fault.

The README's main command: these run it as a user would (the CLI, ``--json``) and check the
figures the issue asks for, not just the exit code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pgshift.demo.run import run_demo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

KEYS = {"requests", "failed_requests", "lost_writes", "steps", "flipped", "rolled_back",
        "rollback_seconds", "fence_hold_ms", "seconds"}


def test_demo_rolls_out_with_no_failed_request_and_no_lost_write() -> None:
    # Not tmp_path: pytest keeps that 0700, and the server runs as its own user when root.
    with tempfile.TemporaryDirectory(prefix="pgshift-demo-") as tmp:
        # as the README runs it: the default (relative) --workdir, from some directory
        proc = subprocess.run([sys.executable, "-m", "pgshift.cli.main", "demo", "--json",
                               "--scale", "2000"],
                              capture_output=True, text=True, timeout=380, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert set(out) >= KEYS
    assert out["status"] == "done" and out["flipped"] and not out["rolled_back"]
    assert out["failed_requests"] == 0 and out["lost_writes"] == 0, out["failures"]
    assert out["requests"] > 5000 and out["writes_acknowledged"] > 1000
    assert [s["weight"] for s in out["steps"]] == [10, 25, 50, 100]
    for s in out["steps"]:
        assert {"weight", "requests", "error_rate", "p99_ms", "decision"} <= set(s)
        assert s["decision"] == "pass"
    assert out["fence_hold_ms"] < 1000
    # the rollback drill after the first step: measured on the live system
    assert out["rollback_was_drill"] and out["rollback_traffic_back_ms"] < 1000
    assert out["rollback_seconds"] < 10


def test_demo_with_failing_green_rolls_back_by_itself() -> None:
    with tempfile.TemporaryDirectory(prefix="pgshift-demo-") as tmp:
        result = run_demo(Path(tmp) / "demo", 2000, fault="green-errors")
    out = result.to_dict()
    assert result.ok, out
    assert out["status"] == "rolled_back" and not out["flipped"]
    assert out["lost_writes"] == 0 and out["ledger_checked_against"] == "sqlite"
    assert out["failed_requests"] > 0  # green's injected errors, served before the rollback
    assert out["rollback_traffic_back_ms"] < 1000 and out["rollback_seconds"] < 10
    assert not out["rollback_was_drill"]
