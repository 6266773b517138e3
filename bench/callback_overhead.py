"""What ``GradientMonitor`` costs during ``model.fit``, against no monitor and a hand-written one.

    python bench/callback_overhead.py                      # 3 rounds, record every 10 batches
    python bench/callback_overhead.py --every 25 --repeats 5 --epochs 4

Four variants train the same seeded MLP (256 -> 512 -> 512 -> 10, ReLU, softmax
crossentropy, SGD) on the same 6,400 random rows in batches of 64 (100 steps per epoch),
``shuffle=False``, each on a freshly built model, in the order A B C D A B C D ...:

* **none**: ``model.fit`` alone.
* **gradscope**: ``GradientMonitor(probe, every_n_batches=N, every_n_epochs=None)``, no
  output: the recording cost alone (one compiled step, report, health checks).
* **gradscope+out**: the same, also writing JSON Lines and TensorBoard summaries with
  gradient histograms (the raw gradients leave the graph for those).
* **baseline**: a hand-written callback: every N batches, one ``tf.function`` (traced
  once) with a ``GradientTape`` over ``model.compute_loss`` on the probe batch, returning
  the per-variable gradient norms, fetched as floats.  The least work that monitors the
  weight gradients; gradscope also reduces every layer output and its gradient, the
  input gradients, and the weight norms.

The probe is a fixed batch of 64 rows.  A timing callback, first in the list, stamps
``on_train_batch_begin``: the interval to the next stamp is one step (the train step and
every callback's ``on_train_batch_end``).  Epoch 0 (Keras's own tracing, and the
monitors' first, compiling record) and the intervals that cross an epoch boundary are
left out of the per-step figures, which are given in wall time and in process CPU time
(all threads; steadier than wall time when other processes share the CPUs).  The
*extra per record* is the median recorded step minus the median step without a monitor;
the *amortized* extra is the whole difference in step time over epochs 1+ (the record
and its after-effects on the next steps) divided by the number of records in them.
The whole ``fit`` time is reported too, one-time costs included (the first record
traces and optimizes the gradscope step: *first record*).  As a correctness check, the
last record's global gradient norm of *gradscope* must equal the baseline's (same seeds,
same weights) to ``rtol=1e-4``.  Last, one record is timed outside ``fit`` (the monitor's
``inspect_now()`` and the baseline's step, alternately, 100 times each), which is the
least noisy figure on a shared machine.

Run it also with ``OPENBLAS_NUM_THREADS=1``: gradscope computes the weight norms in numpy
(``np.dot``, OpenBLAS), whose worker threads keep spinning after the call and slow the
next training steps down on a machine with few cores; with one OpenBLAS thread the steps
between records cost what they cost without a monitor (see the bench README).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from gradscope import _tf

tf = _tf.tensorflow()
keras = _tf.keras()

ROWS, FEATURES, CLASSES, BATCH = 6400, 256, 10, 64
VARIANTS = ("none", "gradscope", "gradscope+out", "baseline")


def build_model() -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.01))
    return model


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=ROWS).astype("int64")
    return x, y


class Timer(keras.callbacks.Callback):  # type: ignore[misc]
    """Stamps every ``on_train_batch_begin`` with (epoch, batch, wall time, CPU time)."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[tuple[int, int, float, float]] = []
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.stamps.append((self.epoch, batch, time.perf_counter(), time.process_time()))


