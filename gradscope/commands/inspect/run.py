"""``inspect``: :func:`inspect` (in-memory model) and :func:`inspect_file`.

The CLI is a thin layer over :func:`inspect_file`; a Python user calls :func:`inspect`
with a model and arrays.  Both go through :func:`run_inspect`: the session core
(:mod:`gradscope.session`) resolves the loss and builds or checks the batch; this module
runs the one-pass engine and assembles the plain-data report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ... import stats
from ..._progress import Progress
from ...aggregate import BatchAccumulator
from ...engine.capture import LOOP_NOTE, CapturedOutput, LayerNode
from ...engine.gradients import EngineResult, GradientEngine
from ...engine.replicas import Replicas
from ...engine.step_memory import budget, guard_step
from ...errors import UsageError
from ...health import Thresholds, diagnose
from ...loading.data import Batch, Batches, split_batch
from ...loading.models import LoadOptions
from ...loading.pipelines import data_argument
from ...loading.signature import ModelSignature, model_signature
from ...loading.synthetic import DEFAULT_ROWS
from ...losses import LossSpec
from ...report import LossInfo, ModelInfo
from ...selection import output_layer_path, parse_selector, select
from ...session import (
    ArrayLike,
    RestoredState,
    load_for_cli,
    model_info_of,
    prepare_loss_and_batch,
    replicas_for,
    run_engine,
    variable_owners,
    with_replica_note,
)
from .options import InspectOptions
from .report import ActivationRow, GradientTensors, InputRow, PerSampleReport, Report, VariableRow


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
    strategy: Any = None,
) -> Report:
    """Load a saved model (and a batch file, or synthesize one) and inspect it.

    ``custom_objects`` is a Python file defining the custom classes the model needs;
    ``unsafe`` turns Keras's safe mode off, for a file you trust.  With ``batch_size``
    the data is streamed in batches of that many rows (at most ``max_batches``) and the
    report describes their mean gradient (see :mod:`gradscope.aggregate`).
    ``per_sample`` adds per-example gradient norms.  ``thresholds`` tune the health
    diagnoses (:mod:`gradscope.health`).  ``max_memory`` is the memory budget in bytes
    (``None``: half the available memory): a batch or step above it is refused with a
    :class:`~gradscope.errors.ResourceError` before it is read or run.  ``strategy`` (a
    ``tf.distribute.Strategy``) loads the model under its scope and splits every batch
    across its replicas, with the results of one device (see :func:`inspect`).
    """
    load = LoadOptions.of(custom_objects, unsafe, loss)
    options = InspectOptions(
        loss, training, seed, limit or DEFAULT_ROWS, layers, keep_tensors,
        batch_size, max_batches, per_sample, thresholds, max_memory,
    )  # fmt: skip
    model, signature, data, info = load_for_cli(
        model_path, data_path, limit, seed, load, options, strategy=strategy
    )
    return run_inspect(model, signature, data, options, info, progress, strategy)


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
    strategy: Any = None,
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

    ``strategy``, a ``tf.distribute.Strategy`` (``MirroredStrategy``,
    ``MultiWorkerMirroredStrategy``), splits every batch across its replicas and
    combines what they compute inside the graph: the report is the one a single device
    gives, to float32 rounding.  Build the model under ``strategy.scope()``.  The raw
    tensors (``keep_tensors``) are not available then; per-example norms are computed
    on this process's devices (see :mod:`gradscope.engine.replicas`).
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
    return run_inspect(model, signature, data, options, info, strategy=strategy)


def run_inspect(
    model: Any,
    signature: ModelSignature,
    data: Batch | Batches | None,
    options: InspectOptions,
    model_info: ModelInfo,
    progress: Progress | None = None,
    strategy: Any = None,
) -> Report:
    """The shared inspect pipeline: loss, batch(es), engine, report."""
    first = data.first if isinstance(data, Batches) else data
    spec, batch = prepare_loss_and_batch(model, signature, first, options)
    if options.batching and not isinstance(data, Batches):
        data = split_batch(batch, options.batch_size or batch.size, options.max_batches)
    replicas = replicas_for(strategy, model, signature, spec, data or batch)
    if replicas is not None and options.keep_tensors:
        raise UsageError(
            "--keep-tensors: the raw gradient tensors are not gathered across replicas; "
            f"leave it out or use --strategy default. Received: {replicas.count} replicas"
        )
    model_info = with_replica_note(model_info, replicas)
    with RestoredState(model, options.training):
        if isinstance(data, Batches):
            report = _inspect_batches(
                model, signature, spec, data, options, model_info, progress, replicas
            )
        else:
            report = _inspect_one(model, signature, spec, batch, options, model_info, replicas)
        if options.per_sample:
            batches = data if isinstance(data, Batches) else None
            report = dataclasses.replace(
                report,
                per_sample=per_sample_report(
                    model, signature, spec, batch, batches, options.training, options.max_memory
                ),
            )
    report = dataclasses.replace(report, health=diagnose(report, options.thresholds))
    return filter_layers(report, options.layers)


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
    from ...engine.per_sample import PerSampleEngine, PerSampleNorms

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
    replicas: Replicas | None = None,
) -> Report:
    engine = GradientEngine(
        model,
        signature,
        spec,
        training=options.training,
        keep_tensors=options.keep_tensors,
        replicas=replicas,
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
    replicas: Replicas | None = None,
) -> Report:
    """Every batch through one compiled step, merged into the report of the mean gradient.

    The raw tensors (``keep_tensors``) are those of the mean gradient's variables only:
    inputs and layer outputs belong to one batch each.
    """
    progress = progress or Progress()
    engine = GradientEngine(
        model,
        signature,
        spec,
        training=options.training,
        for_aggregation=True,
        replicas=replicas,
    )
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
    report = dataclasses.replace(
        report,
        inputs=tuple(
            dataclasses.replace(r, shape=_all_rows(r.shape, data.first.size, whole.size))
            for r in report.inputs
        ),
    )
    return dataclasses.replace(report, batches=summary, tensors=tensors)


def _all_rows(shape: tuple[int, ...], batch_rows: int, rows: int) -> tuple[int, ...]:
    """The shape of a tensor over all rows, from its shape in a batch of ``batch_rows``."""
    if shape and shape[0] == batch_rows:
        return (rows, *shape[1:])
    return shape


# -- assembling the report ------------------------------------------------------------


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


def _global_shape(shape: Any, traced_rows: int | None, rows: int) -> tuple[int, ...]:
    """A layer output's shape over the batch's ``rows``: its traced shape, whose leading
    dimension is the traced rows (a replica's share), with unknown dimensions as -1."""
    dims = [-1 if d is None else int(d) for d in shape]
    if dims and traced_rows is not None and dims[0] == traced_rows:
        dims[0] = rows
    return tuple(dims)


def _activation_rows(result: EngineResult, batch_rows: int) -> list[ActivationRow]:
    """One row per captured output, shaped over the batch's ``batch_rows``; a layer that
    ran inside a loop gets one note row."""
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
                shape=_global_shape(tensor.shape, meta.traced_rows, batch_rows),
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
    activation_rows = _activation_rows(result, batch.size)
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


def _row_names(row: VariableRow | ActivationRow) -> tuple[str, str]:
    """A row's own path and the path of its layer (see :mod:`gradscope.selection`)."""
    if isinstance(row, VariableRow):
        return row.path, row.layer
    return row.path, output_layer_path(row.path)


def filter_layers(report: Report, layers: str | None) -> Report:
    """Keep only the variable and layer-output rows of layers that ``layers`` selects
    (``--layers``: see :mod:`gradscope.selection`); ``None`` keeps every row."""
    selector = parse_selector("--layers", layers)
    if selector is None:
        return report
    rows: list[VariableRow | ActivationRow] = [*report.variables, *report.activations]
    kept = {id(row) for row in select(rows, _row_names, None, selector, layer_what="layer")}
    return dataclasses.replace(
        report,
        variables=tuple(row for row in report.variables if id(row) in kept),
        activations=tuple(row for row in report.activations if id(row) in kept),
    )
