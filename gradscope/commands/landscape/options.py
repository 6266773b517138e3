"""What ``landscape`` computes: the one validated options object of the command.

:class:`LandscapeOptions` validates every field when it is built, with Keras-style
messages, so a Python user and the CLI meet the same rules; the CLI reads its defaults
off the dataclass (:func:`defaults`).  The grid is written ``START:STOP:NUM`` per axis,
axes separated by a comma: ``-1:1:21`` (a line) or ``-1:1:21,-1:1:21`` (a plane).

This module imports neither TensorFlow nor the engine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from ... import validation
from ...engine.step_memory import default_max_memory
from ...errors import UsageError
from ...selection import parse_selector
from ..hessian.options import MATRICES

if TYPE_CHECKING:
    from ...engine.gauss_newton import Matrix

DirectionKind = Literal["random", "eigen"]

DIRECTIONS: tuple[str, ...] = get_args(DirectionKind)
"""``directions``: random filter-normalized directions (Li et al. 2018), or the top
eigenvectors of the Hessian (Lanczos)."""

DEFAULT_SEED = 0
DEFAULT_GRID = "-1:1:21"
"""The grid along directions: a line from -1 to 1 in steps of 0.1."""
DEFAULT_INTERPOLATION_GRID = "-0.25:1.25:31"
"""The grid of ``--to``: alpha from -0.25 to 1.25 in steps of 0.05, so alpha = 0 (MODEL)
and alpha = 1 (OTHER) are grid points and a little of either side shows too."""
MAX_AXES = 2
MAX_POINTS = 100_000
"""More grid points than this is a typo (``-1:1:21000``), not a landscape."""

GRID_SYNTAX = "START:STOP:NUM for each axis, comma-separated (e.g. -1:1:21 or -1:1:21,-1:1:21)"


@dataclass(frozen=True)
class GridAxis:
    """One axis of the grid: ``num`` evenly spaced values from ``start`` to ``stop``."""

    start: float
    stop: float
    num: int

    def values(self) -> tuple[float, ...]:
        """The axis's coordinates, ``start`` and ``stop`` included (``numpy.linspace``)."""
        span, last = self.stop - self.start, self.num - 1
        return tuple(
            self.start + span * i / last if i < last else self.stop for i in range(self.num)
        )


def _grid_error(text: object, why: str) -> UsageError:
    return UsageError(f"--grid: {why}; expected {GRID_SYNTAX}. Received: {text!r}")


def _number(text: object, part: str, what: str) -> float:
    try:
        value = float(part)
    except ValueError:
        raise _grid_error(text, f"{what} {part!r} is not a number") from None
    if not math.isfinite(value):
        raise _grid_error(text, f"{what} {part!r} is not finite")
    return value


def _axis(text: object, part: str) -> GridAxis:
    pieces = part.strip().split(":")
    if len(pieces) != 3:
        raise _grid_error(text, f"axis {part.strip()!r} does not have three fields")
    start = _number(text, pieces[0], "START")
    stop = _number(text, pieces[1], "STOP")
    count = pieces[2].strip()
    if not count.isdecimal() or int(count) < 2:
        raise _grid_error(text, f"NUM {count!r} is not an integer >= 2")
    if not start < stop:
        raise _grid_error(text, f"START {pieces[0].strip()} is not below STOP {pieces[1].strip()}")
    return GridAxis(start, stop, int(count))


def parse_grid(text: object) -> tuple[GridAxis, ...]:
    """``START:STOP:NUM[,START:STOP:NUM]`` as its axes, or a one-line :class:`UsageError`."""
    if not isinstance(text, str) or not text.strip():
        raise _grid_error(text, "no axis")
    axes = tuple(_axis(text, part) for part in text.split(","))
    if len(axes) > MAX_AXES:
        raise _grid_error(text, f"{len(axes)} axes; a landscape has 1 or 2")
    points = math.prod(axis.num for axis in axes)
    if points > MAX_POINTS:
        raise _grid_error(text, f"{points:,} points, more than {MAX_POINTS:,}")
    return axes


