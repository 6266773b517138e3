"""The ``hessian`` entry points: curvature of the loss, per variable, per layer or whole.

:func:`hessian` (an in-memory model) and :func:`hessian_file` (a saved model and a batch
file) select the variables, group them into blocks, and for each block either build the
exact Hessian (when it fits ``max_memory``) or work matrix-free with Hessian-vector
products: Lanczos for the extreme eigenvalues, Hutchinson/Hutch++ for the trace, and
stochastic Lanczos quadrature for the spectral density.  Model, data and loss handling
are the same as ``inspect``'s (:mod:`gradscope.session`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..._progress import Progress
from ...engine import spectral
from ...engine.capture import walk_layers
from ...engine.graph_memory import format_bytes
from ...engine.hessian import HessianOperator, exact_block_bytes
from ...engine.replicas import Replicas
from ...engine.step_memory import parse_size
from ...errors import ResourceError
from ...loading.data import Batch, Batches, as_batches, split_batch
from ...loading.signature import ModelSignature
from ...loading.synthetic import DEFAULT_ROWS
from ...report import LossInfo, ModelInfo
from ...selection import parse_selector, select
from ...session import (
    ArrayLike,
    RestoredState,
    guard_proxy_step,
    prepare_loss_and_batch,
    replicas_for,
    variable_owners,
    with_replica_note,
)
from ..inspect.options import InspectOptions
from ..start import start_from_files, start_in_memory
from .options import HessianOptions, resolve_seed
from .report import (
    CrossBlock,
    Density,
    HessianBlock,
    HessianReport,
    SharpParameter,
    VariableDiagonal,
)

FLOAT32_EPS = float(np.finfo(np.float32).eps)
DENSITY_RUNS = 4
DENSITY_ITERATIONS = 40


@dataclass(frozen=True)
class _Block:
    variables: tuple[Any, ...]
    layers: tuple[str, ...]


def select_blocks(model: Any, options: HessianOptions) -> list[_Block]:
    """The trainable variables that ``--vars``/``--layers`` select (see
    :mod:`gradscope.selection`), grouped into blocks."""
    owners = variable_owners(model, walk_layers(model))
    everything = []
    for variable in model.trainable_variables:
        node = owners.get(id(variable))
        everything.append((variable, node.path if node else model.name))
    chosen = select(
        everything,
        lambda pair: (pair[0].path, pair[1]),
        parse_selector("--vars", options.variables),
        parse_selector("--layers", options.layers),
    )
    if options.block == "model":
        layers = tuple(dict.fromkeys(layer for _, layer in chosen))
        return [_Block(tuple(v for v, _ in chosen), layers)]
    if options.block == "variable":
        return [_Block((v,), (layer,)) for v, layer in chosen]
    grouped: dict[str, list[Any]] = {}
    for variable, layer in chosen:
        grouped.setdefault(layer, []).append(variable)
    return [_Block(tuple(vs), (layer,)) for layer, vs in grouped.items()]


def _exact_block(
    operator: HessianOperator,
    options: HessianOptions,
    rng: np.random.Generator,
    progress: Progress,
    rows_per_pass: int,
) -> dict[str, Any]:
    """Statistics of the exact Hessian block, measured before and after symmetrizing."""
    matrix = operator.exact(rows_per_pass, on_rows=progress.step)
    norm = float(np.linalg.norm(matrix))
    asymmetry = float(np.linalg.norm(matrix - matrix.T) / norm) if norm > 0 else 0.0
    symmetric = 0.5 * (matrix + matrix.T)
    if options.eigenvectors:
        eigenvalues, vectors = np.linalg.eigh(symmetric)
    else:
        eigenvalues, vectors = np.linalg.eigvalsh(symmetric), None
    magnitudes = np.abs(eigenvalues)
    # The block is a float32 jacobian: eigenvalues within n * eps32 * max|lambda| of zero
    # are rounding noise, so they count neither as negative nor as a finite condition.
    noise = operator.size * FLOAT32_EPS * float(magnitudes.max(initial=0.0))
    smallest = float(magnitudes.min())
    diagonal = np.diag(symmetric)
    fields: dict[str, Any] = {
        "eigenvalues": tuple(float(e) for e in eigenvalues[::-1][: options.top_k]),
        "min_eigenvalue": float(eigenvalues[0]),
        "trace": float(np.trace(symmetric)),
        "trace_stderr": None,
        "frobenius": float(np.linalg.norm(symmetric)),
        "condition": float(magnitudes.max() / smallest) if smallest > noise else float("inf"),
        "negative_count": int(np.sum(eigenvalues < -noise)),
        "asymmetry": asymmetry,
        "diagonal": {
            "min": float(diagonal.min()),
            "max": float(diagonal.max()),
            "mean": float(diagonal.mean()),
        },
        "iterations": None,
        "residuals": None,
        "min_residual": None,
        "converged": None,
        "density": None,
    }
    if options.density:
        fields["density"] = _density(lambda v: symmetric @ v, operator.size, rng, progress)
    if options.diagonal:
        fields["diagonals"] = _diagonals(operator, diagonal, None, options.top_k)
    fields["matrix"] = matrix
    fields["eigenvalues_all"] = eigenvalues
    fields["eigenvectors"] = None if vectors is None else vectors[:, ::-1][:, : options.top_k]
    return fields


def _density(
    matvec: Callable[[np.ndarray], np.ndarray], size: int, rng: Any, progress: Progress
) -> Density:
    estimate = spectral.spectral_density(
        matvec,
        size,
        runs=DENSITY_RUNS,
        iterations=DENSITY_ITERATIONS,
        rng=rng,
        on_step=progress.step,
    )
    return Density(tuple(map(float, estimate.grid)), tuple(map(float, estimate.density)))


@contextlib.contextmanager
def _quiet_blas() -> Iterator[None]:
    """One BLAS thread while matrix-free work alternates numpy and TensorFlow.

    OpenBLAS's idle worker threads keep spinning for a while after each call (the
    Lanczos reorthogonalization), and on a small machine they take the cores the next
    Hessian-vector product needs: a product in the loop then costs twice what it costs
    alone.  The numpy work per step is small, so one thread loses nothing.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _lanczos_block(
    operator: HessianOperator,
    options: HessianOptions,
    rng: np.random.Generator,
    progress: Progress,
    rows_per_pass: int = 0,
) -> dict[str, Any]:
    """Matrix-free statistics: Lanczos extremes, optional trace and density."""
    with _quiet_blas():
        return _matrix_free(operator, options, rng, progress)


