"""The ``attribute`` entry points: which inputs drive the loss or a chosen output.

:func:`attribute` (an in-memory model) and :func:`attribute_file` (a saved model and a
batch file) resolve the loss and batches as ``inspect`` does, then run the method's
compiled function (:class:`gradscope.engine.attribution.AttributionEngine`) batch by
batch; SmoothGrad's samples and Integrated Gradients' steps go through it in chunks
sized to ``--max-memory``.  The summaries (totals, norms, top positions) are computed
here from the attribution arrays, vectorized over the examples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..._progress import Progress
from ...engine.attribution import (
    AttributionEngine,
    Point,
    TargetSpec,
    is_convolution,
    loss_reduction,
)
from ...engine.capture import LayerNode, walk_layers
from ...engine.step_memory import ROWS_OPTIONS, batch_bytes, refuse
from ...errors import DataLoadError, MismatchError, UsageError, first_line, received
from ...loading.data import Batch, Batches, as_batches, split_batch
from ...loading.signature import ModelSignature
from ...loading.synthetic import DEFAULT_ROWS
from ...report import LossInfo, ModelInfo
from ...selection import close_names
from ...session import ArrayLike, prepare_loss_and_batch
from ..inspect.options import InspectOptions
from ..start import start_from_files, start_in_memory
from .options import AttributeOptions, BaselineChoice, resolve_seed
from .report import (
    AttributedInput,
    AttributeReport,
    AttributionTensors,
    ExampleAttribution,
    InputAttribution,
    InputKind,
    MethodInfo,
    TargetInfo,
    Timing,
    TopPosition,
)

ROW_METHODS = ("saliency", "gradient-x-input", "smoothgrad", "integrated-gradients")
IMAGE_CHANNELS = (1, 3, 4)
QUADRATURE = "gauss-legendre"


# -- what is attributed, and against what -------------------------------------------------


def _target_spec(signature: ModelSignature, options: AttributeOptions) -> TargetSpec:
    """The engine's target: the loss, or the chosen output (by ``--output``, or the only
    one) at a class that output has."""
    choice = options.target_choice
    if choice.kind == "loss":
        return TargetSpec("loss")
    names = signature.output_names
    if options.output is None and len(names) > 1:
        raise UsageError(
            f"--output: the model has {len(names)} outputs; expected --output NAME with "
            f"a class target. Received: no --output (outputs: {', '.join(names)})"
        )
    name = options.output or names[0]
    if name not in names:
        hint = close_names(name, names)
        raise UsageError(
            f"--output: no output named {name!r}; expected one of {', '.join(names)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f". Received: {name!r}"
        )
    spec = signature.outputs[names.index(name)]
    classes = spec.shape[-1] if len(spec.shape) >= 2 else None
    if choice.index is not None and classes is not None and choice.index >= classes:
        raise UsageError(
            f"--target: output {name!r} has {classes} classes (indices 0 to {classes - 1}). "
            f"Received: class:{choice.index}"
        )
    flat = signature.pack_outputs({n: i for i, n in enumerate(names)})
    order = [int(i) for i in _flatten(flat)]
    return TargetSpec("class", order.index(names.index(name)), name, options.logits)


def _flatten(structure: Any) -> list[Any]:
    if isinstance(structure, Mapping):
        return [v for k in sorted(structure) for v in _flatten(structure[k])]
    if isinstance(structure, list | tuple):
        return [v for item in structure for v in _flatten(item)]
    return [structure]


def _layer_node(model: Any, options: AttributeOptions) -> LayerNode | None:
    """The ``--layer`` Grad-CAM weights, by path or name (``None``: the last convolution)."""
    if options.layer is None:
        return None
    nodes = walk_layers(model)
    wanted = options.layer.strip("/")
    exact = [n for n in nodes if n.path == wanted]
    named = exact or [n for n in nodes if n.layer.name == wanted]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        paths = ", ".join(n.path for n in named[:5])
        raise UsageError(
            f"--layer: {len(named)} layers are named {wanted!r}; expected one, give its "
            f"path. Received: {wanted!r} (paths: {paths})"
        )
    known = [n.path for n in nodes]
    hint = close_names(wanted, known)
    convolutions = [n.path for n in nodes if is_convolution(n.layer)]
    shown = hint or convolutions[-5:] or known[-5:]
    raise UsageError(
        f"--layer: no layer {wanted!r} in the model; expected a layer name or path such "
        f"as {', '.join(repr(p) for p in shown)}. Received: {wanted!r}"
    )


def _input_kind(point: Point) -> tuple[InputKind, int | None]:
    """How a point is drawn, and the axis its positions sum over (see the report)."""
    if point.through is not None:
        return "tokens", len(point.shape) - 1 if point.shape else None
    if len(point.shape) == 3 and point.shape[-1] in IMAGE_CHANNELS and min(point.shape[:2]) > 1:
        return "image", 2
    if len(point.shape) == 1:
        return "tabular", None
    if len(point.shape) == 2:
        return "sequence", None
    return "other", None


# -- the baseline of Integrated Gradients --------------------------------------------------


@dataclass
class Baseline:
    """Integrated Gradients' path start: per float input an array of its per-example
    shape (``bases``), per integer input the ids whose embedding starts the path
    (``ids``); an input in neither starts from zeros."""

    bases: dict[str, np.ndarray] = field(default_factory=dict)
    ids: dict[str, np.ndarray] = field(default_factory=dict)

    def for_batch(self, rows: int) -> tuple[dict[str, np.ndarray] | None, dict[str, Any] | None]:
        """The arrays of a batch of ``rows`` examples (``None`` when there are none)."""

        def tiled(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
            if not arrays:
                return None
            return {
                k: np.ascontiguousarray(np.broadcast_to(a, (rows, *a.shape)))
                for k, a in arrays.items()
            }

        return tiled(self.bases), tiled(self.ids)


def _mean_baseline(signature: ModelSignature, batches: Batches) -> Baseline:
    """The mean example of the data, per float input (float64 sums)."""
    integer = [s.name for s in signature.inputs if not s.is_float]
    if integer:
        raise UsageError(
            f"--baseline mean: input {integer[0]!r} holds integer ids, which have no "
            "mean; expected zeros or a FILE of baseline ids. Received: --baseline mean"
        )
    sums: dict[str, np.ndarray] = {}
    for batch in batches.iterate():
        for name, array in batch.inputs.items():
            total = np.asarray(array, np.float64).sum(axis=0)
            sums[name] = sums[name] + total if name in sums else total
    return Baseline({k: (v / batches.rows).astype(np.float32) for k, v in sums.items()})


MAX_BASELINE_BYTES = 1 << 30
"""A baseline holds one example: more than 1 GiB is not one (and is not read)."""


def _check_baseline_size(path: Path, key: str, size: int) -> None:
    if size > MAX_BASELINE_BYTES:
        raise DataLoadError(
            f"{path}: baseline {key!r} holds {size:,} bytes; expected one example's array "
            f"(at most {MAX_BASELINE_BYTES:,} bytes). Received: a larger array"
        )


def _read_baseline_file(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (one input) or ``.npz`` (one array per input) file."""
    try:
        if path.suffix.lower() == ".npy":
            if len(names) != 1:
                raise UsageError(
                    f"--baseline {path}: the model has {len(names)} inputs; expected a "
                    f".npz file with one array per input ({', '.join(names)}). Received: "
                    "a .npy file"
                )
            # Memory-mapped: a hostile file's size is seen before anything is read.
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            _check_baseline_size(path, names[0], int(array.nbytes))
            return {names[0]: np.array(array)}
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                size = archive.zip.getinfo(f"{key}.npy").file_size
                _check_baseline_size(path, key, size)
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise DataLoadError(
            f"{path}: cannot read the baseline; expected a numeric .npy or .npz file "
            f"(no pickles). {received(first_line(exc))}"
        ) from exc


