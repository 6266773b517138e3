"""TensorBoard export: a report's numbers as scalar and histogram summaries.

Written with TensorFlow alone (``tf.summary.create_file_writer`` and
``tf.summary.experimental.write_raw_pb``): the ``tensorboard`` package is needed to
*view* the files, not to write them.  Each value carries the ``SummaryMetadata`` that
TensorBoard's own ``tf.summary.scalar`` / ``tf.summary.histogram`` would give it (plugin
``scalars`` or ``histograms``), so the Scalars, Histograms and Distributions dashboards
show them as if TensorBoard had written them.  A histogram is TensorBoard's ``[k, 3]``
float64 tensor of ``(left edge, right edge, count)`` rows, computed in numpy
(:func:`histogram_buckets`).  All the values of one report go into one event.

**Tags.**  TensorBoard puts the tags that share their first segment in one section, so
the first segment names the quantity and the rest names where it was measured:

=================================== =====================================================
``loss/total``                      the loss (data loss plus regularization)
``loss/regularization``             the regularization part (only for a regularized model)
``global_grad_norm``                the L2 norm over every variable gradient
``health/<kind>``                   findings of each kind (``nonfinite``, ``vanishing``,
                                    ``exploding``, ``dead``, ``stalled``); 0 when none
``health/findings``                 all findings
``grad_norm/<layer>/<var>``         ``||g||`` of a variable; ``<layer>`` is the layer path
                                    (``encoder/dense_1``), ``<var>`` the variable's name
                                    (``kernel``)
``grad_weight_ratio/<layer>/<var>`` ``||g|| / ||w||`` (when ``||w|| > 0``)
``grad_hist/<layer>/<var>``         histogram of the variable's gradient
``activation_grad_norm/<path>``     ``||g||`` of a layer output; ``<path>`` as in the
                                    report (``encoder/dense_1``, ``shared@1``, ``lstm:0``)
``activation_norm/<path>``          ``||a||`` of the layer output itself
``dead_fraction/<path>``            fraction of dead units of the layer output
``activation_grad_hist/<path>``     histogram of the layer output's gradient
``input_grad_norm/<name>``          ``||g||`` of a model input
``input_grad_hist/<name>``          histogram of the input's gradient
=================================== =====================================================

A variable or output without a gradient (the loss does not depend on it) has no
gradient tags.  Non-finite scalars are written as they are (TensorBoard shows NaN).

**Histograms need the raw tensors**: ``report.tensors``, present when the report was made
with ``keep_tensors=True`` (``gradscope.inspect(..., keep_tensors=True)``), or the
``tensors`` argument.  Without them only the scalars are written.  Histograms count the
finite entries only; the report's ``nonfinite`` counts and ``health/nonfinite`` say how
many others there were.

For a :class:`~gradscope.report.HessianReport`, ``<block>`` is the block's variable path
(``--block variable``), its layer path (``--block layer``) or ``model``; with ``--matrix``
the ``hessian`` prefix is the matrix's name (``ggn``, ``fisher``, ``empirical_fisher``):

=================================== =====================================================
``loss/total``                      the loss
``hessian_eigenvalue/<block>/top_<i>`` the i-th largest eigenvalue, ``i`` from 1
``hessian_min_eigenvalue/<block>``  the smallest eigenvalue
``hessian_trace/<block>``           the trace (exact, or Hutchinson's estimate)
``hessian_density/<block>``         the spectral density, as a histogram
=================================== =====================================================

The spectral density is written as a histogram, the one TensorBoard summary whose x axis
is not the step: one bucket per grid point (edges halfway between grid points), whose
count is the expected number of eigenvalues in it, ``density x bucket width x block
size``; the counts add up to about the block size.  The Histograms dashboard then draws
the density's shape, one curve per step.

**Atomic output.**  :func:`write_inspect` and :func:`write_hessian` first compute every
value, then write the event file into a temporary, hidden folder inside ``logdir`` and
move it into ``logdir`` once complete; on any error the folder is removed, so a failed
report leaves no event file behind.  :func:`write_report_summaries` appends to a writer
the caller keeps open (the training callback does): event files are append-only records,
one event per report written in one call and flushed, and TensorBoard's reader stops at
a truncated last record, so an interrupted run leaves at worst a missing last event.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _tf
from ..commands.inspect.report import GradientTensors, Report, VariableRow
from ..errors import OutputError, first_line
from ..health import KINDS
from ..report import HessianBlock, HessianReport

DEFAULT_BUCKETS = 30
"""Histogram buckets per gradient tensor, TensorBoard's own default."""

