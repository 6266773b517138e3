"""Child process of ``tests/test_distribute_equality.py``: the same reports on one
device and over ``--replicas`` logical CPU devices.

Logical CPU devices can only be made before TensorFlow runs its first op, so this runs
in a fresh process: ``python tests/distributed_runs.py REPLICAS OUT.json``.  For every
shipped sample model and a keras_hub GPT-2 (built from a config), it writes
``{case: {"single": report, "replicas": report}}`` (the reports' ``to_dict()``); an
optional third argument lists the sample models (all by default):
``inspect`` over several batches with per-example norms, ``hessian`` of the whole
model by Lanczos with a trace estimate, and an exact per-layer Hessian and Gauss-Newton
matrix on the MLP.

The batch sizes are chosen so that batches split unevenly across the replicas and the
last batch is shorter than the others.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from conftest import SAMPLE_MODELS, SAMPLE_PAIRS  # noqa: E402

from gradscope import _tf  # noqa: E402
from gradscope.distribute import make_strategy  # noqa: E402

BATCH_SIZE = {2: 7, 4: 6}
"""Rows per batch by replica count: 7 over 2 replicas is 4 + 3, 6 over 4 is 2+2+1+1."""

ROWS = {2: 11, 4: 11}
"""Rows used: the last batch is shorter (4 rows over 2 replicas, 5 over 4: 2+1+1+1)."""

HUB_BATCH_SIZE = {2: 4, 4: None}
"""GPT-2's 6 rows: batches of 4 and 2 over 2 replicas; one batch of 6 over 4."""


PER_SAMPLE = {"mlp", "cnn", "multi_io"}
"""Per-example norms are computed on the host either way; three models show that their
indices count over the global rows."""

TRACE = {"cnn", "multi_io"}


def _pair(run: Any, strategy: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``run(*args, **kwargs)`` on one device and on the replicas, as dictionaries."""
    started = time.perf_counter()
    pair = {
        kind: run(*args, strategy=chosen, **kwargs).to_dict()
        for kind, chosen in (("single", None), ("replicas", strategy))
    }
    print(f"{time.perf_counter() - started:6.1f} s", file=sys.stderr)
    return pair


def sample_cases(strategy: Any, replicas: int, models: list[str]) -> dict[str, Any]:
    """inspect and hessian of the sample ``models``, on one device and on the replicas."""
    from gradscope import HessianOptions, hessian_file, inspect_file

    out: dict[str, Any] = {}
    for name in models:
        model, data = (SAMPLE_MODELS / file for file in SAMPLE_PAIRS[name])
        common = {"batch_size": BATCH_SIZE[replicas], "limit": ROWS[replicas]}
        per_sample = name in PER_SAMPLE
        options = HessianOptions(
            block="model", method="lanczos", top_k=2, max_iter=30, trace=name in TRACE, probes=4
        )
        print(name, file=sys.stderr)
        out[f"inspect/{name}"] = _pair(
            inspect_file, strategy, model, data, per_sample=per_sample, **common
        )
        out[f"hessian/{name}"] = _pair(
            hessian_file, strategy, model, data, options=options, **common
        )
    exact = HessianOptions(block="layer", method="exact")
    model, data = (SAMPLE_MODELS / f for f in SAMPLE_PAIRS["mlp"])
    out["hessian-exact/mlp"] = _pair(hessian_file, strategy, model, data, options=exact, limit=11)
    ggn = HessianOptions(block="layer", method="exact", matrix="ggn")
    out["hessian-ggn/mlp"] = _pair(
        hessian_file, strategy, model, data, options=ggn, limit=11, batch_size=BATCH_SIZE[replicas]
    )
    return out


def hub_cases(strategy: Any, replicas: int) -> dict[str, Any]:
    """A keras_hub GPT-2 (padding, sample weights), built under the strategy's scope."""
    import hub_language

    from gradscope import HessianOptions, hessian, inspect

    with tempfile.TemporaryDirectory() as folder, strategy.scope():
        built = hub_language.build("gpt2", Path(folder))
    model, x, y, weight = built.model, built.inputs, built.y, built.sample_weight
    lanczos = HessianOptions(block="model", method="lanczos", top_k=2, max_iter=30)
    data = {"sample_weight": weight, "batch_size": HUB_BATCH_SIZE[replicas]}
    return {
        "inspect/gpt2": _pair(inspect, strategy, model, x, y, per_sample=True, **data),
        "hessian/gpt2": _pair(hessian, strategy, model, x, y, options=lanczos, **data),
    }


def main() -> None:
    replicas, target = int(sys.argv[1]), Path(sys.argv[2])
    models = sys.argv[3].split(",") if len(sys.argv) > 3 else list(SAMPLE_PAIRS)
    strategy = make_strategy(_tf.tensorflow(), "mirrored", replicas)
    cases = {**sample_cases(strategy, replicas, models), **hub_cases(strategy, replicas)}
    target.write_text(json.dumps(cases))


if __name__ == "__main__":
    main()
