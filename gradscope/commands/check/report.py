"""The ``check`` report: plain, frozen data (schema ``gradscope.check/1``).

A :class:`CheckReport` says, for each checked trainable variable and float model input,
how far the autodiff gradient is from central finite differences on a sample of
coordinates, and whether that is within the tolerance.  Like the inspect report it holds
only Python scalars, strings and tuples; :meth:`CheckReport.to_dict` is exactly the JSON
structure, with non-finite floats written as ``null`` (the row's ``nonfinite`` count
says why a value is missing).

Keys added since the first release of ``gradscope.check/1`` (additions keep the schema
name; a renamed or removed key would bump it): ``unchecked`` and ``allow_unchecked`` at
the top level, ``requested``, ``fallback`` and ``reason`` in ``precision``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ...render import renders_with
from ...report import BatchInfo, LossInfo, ModelInfo, _JsonMixin, finite_or_none, size_of

CHECK_SCHEMA = "gradscope.check/1"

RowKind = Literal["variable", "input"]


@dataclass(frozen=True)
class CheckedCoordinate:
    """One compared entry: its index in the tensor, both derivatives and their errors.

    ``smooth`` is ``False`` when the loss has a kink within one step of the point (its
    difference quotients do not scale with the step as a smooth function's do): the
    central difference is then no derivative, and the entry is left out of the row's
    errors and verdict.
    """

    index: tuple[int, ...]
    autodiff: float
    numeric: float
    abs_error: float
    rel_error: float
    step: float
    smooth: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": list(self.index),
            "autodiff": finite_or_none(self.autodiff),
            "numeric": finite_or_none(self.numeric),
            "abs_error": finite_or_none(self.abs_error),
            "rel_error": finite_or_none(self.rel_error),
            "step": finite_or_none(self.step),
            "smooth": self.smooth,
        }


@dataclass(frozen=True)
class CheckRow:
    """The check of one trainable variable (``kind="variable"``) or model input.

    ``checked`` counts the compared coordinates that enter the verdict (``nonsmooth``
    ones do not); ``passed`` is ``None`` when nothing could be checked (an integer
    input, or every sampled entry at a kink: :attr:`unchecked`), with a ``note`` saying
    why.  ``coordinates`` lists every compared entry.
    """

    kind: RowKind
    path: str
    layer: str | None
    layer_class: str | None
    shape: tuple[int, ...]
    dtype: str
    checked: int
    nonsmooth: int
    nonfinite: int
    max_rel_error: float | None
    max_abs_error: float | None
    passed: bool | None
    coordinates: tuple[CheckedCoordinate, ...] = ()
    note: str | None = None

    @property
    def unchecked(self) -> bool:
        """Entries were sampled, and every one was left out as non-smooth."""
        return self.checked == 0 and self.nonsmooth > 0

    @property
    def worst(self) -> CheckedCoordinate | None:
        """The smooth coordinate with the largest relative error (``None`` if none)."""
        smooth = [c for c in self.coordinates if c.smooth]
        if not smooth:
            return None
        return max(smooth, key=lambda c: (c.rel_error != c.rel_error, c.rel_error))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "path": self.path,
            "layer": self.layer,
            "class": self.layer_class,
            "shape": list(self.shape),
            "size": size_of(self.shape),
            "dtype": self.dtype,
            "checked": self.checked,
            "nonsmooth": self.nonsmooth,
            "nonfinite": self.nonfinite,
            "max_rel_error": finite_or_none(self.max_rel_error),
            "max_abs_error": finite_or_none(self.max_abs_error),
            "passed": self.passed,
            "coordinates": [c.to_dict() for c in self.coordinates],
        }
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class CheckPrecision:
    """In which precision the check ran, and the step and tolerance it used.

    ``dtype`` is ``float64`` when a float64 copy of the model was checked (``cast``),
    else the model's own ``float32``.  The step of an entry ``w`` is
    ``step * max(1, |w|)``.  A coordinate passes when
    ``|g_ad - g_fd| <= max(tol * max(|g_ad|, |g_fd|), noise)``: ``noise`` is the rounding
    error of the difference quotient, and ``floor = noise / tol`` the gradient magnitude
    below which errors are judged in absolute terms.  Both are given for the step of an
    entry with ``|w| <= 1``; an entry taken with a step ``h`` (its ``step``) has
    ``noise * step / h``.

    ``requested`` is the precision asked for (``auto``, ``float64``, ``float32``);
    ``fallback`` is ``True`` when a float64 copy was wanted and could not be made, and
    ``reason`` says why the check ran in ``dtype`` (for a fallback: what failed).
    """

    dtype: str
    cast: bool
    step: float
    tol: float
    noise: float
    floor: float
    note: str | None = None
    requested: str = "auto"
    fallback: bool = False
    reason: str = "a float64 copy of the model"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "cast": self.cast,
            "step": self.step,
            "tol": self.tol,
            "noise": finite_or_none(self.noise),
            "floor": finite_or_none(self.floor),
            "note": self.note,
            "requested": self.requested,
            "fallback": self.fallback,
            "reason": self.reason,
        }


@renders_with("gradscope.commands.check.render")
@dataclass(frozen=True)
class CheckReport(_JsonMixin):
    """Everything one ``check`` run found, as plain data.

    ``allow_unchecked`` says whether a tensor none of whose sampled entries could be
    checked (each within one step of a kink) may count as a pass.
    """

    model: ModelInfo
    batch: BatchInfo
    loss: LossInfo
    training: bool
    precision: CheckPrecision
    samples: int
    seed: int
    variables: tuple[CheckRow, ...]
    inputs: tuple[CheckRow, ...]
    schema: str = CHECK_SCHEMA
    allow_unchecked: bool = False

    @property
    def rows(self) -> tuple[CheckRow, ...]:
        return self.variables + self.inputs

    @property
    def failed(self) -> tuple[CheckRow, ...]:
        """The rows whose error exceeds the tolerance, in report order."""
        return tuple(row for row in self.rows if row.passed is False)

    @property
    def unchecked(self) -> tuple[CheckRow, ...]:
        """The rows with sampled entries none of which could be checked (each within
        one step of a kink of the loss): no evidence that their gradient is right."""
        return tuple(row for row in self.rows if row.unchecked)

    @property
    def passed(self) -> bool:
        """Whether every checked row is within the tolerance, and every row with sampled
        entries had one that could be checked (unless ``allow_unchecked``)."""
        return not self.failed and (self.allow_unchecked or not self.unchecked)

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure of schema ``gradscope.check/1`` (see the README)."""
        return {
            **self._run_dict(),
            "passed": self.passed,
            "failed": [row.path for row in self.failed],
            "precision": self.precision.to_dict(),
            "samples": self.samples,
            "seed": self.seed,
            "variables": [row.to_dict() for row in self.variables],
            "inputs": [row.to_dict() for row in self.inputs],
            "unchecked": [row.path for row in self.unchecked],
            "allow_unchecked": self.allow_unchecked,
        }
