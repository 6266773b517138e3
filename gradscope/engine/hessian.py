"""Second derivatives of the loss: exact Hessian blocks and Hessian-vector products.

* :meth:`HessianOperator.hvp` multiplies the Hessian by a vector without ever forming
  it, compiled once per block.  Two ways are built: back-over-back (the gradient of
  ``<grad, v>``, the default) and forward-over-back (a ``tf.autodiff.ForwardAccumulator``
  around a ``tf.GradientTape``).  Both cost a small multiple of one gradient whatever
  the size of the block.  On TensorFlow 2.21 (CPU) they run equally fast, but
  forward-over-back takes about three times longer to trace, because TensorFlow builds
  most forward-mode rules from double-backward graphs: ``bench/README.md`` has the
  figures.
* :meth:`HessianOperator.exact` builds the full ``n x n`` Hessian a pass of rows at a
  time: each pass is one compiled, vectorized (``pfor``) set of Hessian-vector
  products with unit vectors, so the work space is bounded by the rows per pass,
  which :meth:`HessianOperator.work_estimate` lets the caller fit in a memory budget.

Vectors are flat float64 numpy arrays over the block's variables in order, so the
matrix-free algorithms of :mod:`gradscope.engine.spectral` can use them directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .. import _tf
from ..errors import UsageError
from ..loading.data import Batch, Batches, as_batches
from ..loading.signature import ModelSignature
from ..losses import LossSpec, total_loss
from .gauss_newton import Family, Matrix, fisher_families, needs_loss, split_points
from .gradients import batch_tensors
from .graph_memory import items_within, split_graph_bytes
from .per_sample import PerSampleEngine
from .replicas import Replicas, leading_rows, loss_share

EXACT_BYTES_PER_ENTRY = 20
"""Bytes per Hessian entry an exact block needs: the float32 rows (4), their float64
copy (8) and LAPACK's work space for ``eigvalsh`` (8)."""

MAX_ROWS_PER_PASS = 256
"""More rows per vectorized pass stop paying off: the pass is then compute-bound."""

HvpMode = Literal["reverse", "forward"]


ProductFn = Callable[[Any, Any, tuple[Any, Any, Any]], Any]
"""A compiled product's Python function: ``(vector, key, batch) -> (A @ vector, loss)``."""


@dataclass(frozen=True)
class _ForwardPass:
    """What one forward pass made: the packed inputs and targets, the outputs, the
    sample weights, the rows, and this replica's share of the loss."""

    inputs: Any
    y_true: Any
    y_pred: Any
    weight: Any
    rows: Any
    loss: Any

    def with_loss(self, loss: Any) -> _ForwardPass:
        return dataclasses.replace(self, loss=loss)


@dataclass(frozen=True)
class _GaussNewtonPieces:
    """The vector-independent part of a Gauss-Newton product (see
    :meth:`HessianOperator._gauss_newton_pieces`) and the map ``v -> A v``."""

    operator: HessianOperator
    inner: Any
    outer: Any
    tensors: list[Any]
    slopes: list[Any] | None
    draws: list[tuple[list[Any], list[Any]]] | None
    loss: Any

    def apply(self, vector: Any) -> Any:
        """``A @ vector`` (flat), the Jacobian-vector product by two reverse passes."""
        tangents = self.operator._split(vector)
        sources = self.operator._sources()
        directional = _reverse_jvp(self.inner, self.tensors, sources, tangents)
        return self.apply_to_directional(directional)

    def apply_to_directional(self, directional: Sequence[Any]) -> Any:
        """``J^T M (J v)`` (flat) from ``J v`` at the tensors the loss reads."""
        tf = _tf.tensorflow()
        zero = tf.UnconnectedGradients.ZERO
        if self.draws is not None:
            cotangents = _fisher_cotangents(self.draws, directional)
        else:
            cotangents = self.outer.gradient(
                self.slopes,
                self.tensors,
                output_gradients=[tf.stop_gradient(d) for d in directional],
                unconnected_gradients=zero,
            )
        products = self.inner.gradient(
            self.tensors,
            self.operator._sources(),
            output_gradients=cotangents,
            unconnected_gradients=zero,
        )
        return self.operator._flat(products)


