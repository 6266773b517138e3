"""``gradscope check``: the autodiff gradient against central finite differences.

The Keras counterpart of ``torch.autograd.gradcheck``.  For each trainable variable (and
each float model input) a seeded sample of entries is perturbed, the loss evaluated on
both sides, and the difference quotient compared with the gradient TensorFlow computes.
A wrong ``tf.custom_gradient`` in a custom layer, or any other wrong gradient rule, shows
up as a large relative error in the variables and inputs upstream of it.

**Precision** (:mod:`.float64`).  The check runs on a float64 copy of the model where it
can, else on the model itself in float32 with a looser tolerance, the reason recorded in
the report; ``require_float64`` makes that fallback an error.

**Step, tolerance, kinks** (:mod:`.finite_differences`).  The step of an entry ``w`` is
``h = eps^(1/3) * max(1, |w|)``.  A coordinate passes when ``|g_ad - g_fd| <= max(tol *
max(|g_ad|, |g_fd|), noise)``, ``noise`` the rounding error of the difference quotient
(default ``tol`` 1e-5 in float64, 1e-2 in float32).  One that fails is tried again at
``h/4``; whether it then fails or is left out as non-smooth (a kink of the loss within the
step) is decided by how its difference quotients scale with the step.  A tensor none of
whose sampled entries could be checked fails the verdict unless ``allow_unchecked``.

**Training mode** makes the loss random (dropout) and stateful (BatchNorm statistics).
Every evaluation starts from the same non-trainable state (Keras's seed-generator state
included), so every evaluation draws the same dropout mask: the check is of that one
deterministic function.  A loss that still differs between two evaluations at the same
point (random numbers drawn outside Keras's seed state) is refused.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import _keras_private, _tf
from ...engine.capture import walk_layers
from ...errors import LossError, MismatchError, UsageError, first_line
from ...loading.data import Batch, Batches
from ...loading.models import LoadOptions
from ...loading.pipelines import data_argument, parse_pipeline_spec
from ...loading.signature import ModelSignature, model_signature
from ...loading.synthetic import DEFAULT_ROWS
from ...losses import LossSpec, total_loss
from ...report import LossInfo, ModelInfo
from ...selection import parse_selector, select
from ...session import (
    ArrayLike,
    RestoredState,
    guard_proxy_step,
    load_for_cli,
    model_info_of,
    prepare_loss_and_batch,
    variable_owners,
)
from ..inspect.options import InspectOptions
from .finite_differences import Tolerance, compare
from .float64 import Choice, function_in_precision, wide_arrays, wide_loss
from .options import DEFAULT_PRECISION, DEFAULT_SAMPLES, TOP_ENTRIES, CheckOptions, Precision
from .report import CheckedCoordinate, CheckPrecision, CheckReport, CheckRow

LIMIT_ONLY = ("--limit",)
"""What a refusal for memory suggests: ``check`` has no ``--batch-size``."""


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
    inputs: bool = CheckOptions.inputs,
    samples: int = DEFAULT_SAMPLES,
    tol: float | None = None,
    precision: Precision = DEFAULT_PRECISION,
    max_memory: int | None = None,
    allow_unchecked: bool = CheckOptions.allow_unchecked,
    require_float64: bool = CheckOptions.require_float64,
) -> CheckReport:
    """Check the gradient of an in-memory Keras model's loss by finite differences.

    ``x``/``y`` and ``loss``, ``training``, ``seed``, ``rows``, ``max_memory`` are as in
    :func:`gradscope.inspect`; the other arguments are those of :class:`CheckOptions`.
    The model's weights and state are left as they were.  With a pipeline as ``x``
    (a ``tf.data.Dataset``, ``PyDataset`` or generator) only its first batch is read
    and checked: a finite-difference check is of one loss function, on one batch.
    """
    options = CheckOptions(
        variables, inputs, samples, tol, precision, seed, allow_unchecked, require_float64
    )
    signature = model_signature(model)
    data = data_argument(signature, x, y, sample_weight, max_batches=1, budget=max_memory)
    batch = data.first if isinstance(data, Batches) else data  # a pipeline: its first batch
    inspect_options = InspectOptions(loss, training, seed, rows, max_memory=max_memory)
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
    inputs: bool = CheckOptions.inputs,
    samples: int = DEFAULT_SAMPLES,
    tol: float | None = None,
    precision: Precision = DEFAULT_PRECISION,
    custom_objects: str | Path | None = None,
    unsafe: bool = False,
    max_memory: int | None = None,
    allow_unchecked: bool = CheckOptions.allow_unchecked,
    require_float64: bool = CheckOptions.require_float64,
) -> CheckReport:
    """Load a saved model (and a batch file, or synthesize one) and check its gradient.

    Loading is :func:`gradscope.inspect_file`'s (``custom_objects``, ``unsafe``,
    ``max_memory``).
    """
    options = CheckOptions(
        variables, inputs, samples, tol, precision, seed, allow_unchecked, require_float64
    )
    load = LoadOptions.of(custom_objects, unsafe, loss)
    first_only = 1 if parse_pipeline_spec(data_path) else None  # a pipeline: its first batch
    inspect_options = InspectOptions(
        loss, training, seed, limit or DEFAULT_ROWS, max_batches=first_only, max_memory=max_memory
    )
    model, signature, data, info = load_for_cli(
        model_path, data_path, limit, seed, load, inspect_options, LIMIT_ONLY
    )
    batch = data.first if isinstance(data, Batches) else data  # a pipeline: its first batch
    return run_check(model, signature, batch, inspect_options, options, info)


def run_check(
    model: Any,
    signature: ModelSignature,
    batch: Batch | None,
    inspect_options: InspectOptions,
    options: CheckOptions,
    model_info: ModelInfo,
) -> CheckReport:
    """The check pipeline: loss and batch as ``inspect``, then the float64 copy (or the
    model itself, see :func:`~.float64.function_in_precision`), the autodiff gradient
    and the finite differences."""
    spec, batch = prepare_loss_and_batch(model, signature, batch, inspect_options)
    guard_proxy_step(model, signature, spec, batch, inspect_options, LIMIT_ONLY)
    selected = select_variables(model, options.variables)
    training = inspect_options.training

    def build(target: Any, dtype: str, cast: bool) -> _Function:
        return _Function(target, signature, spec, batch, dtype, training, cast=cast)

    with (
        RestoredState(model, training),
        function_in_precision(model, signature, batch, options, build) as (function, choice),
    ):
        return _report(function, selected, options, model_info, batch, spec, choice)


# -- which variables ---------------------------------------------------------------------


@dataclass(frozen=True)
class Selected:
    """A trainable variable to check, with its position and owning layer."""

    variable: Any
    position: int
    layer: str
    layer_class: str


def select_variables(model: Any, globs: str | None) -> list[Selected]:
    """The trainable variables matching ``globs`` (all of them for ``None``).

    ``globs`` is a ``--vars`` selector (:mod:`gradscope.selection`): every glob must
    match something, or it is a usage error naming the close variable and layer names.
    """
    owners = variable_owners(model, walk_layers(model))
    everything = []
    for position, variable in enumerate(model.trainable_variables):
        node = owners.get(id(variable))
        layer = node.path if node else model.name
        cls = type(node.layer).__name__ if node else type(model).__name__
        everything.append(Selected(variable, position, layer, cls))
    selector = parse_selector("--vars", globs)
    return select(everything, lambda s: (s.variable.path, s.layer), selector)


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
        self.inputs = wide_arrays(batch.inputs, dtype)
        targets = batch.targets if spec.needs_targets else None
        self.targets = None if targets is None else wide_arrays(targets, dtype)
        weight = batch.sample_weight
        self.weight = None if weight is None else np.asarray(weight, dtype)
        self.float_inputs = [s.name for s in signature.inputs if s.is_float]
        self.variables = list(model.trainable_variables)
        self._state = [(v, v.numpy()) for v in model.non_trainable_variables] if training else []
        self._override: Any = None
        if spec.kind == "override" and dtype == "float64" and spec.override is not None:
            self._override = wide_loss(_loss_object(spec.override))
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


def check_entry(
    index: tuple[int, ...],
    autodiff: float,
    w0: Any,
    loss_at: Callable[[Any], float],
    f0: float,
    rule: Tolerance,
) -> CheckedCoordinate:
    """Compare ``autodiff`` with the difference quotients of the loss along one entry
    (:func:`~.finite_differences.compare`); ``loss_at(value)`` is the loss with the entry
    set to ``value`` (and put back)."""
    result = compare(autodiff, w0, loss_at, f0, rule)
    return CheckedCoordinate(
        index,
        autodiff,
        result.numeric,
        result.abs_error,
        result.rel_error,
        result.difference.step,
        result.smooth,
    )


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
    rule: Tolerance,
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
    rule: Tolerance,
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
    choice: Choice,
) -> CheckReport:
    """Evaluate the function, its gradient and the finite differences; build the report."""
    f0 = _deterministic_loss(function, spec)
    try:
        _, grads, input_grads = function.gradients()
    except (_tf.tensorflow().errors.InvalidArgumentError, ValueError, TypeError) as exc:
        raise MismatchError(
            f"the model cannot be differentiated on this batch: {first_line(exc)}"
        ) from exc
    tol = options.tolerance(function.dtype)
    rule = Tolerance.of(function.dtype, tol, f0)
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
    return CheckReport(
        model=model_info,
        batch=batch.info,
        loss=LossInfo(value=f0, source=spec.source, kind=spec.kind),
        training=function.training,
        precision=_precision(choice, options, rule),
        samples=options.samples,
        seed=options.seed,
        variables=tuple(variable_rows),
        inputs=tuple(input_rows),
        allow_unchecked=options.allow_unchecked,
    )


def _deterministic_loss(function: _Function, spec: LossSpec) -> float:
    """The loss at the current point; refused when it is not finite, or when a second
    evaluation gives another value (finite differences need one function)."""
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
    return f0


def _precision(choice: Choice, options: CheckOptions, rule: Tolerance) -> CheckPrecision:
    """The report's ``precision``: the dtype, why, the step and the tolerance."""
    note = None
    if choice.fallback:
        note = f"checked in {choice.dtype}, tolerance {rule.tol:g}: {choice.reason}"
    return CheckPrecision(
        dtype=choice.dtype,
        cast=choice.cast,
        step=rule.step,
        tol=rule.tol,
        noise=rule.noise(rule.step),
        floor=rule.noise(rule.step) / rule.tol,
        note=note,
        requested="float64" if options.float64_required else options.precision,
        fallback=choice.fallback,
        reason=choice.reason,
    )


def _input_rows(
    function: _Function,
    input_grads: Mapping[str, np.ndarray],
    batch: Batch,
    options: CheckOptions,
    rule: Tolerance,
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
    "LIMIT_ONLY",
    "CheckOptions",
    "check",
    "check_entry",
    "check_file",
    "run_check",
    "sample_entries",
    "select_variables",
]