SCALARS_PLUGIN = "scalars"
HISTOGRAMS_PLUGIN = "histograms"


@dataclass(frozen=True)
class Scalar:
    """One scalar summary: a tag and its value."""

    tag: str
    value: float


@dataclass(frozen=True)
class Histogram:
    """One histogram summary: a tag and its ``[k, 3]`` (left, right, count) buckets."""

    tag: str
    buckets: np.ndarray


Summary = Scalar | Histogram


# -- histograms ------------------------------------------------------------------------


def histogram_buckets(values: Any, buckets: int = DEFAULT_BUCKETS) -> np.ndarray:
    """TensorBoard's ``[buckets, 3]`` float64 histogram of the finite entries of ``values``.

    Rows are ``(left edge, right edge, count)``: ``buckets`` equal-width buckets from the
    minimum to the maximum, the last one closed on the right (as TensorBoard's
    ``tf.summary.histogram`` does).  All entries equal: every edge is that value and the
    last bucket holds them all.  No finite entry: all zeros.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be positive. Received: {buckets}")
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    out = np.zeros((buckets, 3), dtype=np.float64)
    if data.size == 0:
        return out
    low, high = float(data.min()), float(data.max())
    if low == high:
        out[:, 0] = out[:, 1] = low
        out[-1, 2] = data.size
        return out
    edges = np.linspace(low, high, buckets + 1)
    counts, _ = np.histogram(data, bins=edges)
    out[:, 0], out[:, 1], out[:, 2] = edges[:-1], edges[1:], counts
    return out


def density_buckets(block: HessianBlock) -> np.ndarray | None:
    """A block's spectral density as ``[points, 3]`` histogram rows (see the module doc)."""
    if block.density is None or not block.density.grid:
        return None
    grid = np.asarray(block.density.grid, dtype=np.float64)
    values = np.asarray(block.density.values, dtype=np.float64)
    if grid.size == 1:
        return np.array([[grid[0], grid[0], float(block.size)]])
    middle = (grid[1:] + grid[:-1]) / 2
    edges = np.concatenate(
        [[grid[0] - (middle[0] - grid[0])], middle, [grid[-1] + (grid[-1] - middle[-1])]]
    )
    counts = np.nan_to_num(values) * np.diff(edges) * block.size
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


# -- tags and values ---------------------------------------------------------------------


