"""The training instruments of :class:`~gradscope.keras.GradientMonitor`: what they compute.

Each instrument measures the model at its current weights on the monitor's fixed probe
batch, and returns the plain data of :mod:`.results`.  Everything heavy runs in
``tf.function`` s traced once per model (the batch and the variables do not change
between records), and only on the steps that record:

* :class:`WeightTracker` (``update``, ``alignment``): two shadow copies of the trainable
  weights, on the device: the weights when the first ``fit`` began (``w0``) and before
  the update that a record follows.  One compiled function reduces, per variable, the
  squared norms of ``dw``, ``w_before``, ``w - w0`` and ``w``, and the probe gradient's
  ``<g, dw>`` and ``||g||^2`` (one more forward and backward pass of the probe).
* :class:`BatchTestsInstrument` (``batch_tests``): the per-example gradients of the probe
  batch (:class:`~gradscope.engine.per_sample.PerSampleEngine`, vectorized), reduced in
  the graph to the three sums the tests need.
* :class:`CurvatureInstruments` (``sharpness``, ``trace``): Lanczos on Hessian-vector
  products (:class:`~gradscope.engine.hessian.HessianOperator`), warm-started from the
  previous record's top eigenvector; Hutch++ for the trace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _tf
from ..engine import spectral
from ..engine.capture import walk_layers
from ..engine.gradients import batch_tensors
from ..engine.graph_memory import format_bytes
from ..engine.hessian import HessianOperator
from ..engine.per_sample import PerSampleEngine
from ..engine.step_memory import default_max_memory
from ..errors import ResourceError, UsageError, received
from ..loading.data import Batch
from ..loading.signature import ModelSignature
from ..losses import LossSpec, total_loss
from ..session import variable_owners
from .results import (
    Alignment,
    BatchTests,
    LayerAlignment,
    LayerUpdate,
    Sharpness,
    TraceStat,
    UpdateSizes,
)

__all__ = [
    "BatchTestsInstrument",
    "CurvatureInstruments",
    "InstrumentSettings",
    "WeightTracker",
    "batch_test_values",
    "layer_names",
]

DEFAULT_THETA = 0.5
"""The norm and inner-product tests' constant (Cockpit's default)."""
DEFAULT_NU = 5.84
"""The orthogonality test's constant (Cockpit's default, from Bollapragada et al.)."""


@dataclass(frozen=True)
class InstrumentSettings:
    """The instruments' knobs (``GradientMonitor`` passes its keywords through)."""

    theta: float = DEFAULT_THETA
    nu: float = DEFAULT_NU
    sharpness_tol: float = 1e-3
    sharpness_max_iter: int = 30
    trace_probes: int = 30
    trace_matrix: str = "hessian"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("theta", "nu", "sharpness_tol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise UsageError(
                    f"GradientMonitor {name}: expected a positive number. {received(value)}"
                )
        for name in ("sharpness_max_iter", "trace_probes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(
                    f"GradientMonitor {name}: expected a positive integer. {received(value)}"
                )
        if self.trace_matrix not in ("hessian", "ggn"):
            raise UsageError(
                "GradientMonitor trace_matrix: expected 'hessian' or 'ggn'. "
                f"{received(self.trace_matrix)}"
            )


def layer_names(model: Any, variables: Sequence[Any]) -> list[str]:
    """The layer path of each variable, as the inspect report's ``variables[*].layer``
    gives it (the deepest layer that holds it; the model's name for its own)."""
    owners = variable_owners(model, walk_layers(model))
    return [owners[id(v)].path if id(v) in owners else str(model.name) for v in variables]


def _groups(model: Any, variables: Sequence[Any]) -> tuple[list[str], np.ndarray]:
    """The layers in first-seen order, and each variable's index into that list."""
    names: list[str] = []
    index = []
    for name in layer_names(model, variables):
        if name not in names:
            names.append(name)
        index.append(names.index(name))
    return names, np.asarray(index, dtype=np.int64)


