"""What a model takes and returns: input and output names, shapes, dtypes and nesting.

Batches are matched against this signature (by name, shape and dtype) before anything
runs, and synthetic batches are generated from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import MismatchError

Structure = Literal["single", "list", "dict"]


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
    history = getattr(tensor, "_keras_history", None)
    operation = getattr(history, "operation", None)
    return str(getattr(operation, "name", None) or getattr(tensor, "name", None) or fallback)


def _spec(tensor: Any, name: str) -> TensorSpec:
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
    return TensorSpec(name, shape, dtype)


def model_signature(model: Any) -> ModelSignature:
    """Read the signature of a built Functional or Sequential model."""
    inputs = list(getattr(model, "inputs", None) or [])
    outputs = list(getattr(model, "outputs", None) or [])
    if not inputs or not outputs:
        raise MismatchError(
            f"model {model.name!r} ({type(model).__name__}) has no known inputs or outputs; "
            "gradscope needs a built Functional or Sequential model."
        )
    input_names = [_tensor_name(t, f"input_{i}") for i, t in enumerate(inputs)]
    output_names = list(getattr(model, "output_names", None) or [])
    if len(output_names) != len(outputs):
        output_names = [_tensor_name(t, f"output_{i}") for i, t in enumerate(outputs)]
    inputs_struct = getattr(model, "_inputs_struct", None)
    if isinstance(inputs_struct, dict):
        input_names, inputs = list(inputs_struct), list(inputs_struct.values())
    outputs_struct = getattr(model, "_outputs_struct", None)
    if isinstance(outputs_struct, dict):
        output_names, outputs = list(outputs_struct), list(outputs_struct.values())
    return ModelSignature(
        inputs=tuple(_spec(t, n) for t, n in zip(inputs, input_names, strict=True)),
        outputs=tuple(_spec(t, n) for t, n in zip(outputs, output_names, strict=True)),
        input_structure=_structure_of(getattr(model, "_inputs_struct", inputs), len(inputs)),
        output_structure=_structure_of(getattr(model, "_outputs_struct", outputs), len(outputs)),
    )
