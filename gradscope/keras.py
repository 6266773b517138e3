"""``GradientMonitor``: gradscope's inspect report, recorded during ``model.fit``.

::

    from gradscope.keras import GradientMonitor

    monitor = GradientMonitor((x_probe, y_probe), every_n_batches=50,
                              jsonl="grads.jsonl", tensorboard="logs/gradients",
                              stop_on=("nonfinite",))
    model.fit(x, y, epochs=5, callbacks=[monitor])

Importing this module imports TensorFlow and Keras (the callback subclasses
``keras.callbacks.Callback``); ``import gradscope`` does not import this module.

**The batch.**  Keras 3 passes no data to callbacks (``on_train_batch_end`` receives the
batch index and the logs only), so the monitor differentiates the loss on a fixed *probe*
batch that you give: ``(x, y)``, ``(x, y, sample_weight)``, or a ``tf.data.Dataset`` whose
first element is taken (a tuple as above, or ``x`` alone).  Any other value is ``x``
alone, for a model whose loss needs no targets.  A fixed batch also makes the records
comparable with each other: only the weights change between them.  With ``probe=None``
the monitor uses the seeded synthetic batch that ``gradscope.inspect(model)`` uses (and
says so on stderr): enough to catch NaN weights, not a view of your data.

**The numbers** are those of ``gradscope.inspect(model, x, y)`` at the same weights: the
report is built by the same functions (:func:`gradscope.session.prepare_loss_and_batch`,
:class:`~gradscope.engine.gradients.GradientEngine`,
:func:`gradscope.commands.inspect.run.build_report`,
:func:`gradscope.health.diagnose`).  The gradient step is compiled once, with TensorFlow's
graph optimizer on, on the first record, and reused by every later record and every later
``fit`` of the same model; it is rebuilt only when the model or its list of trainable
variables changes.  Between records the callback costs nothing but a counter.

**When.**  ``every_n_batches=N`` records after every N-th optimizer step (counted by
``model.optimizer.iterations``, so across epochs and successive ``fit`` calls);
``every_n_epochs=M`` records at the end of every M-th epoch (after validation).  Both may
be given.  A record at the end of an epoch that coincides with a batch record reuses
that report.  With ``steps_per_execution=k`` Keras calls the callback once every ``k``
steps, so batch records fall on the first call at or past each multiple of N.

**Instruments.**  ``instruments=`` adds the training cockpit (:mod:`gradscope.monitor`):
``"update"`` (per layer ``||dw||``, ``||dw|| / ||w||`` and the distance from the first
``fit``'s initial weights, measured from the weights themselves), ``"alignment"``
(``cos(g, dw)``), ``"batch_tests"`` (norm, inner-product and orthogonality tests and
the gradient SNR, from per-example gradients), ``"sharpness"`` (the Hessian's top
eigenvalue by warm-started Lanczos, against ``2 / lr``) and ``"trace"`` (Hutch++), or
the presets ``"economy"``, ``"business"`` and ``"full"``.  ``settings=``
(:class:`~gradscope.monitor.instruments.InstrumentSettings`) holds their constants;
``stop_eos_ratio=r`` stops training when ``lambda_max * lr / 2`` exceeds ``r``.  The
weights are copied (on the device) before each update that a record follows, and only
then; each instrument's functions are traced once, on the first record.
``last_instruments`` holds the last record's values.

**Outputs.**  ``jsonl=PATH``: one JSON object per record, schema ``gradscope.monitor/1``
(``docs/monitor_schema.md``): ``fit`` (``epoch`` from 0 as Keras counts, ``batch``
within the epoch or ``null`` at an epoch end, ``step`` = optimizer steps so far,
``trigger``), Keras's numeric ``logs``, the ``learning_rate``, the ``instruments`` and
the inspect ``report`` (``Report.to_dict()``, schema ``gradscope.inspect/1``).  Each
line is written with one ``write`` call on an unbuffered file, so a reader never sees
half a line; the file is truncated by the monitor's first ``fit`` unless
``append=True``, and appended to by later ones.  ``gradscope dashboard PATH`` draws it.
``tensorboard=LOGDIR``: the summaries of :mod:`gradscope.export.tensorboard` at
``step``, gradient histograms included unless ``histograms=False`` (they need the raw
gradient tensors: more memory per record), and the instruments' scalars under
``update/``, ``update_ratio/<layer>``, ``alignment/``, ``batch_tests/``, ``sharpness/``
and ``trace/`` tags, with ``learning_rate``.

**Stopping.**  ``stop_on=("nonfinite",)`` (any health kinds) sets
``model.stop_training = True`` when a record has a finding of one of those kinds, and
writes the finding on stderr; ``monitor.stop_finding`` keeps it.  Keras then stops after
the current batch.  The probe is what is differentiated, not the training batch: a NaN in
a training batch is seen at the first record after it has reached the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _tf
from .commands.inspect.options import InspectOptions
from .commands.inspect.report import Report
from .commands.inspect.run import build_report, filter_layers
from .engine.gradients import GradientEngine
from .errors import OutputError, UsageError, first_line, received
from .export.tensorboard import DEFAULT_BUCKETS, check_logdir, open_writer, write_report_summaries
from .health import Finding, Kind, Thresholds, diagnose, parse_fail_on
from .loading.data import Batch
from .loading.signature import ModelSignature, model_signature
from .loading.synthetic import DEFAULT_ROWS
from .losses import LossSpec
from .monitor import MONITOR_SCHEMA, Instruments, resolve_instruments
from .monitor.instruments import (
    BatchTestsInstrument,
    CurvatureInstruments,
    InstrumentSettings,
    WeightTracker,
)
from .monitor.results import InstrumentName
from .report import ModelInfo, finite_or_none
from .session import (
    RestoredState,
    batch_from_arrays,
    model_info_of,
    prepare_loss_and_batch,
    run_engine,
)

keras: Any = _tf.keras()
_Callback: Any = keras.callbacks.Callback

__all__ = ["GradientMonitor", "InstrumentSettings"]


@dataclass
class _Compiled:
    """What one model needs for a record, built once: loss, batch, the compiled step."""

    model: Any
    variable_ids: tuple[int, ...]
    signature: ModelSignature
    spec: LossSpec
    batch: Batch
    engine: GradientEngine
    info: ModelInfo
    per_sample: Any = None
    tracker: WeightTracker | None = None
    batch_tests: BatchTestsInstrument | None = None
    curvature: CurvatureInstruments | None = None


def _positive(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"GradientMonitor {name}: expected a positive integer. {received(value)}")
    return value


def _kinds(stop_on: str | Iterable[str] | None) -> tuple[Kind, ...]:
    text = stop_on if isinstance(stop_on, str) or stop_on is None else ",".join(stop_on)
    try:
        return parse_fail_on(text)
    except ValueError as exc:
        raise UsageError(f"GradientMonitor stop_on: {exc}. {received(stop_on)}") from exc


def _check_jsonl(path: str | Path | None) -> Path | None:
    """Fail at construction, not after an epoch of training, on an unwritable path."""
    if path is None:
        return None
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise OutputError(f"GradientMonitor jsonl {target}: is a folder; expected a file name.")
    if not parent.is_dir():
        raise OutputError(f"GradientMonitor jsonl {target}: the folder {parent} does not exist.")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise OutputError(f"GradientMonitor jsonl {target}: not writable.")
    return target


def _probe_parts(probe: Any) -> tuple[Any, Any, Any]:
    """``(x, y, sample_weight)`` of a probe (see the module doc)."""
    tf = _tf.tensorflow()
    if isinstance(probe, tf.data.Dataset):
        element = next(iter(probe.take(1)), None)
        if element is None:
            raise UsageError("GradientMonitor probe: the dataset is empty.")
        probe = tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, element)
    if isinstance(probe, tuple):
        if len(probe) not in (2, 3):
            raise UsageError(
                "GradientMonitor probe: expected (x, y) or (x, y, sample_weight). "
                f"{received(f'a tuple of {len(probe)}')}"
            )
        return probe[0], probe[1], probe[2] if len(probe) == 3 else None
    return probe, None, None


def _instrument_names(instruments: Any) -> tuple[InstrumentName, ...]:
    try:
        return resolve_instruments(instruments)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"GradientMonitor instruments: {exc}. {received(instruments)}") from exc


def _stop_ratio(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UsageError(
            f"GradientMonitor stop_eos_ratio: expected a positive number. {received(value)}"
        )
    return float(value)


def learning_rate_of(optimizer: Any) -> float | None:
    """The optimizer's learning rate for its next step: a schedule is evaluated at the
    optimizer's current iteration (Keras's own ``optimizer.learning_rate``); ``None``
    without an optimizer or a numeric rate."""
    if optimizer is None:
        return None
    try:
        value = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _numeric_logs(logs: dict[str, Any] | None) -> dict[str, float | None]:
    """Keras's logs with number values only (non-finite as ``None``)."""
    out: dict[str, float | None] = {}
    for key, value in (logs or {}).items():
        try:
            number = float(keras.ops.convert_to_numpy(value))
        except (TypeError, ValueError):
            continue
        out[str(key)] = finite_or_none(number)
    return out


