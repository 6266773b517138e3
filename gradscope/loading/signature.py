"""What a model takes and returns: input and output names, shapes, dtypes and nesting.

Batches are matched against this signature (by name, shape and dtype) before anything
runs, and synthetic batches are generated from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .. import _tf
from .._keras_private import flatten_layers, producing_layer_name
from ..errors import MismatchError, first_line, received

Structure = Literal["single", "list", "dict"]

# Attributes holding the vocabulary size of a layer that takes integer ids (Embedding,
# and the lookup/hashing layers): an input fed straight into such a layer is integer.
VOCAB_ATTRIBUTES = ("input_dim", "num_tokens", "vocabulary_size")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for unknown dimensions, batch first) and dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    @property
    def is_float(self) -> bool:
        return (
            np.issubdtype(np.dtype(self.dtype), np.floating) if self.dtype != "bfloat16" else True
        )

    @property
    def is_integer(self) -> bool:
        return self.dtype != "bfloat16" and np.issubdtype(np.dtype(self.dtype), np.integer)


@dataclass(frozen=True)
class ModelSignature:
    """The model's inputs and outputs, in the order the model declares them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_structure: Structure
    output_structure: Structure

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def pack_inputs(self, arrays: Mapping[str, Any]) -> Any:
        """Arrange named input arrays the way the model's ``call`` expects them."""
        return _pack(self.input_structure, self.input_names, arrays)

    def pack_outputs(self, arrays: Mapping[str, Any]) -> Any:
        """Arrange named target arrays like the model's outputs (for the compiled loss)."""
        return _pack(self.output_structure, self.output_names, arrays)


def _pack(structure: Structure, names: Sequence[str], arrays: Mapping[str, Any]) -> Any:
    if structure == "single":
        return arrays[names[0]]
    if structure == "dict":
        return {name: arrays[name] for name in names}
    return [arrays[name] for name in names]


def _structure_of(struct: Any, count: int) -> Structure:
    if isinstance(struct, dict):
        return "dict"
    if isinstance(struct, list | tuple) and (count > 1 or len(struct) > 1):
        return "list"
    if isinstance(struct, list | tuple):
        return "list" if count > 1 else "single"
    return "single" if count == 1 else "list"


def _tensor_name(tensor: Any, fallback: str) -> str:
    return str(producing_layer_name(tensor) or getattr(tensor, "name", None) or fallback)


def _spec(tensor: Any, name: str) -> TensorSpec:
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
    return TensorSpec(name, shape, dtype)


def model_signature(model: Any) -> ModelSignature:
    """Read the signature of a built model.

    Functional and Sequential models declare their inputs and outputs.  A subclassed
    model does not: its signature is rebuilt from the input shapes it was built with
    (see :func:`subclassed_signature`).
    """
    inputs = list(getattr(model, "inputs", None) or [])
    outputs = list(getattr(model, "outputs", None) or [])
    if not inputs or not outputs:
        return subclassed_signature(model)
    input_names = [_tensor_name(t, f"input_{i}") for i, t in enumerate(inputs)]
    output_names = list(getattr(model, "output_names", None) or [])
    if len(output_names) != len(outputs):
        output_names = [_tensor_name(t, f"output_{i}") for i, t in enumerate(outputs)]
    inputs_struct = _declared_structure(model, "input", inputs)
    if isinstance(inputs_struct, dict):
        input_names, inputs = list(inputs_struct), list(inputs_struct.values())
    outputs_struct = _declared_structure(model, "output", outputs)
    if isinstance(outputs_struct, dict):
        output_names, outputs = list(outputs_struct), list(outputs_struct.values())
    return ModelSignature(
        inputs=tuple(_spec(t, n) for t, n in zip(inputs, input_names, strict=True)),
        outputs=tuple(_spec(t, n) for t, n in zip(outputs, output_names, strict=True)),
        input_structure=_structure_of(inputs_struct, len(inputs)),
        output_structure=_structure_of(outputs_struct, len(outputs)),
    )


