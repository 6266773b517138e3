"""Per-example gradient norms (``--per-sample``), vectorized over the examples.

**Definition.**  Example ``i``'s gradient is the gradient of the same loss
(:func:`gradscope.losses.total_loss`) evaluated on the batch made of example ``i``
alone: its own inputs, its own targets and its own sample weight, i.e. what the model
would get from a batch of size 1.  Consequences:

* *Regularization is included*, because ``total_loss`` on a batch of one includes it
  (``compute_loss`` adds ``model.losses``; ``--loss`` adds them too).  A weight
  regularizer therefore adds the same vector to every example's gradient, and the mean
  of the per-example gradients stays equal to the batch gradient for a mean-reduced
  loss.  (An activity regularizer sums over the batch, so it is the one term for which
  that identity does not hold.)
* *Sample weights*: example ``i``'s loss is weighted by its own weight (Keras's default
  ``sum_over_batch_size`` reduction divides by the batch size, 1, not by the sum of the
  weights), so an example of weight 0 has a zero gradient, and for a mean-reduced loss
  ``mean_i g_i`` equals the weighted batch gradient.  For the sum of outputs (no loss)
  the batch gradient is the *sum* of the per-example gradients.
* *Training mode* (``training=True``) is refused for a model with a trainable
  ``BatchNormalization`` layer (:class:`~gradscope.errors.UsageError`): in training mode
  BatchNorm normalizes with the statistics of the batch, so the examples of a batch are
  coupled and the batch gradient has no per-example decomposition at all; on a batch of
  one, every feature is normalized against itself (``x - mean(x) = 0``), the layer
  outputs its offset and every gradient upstream of it is exactly zero, which would
  look like a finding when it is an artefact.  Frozen BatchNorm layers
  (``trainable=False``) use their moving statistics in Keras 3 and are fine.  Random
  layers (Dropout) in training mode draw their mask once per chunk: the examples of a
  chunk share one mask (each per-example gradient is still a valid draw, but the draws
  are correlated within a chunk).  Non-trainable state (RNG seeds) advances once per
  chunk; the caller restores it if it must not move.
* A variable the loss does not depend on has a zero gradient, so a zero norm.

**Vectorization.**  One compiled ``tf.function`` maps the one-example gradient over a
chunk of examples with ``tf.vectorized_map`` (``pfor``): TensorFlow rewrites the
one-example graph into one graph over the whole chunk, with no loop over examples.
Inside that graph each gradient is reduced to its float64 squared L2 norm, so only a
``[chunk, variables]`` matrix leaves the graph, never the gradients.  The function is
traced once with the batch dimension unknown, so every chunk (the short last one too)
reuses the same trace.  Ops that ``pfor`` has no vectorized rule for are converted to a
``tf.while_loop`` over the chunk one op at a time (``fallback_to_while_loop=True``);
TensorFlow 2.21 does this for the filter gradient of a convolution with per-example
inputs (``Conv2DBackpropFilter``), and :attr:`PerSampleNorms.method` names such ops.
If ``pfor`` cannot convert the graph at all, the chunk is mapped with ``tf.map_fn``
instead (a ``tf.while_loop`` over the examples, run in parallel iterations); the method
then says ``"map_fn"``.  Keras's recurrent layers (their ``tf.while_loop``) do
vectorize, but converting the loop and its gradient takes seconds to trace.

**Sparse gradients.**  An ``Embedding`` (any gather) gives an ``IndexedSlices``
gradient whose indices may repeat within one example.  Its norm is the norm of the dense
gradient: slices with the same index are summed first (sort the indices, number the
distinct ones, ``unsorted_segment_sum``), never ``sqrt(sum of squared slices)``.  This
costs memory in the number of looked-up ids, not in the vocabulary size.

**Memory.** The examples are processed in chunks of ``c`` examples such that ``shared +
c * per_example <= max_memory`` (default: every command's budget, half the available
memory). Both terms are read off the traced one-example graph (forward pass, backward
pass and norms): ``per_example`` sums every tensor that depends on the example (the
activations, the work space of the backward pass and the gradients as the graph holds
them: dense gradients at full size, ``IndexedSlices`` at the size of their slices),
``shared`` every tensor that does not (weight reads, say), which the vectorized graph
holds once. Both count every tensor as if all were alive at once, so they are upper
bounds. When not even one example fits, a :class:`~gradscope.errors.ResourceError` is
raised."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _tf
from .._keras_private import flatten_layers
from ..commands.inspect.report import NormSpread, PerSampleReport, PerSampleRow
from ..errors import ResourceError, UsageError, received
from ..loading.data import Batch
from ..loading.signature import ModelSignature
from ..losses import LossSpec, check_loss_runs, total_loss
from .graph_memory import format_bytes, items_within, split_graph_bytes
from .pfor_matmul import REWRITTEN_NOTE, attach_converters, risky_matmuls
from .step_memory import default_max_memory

TOTAL_PATH = "*"
"""The ``path`` of the summary row of the global norm over all variables."""

MAP_FN_PARALLEL_ITERATIONS = 16
"""Iterations the ``tf.map_fn`` fallback runs at once."""

Example = dict[str, Any]
"""One chunk (or one example) as the traced functions take it: ``inputs``, and
``targets`` and ``weight`` when the loss uses them."""


# -- the result --------------------------------------------------------------------------


@dataclass(frozen=True)
class PerSampleNorms:
    """Per-example gradient norms, as float64 numpy.

    ``norms[i, j]`` is the L2 norm of example ``i``'s gradient with respect to variable
    ``variables[j]`` (a variable path); ``total[i]`` is the L2 norm over all of them.
    ``chunk_size`` is how many examples each compiled call took; ``method`` how the map
    over examples ran: ``"vectorized"``, ``"vectorized (while_loop for OpA, OpB)"`` when
    some ops had no vectorized rule, or ``"map_fn"``.
    """

    variables: tuple[str, ...]
    norms: np.ndarray
    total: np.ndarray
    chunk_size: int = 0
    method: str = "vectorized"

    @property
    def examples(self) -> int:
        return int(self.total.shape[0])

    def summary(self, top: int = 5) -> PerSampleReport:
        """Min, median and max of each variable's norms and of the total, and the
        ``top`` examples with the largest norms (see :func:`summarize_norms`)."""
        rows = tuple(
            summarize_norms(path, self.norms[:, j], top) for j, path in enumerate(self.variables)
        )
        total = summarize_norms(TOTAL_PATH, self.total, top)
        return PerSampleReport(self.examples, total, rows, self.method)


def top_indices(values: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` largest values, largest first, ties by smaller index.

    NaN ranks above everything (a non-finite gradient is the first thing to look at),
    then +inf, then the finite values.
    """
    values = np.asarray(values, dtype=np.float64)
    nan = np.isnan(values)
    filled = np.where(nan, np.inf, values)
    order = np.lexsort((np.arange(values.size), -filled, ~nan))
    return order[: max(0, top)]


