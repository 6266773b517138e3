"""The ``hessian`` report: plain, frozen data (schema ``gradscope.hessian/1``).

Like the inspect report (:mod:`gradscope.report`, whose shared pieces it uses), it holds
only Python scalars, tuples and numpy arrays; :meth:`HessianReport.to_dict` is exactly
the JSON output, with non-finite floats as ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...render import renders_with
from ...report import BatchInfo, LossInfo, ModelInfo, _JsonMixin, finite_or_none

if TYPE_CHECKING:  # numpy stays out of `gradscope --help`
    import numpy as np

HESSIAN_SCHEMA = "gradscope.hessian/1"


@dataclass(frozen=True)
class Density:
    """A spectral density estimate: ``density`` values on an ascending eigenvalue grid."""

    grid: tuple[float, ...]
    values: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": [finite_or_none(g) for g in self.grid],
            "values": [finite_or_none(v) for v in self.values],
        }


@dataclass(frozen=True)
class SharpParameter:
    """One parameter with one of the largest diagonal entries of its variable: its index
    in the variable, the entry, and the entry's standard error (Hutchinson only)."""

    index: tuple[int, ...]
    value: float
    stderr: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": list(self.index),
            "value": finite_or_none(self.value),
            "stderr": finite_or_none(self.stderr),
        }


@dataclass(frozen=True)
class VariableDiagonal:
    """The diagonal of the block's matrix over one variable (``--diagonal``).

    ``method`` is ``exact`` (read off the exact block) or ``hutchinson`` (estimated with
    Rademacher probes; ``sum_stderr`` and ``mean_stderr`` are then the standard errors of
    the sum and the mean, and ``stderr`` the one of each entry).  ``top`` lists the
    largest entries, the sharpest parameters, largest first.  ``values`` (and ``stderr``)
    have the variable's shape; they go to ``--save``, not to the JSON.
    """

    var: str
    shape: tuple[int, ...]
    method: str
    mean: float
    max: float
    sum: float
    sum_stderr: float | None
    top: tuple[SharpParameter, ...]
    values: np.ndarray = field(compare=False, repr=False)
    stderr: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def mean_stderr(self) -> float | None:
        size = max(1, math.prod(int(d) for d in self.shape))
        return None if self.sum_stderr is None else self.sum_stderr / size

    def to_dict(self) -> dict[str, Any]:
        return {
            "var": self.var,
            "shape": list(self.shape),
            "method": self.method,
            "mean": finite_or_none(self.mean),
            "mean_stderr": finite_or_none(self.mean_stderr),
            "max": finite_or_none(self.max),
            "sum": finite_or_none(self.sum),
            "sum_stderr": finite_or_none(self.sum_stderr),
            "top": [parameter.to_dict() for parameter in self.top],
        }


@dataclass(frozen=True)
class HessianBlock:
    """Curvature of the loss with respect to one block of variables.

    Exact blocks fill every field but ``residuals``; Lanczos blocks leave the fields
    that need the whole matrix (``frobenius``, ``asymmetry``, ``negative_count``, the
    diagonal) as ``None``.  ``eigenvalues`` are the top-k, descending.  Exact blocks also
    keep the matrix itself and its whole spectrum (ascending), and with ``eigenvectors``
    the unit eigenvectors of ``eigenvalues`` (columns, same order), for ``--save``; they
    are not part of the JSON.
    """

    vars: tuple[str, ...]
    layers: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    size: int
    method: str
    eigenvalues: tuple[float, ...]
    min_eigenvalue: float
    trace: float | None
    trace_stderr: float | None
    frobenius: float | None
    condition: float | None
    negative_count: int | None
    asymmetry: float | None
    diagonal: dict[str, float] | None
    iterations: int | None
    residuals: tuple[float, ...] | None
    min_residual: float | None
    converged: bool | None
    density: Density | None
    seconds: float
    matrix: np.ndarray | None = field(default=None, compare=False, repr=False)
    eigenvalues_all: np.ndarray | None = field(default=None, compare=False, repr=False)
    eigenvectors: np.ndarray | None = field(default=None, compare=False, repr=False)
    diagonals: tuple[VariableDiagonal, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "vars": list(self.vars),
            "layers": list(self.layers),
            "shapes": [list(s) for s in self.shapes],
            "size": self.size,
            "method": self.method,
            "eigenvalues": [finite_or_none(e) for e in self.eigenvalues],
            "min_eigenvalue": finite_or_none(self.min_eigenvalue),
            "trace": finite_or_none(self.trace),
            "trace_stderr": finite_or_none(self.trace_stderr),
            "frobenius": finite_or_none(self.frobenius),
            "condition": finite_or_none(self.condition),
            "negative_count": self.negative_count,
            "asymmetry": finite_or_none(self.asymmetry),
            "diagonal": None
            if self.diagonal is None
            else {k: finite_or_none(v) for k, v in self.diagonal.items()},
            "iterations": self.iterations,
            "residuals": None
            if self.residuals is None
            else [finite_or_none(r) for r in self.residuals],
            "min_residual": finite_or_none(self.min_residual),
            "converged": self.converged,
            "seconds": self.seconds,
        }
        if self.density is not None:
            out["density"] = self.density.to_dict()
        if self.diagonals is not None:
            out["diagonals"] = [diagonal.to_dict() for diagonal in self.diagonals]
        return out


@dataclass(frozen=True)
class CrossBlock:
    """An off-diagonal Hessian block between two variables: d2L / (d a d b)."""

    vars: tuple[str, str]
    shape: tuple[int, int]
    frobenius: float
    max_abs: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "vars": list(self.vars),
            "shape": list(self.shape),
            "frobenius": finite_or_none(self.frobenius),
            "max_abs": finite_or_none(self.max_abs),
        }


@renders_with("gradscope.commands.hessian.render")
@dataclass(frozen=True)
class HessianReport(_JsonMixin):
    """Everything one ``hessian`` run found, as plain data.

    ``notes`` records every switch to a slower or different method during the run, with
    its reason (forward-mode products that fell back to reverse mode, exact blocks
    computed one Hessian-vector product per row because they could not be vectorized).
    """

    model: ModelInfo
    batch: BatchInfo
    loss: LossInfo
    training: bool
    blocks: tuple[HessianBlock, ...]
    cross: tuple[CrossBlock, ...] = ()
    schema: str = HESSIAN_SCHEMA
    notes: tuple[str, ...] = ()
    matrix: str = "hessian"
    mc_samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure of schema ``gradscope.hessian/1`` (see the README).

        ``notes`` is present only when there is one, so a run without a fallback gives
        the same JSON as before the key existed.
        """
        out: dict[str, Any] = {
            **self._run_dict(),
            "matrix": self.matrix,
            "blocks": [block.to_dict() for block in self.blocks],
            "cross": [block.to_dict() for block in self.cross],
        }
        if self.mc_samples is not None:
            out["mc_samples"] = self.mc_samples
        if self.notes:
            out["notes"] = list(self.notes)
        return out


__all__ = [
    "HESSIAN_SCHEMA",
    "CrossBlock",
    "Density",
    "HessianBlock",
    "HessianReport",
    "SharpParameter",
    "VariableDiagonal",
]
