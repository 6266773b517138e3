"""The float64 copy of a model, and the choice of the precision a check runs in.

Central differences in float32 are accurate to a few 1e-3 at best, so a check runs on a
*float64 copy* of the model where it can: the model's config is rewritten with every
floating dtype (layer dtype policies, float ``Input`` layers, casts inside the config) set
to ``float64``, rebuilt under Keras's ``floatx``/dtype policy set to float64 (both restored
afterwards, the cached global policy included), its weights copied and widened, and its
compiled loss rebuilt in float64.  Integer inputs stay integer.  The copy is accepted
only if every floating weight is float64, its outputs and loss match the model's to
float32 precision, and the traced loss has no float16/bfloat16/float32 op between the
inputs or weights and the loss (a custom layer that hard-codes float32).

**What counts as "cannot be cast".**  Only the failures by which Keras and TensorFlow say
that code does not run in float64 (:func:`float64_failures`): a dtype mismatch while
rebuilding or tracing (``TypeError``/``ValueError``, e.g. ``Input 'y' of 'Mul' Op has type
float32 that does not match type float64``; Keras wraps a layer's in ``TypeError: ...
could not be deserialized properly``), an op without a float64 kernel or an eager dtype
mismatch (``tf.errors.InvalidArgumentError``, ``NotFoundError``, ``UnimplementedError``),
or a layer without a config (``NotImplementedError``), raised from Keras's or the model's
code, plus the explicit checks above (:class:`NotCastable`).  Anything else (a bug in
gradscope, ``RuntimeError``, ``KeyError``, ...) propagates: it must not silently turn a
float64 check into a float32 one with a 1000x looser tolerance.

Then (:func:`function_in_precision`) the model itself is checked in float32, with the
reason recorded in the report (``precision.fallback``, ``precision.reason``), unless
``require_float64`` (or ``precision="float64"``) makes that an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ... import _keras_private, _tf
from ...engine.capture import walk_layers
from ...errors import UsageError, first_line
from ...loading.data import Batch
from ...loading.signature import ModelSignature
from .options import CheckOptions

AGREEMENT = 1e-4
"""How closely the float64 copy's outputs and loss must match the model's (relative to
their scale): float32 rounding through a small network is ~1e-6."""


class LossFunction(Protocol):
    """What the choice of precision needs of the loss function (``run._Function``)."""

    model: Any
    dtype: str
    cast: bool

    def gradients(self) -> tuple[float, list[np.ndarray], dict[str, np.ndarray]]: ...

    def low_precision_op(self) -> tuple[str, str] | None: ...

    def inference_outputs_and_loss(
        self, model: Any, batch: Batch | None
    ) -> tuple[dict[str, np.ndarray], float]: ...


Build = Callable[[Any, str, bool], LossFunction]
"""``build(model, dtype, cast)``: the loss of ``model`` on the batch, in ``dtype``."""


def float64_failures() -> tuple[type[BaseException], ...]:
    """The exception types by which Keras and TensorFlow refuse to run code in float64
    (see the module doc); any other exception is not a reason to fall back."""
    errors = _tf.tensorflow().errors
    return (
        TypeError,
        ValueError,
        NotImplementedError,
        errors.InvalidArgumentError,
        errors.NotFoundError,
        errors.UnimplementedError,
    )


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain: Keras wraps the dtype error that says what
    went wrong in several layers of "could not be deserialized" / "Exception
    encountered when calling"."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


@contextlib.contextmanager
def in_float64(what: str) -> Iterator[None]:
    """Turn a float64 failure of the code in the block (:func:`float64_failures`) into
    :class:`NotCastable` saying ``what`` failed and why; let anything else through."""
    try:
        yield
    except NotCastable:
        raise
    except float64_failures() as exc:
        cause = root_cause(exc)
        raise NotCastable(f"{what}: {type(cause).__name__}: {first_line(cause)}") from exc


class NotCastable(Exception):
    """The model cannot be checked in float64; ``reason`` says why, for the note."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_FLOAT_NAMES = frozenset({"float16", "bfloat16", "float32", "float64", "half", "float", "double"})


