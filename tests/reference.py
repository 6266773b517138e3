"""A slow, obviously-correct reference for gradscope's gradients: one tape per quantity.

Nothing here shares code with gradscope's engine.  Each gradient is its own eager
``tf.GradientTape`` over a fresh forward pass:

* a trainable variable: ``model(x)`` and ``model.compute_loss`` (what ``fit`` minimises,
  regularization included), differentiated with respect to that variable alone;
* a float model input: the same loss, the input tensor watched;
* a layer output: an *extractor* model ``keras.Model(container.inputs, [layer_output,
  *container.outputs])`` built on the container's own graph (no patching of ``call``),
  and the loss differentiated with respect to the extracted intermediate tensor.  For a
  layer inside a nested model, the chain rule: the gradient at the nested model's output
  (the cotangent) is computed first, then a second tape over the nested model alone
  differentiates ``sum(nested_output * cotangent)`` with respect to the inner output.

Models without a usable functional graph (subclassed models, sublayers of custom layers,
shared layers, layers returning several tensors) use :func:`probe_reference` instead:
each layer output is reached by a one-off replacement of that one layer's ``call`` that
adds a watched zero to that one output of that one call (see the section below).

A layer output that *is* a model output (a softmax or sigmoid head) is fed to the loss
through ``tf.identity``, which drops Keras's cached logits, so the loss is computed from
the probabilities and depends on them.  Everything else keeps Keras's own logits path.

Results are numpy float64 copies of the float32 tensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradscope import _tf


@dataclass
class Sample:
    """A model with its batch, packed the way the model is called."""

    model: Any
    x: Any  # the packed inputs (one array, or a list in ``model.inputs`` order)
    y: Any  # the packed targets (one array, or a list in output order)
    input_names: list[str]
    input_arrays: list[np.ndarray]


@dataclass
class ReferenceGradients:
    """Every gradient of one model and batch, each from its own tape, as float64 numpy."""

    loss: float
    regularization: float
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    rows_touched: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)


# -- loading ---------------------------------------------------------------------------


def input_name(tensor: Any) -> str:
    """The name of a model input (its InputLayer's name)."""
    return str(tensor._keras_history.operation.name)


def output_names(model: Any) -> list[str]:
    names = list(getattr(model, "output_names", None) or [])
    if len(names) == len(model.outputs):
        return names
    return [str(t._keras_history.operation.name) for t in model.outputs]


def load_sample(model_path: str | Path, data_path: str | Path) -> Sample:
    """The model (with its compiled loss restored) and its ``.npz`` batch, packed."""
    from gradscope.loading.models import load_model

    model = load_model(model_path).model
    data = dict(np.load(data_path, allow_pickle=False))
    input_names = [input_name(t) for t in model.inputs]
    outputs = output_names(model)
    if len(input_names) == 1:
        key = "x" if "x" in data else input_names[0]
        input_arrays = [data[key]]
    else:
        input_arrays = [data[name] for name in input_names]
    input_arrays = [
        a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a for a in input_arrays
    ]
    if len(outputs) == 1:
        y = data["y"] if "y" in data else data[outputs[0]]
    else:
        y = [data[name] for name in outputs]
    x = input_arrays[0] if len(input_arrays) == 1 else list(input_arrays)
    return Sample(model, x, y, input_names, input_arrays)


# -- the reference ---------------------------------------------------------------------


def _np64(tensor: Any) -> np.ndarray:
    tf = _tf.tensorflow()
    if isinstance(tensor, tf.IndexedSlices):
        tensor = tf.convert_to_tensor(tensor)
    return np.asarray(tensor.numpy(), dtype=np.float64)


def _pack(model: Any, outputs: list[Any]) -> Any:
    return outputs[0] if len(model.outputs) == 1 else list(outputs)


def _layer_nodes_in(container: Any, layer: Any) -> list[Any]:
    """The calls (graph nodes) of ``layer`` recorded in ``container``'s functional graph."""
    graph = getattr(container, "_functional", None) or container
    return [
        node
        for nodes in graph._nodes_by_depth.values()
        for node in nodes
        if node.operation is layer
    ]


def _extractor(container: Any, tensors: list[Any]) -> Any:
    keras = _tf.keras()
    return keras.Model(container.inputs, [*tensors, *container.outputs])


def _layers(container: Any) -> list[Any]:
    keras = _tf.keras()
    return [layer for layer in container.layers if not isinstance(layer, keras.layers.InputLayer)]


def activation_gradients(
    container: Any,
    inputs: list[Any],
    loss_of_outputs: Callable[[list[Any]], Any],
    prefix: str,
    grads: dict[str, np.ndarray],
    values: dict[str, np.ndarray],
) -> None:
    """Gradient of ``loss_of_outputs(container(inputs))`` at every layer output, recursively.

    ``loss_of_outputs`` gets the container's outputs as a list; for the top-level model
    it is the compiled loss, for a nested model ``sum(outputs * cotangent)``.
    """
    tf = _tf.tensorflow()
    keras = _tf.keras()
    for layer in _layers(container):
        nodes = _layer_nodes_in(container, layer)
        if len(nodes) != 1:
            raise NotImplementedError(f"{layer.name}: {len(nodes)} calls in {container.name}")
        node = nodes[0]
        if len(node.output_tensors) != 1:
            raise NotImplementedError(f"{layer.name}: {len(node.output_tensors)} outputs")
        path = prefix + layer.name
        extractor = _extractor(container, list(node.output_tensors))
        with tf.GradientTape() as tape:
            watched = [tf.convert_to_tensor(t) for t in inputs]
            for tensor in watched:
                if tensor.dtype.is_floating:
                    tape.watch(tensor)
            # ``act`` comes from watched variables (and inputs), so the tape records every
            # op between it and the loss.
            act, *outs = extractor(watched, training=False)
            # An output that is this very layer output: route it through tf.identity so
            # that the loss reads the probabilities, not Keras's cached logits.
            fed = [tf.identity(o) if o is act else o for o in outs]
            loss = loss_of_outputs(fed)
        grads[path] = _np64(tape.gradient(loss, act))
        values[path] = _np64(act)
        if isinstance(layer, keras.Model):
            # Chain rule into the nested model: its inputs as fed here, its output
            # gradient as the cotangent of a second tape over the nested model alone.
            feeder = keras.Model(container.inputs, list(node.input_tensors))
            fed_inputs = feeder(inputs, training=False)
            fed_inputs = fed_inputs if isinstance(fed_inputs, list | tuple) else [fed_inputs]
            cotangent = tf.constant(grads[path], dtype=act.dtype)

            def inner_loss(outputs: list[Any], cotangent: Any = cotangent) -> Any:
                (out,) = outputs
                return tf.reduce_sum(out * cotangent)

            activation_gradients(layer, list(fed_inputs), inner_loss, path + "/", grads, values)


def model_loss(
    model: Any, x: Any, y: Any, y_pred: Any, training: bool, sample_weight: Any = None
) -> Any:
    """``model.compute_loss``, given ``training`` only where it takes it (Keras >= 3.4)."""
    keywords = {"x": x, "y": y, "y_pred": y_pred, "sample_weight": sample_weight}
    if "training" in inspect.signature(model.compute_loss).parameters:
        keywords["training"] = training
    return model.compute_loss(**keywords)


def reference_gradients(sample: Sample) -> ReferenceGradients:
    """All gradients of ``sample``'s compiled loss, one eager tape per quantity."""
    tf = _tf.tensorflow()
    model, x, y = sample.model, sample.x, sample.y

    def loss_of(outputs: list[Any]) -> Any:
        y_pred = _pack(model, outputs)
        return model_loss(model, x, y, y_pred, training=False)

    y_pred = model(x, training=False)
    loss = model_loss(model, x, y, y_pred, training=False)
    regularization = float(sum(float(tf.reduce_sum(term)) for term in model.losses))
    ref = ReferenceGradients(loss=float(loss), regularization=regularization)

    for variable in model.trainable_variables:
        with tf.GradientTape() as tape:
            loss = model_loss(model, x, y, model(x, training=False), training=False)
        grad = tape.gradient(loss, variable)
        if grad is None:
            continue
        if isinstance(grad, tf.IndexedSlices):
            ref.rows_touched[variable.path] = int(np.unique(grad.indices.numpy()).size)
        ref.variables[variable.path] = _np64(grad)
        ref.weights[variable.path] = np.asarray(variable.numpy(), dtype=np.float64)

    for index, name in enumerate(sample.input_names):
        array = sample.input_arrays[index]
        if not np.issubdtype(array.dtype, np.floating):
            continue
        tensors = [tf.convert_to_tensor(a) for a in sample.input_arrays]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(tensors[index])
            packed = tensors[0] if len(tensors) == 1 else tensors
            loss = model_loss(model, packed, y, model(packed, training=False), training=False)
        ref.inputs[name] = _np64(tape.gradient(loss, tensors[index]))

    activation_gradients(model, list(sample.input_arrays), loss_of, "", ref.activations, ref.values)
    return ref


# -- statistics in numpy float64 ---------------------------------------------------------


def numpy_stats(array: np.ndarray) -> dict[str, float]:
    """l2, max_abs, mean, std (ddof=0), zero_frac, nonfinite of ``array``, in float64."""
    wide = np.asarray(array, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return _numpy_stats(wide)


def _numpy_stats(wide: np.ndarray) -> dict[str, float]:
    return {
        "l2": float(np.sqrt(np.sum(wide * wide))),
        "max_abs": float(np.max(np.abs(wide))) if wide.size else 0.0,
        "mean": float(np.mean(wide)),
        "std": float(np.std(wide)),
        "zero_frac": float(np.mean(wide == 0)),
        "nonfinite": int(np.sum(~np.isfinite(wide))),
    }


def numpy_dead_frac(array: np.ndarray) -> float | None:
    """Fraction of last-axis units that are exactly zero across all other axes."""
    wide = np.asarray(array)
    if wide.ndim == 0:
        return None
    if wide.ndim == 1:
        return float(np.all(wide == 0))
    per_unit = np.all(wide.reshape(-1, wide.shape[-1]) == 0, axis=0)
    return float(np.mean(per_unit))


# -- models without a functional graph: one perturbed layer call per quantity -----------
#
# A subclassed model, a custom layer's sublayers, a layer called twice or returning
# several tensors have no (or no unique) node in a functional graph, so the extractor
# models above cannot reach them.  This reference reaches them another way: for each
# quantity, a one-off replacement of a single layer's ``call`` returns, at one call and
# one output, ``output + delta`` with ``delta`` a watched zero tensor.  The forward pass
# is otherwise Keras's own, run eagerly, and ``d loss / d delta`` is the gradient with
# respect to what that call handed to the rest of the model (its consumers downstream),
# whatever the layer computed from that tensor internally.


@dataclass(frozen=True)
class Probe:
    """One layer output to differentiate.

    ``path`` is the row path gradscope should report; ``layer`` the layer object;
    ``call`` which call of it (0 = first); ``output`` the position of the tensor among
    the tensors that call returned (in ``tf.nest.flatten`` order).
    """

    path: str
    layer: Any
    call: int = 0
    output: int = 0


class _PerturbedCall:
    """While active, ``probe.layer``'s call number ``probe.call`` adds a watched zero.

    The replacement is an instance attribute, removed on exit, so the layer's class and
    every other layer are untouched.  ``delta`` and ``value`` hold the zero tensor and
    the layer's output as computed (before the zero was added).
    """

    def __init__(self, probe: Probe, tape: Any) -> None:
        self.probe = probe
        self.tape = tape
        self.calls = 0
        self.delta: Any = None
        self.value: Any = None

    def __enter__(self) -> _PerturbedCall:
        layer = self.probe.layer
        self._had_own = "call" in vars(layer)
        self._previous = vars(layer).get("call")
        original = layer.call

        def call(*args: Any, **kwargs: Any) -> Any:
            outputs = original(*args, **kwargs)
            index = self.calls
            self.calls += 1
            return self._perturb(outputs) if index == self.probe.call else outputs

        layer.call = call
        return self

    def _perturb(self, outputs: Any) -> Any:
        tf = _tf.tensorflow()
        flat = tf.nest.flatten(outputs)
        positions = [i for i, t in enumerate(flat) if tf.is_tensor(t)]
        position = positions[self.probe.output]
        tensor = flat[position]
        self.value = tensor
        self.delta = tf.zeros_like(tensor)
        self.tape.watch(self.delta)
        perturbed = tensor + self.delta
        # Keep the mask Keras attached; drop cached logits (``_keras_logits``), so that a
        # crossentropy reads the probabilities and depends on ``delta`` (as with
        # ``tf.identity`` in :func:`activation_gradients`).
        if getattr(tensor, "_keras_mask", None) is not None:
            perturbed._keras_mask = tensor._keras_mask
        flat[position] = perturbed
        return tf.nest.pack_sequence_as(outputs, flat)

    def __exit__(self, *exc_info: object) -> None:
        layer = self.probe.layer
        if self._had_own:
            layer.call = self._previous
        else:
            del layer.call


class _State:
    """The model's non-trainable variables (BatchNorm statistics, dropout seed states).

    Restored before every forward pass, so that in training mode each pass sees the same
    dropout masks as the first, and restored at the end, so the model is left unchanged.
    """

    def __init__(self, model: Any) -> None:
        self.variables = list(model.non_trainable_variables)
        self.saved = [np.array(v.numpy()) for v in self.variables]

    def restore(self) -> None:
        for variable, value in zip(self.variables, self.saved, strict=True):
            variable.assign(value)


def _leaves(x: Any) -> list[Any]:
    tf = _tf.tensorflow()
    return [tf.convert_to_tensor(a) for a in tf.nest.flatten(x)]


def probe_reference(
    model: Any,
    x: Any,
    y: Any,
    probes: list[Probe],
    *,
    training: bool = False,
    input_names: list[str] | None = None,
    sample_weight: Any = None,
) -> ReferenceGradients:
    """Every gradient of ``model.compute_loss`` on ``(x, y)`` (weighted by
    ``sample_weight`` when given), one eager tape per quantity.

    ``x`` is packed the way the model is called (array, list or dict); ``input_names``
    names its leaves in ``tf.nest.flatten`` order (dict keys sort).  Variables and float
    inputs are differentiated directly, layer outputs through :class:`_PerturbedCall`.
    """
    tf = _tf.tensorflow()
    state = _State(model)
    names = input_names or [f"input_{i}" for i in range(len(tf.nest.flatten(x)))]

    def loss_of(inputs: Any) -> Any:
        state.restore()
        y_pred = model(inputs, training=training)
        return model_loss(model, inputs, y, y_pred, training=training, sample_weight=sample_weight)

    try:
        loss = loss_of(x)
        regularization = float(sum(float(tf.reduce_sum(term)) for term in model.losses))
        ref = ReferenceGradients(loss=float(loss), regularization=regularization)
        _variable_references(model, loss_of, x, ref)
        _input_references(x, names, loss_of, ref)
        for probe in probes:
            with tf.GradientTape() as tape, _PerturbedCall(probe, tape) as perturbed:
                loss = loss_of(x)
            if perturbed.delta is None:
                raise AssertionError(f"{probe.path}: call {probe.call} never happened")
            grad = tape.gradient(loss, perturbed.delta)
            ref.values[probe.path] = _np64(perturbed.value)
            ref.dtypes[probe.path] = perturbed.value.dtype.name
            if grad is not None:
                ref.activations[probe.path] = _np64(grad)
    finally:
        state.restore()
    return ref


def _variable_references(
    model: Any, loss_of: Callable[[Any], Any], x: Any, ref: ReferenceGradients
) -> None:
    tf = _tf.tensorflow()
    for variable in model.trainable_variables:
        with tf.GradientTape() as tape:
            loss = loss_of(x)
        grad = tape.gradient(loss, variable)
        if grad is None:
            continue
        if isinstance(grad, tf.IndexedSlices):
            ref.rows_touched[variable.path] = int(np.unique(grad.indices.numpy()).size)
        ref.variables[variable.path] = _np64(grad)
        ref.weights[variable.path] = np.asarray(variable.numpy(), dtype=np.float64)


def _input_references(
    x: Any, names: list[str], loss_of: Callable[[Any], Any], ref: ReferenceGradients
) -> None:
    tf = _tf.tensorflow()
    leaves = _leaves(x)
    for index, name in enumerate(names):
        if not leaves[index].dtype.is_floating:
            continue
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(leaves[index])
            loss = loss_of(tf.nest.pack_sequence_as(x, leaves))
        grad = tape.gradient(loss, leaves[index])
        if grad is not None:
            ref.inputs[name] = _np64(grad)


def find_layer(model: Any, path: str) -> Any:
    """The layer at slash-joined ``path`` below ``model``, by the names of direct children."""
    layer = model
    for name in path.split("/"):
        children = list(layer._flatten_layers(include_self=False, recursive=False))
        matches = [child for child in children if child.name == name]
        if len(matches) != 1:
            raise KeyError(f"{path}: {len(matches)} children named {name!r} in {layer.name}")
        layer = matches[0]
    return layer


def probes_for(model: Any, rows: list[str]) -> list[Probe]:
    """Probes for row paths written as gradscope writes them: ``a/b``, ``a@1``, ``a:0``."""
    probes = []
    for row in rows:
        path, output = row.rsplit(":", 1) if ":" in row else (row, "0")
        path, call = path.rsplit("@", 1) if "@" in path else (path, "0")
        probes.append(Probe(row, find_layer(model, path), int(call), int(output)))
    return probes


def compare(actual: Any, expected: np.ndarray, rtol: float, what: str) -> None:
    """``actual`` equals ``expected`` within ``rtol`` of ``max|expected|`` (finite entries);
    non-finite entries must be the same non-finite value at the same positions."""
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(actual), finite, err_msg=f"{what}: non-finite")
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=what)
    if not finite.any():
        return
    scale = float(np.max(np.abs(expected[finite])))
    np.testing.assert_allclose(
        actual[finite], expected[finite], rtol=rtol, atol=rtol * scale, err_msg=what
    )


