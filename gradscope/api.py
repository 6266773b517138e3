"""The library entry points: :func:`inspect` (in-memory model) and :func:`inspect_file`.

The CLI is a thin layer over :func:`inspect_file`; a Python user calls :func:`inspect`
with a model and arrays.  Both go through :func:`run_inspect`: resolve the loss, build
or check the batch, run the one-pass engine, and assemble the plain-data report.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _tf, stats
from .engine.capture import LOOP_NOTE, CapturedOutput, LayerNode
from .engine.gradients import EngineResult, GradientEngine
from .errors import MismatchError, UsageError, first_line, received
from .loading.data import Batch, check_data_path, check_input_array, load_batch
from .loading.models import LoadOptions, check_model_path, load_model
from .loading.signature import ModelSignature, model_signature
from .loading.synthetic import DEFAULT_ROWS, synthetic_batch
from .losses import LossSpec, check_loss_runs, resolve_loss
from .report import (
    ActivationRow,
    BatchInfo,
    GradientTensors,
    InputRow,
    LossInfo,
    ModelInfo,
    Report,
    VariableRow,
)

ArrayLike = Any


@dataclass(frozen=True)
class InspectOptions:
    """How to inspect: the loss override, mode, seed, synthetic rows, row filter."""

    loss: str | None = None
    training: bool = False
    seed: int = 0
    rows: int = DEFAULT_ROWS
    layers: str | None = None
    keep_tensors: bool = False


def inspect_file(
    model_path: str | Path,
    data_path: str | Path | None = None,
    *,
    limit: int | None = None,
    loss: str | None = None,
    training: bool = False,
    seed: int = 0,
    layers: str | None = None,
    keep_tensors: bool = False,
    custom_objects: str | Path | None = None,
    unsafe: bool = False,
) -> Report:
    """Load a saved model (and a batch file, or synthesize one) and inspect it.

    ``custom_objects`` is a Python file defining the custom classes the model needs;
    ``unsafe`` turns Keras's safe mode off, for a file you trust.
    """
    load = LoadOptions(None if custom_objects is None else Path(custom_objects), unsafe)
    model, signature, batch, info = load_for_cli(model_path, data_path, limit, seed, load)
    options = InspectOptions(loss, training, seed, limit or DEFAULT_ROWS, layers, keep_tensors)
    return run_inspect(model, signature, batch, options, info)


def inspect(
    model: Any,
    x: ArrayLike = None,
    y: ArrayLike = None,
    *,
    sample_weight: ArrayLike = None,
    loss: str | None = None,
    training: bool = False,
    seed: int = 0,
    rows: int = DEFAULT_ROWS,
    layers: str | None = None,
    keep_tensors: bool = False,
) -> Report:
    """Gradients of the loss for an in-memory Keras model, in one forward/backward pass.

    ``x`` and ``y`` are arrays, lists or dicts shaped like the model's inputs and outputs;
    with ``x=None`` a seeded synthetic batch of ``rows`` examples is used.  ``loss`` is a
    Keras loss name overriding the compiled loss.  ``keep_tensors=True`` keeps the raw
    gradient tensors in ``report.tensors``.  Keras's global random state is left alone.
    """
    signature = model_signature(model)
    batch = None if x is None else batch_from_arrays(signature, x, y, sample_weight)
    options = InspectOptions(loss, training, seed, rows, layers, keep_tensors)
    return run_inspect(model, signature, batch, options, model_info_of(model, None, "memory"))


def _named(specs_names: Sequence[str], value: ArrayLike, what: str) -> dict[str, np.ndarray]:
    if isinstance(value, Mapping):
        missing = [name for name in specs_names if name not in value]
        if missing:
            raise MismatchError(f"{what}: no array for {missing}. {received(sorted(value))}")
        return {name: np.asarray(value[name]) for name in specs_names}
    if isinstance(value, list | tuple) and len(specs_names) > 1:
        if len(value) != len(specs_names):
            raise MismatchError(
                f"{what}: expected {len(specs_names)} arrays {list(specs_names)}. "
                f"{received(len(value))}"
            )
        return {name: np.asarray(v) for name, v in zip(specs_names, value, strict=True)}
    if len(specs_names) != 1:
        raise MismatchError(f"{what}: expected a list or dict of {len(specs_names)} arrays.")
    return {specs_names[0]: np.asarray(value)}


def batch_from_arrays(
    signature: ModelSignature, x: ArrayLike, y: ArrayLike = None, sample_weight: ArrayLike = None
) -> Batch:
    """A checked :class:`Batch` from in-memory arrays (named after the model's signature)."""
    raw_inputs = _named(signature.input_names, x, "x")
    inputs = {
        spec.name: check_input_array("x", spec.name, raw_inputs[spec.name], spec)
        for spec in signature.inputs
    }
    targets = None if y is None else _named(signature.output_names, y, "y")
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float32)
    sizes = {a.shape[0] for a in [*inputs.values(), *(targets or {}).values()] if a.ndim}
    if len(sizes) != 1:
        raise MismatchError(f"x/y: expected one batch size. {received(sorted(sizes))}")
    info = BatchInfo("file", sizes.pop(), path=None, has_targets=targets is not None)
    return Batch(inputs, targets, weight, info)


