"""The session core: what every command starts from.

Load a model (checking paths before TensorFlow is imported), read its signature,
resolve the loss, read or synthesize the batch(es), check that loss and batch fit the
model, guard memory, and restore non-trainable state after a training-mode pass.
``inspect``, ``hessian`` and ``check`` (``gradscope.commands``) all start here, with
their own options objects, which carry the :class:`SessionSettings` fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import _tf
from ._keras_private import flatten_layers
from .engine.capture import LayerNode
from .engine.gradients import EngineResult, GradientEngine
from .engine.replicas import Replicas, measure_sharing
from .engine.step_memory import ROWS_OPTIONS, guard_step
from .errors import MismatchError, UsageError, first_line, received
from .loading.custom_objects import check_custom_objects_path
from .loading.data import (
    Batch,
    Batches,
    as_batches,
    check_data_path,
    check_input_array,
    guard_synthetic,
    iter_batches,
    load_batch,
    plan_batches,
)
from .loading.models import LoadOptions, check_model_path, load_model
from .loading.pipelines import (
    check_cli_options,
    check_pipeline_spec,
    cli_data,
    parse_pipeline_spec,
)
from .loading.signature import ModelSignature, model_signature
from .loading.synthetic import synthetic_batch
from .losses import LossSpec, check_loss_runs, resolve_loss
from .report import BatchInfo, ModelInfo

ArrayLike = Any


class SessionSettings(Protocol):
    """The options every command shares with the session: loss, mode, data, budget."""

    @property
    def loss(self) -> str | None: ...
    @property
    def training(self) -> bool: ...
    @property
    def seed(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def batch_size(self) -> int | None: ...
    @property
    def max_batches(self) -> int | None: ...
    @property
    def max_memory(self) -> int | None: ...


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
    model: Any, signature: ModelSignature, batch: Batch | None, options: SessionSettings
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
    options: SessionSettings,
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
    options: SessionSettings | None = None,
    hint: Sequence[str] = ROWS_OPTIONS,
    strategy: Any = None,
) -> tuple[Any, ModelSignature, Batch | Batches | None, ModelInfo]:
    """Check paths (before importing TensorFlow), seed Keras, load the model and batch.

    Both paths are checked first, so a typo fails at once; Keras's global random state
    is seeded before the model is built, so dropout in training mode is reproducible.
    The batch is checked against the model and ``options.max_memory`` from the file's
    headers before it is read; ``hint`` names the options a refusal suggests.  With a
    ``tf.distribute`` ``strategy`` the model is loaded under its scope, so its variables
    are mirrored on every replica.
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
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
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


def _check_batching(options: SessionSettings | None) -> None:
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


def variable_owners(model: Any, nodes: list[LayerNode]) -> dict[int, LayerNode]:
    """Map ``id(variable)`` to the deepest layer that holds it."""
    owners: dict[int, LayerNode] = {}
    for node in sorted(nodes, key=lambda n: -n.depth):
        for variable in getattr(node.layer, "trainable_variables", []):
            owners.setdefault(id(variable), node)
    return owners


def is_distributing(strategy: Any) -> bool:
    """Whether ``strategy`` is a real ``tf.distribute`` strategy, not ``None`` or
    TensorFlow's default one (one device, what ``tf.distribute.get_strategy()`` returns
    outside any scope)."""
    return strategy is not None and type(strategy).__name__ != "_DefaultDistributionStrategy"


def replicas_for(
    strategy: Any, model: Any, signature: ModelSignature, spec: LossSpec, data: Batch | Batches
) -> Replicas | None:
    """The replicas a command splits its batches across, ``None`` for one device.

    How the loss splits is measured on the first batch (see
    :func:`gradscope.engine.replicas.measure_sharing`); a file's batches are checked to
    hold at least one row per replica before any of them runs (a pipeline's batches are
    checked as they come).
    """
    if not is_distributing(strategy):
        return None
    batches = as_batches(data)
    replicas = Replicas(strategy, measure_sharing(strategy, model, signature, spec, batches.first))
    replicas.check_rows(batches.first.size, batches.first.info.path or "the batch")
    last = batches.rows - (batches.count - 1) * batches.batch_size
    if batches.count > 1 and 0 < last < batches.first.size:
        replicas.check_rows(last, f"the last batch of {batches.first.info.path or 'the data'}")
    return replicas


def with_replica_note(info: ModelInfo, replicas: Replicas | None) -> ModelInfo:
    """``info`` with a note saying how many replicas computed the report."""
    if replicas is None:
        return info
    kind = type(replicas.strategy).__name__
    note = f"computed over {replicas.count} replicas ({kind}), combined inside the graph"
    return dataclasses.replace(info, notes=(*info.notes, note))