def _file_baseline(path: Path, signature: ModelSignature) -> Baseline:
    """A baseline file's arrays, checked against the inputs' per-example shapes."""
    arrays = _read_baseline_file(path, signature.input_names)
    baseline = Baseline()
    for spec in signature.inputs:
        if spec.name not in arrays:
            raise MismatchError(
                f"{path}: no baseline array for input {spec.name!r}; expected keys "
                f"{', '.join(signature.input_names)}. Received: {', '.join(sorted(arrays))}"
            )
        array = np.asarray(arrays[spec.name])
        expected = tuple(spec.shape[1:])
        shape = (
            array.shape[1:]
            if array.ndim == len(expected) + 1 and array.shape[0] == 1
            else array.shape
        )
        if len(shape) != len(expected) or any(
            e is not None and e != d for e, d in zip(expected, shape, strict=False)
        ):
            raise MismatchError(
                f"{path}: baseline {spec.name!r} must have one example's shape "
                f"{tuple('?' if e is None else e for e in expected)}. Received: {array.shape}"
            )
        one = array.reshape(shape)
        if spec.is_float:
            baseline.bases[spec.name] = one.astype(np.dtype(spec.dtype), copy=False)
        elif np.issubdtype(one.dtype, np.integer):
            baseline.ids[spec.name] = one.astype(np.dtype(spec.dtype), copy=False)
        else:
            raise MismatchError(
                f"{path}: input {spec.name!r} takes integer ids, so its baseline must be "
                f"ids too. Received: {one.dtype} values"
            )
    return baseline