def model_info_of(model: Any, path: str | None, fmt: str) -> ModelInfo:
    trainable = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    layer_count = (
        len(model._flatten_layers(include_self=False)) if hasattr(model, "_flatten_layers") else 0
    )
    return ModelInfo(model.name, type(model).__name__, path, fmt, trainable, layer_count)


def _fake_predictions(signature: ModelSignature, rows: int) -> Any:
    """Outputs-shaped arrays, enough for Keras to check targets against the loss."""
    arrays = {}
    for spec in signature.outputs:
        shape = tuple(rows if i == 0 else (d or 1) for i, d in enumerate(spec.shape))
        arrays[spec.name] = np.full(shape, 0.5, dtype=np.float32)
    return signature.pack_outputs(arrays)


def _preflight(spec: LossSpec, model: Any, signature: ModelSignature, batch: Batch) -> None:
    if batch.targets is None or not spec.needs_targets:
        return
    rows = min(batch.size, 2)
    sample = {name: array[:rows] for name, array in batch.targets.items()}
    check_loss_runs(spec, model, signature.pack_outputs(sample), _fake_predictions(signature, rows))


def prepare_loss_and_batch(
    model: Any, signature: ModelSignature, batch: Batch | None, options: InspectOptions
) -> tuple[LossSpec, Batch]:
    """Resolve the loss, synthesize the batch if none was given, and check they fit.

    Shared by every command that differentiates the loss (``inspect``, ``hessian``).
    """
    has_targets = batch is None or batch.targets is not None
    spec = resolve_loss(model, signature.output_names, options.loss, has_targets)
    if batch is None:
        batch = synthetic_batch(
            model,
            signature,
            spec.output_losses,
            rows=options.rows,
            seed=options.seed,
            with_targets=spec.needs_targets,
        )
    _preflight(spec, model, signature, batch)
    return spec, batch


