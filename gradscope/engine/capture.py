"""Intercepting layer outputs during one forward pass.

Every layer of the model, at any depth (layers of nested models, sublayers of custom
layers and subclassed models), gets its ``call`` replaced *on the instance* for the
duration of a trace.  The replacement calls the original and records what it returned.
Keras's ``Layer.__call__`` machinery (casting, masking, training flag) is untouched, and
the recorded tensors are the very tensors the rest of the model consumes, so the forward
pass is bit-for-bit the one Keras runs.  The gradient engine then differentiates the
loss with respect to those intermediate tensors directly: no probe is added to the graph.

A layer output's gradient is the gradient with respect to what the layer handed to the
rest of the model.  When the returned tensor is also read elsewhere (a layer returning
its input unchanged, like Dropout in inference; a second output computed from the
first, like MultiHeadAttention's scores; the same tensor returned twice), the gradient
with respect to that tensor object would be the total over every reader.  Such an
output is returned as a ``tf.identity`` of itself (same value, same Keras mask and
cached logits), so that its gradient counts only the layer's own consumers.

This is generic: no per-class code.  Shared layers get one record per call.  Calls made
inside a control-flow body (an RNN cell inside ``tf.while_loop``) belong to another
graph and cannot be differentiated from outside; they are recorded with a note.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import _tf
from .._keras_private import copy_tensor_attributes, flatten_layers

LOOP_NOTE = "runs inside a loop (an RNN cell): per-step outputs are not reported"


@dataclass
class LayerNode:
    """A layer reachable from the model, with its slash-joined path from the top."""

    layer: Any
    path: str
    depth: int


@dataclass
class CapturedOutput:
    """One tensor returned by one call of one layer during the traced forward pass."""

    node: LayerNode
    call: int
    output: int
    n_outputs: int
    tensor: Any
    differentiable: bool
    note: str | None = None
    in_loop: bool = False

    @property
    def has_value_stats(self) -> bool:
        """Whether the output's own statistics are computed: a dense float tensor here."""
        return self.note is None and not self.in_loop


@dataclass
class Recording:
    """What one forward pass recorded, in call order."""

    outputs: list[CapturedOutput] = field(default_factory=list)
    calls_per_layer: dict[int, int] = field(default_factory=dict)

    def first_call_order(self) -> dict[int, int]:
        """Map ``id(layer)`` to the position of its first recorded output."""
        order: dict[int, int] = {}
        for position, item in enumerate(self.outputs):
            order.setdefault(id(item.node.layer), position)
        return order


def child_layers(layer: Any) -> list[Any]:
    """The direct sublayers Keras tracks for ``layer`` (any Layer or Model)."""
    return flatten_layers(layer, recursive=False)


def walk_layers(model: Any) -> list[LayerNode]:
    """Every layer below ``model``, depth first, each once, with its path.

    Input layers are left out: they are not called during the forward pass.  A layer
    reachable along two routes keeps the first path found.
    """
    keras = _tf.keras()
    seen: set[int] = set()
    nodes: list[LayerNode] = []

    def visit(parent: Any, prefix: str, depth: int) -> None:
        for child in child_layers(parent):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            if not isinstance(child, keras.layers.InputLayer):
                nodes.append(LayerNode(child, path, depth))
            visit(child, f"{path}/", depth + 1)

    visit(model, "", 0)
    return nodes


def _is_float(tensor: Any) -> bool:
    dtype = getattr(tensor, "dtype", None)
    return bool(getattr(dtype, "is_floating", False))


@contextlib.contextmanager
def patched_calls(
    nodes: list[LayerNode],
    wrap: Callable[[Callable[..., Any], LayerNode], Callable[..., Any]],
) -> Iterator[None]:
    """Replace each node's layer's ``call``, on the instance, by ``wrap(call, node)``
    for the duration of the block; the instances are left as they were found."""
    patched: list[tuple[Any, bool, Any]] = []
    try:
        for node in nodes:
            layer = node.layer
            had_own = "call" in vars(layer)
            previous = vars(layer).get("call")
            layer.call = wrap(layer.call, node)
            patched.append((layer, had_own, previous))
        yield
    finally:
        for layer, had_own, previous in reversed(patched):
            if had_own:
                layer.call = previous
            else:
                del layer.call


