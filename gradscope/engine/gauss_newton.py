"""Gauss-Newton and Fisher curvature: the pieces that differ from the Hessian.

A model maps the parameters ``theta`` to outputs ``z`` and the loss is ``L(z)``.  The
**generalized Gauss-Newton** matrix (GGN) keeps the curvature of the loss at the
outputs and drops that of the network::

    G = J^T H_L J,      J = dz/dtheta,  H_L = d2L/dz2

It is positive semi-definite whenever the loss is convex in ``z`` (mean squared error,
crossentropy on logits).  A product ``G v`` is one Jacobian-vector product (``J v``),
one loss-Hessian product at the outputs (``H_L (J v)``) and one vector-Jacobian product
(``J^T (...)``); ``J`` is never formed.

**Where the outputs are.**  When a model ends in a softmax or sigmoid and its loss is a
crossentropy, Keras computes the loss from the logits it cached on the output, not from
the probabilities; the loss is then convex in the logits, and ``z`` is the logits, as in
BackPACK and curvlinops (whose losses take logits).  :func:`split_points` finds, for each
output, the tensor the loss actually reads.

**Fisher.**  The Fisher matrix is the GGN's expectation under the model's predictive
distribution: ``F = E_y~p(y|z) [J^T H_L(y) J]``.  For a loss that is a scaled negative
log-likelihood ``kappa * NLL(y | z)``, the information equality gives
``kappa * E[s s^T] = E[H_L]`` with the score ``s = d NLL / dz``, so a Monte Carlo
estimate draws ``y`` from the predictive distribution and uses ``s s^T`` per unit (one
unit: all axes of an output but the last).  The product is::

    F v ~= J^T [ (s_u . (J v)_u) * dL(y_sampled)/dz_u ]_u

where ``dL(y_sampled)/dz_u = c_u * kappa * s_u`` carries every weight Keras applies
(reduction, sample weights, masks), so no weight has to be known here.  The families
(:class:`Family`) are the crossentropies and the mean squared error, whose predictive
distributions are the categorical, the Bernoulli and the Gaussian ``N(z, I/2)`` (with
which ``kappa * E[s s^T]`` is exactly the mse's ``2/D * I``).  For these, on logits,
``E[F_mc] = G`` exactly.

**Empirical Fisher**: ``(1/N) sum_i g_i g_i^T`` over the per-example gradients of
:mod:`.per_sample` (the loss on each example alone), built in the operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .. import _keras_private, _tf
from ..errors import LossError, received
from ..losses import LossSpec, loss_name

Matrix = Literal["hessian", "ggn", "fisher", "empirical-fisher"]
"""The curvature matrices (``HessianOptions.matrix``)."""

FamilyKind = Literal["categorical", "sparse_categorical", "binary", "mse"]

_FAMILY_NAMES: dict[str, FamilyKind] = {
    "categorical_crossentropy": "categorical",
    "sparse_categorical_crossentropy": "sparse_categorical",
    "binary_crossentropy": "binary",
    "mean_squared_error": "mse",
    "mse": "mse",
}
"""Keras loss names (function, object and alias) whose Fisher is defined here."""

_PROBABILITY_FLOOR = 1e-7
"""Keras's ``epsilon()``: how far crossentropies on probabilities clip them from 0 and 1."""


@dataclass(frozen=True)
class Family:
    """The predictive distribution of one output: which loss, and whether the tensor the
    loss reads (:func:`split_points`) holds logits or probabilities."""

    kind: FamilyKind
    from_logits: bool

    def sample(self, point: Any, target: Any, seed: Any) -> Any:
        """One draw of targets from the model's predictive distribution at ``point``,
        in the format (shape and dtype) of the real ``target``."""
        tf = _tf.tensorflow()
        if self.kind in ("categorical", "sparse_categorical"):
            classes = tf.shape(point)[-1]
            logits = point if self.from_logits else tf.math.log(self._probabilities(point))
            drawn = tf.random.stateless_categorical(
                tf.reshape(tf.cast(logits, tf.float32), [-1, classes]), 1, seed
            )
            index = tf.reshape(drawn, tf.shape(point)[:-1])
            if self.kind == "sparse_categorical":
                return tf.cast(tf.reshape(index, tf.shape(target)), target.dtype)
            return tf.reshape(tf.one_hot(index, classes, dtype=target.dtype), tf.shape(target))
        if self.kind == "binary":
            uniform = tf.random.stateless_uniform(tf.shape(point), seed, dtype=point.dtype)
            drawn = tf.cast(uniform < self._probabilities(point), target.dtype)
            return tf.reshape(drawn, tf.shape(target))
        noise = tf.random.stateless_normal(tf.shape(point), seed, dtype=point.dtype)
        return tf.reshape(tf.cast(point + noise * (0.5**0.5), target.dtype), tf.shape(target))

    def score(self, point: Any, sample: Any) -> Any:
        """``d NLL(sample | point) / d point``, shaped like ``point``."""
        tf = _tf.tensorflow()
        dtype = point.dtype
        if self.kind == "sparse_categorical":
            index = tf.reshape(tf.cast(sample, tf.int32), tf.shape(point)[:-1])
            sample = tf.one_hot(index, tf.shape(point)[-1], dtype=dtype)
        sample = tf.reshape(tf.cast(sample, dtype), tf.shape(point))
        if self.kind == "mse":
            return 2.0 * (point - sample)
        probabilities = self._probabilities(point)
        if self.from_logits:
            return probabilities - sample
        if self.kind == "binary":
            return -sample / probabilities + (1.0 - sample) / (1.0 - probabilities)
        total = tf.reduce_sum(point, axis=-1, keepdims=True)
        return -sample / probabilities / total + 1.0 / total

    def _probabilities(self, point: Any) -> Any:
        """The predictive probabilities at ``point``, clipped as Keras clips them."""
        tf = _tf.tensorflow()
        if self.from_logits:
            if self.kind == "binary":
                return tf.sigmoid(point)
            return tf.nn.softmax(point, axis=-1)
        if self.kind != "binary":
            point = point / tf.reduce_sum(point, axis=-1, keepdims=True)
        return tf.clip_by_value(point, _PROBABILITY_FLOOR, 1.0 - _PROBABILITY_FLOOR)


