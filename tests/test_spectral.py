"""gradscope.engine.spectral against dense numpy linear algebra.

Every operator is an explicit symmetric matrix ``A`` used only through
``matvec = lambda v: A @ v``, usually built as ``Q diag(d) Q^T`` with a random orthogonal
``Q`` so the spectrum ``d`` is known exactly; results are compared with
``numpy.linalg.eigvalsh`` and ``numpy.trace``.  All randomness is seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gradscope.engine import spectral
from gradscope.engine.spectral import (
    BLOCKS,
    SpectralDensity,
    TraceMethod,
    hutchinson_trace,
    lanczos,
    spectral_density,
    text_density,
)

MatVec = Callable[[np.ndarray], np.ndarray]


def with_spectrum(eigenvalues: np.ndarray | list[float], seed: int = 0) -> np.ndarray:
    """A dense symmetric matrix ``Q diag(d) Q^T`` with a random orthogonal ``Q``."""
    d = np.asarray(eigenvalues, dtype=np.float64)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d.size, d.size)))
    a = (q * d) @ q.T
    return np.asarray((a + a.T) / 2.0, dtype=np.float64)


def op(a: np.ndarray) -> MatVec:
    """The matrix as a matvec callable, the only way the algorithms may see it."""
    return lambda v: a @ v


def counter() -> tuple[list[int], Callable[[int], None]]:
    """An ``on_step`` callback and the list of arguments it received."""
    calls: list[int] = []
    return calls, calls.append


def bulk(count: int, seed: int = 1) -> np.ndarray:
    """``count`` eigenvalues spread uniformly over [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, count)


@pytest.fixture(scope="module")
def negative_dominant() -> np.ndarray:
    """200x200, spectrum {-10, 9, 8, 7} plus a bulk in [-1, 1]: |lambda_min| > lambda_max."""
    return with_spectrum(np.concatenate([[-10.0, 9.0, 8.0, 7.0], bulk(196)]))


# --------------------------------------------------------------------------------------
# The shared Lanczos core
# --------------------------------------------------------------------------------------


def test_core_basis_stays_orthonormal_and_tridiagonalizes() -> None:
    """Full reorthogonalization: V^T V = I and V^T A V = T to rounding, after 120 steps.

    Without reorthogonalization, orthogonality is lost as soon as a Ritz value
    converges (here within a few dozen steps for the well-separated outliers).
    """
    a = with_spectrum(np.concatenate([[50.0, 40.0, -30.0], bulk(147)]))
    start = np.random.default_rng(2).standard_normal(150)
    alphas, betas, basis = spectral._lanczos_tridiagonal(op(a), start, 120, None)
    assert alphas.shape == betas.shape == (120,)
    assert basis.shape == (150, 120)
    np.testing.assert_allclose(basis.T @ basis, np.eye(120), atol=1e-12)
    t = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
    np.testing.assert_allclose(basis.T @ a @ basis, t, atol=1e-11)


def test_core_caps_steps_at_n_and_ends_on_breakdown() -> None:
    a = with_spectrum(bulk(6))
    start = np.ones(6)
    alphas, betas, basis = spectral._lanczos_tridiagonal(op(a), start, 50, None)
    assert alphas.size == 6
    assert betas[-1] == 0.0  # the whole space is invariant
    np.testing.assert_allclose(
        np.linalg.eigvalsh(basis.T @ a @ basis), np.linalg.eigvalsh(a), atol=1e-12
    )


# --------------------------------------------------------------------------------------
# lanczos
# --------------------------------------------------------------------------------------


def test_lanczos_finds_top_three_beside_a_larger_negative_eigenvalue(
    negative_dominant: np.ndarray,
) -> None:
    a = negative_dominant
    tol = 1e-3
    result = lanczos(op(a), 200, k=3, tol=tol, rng=np.random.default_rng(0), want_vectors=True)
    exact = np.linalg.eigvalsh(a)
    scale = 10.0  # max(|lambda_max|, |lambda_min|): the tolerance is relative to it
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues, [9.0, 8.0, 7.0], atol=tol * scale)
    np.testing.assert_allclose(result.eigenvalues, exact[::-1][:3], atol=tol * scale)
    assert abs(result.min_eigenvalue - (-10.0)) <= tol * scale
    assert np.all(result.residuals <= tol * scale)
    assert result.min_residual <= tol * scale
    assert result.iterations < 50  # well-separated extremes converge fast

    vectors = result.eigenvectors
    assert vectors is not None
    assert vectors.shape == (200, 3)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-12)
    explicit = np.linalg.norm(a @ vectors - vectors * result.eigenvalues, axis=0)
    np.testing.assert_allclose(result.residuals, explicit, rtol=1e-6, atol=1e-12)


