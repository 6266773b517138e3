"""Seeded synthetic batches, built from the model's input specs and its loss.

* float inputs: standard normal;
* integer inputs: ids below the vocabulary size of the Embedding (or other layer with an
  ``input_dim`` / ``num_tokens``) that consumes them;
* targets: shaped like the outputs and valid for each output's loss: one-hot rows for
  categorical losses, class ids for sparse ones, 0/1 labels for binary crossentropy,
  -1/+1 for hinge losses, non-negative counts for Poisson, standard normal otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._keras_private import call_inputs, flatten_layers
from ..errors import MismatchError
from ..report import BatchInfo
from .data import Batch
from .signature import ModelSignature, TensorSpec, vocabulary_of

DEFAULT_ROWS = 16


def _concrete_shape(spec: TensorSpec, rows: int, what: str) -> tuple[int, ...]:
    unknown = [i for i, d in enumerate(spec.shape[1:], start=1) if d is None]
    if unknown:
        raise MismatchError(
            f"{what} {spec.name!r} has unknown dimensions {unknown} in shape {spec.shape}; "
            "a synthetic batch needs fixed sizes. Give a batch with --data."
        )
    return (rows, *(int(d) for d in spec.shape[1:] if d is not None))


def _consumers(model: Any, tensor: Any) -> list[Any]:
    """Top-level layers of ``model`` that take ``tensor`` as an input."""
    consumers = []
    for layer in getattr(model, "layers", []):
        for inputs in call_inputs(layer):
            if any(t is tensor for t in inputs):
                consumers.append(layer)
    return consumers


def _all_vocabularies(model: Any) -> list[int]:
    layers = flatten_layers(model)
    return [v for v in (vocabulary_of(layer) for layer in layers) if v is not None]


def integer_input_bound(model: Any, index: int) -> int:
    """Exclusive upper bound for ids fed to integer input number ``index``."""
    inputs = list(getattr(model, "inputs", None) or [])
    if index < len(inputs):
        direct = [vocabulary_of(layer) for layer in _consumers(model, inputs[index])]
        known = [v for v in direct if v is not None]
        if known:
            return min(known)
    everywhere = _all_vocabularies(model)
    return min(everywhere) if everywhere else 2


def _target_for(
    loss: str | None, spec: TensorSpec, rows: int, rng: np.random.Generator
) -> np.ndarray:
    name = (loss or "").lower()
    shape = _concrete_shape(spec, rows, "model output")
    classes = shape[-1] if len(shape) > 1 else 1
    if "sparse" in name:
        return rng.integers(0, max(classes, 1), size=shape[:-1] or (rows,)).astype(np.int32)
    if "categorical" in name or "kl_divergence" in name or name == "kld":
        ids = rng.integers(0, classes, size=shape[:-1])
        return np.eye(classes, dtype=np.float32)[ids]
    if "binary" in name:
        return rng.integers(0, 2, size=shape).astype(np.float32)
    if "hinge" in name:
        return (2 * rng.integers(0, 2, size=shape) - 1).astype(np.float32)
    if "poisson" in name:
        return rng.poisson(1.0, size=shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def synthetic_batch(
    model: Any,
    signature: ModelSignature,
    output_losses: Sequence[str | None],
    *,
    rows: int = DEFAULT_ROWS,
    seed: int = 0,
    with_targets: bool = True,
) -> Batch:
    """A reproducible batch of ``rows`` examples for ``model`` (same ``seed``, same batch)."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for index, spec in enumerate(signature.inputs):
        shape = _concrete_shape(spec, rows, "model input")
        if spec.is_integer:
            bound = integer_input_bound(model, index)
            inputs[spec.name] = rng.integers(0, bound, size=shape).astype(spec.dtype)
        else:
            dtype = np.float32 if spec.dtype == "bfloat16" else spec.dtype
            inputs[spec.name] = rng.standard_normal(shape).astype(dtype)
    targets = None
    if with_targets:
        targets = {
            spec.name: _target_for(loss, spec, rows, rng)
            for spec, loss in zip(signature.outputs, output_losses, strict=True)
        }
    info = BatchInfo("synthetic", rows, seed=seed, has_targets=with_targets)
    return Batch(inputs, targets, None, info)