def _output_loss_objects(model: Any, spec: LossSpec, outputs: Sequence[str]) -> list[Any]:
    """The loss object (string, function or ``Loss``) of each output, in output order."""
    if spec.kind == "override":
        return [spec.override_loss()] * len(outputs)
    compiled = getattr(model, "loss", None)
    if isinstance(compiled, dict):
        return [compiled.get(name) for name in outputs]
    if isinstance(compiled, list | tuple):
        return [*compiled, *([None] * (len(outputs) - len(compiled)))]
    return [compiled] * len(outputs)


def _loss_settings(loss: Any) -> dict[str, Any]:
    """The keyword arguments a Keras loss object was built with (``from_logits``,
    ``label_smoothing``, ...); empty for a string or a plain function."""
    wrapped = _keras_private.wrapped_function(loss)
    if wrapped is not None:
        return wrapped[1]
    config = getattr(loss, "get_config", None)
    return dict(config()) if callable(config) and not isinstance(loss, str) else {}


def _family_of(loss: Any, output: str, cached_logits: bool) -> Family | None:
    """The family of one output's loss; ``None`` for an output without a loss."""
    if loss is None:
        return None
    name = loss_name(loss) or repr(loss)
    kind = _FAMILY_NAMES.get(name)
    settings = _loss_settings(loss)
    unsupported = []
    if settings.get("label_smoothing"):
        unsupported.append(f"label_smoothing={settings['label_smoothing']!r}")
    if settings.get("ignore_class") is not None:
        unsupported.append(f"ignore_class={settings['ignore_class']!r}")
    if settings.get("axis", -1) != -1:
        unsupported.append(f"axis={settings['axis']!r}")
    if kind is None or unsupported:
        why = f"with {', '.join(unsupported)}" if unsupported else "which is not one of them"
        raise LossError(
            "--matrix fisher: the Fisher matrix is defined for the crossentropy and mean "
            f"squared error losses (categorical, sparse categorical, binary, mse); output "
            f"{output!r} has the loss {name!r}, {why}. Use --matrix ggn or "
            f"empirical-fisher. {received(name)}"
        )
    return Family(kind, bool(settings.get("from_logits", False)) or cached_logits)


def fisher_families(
    model: Any, spec: LossSpec, outputs: Sequence[str], cached: Sequence[bool]
) -> list[Family | None]:
    """Each output's :class:`Family`; ``cached[i]`` says whether the loss of output ``i``
    reads the logits Keras cached on it.  A :class:`~gradscope.errors.LossError` names the
    loss when the Fisher is not defined for it (a custom loss, label smoothing)."""
    objects = _output_loss_objects(model, spec, outputs)
    return [
        _family_of(loss, name, logits)
        for loss, name, logits in zip(objects, outputs, cached, strict=True)
    ]


def split_points(tape: Any, loss: Any, outputs: Sequence[Any]) -> list[tuple[int, Any, bool]]:
    """``(output index, tensor, reads cached logits)`` for each output the loss reads.

    The tensor is the output itself, or the logits Keras cached on it when the loss reads
    those instead (its gradient with respect to the output itself is then unconnected).
    Outputs the loss does not reach are left out.  ``tape`` recorded the forward pass.
    """
    slopes = tape.gradient(loss, list(outputs))
    points = []
    for index, (output, slope) in enumerate(zip(outputs, slopes, strict=True)):
        logits = _keras_private.cached_logits(output)
        if slope is not None:
            points.append((index, output, False))
        elif logits is not None and tape.gradient(loss, logits) is not None:
            points.append((index, logits, True))
    return points


def needs_loss(matrix: Matrix, spec: LossSpec) -> None:
    """Refuse a Gauss-Newton-type matrix of the sum of outputs, which is linear in the
    outputs: its GGN and Fisher are zero and its per-example gradients constant-free."""
    if matrix != "hessian" and spec.kind == "sum_of_outputs":
        raise LossError(
            f"--matrix {matrix}: needs a loss with targets; this run differentiates the "
            f"{spec.source}, whose curvature at the outputs is zero. Give a batch with "
            "targets (and --loss when the model is not compiled)."
        )


__all__ = ["Family", "Matrix", "fisher_families", "needs_loss", "split_points"]
