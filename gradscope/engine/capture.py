"""Intercepting layer outputs during one forward pass.

Every layer of the model, at any depth (layers of nested models, sublayers of custom
layers and subclassed models), gets its ``call`` replaced *on the instance* for the
duration of a trace.  The replacement calls the original and records what it returned.
Keras's ``Layer.__call__`` machinery (casting, masking, training flag) is untouched, and
the recorded tensors are the very tensors the rest of the model consumes, so the forward
pass is bit-for-bit the one Keras runs.  The gradient engine then differentiates the
loss with respect to those intermediate tensors directly: no probe is added to the graph.

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
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return []
    return list(flatten(include_self=False, recursive=False))


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
        patched: list[tuple[Any, bool, Any]] = []
        try:
            for node in self.nodes:
                layer = node.layer
                had_own = "call" in vars(layer)
                previous = vars(layer).get("call")
                layer.call = self._wrap(layer.call, node, recording, tape, graph)
                patched.append((layer, had_own, previous))
            yield recording
        finally:
            for layer, had_own, previous in reversed(patched):
                if had_own:
                    layer.call = previous
                else:
                    del layer.call

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
            _record(outputs, node, recording, tape, graph)
            return outputs

        return call


def _record(outputs: Any, node: LayerNode, recording: Recording, tape: Any, graph: Any) -> None:
    """Append one :class:`CapturedOutput` per tensor of ``outputs``; watch float ones."""
    tf = _tf.tensorflow()
    call_index = recording.calls_per_layer.get(id(node.layer), 0)
    recording.calls_per_layer[id(node.layer)] = call_index + 1
    tensors = [t for t in tf.nest.flatten(outputs) if tf.is_tensor(t)]
    in_other_graph = tf.compat.v1.get_default_graph() is not graph
    for index, tensor in enumerate(tensors):
        note = None
        differentiable = False
        if in_other_graph:
            note = LOOP_NOTE
        elif isinstance(tensor, tf.SparseTensor | tf.RaggedTensor):
            note = "sparse or ragged output: not supported"
        elif not _is_float(tensor):
            note = f"{tensor.dtype.name} output: no gradient"
        else:
            tape.watch(tensor)
            differentiable = True
        recording.outputs.append(
            CapturedOutput(
                node, call_index, index, len(tensors), tensor, differentiable, note, in_other_graph
            )
        )
