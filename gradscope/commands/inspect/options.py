"""``InspectOptions``: what ``inspect`` computes, validated once, for the CLI and Python."""

from __future__ import annotations

from dataclasses import dataclass

from ... import validation
from ...health import Thresholds
from ...loading.synthetic import DEFAULT_ROWS
from ...selection import parse_selector


@dataclass(frozen=True)
class InspectOptions:
    """How to inspect: the loss override, mode, seed, synthetic rows, row filter.

    Every field is checked when the object is made (a :class:`~gradscope.errors.UsageError`
    with a Keras-style message), so the CLI and a Python caller meet the same rules.
    ``max_memory=None`` means the default budget (:mod:`gradscope.engine.step_memory`).
    """

    loss: str | None = None
    training: bool = False
    seed: int = 0
    rows: int = DEFAULT_ROWS
    layers: str | None = None
    keep_tensors: bool = False
    batch_size: int | None = None
    max_batches: int | None = None
    per_sample: bool = False
    thresholds: Thresholds | None = None
    max_memory: int | None = None

    def __post_init__(self) -> None:
        validation.optional_text("loss", self.loss)
        validation.flag("training", self.training)
        validation.integer("seed", self.seed, minimum=0)
        validation.integer("rows", self.rows, minimum=1)
        parse_selector("--layers", self.layers)
        validation.flag("keep_tensors", self.keep_tensors)
        validation.optional_integer("batch_size", self.batch_size, minimum=1)
        validation.optional_integer("max_batches", self.max_batches, minimum=1)
        validation.flag("per_sample", self.per_sample)
        validation.optional_integer("max_memory", self.max_memory, minimum=1)

    @property
    def batching(self) -> bool:
        """Whether the data is cut into batches of ``batch_size`` rows."""
        return self.batch_size is not None
