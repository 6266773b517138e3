"""What ``GradientMonitor`` costs during ``model.fit``, against no monitor and a hand-written one.

    python bench/callback_overhead.py                      # 3 rounds, record every 10 batches
    python bench/callback_overhead.py --every 25 --repeats 5 --epochs 4
    python bench/callback_overhead.py --presets economy --outside 10   # a quick run
    python bench/callback_overhead.py --presets "" --instruments update,trace

The variants train the same seeded MLP (256 -> 512 -> 512 -> 10, ReLU, softmax
crossentropy, SGD; 399,114 parameters) on the same 6,400 random rows in batches of 64
(100 steps per epoch), ``shuffle=False``, each on a freshly built model, in the order
A B C D ... A B C D ...:

* **none**: ``model.fit`` alone.
* **gradscope**: ``GradientMonitor(probe, every_n_batches=N, every_n_epochs=None)``, no
  output, no instruments: the recording cost alone (one compiled step, report, health
  checks).
* **gradscope+out**: the same, also writing JSON Lines and TensorBoard summaries with
  gradient histograms (the raw gradients leave the graph for those).
* **gradscope:PRESET** (``--presets``, default ``economy,business,full``): the same as
  *gradscope* with ``instruments=PRESET``; **gradscope:NAME** (``--instruments``, none by
  default): with the one instrument ``NAME`` (``update``, ``alignment``, ``batch_tests``,
  ``trace``, ``sharpness``).
* **baseline**: a hand-written callback: every N batches, one ``tf.function`` (traced
  once) with a ``GradientTape`` over ``model.compute_loss`` on the probe batch, returning
  the per-variable gradient norms, fetched as floats.  The least work that monitors the
  weight gradients; gradscope also reduces every layer output and its gradient, the
  input gradients, and the weight norms.

The probe is a fixed batch of 64 rows.  A timing callback, first in the list, stamps
``on_train_batch_begin``: the interval to the next stamp is one step (the train step and
every callback's batch hooks: the instruments' weight snapshot before a recorded step,
the record after it).  Epoch 0 (Keras's own tracing, and the monitors' first, compiling
record) and the intervals that cross an epoch boundary are left out of the per-step
figures, which are given in wall time and in process CPU time (all threads; steadier
than wall time when other processes share the CPUs).  *Other step* is the median step
that records nothing, *vs none* its difference from *none*'s (the overhead between
records; *noise* is the spread of *none*'s per-round medians), *next step* the median
step right after a record (after-effects of a record show there first).  The *extra per
record* is the median recorded step minus the median step without a monitor; the
*amortized* extra is the whole difference in step time over epochs 1+ (the record and
its after-effects on the next steps) divided by the number of records in them; *in fit*
is the median of the monitor's own ``record_seconds`` (records after the first).  The
whole ``fit`` time is reported too, one-time costs included (the first record traces
and optimizes the gradscope step and the instruments' functions: *first record*).  The
number of traces of every compiled function of the monitor per ``fit`` is printed: each
must be 1 (compiled once, reused by every record).

Checks (exit 1 on a failure): the last record's global gradient norm of every gradscope
variant must equal the baseline's (same seeds, same weights: the instruments must not
change the training) to ``rtol=1e-4``; outside ``fit``, the ``update`` instrument's
total norm must equal ``||w_after - w_before||`` of one ``train_on_batch`` (weights read
with numpy), and ``alignment`` the cosine between that update and the probe gradient
of a separate ``GradientTape``, both to ``rtol=1e-4``.

Last, one record of each variant is timed outside ``fit`` (``--outside`` times each,
alternately, with one untimed ``train_on_batch`` between rounds so that the weights move
as in training and the warm-started Lanczos of ``sharpness`` does not see the same
matrix twice): the baseline's step, the monitor's ``inspect_now()``, and per preset the
weight snapshot + ``inspect_now()`` + ``measure_instruments()``; per instrument (every
one, always) ``measure_instruments()`` of a monitor with that instrument alone.  That
is the least noisy figure on a shared machine.

Run it with ``OPENBLAS_NUM_THREADS=1``: gradscope computes in numpy (the instruments'
Lanczos and Hutch++ vectors, OpenBLAS), whose worker threads keep spinning after the
call and slow the next training steps down on a machine with few cores; with one
OpenBLAS thread the steps between records cost what they cost without a monitor (see
the bench README).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from gradscope import _tf
from gradscope.keras import GradientMonitor
from gradscope.monitor import INSTRUMENTS, PRESETS, Instruments

tf = _tf.tensorflow()
keras = _tf.keras()

ROWS, FEATURES, CLASSES, BATCH = 6400, 256, 10, 64
PLAIN = ("none", "gradscope", "gradscope+out", "baseline")


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


class Timer(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
    """Stamps every ``on_train_batch_begin`` with (epoch, batch, wall time, CPU time)."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[tuple[int, int, float, float]] = []
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.stamps.append((self.epoch, batch, time.perf_counter(), time.process_time()))


