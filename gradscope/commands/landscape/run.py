"""The ``landscape`` entry points: the loss along directions in weight space.

:func:`landscape` (an in-memory model) and :func:`landscape_file` (a saved model and a
batch file) build the directions (random filter-normalized ones, the Hessian's top
eigenvectors, or the line to another model), then evaluate the loss on the grid with
:class:`gradscope.engine.landscape.LossSurface`: one compiled function, traced once,
each call a loop inside the graph over a chunk of points.  Model, data and loss
handling are the same as ``inspect``'s and ``hessian``'s (:mod:`gradscope.session`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..._progress import Progress
from ...engine import spectral
from ...engine.graph_memory import format_bytes
from ...engine.hessian import HessianOperator
from ...engine.landscape import (
    MAX_POINTS_PER_CALL,
    Combination,
    LossSurface,
    batch_norm_layers,
    filter_normalized,
)
from ...errors import MismatchError, ResourceError, UsageError
from ...loading.data import Batch, Batches, as_batches, split_batch
from ...loading.models import LoadOptions, check_model_path, load_model
from ...loading.pipelines import data_argument
from ...loading.signature import ModelSignature, model_signature
from ...loading.synthetic import DEFAULT_ROWS
from ...report import LossInfo, ModelInfo
from ...session import (
    ArrayLike,
    RestoredState,
    load_for_cli,
    model_info_of,
    prepare_loss_and_batch,
)
from ..hessian.options import HessianOptions
from ..hessian.run import select_blocks
from ..inspect.options import InspectOptions
from .options import GridAxis, LandscapeOptions, resolve_seed
from .report import Axis, Directions, LandscapeReport, Timing


@dataclass(frozen=True)
class _Setup:
    """The directions of a run: the weights' and state's combinations and their report."""

    weights: Combination
    state: Combination | None
    directions: Directions
    interpolating: bool


def _values(variables: Sequence[Any]) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(v.numpy(), dtype=np.float64) for v in variables)


def _selected(model: Any, options: LandscapeOptions) -> list[Any]:
    """The trainable variables ``--vars``/``--layers`` select (hessian's selection)."""
    chosen = HessianOptions(
        variables=options.variables,
        layers=options.layers,
        block="model",
        max_memory=options.max_memory,
    )
    return list(select_blocks(model, chosen)[0].variables)


def _describe(variable: Any) -> str:
    return f"{variable.path} ({'x'.join(map(str, variable.shape)) or 'scalar'}, {variable.dtype})"


def check_same_architecture(model: Any, other: Any, where: str) -> None:
    """Refuse ``other`` unless its variables match ``model``'s one by one: trainable,
    then non-trainable, each with the same name (``kernel``, ``moving_mean``), shape and
    dtype.  Layer names are not compared: Keras numbers them in creation order, so the
    same architecture built twice in one session has other names.  One line names the
    first mismatch."""
    for kind in ("trainable_variables", "non_trainable_variables"):
        mine, theirs = list(getattr(model, kind)), list(getattr(other, kind))
        for index, (a, b) in enumerate(zip(mine, theirs, strict=False)):
            same = a.name == b.name and tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype
            if not same:
                raise MismatchError(
                    f"{where}: the models differ in architecture: {kind[:-10].replace('_', '-')}"
                    f" variable {index} of MODEL is {_describe(a)}. Received: {_describe(b)}"
                )
        if len(mine) != len(theirs):
            raise MismatchError(
                f"{where}: the models differ in architecture: MODEL has {len(mine)} "
                f"{kind.replace('_', ' ')}. Received: {len(theirs)}"
            )


def _is_float(variable: Any) -> bool:
    return str(variable.dtype).startswith(("float", "bfloat"))


def _interpolation(model: Any, other: Any, where: str) -> _Setup:
    """The line from ``model`` (alpha = 0) to ``other`` (alpha = 1), for the weights and
    for the floating-point non-trainable state (BatchNorm moving statistics)."""
    check_same_architecture(model, other, where)
    trainable = tuple(model.trainable_variables)
    weights = Combination(trainable, None, (_values(trainable), _values(other.trainable_variables)))
    pairs = [
        (mine, theirs)
        for mine, theirs in zip(
            model.non_trainable_variables, other.non_trainable_variables, strict=True
        )
        if _is_float(mine)
    ]
    state = None
    if pairs:
        mine_vars = tuple(p[0] for p in pairs)
        state = Combination(mine_vars, None, (_values(mine_vars), _values([p[1] for p in pairs])))
    directions = Directions(
        kind="interpolation",
        seed=0,
        normalization="none",
        include_biases=True,
        variables=tuple(v.path for v in trainable),
        zeroed=(),
        statistics="interpolated" if state is not None and batch_norm_layers(model) else "model",
        to=where.removeprefix("--to ").strip() or None,
    )
    return _Setup(weights, state, directions, True)


def _expand(
    model: Any, selected: Sequence[Any], vectors: Sequence[Sequence[np.ndarray]]
) -> Combination:
    """Directions over ``selected`` as a combination over every trainable variable
    (zero along the others), based at the current weights."""
    trainable = tuple(model.trainable_variables)
    index = {id(v): i for i, v in enumerate(selected)}
    full = tuple(
        tuple(
            vector[index[id(v)]] if id(v) in index else np.zeros(v.shape, np.float64)
            for v in trainable
        )
        for vector in vectors
    )
    return Combination(trainable, _values(trainable), full)


def _random(
    model: Any, options: LandscapeOptions, count: int, seed: int
) -> tuple[Combination, Directions]:
    selected = _selected(model, options)
    rng = np.random.default_rng(seed)
    weights = _values(selected)
    vectors = [filter_normalized(weights, rng, options.include_biases) for _ in range(count)]
    zeroed = (
        ()
        if options.include_biases
        else tuple(v.path for v, w in zip(selected, weights, strict=True) if w.ndim <= 1)
    )
    directions = Directions(
        kind="random",
        seed=seed,
        normalization="filter",
        include_biases=options.include_biases,
        variables=tuple(v.path for v in selected),
        zeroed=zeroed,
        statistics="model",
    )
    return _expand(model, selected, vectors), directions


def _eigen(
    model: Any,
    signature: ModelSignature,
    spec: Any,
    data: Batch | Batches,
    options: LandscapeOptions,
    count: int,
    training: bool,
    progress: Progress,
) -> tuple[Combination, Directions]:
    """The top ``count`` Hessian eigenvectors over the selected variables (Lanczos on
    Hessian-vector products of the same loss and data), unit vectors."""
    selected = _selected(model, options)
    operator = HessianOperator(
        model,
        signature,
        spec,
        data,
        selected,
        training=training,
        matrix=options.matrix,
        seed=options.seed or 0,
    )
    progress.block(0, 2, "eigen directions (Lanczos)", options.max_iter)
    result = spectral.lanczos(
        operator.hvp,
        operator.size,
        k=count,
        tol=options.tol,
        max_iter=options.max_iter,
        rng=np.random.default_rng(options.seed),
        want_vectors=True,
        on_step=progress.step,
    )
    if result.eigenvectors is None or result.eigenvectors.shape[1] < count:
        raise UsageError(
            f"--directions eigen: the selected variables have {operator.size} parameters, "
            f"fewer than the {count} eigenvectors the grid needs. Received: --grid with "
            f"{count} axes"
        )
    bounds = np.cumsum([0, *operator.sizes])
    vectors = [
        [
            result.eigenvectors[bounds[i] : bounds[i + 1], k].reshape(shape)
            for i, shape in enumerate(operator.shapes)
        ]
        for k in range(count)
    ]
    directions = Directions(
        kind="eigen",
        seed=int(options.seed or 0),
        normalization="unit",
        include_biases=True,
        variables=tuple(v.path for v in selected),
        zeroed=(),
        statistics="model",
        matrix=options.matrix,
        eigenvalues=tuple(float(e) for e in result.eigenvalues[:count]),
    )
    return _expand(model, selected, vectors), directions


def _setup(
    model: Any,
    signature: ModelSignature,
    spec: Any,
    data: Batch | Batches,
    options: LandscapeOptions,
    count: int,
    training: bool,
    progress: Progress,
    other: tuple[Any, str] | None,
) -> _Setup:
    if other is not None:
        return _interpolation(model, other[0], f"--to {other[1]}")
    if options.directions == "eigen":
        weights, directions = _eigen(
            model, signature, spec, data, options, count, training, progress
        )
    else:
        weights, directions = _random(model, options, count, int(options.seed or 0))
    return _Setup(weights, None, directions, False)


def _coefficients(axes: Sequence[GridAxis], interpolating: bool) -> np.ndarray:
    """Every grid point as the coefficients of the combination, row-major.

    An interpolation's point alpha is ``(1 - alpha, alpha)``, computed in float64, so
    that alpha = 0 and alpha = 1 are exactly the two models."""
    grids = np.meshgrid(*(np.asarray(a.values(), np.float64) for a in axes), indexing="ij")
    points = np.stack([g.ravel() for g in grids], axis=1)
    if interpolating:
        return np.concatenate([1.0 - points, points], axis=1)
    return points


def _check_memory(surface: LossSurface, budget: int) -> None:
    """Refuse the run before any point is evaluated when one point's forward pass (read
    off its traced graph) does not fit ``--max-memory``."""
    shared, per_point = surface.work_bytes()
    if shared + per_point > budget:
        raise ResourceError(
            f"landscape: one grid point needs about {format_bytes(shared + per_point)} "
            f"(the batch, the directions and one forward pass), more than --max-memory "
            f"{format_bytes(budget)}. Use --batch-size or --limit."
        )


def _evaluate(surface: LossSurface, points: np.ndarray, progress: Progress) -> np.ndarray:
    """The loss at every point, :data:`MAX_POINTS_PER_CALL` points a call."""
    progress.block(1, 2, "grid", len(points))
    losses = np.empty(len(points), dtype=np.float64)
    for start in range(0, len(points), MAX_POINTS_PER_CALL):
        chunk = points[start : start + MAX_POINTS_PER_CALL]
        losses[start : start + len(chunk)] = surface.losses(chunk)
        progress.step(len(chunk))
    return losses


def _notes(options: LandscapeOptions, model: Any, training: bool) -> tuple[str, ...]:
    notes = []
    if options.recompute_bn and not batch_norm_layers(model):
        notes.append("--recompute-bn: the model has no BatchNormalization layer")
    if training:
        notes.append(
            "training mode: every point sees the same dropout masks, and BatchNorm "
            "normalizes with the statistics of each batch"
        )
    return tuple(notes)


def run_landscape(
    model: Any,
    signature: ModelSignature,
    data: Batch | Batches | None,
    inspect_options: InspectOptions,
    options: LandscapeOptions,
    model_info: ModelInfo,
    progress: Progress | None = None,
    other: tuple[Any, str] | None = None,
) -> LandscapeReport:
    """The shared landscape pipeline: loss and batch as ``inspect``, the directions, then
    the grid.  ``other`` is the model to interpolate to, with its name for the report."""
    options, seed = resolve_seed(options, inspect_options.seed)
    training = inspect_options.training
    if other is not None and options.directions is not None:
        raise UsageError(
            "--directions: not used with --to (the line to the other model is the "
            f"direction). Received: --directions {options.directions}"
        )
    if options.recompute_bn and training:
        raise UsageError(
            "--recompute-bn: has no effect with --training (BatchNorm then normalizes "
            "with the statistics of each batch). Received: --recompute-bn --training"
        )
    axes = options.axes(other is not None)
    progress = progress or Progress()
    first = data.first if isinstance(data, Batches) else data
    spec, batch = prepare_loss_and_batch(model, signature, first, inspect_options)
    if inspect_options.batching and not isinstance(data, Batches):
        size = inspect_options.batch_size or batch.size
        data = split_batch(batch, size, inspect_options.max_batches)
    whole = data if isinstance(data, Batches) else batch
    started = time.perf_counter()
    with RestoredState(model, training):
        setup = _setup(model, signature, spec, whole, options, len(axes), training, progress, other)
        surface = LossSurface(
            model, signature, spec, whole, setup.weights, setup.state,
            training=training, recompute_bn=options.recompute_bn,
        )  # fmt: skip
        _check_memory(surface, options.max_memory)
        points = _coefficients(axes, setup.interpolating)
        losses = _evaluate(surface, points, progress)
        # The origin (alpha = 0) and, for an interpolation, the other model (alpha = 1).
        ends = surface.losses(np.eye(2) if setup.interpolating else np.zeros((1, surface.k)))
    statistics = "recomputed" if surface.recompute_bn else setup.directions.statistics
    statistics = "batch" if training else statistics
    names = ("alpha",) if setup.interpolating else ("x", "y")
    report_axes = tuple(
        Axis(name, axis.start, axis.stop, axis.values())
        for name, axis in zip(names, axes, strict=False)
    )
    return LandscapeReport(
        model=model_info,
        batch=replace(batch.info, size=as_batches(whole).rows),
        loss=LossInfo(value=float(ends[0]), source=spec.source, kind=spec.kind),
        training=training,
        axes=report_axes,
        losses=tuple(float(v) for v in losses),
        directions=replace(setup.directions, statistics=statistics),
        seed=seed,
        timing=Timing(
            seconds=time.perf_counter() - started,
            points=len(points),
            chunk=min(MAX_POINTS_PER_CALL, len(points)),
            traces=surface.traces,
        ),
        other_loss=float(ends[1]) if setup.interpolating else None,
        notes=_notes(options, model, training),
    )


def landscape(
    model: Any,
    x: ArrayLike = None,
    y: ArrayLike = None,
    *,
    to: Any = None,
    sample_weight: ArrayLike = None,
    loss: str | None = None,
    training: bool = False,
    seed: int | None = None,
    rows: int = DEFAULT_ROWS,
    options: LandscapeOptions | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> LandscapeReport:
    """The loss of an in-memory Keras model on a grid along directions in weight space
    (see :class:`LandscapeOptions`), or along the line to the model ``to`` (same
    architecture), alpha = 0 being ``model`` and alpha = 1 ``to``.

    Data, ``batch_size`` and ``seed`` are as in :func:`gradscope.hessian`: with several
    batches every point's loss is their row-weighted mean.  Nothing is assigned to the
    model's variables.
    """
    options, seed = resolve_seed(options, seed)
    signature = model_signature(model)
    data = data_argument(
        signature, x, y, sample_weight,
        batch_size=batch_size, max_batches=max_batches, budget=options.max_memory,
    )  # fmt: skip
    inspect_options = InspectOptions(
        loss, training, seed, rows, batch_size=batch_size, max_batches=max_batches,
        max_memory=options.max_memory,
    )  # fmt: skip
    info = model_info_of(model, None, "memory")
    other = None if to is None else (to, getattr(to, "name", "to"))
    return run_landscape(model, signature, data, inspect_options, options, info, other=other)


def _refuse_savedmodel(info: ModelInfo, option: str) -> None:
    """A SavedModel's restored functions capture their variables: a landscape cannot
    substitute its weights."""
    if info.format == "savedmodel":
        raise UsageError(
            f"{option}: a SavedModel's functions hold their own variables, so landscape "
            "cannot evaluate it at other weights; expected a .keras or .h5 file. "
            f"Received: {info.path}"
        )


def landscape_file(
    model_path: str | Path,
    data_path: str | Path | None = None,
    *,
    to: str | Path | None = None,
    limit: int | None = None,
    loss: str | None = None,
    training: bool = False,
    seed: int | None = None,
    options: LandscapeOptions | None = None,
    progress: Progress | None = None,
    custom_objects: str | Path | None = None,
    unsafe: bool = False,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> LandscapeReport:
    """Load a saved model (and a batch file, or synthesize one), and ``to`` (another
    saved model of the same architecture) when given, and compute the landscape.

    ``custom_objects``, ``unsafe``, ``batch_size`` and ``max_batches`` are as in
    :func:`gradscope.inspect_file`.
    """
    options, seed = resolve_seed(options, seed)
    options.axes(to is not None)  # a bad --grid fails before anything is loaded
    if to is not None:
        check_model_path(Path(to))
    load = LoadOptions.of(custom_objects, unsafe, loss)
    inspect_options = InspectOptions(
        loss, training, seed, limit or DEFAULT_ROWS, batch_size=batch_size,
        max_batches=max_batches, max_memory=options.max_memory,
    )  # fmt: skip
    model, signature, data, info = load_for_cli(
        model_path, data_path, limit, seed, load, inspect_options
    )
    _refuse_savedmodel(info, "MODEL")
    other = None
    if to is not None:
        loaded = load_model(to, load)
        _refuse_savedmodel(model_info_of(loaded.model, loaded.path, loaded.format), "--to")
        other = (loaded.model, str(to))
    return run_landscape(model, signature, data, inspect_options, options, info, progress, other)


__all__: Sequence[str] = ["LandscapeOptions", "landscape", "landscape_file"]