def assert_stats(got: Any, array: np.ndarray, rtol: float, what: str) -> None:
    """Report statistics ``got`` describe ``array``: numpy float64 within ``rtol``.

    Counts (exact zeros, non-finite entries) must be equal.  A statistic that numpy finds
    non-finite (an overflowed tensor) must be the same NaN or infinity in ``got``: a
    non-finite value is reported, never hidden.  ``mean`` and ``std`` may be near 0, so
    they also get an absolute tolerance of ``rtol * max|x|``.
    """
    assert got is not None, f"{what}: no statistics"
    want = numpy_stats(array)
    assert got.zero_frac == want["zero_frac"], f"{what}: zero_frac"
    assert got.nonfinite == want["nonfinite"], f"{what}: nonfinite"
    scale = want["max_abs"] if np.isfinite(want["max_abs"]) else 0.0
    for name in ("l2", "max_abs", "mean", "std"):
        value, expected = float(getattr(got, name)), want[name]
        if not np.isfinite(expected):
            assert value == expected or (np.isnan(value) and np.isnan(expected)), (
                f"{what}: {name} {value} != {expected}"
            )
            continue
        absolute = 0.0 if name in ("l2", "max_abs") else rtol * scale
        assert abs(value - expected) <= rtol * abs(expected) + absolute, (
            f"{what}: {name} {value} != {expected}"
        )