@dataclass(frozen=True)
class LandscapeOptions:
    """The grid, the directions and how each point is evaluated.

    ``grid`` is ``None`` for the default: :data:`DEFAULT_GRID` along directions,
    :data:`DEFAULT_INTERPOLATION_GRID` for an interpolation (``to=``).  ``directions``
    is ``None`` for random directions, and must stay ``None`` with ``to=`` (the line
    from one model to the other is the direction).  ``include_biases`` gives random
    directions a component along the 1-D variables (biases, normalization scales and
    offsets), normalized as one filter each; by default it is zero there.
    ``recompute_bn`` evaluates each point with BatchNorm moving statistics recomputed on
    the data at that point's weights.  ``variables``/``layers`` restrict the directions
    to the selected trainable variables (the others stay put).  ``tol``/``max_iter``
    are Lanczos's, for eigen directions.  ``seed`` seeds the random directions, the
    probe of Lanczos and the synthetic batch.  ``matrix`` is the curvature matrix whose
    top eigenvectors are the eigen directions (``hessian``, ``ggn``, ``fisher`` with one
    seeded draw per example, or ``empirical-fisher``; see ``gradscope hessian``).
    """

    grid: str | None = None
    directions: DirectionKind | None = None
    include_biases: bool = False
    recompute_bn: bool = False
    variables: str | None = None
    layers: str | None = None
    max_memory: int = field(default_factory=default_max_memory)
    tol: float = 1e-3
    max_iter: int = 100
    seed: int | None = None
    matrix: Matrix = "hessian"

    def __post_init__(self) -> None:
        """Refuse a bad field with one line that names it and what it received."""
        if self.grid is not None:
            parse_grid(self.grid)
        if self.directions is not None:
            validation.one_of("directions", self.directions, DIRECTIONS)
        validation.flag("include_biases", self.include_biases)
        validation.flag("recompute_bn", self.recompute_bn)
        parse_selector("--vars", self.variables)
        parse_selector("--layers", self.layers)
        validation.integer("max_memory", self.max_memory, minimum=1)
        validation.positive_number("tol", self.tol)
        validation.integer("max_iter", self.max_iter, minimum=1)
        validation.optional_integer("seed", self.seed, minimum=0)
        validation.one_of("matrix", self.matrix, MATRICES)

    def axes(self, interpolating: bool) -> tuple[GridAxis, ...]:
        """The grid's axes, the default one filled in; an interpolation has one axis."""
        default = DEFAULT_INTERPOLATION_GRID if interpolating else DEFAULT_GRID
        axes = parse_grid(self.grid or default)
        if interpolating and len(axes) != 1:
            raise UsageError(
                "--grid: --to interpolates along one line; expected one axis "
                f"START:STOP:NUM. Received: {self.grid!r}"
            )
        return axes


def defaults() -> dict[str, Any]:
    """Each field's default, by field name (``max_memory`` left out, see hessian's)."""
    return {
        item.name: item.default
        for item in dataclasses.fields(LandscapeOptions)
        if item.default is not dataclasses.MISSING
    }


def resolve_seed(
    options: LandscapeOptions | None, seed: int | None
) -> tuple[LandscapeOptions, int]:
    """``options`` with the run's one seed filled in (``options.seed`` or ``seed``, which
    must agree when both are given, else :data:`DEFAULT_SEED`), and that seed."""
    validation.optional_integer("seed", seed, minimum=0)
    options = options or LandscapeOptions()
    if options.seed is not None and seed is not None and options.seed != seed:
        raise UsageError(
            "seed: given twice with different values; give it once, as seed= or as "
            f"LandscapeOptions(seed=...). Received: seed={seed!r}, options.seed={options.seed!r}"
        )
    chosen = next((s for s in (options.seed, seed) if s is not None), DEFAULT_SEED)
    return dataclasses.replace(options, seed=chosen), chosen


__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_INTERPOLATION_GRID",
    "DEFAULT_SEED",
    "DIRECTIONS",
    "GridAxis",
    "LandscapeOptions",
    "defaults",
    "parse_grid",
    "resolve_seed",
]