@contextlib.contextmanager
def keras_dtype(dtype: str) -> Iterator[None]:
    """Keras's ``floatx`` and global dtype policy set to ``dtype``, both restored on exit.

    Keras caches its global dtype policy the first time it is asked for one; the cached
    value (or its absence) is put back as it was, so nothing leaks out of the block.
    """
    keras = _tf.keras()
    floatx = keras.config.floatx()
    policy = _keras_private.global_attribute("dtype_policy")
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(floatx)
        _keras_private.set_global_attribute("dtype_policy", policy)


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Put Python's and Keras's global random state back after the block: building the
    copy draws seeds and initial weights (then overwritten) from them."""
    import random

    python_state = random.getstate()
    generator = _keras_private.global_attribute("global_seed_generator")
    saved = None if generator is None else np.array(generator.state.numpy())
    try:
        yield
    finally:
        random.setstate(python_state)
        if generator is None:
            _keras_private.set_global_attribute("global_seed_generator", None)
        else:
            _keras_private.set_global_attribute("global_seed_generator", generator)
            generator.state.assign(saved)


def _wide_dtype(value: Any, where: str) -> Any:
    """A ``dtype`` entry of a config, with floating dtypes made float64."""
    if isinstance(value, str):
        return "float64" if value in _FLOAT_NAMES else value
    if isinstance(value, dict) and "class_name" in value:
        name = str(value.get("config", {}).get("name", ""))
        if value["class_name"] != "DTypePolicy":
            raise NotCastable(f"{where} has the dtype policy {value['class_name']} ({name})")
        if name in _FLOAT_NAMES or name.startswith("mixed_"):
            return {**value, "config": {**value["config"], "name": "float64"}}
    return value


def wide_config(node: Any, where: str = "the model") -> Any:
    """A serialized Keras config with every floating ``dtype`` entry set to float64."""
    if isinstance(node, list):
        return [wide_config(item, where) for item in node]
    if not isinstance(node, dict):
        return node
    here = where
    config = node.get("config")
    if isinstance(config, dict) and isinstance(config.get("name"), str):
        here = f"layer {config['name']!r}"
    return {
        key: _wide_dtype(value, here) if key == "dtype" else wide_config(value, here)
        for key, value in node.items()
    }


def _classes_of(model: Any) -> dict[str, Any]:
    """Every layer class the model uses, by class name and registered name, so that an
    unregistered custom class is found when the copy is rebuilt."""
    keras = _tf.keras()
    objects: dict[str, Any] = {}
    for layer in [model, *(node.layer for node in walk_layers(model))]:
        cls = type(layer)
        objects.setdefault(cls.__name__, cls)
        objects.setdefault(keras.saving.get_registered_name(cls), cls)
    return objects


def _is_float(dtype: Any) -> bool:
    name = str(getattr(dtype, "name", dtype))
    return name in _FLOAT_NAMES


def all_float64(model: Any) -> bool:
    floats = [v for v in model.trainable_variables if _is_float(v.dtype)]
    return bool(floats) and all(str(v.dtype) == "float64" for v in floats)


def _copy_weights(model: Any, copy: Any) -> None:
    """Every weight of ``model`` into ``copy``, floating ones widened to float64."""
    source, target = list(model.weights), list(copy.weights)
    if len(source) != len(target):
        raise NotCastable(f"the rebuilt copy has {len(target)} weights, the model {len(source)}")
    for original, wide in zip(source, target, strict=True):
        if tuple(original.shape) != tuple(wide.shape) or original.name != wide.name:
            raise NotCastable(
                f"the rebuilt copy's weight {wide.path} does not match {original.path}"
            )
        value = np.asarray(original.numpy())
        if _is_float(original.dtype):
            if str(wide.dtype) != "float64":
                raise NotCastable(f"weight {original.path} stays {wide.dtype} in the copy")
            value = value.astype(np.float64)
        wide.assign(value)


def wide_loss(loss: Any) -> Any:
    """A compiled loss (a name, function, Loss object or a structure of them) rebuilt so
    that it computes in float64 (call it under :func:`keras_dtype`)."""
    keras = _tf.keras()
    if isinstance(loss, dict):
        return {key: wide_loss(value) for key, value in loss.items()}
    if isinstance(loss, list | tuple):
        return type(loss)(wide_loss(value) for value in loss)
    if not isinstance(loss, keras.losses.Loss):
        return loss  # names and functions are wrapped by compile, in floatx
    wrapped = _keras_private.wrapped_function(loss)
    if wrapped is not None:
        fn, kwargs = wrapped
        return _keras_private.loss_function_wrapper(
            fn, reduction=loss.reduction, name=loss.name, dtype="float64", **kwargs
        )
    config = dict(loss.get_config())
    if "dtype" in config:
        config["dtype"] = "float64"
    rebuilt = type(loss).from_config(config)
    if str(rebuilt.dtype) != "float64":
        raise NotCastable(f"the loss {type(loss).__name__} computes in {rebuilt.dtype}")
    return rebuilt


def _compile_like(model: Any, copy: Any) -> None:
    if _keras_private.compile_loss(model) is None:
        return
    with in_float64("its loss cannot be rebuilt in float64"):
        copy.compile(
            loss=wide_loss(model.loss),  # what was given to compile
            loss_weights=_keras_private.loss_weights(model),
        )


def float64_copy(model: Any, signature: ModelSignature, batch: Batch) -> Any:
    """A float64 copy of ``model`` with the same weights and compiled loss.

    Call it under :func:`keras_dtype` ``("float64")``.  Raises :class:`NotCastable`
    when the model cannot be rebuilt from its config in float64.
    """
    keras = _tf.keras()
    for node in walk_layers(model):
        if isinstance(node.layer, keras.layers.TFSMLayer):
            raise NotCastable("a SavedModel's graph runs in the dtypes it was saved with")
    with in_float64("its config cannot be serialized"):
        config = keras.saving.serialize_keras_object(model)
    wide = wide_config(config)
    # The config comes from a model already in memory, not from a file: rebuilding it
    # runs no code that has not run already, so safe mode has nothing to guard.
    with in_float64("it cannot be rebuilt in float64"), _random_state_kept():
        copy = keras.saving.deserialize_keras_object(
            wide, custom_objects=_classes_of(model), safe_mode=False
        )
        if len(copy.weights) != len(model.weights):  # a subclassed model builds on call
            inputs = signature.pack_inputs(wide_arrays(batch.inputs, "float64"))
            copy(inputs, training=False)
    _copy_weights(model, copy)
    trainable = zip(model.trainable_variables, copy.trainable_variables, strict=False)
    if len(copy.trainable_variables) != len(model.trainable_variables) or any(
        a.name != b.name or tuple(a.shape) != tuple(b.shape) for a, b in trainable
    ):
        raise NotCastable("the rebuilt copy's trainable variables do not match the model's")
    _compile_like(model, copy)
    return copy


def wide_arrays(arrays: Mapping[str, np.ndarray] | None, dtype: str) -> dict[str, np.ndarray]:
    """Floating arrays in ``dtype``; integer and boolean ones as they are."""
    if arrays is None:
        return {}
    return {
        name: a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a
        for name, a in arrays.items()
    }


def float64_function(model: Any, signature: ModelSignature, batch: Batch, build: Build) -> Any:
    """The loss of a verified float64 copy of ``model`` (see the module doc); call it
    under :func:`keras_dtype` ``("float64")``.  Raises :class:`NotCastable`."""
    copy = float64_copy(model, signature, batch)
    function = build(copy, "float64", True)
    with in_float64("the copy fails in float64"):
        narrow = function.inference_outputs_and_loss(model, batch)
        wide = function.inference_outputs_and_loss(function.model, None)
        culprit = function.low_precision_op()
        function.gradients()  # an op without a float64 kernel fails here, not later
    check_agreement(narrow, wide)
    if culprit is not None:
        raise NotCastable(f"the copy still computes in {culprit[1]} at op {culprit[0]!r}")
    return function


Evaluation = tuple[dict[str, np.ndarray], float]
"""Outputs (by name) and loss of one inference-mode evaluation."""


def check_agreement(narrow: Evaluation, wide: Evaluation) -> None:
    """The copy (``wide``) computes the model's (``narrow``) outputs and loss, to float32
    precision."""
    tf = _tf.tensorflow()
    for (name, a), b in zip(narrow[0].items(), wide[0].values(), strict=True):
        if str(b.dtype) != "float64" and tf.as_dtype(b.dtype).is_floating:
            raise NotCastable(f"output {name!r} of the copy is {b.dtype}")
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(1.0, float(np.max(np.abs(a64), initial=0.0)))
        difference = float(np.max(np.abs(a64 - b64), initial=0.0))
        if not difference <= AGREEMENT * scale:
            raise NotCastable(
                f"the copy's output {name!r} differs from the model's by {difference:.2e}"
            )
    loss32, loss64 = narrow[1], wide[1]
    if not abs(loss32 - loss64) <= AGREEMENT * max(1.0, abs(loss32)):
        raise NotCastable(f"the copy's loss {loss64:.6g} differs from the model's {loss32:.6g}")


# -- which precision --------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """In which dtype a check runs, and why (the report's ``precision`` keys).

    ``fallback`` is ``True`` when a float64 copy was wanted and could not be made;
    ``reason`` says why the check runs in ``dtype`` (for a fallback: what failed).
    """

    dtype: str
    cast: bool
    fallback: bool
    reason: str


def refusal(options: CheckOptions, reason: str) -> UsageError:
    """The error for a model that cannot be cast when float64 is required."""
    option = "--require-float64" if options.require_float64 else "--precision float64"
    value = "require_float64=True" if options.require_float64 else "precision='float64'"
    return UsageError(
        f"{option}: the model cannot be checked in float64 ({reason}); without it the "
        f"check falls back to float32 at tolerance {options.tolerance('float32'):g}. "
        f"Received: {value}"
    )


@contextlib.contextmanager
def function_in_precision(
    model: Any, signature: ModelSignature, batch: Batch, options: CheckOptions, build: Build
) -> Iterator[tuple[Any, Choice]]:
    """The loss function to check and the :class:`Choice` of its precision, with Keras's
    dtype set to match for the block.

    ``precision="auto"``: the float64 copy, else the model itself (in float64 if all its
    weights already are, else float32) with ``fallback`` set; ``"float64"`` or
    ``require_float64``: the copy or :func:`refusal`; ``"float32"``: the model itself.
    """
    reason = None
    if options.precision != "float32":
        with keras_dtype("float64"):
            try:
                function = float64_function(model, signature, batch, build)
            except NotCastable as exc:
                if options.float64_required:
                    raise refusal(options, exc.reason) from exc
                reason = exc.reason
            else:
                yield function, Choice("float64", True, False, "a float64 copy of the model")
                return
    dtype = "float64" if all_float64(model) else "float32"
    if reason is not None:
        choice = Choice(dtype, False, True, f"no float64 copy: {reason}")
    elif dtype == "float64":
        choice = Choice(dtype, False, False, "precision='float32', but the model is float64")
    else:
        choice = Choice(dtype, False, False, "precision='float32' was requested")
    with keras_dtype("float64") if dtype == "float64" else contextlib.nullcontext():
        yield build(model, dtype, False), choice


__all__ = [
    "AGREEMENT",
    "Choice",
    "NotCastable",
    "float64_copy",
    "float64_failures",
    "function_in_precision",
    "keras_dtype",
    "wide_config",
]