def _variable_names(rows: Iterable[VariableRow]) -> dict[str, str]:
    """``row.path -> "<layer>/<var>"``: the variable's name relative to its layer,
    made unique within the report (a clash keeps the whole variable path)."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for row in rows:
        prefix = f"{row.layer}/"
        short = row.path[len(prefix) :] if row.path.startswith(prefix) else row.path.split("/")[-1]
        name = f"{row.layer}/{short}"
        if name in used:
            name = f"{row.layer}/{row.path}"
        used.add(name)
        names[row.path] = name
    return names


def _health_counts(report: Report) -> list[Scalar]:
    if report.health is None:
        return []
    kinds = [finding.kind for finding in report.health.findings]
    counts = [Scalar(f"health/{kind}", float(kinds.count(kind))) for kind in KINDS]
    return [*counts, Scalar("health/findings", float(len(kinds)))]


def _loss_scalars(report: Report | HessianReport) -> list[Scalar]:
    out = [Scalar("loss/total", report.loss.value)]
    if report.loss.regularization_terms:
        out.append(Scalar("loss/regularization", report.loss.regularization))
    return out


def _histogram(
    tag: str, tensors: Mapping[str, np.ndarray] | None, key: str, buckets: int
) -> list[Summary]:
    if tensors is None or key not in tensors:
        return []
    return [Histogram(tag, histogram_buckets(tensors[key], buckets))]


def _variable_summaries(
    report: Report, tensors: GradientTensors | None, buckets: int
) -> list[Summary]:
    out: list[Summary] = []
    names = _variable_names(report.variables)
    arrays = None if tensors is None else tensors.variables
    for row in report.variables:
        if row.grad is None:
            continue
        name = names[row.path]
        out.append(Scalar(f"grad_norm/{name}", row.grad.l2))
        if row.ratio is not None:
            out.append(Scalar(f"grad_weight_ratio/{name}", row.ratio))
        out.extend(_histogram(f"grad_hist/{name}", arrays, row.path, buckets))
    return out


def _activation_summaries(
    report: Report, tensors: GradientTensors | None, buckets: int
) -> list[Summary]:
    out: list[Summary] = []
    arrays = None if tensors is None else tensors.activations
    for row in report.activations:
        if row.grad is not None:
            out.append(Scalar(f"activation_grad_norm/{row.path}", row.grad.l2))
        if row.value is not None:
            out.append(Scalar(f"activation_norm/{row.path}", row.value.l2))
            if row.value.dead_frac is not None:
                out.append(Scalar(f"dead_fraction/{row.path}", row.value.dead_frac))
        if row.grad is not None:
            out.extend(_histogram(f"activation_grad_hist/{row.path}", arrays, row.path, buckets))
    return out


def _input_summaries(
    report: Report, tensors: GradientTensors | None, buckets: int
) -> list[Summary]:
    out: list[Summary] = []
    arrays = None if tensors is None else tensors.inputs
    for row in report.inputs:
        if row.grad is not None:
            out.append(Scalar(f"input_grad_norm/{row.name}", row.grad.l2))
            out.extend(_histogram(f"input_grad_hist/{row.name}", arrays, row.name, buckets))
    return out


def inspect_summaries(
    report: Report, tensors: GradientTensors | None = None, buckets: int = DEFAULT_BUCKETS
) -> list[Summary]:
    """Every summary of an inspect report, in report order (tags: see the module doc).

    ``tensors`` defaults to ``report.tensors``; without either, no histograms.
    """
    tensors = tensors if tensors is not None else report.tensors
    return [
        *_loss_scalars(report),
        Scalar("global_grad_norm", report.global_grad_norm),
        *_health_counts(report),
        *_variable_summaries(report, tensors, buckets),
        *_activation_summaries(report, tensors, buckets),
        *_input_summaries(report, tensors, buckets),
    ]


def block_label(block: HessianBlock) -> str:
    """The ``<block>`` part of a Hessian tag: variable path, layer path or ``model``."""
    if len(block.vars) == 1:
        return block.vars[0]
    if len(block.layers) == 1:
        return block.layers[0]
    return "model"


def hessian_summaries(report: HessianReport) -> list[Summary]:
    """Every summary of a Hessian report (tags: see the module doc)."""
    out: list[Summary] = [*_loss_scalars(report)]
    used: set[str] = set()
    prefix = report.matrix.replace("-", "_")
    for index, block in enumerate(report.blocks):
        label = block_label(block)
        if label in used:
            label = f"{label}@{index}"
        used.add(label)
        for rank, value in enumerate(block.eigenvalues, start=1):
            out.append(Scalar(f"{prefix}_eigenvalue/{label}/top_{rank}", value))
        out.append(Scalar(f"{prefix}_min_eigenvalue/{label}", block.min_eigenvalue))
        if block.trace is not None:
            out.append(Scalar(f"{prefix}_trace/{label}", block.trace))
        density = density_buckets(block)
        if density is not None:
            out.append(Histogram(f"{prefix}_density/{label}", density))
    return out


def report_summaries(
    report: Report | HessianReport,
    tensors: GradientTensors | None = None,
    buckets: int = DEFAULT_BUCKETS,
) -> list[Summary]:
    """The summaries of either kind of report."""
    if isinstance(report, HessianReport):
        return hessian_summaries(report)
    return inspect_summaries(report, tensors, buckets)


# -- protos and writers ------------------------------------------------------------------


def _metadata(plugin: str) -> Any:
    from tensorflow.core.framework import summary_pb2

    data_class = (
        summary_pb2.DATA_CLASS_SCALAR if plugin == SCALARS_PLUGIN else summary_pb2.DATA_CLASS_TENSOR
    )
    # The plugins' data protos at version 0 serialize to b"": content stays empty.
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=b""),
        data_class=data_class,
    )


def summary_proto(items: Iterable[Summary]) -> Any:
    """One ``tf.Summary`` proto holding every item (scalars as float32, histograms as
    float64 ``[k, 3]``), with the metadata TensorBoard's plugins read."""
    tf = _tf.tensorflow()
    from tensorflow.core.framework import summary_pb2

    proto = summary_pb2.Summary()
    scalar_meta, histogram_meta = _metadata(SCALARS_PLUGIN), _metadata(HISTOGRAMS_PLUGIN)
    for item in items:
        value = proto.value.add(tag=item.tag)
        if isinstance(item, Scalar):
            value.metadata.CopyFrom(scalar_meta)
            value.tensor.CopyFrom(tf.make_tensor_proto(np.float32(item.value)))
        else:
            value.metadata.CopyFrom(histogram_meta)
            array = np.asarray(item.buckets, dtype=np.float64).reshape(-1, 3)
            value.tensor.CopyFrom(tf.make_tensor_proto(array, dtype=tf.float64))
    return proto


