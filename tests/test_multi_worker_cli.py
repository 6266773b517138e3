"""``gradscope inspect``/``hessian --strategy multi-worker`` on a real two-process cluster.

Two worker processes on 127.0.0.1 (free ports, ``TF_CONFIG``) run the same command; the
chief's JSON must equal a single-process run of the same command, and the other worker
must print nothing to stdout.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from workers import run_workers

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
INSPECT = ["inspect", "sample_models/mlp.keras", "--data", "sample_models/mlp.npz",
           "--batch-size", "7", "--format", "json"]  # fmt: skip
HESSIAN = ["hessian", "sample_models/cnn.keras", "--data", "sample_models/cnn.npz",
           "--batch-size", "6", "--block", "model", "--method", "lanczos", "--top-k", "2",
           "--max-iter", "30", "--format", "json"]  # fmt: skip


def _single(command: list[str]) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "gradscope", *command],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def _numbers(node: Any) -> list[float]:
    """Every float of a report, in order (timings and notes left out)."""
    if isinstance(node, dict):
        return [x for k, v in node.items() if k not in ("seconds", "notes") for x in _numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in _numbers(v)]
    return [node] if isinstance(node, float) and math.isfinite(node) else []


@pytest.mark.slow
@pytest.mark.parametrize("command", [INSPECT, HESSIAN], ids=["inspect", "hessian"])
def test_chief_report_equals_one_process(command: list[str]) -> None:
    argv = [sys.executable, "-m", "gradscope", *command, "--strategy", "multi-worker"]
    chief, other = run_workers(argv, count=2, timeout=600, env=ENV, cwd=ROOT)
    assert chief.returncode == 0, chief.stderr[-2000:]
    assert other.returncode == 0, other.stderr[-2000:]
    assert other.stdout == ""
    distributed, single = json.loads(chief.stdout), _single(command)
    assert any("2 replicas" in note for note in distributed["model"]["notes"])
    a, b = _numbers(single), _numbers(distributed)
    assert len(a) == len(b) > 5
    scale = max(abs(x) for x in a)
    for x, y in zip(a, b, strict=True):
        assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-5 * scale), (x, y)
