"""Attribute reports built by hand, for the renderer, HDF5 and CLI tests.

The numbers follow simple patterns (an input's summary is ``scale`` times a fixed one),
so that a test can write out the text it expects from the numbers put in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradscope.commands.attribute.report import (
    AttributedInput,
    AttributeReport,
    AttributionTensors,
    ExampleAttribution,
    InputAttribution,
    MethodInfo,
    TargetInfo,
    Timing,
    TopPosition,
)
from gradscope.report import BatchInfo, LossInfo, ModelInfo

IMAGE = AttributedInput("pixels", "image", (4, 4, 1), "float32", reduced_axis=2)
TOKENS = AttributedInput(
    "ids", "tokens", (6, 8), "float32", through="encoder/embedding", reduced_axis=1
)
FEATURE_MAP = AttributedInput(
    "encoder/conv", "feature_map", (2, 2, 3), "float32", reduced_axis=2, overlay="pixels"
)


def summary(name: str, scale: float, nonfinite: int = 0) -> InputAttribution:
    """An input's summary whose numbers are ``scale`` times a fixed pattern."""
    top = (
        TopPosition((3, 1), 0.5 * scale),
        TopPosition((0, 0), -0.25 * scale),
        TopPosition((2, 2), 0.125 * scale),
        TopPosition((1, 3), 0.0625 * scale),
    )
    return InputAttribution(
        name, 0.75 * scale, 1.5 * scale, 0.625 * scale, 0.5 * scale, nonfinite, top
    )


def build_report(
    method: MethodInfo,
    inputs: tuple[AttributedInput, ...],
    examples: tuple[ExampleAttribution, ...],
    **extra: Any,
) -> AttributeReport:
    """A report of the ``cnn`` sample's shape; ``extra``: ``target`` and other fields."""
    return AttributeReport(
        model=ModelInfo("cnn", "Sequential", "cnn.keras", "keras", 1234, 5),
        batch=BatchInfo("file", len(examples), path="cnn.npz"),
        loss=LossInfo(0.25, "compiled: sparse_categorical_crossentropy", "compiled"),
        method=method,
        target=extra.pop("target", TargetInfo("loss")),
        inputs=inputs,
        examples=examples,
        seed=7,
        timing=Timing(seconds=1.25, rows=150, chunk_rows=64, traces=1),
        **extra,
    )


def saliency(count: int = 2) -> AttributeReport:
    """``count`` examples of a loss target; example i's numbers are (i + 1) times the
    pattern of :func:`summary`."""
    examples = tuple(
        ExampleAttribution(i, None, 1.0 + i, (summary("pixels", 1.0 + i),)) for i in range(count)
    )
    return build_report(MethodInfo("saliency"), (IMAGE,), examples)


def integrated_gradients() -> AttributeReport:
    """Two inputs; example 1 is off by 3.2%, example 2 has no error (f(x) = f(x'))."""
    examples = (
        ExampleAttribution(
            0, 2, 0.875, (summary("pixels", 1.0), summary("ids", 2.0)), 0.125, 0.004
        ),
        ExampleAttribution(1, 2, 0.5, (summary("pixels", 4.0), summary("ids", 0.5)), 0.25, 0.032),
        ExampleAttribution(2, 0, 0.5, (summary("pixels", 8.0), summary("ids", 1.0, 3)), 0.5, None),
    )
    method = MethodInfo("integrated-gradients", steps=50, rule="gauss-legendre", baseline="mean")
    target = TargetInfo("class", 2, output="probs", logits=True)
    return build_report(method, (IMAGE, TOKENS), examples, target=target, notes=("one note",))


def gradcam() -> AttributeReport:
    """One example, the map of a layer whose path holds a ``/``, drawn over ``pixels``."""
    examples = (ExampleAttribution(0, 1, 0.75, (summary("encoder/conv", 1.0),)),)
    method = MethodInfo("gradcam", layer="encoder/conv", chosen=True)
    return build_report(method, (FEATURE_MAP,), examples, target=TargetInfo("predicted"))


def smoothgrad() -> AttributeReport:
    """One example whose score is NaN and whose attribution is infinite."""
    examples = (ExampleAttribution(0, None, float("nan"), (summary("pixels", float("inf")),)),)
    method = MethodInfo("smoothgrad", samples=25, noise=0.15)
    return build_report(method, (IMAGE,), examples, training=False)


def ig_tensors() -> AttributionTensors:
    """Arrays for :func:`integrated_gradients`: three examples, ``ids`` with padding."""
    rng = np.random.default_rng(0)
    return AttributionTensors(
        attributions={
            "pixels": rng.normal(size=(3, 4, 4, 1)).astype(np.float32),
            "ids": rng.normal(size=(3, 6, 8)).astype(np.float32),
        },
        inputs={
            "pixels": rng.normal(size=(3, 4, 4, 1)).astype(np.float32),
            "ids": rng.integers(0, 50, size=(3, 6)).astype(np.int32),
        },
        masks={"ids": np.array([[True] * 6, [True] * 4 + [False] * 2, [True] * 2 + [False] * 4])},
    )