def load_for_cli(
    model_path: str | Path,
    data_path: str | Path | None,
    limit: int | None,
    seed: int,
    load: LoadOptions | None = None,
) -> tuple[Any, ModelSignature, Batch | None, ModelInfo]:
    """Check paths (before importing TensorFlow), seed Keras, load the model and batch.

    Both paths are checked first, so a typo fails at once; Keras's global random state
    is seeded before the model is built, so dropout in training mode is reproducible.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"--limit: expected a positive number of rows. {received(limit)}")
    check_model_path(Path(model_path))
    if data_path is not None:
        check_data_path(Path(data_path))
    _tf.keras().utils.set_random_seed(seed)
    loaded = load_model(model_path, load)
    signature = model_signature(loaded.model)
    batch = None if data_path is None else load_batch(data_path, signature, limit=limit)
    return loaded.model, signature, batch, model_info_of(loaded.model, loaded.path, loaded.format)


def run_inspect(
    model: Any,
    signature: ModelSignature,
    batch: Batch | None,
    options: InspectOptions,
    model_info: ModelInfo,
) -> Report:
    """The shared inspect pipeline: loss, batch, engine, report."""
    spec, batch = prepare_loss_and_batch(model, signature, batch, options)
    engine = GradientEngine(
        model, signature, spec, training=options.training, keep_tensors=options.keep_tensors
    )
    with RestoredState(model, options.training):
        result = _run_engine(engine, batch)
    report = build_report(
        model, signature, spec, batch, result, engine.layer_nodes, options.training, model_info
    )
    return filter_layers(report, options.layers) if options.layers else report


def _run_engine(engine: GradientEngine, batch: Batch) -> EngineResult:
    """Run the engine; an error raised by the model on this batch is a mismatch."""
    tf = _tf.tensorflow()
    try:
        return engine.run(batch)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
        where = batch.info.path or "the batch"
        message = f"{where}: the model cannot run on this batch: {first_line(exc)}"
        raise MismatchError(message) from exc


class RestoredState:
    """In training mode, put non-trainable state (BatchNorm statistics, RNG) back after."""

    def __init__(self, model: Any, training: bool) -> None:
        self.variables = list(model.non_trainable_variables) if training else []
        self.saved: list[np.ndarray] = []

    def __enter__(self) -> None:
        self.saved = [np.array(v.numpy()) for v in self.variables]

    def __exit__(self, *exc_info: object) -> None:
        for variable, value in zip(self.variables, self.saved, strict=True):
            variable.assign(value)


# -- assembling the report ------------------------------------------------------------


def variable_owners(model: Any, nodes: list[LayerNode]) -> dict[int, LayerNode]:
    """Map ``id(variable)`` to the deepest layer that holds it."""
    owners: dict[int, LayerNode] = {}
    for node in sorted(nodes, key=lambda n: -n.depth):
        for variable in getattr(node.layer, "trainable_variables", []):
            owners.setdefault(id(variable), node)
    return owners


def _forward_position(
    node: LayerNode | None, first_call: dict[int, int], nodes: list[LayerNode]
) -> int:
    """Where ``node`` (or its nearest called ancestor) first ran in the forward pass."""
    if node is None:
        return len(first_call) + 1_000_000
    if id(node.layer) in first_call:
        return first_call[id(node.layer)]
    parent_path = node.path.rsplit("/", 1)[0] if "/" in node.path else None
    parent = next((n for n in nodes if n.path == parent_path), None)
    return _forward_position(parent, first_call, nodes) if parent else len(first_call) + 1_000_000


def _variable_rows(
    model: Any, result: EngineResult, nodes: list[LayerNode], variables: list[Any]
) -> list[VariableRow]:
    owners = variable_owners(model, nodes)
    meta = result.meta
    positioned = []
    for index, variable in enumerate(variables):
        node = owners.get(id(variable))
        connected = meta.variable_connected[index]
        grad = stats.to_tensor_stats(result.variable_stats[index]) if connected else None
        weight_l2 = float(result.weight_l2[index])
        ratio = None if grad is None or weight_l2 == 0 else grad.l2 / weight_l2
        touched = int(result.rows_touched[index])
        row = VariableRow(
            path=variable.path,
            layer=node.path if node else model.name,
            layer_class=type(node.layer).__name__ if node else type(model).__name__,
            shape=tuple(int(d) for d in variable.shape),
            dtype=str(variable.dtype),
            grad=grad,
            weight_l2=weight_l2,
            ratio=ratio,
            note=None if connected else "no gradient: the loss does not depend on it",
            rows_touched=touched if touched >= 0 else None,
        )
        positioned.append((_forward_position(node, meta.first_call, nodes), index, row))
    return [row for _, _, row in sorted(positioned, key=lambda item: item[:2])]


def _input_rows(signature: ModelSignature, batch: Batch, result: EngineResult) -> list[InputRow]:
    rows = []
    for spec in signature.inputs:
        shape = tuple(int(d) for d in batch.inputs[spec.name].shape)
        if spec.name not in result.input_stats:
            rows.append(
                InputRow(spec.name, shape, spec.dtype, None, f"{spec.dtype} input: no gradient")
            )
        elif not result.meta.input_connected.get(spec.name, False):
            rows.append(
                InputRow(
                    spec.name,
                    shape,
                    spec.dtype,
                    None,
                    "no gradient: the loss does not depend on it",
                )
            )
        else:
            grad = stats.to_tensor_stats(result.input_stats[spec.name])
            rows.append(InputRow(spec.name, shape, spec.dtype, grad))
    return rows


def _activation_path(captured: CapturedOutput, calls: dict[int, int]) -> str:
    path = captured.node.path
    if calls.get(id(captured.node.layer), 1) > 1:
        path += f"@{captured.call}"
    if captured.n_outputs > 1:
        path += f":{captured.output}"
    return path


def _activation_rows(result: EngineResult) -> list[ActivationRow]:
    """One row per captured output; a layer that ran inside a loop gets one note row."""
    meta = result.meta
    calls: dict[int, int] = {}
    for captured in meta.outputs:
        calls[id(captured.node.layer)] = max(
            calls.get(id(captured.node.layer), 0), captured.call + 1
        )
    looped = {id(c.node.layer) for c in meta.outputs if c.in_loop}
    rows: list[ActivationRow] = []
    reported_loops: set[int] = set()
    grad_index = value_index = 0
    for captured in meta.outputs:
        tensor = captured.tensor
        grad = value = None
        note = captured.note
        if captured.differentiable:
            if meta.activation_connected[grad_index]:
                grad = stats.to_tensor_stats(result.activation_grad_stats[grad_index])
            elif note is None:
                note = "no gradient: the loss does not depend on it"
            grad_index += 1
        if captured.has_value_stats:
            value = stats.to_value_stats(result.activation_value_stats[value_index])
            value_index += 1
        layer_id = id(captured.node.layer)
        if layer_id in looped:
            if layer_id in reported_loops:
                continue
            reported_loops.add(layer_id)
            path, grad, value, note = captured.node.path, None, None, LOOP_NOTE
        else:
            path = _activation_path(captured, calls)
        rows.append(
            ActivationRow(
                layer=captured.node.layer.name,
                path=path,
                layer_class=type(captured.node.layer).__name__,
                call=captured.call,
                output=captured.output,
                shape=tuple(-1 if d is None else int(d) for d in tensor.shape),
                dtype=tensor.dtype.name,
                grad=grad,
                value=value,
                note=note,
            )
        )
    return rows


def _tensors(result: EngineResult, variables: list[Any]) -> GradientTensors | None:
    raw = result.tensors
    if raw is None:
        return None
    calls: dict[int, int] = {}
    for captured in result.meta.outputs:
        calls[id(captured.node.layer)] = max(
            calls.get(id(captured.node.layer), 0), captured.call + 1
        )
    paths = [_activation_path(c, calls) for c in result.meta.outputs if c.differentiable]
    return GradientTensors(
        variables={
            v.path: g for v, g in zip(variables, raw["variables"], strict=True) if g is not None
        },
        inputs={name: g for name, g in raw["inputs"].items() if g is not None},
        activations={p: g for p, g in zip(paths, raw["activations"], strict=True) if g is not None},
    )


def build_report(
    model: Any,
    signature: ModelSignature,
    spec: LossSpec,
    batch: Batch,
    result: EngineResult,
    nodes: list[LayerNode],
    training: bool,
    model_info: ModelInfo,
) -> Report:
    """Assemble the plain-data :class:`Report` from one engine result."""
    variables = list(model.trainable_variables)
    variable_rows = _variable_rows(model, result, nodes, variables)
    activation_rows = _activation_rows(result)
    norms = [row.grad.l2 for row in variable_rows if row.grad is not None]
    global_norm = float(np.sqrt(np.sum(np.square(norms, dtype=np.float64)))) if norms else 0.0
    loss_info = LossInfo(
        value=result.loss,
        source=spec.source,
        kind=spec.kind,
        regularization=result.regularization,
        regularization_terms=result.meta.regularization_terms,
    )
    return Report(
        model=model_info,
        batch=batch.info,
        loss=loss_info,
        training=training,
        variables=tuple(variable_rows),
        inputs=tuple(_input_rows(signature, batch, result)),
        activations=tuple(activation_rows),
        global_grad_norm=global_norm,
        tensors=_tensors(result, variables),
    )


def _matches(path: str, patterns: list[str]) -> bool:
    last = path.split("/")[-1]
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(last, p) for p in patterns)


def filter_layers(report: Report, layers: str) -> Report:
    """Keep only variable and activation rows whose layer path matches a glob in ``layers``.

    ``layers`` is a comma-separated list of globs, matched against the full path
    (``encoder/dense_1``) and against the last name (``dense_1``).
    """
    import dataclasses
    import difflib

    patterns = [p.strip() for p in layers.split(",") if p.strip()]
    variables = tuple(r for r in report.variables if _matches(r.layer, patterns))
    activations = tuple(r for r in report.activations if _matches(r.path, patterns))
    if not variables and not activations:
        known = sorted({r.path for r in report.activations} | {r.layer for r in report.variables})
        close = difflib.get_close_matches(patterns[0], known, n=3)
        hint = (
            f" Close names: {', '.join(close)}." if close else f" Layers: {', '.join(known[:8])}."
        )
        raise UsageError(f"--layers {layers!r}: no layer matches.{hint}")
    return dataclasses.replace(report, variables=variables, activations=activations)