class Baseline(keras.callbacks.Callback):  # type: ignore[misc]
    """Hand-written: per-variable gradient norms on the probe every ``every`` steps."""

    def __init__(self, probe: tuple[np.ndarray, np.ndarray], every: int) -> None:
        super().__init__()
        self.x, self.y = tf.constant(probe[0]), tf.constant(probe[1])
        self.every = every
        self.function: Any = None
        self.norms: list[list[float]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if int(self.model.optimizer.iterations.numpy()) % self.every:
            return
        if self.function is None:
            model = self.model

            @tf.function
            def norms(x: Any, y: Any) -> Any:
                with tf.GradientTape() as tape:
                    y_pred = model(x, training=False)
                    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
                grads = tape.gradient(loss, model.trainable_variables)
                return [tf.norm(g) for g in grads]

            self.function = norms
        self.norms.append([float(n) for n in self.function(self.x, self.y)])


def step_times(
    timer: Timer, every: int, steps_per_epoch: int, clock: int = 2
) -> tuple[list[float], list[float]]:
    """(recorded, other) step durations on ``clock`` (2: wall, 3: process CPU time),
    epoch 0 and epoch-crossing intervals left out."""
    recorded, other = [], []
    for start, end in zip(timer.stamps, timer.stamps[1:], strict=False):
        epoch, batch = start[0], start[1]
        if epoch == 0 or end[0] != epoch:
            continue
        step = epoch * steps_per_epoch + batch + 1  # optimizer iterations after this step
        (recorded if step % every == 0 else other).append(end[clock] - start[clock])
    return recorded, other


def run(
    variant: str, every: int, epochs: int, data: Any, probe: Any, folder: Path
) -> dict[str, Any]:
    from gradscope.keras import GradientMonitor

    model = build_model()
    timer = Timer()
    callbacks: list[Any] = [timer]
    monitor: Any = None
    if variant == "gradscope":
        monitor = GradientMonitor(probe, every_n_batches=every, every_n_epochs=None)
    elif variant == "gradscope+out":
        monitor = GradientMonitor(
            probe,
            every_n_batches=every,
            every_n_epochs=None,
            jsonl=folder / f"{time.monotonic_ns()}.jsonl",
            tensorboard=folder / f"tb{time.monotonic_ns()}",
        )
    elif variant == "baseline":
        monitor = Baseline(probe, every)
    if monitor is not None:
        callbacks.append(monitor)
    started = time.perf_counter()
    model.fit(*data, epochs=epochs, batch_size=BATCH, shuffle=False, callbacks=callbacks, verbose=0)
    total = time.perf_counter() - started
    recorded, other = step_times(timer, every, ROWS // BATCH)
    cpu_recorded, cpu_other = step_times(timer, every, ROWS // BATCH, clock=3)
    out: dict[str, Any] = {
        "total": total,
        "recorded": recorded,
        "other": other,
        "cpu_recorded": cpu_recorded,
        "cpu_other": cpu_other,
    }
    if isinstance(monitor, Baseline):
        out["last_norm"] = float(np.sqrt(np.sum(np.square(monitor.norms[-1]))))
        out["records"] = len(monitor.norms)
    elif monitor is not None:
        out["last_norm"] = monitor.last_report.global_grad_norm
        out["records"] = monitor.records
        out["first_record"] = monitor.record_seconds[0]
        out["traces"] = monitor.traces
    return out


def isolated_records(probe: Any, repeats: int) -> dict[str, float]:
    """One record outside ``fit``, gradscope and baseline alternately: median ms."""
    from gradscope.keras import GradientMonitor

    model = build_model()
    model.fit(*probe, epochs=1, batch_size=BATCH, verbose=0)
    monitor = GradientMonitor(probe, every_n_epochs=1)
    monitor.set_model(model)
    baseline = Baseline(probe, 1)
    baseline.set_model(model)
    monitor.inspect_now()
    baseline.on_train_batch_end(0)
    times: dict[str, list[float]] = {"gradscope": [], "baseline": []}
    for _ in range(repeats):
        started = time.perf_counter()
        monitor.inspect_now()
        times["gradscope"].append(time.perf_counter() - started)
        started = time.perf_counter()
        baseline.on_train_batch_end(0)
        times["baseline"].append(time.perf_counter() - started)
    return {name: median(values) * 1e3 for name, values in times.items()}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=10, help="record every N batches")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = make_data()
    probe = (data[0][:BATCH], data[1][:BATCH])
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.repeats):
            for variant in VARIANTS:
                results[variant].append(
                    run(variant, args.every, args.epochs, data, probe, Path(folder))
                )
                seconds = results[variant][-1]["total"]
                print(f"round {round_ + 1} {variant}: {seconds:.2f}s", file=sys.stderr)
    report(results, args)
    alone = isolated_records(probe, 100)
    print(
        f"one record outside fit (median of 100): gradscope {alone['gradscope']:.2f} ms, "
        f"baseline {alone['baseline']:.2f} ms, ratio {alone['gradscope'] / alone['baseline']:.2f}"
    )


def _steps(results: dict[str, list[dict[str, Any]]], prefix: str) -> dict[str, float]:
    """Per variant: median non-recorded step, median recorded step, extra per record (ms)
    on one clock (``prefix`` ``""``: wall, ``"cpu_"``: process CPU time)."""
    base = results["none"]
    base_step = median([t for r in base for t in r[prefix + "recorded"] + r[prefix + "other"]])
    base_sum = median([sum(r[prefix + "recorded"] + r[prefix + "other"]) for r in base])
    figures = {}
    for variant, rows in results.items():
        other = median([t for r in rows for t in r[prefix + "other"]])
        recorded = median([t for r in rows for t in r[prefix + "recorded"]])
        total = median([sum(r[prefix + "recorded"] + r[prefix + "other"]) for r in rows])
        amortized = (total - base_sum) / max(1, len(rows[0][prefix + "recorded"]))
        figures[variant] = (other, recorded, recorded - base_step, amortized)
    clock = "CPU time" if prefix else "wall time"
    print(f"\n{'per step, ' + clock:<24} {'other step':>11} {'recorded step':>14} "
          f"{'extra per record':>17} {'amortized':>10}  (ms)")  # fmt: skip
    for variant, (other, recorded, extra, amortized) in figures.items():
        print(
            f"{variant:<24} {other * 1e3:11.2f} {recorded * 1e3:14.2f} {extra * 1e3:17.2f} "
            f"{amortized * 1e3:10.2f}"
        )
    extra_of = {variant: figures[variant][3] for variant in figures}
    for variant in ("gradscope", "gradscope+out"):
        ratio = extra_of[variant] / extra_of["baseline"] if extra_of["baseline"] > 0 else math.nan
        print(f"amortized extra per record, {variant} / baseline: {ratio:.2f}")
    return extra_of


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    steps = args.epochs * ROWS // BATCH
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{args.epochs} epochs x {ROWS // BATCH} steps, batch {BATCH}, record every "
        f"{args.every} batches ({steps // args.every} records), {args.repeats} rounds; medians"
    )
    base_total = median([r["total"] for r in results["none"]])
    print(f"\n{'whole fit':<24} {'seconds':>11} {'x none':>14} {'first record (s)':>17}")
    for variant, rows in results.items():
        total = median([r["total"] for r in rows])
        first = median([r["first_record"] for r in rows]) if "first_record" in rows[0] else None
        shown = "" if first is None else f"{first:.2f}"
        print(f"{variant:<24} {total:11.2f} {total / base_total:14.3f} {shown:>17}")
    _steps(results, "")
    _steps(results, "cpu_")
    traces = {r.get("traces") for v in ("gradscope", "gradscope+out") for r in results[v]}
    print(f"\ngradscope step traces per fit: {sorted(traces)}")
    mine = results["gradscope"][-1]["last_norm"]
    theirs = results["baseline"][-1]["last_norm"]
    same = np.isclose(mine, theirs, rtol=1e-4)
    verdict = "ok" if same else "MISMATCH"
    print(f"check: last global norm gradscope {mine:.6e} baseline {theirs:.6e} {verdict}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
