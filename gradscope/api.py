"""The library entry points: :func:`inspect` (in-memory model) and :func:`inspect_file`.

The CLI is a thin layer over :func:`inspect_file`; a Python user calls :func:`inspect`
with a model and arrays.  Both go through :func:`run_inspect`: resolve the loss, build
or check the batch, run the one-pass engine, and assemble the plain-data report.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _tf, stats
from ._keras_private import flatten_layers
from ._progress import Progress
from .aggregate import BatchAccumulator
from .engine.capture import LOOP_NOTE, CapturedOutput, LayerNode
from .engine.gradients import EngineResult, GradientEngine
from .engine.step_memory import ROWS_OPTIONS, budget, guard_step
from .errors import MismatchError, UsageError, first_line, received
from .health import Thresholds, diagnose
from .loading.custom_objects import check_custom_objects_path
from .loading.data import (
    Batch,
    Batches,
    check_data_path,
    check_input_array,
    guard_synthetic,
    iter_batches,
    load_batch,
    plan_batches,
    split_batch,
)
from .loading.models import LoadOptions, check_model_path, load_model
from .loading.pipelines import (
    check_cli_options,
    check_pipeline_spec,
    cli_data,
    data_argument,
    parse_pipeline_spec,
)
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
    PerSampleReport,
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
    batch_size: int | None = None
    max_batches: int | None = None
    per_sample: bool = False
    thresholds: Thresholds | None = None
    max_memory: int | None = None  # None: the default budget (gradscope.engine.step_memory)

    @property
    def batching(self) -> bool:
        return self.batch_size is not None


def _file_batches(
    path: str | Path,
    signature: ModelSignature,
    batch_size: int,
    max_batches: int | None,
    limit: int | None,
    max_memory: int | None = None,
) -> Batches:
    plan = plan_batches(
        path, signature, batch_size, max_batches=max_batches, limit=limit, max_memory=max_memory
    )
    first = next(iter_batches(plan, signature))
    return Batches(
        first, lambda: iter_batches(plan, signature), plan.rows, batch_size, plan.count, max_batches
    )


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
    batch_size: int | None = None,
    max_batches: int | None = None,
    per_sample: bool = False,
    progress: Progress | None = None,
    thresholds: Thresholds | None = None,
    max_memory: int | None = None,
) -> Report:
    """Load a saved model (and a batch file, or synthesize one) and inspect it.

    ``custom_objects`` is a Python file defining the custom classes the model needs;
    ``unsafe`` turns Keras's safe mode off, for a file you trust.  With ``batch_size``
    the data is streamed in batches of that many rows (at most ``max_batches``) and the
    report describes their mean gradient (see :mod:`gradscope.aggregate`).
    ``per_sample`` adds per-example gradient norms.  ``thresholds`` tune the health
    diagnoses (:mod:`gradscope.health`).  ``max_memory`` is the memory budget in bytes
    (``None``: half the available memory): a batch or step above it is refused with a
    :class:`~gradscope.errors.ResourceError` before it is read or run.
    """
    load = LoadOptions.of(custom_objects, unsafe, loss)
    options = InspectOptions(
        loss, training, seed, limit or DEFAULT_ROWS, layers, keep_tensors,
        batch_size, max_batches, per_sample, thresholds, max_memory,
    )  # fmt: skip
    model, signature, data, info = load_for_cli(model_path, data_path, limit, seed, load, options)
    return run_inspect(model, signature, data, options, info, progress)


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
    batch_size: int | None = None,
    max_batches: int | None = None,
    per_sample: bool = False,
    thresholds: Thresholds | None = None,
    max_memory: int | None = None,
) -> Report:
    """Gradients of the loss for an in-memory Keras model, in one forward/backward pass.

    ``x`` and ``y`` are arrays, lists or dicts shaped like the model's inputs and outputs;
    with ``x=None`` a seeded synthetic batch of ``rows`` examples is used.  ``loss`` is a
    Keras loss name overriding the compiled loss.  ``keep_tensors=True`` keeps the raw
    gradient tensors in ``report.tensors``.  With ``batch_size`` the data is cut into
    batches (at most ``max_batches``) and the report describes their mean gradient;
    ``per_sample`` adds per-example gradient norms; ``thresholds`` tune the health
    diagnoses; ``max_memory`` is the memory budget (see :func:`inspect_file`).  Keras's
    global random state is left alone.

    ``x`` may instead be a pipeline: a ``tf.data.Dataset``, a ``keras.utils.PyDataset``
    or an iterable (generator) yielding ``x``, ``(x, y)`` or ``(x, y, sample_weight)``
    batches, as ``model.fit`` takes; ``y`` and ``sample_weight`` are then ``None`` and
    ``batch_size`` is not used.  Its batches (at most ``max_batches``) are aggregated as
    with ``batch_size``; one batch is the same as its arrays (see
    :mod:`gradscope.loading.pipelines`).
    """
    signature = model_signature(model)
    data = data_argument(
        signature, x, y, sample_weight,
        batch_size=batch_size, max_batches=max_batches, budget=max_memory,
    )  # fmt: skip
    options = InspectOptions(
        loss, training, seed, rows, layers, keep_tensors,
        batch_size, max_batches, per_sample, thresholds, max_memory,
    )  # fmt: skip
    info = model_info_of(model, None, "memory")
    return run_inspect(model, signature, data, options, info)


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


def model_info_of(model: Any, path: str | None, fmt: str, notes: Sequence[str] = ()) -> ModelInfo:
    """What the report says about the model; ``notes`` are the loader's remarks."""
    trainable = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    layer_count = len(flatten_layers(model))
    name, cls = model.name, type(model).__name__
    return ModelInfo(name, cls, path, fmt, trainable, layer_count, tuple(notes))


