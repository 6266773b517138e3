"""Phase timings, in one fresh process, of gradscope's inspect pipeline or of the baseline.

    python bench/profile_phases.py gradscope MODEL.keras BATCH.npz
    python bench/profile_phases.py baseline  MODEL.keras BATCH.npz [--numpy]

gradscope: the steps of ``gradscope.inspect_file`` done one by one through gradscope's
own functions (nothing is changed), with the compiled step traced explicitly
(``get_concrete_function``) so that tracing, the first execution (graph instantiation:
Grappler, kernel creation) and a second, steady-state execution are timed apart.
baseline: the same phases for bench/baseline_weight_grads.py's step (``--numpy``: its
gradients fetched to numpy, as ``baseline_weight_grads.py --numpy`` does).

Each phase shows its wall and CPU seconds (CPU: this process's user+sys, steadier than
wall time on a busy machine), the resident memory at its end and its peak during the
phase (Linux: the peak is restarted at every phase through ``/proc/self/clear_refs``).
"interpreter start-up" is the time from the process's start to the first phase.  Run by
bench/inspect_resnet50.py --profile and bench/inspect_gpt2.py --profile.
"""

from __future__ import annotations

import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

T0 = time.perf_counter()
PHASES: list[tuple[str, float, float, float, float]] = []
_last = (T0, time.process_time())


def _status_gb() -> tuple[float, float] | None:
    """Current and peak resident memory of this process in GB (Linux), else None."""
    try:
        values = {}
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) / 1e6
        return values["VmRSS"], values["VmHWM"]
    except (OSError, KeyError, ValueError):
        return None


def _reset_peak() -> None:
    """Restart the peak (VmHWM) at the current RSS, so that each phase shows its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def mark(name: str) -> None:
    """Record the phase that just ended: wall and CPU seconds, RSS at its end and its peak.

    Without ``/proc`` the peak is the process's peak so far (``ru_maxrss``).
    """
    global _last
    now, cpu = time.perf_counter(), time.process_time()
    status = _status_gb()
    if status is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        status = (float("nan"), peak)
    PHASES.append((name, now - _last[0], cpu - _last[1], *status))
    _reset_peak()
    _last = (time.perf_counter(), time.process_time())


def graph_size(concrete) -> str:  # type: ignore[no-untyped-def]
    ops = concrete.graph.get_operations()
    return f"{len(ops)} ops in the traced graph"


def profile_gradscope(model_path: str, batch_path: str) -> list[str]:
    import gradscope.cli  # noqa: F401  (typer, what `python -m gradscope` imports first)

    mark("import gradscope.cli (typer)")
    from gradscope import _tf

    _tf.keras()
    mark("import tensorflow + keras")
    from gradscope import session
    from gradscope.commands.inspect.run import build_report
    from gradscope.engine.gradients import GradientEngine
    from gradscope.loading.data import load_batch
    from gradscope.loading.models import load_model
    from gradscope.loading.signature import model_signature
    from gradscope.losses import resolve_loss
    from gradscope.render import OutputFormat, render

    mark("import gradscope.session etc.")
    _tf.keras().utils.set_random_seed(0)  # as inspect_file does (--seed 0)
    loaded = load_model(model_path)
    model = loaded.model
    mark("load_model")
    signature = model_signature(model)
    batch = load_batch(batch_path, signature)
    mark("signature + load_batch")
    spec = resolve_loss(model, signature.output_names, None, batch.targets is not None)
    session._preflight(spec, model, signature, batch)
    mark("resolve_loss + eager preflight")
    engine = GradientEngine(model, signature, spec)
    mark("GradientEngine() (walk layers)")
    tf = _tf.tensorflow()
    inputs = {k: tf.convert_to_tensor(v) for k, v in batch.inputs.items()}
    targets = {k: tf.convert_to_tensor(v) for k, v in (batch.targets or {}).items()} or None
    concrete = engine._step_fn.get_concrete_function(inputs, targets, None)
    mark("trace step (python -> graph)")
    result = engine.run(batch)
    mark("1st run (instantiate+optimize+exec)")
    engine.run(batch)
    mark("2nd run (execution only)")
    report = build_report(
        model,
        signature,
        spec,
        batch,
        result,
        engine.layer_nodes,
        False,
        session.model_info_of(model, loaded.path, loaded.format, loaded.notes),
    )
    text = render(report, OutputFormat.JSON)
    mark("build_report + render json")
    return [
        graph_size(concrete),
        f"{len(engine.variables)} variables, {len(result.meta.outputs)} captured layer outputs, "
        f"JSON {len(text) / 1e3:.0f} kB",
        f"global_grad_norm {report.global_grad_norm!r}",
    ]


def profile_baseline(model_path: str, batch_path: str, to_numpy: bool) -> list[str]:
    import keras
    import numpy as np
    import tensorflow as tf
    from baseline_weight_grads import load_xy

    mark("import tensorflow + keras")
    model = keras.models.load_model(model_path)
    mark("load_model")
    x, y = load_xy(batch_path)
    mark("load batch")

    @tf.function
    def step(x, y):  # type: ignore[no-untyped-def]
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
        return tape.gradient(loss, model.trainable_variables)

    concrete = step.get_concrete_function(x, y)
    mark("trace step (python -> graph)")
    grads = step(x, y)
    if to_numpy:  # as bench/baseline_weight_grads.py --numpy does
        arrays = [np.asarray(tf.convert_to_tensor(g)) for g in grads]
        norm = float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))
    else:
        norm = float(tf.linalg.global_norm(grads).numpy())
    mark("1st run (instantiate+optimize+exec)")
    step(x, y)[0].numpy()
    mark("2nd run (execution only)")
    return [graph_size(concrete), f"global_norm {norm!r}"]


def process_start_offset() -> float | None:
    """Seconds between this process's start and T0 (Linux only), else None."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        hz = os.sysconf("SC_CLK_TCK")
        age_now = uptime - start_ticks / hz
        return age_now - (time.perf_counter() - T0)
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    args = sys.argv[1:]
    to_numpy = "--numpy" in args
    args = [a for a in args if a != "--numpy"]
    if len(args) != 3 or args[0] not in ("gradscope", "baseline"):
        sys.exit("usage: python bench/profile_phases.py gradscope|baseline MODEL BATCH [--numpy]")
    side, model_path, batch_path = args
    startup = process_start_offset()
    if side == "gradscope":
        notes = profile_gradscope(model_path, batch_path)
    else:
        notes = profile_baseline(model_path, batch_path, to_numpy)
    total = sum(phase[1] for phase in PHASES)
    total_cpu = sum(phase[2] for phase in PHASES)
    print(f"phases of {side} (one process):")
    print(f"  {'':<40}{'wall s':>8}{'CPU s':>8}{'RSS GB':>8}{'peak GB':>8}")
    if startup is not None:
        print(f"  {'interpreter start-up (approx.)':<40}{startup:>8.2f}")
    for name, seconds, cpu, rss, peak in PHASES:
        print(f"  {name:<40}{seconds:>8.2f}{cpu:>8.2f}{rss:>8.2f}{peak:>8.2f}")
    print(f"  {'total of phases':<40}{total:>8.2f}{total_cpu:>8.2f}")
    for note in notes:
        print(f"  {note}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