def summarize_norms(path: str, values: np.ndarray, top: int = 5) -> PerSampleRow:
    """One summary row: the spread of ``values`` and its ``top`` largest entries.

    Min, median and max are taken over the finite values (NaN when none is finite); the
    non-finite ones show up first in the top list instead.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size:
        spread = NormSpread(float(finite.min()), float(np.median(finite)), float(finite.max()))
    else:
        spread = NormSpread(float("nan"), float("nan"), float("nan"))
    order = top_indices(values, top)
    return PerSampleRow(
        path=path,
        norms=spread,
        top=tuple(int(i) for i in order),
        top_norms=tuple(float(values[i]) for i in order),
    )


# -- memory --------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of one example's gradient step and the chunk size that fits the budget.

    ``per_example`` is held once per example of a chunk, ``shared`` once per chunk;
    ``gradient_bytes`` (part of ``per_example``) is what the gradients alone take.
    """

    per_example: int
    shared: int
    gradient_bytes: int
    chunk_size: int


def _variable_bytes(variable: Any) -> int:
    """Bytes of a dense gradient of ``variable`` (its size times its dtype's)."""
    size = int(np.prod(tuple(variable.shape), dtype=np.int64))
    return size * int(_tf.tensorflow().as_dtype(variable.dtype).size)


