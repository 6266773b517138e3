"""``gradscope check``: the autodiff gradient against central finite differences.

The Keras counterpart of ``torch.autograd.gradcheck``.  For each trainable variable (and
each float model input) a seeded sample of entries is perturbed, the loss evaluated on
both sides, and the difference quotient compared with the gradient TensorFlow computes.
A wrong ``tf.custom_gradient`` in a custom layer, or any other wrong gradient rule, shows
up as a large relative error in the variables and inputs upstream of it.

**Precision.**  Central differences in float32 are accurate to a few 1e-3 at best, so the
check runs on a *float64 copy* of the model where it can: the model's config is rewritten
with every floating dtype (layer dtype policies, float ``Input`` layers, casts inside the
config) set to ``float64``, rebuilt under Keras's ``floatx``/dtype policy set to float64
(both restored afterwards, the cached global policy included), its weights copied and
widened, and its compiled loss rebuilt in float64.  Integer inputs stay integer.  The
copy is accepted only if every floating weight is float64, its outputs and loss match
the model's to float32 precision, and the traced loss has no float16/bfloat16/float32 op
between the inputs or weights and the loss (a custom layer that hard-codes float32).
Otherwise the model itself is checked in float32, with a looser tolerance and a note
saying why.  ``precision="float64"`` refuses that fallback; ``"float32"`` skips the copy.

**Step and tolerance.**  The step of an entry ``w`` is ``h = eps^(1/3) * max(1, |w|)``
(``eps`` of the dtype: 6.1e-6 in float64, 4.9e-3 in float32), which balances the
truncation error of central differences (``h^2 f'''/6``) against rounding
(``eps |L| / h``).  A coordinate passes when ``|g_ad - g_fd| <= max(tol * max(|g_ad|,
|g_fd|), noise)`` with ``noise = NOISE_FACTOR * eps * max(1, |L|) / h``, the rounding
error of the difference quotient: equivalently its relative error
``|g_ad - g_fd| / max(|g_ad|, |g_fd|, noise / tol)`` is at most ``tol`` (default 1e-5 in
float64, 1e-2 in float32).  An entry that fails is tried again at ``h/4``: the loss may
have a kink within the first step (a ReLU unit switching, a max-pool tie).  It passes if
it agrees there; it fails if both quotients agree with each other but not with the
gradient (a wrong derivative); otherwise (the quotient depends on the step, or the
one-sided quotients disagree by at least the error) it is reported as non-smooth and
left out of the verdict.

**Training mode** makes the loss random (dropout) and stateful (BatchNorm statistics).
Every evaluation starts from the same non-trainable state (Keras's seed-generator state
included), so every evaluation draws the same dropout mask: the check is of that one
deterministic function.  A loss that still differs between two evaluations at the same
point (random numbers drawn outside Keras's seed state) is refused.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import _keras_private, _tf
from .api import (
    ArrayLike,
    InspectOptions,
    RestoredState,
    guard_proxy_step,
    load_for_cli,
    model_info_of,
    prepare_loss_and_batch,
    variable_owners,
)
from .check_report import CheckedCoordinate, CheckPrecision, CheckReport, CheckRow
from .engine.capture import walk_layers
from .errors import LossError, MismatchError, UsageError, first_line, received
from .loading.data import Batch, Batches
from .loading.models import LoadOptions
from .loading.pipelines import data_argument, parse_pipeline_spec
from .loading.signature import ModelSignature, model_signature
from .loading.synthetic import DEFAULT_ROWS
from .losses import LossSpec, total_loss
from .report import LossInfo, ModelInfo

Precision = Literal["auto", "float64", "float32"]
PRECISIONS: tuple[str, ...] = ("auto", "float64", "float32")

DEFAULT_SAMPLES = 16
LIMIT_ONLY = ("--limit",)
"""What a refusal for memory suggests: ``check`` has no ``--batch-size``."""
"""Seeded random entries checked per tensor, besides the largest ones."""

TOP_ENTRIES = 4
"""The entries with the largest |gradient| are always checked: where an error is largest."""

DEFAULT_TOL = {"float64": 1e-5, "float32": 1e-2}
"""Default tolerance on the relative error, by the dtype the check runs in.  In float64
the difference quotient is good to ~1e-10 relative, so 1e-5 leaves a wide margin and
still catches any wrong derivative rule; in float32 rounding alone is ~1e-4..1e-3."""

NOISE_FACTOR = 100.0
"""Rounding of one loss evaluation, in units of ``eps * max(1, |L|)``: a forward pass and
its reductions accumulate tens of roundings; 100 is an upper bound that has held on
every sample model (the observed differences are 10-1000x below it)."""

REFINE = 4.0
"""An entry that fails is tried again with its step divided by this (see
:func:`check_entry`)."""

AGREEMENT = 1e-4
"""How closely the float64 copy's outputs and loss must match the model's (relative to
their scale): float32 rounding through a small network is ~1e-6."""


@dataclass(frozen=True)
class CheckOptions:
    """What to check: which variables, the inputs or not, how many entries, how strictly.

    ``variables`` is a comma-separated list of globs matched against a variable's path
    (``dense/kernel``), its name (``kernel``), and its layer's path or name
    (``dense``).  ``tol`` ``None`` means the default of the dtype the check runs in.
    """

    variables: str | None = None
    inputs: bool = True
    samples: int = DEFAULT_SAMPLES
    tol: float | None = None
    precision: Precision = "auto"
    seed: int = 0

    def validate(self) -> None:
        if self.samples < 0:
            raise UsageError(f"--samples: expected a number >= 0. {received(self.samples)}")
        if self.tol is not None and not (self.tol > 0 and math.isfinite(self.tol)):
            raise UsageError(f"--tol: expected a positive number. {received(self.tol)}")
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"--precision: expected one of {', '.join(PRECISIONS)}. "
                f"{received(repr(self.precision))}"
            )


# -- entry points ----------------------------------------------------------------------


def check(
    model: Any,
    x: ArrayLike = None,
    y: ArrayLike = None,
    *,
    sample_weight: ArrayLike = None,
    loss: str | None = None,
    training: bool = False,
    seed: int = 0,
    rows: int = DEFAULT_ROWS,
    variables: str | None = None,
    inputs: bool = True,
    samples: int = DEFAULT_SAMPLES,
    tol: float | None = None,
    precision: Precision = "auto",
    max_memory: int | None = None,
) -> CheckReport:
    """Check the gradient of an in-memory Keras model's loss by finite differences.

    ``x``/``y`` and ``loss``, ``training``, ``seed``, ``rows``, ``max_memory`` are as in
    :func:`gradscope.inspect`; the other arguments are those of :class:`CheckOptions`.
    The model's weights and state are left as they were.  With a pipeline as ``x``
    (a ``tf.data.Dataset``, ``PyDataset`` or generator) only its first batch is read
    and checked: a finite-difference check is of one loss function, on one batch.
    """
    signature = model_signature(model)
    data = data_argument(signature, x, y, sample_weight, max_batches=1, budget=max_memory)
    batch = data.first if isinstance(data, Batches) else data  # a pipeline: its first batch
    inspect_options = InspectOptions(loss, training, seed, rows, max_memory=max_memory)
    options = CheckOptions(variables, inputs, samples, tol, precision, seed)
    info = model_info_of(model, None, "memory")
    return run_check(model, signature, batch, inspect_options, options, info)


def check_file(
    model_path: str | Path,
    data_path: str | Path | None = None,
    *,
    limit: int | None = None,
    loss: str | None = None,
    training: bool = False,
    seed: int = 0,
    variables: str | None = None,
    inputs: bool = True,
    samples: int = DEFAULT_SAMPLES,
    tol: float | None = None,
    precision: Precision = "auto",
    custom_objects: str | Path | None = None,
    unsafe: bool = False,
    max_memory: int | None = None,
) -> CheckReport:
    """Load a saved model (and a batch file, or synthesize one) and check its gradient.

    Loading is :func:`gradscope.inspect_file`'s (``custom_objects``, ``unsafe``,
    ``max_memory``).
    """
    options = CheckOptions(variables, inputs, samples, tol, precision, seed)
    options.validate()
    load = LoadOptions.of(custom_objects, unsafe, loss)
    first_only = 1 if parse_pipeline_spec(data_path) else None  # a pipeline: its first batch
    inspect_options = InspectOptions(
        loss, training, seed, limit or DEFAULT_ROWS, max_batches=first_only, max_memory=max_memory
    )
    model, signature, data, info = load_for_cli(
        model_path, data_path, limit, seed, load, inspect_options, LIMIT_ONLY
    )
    assert data is None or isinstance(data, Batch)  # no --batch-size here
    return run_check(model, signature, data, inspect_options, options, info)


def run_check(
    model: Any,
    signature: ModelSignature,
    batch: Batch | None,
    inspect_options: InspectOptions,
    options: CheckOptions,
    model_info: ModelInfo,
) -> CheckReport:
    """The check pipeline: loss and batch as ``inspect``, then the float64 copy (or the
    model itself), the autodiff gradient and the finite differences."""
    options.validate()
    spec, batch = prepare_loss_and_batch(model, signature, batch, inspect_options)
    guard_proxy_step(model, signature, spec, batch, inspect_options, LIMIT_ONLY)
    selected = select_variables(model, options.variables)
    training = inspect_options.training
    reason = None
    with RestoredState(model, training):
        if options.precision != "float32":
            with keras_dtype("float64"):
                try:
                    function = _float64_function(model, signature, spec, batch, training)
                except NotCastable as exc:
                    reason = exc.reason
                else:
                    return _report(function, selected, options, model_info, batch, spec, None)
            if options.precision == "float64":
                raise UsageError(f"--precision float64: the model cannot be cast: {reason}.")
        dtype = "float64" if _all_float64(model) else "float32"
        note = None
        if reason is not None:
            tol = options.tol or DEFAULT_TOL[dtype]
            note = f"checked in {dtype}, tolerance {tol:g}: no float64 copy ({reason})"
        with keras_dtype("float64") if dtype == "float64" else contextlib.nullcontext():
            function = _Function(model, signature, spec, batch, dtype, training, cast=False)
            return _report(function, selected, options, model_info, batch, spec, note)


# -- which variables ---------------------------------------------------------------------


@dataclass(frozen=True)
class Selected:
    """A trainable variable to check, with its position and owning layer."""

    variable: Any
    position: int
    layer: str
    layer_class: str


def _matches(selected: Selected, pattern: str) -> bool:
    path = selected.variable.path
    names = (path, path.split("/")[-1], selected.layer, selected.layer.split("/")[-1])
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def select_variables(model: Any, globs: str | None) -> list[Selected]:
    """The trainable variables matching ``globs`` (all of them for ``None``).

    Every glob must match something: one that matches nothing is a usage error naming
    the closest variable and layer names.
    """
    owners = variable_owners(model, walk_layers(model))
    everything = []
    for position, variable in enumerate(model.trainable_variables):
        node = owners.get(id(variable))
        layer = node.path if node else model.name
        cls = type(node.layer).__name__ if node else type(model).__name__
        everything.append(Selected(variable, position, layer, cls))
    if globs is None:
        return everything
    patterns = [p.strip() for p in globs.split(",") if p.strip()]
    if not patterns:
        raise UsageError(f"--vars: expected comma-separated globs. {received(repr(globs))}")
    for pattern in patterns:
        if not any(_matches(s, pattern) for s in everything):
            known = sorted({s.variable.path for s in everything} | {s.layer for s in everything})
            close = difflib.get_close_matches(pattern, known, n=3, cutoff=0.5)
            shown = close or known[:8]
            label = "Close names" if close else "Variables and layers"
            hint = f" {label}: {', '.join(shown)}." if shown else " The model has none."
            raise UsageError(f"--vars {pattern!r}: no trainable variable matches.{hint}")
    return [s for s in everything if any(_matches(s, p) for p in patterns)]


# -- a float64 copy of the model -----------------------------------------------------------


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


def _all_float64(model: Any) -> bool:
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


def _wide_loss(loss: Any) -> Any:
    """A compiled loss (a name, function, Loss object or a structure of them) rebuilt so
    that it computes in float64 (call it under :func:`keras_dtype`)."""
    keras = _tf.keras()
    if isinstance(loss, dict):
        return {key: _wide_loss(value) for key, value in loss.items()}
    if isinstance(loss, list | tuple):
        return type(loss)(_wide_loss(value) for value in loss)
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
    try:
        copy.compile(
            loss=_wide_loss(model.loss),  # what was given to compile
            loss_weights=_keras_private.loss_weights(model),
        )
    except NotCastable:
        raise
    except Exception as exc:
        raise NotCastable(f"its loss cannot be rebuilt in float64: {first_line(exc)}") from exc


def float64_copy(model: Any, signature: ModelSignature, batch: Batch) -> Any:
    """A float64 copy of ``model`` with the same weights and compiled loss.

    Call it under :func:`keras_dtype` ``("float64")``.  Raises :class:`NotCastable`
    when the model cannot be rebuilt from its config in float64.
    """
    keras = _tf.keras()
    for node in walk_layers(model):
        if isinstance(node.layer, keras.layers.TFSMLayer):
            raise NotCastable("a SavedModel's graph runs in the dtypes it was saved with")
    try:
        config = keras.saving.serialize_keras_object(model)
    except Exception as exc:
        raise NotCastable(f"its config cannot be serialized: {first_line(exc)}") from exc
    wide = wide_config(config)
    try:
        # The config comes from a model already in memory, not from a file: rebuilding
        # it runs no code that has not run already, so safe mode has nothing to guard.
        with _random_state_kept():
            copy = keras.saving.deserialize_keras_object(
                wide, custom_objects=_classes_of(model), safe_mode=False
            )
            if len(copy.weights) != len(model.weights):  # a subclassed model builds on call
                inputs = signature.pack_inputs(_wide_arrays(batch.inputs, "float64"))
                copy(inputs, training=False)
    except Exception as exc:
        raise NotCastable(f"it cannot be rebuilt in float64: {first_line(exc)}") from exc
    _copy_weights(model, copy)
    trainable = zip(model.trainable_variables, copy.trainable_variables, strict=False)
    if len(copy.trainable_variables) != len(model.trainable_variables) or any(
        a.name != b.name or tuple(a.shape) != tuple(b.shape) for a, b in trainable
    ):
        raise NotCastable("the rebuilt copy's trainable variables do not match the model's")
    _compile_like(model, copy)
    return copy


def _wide_arrays(arrays: Mapping[str, np.ndarray] | None, dtype: str) -> dict[str, np.ndarray]:
    """Floating arrays in ``dtype``; integer and boolean ones as they are."""
    if arrays is None:
        return {}
    return {
        name: a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a
        for name, a in arrays.items()
    }


def _float64_function(
    model: Any, signature: ModelSignature, spec: LossSpec, batch: Batch, training: bool
) -> _Function:
    """The loss of a verified float64 copy of ``model`` (see the module doc)."""
    copy = float64_copy(model, signature, batch)
    try:
        function = _Function(copy, signature, spec, batch, "float64", training, cast=True)
        _check_agreement(model, function, spec, batch)
        culprit = function.low_precision_op()
        function.gradients()  # an op without a float64 kernel fails here, not later
    except NotCastable:
        raise
    except Exception as exc:
        raise NotCastable(f"the copy fails in float64: {first_line(exc)}") from exc
    if culprit is not None:
        raise NotCastable(f"the copy still computes in {culprit[1]} at op {culprit[0]!r}")
    return function


def _check_agreement(model: Any, function: _Function, spec: LossSpec, batch: Batch) -> None:
    """The copy computes the model's outputs and loss, to float32 precision."""
    tf = _tf.tensorflow()
    narrow = function.inference_outputs_and_loss(model, batch)
    wide = function.inference_outputs_and_loss(function.model, None)
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


