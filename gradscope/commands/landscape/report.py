"""The ``landscape`` report: plain, frozen data (schema ``gradscope.landscape/1``).

Like the other reports it holds only Python scalars and tuples; :meth:`LandscapeReport.
to_dict` is exactly the JSON output, with non-finite floats as ``None``.  The loss values
are kept flat, in row-major order of the grid (the last axis varies fastest);
:meth:`LandscapeReport.loss_grid` gives them in the grid's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...render import renders_with
from ...report import BatchInfo, LossInfo, ModelInfo, _JsonMixin, finite_or_none

if TYPE_CHECKING:  # numpy stays out of `gradscope --help`
    import numpy as np

LANDSCAPE_SCHEMA = "gradscope.landscape/1"


@dataclass(frozen=True)
class Axis:
    """One grid axis: its name (``alpha`` for an interpolation, ``x``/``y`` along
    directions) and its coordinates."""

    name: str
    start: float
    stop: float
    values: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": self.start,
            "stop": self.stop,
            "num": len(self.values),
            "values": list(self.values),
        }


@dataclass(frozen=True)
class Directions:
    """What the axes move along.

    ``kind``: ``interpolation`` (from MODEL, alpha = 0, to ``to``, alpha = 1), ``random``
    or ``eigen``.  ``normalization``: ``filter`` (random: each filter of a direction has
    the norm of the same filter of the weights), ``unit`` (eigen: unit eigenvectors, so
    a coordinate is a distance in weight space) or ``none`` (interpolation).
    ``variables``: the trainable variables the directions move; ``zeroed``: those among
    them whose direction is zero (1-D variables of random directions without
    ``include_biases``, filters of zero norm are not listed).  ``eigenvalues``: the
    eigenvalues of eigen directions (Lanczos, descending), else ``None``; ``matrix``: the
    curvature matrix they are eigenvectors of (``hessian``, ``ggn``, ...), else ``None``.
    ``statistics``: how the BatchNorm moving statistics are set at each point:
    ``model`` (MODEL's own), ``interpolated`` (the same interpolation of the two models'
    statistics) or ``recomputed`` (on the data at each point, ``recompute_bn``).
    """

    kind: str
    seed: int
    normalization: str
    include_biases: bool
    variables: tuple[str, ...]
    zeroed: tuple[str, ...]
    statistics: str
    eigenvalues: tuple[float, ...] | None = None
    to: str | None = None
    matrix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "normalization": self.normalization,
            "include_biases": self.include_biases,
            "variables": list(self.variables),
            "zeroed": list(self.zeroed),
            "statistics": self.statistics,
            "eigenvalues": None
            if self.eigenvalues is None
            else [finite_or_none(e) for e in self.eigenvalues],
            "to": self.to,
            "matrix": self.matrix,
        }


@dataclass(frozen=True)
class Timing:
    """How the grid was evaluated: ``points`` in calls of at most ``chunk`` points, each
    call one compiled loop over its points, traced ``traces`` times in all."""

    seconds: float
    points: int
    chunk: int
    traces: int

    def to_dict(self) -> dict[str, Any]:
        per_point = self.seconds / self.points if self.points else None
        return {
            "seconds": self.seconds,
            "points": self.points,
            "chunk": self.chunk,
            "traces": self.traces,
            "seconds_per_point": per_point,
        }


@renders_with("gradscope.commands.landscape.render")
@dataclass(frozen=True)
class LandscapeReport(_JsonMixin):
    """Everything one ``landscape`` run found, as plain data.

    ``loss`` is the loss of MODEL itself (the origin, or alpha = 0); ``losses`` the loss
    at every grid point, row-major; ``other_loss`` the loss of the ``to`` model (alpha =
    1) when interpolating.
    """

    model: ModelInfo
    batch: BatchInfo
    loss: LossInfo
    training: bool
    axes: tuple[Axis, ...]
    losses: tuple[float, ...]
    directions: Directions
    seed: int
    timing: Timing
    other_loss: float | None = None
    schema: str = LANDSCAPE_SCHEMA
    notes: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid's shape: points along each axis."""
        return tuple(len(axis.values) for axis in self.axes)

    def loss_grid(self) -> np.ndarray:
        """The loss values in the grid's shape (``[x]`` or ``[x, y]``), float64."""
        import numpy as np

        return np.asarray(self.losses, dtype=np.float64).reshape(self.shape)

    def points(self) -> list[tuple[float, ...]]:
        """The coordinates of every point, in the order of :attr:`losses`."""
        import numpy as np

        grids = np.meshgrid(*(np.asarray(a.values) for a in self.axes), indexing="ij")
        return [tuple(float(g.flat[i]) for g in grids) for i in range(len(self.losses))]

    def minimum(self) -> tuple[tuple[float, ...], float] | None:
        """The coordinates and loss of the lowest finite point, or ``None``."""
        import numpy as np

        values = np.asarray(self.losses, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            return None
        index = int(np.argmin(np.where(finite, values, np.inf)))
        return self.points()[index], float(values[index])

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure of schema ``gradscope.landscape/1`` (see the README).

        ``losses`` is nested like the grid: a list for one axis, a list of rows (one per
        value of the first axis) for two.
        """
        import numpy as np

        grid = self.loss_grid()
        nested = np.vectorize(finite_or_none, otypes=[object])(grid).tolist()
        minimum = self.minimum()
        out: dict[str, Any] = {
            **self._run_dict(),
            "seed": self.seed,
            "grid": {"axes": [axis.to_dict() for axis in self.axes], "shape": list(self.shape)},
            "losses": nested,
            "minimum": None
            if minimum is None
            else {"coordinates": list(minimum[0]), "loss": minimum[1]},
            "other_loss": finite_or_none(self.other_loss),
            "directions": self.directions.to_dict(),
            "timing": self.timing.to_dict(),
        }
        if self.notes:
            out["notes"] = list(self.notes)
        return out


__all__ = ["LANDSCAPE_SCHEMA", "Axis", "Directions", "LandscapeReport", "Timing"]
