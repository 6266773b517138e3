"""The loss on a grid of points in weight space, compiled once, without assigning weights.

A point is a coefficient vector ``c``; its weights are ``w(c) = base + sum_k c_k V_k``
for every trainable variable (``base`` omitted for an interpolation, whose ``V`` are the
two models themselves: ``c = (1 - alpha, alpha)``, so the end points are the two models
exactly).  Non-trainable floating-point state (BatchNorm moving statistics) can follow
the same formula with its coefficients held in [0, 1] (an interpolation's statistics,
those of the nearer model beyond either end) or keep the model's own values.

:class:`LossSurface` evaluates the loss of a whole chunk of points in one call of one
compiled function: the points are a ``[points, k]`` tensor and a loop inside the graph
(``tf.map_fn``, one point at a time, so the work space is that of one forward pass
whatever the chunk) runs the model at each point's weights.  The weights are never
assigned: every variable is read through a ``keras.StatelessScope`` that maps it to the
point's value (what ``Layer.stateless_call`` does, but around ``model(...)`` and the
loss together, so the compiled loss and the regularizers see the same weights).  State
updates in training mode (BatchNorm statistics, dropout's seed) are collected by the
scope and dropped: every point sees the same function, and nothing has to be restored.

The function is traced once per run: its signature leaves the chunk length and the batch
length free (:attr:`LossSurface.traces` counts the traces).  With several batches every
point's loss is the row-weighted mean over them, the batches read one at a time.

``recompute_bn`` replaces, at each point, the moving statistics of every
``BatchNormalization`` layer by the statistics of the data at that point's weights: a
first compiled pass runs the model in training mode over every batch with the moving
statistics mapped to zero, so that the update Keras computes,
``moving * momentum + batch * (1 - momentum)``, is ``batch * (1 - momentum)``, from which
the batch statistic is read back; the statistics of the batches are averaged by rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _tf
from .._keras_private import flatten_layers
from ..loading.data import Batch, Batches, as_batches
from ..loading.signature import ModelSignature
from ..losses import LossSpec, total_loss
from .gradients import batch_tensors
from .graph_memory import split_graph_bytes

MAX_POINTS_PER_CALL = 64
"""Points per compiled call: the loop inside the graph runs them one at a time, so more
buys nothing but a coarser progress bar."""

BN_STATISTICS = ("moving_mean", "moving_variance")


@dataclass(frozen=True)
class Combination:
    """Values as ``base + sum_k c_k vectors[k]`` for a list of variables.

    ``base`` is ``None`` for no base (an interpolation).  Every array is float64 numpy,
    one per variable, in the order of ``variables``.
    """

    variables: tuple[Any, ...]
    base: tuple[np.ndarray, ...] | None
    vectors: tuple[tuple[np.ndarray, ...], ...]


def filter_normalized(
    weights: Sequence[np.ndarray], rng: np.random.Generator, include_biases: bool = False
) -> list[np.ndarray]:
    """A random direction, filter-normalized (Li et al. 2018, "Visualizing the Loss
    Landscape of Neural Nets").

    Each variable's direction is drawn from a standard normal; then every filter of it,
    a slice along the last axis (an output unit of a ``Dense`` kernel, an output channel
    of a ``Conv`` kernel), is scaled to the norm of the same filter of the weights, so
    that moving one unit along the direction changes every filter in proportion to its
    own size (scale-invariant layers otherwise make the plot meaningless).  1-D and
    scalar variables (biases, normalization scales and offsets) get a zero direction,
    unless ``include_biases``: each is then one filter.  Every variable is drawn whether
    or not it is zeroed, so the other directions do not depend on ``include_biases``.
    """
    out = []
    for weight in weights:
        direction = rng.standard_normal(weight.shape)
        if weight.ndim <= 1:
            if not include_biases:
                direction = np.zeros_like(weight)
            else:
                norm = np.linalg.norm(direction)
                direction *= np.linalg.norm(weight) / norm if norm > 0 else 0.0
            out.append(direction)
            continue
        filters = weight.reshape(-1, weight.shape[-1])
        columns = direction.reshape(-1, weight.shape[-1])
        norms = np.linalg.norm(columns, axis=0)
        scale = np.divide(
            np.linalg.norm(filters, axis=0), norms, out=np.zeros_like(norms), where=norms > 0
        )
        out.append((columns * scale).reshape(weight.shape))
    return out


def batch_norm_layers(model: Any) -> list[Any]:
    """Every ``BatchNormalization`` layer of ``model`` (nested ones too), in order."""
    keras = _tf.keras()
    return [
        layer
        for layer in flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _batch_spec(value: Any, rows: int | None = None) -> Any:
    """``TensorSpec``s of a batch's tensors (a structure of dicts and ``None``) with
    ``rows`` rows: ``None`` leaves the batch axis free, so one trace serves every batch."""
    tf = _tf.tensorflow()
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: _batch_spec(item, rows) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_batch_spec(item, rows) for item in value)
    shape = [rows, *value.shape[1:]] if value.shape.rank else []
    return tf.TensorSpec(shape, value.dtype)


class LossSurface:
    """The loss of ``model`` on ``data`` at points ``w(c)`` (see the module doc).

    ``weights`` combines the trainable variables (every one of them: a variable without
    a direction gets zero vectors); ``state`` the non-trainable ones that move with the
    point (an interpolation's moving statistics), or ``None``.  Both combinations take
    the same coefficient vectors, of length ``k``.
    """

    def __init__(
        self,
        model: Any,
        signature: ModelSignature,
        loss: LossSpec,
        data: Batch | Batches,
        weights: Combination,
        state: Combination | None = None,
        *,
        training: bool = False,
        recompute_bn: bool = False,
    ) -> None:
        tf = _tf.tensorflow()
        self.model = model
        self.signature = signature
        self.loss = loss
        self.data = as_batches(data)
        self.training = training
        self.k = len(weights.vectors)
        self._weights = self._constants(weights)
        self._state = None if state is None else self._constants(state)
        self.bn_layers = batch_norm_layers(model) if recompute_bn else []
        self.recompute_bn = bool(self.bn_layers)
        self.traces = 0
        """Traces of the grid function (1 for a whole run, whatever its chunks)."""
        self.stat_traces = 0
        """Traces of the statistics pass of ``recompute_bn``."""
        arguments = batch_tensors(self.data.first, loss.needs_targets)
        coefficients = tf.TensorSpec([None, self.k], tf.float32)
        batch_spec = _batch_spec(arguments)
        statistics = [
            tf.TensorSpec([None, *getattr(layer, name).shape], tf.float32)
            for layer in self.bn_layers
            for name in BN_STATISTICS
        ]
        self._grid_fn = tf.function(self._grid, autograph=False).get_concrete_function(
            coefficients, statistics, batch_spec
        )
        self._stats_fn: Any = None
        if self.recompute_bn:
            self._stats_fn = tf.function(self._batch_statistics, autograph=False)
            self._stats_fn = self._stats_fn.get_concrete_function(coefficients, batch_spec)

    # -- building the graph -----------------------------------------------------------

    @staticmethod
    def _constants(combination: Combination) -> tuple[tuple[Any, ...], Any, tuple[Any, ...]]:
        """The combination as tensors captured by the graph, in each variable's dtype."""
        tf = _tf.tensorflow()

        def tensors(arrays: Sequence[np.ndarray]) -> tuple[Any, ...]:
            return tuple(
                tf.constant(a, dtype=v.dtype)
                for a, v in zip(arrays, combination.variables, strict=True)
            )

        base = None if combination.base is None else tensors(combination.base)
        return combination.variables, base, tuple(tensors(v) for v in combination.vectors)

    @staticmethod
    def _values(parts: tuple[tuple[Any, ...], Any, tuple[Any, ...]], point: Any) -> list[Any]:
        """``base + sum_k point[k] * vectors[k]`` for every variable of ``parts``."""
        tf = _tf.tensorflow()
        variables, base, vectors = parts
        values = []
        for index, variable in enumerate(variables):
            coefficient = [tf.cast(point[k], variable.dtype) for k in range(len(vectors))]
            terms = [c * vector[index] for c, vector in zip(coefficient, vectors, strict=True)]
            if base is not None:
                terms.insert(0, base[index])
            values.append(tf.add_n(terms))
        return values

    def _mapping(self, point: Any, statistics: Sequence[Any] = ()) -> list[tuple[Any, Any]]:
        """Every variable the point moves, with its value there; later pairs win."""
        mapping = list(zip(self._weights[0], self._values(self._weights, point), strict=True))
        if self._state is not None:
            # The state's coefficients are held in [0, 1]: an interpolation's statistics
            # beyond either model are that model's (an extrapolated moving variance can
            # be negative, and the normalization NaN).
            held = _tf.tensorflow().clip_by_value(point, 0.0, 1.0)
            mapping += list(zip(self._state[0], self._values(self._state, held), strict=True))
        if statistics:
            bn_variables = [getattr(b, name) for b in self.bn_layers for name in BN_STATISTICS]
            for variable, value in zip(bn_variables, statistics, strict=True):
                mapping.append((variable, self._tf_cast(value, variable.dtype)))
        return mapping

    @staticmethod
    def _tf_cast(value: Any, dtype: Any) -> Any:
        return _tf.tensorflow().cast(value, dtype)

    def _batch_loss(self, batch: tuple[Any, Any, Any], training: bool) -> Any:
        """The loss of one batch at whatever the enclosing scope maps the weights to."""
        inputs, targets, weight = batch
        packed = self.signature.pack_inputs(inputs)
        y_pred = self.model(packed, training=training)
        y_true = None if targets is None else self.signature.pack_outputs(targets)
        return total_loss(self.loss, self.model, packed, y_true, y_pred, weight, training)

    def _point_loss(self, point: Any, statistics: Sequence[Any], batch: Any) -> Any:
        tf = _tf.tensorflow()
        keras = _tf.keras()
        with keras.StatelessScope(self._mapping(point, statistics)):
            return tf.cast(self._batch_loss(batch, self.training), tf.float32)

    def _grid(self, points: Any, statistics: Sequence[Any], batch: Any) -> Any:
        """The loss at each of ``points`` (``[chunk, k]``): one forward pass each, in a
        loop inside the graph; ``statistics`` are each point's recomputed BatchNorm
        statistics (``[chunk, ...]`` each), or empty."""
        tf = _tf.tensorflow()
        self.traces += 1

        def one(item: Any) -> Any:
            point, stats = item
            return self._point_loss(point, stats, batch)

        return tf.map_fn(
            one,
            (points, list(statistics)),
            fn_output_signature=tf.float32,
            parallel_iterations=1,
        )

    def _point_statistics(self, point: Any, batch: Any) -> list[Any]:
        """Each BatchNorm layer's batch mean and variance at ``point``'s weights."""
        tf = _tf.tensorflow()
        keras = _tf.keras()
        bn_variables = [getattr(b, name) for b in self.bn_layers for name in BN_STATISTICS]
        zeros = [(v, tf.zeros(v.shape, v.dtype)) for v in bn_variables]
        with keras.StatelessScope(self._mapping(point) + zeros) as scope:
            self._batch_loss(batch, training=True)
        out = []
        for layer in self.bn_layers:
            scale = tf.constant(1.0 - float(layer.momentum), tf.float32)
            for name in BN_STATISTICS:
                updated = scope.get_current_value(getattr(layer, name))
                if updated is None:
                    raise RuntimeError(f"internal: {layer.name} left no {name} update")
                out.append(tf.cast(updated, tf.float32) / scale)
        return out

    def _batch_statistics(self, points: Any, batch: Any) -> Any:
        tf = _tf.tensorflow()
        self.stat_traces += 1
        signature = [
            tf.TensorSpec(getattr(b, name).shape, tf.float32)
            for b in self.bn_layers
            for name in BN_STATISTICS
        ]
        return tf.map_fn(
            lambda point: self._point_statistics(point, batch),
            points,
            fn_output_signature=signature,
            parallel_iterations=1,
        )

    # -- running ----------------------------------------------------------------------

    def _over_batches(self, function: Callable[[Any], Any]) -> list[np.ndarray]:
        """``sum_b (rows_b / rows) function(batch_b)``, per output, as float64."""
        total: list[np.ndarray] | None = None
        for batch in self.data.iterate():
            arguments = batch_tensors(batch, self.loss.needs_targets)
            outputs = function(arguments)
            outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
            weight = batch.size / self.data.rows
            values = [weight * np.asarray(o.numpy(), dtype=np.float64) for o in outputs]
            total = values if total is None else [t + v for t, v in zip(total, values, strict=True)]
        if total is None:
            raise RuntimeError("internal: no batch to evaluate")
        return total

    def statistics(self, points: np.ndarray) -> list[np.ndarray]:
        """The recomputed BatchNorm statistics at ``points`` (``[n, k]``): per layer, its
        mean then its variance, each ``[n, ...]``, averaged over the batches by rows."""
        if self._stats_fn is None:
            return []
        tensor = self._points(points)
        return self._over_batches(lambda batch: self._stats_fn(tensor, batch))

    def losses(self, points: np.ndarray) -> np.ndarray:
        """The loss at each of ``points`` (``[n, k]``, any ``n``), float64 ``[n]``."""
        tf = _tf.tensorflow()
        tensor = self._points(points)
        statistics = [tf.constant(s, tf.float32) for s in self.statistics(points)]
        (values,) = self._over_batches(lambda batch: self._grid_fn(tensor, statistics, batch))
        return values

    def _points(self, points: np.ndarray) -> Any:
        tf = _tf.tensorflow()
        array = np.asarray(points, dtype=np.float32).reshape(-1, self.k)
        return tf.constant(array)

    # -- memory -----------------------------------------------------------------------

    def work_bytes(self) -> tuple[int, int]:
        """``(shared, per_point)``: bytes of the traced graph of the loss at one point,
        not run (:func:`~gradscope.engine.graph_memory.split_graph_bytes`).

        ``shared`` counts what does not depend on the point: the batch, and the base and
        direction vectors (graph inputs of this trace, captured constants of the real
        one); ``per_point`` the point's weights and the forward pass.  The loop inside
        the grid function holds one point at a time, so a call needs about their sum.
        """
        tf = _tf.tensorflow()
        parts = self._weights

        def spec(tensor: Any) -> Any:
            return tf.TensorSpec(tensor.shape, tensor.dtype)

        base_spec = None if parts[1] is None else [spec(t) for t in parts[1]]
        vector_specs = [[spec(t) for t in vector] for vector in parts[2]]
        arguments = batch_tensors(self.data.first, self.loss.needs_targets)
        batch_spec = _batch_spec(arguments, self.data.first.size)

        def one(point: Any, base: Any, vectors: Any, batch: Any) -> Any:
            keras = _tf.keras()
            moved = (parts[0], None if base is None else tuple(base), tuple(map(tuple, vectors)))
            mapping = list(zip(parts[0], self._values(moved, point), strict=True))
            with keras.StatelessScope(mapping):
                return self._batch_loss(batch, self.training)

        function = tf.function(one, autograph=False)
        graph = function.get_concrete_function(
            tf.TensorSpec([self.k], tf.float32), base_spec, vector_specs, batch_spec
        ).graph
        return split_graph_bytes(graph, [graph.inputs[0]])