# -- the loss as a function of the variables and inputs ----------------------------------


def _tf_variable(variable: Any) -> Any:
    """The ``tf.Variable`` behind a Keras variable (or the variable itself)."""
    tf = _tf.tensorflow()
    candidate = getattr(variable, "value", None)
    return candidate if isinstance(candidate, tf.Variable) else variable


class _Function:
    """The loss on one batch as a function of the trainable variables and float inputs,
    computed in ``dtype`` (the batch's floating arrays are cast to it).

    In float32 the loss is exactly :func:`gradscope.losses.total_loss`, as ``inspect``
    differentiates it.  In float64 the compiled loss is the copy's own (compiled in
    float64); a ``--loss`` override, the sum of the outputs and the regularization terms
    are summed in float64 here, since ``total_loss`` rounds them to float32.
    """

    def __init__(
        self,
        model: Any,
        signature: ModelSignature,
        spec: LossSpec,
        batch: Batch,
        dtype: str,
        training: bool,
        *,
        cast: bool,
    ) -> None:
        tf = _tf.tensorflow()
        self.model, self.signature, self.spec = model, signature, spec
        self.dtype, self.training, self.cast = dtype, training, cast
        self.inputs = _wide_arrays(batch.inputs, dtype)
        targets = batch.targets if spec.needs_targets else None
        self.targets = None if targets is None else _wide_arrays(targets, dtype)
        weight = batch.sample_weight
        self.weight = None if weight is None else np.asarray(weight, dtype)
        self.float_inputs = [s.name for s in signature.inputs if s.is_float]
        self.variables = list(model.trainable_variables)
        self._state = [(v, v.numpy()) for v in model.non_trainable_variables] if training else []
        self._override: Any = None
        if spec.kind == "override" and dtype == "float64":
            assert spec.override is not None
            self._override = _wide_loss(_loss_object(spec.override))
        self._targets_t = None if self.targets is None else _tensors(self.targets)
        self._weight_t = None if self.weight is None else tf.constant(self.weight)
        self._inputs_t = _tensors(self.inputs)
        self._loss_fn = tf.function(self._loss_only, autograph=False)
        self._grad_fn = tf.function(self._loss_and_gradients, autograph=False)
        self._gradients: tuple[float, list[np.ndarray], dict[str, np.ndarray]] | None = None

    # traced ----------------------------------------------------------------------------

    def _loss(self, model: Any, inputs: Any, targets: Any, weight: Any, training: bool) -> Any:
        tf = _tf.tensorflow()
        packed = self.signature.pack_inputs(inputs)
        y_pred = model(packed, training=training)
        y_true = None if targets is None else self.signature.pack_outputs(targets)
        if self.dtype == "float32" or self.spec.kind == "compiled":
            value = total_loss(self.spec, model, packed, y_true, y_pred, weight, training)
            return y_pred, value
        wide = tf.float64
        if self.spec.kind == "sum_of_outputs":
            leaves = [tf.reduce_sum(tf.cast(t, wide)) for t in tf.nest.flatten(y_pred)]
            return y_pred, tf.add_n(leaves)
        pairs = zip(tf.nest.flatten(y_true), tf.nest.flatten(y_pred), strict=True)
        terms = [tf.cast(self._override(t, p, weight), wide) for t, p in pairs]
        terms += [tf.cast(tf.reduce_sum(term), wide) for term in model.losses]
        return y_pred, tf.add_n(terms)

    def _loss_only(self, inputs: Any, targets: Any, weight: Any) -> Any:
        return self._loss(self.model, inputs, targets, weight, self.training)[1]

    def _loss_and_gradients(self, inputs: Any, targets: Any, weight: Any) -> Any:
        tf = _tf.tensorflow()
        watched = {name: inputs[name] for name in self.float_inputs}
        with tf.GradientTape() as tape:
            tape.watch(list(watched.values()))
            loss = self._loss_only(inputs, targets, weight)
        sources = {"variables": [_tf_variable(v) for v in self.variables], "inputs": watched}
        grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        dense = tf.nest.map_structure(
            lambda g: tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g,
            grads,
            expand_composites=False,
        )
        return loss, dense

    # eager -----------------------------------------------------------------------------

    def reset_state(self) -> None:
        """Put the non-trainable state (dropout seeds, BatchNorm statistics) back."""
        for variable, value in self._state:
            variable.assign(value)

    def loss(self, inputs: Mapping[str, np.ndarray] | None = None) -> float:
        """The loss at the variables' current values, on ``inputs`` (default: the batch's)."""
        self.reset_state()
        tensors = self._inputs_t if inputs is None else _tensors(inputs)
        return float(self._loss_fn(tensors, self._targets_t, self._weight_t).numpy())

    def gradients(self) -> tuple[float, list[np.ndarray], dict[str, np.ndarray]]:
        """The loss, its gradient for every trainable variable, and for every float input,
        at the variables' values (computed once: the finite differences put every entry
        back)."""
        if self._gradients is None:
            self.reset_state()
            loss, grads = self._grad_fn(self._inputs_t, self._targets_t, self._weight_t)
            variables = [np.asarray(g.numpy()) for g in grads["variables"]]
            inputs = {name: np.asarray(g.numpy()) for name, g in grads["inputs"].items()}
            self._gradients = float(loss.numpy()), variables, inputs
        return self._gradients

    def low_precision_op(self) -> tuple[str, str] | None:
        """The first traced op between an input or weight and the loss whose output is a
        floating dtype narrower than float64: ``(op name, dtype)``, or ``None``."""
        tf = _tf.tensorflow()
        concrete = self._loss_fn.get_concrete_function(
            self._inputs_t, self._targets_t, self._weight_t
        )
        graph = concrete.graph
        output = concrete.outputs[0]
        if output.dtype != tf.float64:
            return output.op.name, output.dtype.name
        upstream: set[str] = set()
        stack = [output.op]
        while stack:
            op = stack.pop()
            if op.name not in upstream:
                upstream.add(op.name)
                stack.extend(t.op for t in op.inputs)
        downstream: set[str] = set()
        narrow = (tf.float16, tf.bfloat16, tf.float32)
        for op in graph.get_operations():  # creation order is a topological order
            if op.type == "Placeholder" or any(t.op.name in downstream for t in op.inputs):
                downstream.add(op.name)
                if op.name in upstream:
                    for tensor in op.outputs:
                        if tensor.dtype in narrow:
                            return op.name, tensor.dtype.name
        return None

    def inference_outputs_and_loss(
        self, model: Any, batch: Batch | None
    ) -> tuple[dict[str, np.ndarray], float]:
        """Outputs (by name) and loss of ``model`` in inference mode, eagerly: on the
        batch as given (``batch``) or on this function's cast arrays (``None``)."""
        tf = _tf.tensorflow()
        if batch is None:
            inputs, targets, weight = self._inputs_t, self._targets_t, self._weight_t
        else:
            inputs = _tensors(batch.inputs)
            targets = None
            if batch.targets is not None and self.spec.needs_targets:
                targets = _tensors(batch.targets)
            weight = None if batch.sample_weight is None else tf.constant(batch.sample_weight)
        if batch is None:
            y_pred, loss = self._loss(model, inputs, targets, weight, False)
        else:
            packed = self.signature.pack_inputs(inputs)
            y_pred = model(packed, training=False)
            y_true = None if targets is None else self.signature.pack_outputs(targets)
            loss = total_loss(self.spec, model, packed, y_true, y_pred, weight, False)
        leaves = tf.nest.flatten(y_pred)
        names = self.signature.output_names
        outputs = {name: leaf.numpy() for name, leaf in zip(names, leaves, strict=True)}
        return outputs, float(loss.numpy())