def test_power_iteration_would_return_the_negative_eigenvalue(
    negative_dominant: np.ndarray,
) -> None:
    """Why Lanczos: power iteration converges to the eigenvalue of largest magnitude."""
    a = negative_dominant
    v = np.random.default_rng(0).standard_normal(200)
    for _ in range(300):
        v = a @ v
        v /= np.linalg.norm(v)
    rayleigh = float(v @ a @ v)
    assert rayleigh == pytest.approx(-10.0, abs=1e-6)
    assert lanczos(op(a), 200, rng=np.random.default_rng(0)).eigenvalues[0] == pytest.approx(
        9.0, abs=1e-2
    )


def test_lanczos_tighter_tolerance_gives_more_accurate_values(
    negative_dominant: np.ndarray,
) -> None:
    loose = lanczos(op(negative_dominant), 200, tol=1e-2, rng=np.random.default_rng(1))
    tight = lanczos(op(negative_dominant), 200, tol=1e-9, rng=np.random.default_rng(1))
    assert loose.converged
    assert tight.converged
    assert loose.iterations < tight.iterations
    np.testing.assert_allclose(tight.eigenvalues, [9.0, 8.0, 7.0], atol=1e-8)
    assert tight.min_eigenvalue == pytest.approx(-10.0, abs=1e-8)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_lanczos_tolerance_is_relative(negative_dominant: np.ndarray, scale: float) -> None:
    """Scaling H scales the Ritz values and residuals but not the iteration count."""
    base = lanczos(op(negative_dominant), 200, tol=1e-4, rng=np.random.default_rng(2))
    scaled = lanczos(op(negative_dominant * scale), 200, tol=1e-4, rng=np.random.default_rng(2))
    assert scaled.iterations == base.iterations
    np.testing.assert_allclose(scaled.eigenvalues, base.eigenvalues * scale, rtol=1e-10)
    np.testing.assert_allclose(scaled.residuals, base.residuals * scale, rtol=1e-6)


def test_lanczos_returns_k_values_even_with_a_loose_tolerance(
    negative_dominant: np.ndarray,
) -> None:
    """Convergence is only tested from step k on, so k Ritz values always come back."""
    result = lanczos(op(negative_dominant), 200, k=5, tol=10.0, rng=np.random.default_rng(0))
    assert result.converged
    assert result.iterations >= 5
    assert result.eigenvalues.shape == (5,)


def test_lanczos_is_reproducible_with_the_same_generator(negative_dominant: np.ndarray) -> None:
    first = lanczos(op(negative_dominant), 200, rng=np.random.default_rng(7))
    second = lanczos(op(negative_dominant), 200, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(first.eigenvalues, second.eigenvalues)
    assert first.iterations == second.iterations


def test_lanczos_resolves_a_tight_cluster() -> None:
    d = np.concatenate([[10.0, 9.99, 9.98, -3.0], bulk(146)])
    a = with_spectrum(d)
    result = lanczos(op(a), 150, k=3, tol=1e-7, max_iter=150, rng=np.random.default_rng(3))
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues, [10.0, 9.99, 9.98], atol=1e-6)
    assert result.min_eigenvalue == pytest.approx(-3.0, abs=1e-6)


def test_lanczos_degenerate_top_eigenvalue_is_found_once() -> None:
    """A repeated eigenvalue shows up (at least) once; every Ritz value is a true one.

    Single-vector Lanczos only sees the start vector's projection onto an eigenspace,
    so the multiplicity of 5 is not resolved: this documents that limitation.
    """
    a = with_spectrum(np.concatenate([[5.0, 5.0, 5.0, -2.0], bulk(96)]))
    exact = np.linalg.eigvalsh(a)
    result = lanczos(op(a), 100, k=3, tol=1e-8, rng=np.random.default_rng(4))
    assert result.converged
    assert result.eigenvalues[0] == pytest.approx(5.0, abs=1e-7)
    assert result.min_eigenvalue == pytest.approx(-2.0, abs=1e-7)
    for value, residual in zip(result.eigenvalues, result.residuals, strict=True):
        assert np.min(np.abs(exact - value)) <= residual + 1e-10
    assert np.all(np.diff(result.eigenvalues) <= 0.0)