def _matrix_free(
    operator: HessianOperator,
    options: HessianOptions,
    rng: np.random.Generator,
    progress: Progress,
) -> dict[str, Any]:
    result = spectral.lanczos(
        operator.hvp,
        operator.size,
        k=options.top_k,
        tol=options.tol,
        max_iter=options.max_iter,
        rng=rng,
        want_vectors=options.eigenvectors,
        on_step=progress.step,
    )
    trace = stderr = None
    if options.trace:
        estimate = spectral.hutchinson_trace(
            operator.hvp, operator.size, probes=options.probes, rng=rng, on_step=progress.step
        )
        trace, stderr = estimate.trace, estimate.stderr
    diagonals = None
    exact_diagonal = operator.exact_diagonal() if options.diagonal else None
    if exact_diagonal is not None:
        diagonals = _diagonals(operator, exact_diagonal, None, options.top_k)
    elif options.diagonal:
        diagonal = spectral.hutchinson_diagonal(
            operator.hvp,
            operator.size,
            probes=max(2, options.probes),
            rng=rng,
            segments=tuple(operator.sizes),
            on_step=progress.step,
        )
        diagonals = _diagonals(operator, diagonal.diagonal, diagonal, options.top_k)
    return {
        "diagonals": diagonals,
        "eigenvalues": tuple(float(e) for e in result.eigenvalues),
        "min_eigenvalue": float(result.min_eigenvalue),
        "trace": trace,
        "trace_stderr": stderr,
        "frobenius": None,
        "condition": None,
        "negative_count": None,
        "asymmetry": None,
        "diagonal": None,
        "iterations": result.iterations,
        "residuals": tuple(float(r) for r in result.residuals),
        "min_residual": float(result.min_residual),
        "converged": bool(result.converged),
        "density": _density(operator.hvp, operator.size, rng, progress)
        if options.density
        else None,
        "matrix": None,
        "eigenvalues_all": None,
        "eigenvectors": result.eigenvectors,
    }


