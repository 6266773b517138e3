"""One forward pass, one backward pass, statistics reduced in the graph.

:class:`GradientEngine` compiles a single ``tf.function`` step.  Inside it, one
``tf.GradientTape`` records the forward pass (with every layer's outputs captured, see
:mod:`gradscope.engine.capture`) and the loss, and one ``tape.gradient`` call takes the
gradient with respect to a nested structure of sources: every trainable variable, every
float model input and every captured layer output.  The step then reduces each gradient
(and each activation) to a small statistics vector, so only a few numbers per tensor
leave the graph, unless the raw tensors are asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _tf, stats
from ..loading.data import Batch
from ..loading.signature import ModelSignature
from ..losses import LossSpec, has_cached_logits, probability_path_loss, regularization, total_loss
from .capture import CapturedOutput, LayerCapture, LayerNode, identity_chain
from .replicas import Replicas, across_replicas, leading_rows, loss_share


@dataclass
class TraceMeta:
    """Facts fixed at trace time: which gradients exist and what each row refers to."""

    outputs: list[CapturedOutput] = field(default_factory=list)
    first_call: dict[int, int] = field(default_factory=dict)
    variable_connected: list[bool] = field(default_factory=list)
    variable_sparse: list[bool] = field(default_factory=list)
    input_connected: dict[str, bool] = field(default_factory=dict)
    activation_connected: list[bool] = field(default_factory=list)
    regularization_terms: int = 0
    input_order: list[str] = field(default_factory=list)
    traced_rows: int | None = None
    """The rows of the traced batch (a replica's share with ``tf.distribute``), when
    static: the leading dimension that the layer outputs' traced shapes carry."""


@dataclass(frozen=True)
class EngineResult:
    """What one step returned, as numpy."""

    loss: float
    regularization: float
    variable_stats: np.ndarray
    weight_l2: np.ndarray
    rows_touched: np.ndarray
    input_stats: dict[str, np.ndarray]
    activation_grad_stats: np.ndarray
    activation_value_stats: np.ndarray
    tensors: dict[str, Any] | None
    meta: TraceMeta
    aggregation: dict[str, Any] | None = None


def _nan_row() -> Any:
    tf = _tf.tensorflow()
    return tf.fill([stats.N_FIELDS], tf.constant(np.nan, tf.float64))


@contextlib.contextmanager
def _graph_optimizer(enabled: bool) -> Iterator[None]:
    """Turn Grappler off (unless ``enabled``) while a function is first instantiated."""
    tf = _tf.tensorflow()
    if enabled:
        yield
        return
    previous = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        restored = {"disable_meta_optimizer": False, **previous}
        tf.config.optimizer.set_experimental_options(restored)


def _table(
    tensors: list[Any],
    *,
    dead_units: bool,
    extra_rows: list[Any] | None = None,
    reducer: stats.Reducer | None = None,
) -> Any:
    """``[len(tensors), N_FIELDS]`` stats, reduced together; NaN rows where a tensor is None.

    ``extra_rows`` are precomputed rows (sparse gradients) that stand in the positions
    of the tensors given as ``("row", k)`` markers.  One gather puts everything in
    order, so the graph holds no per-tensor slicing ops.  ``reducer``: the tensors are
    one replica's rows of the whole (see :func:`stats.batch_stats`).
    """
    tf = _tf.tensorflow()
    extra_rows = extra_rows or []
    dense = [t for t in tensors if t is not None and not isinstance(t, tuple)]
    table = stats.batch_stats(dense, dead_units=dead_units, reducer=reducer)
    n_dense = len(dense)
    order, position = [], 0
    for tensor in tensors:
        if tensor is None:
            order.append(n_dense + len(extra_rows))
        elif isinstance(tensor, tuple):
            order.append(n_dense + tensor[1])
        else:
            order.append(position)
            position += 1
    pieces = [table, *[tf.reshape(row, [1, stats.N_FIELDS]) for row in extra_rows]]
    pieces.append(tf.reshape(_nan_row(), [1, stats.N_FIELDS]))
    return tf.gather(tf.concat(pieces, axis=0), tf.constant(order, tf.int32))


def _dense(gradient: Any) -> Any:
    tf = _tf.tensorflow()
    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


def _entry_counts(tensors: list[Any], reducer: stats.Reducer | None = None) -> Any:
    """How many entries each tensor has in this run, as a float64 vector (summed over
    the replicas' rows with a ``reducer``).

    Read from the running graph, not from the traced shapes: a sequence model's layer
    outputs change length from batch to batch, and a step reused for a shape it was
    traced on earlier carries the metadata of the latest trace.
    """
    tf = _tf.tensorflow()
    if not tensors:
        return tf.zeros([0], tf.float64)
    counts = tf.stack([tf.cast(tf.size(t, out_type=tf.int64), tf.float64) for t in tensors])
    return counts if reducer is None else reducer.sum(counts)


def _live_units(tensors: list[Any], reducer: stats.Reducer | None) -> list[Any]:
    """Per tensor, which units are non-zero somewhere (see :func:`stats.live_units`), on
    any replica with a ``reducer``."""
    tf = _tf.tensorflow()
    live = [stats.live_units(t) for t in tensors]
    if reducer is None or not live:
        return live
    counts = reducer.sum(tf.concat([tf.cast(u, tf.float64) for u in live], axis=0))
    pieces = tf.split(counts, [int(u.shape[0]) for u in live])
    return [tf.greater(piece, 0.0) for piece in pieces]


def _summed_over_replicas(gradients: list[Any]) -> list[Any]:
    """Variable gradients summed over the replicas (one batched all-reduce): each
    replica then holds the gradient of the whole batch.  Unchanged outside a replica
    context."""
    reducer = across_replicas()
    present = [g for g in gradients if g is not None]
    if reducer is None or not present:
        return gradients
    summed = iter(reducer.sum(present))
    return [None if g is None else next(summed) for g in gradients]


def batch_tensors(batch: Batch, with_targets: bool) -> tuple[Any, Any, Any]:
    """A batch as the tensors a compiled step takes: inputs, targets (or ``None`` when the
    batch has none or the loss does not use them) and sample weights (or ``None``)."""
    tf = _tf.tensorflow()
    inputs = {name: tf.convert_to_tensor(a) for name, a in batch.inputs.items()}
    targets = None
    if batch.targets is not None and with_targets:
        targets = {name: tf.convert_to_tensor(a) for name, a in batch.targets.items()}
    weight = None if batch.sample_weight is None else tf.convert_to_tensor(batch.sample_weight)
    return inputs, targets, weight


def weight_norms(variables: list[Any]) -> np.ndarray:
    """Float64 L2 norm of each variable's current value.

    Weights do not depend on the batch, so they are read once after the step and
    reduced in numpy rather than adding ops to the graph.  A plain float64 sum of
    squares, not a BLAS dot: OpenBLAS's worker threads keep spinning after a dot and
    slow down the training steps that follow (seen under the Keras callback).
    """
    norms = np.empty(len(variables), dtype=np.float64)
    for index, variable in enumerate(variables):
        flat = np.asarray(variable.numpy(), dtype=np.float64).ravel()
        norms[index] = np.sqrt(np.sum(flat * flat))
    return norms


class GradientEngine:
    """Compiles and runs the one-pass gradient step for one model, loss and mode."""

    def __init__(
        self,
        model: Any,
        signature: ModelSignature,
        loss: LossSpec,
        *,
        training: bool = False,
        keep_tensors: bool = False,
        optimize_graph: bool = False,
        for_aggregation: bool = False,
        replicas: Replicas | None = None,
    ) -> None:
        """``optimize_graph`` runs TensorFlow's graph optimizer (Grappler) on the step.

        It is off by default: Grappler takes seconds on a large graph and saves less
        than that on a step that runs once.  Turn it on for a step that runs many times.
        ``for_aggregation`` also returns what merging several batches needs
        (:mod:`gradscope.aggregate`): the dense variable gradients and, per layer output
        with value statistics, which units were non-zero somewhere in the batch.
        ``replicas`` splits every batch across the replicas of a ``tf.distribute``
        strategy, with the same results as one device (:mod:`.replicas`).
        """
        tf = _tf.tensorflow()
        self.model = model
        self.signature = signature
        self.loss = loss
        self.training = training
        self.keep_tensors = keep_tensors
        self.optimize_graph = optimize_graph
        self.for_aggregation = for_aggregation
        self.replicas = replicas
        self.sharing = None if replicas is None else replicas.sharing
        self.capture = LayerCapture(model)
        self.variables = list(model.trainable_variables)
        self.meta = TraceMeta()
        self._step_fn = tf.function(self._step, autograph=False)

    @property
    def layer_nodes(self) -> list[LayerNode]:
        return self.capture.nodes

    @property
    def tracing_count(self) -> int:
        """How many times the step was traced (once per distinct batch shape)."""
        return int(self._step_fn.experimental_get_tracing_count())

    def run(self, batch: Batch) -> EngineResult:
        """Run the compiled step on ``batch`` and fetch the results as numpy."""
        if self.replicas is not None:
            shares = self.replicas.distribute(batch, self.loss.needs_targets)
            with _graph_optimizer(self.optimize_graph):
                fetched = self.replicas.run_first(self._step, shares)
            return self._to_numpy(fetched)
        inputs, targets, weight = batch_tensors(batch, self.loss.needs_targets)
        with _graph_optimizer(self.optimize_graph):
            fetched = self._step_fn(inputs, targets, weight)
        return self._to_numpy(fetched)

    # -- the traced step -------------------------------------------------------------

    def _step(
        self, inputs: dict[str, Any], targets: dict[str, Any] | None, weight: Any
    ) -> dict[str, Any]:
        tf = _tf.tensorflow()
        meta = TraceMeta()
        meta.traced_rows = tf.nest.flatten(inputs)[0].shape[0]
        with tf.GradientTape() as tape:
            float_inputs = {name: t for name, t in inputs.items() if t.dtype.is_floating}
            for tensor in float_inputs.values():
                tape.watch(tensor)
            packed = self.signature.pack_inputs(inputs)
            with self.capture.recording(tape) as recording:
                y_pred = self.model(packed, training=self.training)
            y_true = None if targets is None else self.signature.pack_outputs(targets)
            graph = tf.compat.v1.get_default_graph()
            ops_before = len(graph.get_operations())
            loss = total_loss(self.loss, self.model, packed, y_true, y_pred, weight, self.training)
            loss_ops = set(graph.get_operations()[ops_before:])
            rows = leading_rows(inputs)
            loss = loss_share(loss, rows, self.sharing)
            reg, meta.regularization_terms = regularization(self.model)
            probes, alt_loss = self._probability_path(tape, y_true, y_pred, weight, loss_ops)
            if alt_loss is not None:
                alt_loss = loss_share(alt_loss, rows, self.sharing)
        meta.outputs = recording.outputs
        meta.first_call = recording.first_call_order()
        differentiable = [c for c in recording.outputs if c.differentiable]
        sources = {
            "variables": self.variables,
            "inputs": float_inputs,
            "activations": [c.tensor for c in differentiable],
            "probes": [probe for _, probe in probes],
        }
        targets_ = [loss] if alt_loss is None else [loss, alt_loss]
        grads = tape.gradient(targets_, sources, unconnected_gradients=tf.UnconnectedGradients.NONE)
        grads["variables"] = _summed_over_replicas(grads["variables"])
        activation_grads = self._merge_probe_grads(differentiable, grads, probes, y_pred)
        self.meta = meta
        return self._reduce(loss, reg, inputs, grads, activation_grads, recording.outputs, meta)

    def _probability_path(
        self, tape: Any, y_true: Any, y_pred: Any, weight: Any, loss_ops: set[Any]
    ) -> tuple[list[tuple[int, Any]], Any]:
        """Probes on outputs whose loss reads cached logits, and the detached data loss.

        An output gets a probe only when it has cached logits *and* no op of the loss
        consumes it (the loss read the logits instead).  When the loss does read the
        output itself (mse on a softmax, say), its gradient already arrives through the
        main loss, and a probe would count it twice.
        """
        tf = _tf.tensorflow()
        flat = tf.nest.flatten(y_pred)
        cached = [
            i
            for i, t in enumerate(flat)
            if t.dtype.is_floating
            and has_cached_logits(t)
            and not any(op in loss_ops for op in t.consumers())
        ]
        if not cached or y_true is None or not self.loss.needs_targets:
            return [], None
        probes: list[tuple[int, Any]] = []
        detached = []
        for index, tensor in enumerate(flat):
            held = tf.stop_gradient(tensor)
            if index in cached:
                probe = tf.zeros_like(tensor)
                tape.watch(probe)
                probes.append((index, probe))
                held = held + probe
            detached.append(held)
        alt = probability_path_loss(
            self.loss, self.model, y_true, tf.nest.pack_sequence_as(y_pred, detached), weight
        )
        if alt is None:
            return [], None
        return probes, alt

    def _merge_probe_grads(
        self,
        differentiable: list[CapturedOutput],
        grads: dict[str, Any],
        probes: list[tuple[int, Any]],
        y_pred: Any,
    ) -> list[Any]:
        """Add each probe's gradient to the captured outputs that are that model output
        (itself, or a tensor it is an identity of: see :func:`capture.identity_chain`)."""
        tf = _tf.tensorflow()
        activation_grads = [_dense(g) for g in grads["activations"]]
        flat = tf.nest.flatten(y_pred)
        for (index, _), probe_grad in zip(probes, grads["probes"], strict=True):
            if probe_grad is None:
                continue
            same_value = identity_chain(flat[index])
            for position, captured in enumerate(differentiable):
                if any(captured.tensor is tensor for tensor in same_value):
                    current = activation_grads[position]
                    activation_grads[position] = (
                        probe_grad if current is None else current + probe_grad
                    )
        return activation_grads

    def _reduce(
        self,
        loss: Any,
        reg: Any,
        inputs: dict[str, Any],
        grads: dict[str, Any],
        activation_grads: list[Any],
        outputs: list[CapturedOutput],
        meta: TraceMeta,
    ) -> dict[str, Any]:
        """Statistics vectors for every gradient and activation (plus raw tensors if kept).

        Dense tensors of each kind are reduced together by :func:`stats.batch_stats`;
        only sparse (``IndexedSlices``) variable gradients get ops of their own.
        """
        tf = _tf.tensorflow()
        reducer = across_replicas()
        variable_grads = grads["variables"]
        meta.variable_connected = [g is not None for g in variable_grads]
        meta.variable_sparse = [isinstance(g, tf.IndexedSlices) for g in variable_grads]
        meta.input_connected = {name: g is not None for name, g in grads["inputs"].items()}
        meta.activation_connected = [g is not None for g in activation_grads]
        input_names = list(grads["inputs"])
        input_table = _table(
            [_dense(grads["inputs"][n]) for n in input_names], dead_units=False, reducer=reducer
        )
        total = tf.cast(loss, tf.float64)
        result = {
            "loss": total if reducer is None else reducer.sum(total),
            "regularization": tf.cast(reg, tf.float64),
            **self._variable_stats(variable_grads),
            "inputs": input_table,
            "activation_grads": _table(activation_grads, dead_units=False, reducer=reducer),
            "activation_values": stats.batch_stats(
                [c.tensor for c in outputs if c.has_value_stats], dead_units=True, reducer=reducer
            ),
        }
        meta.input_order = input_names
        if self.for_aggregation:
            result["aggregation"] = {
                "variables": [_dense(g) for g in variable_grads],
                "touched_rows": [
                    tf.unique(g.indices)[0] if isinstance(g, tf.IndexedSlices) else None
                    for g in variable_grads
                ],
                "live_units": _live_units(
                    [c.tensor for c in outputs if c.has_value_stats], reducer
                ),
                "activation_grad_entries": _entry_counts(
                    [c.tensor for c in outputs if c.differentiable], reducer
                ),
                "activation_value_entries": _entry_counts(
                    [c.tensor for c in outputs if c.has_value_stats], reducer
                ),
            }
        if self.keep_tensors:
            result["tensors"] = {
                "variables": [_dense(g) for g in variable_grads],
                "inputs": {k: _dense(g) for k, g in grads["inputs"].items()},
                "activations": activation_grads,
            }
        return result

    def _variable_stats(self, variable_grads: list[Any]) -> dict[str, Any]:
        """Gradient stats and rows touched (sparse gradients) per variable."""
        tf = _tf.tensorflow()
        markers: list[Any] = []
        sparse_rows: list[Any] = []
        touched: list[Any] = []
        for gradient in variable_grads:
            if isinstance(gradient, tf.IndexedSlices):
                row, rows_touched = stats.indexed_slices_stats(gradient)
                markers.append(("row", len(sparse_rows)))
                sparse_rows.append(row)
                touched.append(tf.cast(rows_touched, tf.int32))
            else:
                markers.append(gradient)
        return {
            "variables": _table(markers, dead_units=False, extra_rows=sparse_rows),
            "rows_touched": tf.stack(touched)
            if touched
            else tf.zeros([0], tf.int32),  # sparse only
        }

    # -- back to numpy ---------------------------------------------------------------

    def _rows_touched(self, sparse_counts: np.ndarray) -> np.ndarray:
        """Rows touched per variable: the count for sparse gradients, -1 for dense ones."""
        counts = np.full(len(self.variables), -1, dtype=np.int64)
        counts[np.asarray(self.meta.variable_sparse, dtype=bool)] = sparse_counts
        return counts

    def _to_numpy(self, fetched: dict[str, Any]) -> EngineResult:
        tf = _tf.tensorflow()
        numpy = tf.nest.map_structure(lambda t: None if t is None else t.numpy(), fetched)
        return EngineResult(
            loss=float(numpy["loss"]),
            regularization=float(numpy["regularization"]),
            variable_stats=numpy["variables"],
            weight_l2=weight_norms(self.variables),
            rows_touched=self._rows_touched(numpy["rows_touched"]),
            input_stats=dict(zip(self.meta.input_order, numpy["inputs"], strict=True)),
            activation_grad_stats=numpy["activation_grads"],
            activation_value_stats=numpy["activation_values"],
            tensors=numpy.get("tensors"),
            meta=self.meta,
            aggregation=numpy.get("aggregation"),
        )
