"""Which loss gradscope differentiates, and how it is computed inside the graph.

Three sources, in order of precedence:

* ``--loss NAME`` (``override``): any Keras loss name, applied to every output and summed,
  as Keras does when ``compile`` gets a single loss for a multi-output model.  The model's
  regularization losses are added, as ``fit`` would.
* the compiled loss (``compiled``): exactly what ``model.fit`` minimises, through the
  model's own ``compute_loss`` (per-output losses, ``loss_weights``, regularization).
* the sum of all outputs (``sum_of_outputs``) when there is no compiled loss, or when the
  batch has no targets; this is the classic ``tape.gradient(tf.reduce_sum(model(x)))``.

Keras computes crossentropy on a softmax/sigmoid output from the cached logits, so the
loss does not depend on the probabilities tensor and its gradient would be empty.  The
loss value and every other gradient keep Keras's exact logits path; the gradient at such
an output is taken from a second, detached evaluation of the same data loss on the
probabilities (see :func:`probability_path_loss`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _keras_private, _tf
from .errors import LossError, first_line, received
from .report import LossKind

LossFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class LossSpec:
    """The resolved loss: what kind, how to describe it, and the per-output loss names."""

    kind: LossKind
    source: str
    output_losses: tuple[str | None, ...]
    override: LossFn | None = None

    @property
    def needs_targets(self) -> bool:
        return self.kind != "sum_of_outputs"

    def override_loss(self) -> LossFn:
        """The ``--loss`` function, which an ``override`` spec always has; a
        ``RuntimeError`` (an internal error, never a user's) for any other spec."""
        if self.override is None:
            raise RuntimeError(f"a loss of kind {self.kind!r} has no override function")
        return self.override


def loss_name(loss: Any) -> str | None:
    """A short snake_case name for a Keras loss given as a string, object or function."""
    if loss is None:
        return None
    if isinstance(loss, str):
        return loss
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None)
    if name:
        return str(name)
    fn = getattr(loss, "fn", None)
    return getattr(fn, "__name__", type(loss).__name__)


_ALIASES = ("mse", "mae", "mape", "msle", "kld", "kl_divergence", "logcosh", "log_cosh")


def _known_loss_names() -> list[str]:
    """Loss names ``keras.losses.get`` accepts: public functions and common aliases."""
    keras = _tf.keras()
    functions = [
        name
        for name, obj in vars(keras.losses).items()
        if callable(obj)
        and not name.startswith("_")
        and name[0].islower()
        and name not in {"get", "serialize", "deserialize"}
    ]
    return sorted({*functions, *_ALIASES})