def _diagonals(
    operator: HessianOperator,
    values: np.ndarray,
    estimate: spectral.DiagonalEstimate | None,
    top_k: int,
) -> tuple[VariableDiagonal, ...]:
    """The block's diagonal cut into its variables, each summarized with its ``top_k``
    largest entries; ``estimate`` is Hutchinson's (with standard errors), or ``None``
    for a diagonal read off an exact block."""
    bounds = np.cumsum([0, *operator.sizes])
    result = []
    pairs = zip(operator.variables, operator.shapes, strict=True)
    for index, (variable, shape) in enumerate(pairs):
        part = values[bounds[index] : bounds[index + 1]]
        errors = None if estimate is None else estimate.stderr[bounds[index] : bounds[index + 1]]
        order = np.argsort(-part, kind="stable")[:top_k]
        top = tuple(
            SharpParameter(
                index=tuple(int(i) for i in np.unravel_index(int(flat), shape)),
                value=float(part[flat]),
                stderr=None if errors is None else float(errors[flat]),
            )
            for flat in order
        )
        result.append(
            VariableDiagonal(
                var=str(variable.path),
                shape=shape,
                method="exact" if estimate is None else "hutchinson",
                mean=float(part.mean()),
                max=float(part.max()),
                sum=float(part.sum()),
                sum_stderr=None if estimate is None else estimate.segment_stderr(index),
                top=top,
                values=part.reshape(shape),
                stderr=None if errors is None else errors.reshape(shape),
            )
        )
    return tuple(result)


@dataclass(frozen=True)
class _Plan:
    """How a block is computed: ``exact`` with ``rows_per_pass`` rows a pass, or
    ``lanczos`` (``rows_per_pass`` 0)."""

    method: str
    rows_per_pass: int = 0


def _plan(operator: HessianOperator, options: HessianOptions, what: str) -> _Plan:
    """Choose the method under the memory guard, before anything large is allocated.

    An exact block needs its matrix (:func:`exact_block_bytes`) plus the work space of
    one pass of rows, which is read off the traced graph of one Hessian-vector product
    (:meth:`HessianOperator.work_estimate`); the rows per pass are as many as fit.
    ``what`` names the block in the error message.
    """
    _check_example_gradients(operator, options)
    if options.method == "lanczos":
        return _Plan("lanczos")
    size = operator.size
    matrix = exact_block_bytes(size)
    needed = matrix
    if matrix <= options.max_memory:
        work = operator.work_estimate()
        rows = work.rows_within(options.max_memory - matrix, size)
        if rows:
            return _Plan("exact", rows)
        needed = matrix + work.pass_bytes(1)
    if options.method == "auto":
        return _Plan("lanczos")
    raise ResourceError(
        f"{what} has n={size:,} parameters; its exact Hessian needs about "
        f"{format_bytes(needed)} (matrix and work space), more than --max-memory "
        f"{format_bytes(options.max_memory)}. Use --method lanczos."
    )


def _check_example_gradients(operator: HessianOperator, options: HessianOptions) -> None:
    """The empirical Fisher holds every example's gradient of the block at once: refuse
    before allocating when they do not fit ``max_memory``."""
    needed = operator.example_gradient_bytes()
    if needed > options.max_memory:
        raise ResourceError(
            f"--matrix empirical-fisher: the per-example gradients of a batch "
            f"({operator.data.first.size:,} rows x n={operator.size:,} parameters) need "
            f"about {format_bytes(needed)}, more than --max-memory "
            f"{format_bytes(options.max_memory)}. Use a smaller --batch-size or smaller "
            "blocks (--block variable|layer)."
        )


def cross_blocks(
    model: Any,
    signature: ModelSignature,
    spec: Any,
    batch: Batch | Batches,
    blocks: Sequence[_Block],
    options: HessianOptions,
    training: bool,
    notes: _Notes | None = None,
    replicas: Replicas | None = None,
) -> tuple[CrossBlock, ...]:
    """Off-diagonal blocks between every pair of selected variables.

    They come from one exact Hessian over all the selected variables, so that block
    must fit ``--max-memory``.  Its fallbacks go to ``notes``.
    """
    variables = [v for block in blocks for v in block.variables]
    operator = HessianOperator(
        model,
        signature,
        spec,
        batch,
        variables,
        training=training,
        replicas=replicas,
        matrix=options.matrix,
        mc_samples=options.mc_samples,
        seed=options.seed or 0,
    )
    exact_options = replace(options, method="exact")
    plan = _plan(operator, exact_options, "--cross: the exact Hessian over all selected variables")
    matrix = operator.exact(plan.rows_per_pass)
    if notes is not None:
        notes.add("--cross", operator.notes)
    bounds = np.cumsum([0, *operator.sizes])
    result = []
    for i in range(len(variables)):
        for j in range(i + 1, len(variables)):
            part = matrix[bounds[i] : bounds[i + 1], bounds[j] : bounds[j + 1]]
            result.append(
                CrossBlock(
                    vars=(variables[i].path, variables[j].path),
                    shape=(int(part.shape[0]), int(part.shape[1])),
                    frobenius=float(np.linalg.norm(part)),
                    max_abs=float(np.abs(part).max(initial=0.0)),
                )
            )
    return tuple(result)