class Baseline(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
    """Hand-written: per-variable gradient norms on the probe every ``every`` steps."""

    def __init__(self, probe: tuple[np.ndarray, np.ndarray], every: int) -> None:
        super().__init__()
        self.x, self.y = tf.constant(probe[0]), tf.constant(probe[1])
        self.every = every
        self.function: Any = None
        self.norms: list[list[float]] = []

    def gradients(self) -> Any:
        """The probe gradient at the current weights, one compiled tape (traced once)."""
        if self.function is None:
            model = self.model

            @tf.function  # type: ignore[untyped-decorator]
            def gradients(x: Any, y: Any) -> Any:
                with tf.GradientTape() as tape:
                    y_pred = model(x, training=False)
                    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
                return tape.gradient(loss, model.trainable_variables)

            self.function = gradients
        return self.function(self.x, self.y)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if int(self.model.optimizer.iterations.numpy()) % self.every:
            return
        self.norms.append([float(tf.norm(g)) for g in self.gradients()])


def instrument_traces(monitor: GradientMonitor) -> dict[str, int]:
    """How many times each compiled function of ``monitor`` was traced (private
    attributes, read for this check only): the gradient step and the instruments'."""
    compiled = monitor._compiled
    out = {"step": monitor.traces}
    if compiled is None:
        return out
    functions: dict[str, Any] = {}
    if compiled.tracker is not None:
        functions["snapshot"] = compiled.tracker._snapshot_fn
        functions["update"] = compiled.tracker._measure_fn
    if compiled.batch_tests is not None:
        functions["batch_tests"] = compiled.batch_tests._sums_fn
    if compiled.curvature is not None and compiled.curvature.hessian is not None:
        functions["hvp"] = compiled.curvature.hessian._hvp_fn
    for name, function in functions.items():
        out[name] = int(function.experimental_get_tracing_count())
    return out


def step_times(
    timer: Timer, every: int, steps_per_epoch: int, clock: int = 2
) -> tuple[list[float], list[float], list[float]]:
    """(recorded, other, next) step durations on ``clock`` (2: wall, 3: process CPU
    time), epoch 0 and epoch-crossing intervals left out; ``next`` (the steps right
    after a record) is a part of ``other``."""
    recorded: list[float] = []
    other: list[float] = []
    after: list[float] = []
    for start, end in zip(timer.stamps, timer.stamps[1:], strict=False):
        epoch, batch = start[0], start[1]
        if epoch == 0 or end[0] != epoch:
            continue
        step = epoch * steps_per_epoch + batch + 1  # optimizer iterations after this step
        seconds = end[clock] - start[clock]
        (recorded if step % every == 0 else other).append(seconds)
        if step % every == 1:
            after.append(seconds)
    return recorded, other, after


def make_monitor(variant: str, every: int, probe: Any, folder: Path) -> Any:
    """The callback of ``variant`` (``None`` for *none*)."""
    if variant == "none":
        return None
    if variant == "baseline":
        return Baseline(probe, every)
    outputs: dict[str, Any] = {}
    if variant == "gradscope+out":
        outputs = {
            "jsonl": folder / f"{time.monotonic_ns()}.jsonl",
            "tensorboard": folder / f"tb{time.monotonic_ns()}",
        }
    instruments = variant.split(":", 1)[1] if ":" in variant else None
    return GradientMonitor(
        probe, every_n_batches=every, every_n_epochs=None, instruments=instruments, **outputs
    )


def run(
    variant: str, every: int, epochs: int, data: Any, probe: Any, folder: Path
) -> dict[str, Any]:
    model = build_model()
    timer = Timer()
    monitor = make_monitor(variant, every, probe, folder)
    callbacks = [timer] if monitor is None else [timer, monitor]
    started = time.perf_counter()
    model.fit(*data, epochs=epochs, batch_size=BATCH, shuffle=False, callbacks=callbacks, verbose=0)
    total = time.perf_counter() - started
    out: dict[str, Any] = {"total": total}
    for prefix, clock in (("", 2), ("cpu_", 3)):
        recorded, other, after = step_times(timer, every, ROWS // BATCH, clock)
        out |= {prefix + "recorded": recorded, prefix + "other": other, prefix + "next": after}
    if isinstance(monitor, Baseline):
        out["last_norm"] = float(np.sqrt(np.sum(np.square(monitor.norms[-1]))))
    elif monitor is not None:
        out["last_norm"] = monitor.last_report.global_grad_norm
        out["first_record"] = monitor.record_seconds[0]
        out["in_fit"] = median(monitor.record_seconds[1:])
        out["traces"] = instrument_traces(monitor)
    return out


# -- one record outside fit ------------------------------------------------------------


def outside_variants(
    model: Any, probe: Any, presets: list[str]
) -> tuple[dict[str, Callable[[], Any]], dict[str, GradientMonitor]]:
    """Per variant, one record as a function, each warmed up (traced) once; and the
    monitors by instrument name."""
    baseline = Baseline(probe, 1)
    baseline.set_model(model)

    def monitor(instruments: Any) -> GradientMonitor:
        made = GradientMonitor(
            probe, every_n_batches=1, every_n_epochs=None, instruments=instruments
        )
        made.set_model(model)
        return made

    plain = monitor(None)
    records: dict[str, Callable[[], Any]] = {
        "baseline": lambda: [float(tf.norm(g)) for g in baseline.gradients()],
        "gradscope": plain.inspect_now,
    }
    for preset in presets:
        records[f"gradscope:{preset}"] = _full_record(monitor(preset))
    singles: dict[str, GradientMonitor] = {name: monitor([name]) for name in INSTRUMENTS}
    for name, single in singles.items():
        records[f"instrument {name}"] = single.measure_instruments
    for record in records.values():
        record()
    return records, singles


def _full_record(monitor: GradientMonitor) -> Callable[[], Any]:
    """The work of one recorded step: the weight snapshot before the update (the
    monitor's ``on_train_batch_begin``), the report, the instruments."""

    def record() -> Instruments:
        monitor.on_train_batch_begin(0)
        monitor.inspect_now()
        return monitor.measure_instruments()

    return record


def isolated_records(probe: Any, repeats: int, presets: list[str]) -> dict[str, float]:
    """One record of each variant outside ``fit``, alternately, one untimed
    ``train_on_batch`` between rounds: median ms.  Checks ``update`` and ``alignment``."""
    model = build_model()
    model.fit(*probe, epochs=1, batch_size=BATCH, verbose=0)
    records, singles = outside_variants(model, probe, presets)
    times: dict[str, list[float]] = {name: [] for name in records}
    for _ in range(repeats):
        for monitor in singles.values():
            monitor.on_train_batch_begin(0)
        before = [v.numpy().astype(np.float64) for v in model.trainable_variables]
        model.train_on_batch(*probe)
        for name, record in records.items():
            started = time.perf_counter()
            record()
            times[name].append(time.perf_counter() - started)
    check_update(model, probe, before, singles)
    return {name: median(values) * 1e3 for name, values in times.items()}


def check_update(
    model: Any, probe: Any, before: list[np.ndarray], singles: dict[str, GradientMonitor]
) -> None:
    """The last measured ``update`` and ``alignment`` against numpy and a separate tape."""
    after = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    delta = np.concatenate([(a - b).ravel() for a, b in zip(after, before, strict=True)])
    baseline = Baseline(probe, 1)
    baseline.set_model(model)
    gradient = np.concatenate([g.numpy().astype(np.float64).ravel() for g in baseline.gradients()])
    expected = {
        "update": float(np.linalg.norm(delta)),
        "alignment": float(gradient @ delta / (np.linalg.norm(gradient) * np.linalg.norm(delta))),
    }
    measured = singles["update"].measure_instruments().update
    aligned = singles["alignment"].measure_instruments().alignment
    got = {
        "update": math.nan if measured is None else measured.total.norm,
        "alignment": math.nan if aligned is None else aligned.total,
    }
    for name, value in expected.items():
        verdict(f"{name} total (last step)", got[name], "numpy/tape", value)


def verdict(what: str, mine: float, whose: str, theirs: float) -> None:
    """Print a check; exit 1 at once when ``mine`` is not ``theirs`` to ``rtol=1e-4``."""
    same = bool(np.isclose(mine, theirs, rtol=1e-4))
    print(
        f"check: {what}: gradscope {mine:.6e} {whose} {theirs:.6e} {'ok' if same else 'MISMATCH'}"
    )
    if not same:
        sys.exit(1)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- the report ------------------------------------------------------------------------


def _names(text: str, known: tuple[str, ...] | list[str], option: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(
            f"{option}: expected names from {', '.join(known)}. Received: {unknown[0]}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--every", type=int, default=10, help="record every N batches")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of fits")
    parser.add_argument(
        "--presets", default=",".join(PRESETS), help="instrument presets to time in fit"
    )
    parser.add_argument(
        "--instruments", default="", help="single instruments to time in fit (comma list)"
    )
    parser.add_argument("--outside", type=int, default=30, help="records timed outside fit")
    args = parser.parse_args()
    presets = _names(args.presets, list(PRESETS), "--presets")
    singles = _names(args.instruments, INSTRUMENTS, "--instruments")
    variants = [*PLAIN, *(f"gradscope:{name}" for name in [*presets, *singles])]
    data = make_data()
    probe = (data[0][:BATCH], data[1][:BATCH])
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.repeats):
            for variant in variants:
                results[variant].append(
                    run(variant, args.every, args.epochs, data, probe, Path(folder))
                )
                seconds = results[variant][-1]["total"]
                print(f"round {round_ + 1} {variant}: {seconds:.2f}s", file=sys.stderr)
    report(results, args)
    alone = isolated_records(probe, args.outside, presets)
    print(f"\none record outside fit (median of {args.outside}, ms; x baseline):")
    for name, ms in alone.items():
        print(f"  {name:<24} {ms:9.2f} {ms / alone['baseline']:9.2f}")


def _steps(results: dict[str, list[dict[str, Any]]], prefix: str) -> None:
    """Per variant: median other step, its difference from *none*, the step after a
    record, the median recorded step, the extra per record, amortized (ms) on one clock
    (``prefix`` ``""``: wall, ``"cpu_"``: process CPU time)."""

    def pooled(rows: list[dict[str, Any]], key: str) -> float:
        return median([t for r in rows for t in r[prefix + key]])

    def summed(rows: list[dict[str, Any]]) -> float:
        return median([sum(r[prefix + "recorded"] + r[prefix + "other"]) for r in rows])

    base = results["none"]
    base_step = median([t for r in base for t in r[prefix + "recorded"] + r[prefix + "other"]])
    base_other = pooled(base, "other")
    rounds = [median(r[prefix + "other"]) for r in base]
    clock = "CPU time" if prefix else "wall time"
    heads = ("other", "vs none", "next", "recorded", "extra/record", "amortized", "in fit")
    widths = (7, 8, 7, 9, 13, 10, 8)
    print(
        f"\n{'per step, ' + clock:<22} "
        + " ".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True))
        + "  (ms)"
    )
    for variant, rows in results.items():
        other, recorded = pooled(rows, "other"), pooled(rows, "recorded")
        amortized = (summed(rows) - summed(base)) / max(1, len(rows[0][prefix + "recorded"]))
        in_fit = median([r["in_fit"] for r in rows]) if "in_fit" in rows[0] else math.nan
        print(
            f"{variant:<22} {other * 1e3:7.3f} {(other - base_other) * 1e3:+8.3f} "
            f"{pooled(rows, 'next') * 1e3:7.3f} {recorded * 1e3:9.2f} "
            f"{(recorded - base_step) * 1e3:13.2f} {amortized * 1e3:10.2f} "
            f"{'' if prefix or math.isnan(in_fit) else f'{in_fit * 1e3:8.2f}'}"
        )
    print(
        f"noise: none's per-round median other step {min(rounds) * 1e3:.3f} .. "
        f"{max(rounds) * 1e3:.3f} ms (spread {(max(rounds) - min(rounds)) * 1e3:.3f})"
    )


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    steps = args.epochs * ROWS // BATCH
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{args.epochs} epochs x {ROWS // BATCH} steps, batch {BATCH}, record every "
        f"{args.every} batches ({steps // args.every} records), {args.repeats} rounds; medians"
    )
    base_total = median([r["total"] for r in results["none"]])
    print(f"\n{'whole fit':<22} {'seconds':>9} {'x none':>8} {'first record (s)':>17}")
    for variant, rows in results.items():
        total = median([r["total"] for r in rows])
        first = median([r["first_record"] for r in rows]) if "first_record" in rows[0] else None
        shown = "" if first is None else f"{first:.2f}"
        print(f"{variant:<22} {total:9.2f} {total / base_total:8.3f} {shown:>17}")
    _steps(results, "")
    _steps(results, "cpu_")
    print("\ntraces per fit (each compiled function; 1 = compiled once):")
    for variant, rows in results.items():
        if "traces" in rows[0]:
            names = rows[0]["traces"]
            counts = {n: sorted({r["traces"][n] for r in rows}) for n in names}
            print(f"  {variant:<22} " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    theirs = results["baseline"][-1]["last_norm"]
    for variant, rows in results.items():
        if variant.startswith("gradscope"):
            verdict(f"last global norm, {variant}", rows[-1]["last_norm"], "baseline", theirs)


if __name__ == "__main__":
    main()