def _tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tf = _tf.tensorflow()
    return {name: tf.convert_to_tensor(a) for name, a in arrays.items()}


def _loss_object(fn: Any) -> Any:
    """A ``--loss`` function as the Loss object ``compile`` would make of it."""
    keras = _tf.keras()
    if isinstance(fn, keras.losses.Loss):
        return fn
    return _keras_private.loss_function_wrapper(fn, name=getattr(fn, "__name__", None))


# -- the finite differences ----------------------------------------------------------------


@dataclass(frozen=True)
class _Tolerance:
    """The acceptance rule of one run (see :class:`CheckPrecision`).

    ``rounding`` is the rounding error of one loss evaluation, ``NOISE_FACTOR * eps *
    max(1, |L|)``; divided by a step it is the noise of that step's difference quotient.
    """

    step: float
    tol: float
    rounding: float

    def noise(self, step: float) -> float:
        return self.rounding / step

    def within(self, a: float, b: float, noise: float) -> bool:
        """``|a - b| <= max(tol * max(|a|, |b|), noise)`` (``False`` for NaN)."""
        return abs(a - b) <= max(self.tol * max(abs(a), abs(b)), noise)


@dataclass(frozen=True)
class _Difference:
    """Difference quotients of the loss along one entry, at half-step ``step``."""

    step: float
    central: float
    forward: float
    backward: float
    noise: float

    def kink(self, autodiff: float) -> bool:
        """Whether the one-sided quotients disagree by at least the error: the loss has a
        kink within the step.  For a single kink, ``|forward - backward|`` is exactly
        ``2 |central - derivative|``; a wrong derivative of a smooth loss leaves it at
        ``~h f''``, far below the error."""
        return abs(self.forward - self.backward) >= abs(self.central - autodiff)