class _Notes:
    """The fallbacks of a run, each said once with the blocks it happened to."""

    def __init__(self) -> None:
        self._where: dict[str, list[str]] = {}

    def add(self, where: str, notes: Sequence[str]) -> None:
        """Record ``notes`` (an operator's :attr:`~HessianOperator.notes`) for ``where``."""
        for note in notes:
            self._where.setdefault(note, []).append(where)

    def lines(self) -> tuple[str, ...]:
        """One line per distinct note, naming up to three of its blocks."""
        out = []
        for note, places in self._where.items():
            shown = "; ".join(places[:3])
            more = f" (+{len(places) - 3} more)" if len(places) > 3 else ""
            out.append(f"{note}: {shown}{more}")
        return tuple(out)


def _matrix_notes(model: Any, options: HessianOptions) -> tuple[str, ...]:
    """What a Gauss-Newton-type matrix leaves out of this model's loss."""
    if options.matrix in ("ggn", "fisher") and model.losses:
        return (
            f"--matrix {options.matrix}: the model's {len(model.losses)} additional "
            "loss term(s) (regularization, add_loss) do not pass through the outputs and "
            "are not part of the matrix",
        )
    return ()


def _expected_steps(size: int, method: str, options: HessianOptions) -> int:
    """Upper bound of the progress steps of a block: Hessian-vector products, or the
    rows of an exact block."""
    lanczos_steps = options.max_iter + (options.probes if options.trace else 0)
    lanczos_steps += max(2, options.probes) if options.diagonal else 0
    steps = size if method == "exact" else lanczos_steps
    return steps + (DENSITY_RUNS * DENSITY_ITERATIONS if options.density else 0)


def _block_result(
    operator: HessianOperator,
    block: _Block,
    plan: _Plan,
    options: HessianOptions,
    progress: Progress,
) -> HessianBlock:
    rng = np.random.default_rng(options.seed)
    started = time.perf_counter()
    compute = _exact_block if plan.method == "exact" else _lanczos_block
    fields = compute(operator, options, rng, progress, plan.rows_per_pass)
    return HessianBlock(
        vars=tuple(v.path for v in block.variables),
        layers=block.layers,
        shapes=tuple(operator.shapes),
        size=operator.size,
        method=plan.method,
        seconds=time.perf_counter() - started,
        **fields,
    )


def _block_label(block: _Block) -> str:
    """The block as the notes name it: its first variables."""
    names = ", ".join(v.path for v in block.variables[:2])
    return f"[{names}{', ...' if len(block.variables) > 2 else ''}]"