def test_lanczos_with_n_smaller_than_k_is_exact() -> None:
    a = np.array([[2.0, 1.0], [1.0, -3.0]])
    calls, on_step = counter()
    result = lanczos(
        op(a), 2, k=5, rng=np.random.default_rng(0), want_vectors=True, on_step=on_step
    )
    exact = np.linalg.eigvalsh(a)
    assert result.converged
    assert result.iterations == len(calls) == 2
    np.testing.assert_allclose(result.eigenvalues, exact[::-1], atol=1e-12)
    assert result.min_eigenvalue == pytest.approx(exact[0], abs=1e-12)
    assert result.eigenvectors is not None
    assert result.eigenvectors.shape == (2, 2)
    assert result.residuals.shape == (2,)


def test_lanczos_one_by_one() -> None:
    result = lanczos(lambda v: -4.0 * v, 1, rng=np.random.default_rng(0))
    assert result.eigenvalues.tolist() == [-4.0]
    assert result.min_eigenvalue == -4.0
    assert result.iterations == 1
    assert result.converged


def test_lanczos_stops_on_an_exact_invariant_subspace() -> None:
    """Rank 2: the Krylov space of any start vector has dimension 3 (range + null part)."""
    rng = np.random.default_rng(5)
    u, _ = np.linalg.qr(rng.standard_normal((60, 2)))
    a = 3.0 * np.outer(u[:, 0], u[:, 0]) - 2.0 * np.outer(u[:, 1], u[:, 1])
    result = lanczos(op(a), 60, k=3, tol=1e-12, max_iter=60, rng=np.random.default_rng(6))
    assert result.iterations == 3
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues, [3.0, 0.0, -2.0], atol=1e-12)
    assert result.min_eigenvalue == pytest.approx(-2.0, abs=1e-12)
    assert np.all(result.residuals == 0.0)


def test_lanczos_zero_operator() -> None:
    result = lanczos(lambda v: np.zeros_like(v), 10, rng=np.random.default_rng(0))
    assert result.iterations == 1
    assert result.converged
    assert result.eigenvalues.tolist() == [0.0]
    assert result.min_eigenvalue == 0.0


def test_lanczos_respects_max_iter_and_reports_each_matvec(
    negative_dominant: np.ndarray,
) -> None:
    calls, on_step = counter()
    result = lanczos(
        op(negative_dominant),
        200,
        k=3,
        tol=1e-14,
        max_iter=6,
        rng=np.random.default_rng(0),
        on_step=on_step,
    )
    assert result.iterations == 6
    assert calls == [1] * 6
    assert not result.converged
    assert result.eigenvalues.shape == result.residuals.shape == (3,)


def test_lanczos_on_step_counts_every_matvec_when_converging(
    negative_dominant: np.ndarray,
) -> None:
    seen: list[np.ndarray] = []

    def matvec(v: np.ndarray) -> np.ndarray:
        seen.append(v)
        return np.asarray(negative_dominant @ v, dtype=np.float64)

    calls, on_step = counter()
    result = lanczos(matvec, 200, rng=np.random.default_rng(0), on_step=on_step)
    assert result.iterations == len(seen) == len(calls)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_lanczos_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lanczos(lambda v: v, 5, rng=np.random.default_rng(0), **kwargs)


