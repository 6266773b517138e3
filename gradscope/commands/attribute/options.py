"""What ``attribute`` computes: the one validated options object of the command.

:class:`AttributeOptions` validates every field when it is built, with Keras-style
messages, so a Python user and the CLI meet the same rules; the CLI reads its defaults
off the dataclass (:func:`defaults`).  The target is written ``loss``, ``predicted`` or
``class:K`` (:func:`parse_target`); the baseline ``zeros``, ``mean`` or the path of a
``.npy``/``.npz`` file (:func:`parse_baseline`).

This module imports neither TensorFlow nor the engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ... import validation
from ...engine.step_memory import default_max_memory
from ...errors import UsageError

Method = Literal["saliency", "gradient-x-input", "smoothgrad", "integrated-gradients", "gradcam"]

METHODS: tuple[str, ...] = get_args(Method)
"""``method``: the input gradient (saliency), the gradient times the input, SmoothGrad
(Smilkov et al. 2017), Integrated Gradients (Sundararajan et al. 2017) and Grad-CAM
(Selvaraju et al. 2017)."""

TargetKind = Literal["loss", "class", "predicted"]
TARGET_SYNTAX = "loss, predicted or class:K (K an integer >= 0)"
BASELINE_KINDS = ("zeros", "mean")
BASELINE_SUFFIXES = (".npy", ".npz")
BASELINE_SYNTAX = "zeros, mean or the path of a .npy file (.npz with one array per input)"

DEFAULT_SEED = 0
DEFAULT_STEPS = 50
DEFAULT_SAMPLES = 25
DEFAULT_NOISE = 0.15
"""SmoothGrad's noise: 15% of the value range, within the 10-20% Smilkov et al. advise."""
MAX_STEPS = 10_000
MAX_SAMPLES = 10_000
MAX_TOP_K = 1_000


@dataclass(frozen=True)
class TargetChoice:
    """A parsed ``--target``: ``kind`` and, for ``class``, the class index."""

    kind: TargetKind
    index: int | None = None

    def __str__(self) -> str:
        return f"class:{self.index}" if self.kind == "class" else self.kind


def _target_error(text: object, why: str) -> UsageError:
    return UsageError(f"--target: {why}; expected {TARGET_SYNTAX}. Received: {text!r}")


def parse_target(text: object) -> TargetChoice:
    """``loss``, ``predicted`` or ``class:K`` as a :class:`TargetChoice`, or a one-line
    :class:`UsageError`."""
    if not isinstance(text, str) or not text.strip():
        raise _target_error(text, "no target")
    cleaned = text.strip().lower()
    if cleaned in ("loss", "predicted"):
        return TargetChoice(cleaned)  # type: ignore[arg-type]
    kind, _, index = cleaned.partition(":")
    if kind != "class":
        raise _target_error(text, "unknown target")
    if not index.strip().isdecimal():
        raise _target_error(text, f"class index {index.strip()!r} is not an integer >= 0")
    return TargetChoice("class", int(index.strip()))


@dataclass(frozen=True)
class BaselineChoice:
    """A parsed ``--baseline``: ``zeros``, ``mean`` or a ``file``'s ``path``."""

    kind: Literal["zeros", "mean", "file"]
    path: str | None = None

    def __str__(self) -> str:
        return self.path if self.kind == "file" and self.path is not None else self.kind