def _difference(
    w0: Any, step: float, loss_at: Callable[[Any], float], f0: float, rule: _Tolerance
) -> _Difference:
    """Central and one-sided quotients at ``w0 ± step * max(1, |w0|)``, in ``w0``'s dtype
    (the step actually taken is read back from the rounded points)."""
    h = step * max(1.0, abs(float(w0)))
    plus = np.asarray(float(w0) + h, w0.dtype)
    minus = np.asarray(float(w0) - h, w0.dtype)
    f_plus, f_minus = loss_at(plus), loss_at(minus)
    x_plus, x_minus, x0 = float(plus), float(minus), float(w0)
    half = (x_plus - x_minus) / 2
    return _Difference(
        step=half,
        central=(f_plus - f_minus) / (x_plus - x_minus),
        forward=(f_plus - f0) / (x_plus - x0),
        backward=(f0 - f_minus) / (x0 - x_minus),
        noise=rule.noise(half),
    )


def _coordinate(
    index: tuple[int, ...], autodiff: float, difference: _Difference, rule: _Tolerance, smooth: bool
) -> CheckedCoordinate:
    numeric = difference.central
    error = abs(autodiff - numeric)
    floor = difference.noise / rule.tol
    scale = max(abs(autodiff), abs(numeric), floor)
    rel = error / scale if math.isfinite(error) else math.inf
    return CheckedCoordinate(index, autodiff, numeric, error, rel, difference.step, smooth)


