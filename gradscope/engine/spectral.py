"""Matrix-free curvature: extreme eigenvalues, trace and spectral density of an operator.

Every algorithm here sees the (Hessian) operator ``H`` only through ``matvec(v) = H @ v``
on float64 vectors of length ``n``; ``H`` must be symmetric.  Nothing is ever formed as
an ``n x n`` matrix, so the cost is a number of matvecs (each about two backward passes
for a Hessian) plus small dense work.

* :func:`lanczos`: the algebraically largest eigenvalues and the smallest one, with
  residual bounds.  Power iteration converges to the eigenvalue of largest *magnitude*,
  which for a loss Hessian with a large negative eigenvalue is not the top one; Lanczos
  finds both ends of the spectrum from one Krylov subspace.
* :func:`hutchinson_trace`: the trace, by Hutchinson's estimator or Hutch++ (Meyer,
  Musco, Musco, Woodruff 2021), which deflates the dominant subspace first.
* :func:`spectral_density`: stochastic Lanczos quadrature (Ubaru, Chen, Saad 2017), the
  eigenvalue density that PyHessian plots, and :func:`text_density` to show it in a
  terminal table.

All randomness comes from the caller's :class:`numpy.random.Generator`, so runs are
reproducible.  ``on_step`` (if given) is called once after every matvec, so a caller can
drive a progress bar with the matvec count.

Attainable accuracy is bounded by the matvec's own precision: a float32 Hessian-vector
product limits residuals to about ``1e-7 * ||H||`` however many iterations run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

MatVec = Callable[[np.ndarray], np.ndarray]
StepCallback = Callable[[int], None]
TraceMethod = Literal["hutchinson", "hutch++"]

#: A Lanczos ``beta`` this small relative to ``||H v||`` means the Krylov subspace is
#: invariant: the Ritz pairs are exact (to rounding) and the iteration cannot continue.
_BREAKDOWN_RTOL = 1e-12
#: Fraction of the Ritz-value range used as the default Gaussian broadening width.
_SIGMA_FRACTION = 0.01
#: Minimum grid padding, as a fraction of the Ritz-value range.
_PAD_FRACTION = 0.05
#: Sparkline levels, lowest to highest.
BLOCKS = "▁▂▃▄▅▆▇█"
#: Decades of density the sparkline spans: anything below ``max * 10**-_DECADES`` is "▁".
_DECADES = 4.0
_TINY = float(np.finfo(np.float64).tiny)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LanczosResult:
    """Extreme Ritz pairs of ``H`` from :func:`lanczos`.

    ``eigenvalues`` holds up to ``k`` algebraically largest Ritz values, descending
    (fewer when the Krylov subspace has fewer dimensions, e.g. ``n < k``).  Residuals are
    ``||H x - theta x||`` for the unit Ritz vector ``x``, read off the Lanczos relation
    (``|beta_m * y[-1]|``) rather than from extra matvecs; a Ritz value with residual
    ``r`` lies within ``r`` of a true eigenvalue.  ``iterations`` counts matvecs.
    ``eigenvectors`` (``n x len(eigenvalues)``, columns in the order of ``eigenvalues``)
    is only kept when asked for.
    """

    eigenvalues: np.ndarray
    min_eigenvalue: float
    residuals: np.ndarray
    min_residual: float
    iterations: int
    converged: bool
    eigenvectors: np.ndarray | None


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate: value, standard error of that value, matvecs used.

    ``stderr`` is 0 for an exact trace and NaN when fewer than two random probes were
    left to estimate it from.
    """

    trace: float
    stderr: float
    probes: int


