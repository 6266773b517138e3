"""Peak memory and CPU time of one compiled gradient step, after loading: where gradscope's
extra cost on a large model comes from.

    python bench/step_memory_variants.py MODE MODEL.keras BATCH.npz

MODE is one of:

* ``baseline``: one ``tf.function`` with a ``GradientTape`` over ``model.compute_loss``,
  the gradients of the trainable variables fetched to numpy (as
  bench/baseline_weight_grads.py --numpy);
* ``gradscope``: ``GradientEngine.run``, as ``gradscope inspect`` runs it;
* ``cheapstats``: the same engine with ``stats.batch_stats`` replaced by one float32 sum
  per tensor (every gradient, activation gradients included, is still computed and
  consumed; only the statistics are trivial);
* ``grappler``: the engine with TensorFlow's graph optimizer on (``optimize_graph=True``);
* ``xlastats``: the engine with each table of statistics compiled by XLA
  (``jit_compile=True`` on ``stats.batch_stats``).

Every mode loads the model with gradscope's loader (so the base is the same), then runs
the step twice.  For each run it prints the resident memory before it, the peak during
it (Linux: the peak is restarted through ``/proc/self/clear_refs``) and the CPU seconds.
Run one mode per fresh process: the allocator's state carries over between runs.
bench/README.md (the GPT-2 section) gives the numbers.  A diagnostic, not a benchmark
of record: it replaces a gradscope function in ``cheapstats`` mode.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
MODES = ("baseline", "gradscope", "cheapstats", "grappler", "xlastats")


def memory_gb() -> tuple[float, float]:
    """Current and peak resident memory (VmRSS, VmHWM) in GB."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1e6
    return values["VmRSS"], values["VmHWM"]


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def cheap_batch_stats(tensors: list[Any], *, dead_units: bool = False, reducer: Any = None) -> Any:
    """Stand-in for ``stats.batch_stats``: each tensor's float32 sum, in every field."""
    from gradscope import _tf, stats

    tf = _tf.tensorflow()
    if not tensors:
        return tf.zeros([0, stats.N_FIELDS], tf.float64)
    sums = tf.cast(tf.stack([tf.reduce_sum(t) for t in tensors]), tf.float64)
    return tf.tile(sums[:, None], [1, stats.N_FIELDS])


def make_step(mode: str, model: Any, signature: Any, spec: Any, batch: Any) -> Callable[[], Any]:
    import numpy as np

    from gradscope import _tf, stats
    from gradscope.engine import gradients

    tf = _tf.tensorflow()
    if mode == "baseline":
        inputs, targets, _ = gradients.batch_tensors(batch, True)
        x, y = signature.pack_inputs(inputs), signature.pack_outputs(targets)

        @tf.function
        def step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                y_pred = model(x, training=False)
                loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
            return tape.gradient(loss, model.trainable_variables)

        return lambda: [np.asarray(tf.convert_to_tensor(g)) for g in step(x, y)]
    if mode == "cheapstats":
        stats.batch_stats = cheap_batch_stats  # gradients.py calls stats.batch_stats
    if mode == "xlastats":
        exact = stats.batch_stats
        compiled = {}

        def xla_batch_stats(
            tensors: list[Any], *, dead_units: bool = False, reducer: Any = None
        ) -> Any:
            if dead_units not in compiled:
                compiled[dead_units] = tf.function(
                    lambda ts: exact(list(ts), dead_units=dead_units),
                    jit_compile=True,
                    autograph=False,
                )
            return compiled[dead_units](tuple(tensors)) if tensors else exact(tensors)

        stats.batch_stats = xla_batch_stats
    engine = gradients.GradientEngine(model, signature, spec, optimize_graph=mode == "grappler")
    return lambda: engine.run(batch)


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in MODES:
        sys.exit(f"usage: python bench/step_memory_variants.py {'|'.join(MODES)} MODEL BATCH")
    mode, model_path, batch_path = sys.argv[1:]
    from gradscope.loading.data import load_batch
    from gradscope.loading.models import load_model
    from gradscope.loading.signature import model_signature
    from gradscope.losses import resolve_loss

    start = time.process_time()
    model = load_model(model_path).model
    signature = model_signature(model)
    batch = load_batch(batch_path, signature)
    spec = resolve_loss(model, signature.output_names, None, True)
    rss, peak = memory_gb()
    print(
        f"{mode}: loaded in {time.process_time() - start:.1f} s CPU; RSS {rss:.2f} GB, "
        f"peak so far {peak:.2f} GB"
    )
    step = make_step(mode, model, signature, spec, batch)
    for run in (1, 2):
        gc.collect()
        base = memory_gb()[0]
        reset_peak()
        cpu = time.process_time()
        result = step()
        rss, peak = memory_gb()
        print(
            f"  run {run}: RSS before {base:.2f} GB, peak {peak:.2f} GB (+{peak - base:.2f}), "
            f"after {rss:.2f} GB, CPU {time.process_time() - cpu:.1f} s"
        )
        del result
    sys.stdout.flush()
    os._exit(0)  # skip TensorFlow's slow interpreter teardown


if __name__ == "__main__":
    main()
