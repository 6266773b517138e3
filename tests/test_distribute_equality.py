"""Identical to one device: every reported quantity over 2 and 4 replicas (issue 12).

``tests/distributed_runs.py`` runs, in a fresh process (logical CPU devices must be made
before TensorFlow starts), ``inspect`` and ``hessian`` on every sample model and on a
keras_hub GPT-2, once on one device and once over ``--replicas`` logical CPU devices,
with batches that split unevenly and a short last batch.  The single-device numbers
are checked against independent references by the rest of the suite; here every
number of the distributed report must equal them, to float32 reduction-order error.

The tolerance: ``1e-5`` relative, plus, for a statistic whose value is much smaller
than the tensor it describes (a mean of gradients that nearly cancel, a spread), an
absolute ``1e-5`` of that tensor's largest magnitude (its ``max_abs``/``l2``): both
devices sum the same float32 terms in a different order, so the rounding is relative
to the terms, not to their (cancelling) sum.
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
from conftest import SAMPLE_PAIRS

ROOT = Path(__file__).resolve().parent.parent
RTOL = 1e-5
SKIPPED = {"seconds", "notes", "method_note"}
"""Timings, and the notes that say how the report was computed (the replicas')."""


RUNS = {2: ",".join(SAMPLE_PAIRS), 4: "mlp,cnn,multi_io"}
"""Every sample model over 2 replicas; three of them (and GPT-2 on both) over 4."""


@pytest.fixture(scope="module", params=sorted(RUNS), ids=lambda r: f"{r}-replicas")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    target = tmp_path_factory.mktemp("distributed") / "runs.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    script = str(ROOT / "tests" / "distributed_runs.py")
    done = subprocess.run(
        [sys.executable, script, str(request.param), str(target), RUNS[request.param]],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(target.read_text())


def _scale(node: dict[str, Any]) -> float:
    """The largest magnitude among a statistics object's own numbers."""
    values = [abs(v) for v in node.values() if isinstance(v, float) and math.isfinite(v)]
    return max(values, default=0.0)


def _noise_paths(report: dict[str, Any]) -> set[str]:
    """Variables whose gradient is zero up to float32 rounding (a key bias under a
    softmax, say): below ``1e-6`` of the global norm, their norms, spreads and top
    examples are rounding noise on both sides and are compared as such."""
    floor = 1e-6 * report.get("global_grad_norm", 0.0)
    return {
        row["path"]
        for row in report.get("variables", [])
        if row["grad"] is not None and row["grad"]["l2"] < floor
    }


def _differences(single: Any, replicas: Any, path: str, scale: float, noise: set[str]) -> list[str]:
    """Every place where the two reports differ beyond the tolerance."""
    if isinstance(single, dict):
        if single.get("path") in noise:
            return []
        keys = set(single) - SKIPPED
        if keys != set(replicas) - SKIPPED:
            return [f"{path}: keys {sorted(keys ^ (set(replicas) - SKIPPED))}"]
        inner = max(scale, _scale(single))
        return [
            d
            for key in sorted(keys)
            for d in _differences(single[key], replicas[key], f"{path}/{key}", inner, noise)
        ]
    if isinstance(single, list):
        if len(single) != len(replicas):
            return [f"{path}: lengths {len(single)} != {len(replicas)}"]
        return [
            d
            for i, (a, b) in enumerate(zip(single, replicas, strict=True))
            for d in _differences(a, b, f"{path}[{i}]", scale, noise)
        ]
    if isinstance(single, float) and isinstance(replicas, float | int):
        if math.isnan(single) and math.isnan(replicas):
            return []
        if math.isclose(single, replicas, rel_tol=RTOL, abs_tol=RTOL * scale):
            return []
        return [f"{path}: {single!r} != {replicas!r}"]
    return [] if single == replicas else [f"{path}: {single!r} != {replicas!r}"]


def _headline(report: dict[str, Any]) -> list[tuple[float, float]]:
    """The numbers the issue names, each with the scale its rounding is relative to:
    the loss; each gradient norm (relative to itself, or for a gradient that is zero
    up to rounding, to the global norm); each eigenvalue (relative to the block's
    largest: an eigenvalue moves by at most the norm of the matrix's rounding)."""
    numbers = [(report["loss"]["value"], abs(report["loss"]["value"]))]
    global_norm = report.get("global_grad_norm", 0.0)
    numbers += [
        (row["grad"]["l2"], max(row["grad"]["l2"], 1e-3 * global_norm))
        for row in report.get("variables", [])
        if row["grad"]
    ]
    for block in report.get("blocks", []):
        values = [*block["eigenvalues"], block["min_eigenvalue"]]
        top = max(abs(v) for v in values)
        numbers += [(v, top) for v in values]
    return numbers


@pytest.mark.slow
def test_every_reported_quantity_equals_one_device(runs: dict[str, Any]) -> None:
    problems = [
        difference
        for case, pair in runs.items()
        for difference in _differences(
            pair["single"], pair["replicas"], case, 0.0, _noise_paths(pair["single"])
        )
    ]
    assert not problems, "\n".join(problems[:40])


@pytest.mark.slow
def test_loss_norms_and_eigenvalues_are_equal_to_1e5_relative(runs: dict[str, Any]) -> None:
    for case, pair in runs.items():
        single, replicas = _headline(pair["single"]), _headline(pair["replicas"])
        assert len(single) > 1, case
        for (a, scale), (b, _) in zip(single, replicas, strict=True):
            assert abs(b - a) <= RTOL * scale, (case, a, b)


@pytest.mark.slow
def test_the_runs_split_unevenly_and_say_so(runs: dict[str, Any]) -> None:
    """The distributed reports were computed over the replicas (their note), on batches
    whose last one is shorter and splits unevenly."""
    report = runs["inspect/mlp"]["replicas"]
    notes = report["model"]["notes"]
    assert any("replicas (MirroredStrategy)" in note for note in notes)
    batches = report["batches"]
    assert (batches["count"], batches["rows"]) == (2, 11)  # the last batch is shorter