def _write_line(handle: Any, line: bytes) -> None:
    """All of ``line`` through an unbuffered append-mode file, normally in one write."""
    view = memoryview(line)
    while view:
        written = handle.write(view)
        view = view[written:]


class GradientMonitor(_Callback):  # type: ignore[misc]
    """Record gradscope's inspect report while a Keras model trains (see the module doc).

    ``probe``: the batch to differentiate the loss on; ``every_n_batches`` /
    ``every_n_epochs``: when; ``jsonl`` / ``tensorboard``: where; ``stop_on``: health
    kinds that stop training.  ``thresholds``, ``loss``, ``training``, ``layers`` and
    ``per_sample`` mean what they mean for :func:`gradscope.inspect`; ``seed`` and ``rows``
    shape the synthetic batch when ``probe`` is ``None``.  ``verbose=False`` silences the
    notes on stderr (the stop message stays).

    After each record, ``last_report`` holds its :class:`~gradscope.report.Report` and
    ``records`` counts them; ``record_seconds`` has the time each one took.
    """

    def __init__(
        self,
        probe: Any = None,
        *,
        every_n_batches: int | None = None,
        every_n_epochs: int | None = 1,
        jsonl: str | Path | None = None,
        tensorboard: str | Path | None = None,
        stop_on: str | Iterable[str] | None = (),
        thresholds: Thresholds | None = None,
        loss: str | None = None,
        training: bool = False,
        layers: str | None = None,
        per_sample: bool = False,
        histograms: bool = True,
        buckets: int = DEFAULT_BUCKETS,
        append: bool = False,
        seed: int = 0,
        rows: int = DEFAULT_ROWS,
        verbose: bool = True,
        instruments: str | Iterable[str] | None = None,
        settings: InstrumentSettings | None = None,
        stop_eos_ratio: float | None = None,
    ) -> None:
        super().__init__()
        self.instruments = _instrument_names(instruments)
        if settings is not None and not isinstance(settings, InstrumentSettings):
            raise UsageError(
                "GradientMonitor settings: expected an InstrumentSettings. "
                f"{received(type(settings).__name__)}"
            )
        self.settings = InstrumentSettings(seed=seed) if settings is None else settings
        self.stop_eos_ratio = _stop_ratio(stop_eos_ratio)
        if self.stop_eos_ratio is not None and "sharpness" not in self.instruments:
            raise UsageError(
                "GradientMonitor stop_eos_ratio: needs the sharpness instrument. "
                f"Received: instruments={list(self.instruments)}"
            )
        self.every_n_batches = _positive("every_n_batches", every_n_batches)
        self.every_n_epochs = _positive("every_n_epochs", every_n_epochs)
        if self.every_n_batches is None and self.every_n_epochs is None:
            raise UsageError(
                "GradientMonitor: expected every_n_batches or every_n_epochs (or both). "
                "Received: neither"
            )
        self.stop_on = _kinds(stop_on)
        self.jsonl = _check_jsonl(jsonl)
        self.tensorboard = (
            None
            if tensorboard is None
            else check_logdir(tensorboard, "GradientMonitor tensorboard")
        )
        self.histograms = histograms and self.tensorboard is not None
        self.buckets = _positive("buckets", buckets) or DEFAULT_BUCKETS
        self.probe = probe
        self.options = InspectOptions(
            loss=loss,
            training=training,
            seed=seed,
            rows=rows,
            layers=layers,
            keep_tensors=self.histograms,
            per_sample=per_sample,
            thresholds=thresholds,
        )
        self.append = append
        self.verbose = verbose
        self.records = 0
        self.last_report: Report | None = None
        self.stop_finding: Finding | None = None
        self.stop_reason: str | None = None
        self.last_instruments: Instruments | None = None
        self.record_seconds: list[float] = []
        self._compiled: _Compiled | None = None
        self._retired_traces = 0
        self._file: Any = None
        self._opened_once = False
        self._writer: Any = None
        self._last: tuple[int, Report, Instruments] | None = None
        self._last_batch_step = 0
        self._calls = 0
        self._epoch = 0
        self._seen_step = 0

    # -- the compiled step, built once per model -------------------------------------

    @property
    def engine(self) -> GradientEngine | None:
        """The cached gradient engine (``None`` before the first record)."""
        return None if self._compiled is None else self._compiled.engine

    @property
    def traces(self) -> int:
        """How many times this monitor traced a gradient step, over every engine it built
        (1 after any number of records on one model)."""
        return self._retired_traces + self._engine_traces()

    def _engine_traces(self) -> int:
        if self._compiled is None:
            return 0
        return int(self._compiled.engine.tracing_count)

    def _batch(self, signature: ModelSignature) -> Batch | None:
        if self.probe is None:
            return None
        x, y, weight = _probe_parts(self.probe)
        return batch_from_arrays(signature, x, y, weight)

    def _ready(self) -> _Compiled:
        model = self.model
        variable_ids = tuple(id(v) for v in model.trainable_variables)
        cached = self._compiled
        if cached is not None and cached.model is model and cached.variable_ids == variable_ids:
            return cached
        self._retired_traces += self._engine_traces()
        signature = model_signature(model)
        spec, batch = prepare_loss_and_batch(model, signature, self._batch(signature), self.options)
        if self.probe is None and self.verbose:
            sys.stderr.write(
                f"gradscope: GradientMonitor has no probe batch; recording on a seeded synthetic "
                f"batch of {batch.size} rows. Pass probe=(x, y) to record on your data.\n"
            )
        engine = GradientEngine(
            model,
            signature,
            spec,
            training=self.options.training,
            keep_tensors=self.options.keep_tensors,
            optimize_graph=True,
        )
        per_sample = None
        if self.options.per_sample:
            from .engine.per_sample import PerSampleEngine

            per_sample = PerSampleEngine(model, signature, spec, training=self.options.training)
        info = model_info_of(model, None, "memory")
        self._compiled = _Compiled(
            model, variable_ids, signature, spec, batch, engine, info, per_sample
        )
        self._build_instruments(self._compiled)
        return self._compiled

    def _build_instruments(self, compiled: _Compiled) -> None:
        """The instruments asked for, on the compiled model's probe batch."""
        asked, training = self.instruments, self.options.training
        common = (compiled.model, compiled.signature, compiled.spec, compiled.batch)
        if "update" in asked or "alignment" in asked:
            compiled.tracker = WeightTracker(*common, training=training)
            compiled.tracker.snapshot_step = self._step()
        if "batch_tests" in asked:
            compiled.batch_tests = BatchTestsInstrument(
                *common, training=training, settings=self.settings
            )
        if "sharpness" in asked or "trace" in asked:
            compiled.curvature = CurvatureInstruments(
                *common,
                training=training,
                settings=self.settings,
                sharpness="sharpness" in asked,
                trace="trace" in asked,
            )

    def measure_instruments(self) -> Instruments:
        """The instruments at the current weights (the update: since the last snapshot)."""
        compiled = self._ready()
        asked = self.instruments
        values: dict[str, Any] = {}
        with RestoredState(compiled.model, self.options.training):
            if compiled.tracker is not None:
                update, alignment = compiled.tracker.measure(
                    self._step(), with_alignment="alignment" in asked
                )
                values["update"] = update if "update" in asked else None
                values["alignment"] = alignment
            if compiled.batch_tests is not None:
                values["batch_tests"] = compiled.batch_tests.measure()
            if compiled.curvature is not None:
                if "sharpness" in asked:
                    rate = learning_rate_of(getattr(compiled.model, "optimizer", None))
                    values["sharpness"] = compiled.curvature.sharpness(rate)
                if "trace" in asked:
                    values["trace"] = compiled.curvature.trace()
        return Instruments(asked=asked, **values)

    def inspect_now(self) -> Report:
        """The report at the current weights, through the cached compiled step."""
        compiled = self._ready()
        model, options = compiled.model, self.options
        with RestoredState(model, options.training):
            result = run_engine(compiled.engine, compiled.batch)
            report = build_report(
                model,
                compiled.signature,
                compiled.spec,
                compiled.batch,
                result,
                compiled.engine.layer_nodes,
                options.training,
                compiled.info,
            )
            if compiled.per_sample is not None:
                summary = compiled.per_sample.run(compiled.batch).summary()
                report = dataclasses.replace(report, per_sample=summary)
        report = dataclasses.replace(report, health=diagnose(report, options.thresholds))
        return filter_layers(report, options.layers)

    # -- Keras hooks -------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.jsonl is not None and self._file is None:
            mode = "ab" if self.append or self._opened_once else "wb"
            try:
                self._file = open(self.jsonl, mode, buffering=0)  # noqa: SIM115
            except OSError as exc:
                raise OutputError(
                    f"GradientMonitor jsonl {self.jsonl}: cannot open: {first_line(exc)}"
                ) from exc
            self._opened_once = True
        if self.tensorboard is not None and self._writer is None:
            self._writer = open_writer(self.tensorboard, "GradientMonitor tensorboard")
        step = self._seen_step = self._step()
        self._last_batch_step = step - step % (self.every_n_batches or 1)
        self._last = None
        self.stop_finding = None
        self.stop_reason = None
        if getattr(self.model, "built", False):
            self._ready()  # a probe that does not fit the model fails before training

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.close()

    def close(self) -> None:
        """Close the JSON Lines file and the TensorBoard writer (``fit`` does it at the end)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Copy the weights before an update that a record will follow (only then)."""
        compiled = self._compiled
        if compiled is None or compiled.tracker is None or not self._records_after(batch):
            return
        compiled.tracker.snapshot(self._step())

    def _steps_per_call(self) -> int:
        """Optimizer steps per batch hook call (``steps_per_execution``)."""
        return int(getattr(self.model, "steps_per_execution", 1) or 1)

    def _records_after(self, batch: int) -> bool:
        """Whether the step(s) about to run end in a record, as far as can be told
        (from the step count the last hook read: no device read on other steps)."""
        if self.every_n_batches is not None:
            ahead = self._steps_per_call()
            if self._seen_step + ahead - self._last_batch_step >= self.every_n_batches:
                return True
        steps = (self.params or {}).get("steps")
        return (
            self.every_n_epochs is not None
            and (self._epoch + 1) % self.every_n_epochs == 0
            and isinstance(steps, int)
            and batch + self._steps_per_call() >= steps
        )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._calls += 1
        if self.every_n_batches is None:
            return
        # Count the steps in Python and read the optimizer's counter only when a record
        # is due by that count (it can only be behind it: a last, shorter execution).
        self._seen_step += self._steps_per_call()
        if self._seen_step - self._last_batch_step < self.every_n_batches:
            return
        step = self._seen_step = self._step()
        if step - self._last_batch_step >= self.every_n_batches:
            self._last_batch_step = step - step % self.every_n_batches
            self._record(epoch=self._epoch, batch=batch, step=step, trigger="batch", logs=logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            step = self._step()
            self._record(epoch=epoch, batch=None, step=step, trigger="epoch", logs=logs)

    # -- one record --------------------------------------------------------------------

    def _step(self) -> int:
        """Optimizer steps so far (this monitor's batch-hook calls without an optimizer)."""
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        if iterations is None:
            return self._calls
        return int(keras.ops.convert_to_numpy(iterations))

    def _record(
        self,
        *,
        epoch: int,
        batch: int | None,
        step: int,
        trigger: str,
        logs: dict[str, Any] | None = None,
    ) -> None:
        started = time.perf_counter()
        if self._last is not None and self._last[0] == step:
            repeated, (_, report, instruments) = True, self._last
        else:
            repeated, report, instruments = False, self.inspect_now(), self.measure_instruments()
        self._last = (step, report, instruments)
        self.last_report = report
        self.last_instruments = instruments
        self.records += 1
        rate = learning_rate_of(getattr(self.model, "optimizer", None))
        if self._file is not None:
            fit = {"epoch": epoch, "batch": batch, "step": step, "trigger": trigger}
            record = {
                "schema": MONITOR_SCHEMA,
                "fit": fit,
                "logs": _numeric_logs(logs),
                "learning_rate": finite_or_none(rate),
                "instruments": instruments.to_dict(),
                "report": report.to_dict(),
            }
            self._write_record(record)
        if self._writer is not None and not repeated:
            extra = instruments.scalars()
            if rate is not None:
                extra["learning_rate"] = rate
            write_report_summaries(self._writer, report, step, buckets=self.buckets, extra=extra)
        self.record_seconds.append(time.perf_counter() - started)
        self._check_stop(report, epoch, batch, step)
        self._check_sharpness(instruments, epoch, batch, step)

    def _write_record(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False) + "\n"
        try:
            _write_line(self._file, line.encode("utf-8"))
        except OSError as exc:
            raise OutputError(
                f"GradientMonitor jsonl {self.jsonl}: cannot write: {first_line(exc)}"
            ) from exc

    def _stop(self, reason: str, epoch: int, batch: int | None, step: int) -> None:
        self.stop_reason = reason
        self.model.stop_training = True
        where = f"epoch {epoch}" + ("" if batch is None else f", batch {batch}")
        sys.stderr.write(f"gradscope: stopping training at {where} (step {step}): {reason}\n")

    def _check_sharpness(
        self, instruments: Instruments, epoch: int, batch: int | None, step: int
    ) -> None:
        limit, sharpness = self.stop_eos_ratio, instruments.sharpness
        if limit is None or sharpness is None or self.stop_reason is not None:
            return
        ratio = sharpness.eos_ratio
        if math.isfinite(ratio) and ratio > limit:
            self._stop(
                f"sharpness: the edge-of-stability ratio lambda_max * lr / 2 = {ratio:.4g} "
                f"is above {limit:g} (lambda_max {sharpness.lambda_max:.4g}, "
                f"2/lr {sharpness.two_over_lr:.4g})",
                epoch,
                batch,
                step,
            )

    def _check_stop(self, report: Report, epoch: int, batch: int | None, step: int) -> None:
        if not self.stop_on or report.health is None or self.stop_finding is not None:
            return
        finding = next((f for f in report.health.findings if f.kind in self.stop_on), None)
        if finding is None:
            return
        self.stop_finding = finding
        self._stop(f"{finding.kind}: {finding.message}", epoch, batch, step)