def run_hessian(
    model: Any,
    signature: ModelSignature,
    data: Batch | Batches | None,
    inspect_options: InspectOptions,
    options: HessianOptions,
    model_info: ModelInfo,
    progress: Progress | None = None,
    strategy: Any = None,
) -> HessianReport:
    """The shared hessian pipeline: loss and batch as ``inspect``, then each block.

    With several batches every Hessian-vector product (and every exact row) is the
    row-weighted mean over the batches, which are read one at a time.  The seed is
    ``inspect_options.seed`` (``options.seed``, when given, must be the same).  With a
    ``strategy`` every product is split across its replicas and summed inside the graph;
    every worker runs the same Lanczos, Hutch++ and density loops on the same products
    with the same seeded probes, so all of them take part in every collective.
    """
    options, _ = resolve_seed(options, inspect_options.seed)
    progress = progress or Progress()
    first = data.first if isinstance(data, Batches) else data
    spec, batch = prepare_loss_and_batch(model, signature, first, inspect_options)
    if inspect_options.batching and not isinstance(data, Batches):
        size = inspect_options.batch_size or batch.size
        data = split_batch(batch, size, inspect_options.max_batches)
    whole = data if isinstance(data, Batches) else batch
    replicas = replicas_for(strategy, model, signature, spec, whole)
    model_info = with_replica_note(model_info, replicas)
    guard_proxy_step(
        model, signature, spec, whole, replace(inspect_options, max_memory=options.max_memory)
    )
    blocks = select_blocks(model, options)
    training = inspect_options.training
    results = []
    notes = _Notes()
    loss_value = float("nan")
    with RestoredState(model, training):
        for index, block in enumerate(blocks):
            operator = HessianOperator(
                model,
                signature,
                spec,
                whole,
                block.variables,
                training=training,
                hvp_mode=options.hvp,
                jit=options.jit,
                replicas=replicas,
                matrix=options.matrix,
                mc_samples=options.mc_samples,
                seed=options.seed or 0,
            )
            names = ", ".join(v.path for v in block.variables[:3])
            plan = _plan(operator, options, f"--method exact: the block [{names}]")
            name = ", ".join(v.path for v in block.variables[:2])
            steps = _expected_steps(operator.size, plan.method, options)
            progress.block(index, len(blocks), name, steps)
            results.append(_block_result(operator, block, plan, options, progress))
            notes.add(_block_label(block), operator.notes)
            loss_value = operator.loss_value()
        cross: tuple[CrossBlock, ...] = ()
        if options.cross:
            cross = cross_blocks(
                model, signature, spec, whole, blocks, options, training, notes, replicas
            )
    loss = LossInfo(value=loss_value, source=spec.source, kind=spec.kind)
    return HessianReport(
        model=model_info,
        batch=replace(batch.info, size=as_batches(whole).rows),
        loss=loss,
        training=training,
        blocks=tuple(results),
        cross=cross,
        notes=(*notes.lines(), *_matrix_notes(model, options)),
        matrix=options.matrix,
        mc_samples=options.mc_samples if options.matrix == "fisher" else None,
    )


def hessian(
    model: Any,
    x: ArrayLike = None,
    y: ArrayLike = None,
    *,
    sample_weight: ArrayLike = None,
    loss: str | None = None,
    training: bool = False,
    seed: int | None = None,
    rows: int = DEFAULT_ROWS,
    options: HessianOptions | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    strategy: Any = None,
) -> HessianReport:
    """Curvature of the loss of an in-memory Keras model (see :class:`HessianOptions`).

    With ``batch_size`` the data is cut into batches (at most ``max_batches``) and the
    curvature is that of their row-weighted mean loss.  ``x`` may be a pipeline, as in
    :func:`gradscope.inspect`: every product then averages over its batches, which are
    read once and kept, so every product sees the same rows.  ``seed`` and
    ``options.seed`` are one setting (give either; both must agree): it seeds the
    synthetic batch, dropout and the random probes alike.  ``strategy`` (a
    ``tf.distribute.Strategy``) splits every Hessian-vector product across its
    replicas, with the results of one device (see :func:`gradscope.inspect`).
    """
    options, seed = resolve_seed(options, seed)
    start = start_in_memory(
        model, x, y, sample_weight, loss=loss, training=training, seed=seed, rows=rows,
        batch_size=batch_size, max_batches=max_batches, max_memory=options.max_memory,
    )  # fmt: skip
    return run_hessian(
        model, start.signature, start.data, start.settings, options, start.info, strategy=strategy
    )


def hessian_file(
    model_path: str | Path,
    data_path: str | Path | None = None,
    *,
    limit: int | None = None,
    loss: str | None = None,
    training: bool = False,
    seed: int | None = None,
    options: HessianOptions | None = None,
    progress: Progress | None = None,
    custom_objects: str | Path | None = None,
    unsafe: bool = False,
    batch_size: int | None = None,
    max_batches: int | None = None,
    strategy: Any = None,
) -> HessianReport:
    """Load a saved model (and a batch file, or synthesize one) and compute its curvature.

    ``custom_objects``, ``unsafe``, ``batch_size``, ``max_batches`` and ``strategy`` are
    as in :func:`gradscope.inspect_file`: with ``batch_size`` the file is streamed and
    every Hessian-vector product averages over the batches.  ``seed`` is as in
    :func:`hessian`.
    """
    options, seed = resolve_seed(options, seed)
    start = start_from_files(
        model_path, data_path, limit=limit, loss=loss, training=training, seed=seed,
        custom_objects=custom_objects, unsafe=unsafe, batch_size=batch_size,
        max_batches=max_batches, max_memory=options.max_memory, strategy=strategy,
    )  # fmt: skip
    return run_hessian(
        start.model, start.signature, start.data, start.settings, options, start.info,
        progress, strategy,
    )  # fmt: skip


__all__: Sequence[str] = ["HessianOptions", "hessian", "hessian_file", "parse_size"]