# -- pfor fallbacks ------------------------------------------------------------------

_FALLBACK_PATTERNS = (
    re.compile(r"Using a while_loop for converting (\w+)"),
    re.compile(r"(\w+) uses a while_loop"),
)


class _FallbackRecorder(logging.Handler):
    """Collects the op types pfor converted with a while loop (from its log lines)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.ops: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for pattern in _FALLBACK_PATTERNS:
            match = pattern.search(message)
            if match and match.group(1) not in self.ops:
                self.ops.append(match.group(1))


@contextlib.contextmanager
def _recording_fallbacks() -> Iterator[_FallbackRecorder]:
    """Route TensorFlow's Python log to a recorder while tracing, and nowhere else.

    pfor reports each op it falls back on as a warning, and logs pages of errors before
    giving up on a graph; the user sees neither, the method string says what happened.
    """
    logger = _tf.tensorflow().get_logger()
    saved = (logger.level, list(logger.handlers), logger.propagate)
    recorder = _FallbackRecorder()
    logger.handlers = [recorder]
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    try:
        yield recorder
    finally:
        logger.setLevel(saved[0])
        logger.handlers = saved[1]
        logger.propagate = saved[2]


# -- the engine ------------------------------------------------------------------------


def check_training_mode(model: Any, training: bool, what: str = "--per-sample") -> None:
    """Refuse training mode for models with a trainable BatchNormalization layer (see
    the module docstring for why); ``what`` names the option that needs per-example
    gradients."""
    if not training:
        return
    keras = _tf.keras()
    layers = flatten_layers(model)
    found = [
        layer.name
        for layer in layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if found:
        raise UsageError(
            f"{what} with --training: BatchNormalization normalizes with the "
            "statistics of the batch in training mode, so per-example gradients are not "
            "defined (a batch of one would zero every gradient before the layer); expected "
            "inference mode or frozen BatchNormalization layers (trainable=False). "
            f"{received(', '.join(found))}"
        )


def dense_squared_norm(gradient: Any) -> Any:
    """Float64 squared L2 norm of one example's gradient (dense or ``IndexedSlices``).

    Slices of an ``IndexedSlices`` gradient that share an index are summed first, as
    the dense gradient would hold them: the indices are sorted, each distinct index gets
    a segment number (a running count of index changes), and ``unsorted_segment_sum``
    adds the slices of each segment.  Every op here has a vectorized (``pfor``) rule,
    unlike ``tf.unique``.
    """
    tf = _tf.tensorflow()
    if gradient is None:
        return tf.zeros([], tf.float64)
    if not isinstance(gradient, tf.IndexedSlices):
        return tf.reduce_sum(tf.square(tf.cast(gradient, tf.float64)))
    indices = tf.reshape(gradient.indices, [-1])
    count = tf.shape(indices)[0]
    values = tf.reshape(gradient.values, tf.concat([[count], [-1]], axis=0))
    order = tf.argsort(indices, stable=True)
    ordered = tf.gather(indices, order)
    changes = tf.cast(tf.not_equal(ordered[1:], ordered[:-1]), tf.int32)
    segments = tf.cumsum(tf.concat([tf.zeros([1], tf.int32), changes], axis=0))
    summed = tf.math.unsorted_segment_sum(tf.gather(values, order), segments, count)
    return tf.reduce_sum(tf.square(tf.cast(summed, tf.float64)))


class PerSampleEngine:
    """Compiles the vectorized per-example step for one model, loss, variables and mode.

    :meth:`run` plans the chunks (:meth:`plan`), traces the step once (the batch
    dimension unknown) and calls it on every chunk.  ``example_traces`` counts how often
    the one-example function was traced (by the memory estimate and by the vectorized
    step, once each), which a Python loop over the examples would do once per example.
    """

    def __init__(
        self,
        model: Any,
        signature: ModelSignature,
        loss: LossSpec,
        variables: Sequence[Any] | None = None,
        *,
        training: bool = False,
        vectorize: bool = True,
        purpose: str = "--per-sample",
    ) -> None:
        """``vectorize=False`` maps with ``tf.map_fn`` from the start (the fallback);
        ``purpose`` names the option the gradients are for, in errors."""
        check_training_mode(model, training, purpose)
        self.model = model
        self.signature = signature
        self.loss = loss
        self.training = training
        self.variables = list(model.trainable_variables if variables is None else variables)
        self.vectorize = vectorize
        self.method = "vectorized" if vectorize else "map_fn"
        self.example_traces = 0
        self.rewritten: list[str] = []
        self.compiled: Any = None
        self._concrete: Any = None
        self._traced_key = ""
        self._estimates: dict[str, tuple[int, int]] = {}

    # -- the traced functions ----------------------------------------------------------

    def example_gradients(self, example: Example) -> list[Any]:
        """One example's gradients (no batch axis in ``example``): the gradient of
        ``total_loss`` on the batch made of that example alone.  ``IndexedSlices`` stay
        sparse; a variable the loss does not reach gets ``None``.  Traced, not run, by
        the step (and by tests that check the definition itself)."""
        tf = _tf.tensorflow()
        one = tf.nest.map_structure(lambda t: tf.expand_dims(t, 0), example)
        with tf.GradientTape() as tape:
            packed = self.signature.pack_inputs(one["inputs"])
            y_pred = self.model(packed, training=self.training)
            targets = one.get("targets")
            y_true = None if targets is None else self.signature.pack_outputs(targets)
            loss = total_loss(
                self.loss, self.model, packed, y_true, y_pred, one.get("weight"), self.training
            )
        return list(tape.gradient(loss, self.variables))

    def _converted_gradients(self, example: Example) -> list[Any]:
        """:meth:`example_gradients`, its batched matmuls given the converters that keep
        ``pfor`` off oneDNN's broken kernels (:mod:`.pfor_matmul`)."""
        tf = _tf.tensorflow()
        self.example_traces += 1
        graph = tf.compat.v1.get_default_graph()
        first = len(graph.get_operations())
        gradients = self.example_gradients(example)
        for op_type in attach_converters(graph.get_operations()[first:]):
            if op_type not in self.rewritten:
                self.rewritten.append(op_type)
        return gradients

    def flat_gradients(self, examples: Example, dtype: Any) -> Any:
        """``[examples, n]``: every example's gradient of all the variables, flattened
        and concatenated in order (``n`` their total size) in ``dtype``, vectorized over
        the examples like the norms.  For curvature built from per-example gradients (the
        empirical Fisher); the caller bounds the memory.  Vectorized or mapped with
        ``tf.map_fn`` as :meth:`choose_method` decided."""
        tf = _tf.tensorflow()

        def one(example: Example) -> Any:
            gradients = self._converted_gradients(example)
            pieces = [
                tf.zeros([int(np.prod(v.shape))], dtype)
                if g is None
                else tf.reshape(tf.cast(tf.convert_to_tensor(g), dtype), [-1])
                for g, v in zip(gradients, self.variables, strict=True)
            ]
            return tf.concat(pieces, axis=0)

        if self.vectorize:
            return tf.vectorized_map(one, examples, fallback_to_while_loop=True)
        size = sum(int(np.prod(v.shape)) for v in self.variables)
        return tf.map_fn(
            one,
            examples,
            fn_output_signature=tf.TensorSpec([size], dtype),
            parallel_iterations=MAP_FN_PARALLEL_ITERATIONS,
        )

    def _example_squares(self, example: Example) -> Any:
        """``[variables]`` float64 squared gradient norms of one example."""
        tf = _tf.tensorflow()
        gradients = self._converted_gradients(example)
        if not gradients:
            return tf.zeros([0], tf.float64)
        return tf.stack([dense_squared_norm(g) for g in gradients])

    def _chunk_norms(self, chunk: Example) -> tuple[Any, Any]:
        """``([chunk, variables], [chunk])`` float64 norms of a chunk of examples."""
        tf = _tf.tensorflow()
        if self.vectorize:
            squares = tf.vectorized_map(self._example_squares, chunk, fallback_to_while_loop=True)
        else:
            squares = tf.map_fn(
                self._example_squares,
                chunk,
                fn_output_signature=tf.TensorSpec([len(self.variables)], tf.float64),
                parallel_iterations=MAP_FN_PARALLEL_ITERATIONS,
            )
        return tf.sqrt(squares), tf.sqrt(tf.reduce_sum(squares, axis=1))

    # -- specs, planning and tracing ---------------------------------------------------

    def _arrays(self, batch: Batch) -> Example:
        """The batch's arrays in the traced functions' structure (unused parts left out)."""
        arrays: Example = {"inputs": dict(batch.inputs)}
        if batch.targets is not None and self.loss.needs_targets:
            arrays["targets"] = dict(batch.targets)
        if batch.sample_weight is not None and self.loss.needs_targets:
            arrays["weight"] = np.asarray(batch.sample_weight)
        return arrays

    @staticmethod
    def _specs(arrays: Example, leading: list[int | None]) -> Any:
        """``TensorSpec`` for every array, its batch axis replaced by ``leading``."""
        tf = _tf.tensorflow()
        return tf.nest.map_structure(
            lambda a: tf.TensorSpec([*leading, *a.shape[1:]], tf.as_dtype(a.dtype)), arrays
        )

    def _prepare(self, arrays: Example) -> None:
        """Build Keras's compiled loss eagerly on one example, outside any trace."""
        tf = _tf.tensorflow()
        if "targets" not in arrays:
            return
        inputs = {name: a[:1] for name, a in arrays["inputs"].items()}
        y_pred = self.model(self.signature.pack_inputs(inputs), training=False)
        y_true = self.signature.pack_outputs(
            {name: tf.convert_to_tensor(a[:1]) for name, a in arrays["targets"].items()}
        )
        check_loss_runs(self.loss, self.model, y_true, y_pred)

    def plan(self, batch: Batch, max_memory: int | None = None) -> MemoryPlan:
        """Size the chunks from the traced (not run) one-example step; see the module
        docstring for the rule.  Raises :class:`ResourceError` if one example does not
        fit ``max_memory`` (``None``: every command's default budget)."""
        if max_memory is None:
            max_memory = default_max_memory()
        shared, per_example = self._estimate(self._arrays(batch))
        gradient_bytes = sum(_variable_bytes(v) for v in self.variables)
        chunk = items_within(max_memory, shared, per_example, batch.size)
        if chunk == 0:
            raise ResourceError(
                "--per-sample: one example's gradient step needs about "
                f"{format_bytes(shared + per_example)} (gradients and work space), more than "
                f"--max-memory {format_bytes(max_memory)}. {received(f'{batch.size} examples')}"
            )
        return MemoryPlan(per_example, shared, gradient_bytes, chunk)

    def _estimate(self, arrays: Example) -> tuple[int, int]:
        """``(shared, per_example)`` bytes of the one-example step, traced once per
        example shape."""
        tf = _tf.tensorflow()
        specs = self._specs(arrays, [])
        key = repr(specs)
        if key not in self._estimates:
            self._prepare(arrays)
            function = tf.function(self._example_squares, autograph=False)
            with _recording_fallbacks():
                graph = function.get_concrete_function(specs).graph
            placeholders = graph.inputs[: len(tf.nest.flatten(arrays))]
            self._estimates[key] = split_graph_bytes(graph, placeholders)
        return self._estimates[key]

    def _trace(self, arrays: Example) -> None:
        """Trace the chunk step once, batch axis unknown; ``map_fn`` if pfor fails or
        leaves a batched matmul that oneDNN mis-computes (see :mod:`.pfor_matmul`)."""
        specs = self._specs(arrays, [None])
        self.rewritten = []
        try:
            with _recording_fallbacks() as recorder:
                self._compile(specs)
        except (ValueError, TypeError, LookupError, NotImplementedError):
            if not self.vectorize:
                raise
            self._map_fn(specs, "map_fn")
            return
        if not self.vectorize:
            return
        risky = risky_matmuls(self._concrete.graph)
        if risky:
            self._map_fn(
                specs,
                f"map_fn (pfor left {len(risky)} broadcast or rank > 3 batched matmul(s), "
                f"which oneDNN can mis-compute; first: {risky[0]})",
            )
            return
        notes = []
        if recorder.ops:
            notes.append(f"while_loop for {', '.join(recorder.ops)}")
        if self.rewritten:
            notes.append(f"{REWRITTEN_NOTE} for {', '.join(self.rewritten)}")
        self.method = "vectorized" + (f" ({'; '.join(notes)})" if notes else "")

    def _compile(self, specs: Any) -> None:
        """Trace :meth:`_chunk_norms` for ``specs`` (vectorized or mapped, as set)."""
        tf = _tf.tensorflow()
        self.compiled = tf.function(self._chunk_norms, input_signature=[specs], autograph=False)
        self._concrete = self.compiled.get_concrete_function()

    def _map_fn(self, specs: Any, method: str) -> None:
        """Switch to the ``tf.map_fn`` fallback and trace it; ``method`` says why."""
        self.vectorize = False
        self._compile(specs)
        self.method = method

    def choose_method(self, batch: Batch) -> str:
        """Trace the vectorized step for ``batch``'s structure (once) and decide, as
        :meth:`run` does, whether to vectorize or to map with ``tf.map_fn``
        (:attr:`vectorize`); returns :attr:`method`, which says why."""
        arrays = self._arrays(batch)
        key = repr(self._specs(arrays, [None]))
        if self._concrete is None or key != self._traced_key:
            self._trace(arrays)
            self._traced_key = key
        return self.method

    def run(self, batch: Batch, max_memory: int | None = None) -> PerSampleNorms:
        """Per-example norms of every example of ``batch``, chunk by chunk."""
        paths = tuple(str(v.path) for v in self.variables)
        plan = self.plan(batch, max_memory)
        arrays = self._arrays(batch)
        self.choose_method(batch)
        norms = np.empty((batch.size, len(self.variables)), dtype=np.float64)
        total = np.empty(batch.size, dtype=np.float64)
        for start in range(0, batch.size, plan.chunk_size):
            stop = min(start + plan.chunk_size, batch.size)
            chunk_norms, chunk_total = self._concrete(_rows(arrays, start, stop))
            norms[start:stop] = chunk_norms.numpy()
            total[start:stop] = chunk_total.numpy()
        return PerSampleNorms(paths, norms, total, plan.chunk_size, self.method)


