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

A layer output that *is* a model output (a softmax or sigmoid head) is fed to the loss
through ``tf.identity``, which drops Keras's cached logits, so the loss is computed from
the probabilities and depends on them.  Everything else keeps Keras's own logits path.

Results are numpy float64 copies of the float32 tensors.
"""

from __future__ import annotations

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


def reference_gradients(sample: Sample) -> ReferenceGradients:
    """All gradients of ``sample``'s compiled loss, one eager tape per quantity."""
    tf = _tf.tensorflow()
    model, x, y = sample.model, sample.x, sample.y

    def loss_of(outputs: list[Any]) -> Any:
        y_pred = _pack(model, outputs)
        return model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)

    y_pred = model(x, training=False)
    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
    regularization = float(sum(float(tf.reduce_sum(term)) for term in model.losses))
    ref = ReferenceGradients(loss=float(loss), regularization=regularization)

    for variable in model.trainable_variables:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
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
            loss = model.compute_loss(
                x=packed, y=y, y_pred=model(packed, training=False), training=False
            )
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