class LayerCapture:
    """Records every layer's outputs while a forward pass is traced.

    Use :meth:`recording` around the model call, inside the ``tf.GradientTape`` and inside
    the ``tf.function`` being traced.  The instance patches are removed on exit, so the
    model is left as it was found.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.nodes = walk_layers(model)

    @contextlib.contextmanager
    def recording(self, tape: Any) -> Iterator[Recording]:
        recording = Recording()
        graph = _tf.tensorflow().compat.v1.get_default_graph()

        def wrap(original: Callable[..., Any], node: LayerNode) -> Callable[..., Any]:
            return self._wrap(original, node, recording, tape, graph)

        with patched_calls(self.nodes, wrap):
            yield recording

    def _wrap(
        self,
        original: Callable[..., Any],
        node: LayerNode,
        recording: Recording,
        tape: Any,
        graph: Any,
    ) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            outputs = original(*args, **kwargs)
            return _record(outputs, (args, kwargs), node, recording, tape, graph)

        return call


def read_elsewhere(tensor: Any, earlier: list[Any], call_inputs: set[int]) -> bool:
    """Whether ``tensor`` has readers other than the layer's consumers downstream.

    True when it is one of the call's inputs (handed on unchanged), was already returned
    by this call, or already has consumers in the graph when the call returns (read
    inside the layer, or elsewhere before).
    """
    if id(tensor) in call_inputs or any(tensor is t for t in earlier):
        return True
    consumers = getattr(tensor, "consumers", None)
    return bool(consumers()) if callable(consumers) else False


def separate(tensor: Any) -> Any:
    """``tf.identity(tensor)``, carrying over the Keras attributes the loss and masks read."""
    tf = _tf.tensorflow()
    separated = tf.identity(tensor)
    copy_tensor_attributes(tensor, separated)
    return separated


def identity_chain(tensor: Any) -> list[Any]:
    """``tensor`` and the tensors it is an identity of, following ``Identity`` ops back.

    A model output with cached logits gets its probability-path gradient from a probe
    (see :mod:`gradscope.engine.gradients`); when the output is a :func:`separate` copy,
    the layer outputs it copies carry that gradient too.
    """
    chain = [tensor]
    op = getattr(tensor, "op", None)
    while op is not None and op.type == "Identity" and len(op.inputs) == 1:
        chain.append(op.inputs[0])
        op = getattr(chain[-1], "op", None)
    return chain


def _record(
    outputs: Any,
    call_args: Any,
    node: LayerNode,
    recording: Recording,
    tape: Any,
    graph: Any,
) -> Any:
    """Append one :class:`CapturedOutput` per tensor of ``outputs``; watch float ones.

    Returns ``outputs``, with each float tensor that is also read elsewhere replaced by
    its :func:`separate` copy (see the module docstring).
    """
    tf = _tf.tensorflow()
    call_index = recording.calls_per_layer.get(id(node.layer), 0)
    recording.calls_per_layer[id(node.layer)] = call_index + 1
    flat = tf.nest.flatten(outputs)
    positions = [i for i, t in enumerate(flat) if tf.is_tensor(t)]
    in_other_graph = tf.compat.v1.get_default_graph() is not graph
    call_inputs = {id(t) for t in tf.nest.flatten(call_args) if tf.is_tensor(t)}
    replaced = False
    for index, position in enumerate(positions):
        tensor = flat[position]
        note = None
        differentiable = False
        if in_other_graph:
            note = LOOP_NOTE
        elif isinstance(tensor, tf.SparseTensor | tf.RaggedTensor):
            note = "sparse or ragged output: not supported"
        elif not _is_float(tensor):
            note = f"{tensor.dtype.name} output: no gradient"
        else:
            if read_elsewhere(tensor, [flat[p] for p in positions[:index]], call_inputs):
                tensor = flat[position] = separate(tensor)
                replaced = True
            tape.watch(tensor)
            differentiable = True
        recording.outputs.append(
            CapturedOutput(
                node,
                call_index,
                index,
                len(positions),
                tensor,
                differentiable,
                note,
                in_other_graph,
            )
        )
    return tf.nest.pack_sequence_as(outputs, flat) if replaced else outputs