def _rows(arrays: Example, start: int, stop: int) -> Example:
    """Rows ``start:stop`` of every array, as tensors."""
    tf = _tf.tensorflow()
    return tf.nest.map_structure(lambda a: tf.convert_to_tensor(a[start:stop]), arrays)  # type: ignore[no-any-return]


def per_sample_norms(
    model: Any,
    signature: ModelSignature,
    loss: LossSpec,
    batch: Batch,
    variables: Sequence[Any] | None = None,
    *,
    training: bool = False,
    max_memory: int | None = None,
) -> PerSampleNorms:
    """The L2 norm of every example's gradient for each of ``variables`` (default: the
    model's trainable variables), and over all of them.

    Example ``i``'s gradient is the gradient of the loss ``total_loss`` computes,
    evaluated on the batch made of example ``i`` alone, with its own targets and sample
    weight: what the model would get with a batch of size 1, regularization included.
    For a mean-reduced loss, the mean over examples of these gradients is the batch
    gradient.  ``training=True`` is refused for models with a trainable
    BatchNormalization layer.  All examples are mapped by one compiled, vectorized
    (``pfor``) function, in chunks that fit ``max_memory``; the module docstring has
    the details, the memory rule and the fallbacks.
    """
    engine = PerSampleEngine(model, signature, loss, variables, training=training)
    return engine.run(batch, max_memory)
