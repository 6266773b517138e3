"""Difference quotients of a function of one number, and what they say about a derivative.

Pure numpy (no TensorFlow): ``loss_at(value)`` is any function of one coordinate, so the
rules here are tested on plain 1-D functions (``tests/test_finite_differences.py``).

**Step.**  ``h = step * max(1, |w0|)`` with ``step = eps^(1/3)`` balances the truncation
error of the central quotient (``h^2 f'''/6``) against its rounding error
(``rounding / h``, ``rounding = NOISE_FACTOR * eps * max(1, |f|)``).

**Verdict of one coordinate** (:func:`compare`).  It passes when the central quotient
agrees with the derivative to within ``max(tol * max(|a|, |b|), noise)``.  When it does
not, the quotients are taken again at ``h / REFINE``; agreement there is a pass (a kink of
the loss lay between the two steps).  Otherwise the two steps decide between a wrong
derivative and a kink *by how the quotients scale with the step*.  For a smooth function

* the one-sided gap ``forward - backward = h f'' + O(h^3)`` shrinks in proportion to the
  step: at ``h / REFINE`` it is ``1 / REFINE`` of its value at ``h``;
* the central quotient converges as ``h^2``: the two steps agree to within the tolerance.

At a kink neither holds for long: a slope jump ``J`` at distance ``d < h / REFINE`` gives
gaps ``J (1 - d/h)`` and ``J (1 - REFINE d/h)`` (no shrinking), and when ``d`` happens to
make them scale, the central quotients differ by ``~J d / h``.  So a coordinate whose
quotients scale like a smooth function's and disagree with the derivative *fails*; one
whose quotients do not scale is *non-smooth* and left out of the verdict.  (Comparing the
gap with the error, as gradscope did before, excuses any error below ``h |f''|``: a
derivative 0.3% wrong where ``|f'| < h |f''| / 0.003``.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

NOISE_FACTOR = 100.0
"""Rounding of one loss evaluation, in units of ``eps * max(1, |L|)``: a forward pass and
its reductions accumulate tens of roundings; 100 is an upper bound that has held on
every sample model (the observed differences are 10-1000x below it)."""

REFINE = 4.0
"""An entry that fails is tried again with its step divided by this."""

SCALING_SLACK = 0.5
"""How far the one-sided gap at ``h / REFINE`` may be from ``1 / REFINE`` of the gap at
``h`` (relative) and still count as smooth.  Smooth: off by ``O(h^2 f''''/f'')``, far
below; a kink within the smaller step: off by ``(REFINE - 1)`` times or more."""

GAP_NOISE = 4.0
"""The rounding error of a one-sided gap ``(f(w+h) - 2 f(w) + f(w-h)) / h`` in units of a
central quotient's (``rounding / h``): four roundings over ``h`` against two over ``2h``."""

LossAt = Callable[[Any], float]
"""The loss with one coordinate set to a value (of the coordinate's dtype)."""


@dataclass(frozen=True)
class Tolerance:
    """The acceptance rule of one run.

    ``step`` is the relative step (``eps^(1/3)``), ``tol`` the largest relative error
    that passes, ``rounding`` the rounding error of one loss evaluation; divided by a
    step it is the noise of that step's central quotient.
    """

    step: float
    tol: float
    rounding: float

    @classmethod
    def of(cls, dtype: Any, tol: float, loss: float) -> Tolerance:
        """The rule for a loss ``loss`` computed in ``dtype``."""
        eps = float(np.finfo(dtype).eps)
        return cls(eps ** (1.0 / 3.0), tol, NOISE_FACTOR * eps * max(1.0, abs(loss)))

    def noise(self, step: float) -> float:
        """The rounding error of a central quotient with half-step ``step``."""
        return self.rounding / step

    def within(self, a: float, b: float, noise: float) -> bool:
        """``|a - b| <= max(tol * max(|a|, |b|), noise)`` (``False`` for NaN)."""
        return abs(a - b) <= max(self.tol * max(abs(a), abs(b)), noise)


@dataclass(frozen=True)
class Difference:
    """Difference quotients of the loss along one coordinate, at half-step ``step``."""

    step: float
    central: float
    forward: float
    backward: float
    noise: float

    @property
    def gap(self) -> float:
        """``forward - backward``: ``~step * f''`` where the loss is smooth."""
        return self.forward - self.backward


def difference(w0: Any, step: float, loss_at: LossAt, f0: float, rule: Tolerance) -> Difference:
    """Central and one-sided quotients at ``w0 ± step * max(1, |w0|)``, in ``w0``'s dtype
    (the step actually taken is read back from the rounded points)."""
    h = step * max(1.0, abs(float(w0)))
    dtype = np.asarray(w0).dtype
    plus = np.asarray(float(w0) + h, dtype)
    minus = np.asarray(float(w0) - h, dtype)
    f_plus, f_minus = loss_at(plus), loss_at(minus)
    x_plus, x_minus, x0 = float(plus), float(minus), float(w0)
    half = (x_plus - x_minus) / 2
    return Difference(
        step=half,
        central=(f_plus - f_minus) / (x_plus - x_minus),
        forward=(f_plus - f0) / (x_plus - x0),
        backward=(f0 - f_minus) / (x0 - x_minus),
        noise=rule.noise(half),
    )


def gap_scales(coarse: Difference, fine: Difference) -> bool:
    """Whether the one-sided gap shrinks in proportion to the step from ``coarse`` to
    ``fine``, as a smooth function's does (to within :data:`SCALING_SLACK` and the
    rounding of both gaps)."""
    ratio = coarse.step / fine.step
    expected = coarse.gap / ratio
    noise = GAP_NOISE * (fine.noise + coarse.noise / ratio)
    return abs(fine.gap - expected) <= SCALING_SLACK * abs(expected) + noise


def central_converges(coarse: Difference, fine: Difference, rule: Tolerance) -> bool:
    """Whether the central quotients at both steps agree to within the tolerance, as a
    smooth function's do (they differ by ``~h^2 f'''/6``)."""
    return rule.within(coarse.central, fine.central, coarse.noise + fine.noise)


def smooth_between(coarse: Difference, fine: Difference, rule: Tolerance) -> bool:
    """Whether the quotients at the two steps scale like those of a smooth function."""
    return gap_scales(coarse, fine) and central_converges(coarse, fine, rule)


@dataclass(frozen=True)
class Comparison:
    """A derivative against the difference quotients of one coordinate.

    ``difference`` is the quotient the errors are of; ``smooth`` is ``False`` when the
    loss has a kink within the step (the coordinate is then no evidence either way).
    ``rel_error`` is ``abs_error / max(|autodiff|, |numeric|, noise / tol)``.
    """

    autodiff: float
    difference: Difference
    smooth: bool
    abs_error: float
    rel_error: float

    @property
    def numeric(self) -> float:
        return self.difference.central

    def passed(self, tol: float) -> bool:
        return self.smooth and self.rel_error <= tol


def _comparison(
    autodiff: float, difference: Difference, rule: Tolerance, smooth: bool
) -> Comparison:
    error = abs(autodiff - difference.central)
    floor = difference.noise / rule.tol
    scale = max(abs(autodiff), abs(difference.central), floor)
    rel = error / scale if math.isfinite(error) else math.inf
    return Comparison(autodiff, difference, smooth, error, rel)


def compare(autodiff: float, w0: Any, loss_at: LossAt, f0: float, rule: Tolerance) -> Comparison:
    """Compare the derivative ``autodiff`` at ``w0`` with the difference quotients of
    ``loss_at`` (``f0 = loss_at(w0)``); see the module doc for the rule."""
    first = difference(w0, rule.step, loss_at, f0, rule)
    if rule.within(autodiff, first.central, first.noise):
        return _comparison(autodiff, first, rule, smooth=True)
    if not (math.isfinite(autodiff) and math.isfinite(first.central)):
        return _comparison(autodiff, first, rule, smooth=True)
    second = difference(w0, rule.step / REFINE, loss_at, f0, rule)
    if rule.within(autodiff, second.central, second.noise):
        return _comparison(autodiff, second, rule, smooth=True)
    return _comparison(autodiff, first, rule, smooth=smooth_between(first, second, rule))


__all__ = [
    "NOISE_FACTOR",
    "REFINE",
    "Comparison",
    "Difference",
    "Tolerance",
    "compare",
    "difference",
    "gap_scales",
    "smooth_between",
]