def resolve_override(name: str) -> LossFn:
    """The Keras loss called ``name``, or a :class:`LossError` suggesting close names."""
    keras = _tf.keras()
    try:
        fn = keras.losses.get(name)
    except (ValueError, TypeError):
        fn = None
    if fn is None or not callable(fn):
        close = difflib.get_close_matches(name, _known_loss_names(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise LossError(
            f"--loss: unknown Keras loss {name!r}; expected a name such as "
            f"'mse', 'categorical_crossentropy' or 'huber'.{hint} {received(name)}"
        )
    return fn  # type: ignore[no-any-return]


def _compiled_loss_of(model: Any) -> Any:
    """The loss given to ``model.compile``, or ``None`` when not compiled with one."""
    if _keras_private.compile_loss(model) is None:
        return None
    return getattr(model, "loss", None)


def _per_output(loss: Any, output_names: Sequence[str]) -> tuple[str | None, ...]:
    """The loss name used for each output, in output order."""
    if isinstance(loss, dict):
        return tuple(loss_name(loss.get(name)) for name in output_names)
    if isinstance(loss, list | tuple):
        names = [loss_name(item) for item in loss]
        return tuple(names) + (None,) * (len(output_names) - len(names))
    return (loss_name(loss),) * len(output_names)


def _weights_by_output(model: Any, output_names: Sequence[str]) -> list[float | None]:
    weights = _keras_private.loss_weights(model)
    if isinstance(weights, dict):
        return [weights.get(name) for name in output_names]
    if isinstance(weights, list | tuple):
        return list(weights)
    if isinstance(weights, int | float):
        return [float(weights)] * len(output_names)
    return [None] * len(output_names)


def _describe_compiled(model: Any, names: tuple[str | None, ...], outputs: Sequence[str]) -> str:
    weights = _weights_by_output(model, outputs)
    if len(outputs) == 1:
        text = str(names[0])
        if weights[0] not in (None, 1, 1.0):
            text += f" ×{weights[0]:g}"
        return text
    parts = []
    for output, name, weight in zip(outputs, names, weights, strict=False):
        if name is None:
            continue
        parts.append(f"{output}: {name}" + ("" if weight is None else f" ×{weight:g}"))
    return "{" + ", ".join(parts) + "}"


def resolve_loss(
    model: Any, output_names: Sequence[str], override: str | None, has_targets: bool
) -> LossSpec:
    """Decide which loss to differentiate, following the precedence in the module doc."""
    if override is not None:
        fn = resolve_override(override)
        if not has_targets:
            raise LossError(
                f"--loss {override}: the batch has no targets (key 'y' or the output names); "
                "a loss needs targets. Leave out --loss to differentiate the sum of outputs."
            )
        name = loss_name(fn) or override
        return LossSpec("override", f"--loss {override}", (name,) * len(output_names), fn)
    compiled = _compiled_loss_of(model)
    if compiled is not None and has_targets:
        names = _per_output(compiled, output_names)
        return LossSpec(
            "compiled", f"compiled: {_describe_compiled(model, names, output_names)}", names
        )
    reason = "no targets in the batch" if compiled is not None else "no compiled loss"
    return LossSpec("sum_of_outputs", f"sum of outputs ({reason})", (None,) * len(output_names))


def regularization(model: Any) -> tuple[Any, int]:
    """Sum of the model's additional losses (regularizers, ``add_loss``) and their count.

    Call it after the forward pass, inside the same trace, as Keras's trainer does.
    """
    tf = _tf.tensorflow()
    terms = [tf.reduce_sum(loss) for loss in model.losses]
    if not terms:
        return tf.zeros([], tf.float32), 0
    return _sum_wide(terms), len(terms)


def _sum_wide(terms: list[Any]) -> Any:
    """The sum of scalar ``terms`` in float64 when one of them is float64, else float32.

    Float16 terms are widened; a float64 model keeps its float64 loss (finite
    differences and Hessians of float64 models need every digit).
    """
    tf = _tf.tensorflow()
    dtype = tf.float64 if any(t.dtype == tf.float64 for t in terms) else tf.float32
    return tf.add_n([tf.cast(t, dtype) for t in terms])


def _sum_of_outputs(y_pred: Any) -> Any:
    tf = _tf.tensorflow()
    return _sum_wide([tf.reduce_sum(t) for t in tf.nest.flatten(y_pred)])


def _loss_object(fn: LossFn, dtype: str | None = None) -> Any:
    """Wrap a loss function the way ``compile`` does, so it reduces exactly like Keras.

    ``dtype`` is the dtype the loss computes in (Keras's ``floatx`` when ``None``).
    """
    return _keras_private.loss_function_wrapper(fn, name=getattr(fn, "__name__", None), dtype=dtype)


def _override_data_loss(fn: LossFn, y_true: Any, y_pred: Any, sample_weight: Any) -> Any:
    """``fn`` on each (target, output) pair, mean-reduced like Keras, then summed."""
    tf = _tf.tensorflow()
    keras = _tf.keras()
    wide = any(t.dtype == tf.float64 for t in tf.nest.flatten(y_pred))
    loss_object = (
        fn if isinstance(fn, keras.losses.Loss) else _loss_object(fn, "float64" if wide else None)
    )
    pairs = zip(tf.nest.flatten(y_true), tf.nest.flatten(y_pred), strict=True)
    return _sum_wide([loss_object(t, p, sample_weight) for t, p in pairs])


def total_loss(
    spec: LossSpec, model: Any, x: Any, y_true: Any, y_pred: Any, sample_weight: Any, training: bool
) -> Any:
    """The scalar loss the gradients are taken of (data loss plus regularization)."""
    if spec.kind == "sum_of_outputs":
        return _sum_of_outputs(y_pred)
    if spec.kind == "override":
        reg, _ = regularization(model)
        data = _override_data_loss(spec.override_loss(), y_true, y_pred, sample_weight)
        # Scaled inside a replica context exactly as compute_loss scales it, so that the
        # whole loss carries one factor (see gradscope.engine.replicas).
        return _sum_wide([data, _keras_private.scale_loss_for_distribution(reg)])
    compute = model.compute_loss
    kwargs = (
        {"training": training} if _takes_training(getattr(compute, "__func__", compute)) else {}
    )
    return compute(x=x, y=y_true, y_pred=y_pred, sample_weight=sample_weight, **kwargs)


@functools.cache
def _takes_training(compute_loss: Callable[..., Any]) -> bool:
    """Whether a ``compute_loss`` accepts ``training``: Keras added the argument in 3.4,
    and a model's own override may lack it.  Keras's trainer checks the same way."""
    return "training" in inspect.signature(compute_loss).parameters


def has_cached_logits(tensor: Any) -> bool:
    """Whether Keras's crossentropy would read logits instead of ``tensor`` itself."""
    if _keras_private.has_cached_logits(tensor):
        return True
    op = getattr(tensor, "op", None)
    return getattr(op, "type", None) in ("Softmax", "Sigmoid")


def probability_path_loss(
    spec: LossSpec, model: Any, y_true: Any, detached_outputs: Any, sample_weight: Any
) -> Any | None:
    """The data loss evaluated on ``detached_outputs`` (probabilities, not logits).

    The caller passes outputs that are ``stop_gradient(output) + probe`` for the outputs
    with cached logits: the gradient of this loss with respect to a probe is then the
    gradient of the loss as a function of the probabilities, while nothing flows to the
    weights (they already get Keras's exact logits-path gradient from :func:`total_loss`).
    Returns ``None`` when the data loss cannot be evaluated separately.
    """
    if spec.kind == "override":
        return _override_data_loss(spec.override_loss(), y_true, detached_outputs, sample_weight)
    if spec.kind == "compiled":
        compile_loss = _keras_private.compile_loss(model)
        if compile_loss is None:
            return None
        return compile_loss(y_true, detached_outputs, sample_weight)
    return None


def check_loss_runs(spec: LossSpec, model: Any, y_true: Any, y_pred: Any) -> None:
    """Evaluate the data loss eagerly on a sample, so that incompatible targets fail early.

    This also builds Keras's compile-loss trackers outside the traced step.
    """
    if spec.kind == "sum_of_outputs":
        return
    override = spec.override_loss() if spec.kind == "override" else None
    try:
        if override is not None:
            _override_data_loss(override, y_true, y_pred, None)
        else:
            compile_loss = _keras_private.compile_loss(model)
            if compile_loss is not None:
                compile_loss(y_true, y_pred)
    except Exception as exc:  # Keras raises ValueError, TypeError, InvalidArgumentError
        raise LossError(
            f"{spec.source}: the loss cannot be computed on these targets and outputs. "
            f"{received(first_line(exc))}"
        ) from exc