def check_entry(
    index: tuple[int, ...],
    autodiff: float,
    w0: Any,
    loss_at: Callable[[Any], float],
    f0: float,
    rule: _Tolerance,
) -> CheckedCoordinate:
    """Compare ``autodiff`` with the difference quotient of the loss along one entry.

    ``loss_at(value)`` is the loss with the entry set to ``value`` (and put back).  An
    entry that fails at the step ``h`` is tried again at ``h / REFINE``: it passes if it
    agrees there (the loss had a kink between the two steps), fails if both quotients
    agree with each other and not with ``autodiff`` (a wrong derivative), and is
    non-smooth otherwise (the quotient depends on the step, or the one-sided quotients
    disagree: a kink within the step), which leaves it out of the verdict.
    """
    first = _difference(w0, rule.step, loss_at, f0, rule)
    if rule.within(autodiff, first.central, first.noise):
        return _coordinate(index, autodiff, first, rule, smooth=True)
    if not (math.isfinite(autodiff) and math.isfinite(first.central)):
        return _coordinate(index, autodiff, first, rule, smooth=True)
    second = _difference(w0, rule.step / REFINE, loss_at, f0, rule)
    if rule.within(autodiff, second.central, second.noise):
        return _coordinate(index, autodiff, second, rule, smooth=True)
    stable = rule.within(first.central, second.central, first.noise + second.noise)
    kink = not stable or first.kink(autodiff) or second.kink(autodiff)
    return _coordinate(index, autodiff, first, rule, smooth=not kink)