def write_report_summaries(
    writer: Any,
    report: Report | HessianReport,
    step: int,
    *,
    tensors: GradientTensors | None = None,
    buckets: int = DEFAULT_BUCKETS,
    extra: Mapping[str, float] | None = None,
) -> int:
    """Append ``report``'s summaries at ``step`` to ``writer`` (a ``tf.summary``
    writer, e.g. from ``tf.summary.create_file_writer``) as one event, and flush.

    Every value is computed before anything is written.  Returns the number of values.
    Histograms of an inspect report need ``tensors`` or ``report.tensors``.  ``extra``
    adds scalars (``tag -> value``) to the same event (the training instruments).
    """
    tf = _tf.tensorflow()
    items = report_summaries(report, tensors, buckets)
    items += [Scalar(tag, float(value)) for tag, value in (extra or {}).items()]
    data = summary_proto(items).SerializeToString()
    try:
        with writer.as_default():
            written = tf.summary.experimental.write_raw_pb(data, step=int(step))
        writer.flush()
    except (tf.errors.OpError, OSError) as exc:
        raise OutputError(f"TensorBoard: cannot write the event: {first_line(exc)}") from exc
    if not bool(written):
        raise OutputError("TensorBoard: the summary writer did not write the event.")
    return len(items)


def check_logdir_target(logdir: str | Path, option: str = "--tensorboard") -> Path:
    """Check, without creating anything, that ``logdir`` is or can become a writable
    folder: before a long computation, so a typo fails at once and leaves nothing."""
    path = Path(logdir)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file; expected a folder for the event files.")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: the folder {existing} is not writable.")
    return path


def check_logdir(logdir: str | Path, option: str = "--tensorboard") -> Path:
    """Create ``logdir`` (and its parents) if needed and check it is a writable folder."""
    path = check_logdir_target(logdir, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot create the folder: {first_line(exc)}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: the folder is not writable.")
    return path


def open_writer(logdir: str | Path, option: str = "--tensorboard") -> Any:
    """A ``tf.summary`` file writer on ``logdir`` (checked first), errors as one line."""
    tf = _tf.tensorflow()
    path = check_logdir(logdir, option)
    try:
        return tf.summary.create_file_writer(str(path))
    except (tf.errors.OpError, OSError) as exc:
        raise OutputError(f"{option} {path}: cannot write event files: {first_line(exc)}") from exc


def _write_atomically(
    report: Report | HessianReport,
    logdir: str | Path,
    step: int,
    tensors: GradientTensors | None,
    buckets: int,
) -> Path:
    tf = _tf.tensorflow()
    target = check_logdir(logdir)
    items = report_summaries(report, tensors, buckets)
    data = summary_proto(items).SerializeToString()
    try:
        temporary = Path(tempfile.mkdtemp(prefix=".gradscope-", dir=target))
    except OSError as exc:
        raise OutputError(f"--tensorboard {target}: cannot write: {first_line(exc)}") from exc
    try:
        writer = tf.summary.create_file_writer(str(temporary))
        with writer.as_default():
            tf.summary.experimental.write_raw_pb(data, step=int(step))
        writer.close()
        (written,) = [p for p in temporary.iterdir() if "tfevents" in p.name]
        final = target / written.name
        os.replace(written, final)
        return final
    except (tf.errors.OpError, OSError) as exc:
        raise OutputError(
            f"--tensorboard {target}: cannot write the event file: {first_line(exc)}"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(temporary)


def write_inspect(
    report: Report,
    logdir: str | Path,
    *,
    step: int = 0,
    tensors: GradientTensors | None = None,
    buckets: int = DEFAULT_BUCKETS,
) -> Path:
    """Write an inspect report as one event at ``step`` in a new event file in ``logdir``.

    Scalars always; gradient histograms when the raw tensors are there (``tensors``, or
    ``report.tensors`` from ``keep_tensors=True``).  Atomic: see the module doc.  Returns
    the event file's path.  Raises :class:`~gradscope.errors.OutputError` when ``logdir``
    cannot be created or written.
    """
    return _write_atomically(report, logdir, step, tensors, buckets)


def write_hessian(report: HessianReport, logdir: str | Path, *, step: int = 0) -> Path:
    """Write a Hessian report (eigenvalues, trace, spectral density) as one event at
    ``step`` in a new event file in ``logdir``; atomic like :func:`write_inspect`."""
    return _write_atomically(report, logdir, step, None, DEFAULT_BUCKETS)