@dataclass(frozen=True)
class SpectralDensity:
    """A Gaussian-broadened eigenvalue density of ``H`` on an ascending grid.

    ``density`` integrates to about 1 over ``grid`` (the grid extends at least three
    broadening widths past the outermost Ritz values).  ``iterations`` is the number of
    Lanczos steps of the longest run (runs stop early on an invariant subspace).
    """

    grid: np.ndarray
    density: np.ndarray
    runs: int
    iterations: int
    sigma: float


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def _require(condition: bool, message: str) -> None:
    """Raise :class:`ValueError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(message)


def _apply(matvec: MatVec, v: np.ndarray, on_step: StepCallback | None) -> np.ndarray:
    """``H @ v`` as a float64 vector, checked for shape and finiteness, then one step.

    A wrong shape or a NaN would otherwise surface much later as a baffling
    ``LinAlgError`` from the small eigenproblem, far from its cause.
    """
    out = np.asarray(matvec(v), dtype=np.float64)
    if out.shape != v.shape:
        raise ValueError(f"matvec returned shape {out.shape}, expected {v.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError("matvec returned non-finite values")
    if on_step is not None:
        on_step(1)
    return out


def _apply_columns(matvec: MatVec, block: np.ndarray, on_step: StepCallback | None) -> np.ndarray:
    """``H @ block`` one column (one matvec) at a time."""
    out = np.empty_like(block)
    for j in range(block.shape[1]):
        out[:, j] = _apply(matvec, np.ascontiguousarray(block[:, j]), on_step)
    return out


def _rademacher(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """An ``n x count`` matrix of independent +/-1 entries (float64)."""
    return rng.integers(0, 2, size=(n, count)).astype(np.float64) * 2.0 - 1.0


# --------------------------------------------------------------------------------------
# Lanczos core
# --------------------------------------------------------------------------------------


def _reorthogonalize(w: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``w`` with its components along the orthonormal columns of ``basis`` removed.

    Classical Gram-Schmidt applied twice ("twice is enough", Kahan/Parlett): one pass
    leaves errors of order ``eps * ||w_before|| / ||w_after||``, which grow as Ritz
    values converge; the second pass brings orthogonality back to rounding level.
    """
    for _ in range(2):
        w = w - basis @ (basis.T @ w)
    return w