def _has_static_outputs(signature: ModelSignature) -> bool:
    """Whether every output dimension but the batch axis is known from the model alone."""
    return all(d is not None for spec in signature.outputs for d in spec.shape[1:])


def _sample_predictions(model: Any, signature: ModelSignature, batch: Batch, rows: int) -> Any:
    """Outputs for the first ``rows`` examples, shaped as the model really returns them.

    When every output dimension is static, constant arrays of that shape suffice for
    Keras to check targets against the loss, and cost nothing.  A sequence model's output
    length (or any unknown dimension) depends on its input, so it is never invented: the
    model is run, in inference mode, on those rows of the real batch.
    """
    if _has_static_outputs(signature):
        arrays = {
            spec.name: np.full((rows, *(int(d or 1) for d in spec.shape[1:])), 0.5, np.float32)
            for spec in signature.outputs
        }
        return signature.pack_outputs(arrays)
    inputs = {name: array[:rows] for name, array in batch.inputs.items()}
    return model(signature.pack_inputs(inputs), training=False)


def _preflight(spec: LossSpec, model: Any, signature: ModelSignature, batch: Batch) -> None:
    if batch.targets is None or not spec.needs_targets:
        return
    rows = min(batch.size, 2)
    sample = {name: array[:rows] for name, array in batch.targets.items()}
    predictions = _sample_predictions(model, signature, batch, rows)
    check_loss_runs(spec, model, signature.pack_outputs(sample), predictions)


def prepare_loss_and_batch(
    model: Any, signature: ModelSignature, batch: Batch | None, options: InspectOptions
) -> tuple[LossSpec, Batch]:
    """Resolve the loss, synthesize the batch if none was given, and check they fit.

    Shared by every command that differentiates the loss (``inspect``, ``hessian``).
    """
    has_targets = batch is None or batch.targets is not None
    spec = resolve_loss(model, signature.output_names, options.loss, has_targets)
    if batch is None:
        guard_synthetic(signature, options.rows, options.max_memory)
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


def guard_proxy_step(
    model: Any,
    signature: ModelSignature,
    spec: LossSpec,
    data: Batch | Batches,
    options: InspectOptions,
    hint: Sequence[str] = ROWS_OPTIONS,
) -> None:
    """The memory guard of a command whose own step is not an inspect step (``hessian``,
    ``check``): the inspect step on the same batch, traced not run, stands for it."""
    first = data.first if isinstance(data, Batches) else data
    held = min(data.count, 2) if isinstance(data, Batches) else 1
    engine = GradientEngine(model, signature, spec, training=options.training)
    guard_step(engine, first, options.max_memory, held=held, options=hint)


