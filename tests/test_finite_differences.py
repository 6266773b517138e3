"""The finite-difference rule of ``gradscope check`` on 1-D functions (numpy only).

Each case has a known derivative (written out by hand): a smooth function and its exact
derivative must pass; a derivative wrong by 0.1%, 1% or 10% must fail (in float64, where
the tolerance is 1e-5), also where the old rule excused it (``|f'| < h |f''|``); a
function with a kink within the step (``|x|``, ``relu``, ``max``) must be left out as
non-smooth, whatever derivative autodiff picks there; float32 rounding noise must not
turn a right derivative into a failure or a kink.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gradscope.commands.check.finite_differences import (
    REFINE,
    Comparison,
    Tolerance,
    compare,
    difference,
)
from gradscope.commands.check.options import DEFAULT_TOL

Fn = Callable[[Any], Any]


def run(f: Fn, x0: float, autodiff: float, dtype: Any = np.float64) -> Comparison:
    """``compare`` for ``f`` evaluated in ``dtype`` at ``x0``, with the default tolerance."""
    point = np.asarray(x0, dtype)

    def loss_at(value: Any) -> float:
        return float(np.asarray(f(np.asarray(value, dtype)), dtype))

    f0 = loss_at(point)
    rule = Tolerance.of(dtype, DEFAULT_TOL[np.dtype(dtype).name], f0)
    return compare(autodiff, point, loss_at, f0, rule)


def step64(x0: float) -> float:
    return float(np.finfo(np.float64).eps) ** (1 / 3) * max(1.0, abs(x0))


# f, f', points
SMOOTH: dict[str, tuple[Fn, Fn, tuple[float, ...]]] = {
    "sin_exp": (lambda x: np.sin(x) * np.exp(x), lambda x: np.exp(x) * (np.sin(x) + np.cos(x)),
                (-1.3, 0.0, 0.7, 2.5)),
    "quartic_near_zero": (lambda x: (x * x - 1.0) ** 2, lambda x: 4 * x * (x * x - 1.0),
                          (1e-3, -2e-3, 0.5)),
    "log1p_square": (lambda x: np.log1p(x * x), lambda x: 2 * x / (1 + x * x), (0.01, 3.0, -40.0)),
    "linear": (lambda x: 3.0 * x + 1.0, lambda x: 3.0 + 0.0 * x, (0.0, 5.0)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SMOOTH))
def test_smooth_with_the_right_derivative_passes(name: str) -> None:
    f, df, points = SMOOTH[name]
    for x0 in points:
        result = run(f, x0, float(df(x0)))
        assert result.smooth, (x0, result)
        assert result.passed(1e-5), (x0, result)
        assert abs(result.numeric - df(x0)) <= 1e-8 * max(1.0, abs(df(x0))), (x0, result)


@pytest.mark.parametrize("error", [1e-3, 1e-2, 1e-1])
@pytest.mark.parametrize("name", list(SMOOTH))
def test_wrong_derivative_fails(name: str, error: float) -> None:
    f, df, points = SMOOTH[name]
    for x0 in points:
        true = float(df(x0))
        wrong = true * (1 + error) if true != 0 else error
        result = run(f, x0, wrong)
        assert result.smooth, (x0, result)  # a wrong derivative is no kink
        assert not result.passed(1e-5), (x0, result)
        assert result.rel_error > error / 2, (x0, result)


def test_the_old_kink_rule_excused_this_error() -> None:
    """``(w^2 - 1)^2`` at ``w = 1e-3``: ``f' = -4e-3``, ``h f'' = -2.4e-5``.  An error of
    0.3% (1.2e-5) is below the one-sided gap, which the old rule took for a kink."""
    f, df, _ = SMOOTH["quartic_near_zero"]
    x0 = 1e-3
    wrong = float(df(x0)) * 1.003
    rule = Tolerance.of(np.float64, 1e-5, float(f(x0)))
    first = difference(np.float64(x0), rule.step, lambda v: float(f(v)), float(f(x0)), rule)
    assert abs(first.gap) >= abs(first.central - wrong)  # the old rule's "kink"
    result = run(f, x0, wrong)
    assert result.smooth
    assert not result.passed(1e-5)
    assert result.rel_error == pytest.approx(0.003 / 1.003, rel=1e-3)


def relu(x: Any) -> Any:
    return np.maximum(x, 0.0)


# f, points near its kink, the derivative autodiff picks there (one side's slope; a
# subgradient equal to the central quotient, like sign(0) = 0 for |x| at 0, passes)
KINKED: dict[str, tuple[Fn, tuple[tuple[float, float], ...]]] = {
    "abs_at_zero": (np.abs, ((0.0, 1.0), (0.0, -1.0))),
    "abs_just_off_zero": (np.abs, ((1e-9, 1.0), (-1e-9, -1.0), (2e-7, 1.0))),
    "abs_where_the_gap_scales": (np.abs, ((step64(0.0) / 5, 1.0), (-step64(0.0) / 5, -1.0))),
    "relu_at_zero": (lambda x: relu(x) + 0.5 * x, ((0.0, 0.5), (1e-8, 1.5), (-1e-8, 0.5))),
    "max_tie": (lambda x: np.maximum(x, 0.3) * 2.0 + x * x, ((0.3, 0.6), (0.3 + 1e-7, 2.6))),
    "scaled_relu": (lambda x: 7.0 * relu(x - 2.0), ((2.0, 0.0), (2.0 + 1e-6, 7.0))),
}


@pytest.mark.parametrize("name", list(KINKED))
def test_kink_within_the_step_is_left_out(name: str) -> None:
    f, cases = KINKED[name]
    for x0, autodiff in cases:
        result = run(f, x0, autodiff)
        assert not result.smooth, (x0, autodiff, result)


def test_kink_between_the_two_steps_passes_at_the_small_one() -> None:
    """``|x|`` at ``0.6 h``: the kink is inside ``h`` but outside ``h / 4``."""
    h = step64(0.0)
    result = run(np.abs, 0.6 * h, 1.0)
    assert result.smooth
    assert result.passed(1e-5)
    assert result.difference.step == pytest.approx(h / REFINE, rel=1e-6)


def noisy32(x: Any) -> Any:
    """A float32 sum of 200 terms: real rounding noise, ~1e-6 relative to the sum."""
    a = np.linspace(0.1, 2.0, 200, dtype=np.float32)
    return np.sum(np.sin(a * np.float32(x)) * a, dtype=np.float32)


def noisy32_derivative(x: float) -> float:
    a = np.linspace(0.1, 2.0, 200, dtype=np.float64)
    return float(np.sum(np.cos(a * x) * a * a))


@pytest.mark.parametrize("x0", [-1.1, 0.0, 0.4, 2.0])
def test_float32_noise_neither_fails_nor_kinks(x0: float) -> None:
    true = noisy32_derivative(x0)
    result = run(noisy32, x0, true, np.float32)
    assert result.smooth, result
    assert result.passed(DEFAULT_TOL["float32"]), result
    wrong = run(noisy32, x0, true * 1.1, np.float32)
    assert wrong.smooth, wrong
    assert not wrong.passed(DEFAULT_TOL["float32"]), wrong


def test_float32_kink_is_left_out() -> None:
    def kinked(x: Any) -> Any:
        return noisy32(x) + np.float32(5.0) * np.abs(x)

    result = run(kinked, 0.0, noisy32_derivative(0.0) + 5.0, np.float32)  # the right slope
    assert not result.smooth, result


def test_no_tensorflow_import() -> None:
    code = (
        "import sys, gradscope.commands.check.finite_differences\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert proc.stdout.strip() == "False False", proc.stdout + proc.stderr