def _fisher_cotangents(
    draws: Sequence[tuple[list[Any], list[Any]]], directional: Sequence[Any]
) -> list[Any]:
    """``M (J v)`` for the Monte Carlo Fisher: the mean over the draws of
    ``(s_u . (J v)_u) dL(y_drawn)/dz_u`` (see :mod:`.gauss_newton`)."""
    tf = _tf.tensorflow()
    total = [tf.zeros_like(d) for d in directional]
    for scores, slopes in draws:
        for slot, (score, slope) in enumerate(zip(scores, slopes, strict=True)):
            weight = tf.reduce_sum(score * directional[slot], axis=-1, keepdims=True)
            total[slot] = total[slot] + weight * slope
    return [t / float(len(draws)) for t in total]


def _reverse_jvp(tape: Any, tensors: Sequence[Any], sources: Sequence[Any], tangents: Any) -> Any:
    """``J @ tangents`` at ``tensors`` by two reverse passes: ``J^T u`` is linear in a
    dummy cotangent ``u``, and the gradient of ``<J^T u, tangents>`` with respect to
    ``u`` is ``J @ tangents``.  Works wherever reverse mode does (Keras's RNN loop)."""
    tf = _tf.tensorflow()
    with tf.GradientTape() as dual:
        dummies = [tf.zeros_like(tensor) for tensor in tensors]
        dual.watch(dummies)
        pulled = tape.gradient(
            tensors,
            list(sources),
            output_gradients=dummies,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        projection = tf.add_n(
            [tf.reduce_sum(g * tf.cast(t, g.dtype)) for g, t in zip(pulled, tangents, strict=True)]
        )
    return dual.gradient(projection, dummies, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _replica_seed(key: Any) -> Any:
    """``key`` with the replica's index folded in, so that replicas draw different
    targets for their different rows (replica 0 of no strategy too, consistently)."""
    tf = _tf.tensorflow()
    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    return tf.random.experimental.stateless_fold_in(key, tf.cast(replica, tf.int32))


class TangentLost(LookupError):
    """Forward mode lost the tangent of a connected variable (a loaded SavedModel
    function, say): the product would silently read as zero."""


def _weighted(value: np.ndarray, weight: float) -> np.ndarray:
    """``weight * value`` in float64; one conversion and no product when the weight is
    1 (a single batch): on a 24 M-parameter model each pass over the vector costs tens
    of milliseconds of every Hessian-vector product."""
    wide = np.asarray(value, dtype=np.float64)
    if weight != 1.0:
        return weight * wide
    return wide if wide.flags.writeable else wide.copy()


def _root_cause(exc: BaseException) -> BaseException:
    """The first exception of the chain: Keras and ``tf.function`` re-raise TensorFlow's
    failure as a new exception of the same type, whose cause (or context) is the
    original."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _raised_in_tensorflow(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` is TensorFlow's own code."""
    tf_root = os.path.dirname(_tf.tensorflow().__file__ or "")
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(tf_root + os.sep)


def not_supported_reason(exc: BaseException) -> str | None:
    """Why TensorFlow cannot build this graph here (forward mode, ``pfor``), or ``None``
    when ``exc`` is anything else, a bug to let through.

    What TensorFlow raises when a model has no forward-mode or vectorized form: a
    :class:`LookupError` for an op without a gradient (or forward-mode rule), and a
    :class:`ValueError` from its graph builders, e.g. ``Tried to take gradients (or
    similar) of a variable without handle data`` (forward mode through Keras's RNN loop)
    and ``Required handle data not set`` (``pfor`` through the same loop's gradient).
    Only failures first raised inside TensorFlow itself count (the root of the
    exception chain, whatever its type: a graph builder's ``ValueError`` may wrap the C
    API's ``InvalidArgumentError``); an error first raised by gradscope or Keras code, or
    of any other type, is not "not supported".
    """
    root = _root_cause(exc)
    if isinstance(exc, TangentLost) or isinstance(root, TangentLost):
        return "forward mode lost the tangent of a connected variable"
    if not isinstance(exc, LookupError | ValueError) or not _raised_in_tensorflow(root):
        return None
    return f"{type(root).__name__}: {_first_line(root)}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    """The first informative line of a TensorFlow message, at most 200 characters."""
    lines = (_ANSI.sub("", line).strip() for line in str(exc).splitlines())
    useful = [line for line in lines if line and not line.startswith("in user code")]
    text = useful[0] if useful else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def _quiet_tensorflow_logger() -> Iterator[None]:
    """Silence TensorFlow's Python logger (pfor logs pages of ERROR lines before failing)."""
    logger = _tf.tensorflow().get_logger()
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def exact_block_bytes(size: int) -> int:
    """Memory the ``size x size`` matrix of an exact block needs (see
    :data:`EXACT_BYTES_PER_ENTRY`), without the work space of computing it."""
    return EXACT_BYTES_PER_ENTRY * size * size


@dataclass(frozen=True)
class WorkEstimate:
    """Bytes of work space a pass of exact Hessian rows needs, read off the traced graph
    (:mod:`gradscope.engine.graph_memory`).

    ``shared`` is every tensor of one Hessian-vector product that does not depend on the
    vector (the forward pass and the first gradient): it is computed once per pass.
    ``per_row`` is every tensor that does: a vectorized pass of ``r`` rows holds ``r``
    copies.  Both are upper bounds.
    """

    shared: int
    per_row: int

    def pass_bytes(self, rows: int) -> int:
        """Work space of one pass of ``rows`` rows."""
        return self.shared + rows * self.per_row

    def rows_within(self, budget: int, size: int) -> int:
        """The most rows per pass (at most ``size``) whose work space fits ``budget``; 0
        when not even one fits."""
        return items_within(budget, self.shared, self.per_row, size, MAX_ROWS_PER_PASS)


class HessianOperator:
    """The loss on one batch as a function of a block of variables, differentiated twice.

    Every other variable is held at its current value.  The forward pass runs in
    inference mode unless ``training``.
    """

    def __init__(
        self,
        model: Any,
        signature: ModelSignature,
        loss: LossSpec,
        data: Batch | Batches,
        variables: Sequence[Any],
        *,
        training: bool = False,
        hvp_mode: HvpMode = "reverse",
        jit: bool = False,
        replicas: Replicas | None = None,
        matrix: Matrix = "hessian",
        mc_samples: int = 1,
        seed: int = 0,
    ) -> None:
        """``data`` is one batch, or several (the loss is then their row-weighted mean:
        every product runs over every batch, read one at a time).  ``replicas`` splits
        every batch across the replicas of a ``tf.distribute`` strategy: each computes
        the product of its share of the loss, and the shares are summed inside the
        graph (:mod:`.replicas`), so every worker gets the same product.

        ``matrix`` is the curvature matrix the products are taken with: the Hessian, the
        generalized Gauss-Newton matrix, the Monte Carlo Fisher (``mc_samples`` draws of
        the targets per example and product, the same draws for every product, seeded by
        ``seed`` and the batch's position) or the empirical Fisher (see
        :mod:`.gauss_newton`).  ``hvp_mode`` chooses how the Hessian-vector product, or
        the Jacobian-vector product of the Gauss-Newton matrices, is differentiated."""
        tf = _tf.tensorflow()
        needs_loss(matrix, loss)
        if matrix == "empirical-fisher" and replicas is not None:
            raise UsageError(
                "--matrix empirical-fisher: per-example gradients are not split across "
                "replicas; leave out --strategy (or use --matrix ggn or fisher). "
                f"Received: a strategy with {replicas.count} replicas"
            )
        self.matrix = matrix
        self.mc_samples = mc_samples
        self.seed = seed
        self._families: list[Family | None] | None = None
        self._examples: PerSampleEngine | None = None
        self.model = model
        self.signature = signature
        self.loss = loss
        self.training = training
        self.variables = list(variables)
        self.shapes = [tuple(int(d) for d in v.shape) for v in self.variables]
        self.sizes = [int(np.prod(shape, dtype=np.int64)) for shape in self.shapes]
        self.size = int(sum(self.sizes))
        self.data = as_batches(data)
        self.replicas = replicas
        self._sharing = None if replicas is None else replicas.sharing
        # In training mode every call would advance dropout's random state and move the
        # BatchNorm statistics: the operator would change between products.  The state
        # is put back before every call, so every product sees the same function.
        self._state = [(v, v.numpy()) for v in model.non_trainable_variables] if training else []
        self.jit = jit
        self._compile_products(jit, forward_mode=hvp_mode == "forward")
        self._rows_fn = tf.function(self._rows, autograph=False)
        self._loss_fn = tf.function(self._loss_pair, autograph=False)
        self._squares_fn = tf.function(self._mean_squares, autograph=False)
        self.hvp_calls = 0
        self.loss_of_last_call: float | None = None
        self.notes: list[str] = []
        """Every switch to another method, with its reason (for the report's notes)."""
        if matrix == "empirical-fisher":
            self._examples = self._example_engine()

    def _arguments(self, batch: Batch) -> tuple[Any, Any, Any]:
        """The batch as the tensors the compiled functions take: inputs, targets, weight."""
        return batch_tensors(batch, self.loss.needs_targets)

    def _over_batches(self, function: Any, *leading: Any) -> Any:
        """``sum_b w_b function(*leading, batch_b)`` with ``w_b = rows_b / rows``, as
        numpy float64.

        ``function`` (a ``tf.function``) returns its result and the loss it computed on
        the way; their weighted sum over the batches is kept in :attr:`loss`, so the
        report's loss value costs no pass of its own.  With replicas, each batch is
        split across them and ``function`` runs on every replica, its results summed.
        """
        tf = _tf.tensorflow()
        total: Any = None
        loss = 0.0
        for index, batch in enumerate(self.data.iterate()):
            self._reset_state()
            key = tf.constant([self.seed, index], tf.int64)
            value, batch_loss = self._on_batch(function, (*leading, key), batch)
            weight = batch.size / self.data.rows
            share = _weighted(value.numpy(), weight)
            total = share if total is None else total + share
            loss += weight * float(batch_loss.numpy())
        self.loss_of_last_call = loss
        return total

    def _on_batch(self, function: Any, leading: tuple[Any, ...], batch: Batch) -> Any:
        """``function(*leading, batch)`` on one device, or summed over the replicas."""
        if self.replicas is None:
            return function(*leading, self._arguments(batch))
        shares = self.replicas.distribute(batch, self.loss.needs_targets)
        return self.replicas.run_summed(function.python_function, (*leading, shares))

    def refresh_state(self) -> None:
        """Take the non-trainable state as it is now as the state every product starts
        from (in training mode; for an operator reused while the model trains)."""
        if self.training:
            self._state = [(v, v.numpy()) for v in self.model.non_trainable_variables]

    def _reset_state(self) -> None:
        for variable, value in self._state:
            variable.assign(value)

    # -- the loss ---------------------------------------------------------------------

    def _forward_pass(self, batch: tuple[Any, Any, Any]) -> _ForwardPass:
        """The model and this replica's share of the loss on ``batch``."""
        inputs, targets, weight = batch
        packed = self.signature.pack_inputs(inputs)
        y_pred = self.model(packed, training=self.training)
        y_true = None if targets is None else self.signature.pack_outputs(targets)
        run = _ForwardPass(packed, y_true, y_pred, weight, leading_rows(inputs), None)
        return run.with_loss(self._loss_of(run, y_true))

    def _loss_of(self, run: _ForwardPass, y_true: Any) -> Any:
        """This replica's share of the loss of ``run``'s outputs against ``y_true``."""
        loss = total_loss(
            self.loss, self.model, run.inputs, y_true, run.y_pred, run.weight, self.training
        )
        return loss_share(loss, run.rows, self._sharing)

    def _loss(self, batch: tuple[Any, Any, Any]) -> Any:
        return self._forward_pass(batch).loss

    def _sources(self) -> list[Any]:
        """The block's variables as TensorFlow variables.

        Keras variables report their dtype as a string, which TensorFlow cannot use to
        build the zero gradient of an unconnected source (a bias whose second
        derivative vanishes, under a sum-of-outputs loss); the underlying
        ``tf.Variable`` (``variable.value`` outside a layer call) can.
        """
        return [getattr(v, "value", v) for v in self.variables]

    @property
    def _dtype(self) -> Any:
        """float64 for a float64 block, float32 otherwise (float16 is widened)."""
        tf = _tf.tensorflow()
        wide = any(v.dtype == "float64" for v in self.variables)
        return tf.float64 if wide else tf.float32

    def _flat(self, tensors: Sequence[Any]) -> Any:
        tf = _tf.tensorflow()
        return tf.concat([tf.reshape(tf.cast(t, self._dtype), [-1]) for t in tensors], axis=0)

    def _split(self, flat: Any) -> list[Any]:
        tf = _tf.tensorflow()
        pieces = tf.split(flat, self.sizes)
        return [
            tf.cast(tf.reshape(piece, shape), v.dtype)
            for piece, shape, v in zip(pieces, self.shapes, self.variables, strict=True)
        ]

    # -- Hessian-vector products ------------------------------------------------------

    def _hvp_forward(self, vector: Any, key: Any, batch: tuple[Any, Any, Any]) -> Any:
        """``H @ vector`` by forward-over-back: the JVP of the gradient along ``vector``."""
        tf = _tf.tensorflow()
        primals = self._sources()
        with tf.autodiff.ForwardAccumulator(primals, self._split(vector)) as accumulator:
            with tf.GradientTape() as tape:
                loss = self._loss(batch)
            grads = tape.gradient(loss, primals)
        connected = [g for g in grads if g is not None]
        tangents = iter(accumulator.jvp(connected))
        products = [None if g is None else next(tangents) for g in grads]
        if any(g is not None and p is None for g, p in zip(grads, products, strict=True)):
            # Back-over-back does not lose it.
            raise TangentLost("forward mode lost the tangent of a connected variable")
        filled = [
            tf.zeros_like(v) if p is None else p for v, p in zip(primals, products, strict=True)
        ]
        return self._flat(filled), loss

    def _hvp_reverse(self, vector: Any, key: Any, batch: tuple[Any, Any, Any]) -> Any:
        """``H @ vector`` by back-over-back: the gradient of ``<grad, vector>``.

        The default; also the fallback of forward-over-back for models whose ops have no
        forward-mode rule inside control flow (Keras's RNN loop, for one).
        """
        tf = _tf.tensorflow()
        tangents = self._split(vector)
        sources = self._sources()
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = self._loss(batch)
            grads = inner.gradient(
                loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            projection = tf.add_n(
                [tf.reduce_sum(g * t) for g, t in zip(grads, tangents, strict=True)]
            )
        products = outer.gradient(
            projection, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return self._flat(products), loss

    def _compile_products(self, jit: bool, *, forward_mode: bool) -> None:
        """The compiled product functions (with XLA when ``jit``), forward-over-back
        or back-over-back as the one in use."""
        tf = _tf.tensorflow()
        reverse, forward = self._product_functions(self.matrix)
        xla = True if jit else None
        self._reverse_fn = tf.function(reverse, autograph=False, jit_compile=xla)
        self._forward_fn = tf.function(forward, autograph=False, jit_compile=xla)
        self._hvp_fn = self._forward_fn if forward_mode else self._reverse_fn

    def hvp(self, vector: np.ndarray) -> np.ndarray:
        """``H @ vector`` for a flat float64 ``vector`` over the block (float64 result).

        With ``hvp_mode="forward"``, a model that TensorFlow cannot differentiate in
        forward mode (:func:`not_supported_reason`) is differentiated back-over-back from
        then on, and :attr:`notes` says so.  With ``jit``, a product that XLA cannot
        compile (an op without an XLA kernel, say) is compiled without XLA from then on,
        also with a note.
        """
        tf = _tf.tensorflow()
        self.hvp_calls += 1
        tensor = tf.constant(vector, dtype=self._dtype)
        try:
            return self._product(tensor)
        except tf.errors.OpError as exc:
            if not self.jit:
                raise
            self.jit = False
            self._compile_products(False, forward_mode=self._hvp_fn is self._forward_fn)
            self.notes.append(
                f"XLA could not compile the products ({_first_line(exc)}); ran them without --jit"
            )
            return self._product(tensor)

    def _product(self, tensor: Any) -> np.ndarray:
        """The product over the batches, forward-over-back falling back to back-over-back."""
        try:
            return self._over_batches(self._hvp_fn, tensor)  # type: ignore[no-any-return]
        except (LookupError, ValueError) as exc:
            reason = not_supported_reason(exc)
            if self._hvp_fn is self._reverse_fn or reason is None:
                raise
            self._hvp_fn = self._reverse_fn
            self.notes.append(
                "forward-mode Hessian-vector products are not supported here "
                f"({reason}); used reverse mode (back-over-back) instead"
            )
            return self._over_batches(self._hvp_fn, tensor)  # type: ignore[no-any-return]

    # -- Gauss-Newton, Fisher and empirical Fisher products ----------------------------

    def _product_functions(self, matrix: Matrix) -> tuple[ProductFn, ProductFn]:
        """``(reverse, forward)`` products ``(vector, key, batch) -> (A @ vector, loss)``
        for ``matrix``: how its Hessian-, or Jacobian-vector products are differentiated."""
        if matrix == "ggn":
            return self._ggn_reverse, self._ggn_forward
        if matrix == "fisher":
            return self._fisher_reverse, self._fisher_forward
        if matrix == "empirical-fisher":
            return self._empirical_fisher, self._empirical_fisher
        return self._hvp_reverse, self._hvp_forward

    def _ggn_reverse(self, vector: Any, key: Any, batch: tuple[Any, Any, Any]) -> Any:
        return self._gauss_newton(vector, key, batch, forward_mode=False, fisher=False)

    def _ggn_forward(self, vector: Any, key: Any, batch: tuple[Any, Any, Any]) -> Any:
        return self._gauss_newton(vector, key, batch, forward_mode=True, fisher=False)

    def _fisher_reverse(self, vector: Any, key: Any, batch: tuple[Any, Any, Any]) -> Any:
        return self._gauss_newton(vector, key, batch, forward_mode=False, fisher=True)

    def _fisher_forward(self, vector: Any, key: Any, batch: tuple[Any, Any, Any]) -> Any:
        return self._gauss_newton(vector, key, batch, forward_mode=True, fisher=True)

    def _gauss_newton(
        self,
        vector: Any,
        key: Any,
        batch: tuple[Any, Any, Any],
        *,
        forward_mode: bool,
        fisher: bool,
    ) -> Any:
        """``J^T M J @ vector`` with ``M`` the loss Hessian at the outputs (GGN) or its
        Monte Carlo Fisher estimate: one Jacobian-vector product to the outputs (forward
        mode, or two reverse passes), the ``M`` product there, one vector-Jacobian
        product back (see :mod:`.gauss_newton`)."""
        tf = _tf.tensorflow()
        if not forward_mode:
            pieces = self._gauss_newton_pieces(key, batch, fisher=fisher)
            return pieces.apply(vector), pieces.loss
        accumulator = tf.autodiff.ForwardAccumulator(self._sources(), self._split(vector))
        pieces = self._gauss_newton_pieces(key, batch, fisher=fisher, accumulator=accumulator)
        directional = self._forward_jvp(accumulator, pieces.tensors)
        return pieces.apply_to_directional(directional), pieces.loss

    def _gauss_newton_pieces(
        self,
        key: Any,
        batch: tuple[Any, Any, Any],
        *,
        fisher: bool,
        accumulator: Any = None,
    ) -> _GaussNewtonPieces:
        """Everything of a Gauss-Newton product that does not depend on the vector: the
        forward pass (inside ``accumulator`` for forward mode), the tensors the loss
        reads, the loss's slopes there (GGN) or the Fisher's draws.  Exact rows
        vectorize only :meth:`_GaussNewtonPieces.apply` over unit vectors."""
        tf = _tf.tensorflow()
        with tf.GradientTape(persistent=True) as outer:
            with accumulator or contextlib.nullcontext(), tf.GradientTape(persistent=True) as inner:
                run = self._forward_pass(batch)
            points = split_points(inner, run.loss, tf.nest.flatten(run.y_pred))
            tensors = [point for _, point, _ in points]
            slopes = None if fisher else inner.gradient(run.loss, tensors)
        draws = self._fisher_draws(run, points, key) if fisher else None
        return _GaussNewtonPieces(self, inner, outer, tensors, slopes, draws, run.loss)

    @staticmethod
    def _forward_jvp(accumulator: Any, tensors: Sequence[Any]) -> list[Any]:
        """``J @ v`` at each tensor from a forward accumulator; a tangent that went
        missing would read as zero, so it raises :class:`TangentLost` instead."""
        tangents = [accumulator.jvp(tensor) for tensor in tensors]
        if any(tangent is None for tangent in tangents):
            raise TangentLost("forward mode lost the tangent of a model output")
        return tangents

    def _fisher_draws(
        self, run: _ForwardPass, points: Sequence[tuple[int, Any, bool]], key: Any
    ) -> list[tuple[list[Any], list[Any]]]:
        """For each of the ``mc_samples`` draws of the targets from the predictive
        distribution: the scores ``s_u`` and the slopes ``dL(y_drawn)/dz`` at every
        tensor the loss reads (see :mod:`.gauss_newton`)."""
        tf = _tf.tensorflow()
        families = self._fisher_families(points)
        tensors = [point for _, point, _ in points]
        flat_true = tf.nest.flatten(run.y_true)
        seed = _replica_seed(key)
        draws = []
        for draw in range(self.mc_samples):
            drawn = list(flat_true)
            scores = []
            for slot, ((index, point, _), family) in enumerate(zip(points, families, strict=True)):
                draw_seed = tf.random.experimental.stateless_fold_in(seed, draw * 1009 + slot)
                sample = tf.stop_gradient(family.sample(point, flat_true[index], draw_seed))
                drawn[index] = sample
                scores.append(tf.stop_gradient(family.score(point, sample)))
            with tf.GradientTape() as tape:
                tape.watch(tensors)
                loss = self._loss_of(run, tf.nest.pack_sequence_as(run.y_true, drawn))
            slopes = tape.gradient(loss, tensors, unconnected_gradients="zero")
            draws.append((scores, [tf.stop_gradient(slope) for slope in slopes]))
        return draws

    def _fisher_families(self, points: Sequence[tuple[int, Any, bool]]) -> list[Family]:
        """The predictive family of every output the loss reads (checked once, when the
        first product is traced)."""
        names = list(self.signature.output_names)
        cached = [False] * len(names)
        for index, _, logits in points:
            cached[index] = logits
        families = fisher_families(self.model, self.loss, names, cached)
        chosen = [families[index] for index, _, _ in points]
        return [family for family in chosen if family is not None]

    def _empirical_fisher(self, vector: Any, key: Any, batch: tuple[Any, Any, Any]) -> Any:
        """``(1/N) sum_i g_i (g_i . vector)`` over the batch's per-example gradients."""
        tf = _tf.tensorflow()
        gradients = self._example_gradients(batch)
        weights = tf.linalg.matvec(gradients, tf.cast(vector, gradients.dtype))
        product = tf.linalg.matvec(gradients, weights, transpose_a=True)
        rows = tf.cast(tf.shape(gradients)[0], gradients.dtype)
        return product / rows, self._loss(batch)

    def _example_engine(self) -> PerSampleEngine:
        """The per-example gradient engine of the empirical Fisher, its vectorization
        decided once on the first batch, as for ``--per-sample`` (a note when mapped)."""
        engine = PerSampleEngine(
            self.model,
            self.signature,
            self.loss,
            self.variables,
            training=self.training,
            purpose="--matrix empirical-fisher",
        )
        method = engine.choose_method(self.data.first)
        if not engine.vectorize:
            self.notes.append(f"per-example gradients of the empirical Fisher: {method}")
        return engine

    def _example_gradients(self, batch: tuple[Any, Any, Any]) -> Any:
        """``[rows, n]``: every example's gradient with respect to the block, flat, in the
        block's dtype, vectorized over the examples (:mod:`.per_sample`)."""
        inputs, targets, weight = batch
        examples: dict[str, Any] = {"inputs": inputs}
        if targets is not None:
            examples["targets"] = targets
        if weight is not None:
            examples["weight"] = weight
        if self._examples is None:
            raise RuntimeError("internal: per-example gradients outside the empirical Fisher")
        return self._examples.flat_gradients(examples, self._dtype)

    # -- exact blocks -----------------------------------------------------------------

    def _rows(self, indices: Any, key: Any, batch: tuple[Any, Any, Any]) -> Any:
        """Rows ``indices`` of the matrix: the Hessian's (:meth:`_hessian_rows`), the
        empirical Fisher's from the per-example gradients, the others as their products
        with unit vectors, vectorized over the rows (what does not depend on the vector,
        the forward pass, is computed once)."""
        tf = _tf.tensorflow()
        if self.matrix == "hessian":
            return self._hessian_rows(indices, batch)
        if self.matrix == "empirical-fisher":
            gradients = self._example_gradients(batch)
            rows = tf.cast(tf.shape(gradients)[0], gradients.dtype)
            chosen = tf.gather(gradients, indices, axis=1)
            return tf.matmul(chosen, gradients, transpose_a=True) / rows, self._loss(batch)
        pieces = self._gauss_newton_pieces(key, batch, fisher=self.matrix == "fisher")
        dtype = self._dtype

        def row(index: Any) -> Any:
            return pieces.apply(tf.one_hot(index, self.size, dtype=dtype))

        return tf.vectorized_map(row, indices, fallback_to_while_loop=True), pieces.loss

    def _hessian_rows(self, indices: Any, batch: tuple[Any, Any, Any]) -> Any:
        """Rows ``indices`` of the Hessian, as ``H @ e_i`` for each unit vector ``e_i``.

        The loss and its gradient are computed once; the vector-dependent backward pass
        is vectorized over the rows (``pfor``, falling back to a loop only for ops that
        have no vectorized rule), like ``GradientTape.jacobian`` but over a chosen
        subset of rows, so that the work space of a pass is bounded.
        """
        tf = _tf.tensorflow()
        zero = tf.UnconnectedGradients.ZERO
        sources = self._sources()
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = self._loss(batch)
            grads = inner.gradient(loss, sources, unconnected_gradients=zero)
            flat_grad = self._flat(grads)

        def row(index: Any) -> Any:
            unit = tf.one_hot(index, self.size, dtype=flat_grad.dtype)
            products = outer.gradient(
                flat_grad, sources, output_gradients=unit, unconnected_gradients=zero
            )
            return self._flat(products)

        return tf.vectorized_map(row, indices, fallback_to_while_loop=True), loss

    def exact_diagonal(self) -> np.ndarray | None:
        """The matrix's diagonal, exactly, where that is cheap whatever the block's size:
        the empirical Fisher's is the mean of the squared per-example gradients.
        ``None`` for the other matrices (their diagonal needs the exact block, or an
        estimate)."""
        if self.matrix != "empirical-fisher":
            return None
        return self._over_batches(self._squares_fn)  # type: ignore[no-any-return]

    def _mean_squares(self, key: Any, batch: tuple[Any, Any, Any]) -> tuple[Any, Any]:
        tf = _tf.tensorflow()
        gradients = self._example_gradients(batch)
        return tf.reduce_mean(gradients * gradients, axis=0), self._loss(batch)

    def example_gradient_bytes(self) -> int:
        """Memory the per-example gradients of the empirical Fisher hold at once: the
        first (largest) batch's rows times the block's size (0 for the other matrices)."""
        if self.matrix != "empirical-fisher":
            return 0
        itemsize = 8 if self._dtype == _tf.tensorflow().float64 else 4
        return self.data.first.size * self.size * itemsize

    def work_estimate(self) -> WorkEstimate:
        """Work space of exact rows, read off the traced back-over-back product."""
        tf = _tf.tensorflow()
        spec = tf.TensorSpec([self.size], self._dtype)
        key = tf.TensorSpec([2], tf.int64)
        arguments = self._arguments(self.data.first)
        graph = self._reverse_fn.get_concrete_function(spec, key, arguments).graph
        shared, per_row = split_graph_bytes(graph, [graph.inputs[0]])
        return WorkEstimate(shared=shared, per_row=per_row)

    def exact(
        self, rows_per_pass: int = MAX_ROWS_PER_PASS, on_rows: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """The exact Hessian block as float64 (computed in the block's own precision).

        Rows are computed ``rows_per_pass`` at a time by one compiled, vectorized pass
        (the last pass is padded by repeating its last row).  Models that cannot be
        vectorized at all (Keras's RNN loop) get their rows one Hessian-vector product
        at a time.  ``on_rows`` is told how many rows each pass finished.
        """
        rows = max(1, min(rows_per_pass, self.size))
        try:
            with _quiet_tensorflow_logger():
                return self._exact_in_passes(rows, on_rows)
        except (LookupError, ValueError) as exc:
            reason = not_supported_reason(exc)
            if reason is None:
                raise
            self.notes.append(
                f"the exact block could not be vectorized ({reason}); computed it one "
                f"Hessian-vector product per row instead ({self.size:,} products)"
            )
            return self._exact_by_products(on_rows)

    def _exact_in_passes(self, rows: int, on_rows: Callable[[int], None] | None) -> np.ndarray:
        tf = _tf.tensorflow()
        matrix = np.empty((self.size, self.size), dtype=np.float64)
        for start in range(0, self.size, rows):
            indices = tf.constant(
                np.minimum(np.arange(start, start + rows), self.size - 1), tf.int32
            )
            block = self._over_batches(self._rows_fn, indices)
            stop = min(start + rows, self.size)
            matrix[start:stop] = block[: stop - start]
            if on_rows is not None:
                on_rows(stop - start)
        return matrix

    def _exact_by_products(self, on_rows: Callable[[int], None] | None) -> np.ndarray:
        matrix = np.empty((self.size, self.size), dtype=np.float64)
        unit = np.zeros(self.size)
        for index in range(self.size):
            unit[index] = 1.0
            matrix[index] = self.hvp(unit)
            unit[index] = 0.0
            if on_rows is not None:
                on_rows(1)
        return matrix

    def _loss_pair(self, key: Any, batch: tuple[Any, Any, Any]) -> tuple[Any, Any]:
        loss = self._loss(batch)
        return loss, loss

    def loss_value(self) -> float:
        """The loss on the data at the current weights: from the last product or exact
        block when there was one (same weights, same batches), else one forward pass."""
        if self.loss_of_last_call is None:
            self._over_batches(self._loss_fn)
        if self.loss_of_last_call is None:
            raise RuntimeError("internal: a pass over the batches left no loss value")
        return self.loss_of_last_call