# -- one tape for everything: the reference for many models or many batches -----------


@dataclass
class TapeGradients:
    """The loss and, from one eager tape, the gradient of every trainable variable (by
    path; ``None`` where the loss does not depend on it) and of every float input leaf
    (in ``tf.nest.flatten`` order; ``None`` for the others), as float64 numpy."""

    loss: float
    variables: dict[str, np.ndarray | None]
    inputs: list[np.ndarray | None]


def one_tape_gradients(
    model: Any, x: Any, loss_of: Callable[[Any], Any], *, training: bool = False
) -> TapeGradients:
    """``loss_of(model(x, training=training))`` and all its gradients, one eager tape.

    ``loss_of`` is written by the caller (a hand-written loss, or ``model.compute_loss``
    through :func:`model_loss`).  The model's non-trainable state (dropout seeds,
    BatchNorm statistics) is put back afterwards, so that gradscope, run next from the
    same state, draws the same dropout masks.
    """
    tf = _tf.tensorflow()
    state = _State(model)
    leaves = _leaves(x)
    floats = [leaf for leaf in leaves if leaf.dtype.is_floating]
    variables = list(model.trainable_variables)
    try:
        with tf.GradientTape() as tape:
            tape.watch(floats)
            loss = loss_of(model(tf.nest.pack_sequence_as(x, leaves), training=training))
        grads = tape.gradient(loss, [*variables, *floats])
    finally:
        state.restore()
    wide = iter(None if g is None else _np64(g) for g in grads)
    named = {v.path: next(wide) for v in variables}
    inputs = [next(wide) if leaf.dtype.is_floating else None for leaf in leaves]
    return TapeGradients(float(loss), named, inputs)