def _baseline(choice: BaselineChoice, signature: ModelSignature, batches: Batches) -> Baseline:
    if choice.kind == "zeros":
        return Baseline()
    if choice.kind == "mean":
        return _mean_baseline(signature, batches)
    path = Path(str(choice.path))
    if not path.is_file():
        raise DataLoadError(
            f"--baseline: no such file; expected a .npy or .npz file. Received: {path}"
        )
    return _file_baseline(path, signature)


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``steps``-point Gauss-Legendre rule on [0, 1]: exact
    for polynomials of degree ``2·steps − 1``, and the weights sum to 1."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1.0) / 2.0, weights / 2.0


# -- the work on one batch -----------------------------------------------------------------


@dataclass
class _Run:
    """A run's fixed parts: the engine, the options, the baseline and noise source."""

    engine: AttributionEngine
    options: AttributeOptions
    baseline: Baseline
    rng: np.random.Generator
    budget: int
    progress: Progress
    chunk: int = 0
    rows: int = 0
    width: int = 0


@dataclass
class _BatchResult:
    """One batch's attributions (by point name), scores, classes and extras."""

    attributions: dict[str, np.ndarray]
    scores: np.ndarray
    targets: list[int | None]
    baseline_scores: np.ndarray | None = None
    resized: np.ndarray | None = None

    def first(self, rows: int) -> _BatchResult:
        """The result of the first ``rows`` examples (a padded batch's real ones)."""

        def cut(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[:rows]

        return _BatchResult(
            {name: array[:rows] for name, array in self.attributions.items()},
            self.scores[:rows],
            self.targets[:rows],
            cut(self.baseline_scores),
            cut(self.resized),
        )


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with its last row repeated up to ``rows`` rows."""
    missing = rows - len(array)
    if missing <= 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


def _padded(batch: Batch, rows: int) -> Batch:
    """``batch`` padded to ``rows`` rows with copies of its last row, so that a short
    last batch runs through the trace of the full ones (the copies are dropped after)."""
    if batch.size >= rows:
        return batch

    def pad(arrays: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
        return None if arrays is None else {k: _pad_rows(a, rows) for k, a in arrays.items()}

    weight = None if batch.sample_weight is None else _pad_rows(batch.sample_weight, rows)
    return Batch(
        pad(batch.inputs) or {}, pad(batch.targets), weight, replace(batch.info, size=rows)
    )


def _targets_of(classes: np.ndarray | None, rows: int) -> list[int | None]:
    """Per example the class attributed, or ``None`` (the loss; a sequence output whose
    class differs by position)."""
    if classes is None:
        return [None] * rows
    flat = classes.reshape(rows, -1)
    same = (flat == flat[:, :1]).all(axis=1) if flat.shape[1] else np.ones(rows, bool)
    return [int(flat[i, 0]) if same[i] and flat.shape[1] else None for i in range(rows)]


def _forward_scores(run: _Run, forward: Mapping[str, Any], rows: int) -> np.ndarray:
    engine = run.engine
    if engine.target.kind == "class":
        return np.asarray(forward["scores"], np.float64)
    if not engine.loss.needs_targets:
        return np.asarray(forward["sums"], np.float64)
    scale = rows if engine.reduction == "mean" else 1
    return np.asarray(forward["shares"], np.float64) * scale


def _noise_like(
    run: _Run, points: Mapping[str, Point], steps: int, rows: int
) -> dict[str, np.ndarray]:
    """SmoothGrad's standard normal draws for ``steps`` samples of ``rows`` examples,
    each attributed input in turn (the seeded stream goes on across chunks)."""
    return {
        name: run.rng.standard_normal((steps, rows, *point.shape), dtype=np.float32)
        for name, point in points.items()
    }


def _row_arguments(
    run: _Run,
    batch: Batch,
    targets: Any,
    classes: np.ndarray | None,
    alphas: np.ndarray,
    weights: np.ndarray,
    noise: dict[str, np.ndarray] | None,
) -> tuple[Any, ...]:
    bases, ids = run.baseline.for_batch(batch.size)
    return (
        dict(batch.inputs), targets, _weight(run, batch), classes, alphas.astype(np.float32),
        weights.astype(np.float32), noise, bases, ids,
    )  # fmt: skip


def _noise_views(points: Mapping[str, Point], steps: int, rows: int) -> dict[str, np.ndarray]:
    """Zero-strided stand-ins of SmoothGrad's noise: the shapes a trace needs, no memory."""
    zero = np.zeros((), np.float32)
    return {name: np.broadcast_to(zero, (steps, rows, *p.shape)) for name, p in points.items()}


def _chunk_steps(run: _Run, batch: Batch, targets: Any, classes: Any, total: int) -> int:
    """How many steps (or samples) of all the batch's examples one call takes.

    The function is traced for all ``total`` steps at once (not run) and its peak read
    off the trace; when that does not fit the budget, less the batch and its
    accumulators, the steps are cut into chunks of the size that fits (the trace of
    that size is then the one the run uses)."""
    points = run.engine.trace.points
    smooth = run.options.method == "smoothgrad"
    noise = _noise_views(points, total, batch.size) if smooth else None
    steps = np.ones(total)
    arguments = _row_arguments(run, batch, targets, classes, steps, steps, noise)
    peak = run.engine.rows_peak_bytes(arguments)
    point_bytes = sum(4 * batch.size * math.prod(p.shape) for p in points.values())
    resident = batch_bytes(batch) + 4 * point_bytes  # float64 sums and values
    per_step = peak / total + (point_bytes if smooth else 0)
    if resident + per_step * total <= run.budget:
        return total
    if resident + per_step > run.budget:
        raise refuse(
            f"attribute: one step of {batch.size} examples needs about "
            f"{_format(int(resident + per_step))}",
            int(resident + per_step), run.budget, batch.size, ROWS_OPTIONS,
        )  # fmt: skip
    return int(max(1, (run.budget - resident) // max(per_step, 1.0)))


def _weight(run: _Run | AttributionEngine, batch: Batch) -> np.ndarray | None:
    """The data's sample weights, when the loss target reads them."""
    engine = run.engine if isinstance(run, _Run) else run
    uses = engine.target.kind == "loss" and engine.loss.needs_targets
    return batch.sample_weight if uses else None


def _format(size: int) -> str:
    from ...engine.graph_memory import format_bytes

    return format_bytes(size)


def _accumulate(
    run: _Run,
    batch: Batch,
    targets: Any,
    classes: Any,
    alphas: np.ndarray,
    weights: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Σ_s weights[s] · gradient at step s, per example and point, in chunks of steps
    (the last one padded with zero-weight steps, so that every call has one shape)."""
    total = len(alphas)
    chunk = run.chunk or _chunk_steps(run, batch, targets, classes, total)
    run.chunk = chunk
    sums: dict[str, np.ndarray] = {}
    first: dict[str, Any] = {}
    scores: list[np.ndarray] = []
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        pad = chunk - (stop - start)
        noise = None
        if run.options.method == "smoothgrad":
            drawn = _noise_like(run, run.engine.trace.points, stop - start, batch.size)
            noise = {
                k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
                for k, v in drawn.items()
            }
        chunk_alphas = np.concatenate([alphas[start:stop], np.ones(pad)])
        chunk_weights = np.concatenate([weights[start:stop], np.zeros(pad)])
        arguments = _row_arguments(run, batch, targets, classes, chunk_alphas, chunk_weights, noise)
        result = run.engine.rows(arguments)
        for name, gradient in result["gradients"].items():
            sums[name] = sums[name] + gradient if name in sums else np.asarray(gradient, np.float64)
        first = first or result
        scores.append(np.asarray(result["scores"])[: stop - start])
        run.rows += (stop - start) * batch.size
        run.progress.step(stop - start)
    first["step_scores"] = np.concatenate(scores)
    return sums, first


def _row_method(
    run: _Run, batch: Batch, targets: Any, classes: Any, scores: np.ndarray
) -> _BatchResult:
    """Saliency, gradient × input, SmoothGrad or Integrated Gradients on one batch."""
    method = run.options.method
    rows = batch.size
    target_list = _targets_of(classes, rows)
    if method == "integrated-gradients":
        nodes, quadrature = gauss_legendre(run.options.step_count)
        # Two more steps, of weight zero: the baseline (alpha 0) and the input (alpha 1),
        # whose scores the completeness check compares.
        alphas = np.concatenate([nodes, [0.0, 1.0]])
        weights = np.concatenate([quadrature, [0.0, 0.0]])
    elif method == "smoothgrad":
        count = run.options.sample_count
        alphas, weights = np.ones(count), np.full(count, 1.0 / count)
    else:
        alphas, weights = np.ones(1), np.ones(1)
    sums, first = _accumulate(run, batch, targets, classes, alphas, weights)
    attributions = {}
    for name, gradient in sums.items():
        value = np.asarray(first["values"][name], np.float64)
        if method == "gradient-x-input":
            attributions[name] = gradient * value
        elif method == "integrated-gradients":
            base = np.asarray(first["bases"][name], np.float64)
            attributions[name] = gradient * (value - base)
        else:
            attributions[name] = gradient
    result = _BatchResult(attributions, scores, target_list)
    if method == "integrated-gradients":
        result.baseline_scores = np.asarray(first["step_scores"][-2], np.float64)
        result.scores = np.asarray(first["step_scores"][-1], np.float64)
    return result


def _overlay(inputs: Sequence[AttributedInput]) -> AttributedInput | None:
    return next((item for item in inputs if item.kind == "image"), None)


def _gradcam(
    run: _Run,
    batch: Batch,
    targets: Any,
    classes: Any,
    scores: np.ndarray,
    image: AttributedInput | None,
) -> _BatchResult:
    size = None if image is None else image.shape[:2]
    weight = _weight(run, batch)
    if not run.chunk:
        peak = run.engine.gradcam_peak_bytes(batch.inputs, targets, weight, classes, size)
        needed = peak + batch_bytes(batch)
        if needed > run.budget:
            raise refuse(
                f"attribute: Grad-CAM on {batch.size} examples needs about {_format(needed)}",
                needed, run.budget, batch.size, ROWS_OPTIONS,
            )  # fmt: skip
        run.chunk = 1
    out = run.engine.gradcam(batch.inputs, targets, weight, classes, size)
    run.rows += batch.size
    run.progress.step(1)
    layer = run.engine.trace.layer
    name = layer.path if layer is not None else "gradcam"
    resized = out["resized"] if np.size(out["resized"]) else None
    return _BatchResult(
        {name: np.asarray(out["cam"], np.float64)},
        scores,
        _targets_of(classes, batch.size),
        resized=resized,
    )


# -- summaries -------------------------------------------------------------------------------


def _positions(
    attribution: np.ndarray, item: AttributedInput, mask: np.ndarray | None
) -> np.ndarray:
    """Per example, the attribution at each position (``[B, positions]``), masked
    positions as NaN."""
    rows = attribution.shape[0]
    summed = (
        attribution if item.reduced_axis is None else attribution.sum(axis=1 + item.reduced_axis)
    )
    flat = summed.reshape(rows, -1).astype(np.float64, copy=True)
    if mask is not None and mask.reshape(rows, -1).shape == flat.shape:
        flat[~mask.reshape(rows, -1).astype(bool)] = np.nan
    return flat


def _top(flat: np.ndarray, shape: tuple[int, ...], k: int) -> list[tuple[TopPosition, ...]]:
    """The ``k`` largest positions by absolute value, per example (NaN never chosen)."""
    rows, size = flat.shape
    count = min(k, size)
    if count == 0:
        return [() for _ in range(rows)]
    magnitude = np.where(np.isnan(flat), -np.inf, np.abs(flat))
    chosen = np.argpartition(-magnitude, count - 1, axis=1)[:, :count]
    order = np.argsort(-np.take_along_axis(magnitude, chosen, axis=1), axis=1, kind="stable")
    chosen = np.take_along_axis(chosen, order, axis=1)
    return [
        tuple(
            TopPosition(tuple(int(i) for i in np.unravel_index(int(c), shape)), float(flat[row, c]))
            for c in chosen[row]
            if not np.isnan(flat[row, c])
        )
        for row in range(rows)
    ]


def _summaries(
    name: str, attribution: np.ndarray, item: AttributedInput, mask: np.ndarray | None, k: int
) -> list[InputAttribution]:
    rows = attribution.shape[0]
    flat = attribution.reshape(rows, -1)
    finite = np.isfinite(flat)
    tops = _top(_positions(attribution, item, mask), item.position_shape, k)
    totals, absolute = flat.sum(axis=1), np.abs(flat).sum(axis=1)
    l2 = np.sqrt((flat * flat).sum(axis=1))
    max_abs = np.abs(flat).max(axis=1, initial=0.0)
    return [
        InputAttribution(
            name,
            float(totals[i]),
            float(absolute[i]),
            float(l2[i]),
            float(max_abs[i]),
            int((~finite[i]).sum()),
            tops[i],
        )
        for i in range(rows)
    ]


def _completeness(scores: np.ndarray, baseline: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """|Σ attributions − (f(x) − f(x'))| / |f(x) − f(x')|, NaN where f(x) = f(x')."""
    delta = scores - baseline
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(delta != 0, np.abs(totals - delta) / np.abs(delta), np.nan)


# -- the pipeline ------------------------------------------------------------------------------


def _point_input(point: Point) -> AttributedInput:
    kind, axis = _input_kind(point)
    return AttributedInput(point.name, kind, point.shape, point.dtype, point.through, axis)


def _point_inputs(engine: AttributionEngine) -> list[AttributedInput]:
    """The inputs the trace attributed (Grad-CAM: the ones its map is drawn over)."""
    return [_point_input(point) for point in engine.trace.points.values()]


def _attributed(engine: AttributionEngine, method: str) -> tuple[AttributedInput, ...]:
    """The report's description of what the trace attributed."""
    trace = engine.trace
    inputs = _point_inputs(engine)
    if method != "gradcam":
        return tuple(inputs)
    image = _overlay(inputs)
    layer = trace.layer
    shape = tuple(d for i, d in enumerate(trace.layer_shape) if i != trace.channel_axis - 1)
    return (
        AttributedInput(
            layer.path if layer is not None else "gradcam", "feature_map", shape, "float32",
            overlay=None if image is None else image.name,
        ),
    )  # fmt: skip


def _notes(engine: AttributionEngine, options: AttributeOptions, batch: Batch) -> list[str]:
    trace = engine.trace
    notes = []
    for name, point in trace.points.items():
        if point.through is not None and options.method != "gradcam":
            notes.append(
                f"input {name!r} holds integer ids: attributed through the output of "
                f"layer {point.through!r} (summed over its last axis per token)"
            )
    for name, layers in trace.also.items():
        notes.append(
            f"input {name!r} also feeds {', '.join(repr(p) for p in layers)}: only its "
            f"first embedding, {trace.points[name].through!r}, is attributed"
        )
    if options.method != "gradcam":
        for name in trace.unembedded:
            notes.append(
                f"input {name!r} holds integer values that no layer embeds: not attributed"
            )
    if options.method == "gradcam" and options.layer is None and trace.layer is not None:
        notes.append(
            f"Grad-CAM layer: {trace.layer.path!r}, the last convolution (choose with --layer)"
        )
    if batch.sample_weight is not None and engine.target.kind == "loss":
        notes.append("the data's sample weights weight each example's loss, as in training")
    return notes


def _reduction(engine: AttributionEngine, batch: Batch, targets: Any) -> None:
    """Find how the loss combines its examples' terms (:func:`loss_reduction`), and
    refuse a loss whose terms depend on each other."""
    if engine.target.kind != "loss" or not engine.loss.needs_targets:
        return
    weight = batch.sample_weight
    once = engine.forward(batch.inputs, targets, weight, -1)
    doubled_inputs = {k: np.concatenate([a, a]) for k, a in batch.inputs.items()}
    doubled_targets = (
        None if targets is None else {k: np.concatenate([a, a]) for k, a in targets.items()}
    )
    doubled_weight = None if weight is None else np.concatenate([weight, weight])
    twice = engine.forward(doubled_inputs, doubled_targets, doubled_weight, -1)
    terms = np.asarray(once["shares"], np.float64)
    data_loss = float(once["loss"]) - float(once["regularization"])
    found = loss_reduction(terms, np.asarray(twice["shares"], np.float64)[: batch.size])
    scale = max(abs(data_loss), np.abs(terms).sum(), 1e-30)
    if found is None or abs(terms.sum() - data_loss) > 1e-3 * scale:
        raise UsageError(
            f"--target loss: the loss ({engine.loss.source}) is not a sum or mean of "
            "per-example terms, so no example has a loss of its own; expected a Keras "
            "loss reduced over the batch. Received: a loss whose terms depend on each "
            "other (use --target predicted or class:K)"
        )
    engine.reduction = found


def _fill(options: AttributeOptions) -> int:
    choice = options.target_choice
    return -1 if choice.index is None else choice.index


@dataclass
class _Collected:
    """Everything gathered over the batches."""

    examples: list[ExampleAttribution] = field(default_factory=list)
    attributions: dict[str, list[np.ndarray]] = field(default_factory=dict)
    inputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    masks: dict[str, list[np.ndarray]] = field(default_factory=dict)
    resized: list[np.ndarray] = field(default_factory=list)
    loss: float = 0.0
    regularization: float = 0.0


def _masks(
    forward: Mapping[str, Any], batch: Batch, inputs: Sequence[AttributedInput]
) -> dict[str, np.ndarray]:
    """Per token input, which tokens are real: Keras's mask when the embedding has one,
    else an integer input named like ``padding_mask`` of the same shape (keras_hub)."""
    masks = {name: np.asarray(m, bool) for name, m in forward.get("masks", {}).items()}
    for item in inputs:
        if item.kind != "tokens" or item.name in masks:
            continue
        ids = batch.inputs[item.name]
        for name, array in batch.inputs.items():
            if "padding_mask" in name and name != item.name and array.shape == ids.shape:
                masks[item.name] = np.asarray(array).astype(bool)
    return masks


def _collect_batch(
    run: _Run,
    batch: Batch,
    offset: int,
    collected: _Collected,
    described: list[tuple[AttributedInput, ...]],
) -> None:
    engine = run.engine
    targets = batch.targets if engine.loss.needs_targets else None
    forward = engine.forward(batch.inputs, targets, _weight(run, batch), _fill(run.options))
    classes = forward.get("classes")
    scores = _forward_scores(run, forward, batch.size)
    collected.loss += float(forward["loss"]) * batch.size
    collected.regularization += float(forward["regularization"]) * batch.size
    width = run.width or batch.size
    run.width = width
    padded = _padded(batch, width)
    padded_targets = padded.targets if engine.loss.needs_targets else None
    padded_classes = None if classes is None else _pad_rows(classes, width)
    if run.options.method == "gradcam":
        image = _overlay(_point_inputs(engine))
        result = _gradcam(run, padded, padded_targets, padded_classes, scores, image)
    else:
        result = _row_method(run, padded, padded_targets, padded_classes, scores)
    result = result.first(batch.size)
    if not described:
        described.append(_attributed(engine, run.options.method))
    inputs = described[0]
    masks = _masks(forward, batch, inputs)
    summaries = {
        item.name: _summaries(
            item.name, result.attributions[item.name], item, masks.get(item.name), run.options.top_k
        )
        for item in inputs
    }
    errors = None
    if result.baseline_scores is not None:
        totals = sum(np.array([s.total for s in summaries[item.name]]) for item in inputs)
        errors = _completeness(result.scores, result.baseline_scores, np.asarray(totals))
    for i in range(batch.size):
        collected.examples.append(
            ExampleAttribution(
                index=offset + i,
                target=result.targets[i],
                score=float(result.scores[i]),
                inputs=tuple(summaries[item.name][i] for item in inputs),
                baseline_score=None
                if result.baseline_scores is None
                else float(result.baseline_scores[i]),
                completeness_error=None
                if errors is None or not np.isfinite(errors[i])
                else float(errors[i]),
            )
        )
    if run.options.keep_tensors:
        _keep(collected, result, batch, masks)


def _keep(
    collected: _Collected, result: _BatchResult, batch: Batch, masks: Mapping[str, np.ndarray]
) -> None:
    for name, array in result.attributions.items():
        collected.attributions.setdefault(name, []).append(array.astype(np.float32))
    for name, array in batch.inputs.items():
        collected.inputs.setdefault(name, []).append(np.asarray(array))
    for name, mask in masks.items():
        collected.masks.setdefault(name, []).append(mask)
    if result.resized is not None:
        collected.resized.append(np.asarray(result.resized, np.float32))


def _tensors(collected: _Collected) -> AttributionTensors:
    def joined(parts: Mapping[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in parts.items()}

    return AttributionTensors(
        attributions=joined(collected.attributions),
        inputs=joined(collected.inputs),
        masks=joined(collected.masks),
        resized=np.concatenate(collected.resized) if collected.resized else None,
    )


def _method_info(options: AttributeOptions, engine: AttributionEngine) -> MethodInfo:
    method = options.method
    if method == "integrated-gradients":
        return MethodInfo(
            method, steps=options.step_count, rule=QUADRATURE, baseline=str(options.baseline_choice)
        )
    if method == "smoothgrad":
        return MethodInfo(method, samples=options.sample_count, noise=options.noise_level)
    if method == "gradcam":
        layer = engine.trace.layer
        return MethodInfo(
            method, layer=None if layer is None else layer.path, chosen=options.layer is None
        )
    return MethodInfo(method)


def _refuse_hidden_layers(info: ModelInfo, options: AttributeOptions) -> None:
    """Grad-CAM needs the model's layers, which a SavedModel's functions do not show."""
    if info.format == "savedmodel" and options.method == "gradcam":
        raise UsageError(
            "--method gradcam: a SavedModel's restored functions do not expose its "
            f"layers; expected a .keras or .h5 file. Received: {info.path}"
        )


def _check_attributable(
    engine: AttributionEngine, options: AttributeOptions, info: ModelInfo
) -> None:
    if options.method != "gradcam" and not engine.trace.points:
        names = ", ".join(engine.integer_inputs)
        why = " (a SavedModel does not expose its embedding layers)"
        raise UsageError(
            "attribute: nothing to attribute; expected a float input, or an integer input "
            f"that a layer embeds. Received: integer inputs {names} that no layer embeds"
            + (why if info.format == "savedmodel" else "")
        )


def _check_kept(engine: AttributionEngine, options: AttributeOptions, batches: Batches) -> None:
    """Refuse, before any work, to keep arrays for ``--save``/``--plot``/``--html`` that
    do not fit the budget: per example its inputs as fed and a float32 attribution of
    each (Grad-CAM's maps are smaller than the image they are resized to)."""
    if not options.keep_tensors:
        return
    first = batches.first
    inputs = batch_bytes(first) // max(first.size, 1)
    attributions = sum(4 * math.prod(p.shape) for p in engine.trace.points.values())
    needed = batches.rows * (inputs + attributions)
    if needed > options.max_memory:
        raise refuse(
            f"attribute: keeping the arrays of {batches.rows:,} examples for --save, "
            f"--plot or --html needs about {_format(needed)}",
            needed, options.max_memory, batches.rows, ("--limit", "--max-batches"),
        )  # fmt: skip


def _steps_per_batch(options: AttributeOptions) -> int:
    if options.method == "integrated-gradients":
        return options.step_count + 2  # and the two ends
    if options.method == "smoothgrad":
        return options.sample_count
    return 1


def run_attribute(
    model: Any,
    signature: ModelSignature,
    data: Batch | Batches | None,
    settings: InspectOptions,
    options: AttributeOptions,
    model_info: ModelInfo,
    progress: Progress | None = None,
) -> AttributeReport:
    """The shared attribute pipeline: loss and batches as ``inspect``, then the method
    on every batch (see the module docstring)."""
    options, seed = resolve_seed(options, settings.seed)
    progress = progress or Progress()
    _refuse_hidden_layers(model_info, options)
    target = _target_spec(signature, options)
    layer = _layer_node(model, options)
    first = data.first if isinstance(data, Batches) else data
    spec, batch = prepare_loss_and_batch(model, signature, first, settings)
    if settings.batching and not isinstance(data, Batches):
        data = split_batch(batch, settings.batch_size or batch.size, settings.max_batches)
    batches = as_batches(data if isinstance(data, Batches) else batch)
    engine = AttributionEngine(
        model, signature, spec, target, method=options.method,
        noise=options.noise_level, layer=layer,
    )  # fmt: skip
    started = time.perf_counter()
    first_targets = batches.first.targets if spec.needs_targets else None
    engine.forward(
        batches.first.inputs, first_targets, _weight(engine, batches.first), _fill(options)
    )
    _check_attributable(engine, options, model_info)
    _check_kept(engine, options, batches)
    _reduction(engine, batches.first, first_targets)
    baseline = Baseline()
    if options.method == "integrated-gradients":
        baseline = _baseline(options.baseline_choice, signature, batches)
    run = _Run(engine, options, baseline, np.random.default_rng(seed), options.max_memory, progress)
    progress.block(0, 1, f"{options.method}", batches.count * _steps_per_batch(options))
    collected = _Collected()
    described: list[tuple[AttributedInput, ...]] = []
    offset = 0
    for piece in batches.iterate():
        _collect_batch(run, piece, offset, collected, described)
        offset += piece.size
    rows = max(offset, 1)
    return AttributeReport(
        model=model_info,
        batch=replace(batch.info, size=offset),
        loss=LossInfo(
            collected.loss / rows, spec.source, spec.kind, collected.regularization / rows
        ),
        method=_method_info(options, engine),
        target=TargetInfo(
            options.target_choice.kind, options.target_choice.index, target.output, options.logits
        ),
        inputs=described[0] if described else (),
        examples=tuple(collected.examples),
        seed=seed,
        timing=Timing(
            time.perf_counter() - started,
            run.rows,
            run.chunk * batches.first.size or batches.first.size,
            engine.traces,
        ),
        notes=tuple(_notes(engine, options, batches.first)),
        tensors=_tensors(collected) if options.keep_tensors else None,
    )


def attribute(
    model: Any,
    x: ArrayLike = None,
    y: ArrayLike = None,
    *,
    sample_weight: ArrayLike = None,
    loss: str | None = None,
    seed: int | None = None,
    rows: int = DEFAULT_ROWS,
    options: AttributeOptions | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> AttributeReport:
    """Attributions of an in-memory Keras model's inputs (see :class:`AttributeOptions`),
    on ``x`` (and ``y`` for the loss target), or on ``rows`` synthetic examples.

    The model runs in inference mode; nothing is assigned to its variables.
    """
    options, seed = resolve_seed(options, seed)
    start = start_in_memory(
        model, x, y, sample_weight, loss=loss, training=False, seed=seed, rows=rows,
        batch_size=batch_size, max_batches=max_batches, max_memory=options.max_memory,
    )  # fmt: skip
    return run_attribute(model, start.signature, start.data, start.settings, options, start.info)


def attribute_file(
    model_path: str | Path,
    data_path: str | Path | None = None,
    *,
    limit: int | None = None,
    loss: str | None = None,
    seed: int | None = None,
    options: AttributeOptions | None = None,
    progress: Progress | None = None,
    custom_objects: str | Path | None = None,
    unsafe: bool = False,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> AttributeReport:
    """Load a saved model (and a batch file, or synthesize one) and attribute its
    inputs.  ``custom_objects``, ``unsafe``, ``batch_size`` and ``max_batches`` are as
    in :func:`gradscope.inspect_file`."""
    options, seed = resolve_seed(options, seed)
    start = start_from_files(
        model_path, data_path, limit=limit, loss=loss, training=False, seed=seed,
        custom_objects=custom_objects, unsafe=unsafe, batch_size=batch_size,
        max_batches=max_batches, max_memory=options.max_memory,
    )  # fmt: skip
    return run_attribute(
        start.model, start.signature, start.data, start.settings, options, start.info, progress
    )


__all__: Sequence[str] = ["AttributeOptions", "attribute", "attribute_file", "gauss_legendre"]