def _group_sums(values: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """``values`` (one per variable, last axis) summed per layer."""
    out = np.zeros((*values.shape[:-1], count), dtype=np.float64)
    for column, group in enumerate(index):
        out[..., group] += values[..., column]
    return out


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 and math.isfinite(denominator) else math.nan


def _cosine(dot: float, left_sq: float, right_sq: float) -> float:
    scale = math.sqrt(left_sq) * math.sqrt(right_sq)
    return dot / scale if scale > 0 and math.isfinite(scale) else math.nan


def _probe_loss(
    model: Any, signature: ModelSignature, spec: LossSpec, batch: Any, training: bool
) -> Any:
    """The loss of the probe batch (``batch`` as :func:`batch_tensors` gives it)."""
    inputs, targets, weight = batch
    packed = signature.pack_inputs(inputs)
    y_pred = model(packed, training=training)
    y_true = None if targets is None else signature.pack_outputs(targets)
    return total_loss(spec, model, packed, y_true, y_pred, weight, training)


def _check_copies(variables: Sequence[Any], budget: int | None = None) -> None:
    """Refuse, before allocating, two copies of weights that do not fit the budget."""
    needed = 2 * sum(
        int(np.prod(v.shape)) * np.dtype(_tf.tensorflow().as_dtype(v.dtype).as_numpy_dtype).itemsize
        for v in variables
    )
    budget = default_max_memory() if budget is None else budget
    if needed > budget:
        raise ResourceError(
            f"GradientMonitor update/alignment: two copies of the trainable weights need about "
            f"{format_bytes(needed)}, more than {format_bytes(budget)}. Leave out the update "
            f"and alignment instruments. {received(f'{len(variables)} variables')}"
        )


class WeightTracker:
    """Shadow copies of the trainable weights, and the update and alignment they give.

    ``w0`` is copied when the tracker is built (the monitor builds it when the first
    ``fit`` begins); :meth:`snapshot` copies the weights before an update.  Both copies
    live on the variables' device, so a snapshot costs one device copy, no transfer.
    """

    def __init__(
        self,
        model: Any,
        signature: ModelSignature,
        spec: LossSpec,
        batch: Batch,
        *,
        training: bool = False,
    ) -> None:
        tf = _tf.tensorflow()
        self.model = model
        self.variables = list(model.trainable_variables)
        _check_copies(self.variables)
        self.layers, self._index = _groups(model, self.variables)
        self._sources = [getattr(v, "value", v) for v in self.variables]
        self._initial = [tf.Variable(s, trainable=False) for s in self._sources]
        self._before = [tf.Variable(s, trainable=False) for s in self._sources]
        self._arguments = batch_tensors(batch, spec.needs_targets)
        self.snapshot_step: int | None = None
        self._signature = signature
        self._spec = spec
        self._training = training
        self._snapshot_fn = tf.function(self._copy, autograph=False)
        self._measure_fn = tf.function(self._squares, autograph=False)

    def _copy(self) -> None:
        for shadow, source in zip(self._before, self._sources, strict=True):
            shadow.assign(source)

    def snapshot(self, step: int) -> None:
        """Copy the current weights as ``w_before`` (call it before the update)."""
        self._snapshot_fn()
        self.snapshot_step = step

    def _squares(self, with_gradient: Any) -> Any:
        """``[6, variables]`` float64: ``||dw||^2``, ``||w_before||^2``,
        ``||w - w0||^2``, ``||w||^2``, ``<g, dw>``, ``||g||^2``."""
        tf = _tf.tensorflow()

        def wide(t: Any) -> Any:
            return tf.cast(t, tf.float64)

        gradients = [None] * len(self._sources)
        if with_gradient:
            with tf.GradientTape() as tape:
                loss = _probe_loss(
                    self.model, self._signature, self._spec, self._arguments, self._training
                )
            gradients = tape.gradient(
                loss, self._sources, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
        rows = []
        for source, before, initial, grad in zip(
            self._sources, self._before, self._initial, gradients, strict=True
        ):
            now, past, origin = wide(source), wide(before), wide(initial)
            delta = now - past
            g = tf.zeros_like(delta) if grad is None else wide(tf.convert_to_tensor(grad))
            rows.append(
                tf.stack(
                    [
                        tf.reduce_sum(delta * delta),
                        tf.reduce_sum(past * past),
                        tf.reduce_sum(tf.square(now - origin)),
                        tf.reduce_sum(now * now),
                        tf.reduce_sum(g * delta),
                        tf.reduce_sum(g * g),
                    ]
                )
            )
        return tf.stack(rows, axis=1)

    def measure(self, step: int, with_alignment: bool) -> tuple[UpdateSizes, Alignment | None]:
        """The update since the last snapshot, and its alignment with the probe gradient
        at the current weights (when asked for)."""
        squares = np.asarray(self._measure_fn(bool(with_alignment)).numpy(), dtype=np.float64)
        per_layer = _group_sums(squares, self._index, len(self.layers))
        total = squares.sum(axis=1)

        def update(name: str, column: np.ndarray) -> LayerUpdate:
            return LayerUpdate(
                name=name,
                norm=math.sqrt(column[0]),
                ratio=_ratio(math.sqrt(column[0]), math.sqrt(column[1])),
                distance=math.sqrt(column[2]),
                weight_norm=math.sqrt(column[3]),
            )

        since = step - (self.snapshot_step if self.snapshot_step is not None else 0)
        sizes = UpdateSizes(
            steps=max(since, 0),
            total=update("total", total),
            layers=tuple(update(n, per_layer[:, i]) for i, n in enumerate(self.layers)),
        )
        if not with_alignment:
            return sizes, None
        alignment = Alignment(
            total=_cosine(total[4], total[5], total[0]),
            layers=tuple(
                LayerAlignment(n, _cosine(per_layer[4, i], per_layer[5, i], per_layer[0, i]))
                for i, n in enumerate(self.layers)
            ),
        )
        return sizes, alignment


# -- batch-size tests --------------------------------------------------------------------


def batch_test_values(
    rows: int,
    sum_squares: float,
    sum_inner_squares: float,
    mean_gradient_sq: float,
    theta: float,
    nu: float,
) -> BatchTests:
    """The tests from three sums over the deviations ``d_i = g_i - gbar`` of the
    ``B = rows`` per-example gradients: ``sum ||d_i||^2``, ``sum (d_i . gbar)^2`` and
    ``||gbar||^2`` (the schema document has the formulas: ``g_i . gbar - ||gbar||^2 =
    d_i . gbar``, and ``g_i``'s part orthogonal to ``gbar`` is ``d_i``'s).  Centered
    sums, so the variances lose no digits to cancellation when the mean dominates.
    NaN (``null``) when ``B < 2`` or ``gbar = 0``."""
    norm_sq = mean_gradient_sq
    if rows < 2 or not norm_sq > 0:
        return BatchTests(
            batch_size=rows,
            theta=theta,
            nu=nu,
            gradient_norm=math.sqrt(max(norm_sq, 0.0)),
            norm_test=math.nan,
            inner_product_test=math.nan,
            orthogonality_test=math.nan,
            suggested_batch_size={},
            snr=math.nan,
        )
    variance = sum_squares / (rows - 1)
    variance_ip = sum_inner_squares / (rows - 1)
    variance_orth = max(sum_squares - sum_inner_squares / norm_sq, 0.0) / (rows - 1)
    norm = math.sqrt(norm_sq)

    def suggest(needed: float) -> int | None:
        return math.ceil(needed) if math.isfinite(needed) else None

    return BatchTests(
        batch_size=rows,
        theta=theta,
        nu=nu,
        gradient_norm=norm,
        norm_test=math.sqrt(variance / rows) / (theta * norm),
        inner_product_test=math.sqrt(variance_ip / rows) / (theta * norm_sq),
        orthogonality_test=math.sqrt(variance_orth / rows) / (nu * norm),
        suggested_batch_size={
            "norm": suggest(variance / (theta**2 * norm_sq)),
            "inner_product": suggest(variance_ip / (theta**2 * norm_sq**2)),
            "orthogonality": suggest(variance_orth / (nu**2 * norm_sq)),
        },
        snr=norm_sq / variance if variance > 0 else math.inf,
    )


class BatchTestsInstrument:
    """The norm, inner-product and orthogonality tests and the gradient SNR of the
    probe batch, from its per-example gradients.

    All the per-example gradients of the batch are held at once (``rows x n`` floats,
    checked against ``max_memory`` first): the sums need the mean gradient, which is
    only known once every example is in.
    """

    def __init__(
        self,
        model: Any,
        signature: ModelSignature,
        spec: LossSpec,
        batch: Batch,
        *,
        training: bool = False,
        settings: InstrumentSettings,
        max_memory: int | None = None,
    ) -> None:
        tf = _tf.tensorflow()
        self.engine = PerSampleEngine(
            model, signature, spec, training=training, purpose="GradientMonitor batch_tests"
        )
        self.settings = settings
        size = sum(int(np.prod(v.shape)) for v in self.engine.variables)
        needed = batch.size * size * 4 * 3  # float32 gradients, deviations, work space
        budget = default_max_memory() if max_memory is None else max_memory
        if needed > budget:
            raise ResourceError(
                f"GradientMonitor batch_tests: the per-example gradients of the probe batch "
                f"({batch.size:,} rows x {size:,} parameters) need about {format_bytes(needed)}, "
                f"more than {format_bytes(budget)}. Use a smaller probe batch. "
                f"{received(f'{batch.size} rows')}"
            )
        self.rows = batch.size
        self.method = self.engine.choose_method(batch)
        self._examples = _examples(batch, spec.needs_targets)
        self._sums_fn = tf.function(self._sums, autograph=False)

    def _sums(self, examples: Any) -> Any:
        """``[sum ||d_i||^2, sum (d_i . gbar)^2, ||gbar||^2]`` (``d_i = g_i - gbar``):
        the gradients in float32, each row's reductions summed over rows in float64."""
        tf = _tf.tensorflow()
        gradients = self.engine.flat_gradients(examples, tf.float32)
        mean = tf.reduce_mean(gradients, axis=0)
        deviations = gradients - mean
        squares = tf.cast(tf.reduce_sum(tf.square(deviations), axis=1), tf.float64)
        inner = tf.cast(tf.linalg.matvec(deviations, mean), tf.float64)
        wide_mean = tf.cast(mean, tf.float64)
        return tf.stack(
            [
                tf.reduce_sum(squares),
                tf.reduce_sum(tf.square(inner)),
                tf.reduce_sum(tf.square(wide_mean)),
            ]
        )

    def measure(self) -> BatchTests:
        sums = np.asarray(self._sums_fn(self._examples).numpy(), dtype=np.float64)
        return batch_test_values(
            self.rows,
            float(sums[0]),
            float(sums[1]),
            float(sums[2]),
            self.settings.theta,
            self.settings.nu,
        )


def _examples(batch: Batch, with_targets: bool) -> dict[str, Any]:
    """The batch in the per-example engine's structure, as tensors."""
    inputs, targets, weight = batch_tensors(batch, with_targets)
    examples: dict[str, Any] = {"inputs": inputs}
    if targets is not None:
        examples["targets"] = targets
        if weight is not None:
            examples["weight"] = weight
    return examples


# -- curvature ---------------------------------------------------------------------------


class _NotFinite(Exception):
    """A curvature product with NaN or Inf entries (weights or loss already diverged)."""


def _finite_products(operator: HessianOperator) -> spectral.MatVec:
    """``operator.hvp`` that raises :class:`_NotFinite` instead of returning NaN/Inf, so
    that a diverged model gives NaN instruments rather than stopping ``fit``."""

    def matvec(vector: np.ndarray) -> np.ndarray:
        product = operator.hvp(vector)
        if not np.all(np.isfinite(product)):
            raise _NotFinite
        return product

    return matvec


class CurvatureInstruments:
    """``sharpness`` (top Hessian eigenvalue, warm-started Lanczos) and ``trace``
    (Hutch++) of the loss on the probe batch, over all trainable variables."""

    def __init__(
        self,
        model: Any,
        signature: ModelSignature,
        spec: LossSpec,
        batch: Batch,
        *,
        training: bool = False,
        settings: InstrumentSettings,
        sharpness: bool,
        trace: bool,
    ) -> None:
        self.settings = settings
        variables = list(model.trainable_variables)
        self.hessian = (
            HessianOperator(model, signature, spec, batch, variables, training=training)
            if sharpness or settings.trace_matrix == "hessian"
            else None
        )
        self.trace_operator = self.hessian
        if trace and settings.trace_matrix == "ggn":
            self.trace_operator = HessianOperator(
                model,
                signature,
                spec,
                batch,
                variables,
                training=training,
                matrix="ggn",
                seed=settings.seed,
            )
        self._eigenvector: np.ndarray | None = None
        self._rng = np.random.default_rng(settings.seed)

    def sharpness(self, learning_rate: float | None) -> Sharpness:
        """λmax by Lanczos from the previous record's eigenvector, against ``2 / lr``."""
        operator = self._operator(self.hessian)
        before = operator.hvp_calls
        rate = math.nan if learning_rate is None else float(learning_rate)
        two_over_lr = 2.0 / rate if rate > 0 else math.nan
        try:
            result = spectral.lanczos(
                _finite_products(operator),
                operator.size,
                k=1,
                tol=self.settings.sharpness_tol,
                max_iter=self.settings.sharpness_max_iter,
                rng=self._rng,
                want_vectors=True,
                v0=self._eigenvector,
                want_smallest=False,
            )
        except _NotFinite:
            self._eigenvector = None
            return Sharpness(
                lambda_max=math.nan,
                two_over_lr=two_over_lr,
                eos_ratio=math.nan,
                matvecs=operator.hvp_calls - before,
                residual=math.nan,
                converged=False,
            )
        if result.eigenvectors is not None:
            self._eigenvector = result.eigenvectors[:, 0]
        top = float(result.eigenvalues[0])
        return Sharpness(
            lambda_max=top,
            two_over_lr=two_over_lr,
            eos_ratio=top * rate / 2.0,
            matvecs=operator.hvp_calls - before,
            residual=float(result.residuals[0]),
            converged=bool(result.converged),
        )

    def trace(self) -> TraceStat:
        operator = self._operator(self.trace_operator)
        try:
            estimate = spectral.hutchinson_trace(
                _finite_products(operator),
                operator.size,
                probes=self.settings.trace_probes,
                rng=self._rng,
            )
        except _NotFinite:
            return TraceStat(
                trace=math.nan, stderr=math.nan, probes=0, matrix=self.settings.trace_matrix
            )
        return TraceStat(
            trace=estimate.trace,
            stderr=estimate.stderr,
            probes=estimate.probes,
            matrix=self.settings.trace_matrix,
        )

    @staticmethod
    def _operator(operator: HessianOperator | None) -> HessianOperator:
        if operator is None:
            raise RuntimeError("internal: a curvature instrument that was not asked for")
        operator.refresh_state()
        return operator