def _lanczos_tridiagonal(
    matvec: MatVec,
    v0: np.ndarray,
    m: int,
    on_step: StepCallback | None,
    *,
    stop: Callable[[np.ndarray, np.ndarray], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run up to ``m`` Lanczos steps from ``v0``, fully reorthogonalized.

    Returns ``(alphas, betas, basis)`` for the ``j`` steps taken (``j <= min(m, n)``, one
    matvec each): the tridiagonal ``T_j`` has diagonal ``alphas`` and off-diagonal
    ``betas[:-1]``; ``betas[-1]`` is the norm of the next (unused) residual vector, so
    ``H V = V T + betas[-1] * v_next e_j^T`` with ``V = basis`` (``n x j``, orthonormal
    columns).  Every new vector is orthogonalized against all previous ones, so no
    spurious copies of converged Ritz values appear, at the price of storing ``V``.

    The iteration stops early on breakdown (``betas[-1]`` negligible against ``||H v||``:
    the Krylov subspace is invariant, ``betas[-1]`` is set to exactly 0 because the Ritz
    pairs are exact up to rounding) or when ``stop(alphas, betas)`` returns True after
    a step.
    """
    n = v0.shape[0]
    m = min(m, n)
    norm0 = float(np.linalg.norm(v0))
    _require(norm0 > 0.0, "the Lanczos start vector must be non-zero")
    # Fortran order: the first j columns are one contiguous block, so an early stop
    # never touches (and the OS never commits) the memory of the unused columns.
    basis = np.empty((n, m), dtype=np.float64, order="F")
    alphas = np.empty(m, dtype=np.float64)
    betas = np.empty(m, dtype=np.float64)
    v = np.asarray(v0, dtype=np.float64) / norm0
    scale = 0.0
    steps = 0
    for j in range(m):
        basis[:, j] = v
        w = _apply(matvec, v, on_step)
        scale = max(scale, float(np.linalg.norm(w)))
        alphas[j] = float(v @ w)
        w = w - alphas[j] * v
        if j > 0:
            w = w - betas[j - 1] * basis[:, j - 1]
        w = _reorthogonalize(w, basis[:, : j + 1])
        beta = float(np.linalg.norm(w))
        steps = j + 1
        if beta <= _BREAKDOWN_RTOL * max(scale, _TINY):
            betas[j] = 0.0
            break
        betas[j] = beta
        if stop is not None and stop(alphas[:steps], betas[:steps]):
            break
        v = w / beta
    return alphas[:steps], betas[:steps], basis[:, :steps]


@dataclass(frozen=True)
class _Ritz:
    """Eigenpairs of ``T_j``: Ritz values ascending, their coordinates, residuals."""

    values: np.ndarray
    coords: np.ndarray
    residuals: np.ndarray


def _ritz(alphas: np.ndarray, betas: np.ndarray) -> _Ritz:
    """Eigen-decompose the small tridiagonal ``T_j``; residuals from the Lanczos relation.

    For ``T y = theta y`` and Ritz vector ``x = V y``:
    ``||H x - theta x|| = |beta_j| * |y[-1]|`` (no matvec needed).
    """
    off = betas[:-1]
    tridiagonal = np.diag(alphas) + np.diag(off, 1) + np.diag(off, -1)
    values, coords = np.linalg.eigh(tridiagonal)
    residuals = np.abs(betas[-1] * coords[-1, :])
    return _Ritz(values=values, coords=coords, residuals=residuals)


def _top_indices(count: int, k: int) -> np.ndarray:
    """Indices of the ``min(k, count)`` largest of ``count`` ascending values, descending."""
    return np.arange(count - 1, count - 1 - min(k, count), -1)


def _ritz_converged(ritz: _Ritz, k: int, tol: float, want_smallest: bool = True) -> bool:
    """Whether the top ``k`` (and, if ``want_smallest``, the smallest) Ritz pairs meet
    the relative tolerance.

    The tolerance is relative to the spectral radius estimate
    ``max(|theta_max|, |theta_min|)``, so it is invariant to scaling ``H``.
    """
    values = ritz.values
    top = _top_indices(values.size, k)
    wanted = np.append(top, 0) if want_smallest else top
    bound = tol * max(abs(float(values[-1])), abs(float(values[0])), _TINY)
    return bool(np.all(ritz.residuals[wanted] <= bound))


# --------------------------------------------------------------------------------------
# Public algorithms
# --------------------------------------------------------------------------------------


def lanczos(
    matvec: MatVec,
    n: int,
    *,
    k: int = 3,
    tol: float = 1e-3,
    max_iter: int = 100,
    rng: np.random.Generator,
    want_vectors: bool = False,
    on_step: StepCallback | None = None,
    v0: np.ndarray | None = None,
    want_smallest: bool = True,
) -> LanczosResult:
    """Top-``k`` algebraically largest eigenvalues and the smallest one of symmetric ``H``.

    Lanczos with full reorthogonalization from a random unit start vector.  After every
    step ``j >= k`` the small tridiagonal ``T_j`` is eigen-decomposed and the iteration
    stops once every wanted Ritz pair (the top ``k`` and the smallest) has residual
    ``<= tol * max(|theta_max|, |theta_min|)``.  It also stops on an invariant subspace
    (then the results are exact for it, e.g. a rank-``r`` ``H`` needs at most ``r + 1``
    steps), after ``min(max_iter, n)`` matvecs, whichever comes first.

    Single-vector Lanczos sees one copy of a repeated eigenvalue: multiplicities are not
    resolved, so the top-``k`` list may skip duplicates of a degenerate eigenvalue.  A
    start vector (almost) orthogonal to an eigenvector misses that eigenvalue; a random
    start makes that improbable, not impossible.

    ``v0`` replaces the random start (a warm start: the top eigenvector of a nearby
    matrix converges in a few steps); a little noise from ``rng`` is mixed in so that a
    start exactly orthogonal to a new top eigenvector cannot hide it.
    ``want_smallest=False`` stops as soon as the top ``k`` pairs have converged (the
    smallest pair is still returned, maybe unconverged).
    """
    _require(n >= 1, "n must be at least 1")
    _require(k >= 1, "k must be at least 1")
    _require(max_iter >= 1, "max_iter must be at least 1")
    _require(tol >= 0.0, "tol must be non-negative")

    def done(alphas: np.ndarray, betas: np.ndarray) -> bool:
        ritz = _ritz(alphas, betas)
        return alphas.size >= k and _ritz_converged(ritz, k, tol, want_smallest)

    start = _start_vector(rng, n, v0)
    alphas, betas, basis = _lanczos_tridiagonal(matvec, start, max_iter, on_step, stop=done)
    ritz = _ritz(alphas, betas)
    top = _top_indices(ritz.values.size, k)
    return LanczosResult(
        eigenvalues=ritz.values[top].copy(),
        min_eigenvalue=float(ritz.values[0]),
        residuals=ritz.residuals[top].copy(),
        min_residual=float(ritz.residuals[0]),
        iterations=int(alphas.size),
        converged=_ritz_converged(ritz, k, tol, want_smallest),
        eigenvectors=basis @ ritz.coords[:, top] if want_vectors else None,
    )


WARM_START_NOISE = 1e-3
"""Relative size of the random part mixed into a warm start vector."""


def _start_vector(rng: np.random.Generator, n: int, v0: np.ndarray | None) -> np.ndarray:
    """A random start, or ``v0`` (unit length) plus a little random noise."""
    noise = rng.standard_normal(n)
    if v0 is None:
        return noise
    warm = np.asarray(v0, dtype=np.float64).reshape(-1)
    _require(warm.shape == (n,), f"v0 must have {n} entries")
    norm = float(np.linalg.norm(warm))
    if not math.isfinite(norm) or norm == 0.0:
        return noise
    return warm / norm + WARM_START_NOISE * noise / math.sqrt(n)


def _mean_and_stderr(samples: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error (``std(ddof=1) / sqrt(count)``; NaN if < 2)."""
    mean = float(np.mean(samples))
    if samples.size < 2:
        return mean, math.nan
    return mean, float(np.std(samples, ddof=1) / math.sqrt(samples.size))


def _quadratic_forms(
    matvec: MatVec, probes: np.ndarray, on_step: StepCallback | None
) -> np.ndarray:
    """``z^T H z`` for every column ``z`` of ``probes``."""
    images = _apply_columns(matvec, probes, on_step)
    return np.asarray(np.einsum("ij,ij->j", probes, images), dtype=np.float64)


def _exact_trace(matvec: MatVec, n: int, on_step: StepCallback | None) -> TraceEstimate:
    """``sum_i e_i^T H e_i`` with ``n`` matvecs: cheaper than any estimate once ``probes >= n``."""
    total = 0.0
    for i in range(n):
        unit = np.zeros(n, dtype=np.float64)
        unit[i] = 1.0
        total += float(_apply(matvec, unit, on_step)[i])
    return TraceEstimate(trace=total, stderr=0.0, probes=n)


def _hutchinson(
    matvec: MatVec, n: int, probes: int, rng: np.random.Generator, on_step: StepCallback | None
) -> TraceEstimate:
    """Plain Hutchinson: mean of ``z^T H z`` over Rademacher ``z`` (unbiased)."""
    samples = _quadratic_forms(matvec, _rademacher(rng, n, probes), on_step)
    trace, stderr = _mean_and_stderr(samples)
    return TraceEstimate(trace=trace, stderr=stderr, probes=probes)


def _hutch_plus_plus(
    matvec: MatVec, n: int, probes: int, rng: np.random.Generator, on_step: StepCallback | None
) -> TraceEstimate:
    """Hutch++: exact trace on a sketched dominant subspace, Hutchinson on the rest.

    ``s = probes // 3`` matvecs sketch ``Q = orth(H S)``, ``s`` more give
    ``tr(Q^T H Q)`` exactly, and the remaining ``probes - 2 s`` run Hutchinson on the
    deflated ``(I - QQ^T) H (I - QQ^T)``, whose Frobenius norm (hence variance) is much
    smaller when ``H`` has a few dominant eigenvalues.  The estimate stays unbiased for
    any ``Q``, so a rank-deficient sketch is harmless.  ``stderr`` comes from the
    residual Hutchinson part only (the deflated part is exact given ``Q``).
    """
    sketch = probes // 3
    if sketch == 0:
        return _hutchinson(matvec, n, probes, rng, on_step)
    q, _ = np.linalg.qr(_apply_columns(matvec, _rademacher(rng, n, sketch), on_step))
    low_rank = float(np.sum(q * _apply_columns(matvec, q, on_step)))
    residual = _rademacher(rng, n, probes - 2 * sketch)
    residual -= q @ (q.T @ residual)
    mean, stderr = _mean_and_stderr(_quadratic_forms(matvec, residual, on_step))
    return TraceEstimate(trace=low_rank + mean, stderr=stderr, probes=probes)


def hutchinson_trace(
    matvec: MatVec,
    n: int,
    *,
    probes: int = 100,
    rng: np.random.Generator,
    on_step: StepCallback | None = None,
    method: TraceMethod = "hutch++",
) -> TraceEstimate:
    """Estimate ``tr(H)`` with ``probes`` matvecs of Rademacher probes.

    ``method="hutch++"`` (default) deflates the dominant subspace first and has error
    ``O(1/probes)`` rather than Hutchinson's ``O(1/sqrt(probes))`` when the spectrum
    decays; ``"hutchinson"`` is the classic estimator.  When ``probes >= n`` the exact
    trace is cheaper: ``n`` matvecs on the unit vectors, ``stderr = 0``.  The returned
    ``probes`` is the number of matvecs actually used.
    """
    _require(n >= 1, "n must be at least 1")
    _require(probes >= 1, "probes must be at least 1")
    _require(method in ("hutchinson", "hutch++"), f"unknown trace method {method!r}")
    if probes >= n:
        return _exact_trace(matvec, n, on_step)
    if method == "hutchinson":
        return _hutchinson(matvec, n, probes, rng, on_step)
    return _hutch_plus_plus(matvec, n, probes, rng, on_step)


@dataclass(frozen=True)
class DiagonalEstimate:
    """Hutchinson's estimate of ``diag(H)``, entry by entry, with standard errors.

    ``segment_sums`` holds, for each probe (rows) and each segment of the vector
    (columns, the ``segments`` given), the sum of that probe's estimate over the segment:
    the standard error of a segment's sum needs them, since the entries of one probe are
    correlated.
    """

    diagonal: np.ndarray
    stderr: np.ndarray
    probes: int
    segment_sums: np.ndarray

    def segment_stderr(self, segment: int) -> float:
        """Standard error of the estimated sum of the diagonal over ``segment``."""
        sums = self.segment_sums[:, segment]
        return float(np.std(sums, ddof=1) / math.sqrt(len(sums))) if len(sums) > 1 else math.nan


def hutchinson_diagonal(
    matvec: MatVec,
    n: int,
    *,
    probes: int,
    rng: np.random.Generator,
    segments: tuple[int, ...] = (),
    on_step: StepCallback | None = None,
) -> DiagonalEstimate:
    """Estimate ``diag(H)`` as the mean of ``z * (H z)`` over Rademacher probes ``z``
    (Bekas, Kokiopoulou, Saad 2007): unbiased, with variance ``sum_{k != j} H_jk^2`` per
    entry, so the standard error of each entry comes from the probes themselves.

    ``segments`` are the sizes of consecutive parts of the vector (the variables of a
    block); the per-probe sum over each is kept for :meth:`DiagonalEstimate.segment_stderr`.
    Memory is three vectors of length ``n`` (Welford's running mean and squares), not one
    per probe.
    """
    _require(n >= 1, "n must be at least 1")
    _require(probes >= 2, "probes must be at least 2 for a standard error")
    bounds = np.cumsum([0, *segments]) if segments else np.asarray([0, n])
    _require(int(bounds[-1]) == n, "segments must add up to n")
    mean = np.zeros(n)
    squares = np.zeros(n)
    sums = np.empty((probes, len(bounds) - 1))
    for count in range(1, probes + 1):
        probe = _rademacher(rng, n, 1)[:, 0]
        sample = probe * _apply(matvec, probe, on_step)
        delta = sample - mean
        mean += delta / count
        squares += delta * (sample - mean)
        sums[count - 1] = np.add.reduceat(sample, bounds[:-1]) if n else 0.0
    stderr = np.sqrt(squares / (probes - 1) / probes)
    return DiagonalEstimate(mean, stderr, probes, sums)


def _default_sigma(nodes: np.ndarray) -> float:
    """Broadening width: 1% of the Ritz-value range, or of their magnitude if it is 0."""
    span = float(nodes.max() - nodes.min())
    scale = span if span > 0.0 else max(float(np.abs(nodes).max()), 1.0)
    return _SIGMA_FRACTION * scale


def _gaussian_mixture(
    grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, sigma: float
) -> np.ndarray:
    """``sum_i w_i N(grid; node_i, sigma^2)`` evaluated on ``grid``."""
    z = (grid[:, None] - nodes[None, :]) / sigma
    kernel = np.exp(-0.5 * z * z) / (sigma * math.sqrt(2.0 * math.pi))
    return np.asarray(kernel @ weights, dtype=np.float64)


def spectral_density(
    matvec: MatVec,
    n: int,
    *,
    runs: int = 4,
    iterations: int = 40,
    points: int = 200,
    rng: np.random.Generator,
    sigma: float | None = None,
    on_step: StepCallback | None = None,
) -> SpectralDensity:
    """Eigenvalue density of ``H`` by stochastic Lanczos quadrature.

    Each run starts Lanczos from a normalized Rademacher vector ``v``; the eigenpairs
    ``(theta_i, y_i)`` of its tridiagonal ``T`` are the nodes and weights
    ``y_i[0]^2`` of a Gauss quadrature for ``v^T f(H) v``, whose expectation is
    ``tr(f(H)) / n``.  Averaging over runs and broadening each node with a Gaussian of
    width ``sigma`` (default 1% of the Ritz-value range) gives a smooth density whose
    mass is 1.  Costs ``runs * min(iterations, n)`` matvecs at most.

    The grid spans the Ritz values padded by ``max(3 sigma, 5% of their range)``; a
    ``sigma`` much narrower than the grid spacing under-samples the peaks, so the
    integral over the grid then drifts from 1.
    """
    _require(n >= 1, "n must be at least 1")
    _require(runs >= 1, "runs must be at least 1")
    _require(iterations >= 1, "iterations must be at least 1")
    _require(points >= 2, "points must be at least 2")
    _require(sigma is None or sigma > 0.0, "sigma must be positive")
    all_nodes: list[np.ndarray] = []
    all_weights: list[np.ndarray] = []
    steps = 0
    for _ in range(runs):
        start = _rademacher(rng, n, 1)[:, 0]
        alphas, betas, _basis = _lanczos_tridiagonal(matvec, start, iterations, on_step)
        ritz = _ritz(alphas, betas)
        all_nodes.append(ritz.values)
        all_weights.append(ritz.coords[0, :] ** 2 / runs)
        steps = max(steps, int(alphas.size))
    nodes = np.concatenate(all_nodes)
    weights = np.concatenate(all_weights)
    width = _default_sigma(nodes) if sigma is None else float(sigma)
    pad = max(3.0 * width, _PAD_FRACTION * float(nodes.max() - nodes.min()))
    grid = np.linspace(float(nodes.min()) - pad, float(nodes.max()) + pad, points)
    density = _gaussian_mixture(grid, nodes, weights, width)
    return SpectralDensity(grid=grid, density=density, runs=runs, iterations=steps, sigma=width)


def _resample_max(density: SpectralDensity, width: int) -> np.ndarray:
    """The density's maximum within each of ``width`` equal slices of the grid.

    The maximum (not the mean) keeps a narrow outlier peak visible in a short line.
    Each slice is sampled at ``ceil(points / width)`` interpolated points or more.
    """
    per_bin = max(1, math.ceil(density.grid.size / width))
    fine = np.linspace(density.grid[0], density.grid[-1], width * per_bin)
    values = np.interp(fine, density.grid, density.density)
    return np.asarray(values.reshape(width, per_bin).max(axis=1), dtype=np.float64)


def text_density(density: SpectralDensity, width: int = 40) -> str:
    """A one-line sparkline of ``density``, ``width`` block characters wide.

    Heights are log-scaled over :data:`_DECADES` decades below the peak, so small
    outlying clusters (e.g. a few large Hessian eigenvalues far from the bulk at 0)
    still show; anything lower than that, including zero, is the lowest block.
    """
    _require(width >= 1, "width must be at least 1")
    values = _resample_max(density, width)
    peak = float(values.max())
    if not peak > 0.0:
        return BLOCKS[0] * width
    ratio = np.maximum(values / peak, 10.0**-_DECADES)
    level = (np.log10(ratio) + _DECADES) / _DECADES * (len(BLOCKS) - 1)
    indices = np.clip(np.rint(level), 0, len(BLOCKS) - 1).astype(int)
    return "".join(BLOCKS[i] for i in indices)