def test_bad_matvec_output_is_reported_at_its_source() -> None:
    with pytest.raises(ValueError, match="shape"):
        lanczos(lambda v: v[:-1], 5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-finite"):
        lanczos(lambda v: v * np.nan, 5, rng=np.random.default_rng(0))


# --------------------------------------------------------------------------------------
# hutchinson_trace
# --------------------------------------------------------------------------------------


def low_rank_plus_noise(n: int = 300, rank: int = 10, seed: int = 0) -> np.ndarray:
    """A few large eigenvalues (50..100) on top of a small symmetric noise matrix."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    noise = rng.standard_normal((n, n)) * 0.02
    spikes = (u * rng.uniform(50.0, 100.0, rank)) @ u.T
    return np.asarray(spikes + (noise + noise.T) / 2.0, dtype=np.float64)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_errors_are_calibrated_by_stderr(method: TraceMethod) -> None:
    """Over 30 probe seeds, the error is within 3 stderr, bar rare tail events.

    A literal "every seed within 3 stderr" test would be flaky by design: z^T A z is
    skewed (a chi-square-like term per outlier eigenvalue), so |error| > 3 stderr happens
    for about 1% of estimates here (measured over 3000 seeds), not 0.27%.  Instead: at
    most 2 of 30 beyond 3 stderr, none beyond 5, and the median |error| / stderr near
    the normal 0.67, so a stderr that is too large also fails.
    """
    a = with_spectrum(np.concatenate([[20.0, -8.0, 6.0], bulk(197)]))
    exact = float(np.trace(a))
    z_scores = []
    for seed in range(30):
        calls, on_step = counter()
        estimate = hutchinson_trace(
            op(a),
            200,
            probes=60,
            rng=np.random.default_rng(seed),
            method=method,
            on_step=on_step,
        )
        assert estimate.probes == len(calls) == 60
        assert 0.0 < estimate.stderr < np.inf
        z_scores.append(abs(estimate.trace - exact) / estimate.stderr)
    assert sum(z > 3.0 for z in z_scores) <= 2
    assert max(z_scores) <= 5.0
    assert 0.3 <= float(np.median(z_scores)) <= 1.5


def test_hutch_plus_plus_beats_hutchinson_on_low_rank_plus_noise() -> None:
    a = low_rank_plus_noise()
    exact = float(np.trace(a))
    methods: tuple[TraceMethod, ...] = ("hutchinson", "hutch++")
    errors: dict[str, list[float]] = {method: [] for method in methods}
    stderrs: dict[str, list[float]] = {method: [] for method in methods}
    for seed in range(5):
        for method in methods:
            rng = np.random.default_rng(seed)
            estimate = hutchinson_trace(op(a), 300, probes=60, rng=rng, method=method)
            errors[method].append(abs(estimate.trace - exact))
            stderrs[method].append(estimate.stderr)
    assert np.mean(errors["hutch++"]) < 0.05 * np.mean(errors["hutchinson"])
    assert np.mean(stderrs["hutch++"]) < 0.05 * np.mean(stderrs["hutchinson"])


def test_hutch_plus_plus_budget_split_uses_every_probe() -> None:
    a = low_rank_plus_noise(n=80, rank=3)
    for probes in (2, 3, 7, 31):
        calls, on_step = counter()
        estimate = hutchinson_trace(
            op(a), 80, probes=probes, rng=np.random.default_rng(0), on_step=on_step
        )
        assert estimate.probes == len(calls) == probes
        assert np.isfinite(estimate.trace)


def test_single_probe_has_no_stderr() -> None:
    estimate = hutchinson_trace(
        op(np.eye(10)), 10, probes=1, rng=np.random.default_rng(0), method="hutchinson"
    )
    assert estimate.trace == pytest.approx(10.0)  # z^T I z = n for any Rademacher z
    assert np.isnan(estimate.stderr)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
@pytest.mark.parametrize("probes", [30, 500])
def test_enough_probes_give_the_exact_trace(method: TraceMethod, probes: int) -> None:
    a = with_spectrum(bulk(30) * 7.0 + 0.5)
    calls, on_step = counter()
    rng = np.random.default_rng(0)
    estimate = hutchinson_trace(op(a), 30, probes=probes, rng=rng, method=method, on_step=on_step)
    assert estimate.trace == pytest.approx(float(np.trace(a)), rel=1e-12, abs=1e-12)
    assert estimate.stderr == 0.0
    assert estimate.probes == len(calls) == 30


def test_trace_rejects_bad_arguments() -> None:
    bad: Any = "exact"
    with pytest.raises(ValueError, match="method"):
        hutchinson_trace(lambda v: v, 5, rng=np.random.default_rng(0), method=bad)
    with pytest.raises(ValueError, match="probes"):
        hutchinson_trace(lambda v: v, 5, probes=0, rng=np.random.default_rng(0))


# --------------------------------------------------------------------------------------
# spectral_density and text_density
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_clusters() -> np.ndarray:
    """200x200: 100 eigenvalues near -5 and 100 near +5 (spread 0.05)."""
    rng = np.random.default_rng(8)
    d = np.concatenate([rng.normal(-5.0, 0.05, 100), rng.normal(5.0, 0.05, 100)])
    return with_spectrum(d, seed=8)


def density_at(density: SpectralDensity, x: float) -> float:
    return float(np.interp(x, density.grid, density.density))


def mass_between(density: SpectralDensity, lo: float, hi: float) -> float:
    inside = (density.grid >= lo) & (density.grid <= hi)
    return float(np.trapezoid(density.density[inside], density.grid[inside]))


def test_density_integrates_to_one(negative_dominant: np.ndarray) -> None:
    calls, on_step = counter()
    result = spectral_density(
        op(negative_dominant),
        200,
        runs=3,
        iterations=30,
        points=300,
        rng=np.random.default_rng(0),
        on_step=on_step,
    )
    assert result.grid.shape == result.density.shape == (300,)
    assert np.all(np.diff(result.grid) > 0.0)
    assert np.all(result.density >= 0.0)
    assert float(np.trapezoid(result.density, result.grid)) == pytest.approx(1.0, abs=1e-3)
    assert (result.runs, result.iterations) == (3, 30)
    assert len(calls) == 90
    # Gauss quadrature reproduces the extreme eigenvalues: the grid covers them.
    assert result.grid[0] < -10.0
    assert result.grid[-1] > 9.0
    assert result.sigma == pytest.approx(0.01 * 19.0, rel=1e-3)


def test_density_concentrates_on_the_clusters(two_clusters: np.ndarray) -> None:
    result = spectral_density(op(two_clusters), 200, rng=np.random.default_rng(1))
    left, right, gap = density_at(result, -5.0), density_at(result, 5.0), density_at(result, 0.0)
    assert min(left, right) > 1e3 * max(gap, 1e-12)
    assert mass_between(result, -6.0, -4.0) == pytest.approx(0.5, abs=0.1)
    assert mass_between(result, 4.0, 6.0) == pytest.approx(0.5, abs=0.1)


def test_density_first_moment_estimates_the_mean_eigenvalue(two_clusters: np.ndarray) -> None:
    """sum w_i theta_i averages v^T A v / n over the runs: an unbiased trace / n estimate."""
    a = two_clusters + 2.0 * np.eye(200)
    result = spectral_density(op(a), 200, runs=8, rng=np.random.default_rng(2))
    mean = float(np.trapezoid(result.grid * result.density, result.grid))
    assert mean == pytest.approx(np.trace(a) / 200.0, abs=0.5)


def test_density_of_a_multiple_of_identity_is_one_peak() -> None:
    """One step per run (breakdown), zero spectral range: a default width is still positive."""
    result = spectral_density(lambda v: 3.0 * v, 50, runs=2, rng=np.random.default_rng(0))
    assert result.iterations == 1
    assert result.sigma > 0.0
    assert result.grid[int(np.argmax(result.density))] == pytest.approx(3.0, abs=result.sigma)
    assert float(np.trapezoid(result.density, result.grid)) == pytest.approx(1.0, abs=1e-2)


def test_density_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sigma"):
        spectral_density(lambda v: v, 5, rng=np.random.default_rng(0), sigma=0.0)
    with pytest.raises(ValueError, match="points"):
        spectral_density(lambda v: v, 5, rng=np.random.default_rng(0), points=1)


@pytest.mark.parametrize("width", [1, 7, 40, 500])
def test_text_density_is_a_sparkline_of_the_requested_width(
    two_clusters: np.ndarray, width: int
) -> None:
    result = spectral_density(op(two_clusters), 200, rng=np.random.default_rng(1))
    line = text_density(result, width=width)
    assert len(line) == width
    assert set(line) <= set(BLOCKS)
    assert "█" in line


def test_text_density_shows_clusters_and_an_empty_gap(two_clusters: np.ndarray) -> None:
    result = spectral_density(op(two_clusters), 200, rng=np.random.default_rng(1))
    line = text_density(result, width=41)
    assert line[20] == "▁"  # the middle of the grid, between the clusters
    assert line[0] != "█" or line[-1] != "█"  # peaks sit inside the padded grid
    assert line.count("▁") > 20


def test_text_density_log_scale_shows_a_small_outlier_cluster() -> None:
    """1% of the mass far from the bulk: invisible on a linear scale, visible on a log one."""
    grid = np.linspace(-1.0, 11.0, 400)
    nodes, weights = np.array([0.0, 10.0]), np.array([0.99, 0.01])
    values = spectral._gaussian_mixture(grid, nodes, weights, 0.1)
    density = SpectralDensity(grid=grid, density=values, runs=1, iterations=2, sigma=0.1)
    line = text_density(density, width=48)
    outlier = line[int((10.0 - grid[0]) / (grid[-1] - grid[0]) * 48)]
    assert outlier not in (BLOCKS[0], BLOCKS[-1])
    assert BLOCKS.index(outlier) >= 3  # 2 of the 4 decades below the peak: mid-scale
    assert line[int((5.0 - grid[0]) / (grid[-1] - grid[0]) * 48)] == BLOCKS[0]


def test_text_density_of_zero_density_is_flat() -> None:
    flat = SpectralDensity(
        grid=np.linspace(0.0, 1.0, 5), density=np.zeros(5), runs=1, iterations=1, sigma=0.1
    )
    assert text_density(flat, width=6) == "▁" * 6
    with pytest.raises(ValueError, match="width"):
        text_density(flat, width=0)
