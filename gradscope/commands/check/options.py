"""The options of ``gradscope check``, validated on construction.

Every default of the command is defined here and only here: :func:`~.run.check`,
:func:`~.run.check_file` and the CLI all build a :class:`CheckOptions` and take their
defaults from this module, so the three cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...errors import UsageError
from ...selection import parse_selector
from ...validation import flag, integer, one_of, positive_number

Precision = Literal["auto", "float64", "float32"]
PRECISIONS: tuple[str, ...] = ("auto", "float64", "float32")

DEFAULT_PRECISION: Precision = "auto"
"""A float64 copy of the model, or the model in float32 when it cannot be cast."""

DEFAULT_SAMPLES = 16
"""Seeded random entries checked per tensor, besides the largest ones."""

TOP_ENTRIES = 4
"""The entries with the largest |gradient| are always checked: where an error is largest."""

DEFAULT_TOL = {"float64": 1e-5, "float32": 1e-2}
"""Default tolerance on the relative error, by the dtype the check runs in.  In float64
the difference quotient is good to ~1e-10 relative, so 1e-5 leaves a wide margin and
still catches any wrong derivative rule; in float32 rounding alone is ~1e-4..1e-3."""


@dataclass(frozen=True)
class CheckOptions:
    """What to check: which variables, the inputs or not, how many entries, how strictly.

    ``variables`` is a comma-separated list of globs matched against a variable's path
    (``dense/kernel``), its name (``kernel``), and its layer's path or name
    (``dense``).  ``tol`` ``None`` means the default of the dtype the check runs in
    (:data:`DEFAULT_TOL`).  ``precision="float64"`` or ``require_float64=True`` refuse
    the float32 fallback; ``allow_unchecked=True`` lets a tensor none of whose sampled
    entries could be checked (each within one step of a kink) count as a pass.
    Every field is validated on construction; a bad one raises
    :class:`~gradscope.errors.UsageError`.
    """

    variables: str | None = None
    inputs: bool = True
    samples: int = DEFAULT_SAMPLES
    tol: float | None = None
    precision: Precision = DEFAULT_PRECISION
    seed: int = 0
    allow_unchecked: bool = False
    require_float64: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse a field gradscope cannot use (run on construction)."""
        parse_selector("--vars", self.variables)
        flag("inputs", self.inputs)
        integer("samples", self.samples, minimum=0)
        if self.tol is not None:
            positive_number("tol", self.tol)
        one_of("precision", self.precision, PRECISIONS)
        integer("seed", self.seed)
        flag("allow_unchecked", self.allow_unchecked)
        flag("require_float64", self.require_float64)
        if self.require_float64 and self.precision == "float32":
            raise UsageError(
                "require_float64: cannot be combined with precision='float32'. "
                "Received: require_float64=True, precision='float32'"
            )

    @property
    def float64_required(self) -> bool:
        """Whether a model that cannot be cast to float64 is an error, not a fallback."""
        return self.require_float64 or self.precision == "float64"

    def tolerance(self, dtype: str) -> float:
        """``tol``, or the default of ``dtype`` when it is not given."""
        return self.tol if self.tol is not None else DEFAULT_TOL[dtype]


__all__ = [
    "DEFAULT_PRECISION",
    "DEFAULT_SAMPLES",
    "DEFAULT_TOL",
    "PRECISIONS",
    "TOP_ENTRIES",
    "CheckOptions",
    "Precision",
]