def _declared_structure(model: Any, attribute: str, flat: list[Any]) -> Any:
    """``model.input`` or ``model.output``: the tensors in the structure the functional
    model was built with (a dict, list or single tensor), or ``flat`` when that attribute
    is missing or holds other tensors (a Sequential model, or one also called elsewhere)."""
    try:
        struct = getattr(model, attribute)
    except (AttributeError, ValueError):  # a layer never called symbolically
        return flat
    leaves = _tf.tensorflow().nest.flatten(struct)
    same = len(leaves) == len(flat) and {id(t) for t in leaves} == {id(t) for t in flat}
    return struct if same else flat


# -- subclassed models -------------------------------------------------------------------


def vocabulary_of(layer: Any) -> int | None:
    """The vocabulary size of a layer that takes integer ids, or ``None``."""
    for attribute in VOCAB_ATTRIBUTES:
        value = getattr(layer, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _not_built(model: Any, why: str) -> MismatchError:
    return MismatchError(
        f"model {model.name!r} ({type(model).__name__}) has no declared inputs, and {why}; "
        "gradscope needs a Functional or Sequential model, or a subclassed model that was "
        "built (called once on a batch, or built with model.build(input_shape)) before "
        "it was saved."
    )


def _build_input_shape(model: Any) -> Any:
    """The input shape (one shape, a list or a dict of shapes) the model was built with.

    Keras records it on the first call (``get_build_config``) and saves it in the
    ``.keras`` archive, which rebuilds the model with it on load.
    """
    get_config = getattr(model, "get_build_config", None)
    config = get_config() if callable(get_config) else None
    if not config or "input_shape" not in config:
        raise _not_built(model, "no build shapes were recorded for it")
    required = [
        p
        for p in inspect.signature(model.call).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(required) > 1:
        names = ", ".join(p.name for p in required)
        raise MismatchError(
            f"model {model.name!r} ({type(model).__name__}): its call takes {len(required)} "
            f"positional inputs ({names}); gradscope calls a model with one argument (a "
            "tensor, or a list or dict of tensors)."
        )
    return config["input_shape"]


def _is_shape(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(d is None or isinstance(d, int) for d in value)


def _first_parameter(model: Any) -> str:
    parameters = list(inspect.signature(model.call).parameters)
    return parameters[0] if parameters else "inputs"


def _input_layout(model: Any, shape: Any) -> tuple[Structure, list[str], list[tuple[Any, ...]]]:
    """Structure, names and shapes (batch dimension unknown) of the model's inputs."""

    def unbatched(one: Any) -> tuple[Any, ...]:
        if not _is_shape(one) or not one:
            raise _not_built(model, f"its build input shape is not understood ({shape!r})")
        return (None, *one[1:])

    if isinstance(shape, dict):
        return "dict", [str(k) for k in shape], [unbatched(v) for v in shape.values()]
    if _is_shape(shape):
        return "single", [_first_parameter(model)], [unbatched(shape)]
    if isinstance(shape, list | tuple):
        return "list", [f"input_{i}" for i in range(len(shape))], [unbatched(s) for s in shape]
    raise _not_built(model, f"its build input shape is not understood ({shape!r})")


def _float_dtype(model: Any) -> str:
    """Float inputs get the model's variable dtype (float32, or float64 for a float64
    model); never float16: Keras casts inputs to a mixed policy's compute dtype itself."""
    dtype = str(getattr(model, "variable_dtype", None) or "float32")
    return dtype if dtype in ("float32", "float64") else "float32"


def _pack_layout(structure: Structure, names: list[str], leaves: list[Any]) -> Any:
    if structure == "dict":
        return dict(zip(names, leaves, strict=True))
    return leaves[0] if structure == "single" else list(leaves)


def _symbolic_run(model: Any, packed: Any) -> tuple[Any, list[Any], list[Any]]:
    """Call ``model`` on symbolic inputs: its outputs, the placeholders its ``call`` got,
    and the tensors fed to layers that take integer ids (vocabulary layers).

    Keras traces the call in a scratch graph, so nothing is computed and no state (BatchNorm
    statistics, random seeds) changes.  The patches are instance attributes, removed after.
    """
    tf = _tf.tensorflow()
    seen_inputs: list[Any] = []
    fed_ids: list[Any] = []
    vocab_layers = [layer for layer in flatten_layers(model) if vocabulary_of(layer) is not None]

    def recorder(original: Any, sink: list[Any]) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if args:
                sink.extend(t for t in tf.nest.flatten(args[0]) if tf.is_tensor(t))
            return original(*args, **kwargs)

        return call

    patched = [model, *vocab_layers]
    own = [("call" in vars(layer), vars(layer).get("call")) for layer in patched]
    try:
        model.call = recorder(model.call, seen_inputs)
        for layer in vocab_layers:
            layer.call = recorder(layer.call, fed_ids)
        outputs = model(packed)
    finally:
        for layer, (had_own, previous) in zip(patched, own, strict=True):
            if had_own:
                layer.call = previous
            else:
                del layer.call
    return outputs, seen_inputs, fed_ids


def subclassed_signature(model: Any) -> ModelSignature:
    """The signature of a subclassed model, from the shapes it was built with.

    Input names are the dict keys, the ``call`` parameter name for a single input, or
    ``input_<i>`` for a list.  Inputs are float unless they go straight into a layer that
    takes integer ids (an ``Embedding``), found by one symbolic call of the model that
    also gives the outputs' shapes and dtypes.
    """
    keras = _tf.keras()
    structure, names, shapes = _input_layout(model, _build_input_shape(model))
    float_dtype = _float_dtype(model)
    placeholders = [keras.KerasTensor(shape, dtype=float_dtype) for shape in shapes]
    try:
        outputs, seen, fed_ids = _symbolic_run(model, _pack_layout(structure, names, placeholders))
    except Exception as exc:  # whatever the model's own call raises
        raise MismatchError(
            f"model {model.name!r} ({type(model).__name__}): cannot run it on inputs shaped "
            f"like its build shapes {shapes}. {received(first_line(exc))}"
        ) from exc
    # ``call`` got the inputs flattened in tf.nest order (dict keys sorted): map back.
    order = _tf.tensorflow().nest.flatten(_pack_layout(structure, names, list(range(len(names)))))
    integer = {
        order[position]
        for position, tensor in enumerate(seen[: len(names)])
        if any(tensor is fed for fed in fed_ids)
    }
    inputs = tuple(
        TensorSpec(name, shape, "int32" if i in integer else float_dtype)
        for i, (name, shape) in enumerate(zip(names, shapes, strict=True))
    )
    output_specs, output_structure = _output_layout(outputs)
    return ModelSignature(
        inputs=inputs,
        outputs=output_specs,
        input_structure=structure,
        output_structure=output_structure,
    )


def _output_layout(outputs: Any) -> tuple[tuple[TensorSpec, ...], Structure]:
    """Output specs (batch dimension unknown) and structure of symbolic ``outputs``."""
    structure: Structure
    if isinstance(outputs, dict):
        names, leaves, structure = [str(k) for k in outputs], list(outputs.values()), "dict"
    elif isinstance(outputs, list | tuple):
        names = [f"output_{i}" for i in range(len(outputs))]
        leaves, structure = list(outputs), "list"
    else:
        names, leaves, structure = ["output_0"], [outputs], "single"
    specs = []
    for name, tensor in zip(names, leaves, strict=True):
        spec = _spec(tensor, name)
        specs.append(TensorSpec(name, (None, *spec.shape[1:]), spec.dtype))
    return tuple(specs), structure