def parse_baseline(text: object) -> BaselineChoice:
    """``zeros``, ``mean`` or a ``.npy``/``.npz`` path as a :class:`BaselineChoice`."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"--baseline: expected {BASELINE_SYNTAX}. Received: {text!r}")
    cleaned = text.strip()
    if cleaned.lower() in BASELINE_KINDS:
        return BaselineChoice(cleaned.lower())  # type: ignore[arg-type]
    if Path(cleaned).suffix.lower() not in BASELINE_SUFFIXES:
        raise UsageError(f"--baseline: expected {BASELINE_SYNTAX}. Received: {text!r}")
    return BaselineChoice("file", cleaned)


@dataclass(frozen=True)
class AttributeOptions:
    """The method, its target and its settings.

    ``target``: ``loss`` (each example's loss), ``predicted`` (the model's score for its
    predicted class) or ``class:K``.  ``output``: the output a class target reads, for a
    model with several.  ``logits``: a class target reads the logits a softmax or
    sigmoid output was computed from instead of the probabilities.  ``layer``: the layer
    Grad-CAM weights (default: the last convolution).  ``steps`` and ``baseline``:
    Integrated Gradients' quadrature points (Gauss-Legendre) and path start.
    ``samples`` and ``noise``: SmoothGrad's noisy copies per example and the noise's
    standard deviation as a fraction of each example's value range.  These four are
    ``None`` for their defaults (:data:`DEFAULT_STEPS`, ``zeros``,
    :data:`DEFAULT_SAMPLES`, :data:`DEFAULT_NOISE`), and refused with another method.
    ``top_k``: the largest attributions listed per example and input.  ``seed`` seeds SmoothGrad's
    noise and the synthetic batch.  ``keep_tensors`` keeps the full attribution arrays
    on the report (for ``--save``, ``--plot`` and ``--html``).
    """

    method: Method = "saliency"
    target: str = "loss"
    output: str | None = None
    logits: bool = False
    layer: str | None = None
    steps: int | None = None
    baseline: str | None = None
    samples: int | None = None
    noise: float | None = None
    top_k: int = 10
    seed: int | None = None
    keep_tensors: bool = False
    max_memory: int = field(default_factory=default_max_memory)

    def __post_init__(self) -> None:
        """Refuse a bad field with one line that names it and what it received."""
        validation.one_of("method", self.method, METHODS)
        parse_target(self.target)
        validation.optional_text("output", self.output)
        validation.flag("logits", self.logits)
        validation.optional_text("layer", self.layer)
        if self.steps is not None:
            validation.integer("steps", self.steps, minimum=1, maximum=MAX_STEPS)
        if self.baseline is not None:
            parse_baseline(self.baseline)
        if self.samples is not None:
            validation.integer("samples", self.samples, minimum=1, maximum=MAX_SAMPLES)
        if self.noise is not None:
            validation.positive_number("noise", self.noise)
        validation.integer("top_k", self.top_k, minimum=0, maximum=MAX_TOP_K)
        validation.optional_integer("seed", self.seed, minimum=0)
        validation.flag("keep_tensors", self.keep_tensors)
        validation.integer("max_memory", self.max_memory, minimum=1)
        self._check_method_options()

    def _check_method_options(self) -> None:
        """Options that belong to one method are refused with another (a typo, or a
        misunderstanding that would otherwise pass silently)."""
        owned = {
            "layer": ("gradcam", self.layer),
            "steps": ("integrated-gradients", self.steps),
            "baseline": ("integrated-gradients", self.baseline),
            "samples": ("smoothgrad", self.samples),
            "noise": ("smoothgrad", self.noise),
        }
        for name, (method, given) in owned.items():
            if given is not None and self.method != method:
                raise UsageError(
                    f"{name}: only used by method {method}. Received: {name} with "
                    f"method {self.method}"
                )
        if self.output is not None and self.target_choice.kind == "loss":
            raise UsageError(
                "output: selects the output of a class target (predicted or class:K); "
                f"the loss target reads every output. Received: output={self.output!r} "
                "with target loss"
            )
        if self.logits and self.target_choice.kind == "loss":
            raise UsageError(
                "logits: reads the logits of a class target (predicted or class:K). "
                "Received: logits=True with target loss"
            )

    @property
    def step_count(self) -> int:
        """Integrated Gradients' quadrature points (:data:`DEFAULT_STEPS` by default)."""
        return DEFAULT_STEPS if self.steps is None else self.steps

    @property
    def sample_count(self) -> int:
        """SmoothGrad's noisy copies per example (:data:`DEFAULT_SAMPLES` by default)."""
        return DEFAULT_SAMPLES if self.samples is None else self.samples

    @property
    def noise_level(self) -> float:
        """SmoothGrad's noise as a fraction of the value range (:data:`DEFAULT_NOISE`)."""
        return DEFAULT_NOISE if self.noise is None else float(self.noise)

    @property
    def target_choice(self) -> TargetChoice:
        """:attr:`target`, parsed."""
        return parse_target(self.target)

    @property
    def baseline_choice(self) -> BaselineChoice:
        """:attr:`baseline`, parsed (``zeros`` by default)."""
        return parse_baseline(self.baseline or "zeros")


def defaults() -> dict[str, Any]:
    """Each field's default, by field name (``max_memory`` left out)."""
    return {
        item.name: item.default
        for item in dataclasses.fields(AttributeOptions)
        if item.default is not dataclasses.MISSING
    }


def resolve_seed(
    options: AttributeOptions | None, seed: int | None
) -> tuple[AttributeOptions, int]:
    """``options`` with the run's one seed filled in (see
    :func:`gradscope.validation.resolve_seed`), and that seed."""
    return validation.resolve_seed(options, seed, AttributeOptions, DEFAULT_SEED)


__all__ = [
    "BASELINE_SYNTAX",
    "DEFAULT_NOISE",
    "DEFAULT_SAMPLES",
    "DEFAULT_SEED",
    "DEFAULT_STEPS",
    "METHODS",
    "TARGET_SYNTAX",
    "AttributeOptions",
    "BaselineChoice",
    "Method",
    "TargetChoice",
    "defaults",
    "parse_baseline",
    "parse_target",
    "resolve_seed",
]
