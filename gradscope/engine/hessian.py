"""Second derivatives of the loss: exact Hessian blocks and Hessian-vector products.

* :meth:`HessianOperator.exact` builds the full ``n x n`` Hessian of the loss with
  respect to a block of variables, as the vectorized jacobian of the gradient (one
  compiled ``tf.function``).
* :meth:`HessianOperator.hvp` multiplies the Hessian by a vector without ever forming
  it: forward-over-back (a ``tf.autodiff.ForwardAccumulator`` around a
  ``tf.GradientTape``), compiled once per block.  Its cost is a small multiple of one
  gradient, whatever the size of the block.

Vectors are flat float64 numpy arrays over the block's variables in order, so the
matrix-free algorithms of :mod:`gradscope.engine.spectral` can use them directly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .. import _tf
from ..loading.data import Batch
from ..loading.signature import ModelSignature
from ..losses import LossSpec, total_loss

EXACT_BYTES_PER_ENTRY = 20
"""Bytes per Hessian entry an exact block needs: the float32 jacobian (4), its float64
copy (8) and LAPACK's work space for ``eigvalsh`` (8)."""


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
    """Memory an exact ``size x size`` block needs (see :data:`EXACT_BYTES_PER_ENTRY`)."""
    return EXACT_BYTES_PER_ENTRY * size * size


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
        batch: Batch,
        variables: Sequence[Any],
        *,
        training: bool = False,
    ) -> None:
        tf = _tf.tensorflow()
        self.model = model
        self.signature = signature
        self.loss = loss
        self.training = training
        self.variables = list(variables)
        self.shapes = [tuple(int(d) for d in v.shape) for v in self.variables]
        self.sizes = [int(np.prod(shape, dtype=np.int64)) for shape in self.shapes]
        self.size = int(sum(self.sizes))
        self._inputs = {name: tf.convert_to_tensor(a) for name, a in batch.inputs.items()}
        self._targets = None
        if batch.targets is not None and loss.needs_targets:
            self._targets = {name: tf.convert_to_tensor(a) for name, a in batch.targets.items()}
        self._weight = (
            None if batch.sample_weight is None else tf.convert_to_tensor(batch.sample_weight)
        )
        # In training mode every call would advance dropout's random state and move the
        # BatchNorm statistics: the operator would change between products.  The state
        # is put back before every call, so every product sees the same function.
        self._state = [(v, v.numpy()) for v in model.non_trainable_variables] if training else []
        self._hvp_fn = tf.function(self._hvp, autograph=False)
        self._reverse_fn = tf.function(self._hvp_reverse, autograph=False)
        self._exact_fn = tf.function(self._exact, autograph=False)
        self.hvp_calls = 0

    def _reset_state(self) -> None:
        for variable, value in self._state:
            variable.assign(value)

    # -- the loss ---------------------------------------------------------------------

    def _loss(self) -> Any:
        packed = self.signature.pack_inputs(self._inputs)
        y_pred = self.model(packed, training=self.training)
        y_true = None if self._targets is None else self.signature.pack_outputs(self._targets)
        return total_loss(
            self.loss, self.model, packed, y_true, y_pred, self._weight, self.training
        )

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

    def _hvp(self, vector: Any) -> Any:
        """``H @ vector`` by forward-over-back: the JVP of the gradient along ``vector``."""
        tf = _tf.tensorflow()
        primals = [v.value for v in self.variables]
        with tf.autodiff.ForwardAccumulator(primals, self._split(vector)) as accumulator:
            with tf.GradientTape() as tape:
                loss = self._loss()
            grads = tape.gradient(
                loss, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
        products = accumulator.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return self._flat(products)

    def _hvp_reverse(self, vector: Any) -> Any:
        """``H @ vector`` by back-over-back: the gradient of ``<grad, vector>``.

        The fallback for models whose ops have no forward-mode rule inside control flow
        (Keras's RNN loop, for one); about one more backward pass than forward-over-back.
        """
        tf = _tf.tensorflow()
        tangents = self._split(vector)
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = self._loss()
            grads = inner.gradient(
                loss, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            projection = tf.add_n(
                [tf.reduce_sum(g * t) for g, t in zip(grads, tangents, strict=True)]
            )
        products = outer.gradient(
            projection, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return self._flat(products)

    def hvp(self, vector: np.ndarray) -> np.ndarray:
        """``H @ vector`` for a flat float64 ``vector`` over the block (float64 result).

        Forward-over-back is tried first; if the model cannot be traced in forward mode,
        back-over-back is used from then on.
        """
        tf = _tf.tensorflow()
        self.hvp_calls += 1
        self._reset_state()
        tensor = tf.constant(vector, dtype=self._dtype)
        try:
            product = self._hvp_fn(tensor)
        except (TypeError, ValueError, LookupError, NotImplementedError):
            if self._hvp_fn is self._reverse_fn:
                raise
            self._hvp_fn = self._reverse_fn
            product = self._hvp_fn(tensor)
        return np.asarray(product.numpy(), dtype=np.float64)

    # -- exact blocks -----------------------------------------------------------------

    def _exact(self, vectorized: bool = True) -> Any:
        """The ``n x n`` Hessian as the (vectorized) jacobian of the flat gradient."""
        tf = _tf.tensorflow()
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = self._loss()
            grads = inner.gradient(
                loss, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            flat_grad = self._flat(grads)
        columns = outer.jacobian(
            flat_grad,
            self.variables,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
            experimental_use_pfor=vectorized,
        )
        return tf.concat(
            [tf.reshape(tf.cast(c, self._dtype), [self.size, -1]) for c in columns], axis=1
        )

    def exact(self) -> np.ndarray:
        """The exact Hessian block, as float64 (computed in the block's own precision).

        The jacobian is vectorized (``pfor``) where TensorFlow can; some models (Keras's
        RNN loop) cannot be vectorized, and then the rows are computed in a loop.
        """
        self._reset_state()
        try:
            with _quiet_tensorflow_logger():
                matrix = self._exact_fn(True)
        except (ValueError, TypeError, LookupError, NotImplementedError):
            self._reset_state()
            matrix = self._exact_fn(False)
        return np.asarray(matrix.numpy(), dtype=np.float64)

    def loss_value(self) -> float:
        """The loss on the batch at the current weights (one forward pass)."""
        return float(self._loss().numpy())