def sample_entries(grad: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices to check: the :data:`TOP_ENTRIES` largest |gradient| entries and
    ``samples`` others drawn at random (every entry when that is all of them)."""
    size = int(grad.size)
    if size <= samples + TOP_ENTRIES:
        return np.arange(size)
    magnitude = np.abs(grad.reshape(-1)).astype(np.float64)
    magnitude[~np.isfinite(magnitude)] = np.inf
    top = np.argpartition(-magnitude, TOP_ENTRIES - 1)[:TOP_ENTRIES]
    drawn = rng.choice(size, size=min(size, samples + TOP_ENTRIES), replace=False)
    chosen = set(top.tolist())
    others = [int(i) for i in drawn if int(i) not in chosen][:samples]
    return np.sort(np.concatenate([top, np.asarray(others, dtype=top.dtype)]))


def _rng(seed: int, path: str, kind: str) -> np.random.Generator:
    """One generator per tensor, from the seed and the tensor's name: the entries of a
    variable do not depend on which other variables are selected."""
    return np.random.default_rng([seed, zlib.crc32(f"{kind}:{path}".encode())])


def _check_variable(
    function: _Function,
    variable: Any,
    grad: np.ndarray,
    entries: np.ndarray,
    rule: _Tolerance,
    f0: float,
) -> list[CheckedCoordinate]:
    tf = _tf.tensorflow()
    target = _tf_variable(variable)
    values = np.asarray(variable.numpy())

    def put(index: tuple[int, ...], value: Any) -> None:
        if not values.shape:
            target.assign(value)
        else:
            update = tf.constant(np.reshape(value, [1]), target.dtype)
            target.scatter_nd_update(tf.constant([list(index)], tf.int64), update)

    def loss_at(index: tuple[int, ...], value: Any) -> float:
        put(index, value)
        try:
            return function.loss()
        finally:
            put(index, values[index])

    coordinates = []
    for flat in entries:
        index = tuple(int(i) for i in np.unravel_index(int(flat), values.shape))
        coordinates.append(
            check_entry(
                index,
                float(grad[index]),
                values[index],
                functools.partial(loss_at, index),
                f0,
                rule,
            )
        )
    return coordinates


def _check_input(
    function: _Function,
    name: str,
    grad: np.ndarray,
    entries: np.ndarray,
    rule: _Tolerance,
    f0: float,
) -> list[CheckedCoordinate]:
    arrays = dict(function.inputs)
    values = arrays[name].copy()
    arrays[name] = values

    def loss_at(index: tuple[int, ...], value: Any) -> float:
        original = values[index].copy()
        values[index] = value
        try:
            return function.loss(arrays)
        finally:
            values[index] = original

    coordinates = []
    for flat in entries:
        index = tuple(int(i) for i in np.unravel_index(int(flat), values.shape))
        coordinates.append(
            check_entry(
                index,
                float(grad[index]),
                values[index].copy(),
                functools.partial(loss_at, index),
                f0,
                rule,
            )
        )
    return coordinates


def _row_verdict(coordinates: Sequence[CheckedCoordinate], tol: float) -> dict[str, Any]:
    """The row fields that summarize its coordinates."""
    smooth = [c for c in coordinates if c.smooth]
    nonfinite = sum(
        1 for c in coordinates if not (math.isfinite(c.autodiff) and math.isfinite(c.numeric))
    )
    if not smooth:
        return {
            "checked": 0,
            "nonsmooth": len(coordinates),
            "nonfinite": nonfinite,
            "max_rel_error": None,
            "max_abs_error": None,
            "passed": None if coordinates else True,
        }
    rel = [c.rel_error for c in smooth]
    return {
        "checked": len(smooth),
        "nonsmooth": len(coordinates) - len(smooth),
        "nonfinite": nonfinite,
        "max_rel_error": math.inf if any(r != r for r in rel) else max(rel),
        "max_abs_error": max(c.abs_error for c in smooth),
        "passed": all(r <= tol for r in rel),
    }


def _checked_row(
    kind: Any,
    path: str,
    layer: str | None,
    layer_class: str | None,
    shape: tuple[int, ...],
    dtype: str,
    coordinates: Sequence[CheckedCoordinate],
    tol: float,
) -> CheckRow:
    """The row of one checked variable or input, its verdict summarized from its
    coordinates."""
    fields = _row_verdict(coordinates, tol)
    return CheckRow(
        kind=kind,
        path=path,
        layer=layer,
        layer_class=layer_class,
        shape=shape,
        dtype=dtype,
        coordinates=tuple(coordinates),
        note=_note_of(fields),
        **fields,
    )


def _note_of(fields: Mapping[str, Any]) -> str | None:
    if fields["checked"] == 0 and fields["nonsmooth"]:
        return "every sampled entry is within one step of a kink of the loss"
    if fields["nonfinite"]:
        return "non-finite gradient or loss"
    return None


def _report(
    function: _Function,
    selected: Sequence[Selected],
    options: CheckOptions,
    model_info: ModelInfo,
    batch: Batch,
    spec: LossSpec,
    note: str | None,
) -> CheckReport:
    """Evaluate the function, its gradient and the finite differences; build the report."""
    f0 = function.loss()
    again = function.loss()
    eps = float(np.finfo(function.dtype).eps)
    if not math.isfinite(f0):
        raise LossError(
            f"{spec.source}: the loss is {f0} at the current weights on this batch; "
            "finite differences need a finite loss."
        )
    if abs(again - f0) > 10 * eps * max(1.0, abs(f0)):
        hint = " Run it without --training." if function.training else ""
        raise UsageError(
            "the loss is not a deterministic function of the weights: two evaluations at "
            f"the same point gave {f0!r} and {again!r} (a layer draws random numbers "
            f"outside Keras's seed state); a gradient check needs one function.{hint}"
        )
    try:
        _, grads, input_grads = function.gradients()
    except (_tf.tensorflow().errors.InvalidArgumentError, ValueError, TypeError) as exc:
        raise MismatchError(
            f"the model cannot be differentiated on this batch: {first_line(exc)}"
        ) from exc
    tol = options.tol or DEFAULT_TOL[function.dtype]
    step = eps ** (1.0 / 3.0)
    rule = _Tolerance(step, tol, NOISE_FACTOR * eps * max(1.0, abs(f0)))
    variable_rows = []
    for chosen in selected:
        variable = function.variables[chosen.position]
        grad = grads[chosen.position]
        path = chosen.variable.path
        entries = sample_entries(grad, options.samples, _rng(options.seed, path, "variable"))
        coordinates = _check_variable(function, variable, grad, entries, rule, f0)
        shape = tuple(int(d) for d in chosen.variable.shape)
        variable_rows.append(
            _checked_row(
                "variable",
                path,
                chosen.layer,
                chosen.layer_class,
                shape,
                str(chosen.variable.dtype),
                coordinates,
                tol,
            )
        )
    input_rows = (
        _input_rows(function, input_grads, batch, options, rule, f0) if options.inputs else []
    )
    function.reset_state()
    precision = CheckPrecision(
        dtype=function.dtype,
        cast=function.cast,
        step=step,
        tol=tol,
        noise=rule.noise(step),
        floor=rule.noise(step) / tol,
        note=note,
    )
    return CheckReport(
        model=model_info,
        batch=batch.info,
        loss=LossInfo(value=f0, source=spec.source, kind=spec.kind),
        training=function.training,
        precision=precision,
        samples=options.samples,
        seed=options.seed,
        variables=tuple(variable_rows),
        inputs=tuple(input_rows),
    )


def _input_rows(
    function: _Function,
    input_grads: Mapping[str, np.ndarray],
    batch: Batch,
    options: CheckOptions,
    rule: _Tolerance,
    f0: float,
) -> list[CheckRow]:
    rows = []
    for spec in function.signature.inputs:
        shape = tuple(int(d) for d in batch.inputs[spec.name].shape)
        if spec.name not in input_grads:
            rows.append(
                CheckRow(
                    kind="input",
                    path=spec.name,
                    layer=None,
                    layer_class=None,
                    shape=shape,
                    dtype=spec.dtype,
                    checked=0,
                    nonsmooth=0,
                    nonfinite=0,
                    max_rel_error=None,
                    max_abs_error=None,
                    passed=None,
                    note=f"{spec.dtype} input: not differentiable",
                )
            )
            continue
        grad = input_grads[spec.name]
        entries = sample_entries(grad, options.samples, _rng(options.seed, spec.name, "input"))
        coordinates = _check_input(function, spec.name, grad, entries, rule, f0)
        rows.append(
            _checked_row("input", spec.name, None, None, shape, spec.dtype, coordinates, rule.tol)
        )
    return rows


__all__: Sequence[str] = [
    "CheckOptions",
    "NotCastable",
    "check",
    "check_file",
    "float64_copy",
    "keras_dtype",
    "run_check",
    "sample_entries",
    "select_variables",
    "wide_config",
]