def load_for_cli(
    model_path: str | Path,
    data_path: str | Path | None,
    limit: int | None,
    seed: int,
    load: LoadOptions | None = None,
    options: InspectOptions | None = None,
    hint: Sequence[str] = ROWS_OPTIONS,
) -> tuple[Any, ModelSignature, Batch | Batches | None, ModelInfo]:
    """Check paths (before importing TensorFlow), seed Keras, load the model and batch.

    Both paths are checked first, so a typo fails at once; Keras's global random state
    is seeded before the model is built, so dropout in training mode is reproducible.
    The batch is checked against the model and ``options.max_memory`` from the file's
    headers before it is read; ``hint`` names the options a refusal suggests.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"--limit: expected a positive number of rows. {received(limit)}")
    check_model_path(Path(model_path))
    if load is not None and load.custom_objects is not None:
        check_custom_objects_path(load.custom_objects)
    pipeline = parse_pipeline_spec(data_path)  # --data FILE.py:NAME
    if pipeline is not None:
        check_pipeline_spec(pipeline)
        check_cli_options(pipeline, limit, options.batch_size if options else None)
    elif data_path is not None:
        check_data_path(Path(data_path))
    _tf.keras().utils.set_random_seed(seed)
    if pipeline is None:
        _check_batching(options)
    loaded = load_model(model_path, load)
    signature = model_signature(loaded.model)
    data: Batch | Batches | None = None
    max_memory = None if options is None else options.max_memory
    if pipeline is not None:
        data = cli_data(pipeline, signature, options.max_batches if options else None, max_memory)
    elif data_path is not None and options is not None and options.batch_size is not None:
        data = _file_batches(
            data_path, signature, options.batch_size, options.max_batches, limit, max_memory
        )
    elif data_path is not None:
        data = load_batch(data_path, signature, limit=limit, max_memory=max_memory, options=hint)
    info = model_info_of(loaded.model, loaded.path, loaded.format, loaded.notes)
    return loaded.model, signature, data, info


def _check_batching(options: InspectOptions | None) -> None:
    """``--batch-size``/``--max-batches`` are positive, and the latter needs the former."""
    if options is None:
        return
    if options.batch_size is not None and options.batch_size < 1:
        raise UsageError(
            f"--batch-size: expected a positive number of rows. {received(options.batch_size)}"
        )
    if options.max_batches is not None:
        if options.batch_size is None:
            raise UsageError("--max-batches: needs --batch-size (the rows of one batch).")
        if options.max_batches < 1:
            raise UsageError(
                f"--max-batches: expected a positive number. {received(options.max_batches)}"
            )


def run_inspect(
    model: Any,
    signature: ModelSignature,
    data: Batch | Batches | None,
    options: InspectOptions,
    model_info: ModelInfo,
    progress: Progress | None = None,
) -> Report:
    """The shared inspect pipeline: loss, batch(es), engine, report."""
    first = data.first if isinstance(data, Batches) else data
    spec, batch = prepare_loss_and_batch(model, signature, first, options)
    if options.batching and not isinstance(data, Batches):
        data = split_batch(batch, options.batch_size or batch.size, options.max_batches)
    with RestoredState(model, options.training):
        if isinstance(data, Batches):
            report = _inspect_batches(model, signature, spec, data, options, model_info, progress)
        else:
            report = _inspect_one(model, signature, spec, batch, options, model_info)
        if options.per_sample:
            batches = data if isinstance(data, Batches) else None
            report = dataclasses.replace(
                report,
                per_sample=per_sample_report(
                    model, signature, spec, batch, batches, options.training, options.max_memory
                ),
            )
    report = dataclasses.replace(report, health=diagnose(report, options.thresholds))
    return filter_layers(report, options.layers) if options.layers else report


def per_sample_report(
    model: Any,
    signature: ModelSignature,
    spec: LossSpec,
    batch: Batch,
    batches: Batches | None,
    training: bool,
    max_memory: int | None = None,
) -> PerSampleReport:
    """Per-example gradient norms over ``batch``, or over every batch of ``batches``
    (example indices then count from the first row of the first batch), in chunks that
    fit ``max_memory`` (``None``: the default budget)."""
    from .engine.per_sample import PerSampleEngine, PerSampleNorms

    engine = PerSampleEngine(model, signature, spec, training=training)
    limit = budget(max_memory)
    parts = [engine.run(b, limit) for b in (batches.iterate() if batches else [batch])]
    merged = PerSampleNorms(
        parts[0].variables,
        np.concatenate([part.norms for part in parts]),
        np.concatenate([part.total for part in parts]),
        method=parts[-1].method,
    )
    return merged.summary()


def _inspect_one(
    model: Any,
    signature: ModelSignature,
    spec: LossSpec,
    batch: Batch,
    options: InspectOptions,
    model_info: ModelInfo,
) -> Report:
    engine = GradientEngine(
        model, signature, spec, training=options.training, keep_tensors=options.keep_tensors
    )
    guard_step(engine, batch, options.max_memory)
    result = run_engine(engine, batch)
    return build_report(
        model, signature, spec, batch, result, engine.layer_nodes, options.training, model_info
    )


def _inspect_batches(
    model: Any,
    signature: ModelSignature,
    spec: LossSpec,
    data: Batches,
    options: InspectOptions,
    model_info: ModelInfo,
    progress: Progress | None,
) -> Report:
    """Every batch through one compiled step, merged into the report of the mean gradient.

    The raw tensors (``keep_tensors``) are those of the mean gradient's variables only:
    inputs and layer outputs belong to one batch each.
    """
    progress = progress or Progress()
    engine = GradientEngine(model, signature, spec, training=options.training, for_aggregation=True)
    guard_step(engine, data.first, options.max_memory, held=min(data.count, 2))
    accumulator = BatchAccumulator(data.rows)
    progress.block(0, 1, f"{data.count} batches", data.count)
    for batch in data.iterate():
        accumulator.add(run_engine(engine, batch), batch)
        progress.step()
    merged = accumulator.merged()
    info = dataclasses.replace(data.first.info, size=accumulator.rows_seen)
    whole = Batch(data.first.inputs, data.first.targets, data.first.sample_weight, info)
    report = build_report(
        model, signature, spec, whole, merged, engine.layer_nodes, options.training, model_info
    )
    variables = list(model.trainable_variables)
    tensors = None
    if options.keep_tensors:
        tensors = GradientTensors(
            variables=accumulator.mean_gradients(variables), inputs={}, activations={}
        )
    summary = accumulator.summary(variables, data.batch_size, data.max_batches)
    traced = accumulator.last_rows
    report = dataclasses.replace(
        report,
        inputs=tuple(
            dataclasses.replace(r, shape=_all_rows(r.shape, data.first.size, whole.size))
            for r in report.inputs
        ),
        activations=tuple(
            dataclasses.replace(r, shape=_all_rows(r.shape, traced, whole.size))
            for r in report.activations
        ),
    )
    return dataclasses.replace(report, batches=summary, tensors=tensors)


def _all_rows(shape: tuple[int, ...], batch_rows: int, rows: int) -> tuple[int, ...]:
    """The shape of a tensor over all rows, from its shape in a batch of ``batch_rows``."""
    if shape and shape[0] == batch_rows:
        return (rows, *shape[1:])
    return shape


def run_engine(engine: GradientEngine, batch: Batch) -> EngineResult:
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


LORA_ADAPTERS = {
    "lora_kernel_a": "kernel",
    "lora_kernel_b": "kernel",
    "lora_embeddings_a": "embeddings",
    "lora_embeddings_b": "embeddings",
}
"""LoRA adapter attributes of Keras 3 layers (``Dense``, ``EinsumDense``, convolutions:
``lora_kernel_*``; ``Embedding``: ``lora_embeddings_*``), and the name of the frozen
weight each adapts.  Set by ``layer.enable_lora(rank)``, which also sets
``layer.lora_enabled`` (checked on Keras 3.15)."""


def lora_adapted(layer: Any, variable: Any) -> str | None:
    """The path of the frozen weight that ``variable``, a LoRA adapter of ``layer``,
    updates; ``None`` when it is not one.

    The adapter is found by identity among the layer's LoRA attributes, and the frozen
    weight by its name among the layer's weights (the public ``kernel`` property of a
    LoRA layer returns the merged kernel, a tensor, not the variable).
    """
    if layer is None or not getattr(layer, "lora_enabled", False):
        return None
    for attribute, base in LORA_ADAPTERS.items():
        if getattr(layer, attribute, None) is variable:
            frozen = [w for w in layer.weights if w.name == base and w is not variable]
            return str(frozen[0].path) if len(frozen) == 1 else None
    return None


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
            adapts=lora_adapted(node.layer if node else None, variable),
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
                activation=activation_name(captured.node.layer),
            )
        )
    return rows


def activation_name(layer: Any) -> str | None:
    """The activation a layer applies last (``relu``, ``sigmoid``...), ``None`` for none.

    ``ReLU`` layers count as ``relu``; other layers name their ``activation`` attribute
    (Dense, Conv, Activation...).  ``linear`` is no activation.
    """
    if type(layer).__name__ == "ReLU":
        return "relu"
    function = getattr(layer, "activation", None)
    name = getattr(function, "__name__", None)
    return None if name in (None, "linear") or not callable(function) else str(name)


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
