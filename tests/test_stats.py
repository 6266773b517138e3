"""gradscope.stats against numpy in float64.

Every statistic is recomputed with numpy on the same values widened to float64 (which is
exact for float16 and float32 inputs), so the only differences allowed are float64
summation-order effects: ``rtol=1e-12`` on sums over at most a few thousand terms (the
relative error of a float64 sum of n terms is below n * 2**-53 ~ 1e-13 here).  Counts
(``zero_frac``, ``nonfinite``, ``dead_frac``) and extremes (``max_abs``) must be exact.

Each case runs eagerly and inside a ``tf.function`` (the engine calls these functions in
a traced step).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradscope import stats
from gradscope.report import TensorStats, ValueStats
from tests.reference import numpy_dead_frac, numpy_stats

RTOL = 1e-12
MODES = ["eager", "graph"]


def run(tf, mode, fn, *args):  # type: ignore[no-untyped-def]
    """``fn(*args)`` eagerly, or traced in a ``tf.function``; results as numpy."""
    if mode == "graph":
        fn = tf.function(fn, autograph=False)
    result = fn(*args)
    return tf.nest.map_structure(lambda t: t.numpy(), result)


def fields(row: np.ndarray) -> dict[str, float]:
    assert row.shape == (len(stats.FIELDS),)
    assert row.dtype == np.float64
    return dict(zip(stats.FIELDS, row.tolist(), strict=True))


def assert_same_value(name: str, actual: float, expected: float, scale: float) -> None:
    """Equal up to float64 rounding; NaN matches NaN and infinities must match exactly."""
    if math.isnan(expected) or math.isinf(expected):
        assert (math.isnan(actual) and math.isnan(expected)) or actual == expected, (
            f"{name}: expected {expected}, found {actual}"
        )
        return
    assert actual == pytest.approx(expected, rel=RTOL, abs=RTOL * scale), (
        f"{name}: expected {expected!r}, found {actual!r}"
    )


def assert_matches_numpy(row: np.ndarray, array: np.ndarray) -> None:
    got = fields(row)
    want = numpy_stats(array)
    finite = np.asarray(array, np.float64)
    finite = finite[np.isfinite(finite)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    for name in ("l2", "mean", "std"):
        assert_same_value(name, got[name], want[name], scale)
    # Extremes and counts are exact.
    if math.isnan(want["max_abs"]):
        assert math.isnan(got["max_abs"]), got
    else:
        assert got["max_abs"] == want["max_abs"]
    assert got["zero_frac"] == want["zero_frac"]
    assert got["nonfinite"] == want["nonfinite"]


def _random_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(1234)
    normal = rng.normal(size=(7, 5, 3))
    sparse = np.where(rng.random((64, 16)) < 0.3, 0.0, rng.normal(size=(64, 16)))
    return [
        ("float32 rank 3", normal.astype(np.float32)),
        ("float64 rank 2", rng.normal(size=(33, 4))),
        ("float16 rank 2", rng.normal(size=(40, 6)).astype(np.float16)),
        ("float32 with exact zeros", sparse.astype(np.float32)),
        ("float32 scalar", np.array(-2.5, np.float32)),
        ("float32 rank 1", rng.normal(size=11).astype(np.float32)),
        # A large common offset: a one-pass E[x^2]-E[x]^2 variance would lose the noise.
        ("float32 offset 1e4", (1e4 + rng.normal(size=(50, 20))).astype(np.float32)),
        # Squares overflow float32 (1e60 > 3.4e38): the sums must be taken in float64.
        ("float32 1e30", (1e30 * rng.normal(size=(9, 9))).astype(np.float32)),
        # Squares underflow float32 to zero (1e-60 < 1.4e-45).
        ("float32 1e-30", (1e-30 * rng.normal(size=(9, 9))).astype(np.float32)),
        # Squares overflow float16 (300**2 > 65504).
        ("float16 300", (300 * rng.choice([-1.0, 1.0], size=(8, 4))).astype(np.float16)),
        ("float32 all zeros", np.zeros((6, 5), np.float32)),
        ("float16 all zeros", np.zeros((3, 2, 2, 4), np.float16)),
    ]


RANDOM_CASES = _random_cases()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", RANDOM_CASES, ids=[name for name, _ in RANDOM_CASES])
def test_tensor_stats_match_numpy(tf, mode, case) -> None:  # type: ignore[no-untyped-def]
    _, array = case
    row = run(tf, mode, stats.tensor_stats, tf.constant(array))
    assert_matches_numpy(row, array)
    assert math.isnan(fields(row)["dead_frac"])  # dense gradients have no dead units


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", RANDOM_CASES, ids=[name for name, _ in RANDOM_CASES])
def test_value_stats_match_numpy(tf, mode, case) -> None:  # type: ignore[no-untyped-def]
    _, array = case
    row = run(tf, mode, stats.value_stats, tf.constant(array))
    assert_matches_numpy(row, array)
    dead = fields(row)["dead_frac"]
    expected = numpy_dead_frac(array)
    if expected is None:
        assert math.isnan(dead)
    else:
        assert dead == expected


@pytest.fixture
def tiny_chunks(monkeypatch):  # type: ignore[no-untyped-def]
    """Reduction loops that read 12 entries a step, so every case spans many chunks (and
    a last, shorter one)."""
    monkeypatch.setattr(stats, "CHUNK_ENTRIES", 12)


def _chunk_cases() -> list[np.ndarray]:
    """Same-shape tensors (stacked into one group), dead columns, zeros, a NaN and an
    Inf, and shapes whose size is not a multiple of the chunk."""
    rng = np.random.default_rng(7)
    grouped = [rng.normal(size=(9, 5)).astype(np.float32) for _ in range(3)]
    grouped[0][:, 1] = 0.0  # a dead unit
    grouped[1][:, [0, 4]] = 0.0
    grouped[1][2, 2] = 0.0  # a zero in a live unit
    odd = (1e4 + rng.normal(size=(13,))).astype(np.float32)
    wide_units = rng.normal(size=(2, 3, 29)).astype(np.float16)
    wide_units[:, :, 5] = 0.0
    broken = rng.normal(size=(7, 4)).astype(np.float32)
    broken[3, 1], broken[6, 2] = np.nan, np.inf
    return [*grouped, odd, wide_units, broken]


@pytest.mark.parametrize("mode", MODES)
def test_chunked_reduction_matches_numpy(tf, mode, tiny_chunks) -> None:  # type: ignore[no-untyped-def]
    arrays = _chunk_cases()
    table = run(
        tf,
        mode,
        lambda *ts: stats.batch_stats(list(ts), dead_units=True),
        *[tf.constant(a) for a in arrays],
    )
    for row, array in zip(table, arrays, strict=True):
        assert_matches_numpy(row, array)
        assert fields(row)["dead_frac"] == numpy_dead_frac(array)


def test_chunked_indexed_slices_match_dense(tf, tiny_chunks) -> None:  # type: ignore[no-untyped-def]
    values = tf.constant(np.arange(1.0, 41.0, dtype=np.float32).reshape(10, 4) - 20.0)
    grad = tf.IndexedSlices(
        values, tf.constant([3, 0, 3, 7, 1, 8, 8, 2, 9, 5]), tf.constant([12, 4])
    )
    row, touched = stats.indexed_slices_stats(grad)
    assert_matches_numpy(row.numpy(), tf.convert_to_tensor(grad).numpy())
    assert int(touched) == 8


@pytest.mark.parametrize("mode", MODES)
def test_float64_sum_overflow_is_not_a_nonfinite_entry(tf, mode) -> None:  # type: ignore[no-untyped-def]
    """Every entry is finite but their float64 sum overflows: none is counted as
    non-finite (the count is taken entry by entry once a sum is not finite)."""
    array = np.array([[1e308, 1e308, 1e308, -1e308, 5.0]])
    row = fields(run(tf, mode, stats.tensor_stats, tf.constant(array)))
    assert row["nonfinite"] == 0.0
    assert row["max_abs"] == 1e308


def test_large_magnitude_l2_is_exact_in_float64(tf) -> None:  # type: ignore[no-untyped-def]
    """1e30 in float32: every square overflows float32, the norm must not."""
    array = np.full((4, 25), 1e30, np.float32)
    got = fields(stats.tensor_stats(tf.constant(array)).numpy())
    one = float(np.float32(1e30))  # 1e30 is not exactly representable in float32
    assert got["l2"] == pytest.approx(10.0 * one, rel=1e-15)
    assert got["max_abs"] == one
    assert got["mean"] == pytest.approx(one, rel=1e-15)
    assert got["std"] == pytest.approx(0.0, abs=1e-15 * one)
    assert math.isfinite(got["l2"])
    assert stats.l2_norm(tf.constant(array)).numpy() == pytest.approx(10.0 * one, rel=1e-15)


def test_offset_std_keeps_the_noise(tf) -> None:  # type: ignore[no-untyped-def]
    """std of 1e8 + {-1, +1} in float64 is exactly 1 (a naive float32 reduction gives 0)."""
    array = np.array([1e8 - 1, 1e8 + 1] * 50, np.float64)
    got = fields(stats.tensor_stats(tf.constant(array)).numpy())
    assert got["std"] == pytest.approx(1.0, rel=1e-9)
    assert got["mean"] == pytest.approx(1e8, rel=1e-15)


# -- non-finite values -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_nan_is_counted(tf, mode) -> None:  # type: ignore[no-untyped-def]
    array = np.array([[1.0, np.nan, -3.0], [0.0, 2.0, np.nan]], np.float32)
    got = fields(run(tf, mode, stats.tensor_stats, tf.constant(array)))
    assert got["nonfinite"] == 2
    assert got["zero_frac"] == pytest.approx(1 / 6)
    # The sums run over all entries, so they are NaN (numpy agrees).
    assert math.isnan(got["l2"])
    assert math.isnan(got["mean"])
    assert math.isnan(got["std"])
    assert not math.isfinite(got["max_abs"])


@pytest.mark.parametrize("mode", MODES)
def test_inf_is_counted_and_max_abs_is_inf(tf, mode) -> None:  # type: ignore[no-untyped-def]
    array = np.array([[1.0, np.inf, -3.0], [0.0, -np.inf, 2.0]], np.float32)
    got = fields(run(tf, mode, stats.tensor_stats, tf.constant(array)))
    assert got["nonfinite"] == 2
    assert got["max_abs"] == math.inf
    assert got["zero_frac"] == pytest.approx(1 / 6)


@pytest.mark.parametrize("mode", MODES)
def test_inf_and_nan_both_counted(tf, mode) -> None:  # type: ignore[no-untyped-def]
    array = np.array([np.nan, np.inf, -np.inf, 1.0, 0.0], np.float16)
    got = fields(run(tf, mode, stats.tensor_stats, tf.constant(array)))
    assert got["nonfinite"] == 3
    assert got["zero_frac"] == pytest.approx(1 / 5)
    assert not math.isfinite(got["max_abs"])


@pytest.mark.parametrize("mode", MODES)
def test_l2_of_a_tensor_holding_inf_is_inf(tf, mode) -> None:  # type: ignore[no-untyped-def]
    """sqrt(sum x^2) over [1, inf, -3] is +inf, as numpy says; NaN would hide the overflow."""
    array = np.array([1.0, np.inf, -3.0], np.float32)
    got = fields(run(tf, mode, stats.tensor_stats, tf.constant(array)))
    want = numpy_stats(array)
    assert want["l2"] == math.inf
    assert got["l2"] == math.inf, f"l2 of {array.tolist()}: expected inf, found {got['l2']}"
    assert got["mean"] == math.inf


@pytest.mark.parametrize("mode", MODES)
def test_float32_overflow_to_inf_is_nonfinite(tf, mode) -> None:  # type: ignore[no-untyped-def]
    """A gradient that overflowed float32 (3e38 * 10) is reported, not silently widened."""
    big = tf.constant([3e38, 1.0], tf.float32) * tf.constant(10.0)
    got = fields(run(tf, mode, stats.tensor_stats, big))
    assert got["nonfinite"] == 1
    assert got["max_abs"] == math.inf


# -- dead units --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_dead_units_rank2(tf, mode) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    array = np.maximum(rng.normal(size=(16, 10)), 0.0).astype(np.float32)
    array[:, [1, 4, 9]] = 0.0  # dead: zero for every example
    array[:15, 6] = 0.0  # alive: one example is non-zero
    array[15, 6] = 0.5
    got = fields(run(tf, mode, stats.value_stats, tf.constant(array)))
    assert got["dead_frac"] == pytest.approx(3 / 10, abs=0)
    assert numpy_dead_frac(array) == 3 / 10
    assert got["zero_frac"] == float(np.mean(array == 0))


@pytest.mark.parametrize("mode", MODES)
def test_dead_units_rank4(tf, mode) -> None:  # type: ignore[no-untyped-def]
    """Units are channels: dead when zero at every example and every spatial position."""
    rng = np.random.default_rng(8)
    array = np.maximum(rng.normal(size=(3, 5, 4, 8)), 0.0).astype(np.float32)
    array[..., 2] = 0.0
    array[..., 5] = 0.0
    array[..., 7] = 0.0
    array[2, 4, 3, 7] = 1e-30  # one tiny non-zero value keeps channel 7 alive
    array[:, :, :, 0] = 0.0
    array[1, 0, 0, 0] = -0.0  # negative zero is zero
    got = fields(run(tf, mode, stats.value_stats, tf.constant(array)))
    assert got["dead_frac"] == 3 / 8
    assert numpy_dead_frac(array) == 3 / 8
    assert got["zero_frac"] == float(np.mean(array == 0))


def test_dead_units_rank1_is_one_unit(tf) -> None:  # type: ignore[no-untyped-def]
    """A (batch,) output is one unit: dead only when zero for every example."""
    assert fields(stats.value_stats(tf.zeros([5])).numpy())["dead_frac"] == 1.0
    partly = tf.constant([0.0, 0.0, 3.0])
    assert fields(stats.value_stats(partly).numpy())["dead_frac"] == 0.0


def test_dead_units_scalar_is_none(tf) -> None:  # type: ignore[no-untyped-def]
    row = stats.value_stats(tf.constant(0.0)).numpy()
    assert math.isnan(fields(row)["dead_frac"])
    assert stats.to_value_stats(row).dead_frac is None


# -- IndexedSlices ---------------------------------------------------------------------


def _slices(tf, values, indices, dense_shape):  # type: ignore[no-untyped-def]
    return tf.IndexedSlices(
        tf.constant(values), tf.constant(indices), tf.constant(dense_shape, tf.int64)
    )


INDEXED_CASES = {
    # duplicates (3 three times, 0 twice) are summed by the dense conversion
    "duplicates": ([3, 0, 3, 7, 0, 3], (10, 4), np.float32),
    "all rows": ([0, 1, 2, 3, 4], (5, 3), np.float32),
    "one row": ([2], (6, 2), np.float32),
    "int64 indices, rank 3": ([5, 1, 5], (8, 2, 3), np.float64),
    "float16 duplicates": ([1, 1, 4], (6, 5), np.float16),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(INDEXED_CASES))
def test_indexed_slices_stats_equal_dense(tf, mode, name) -> None:  # type: ignore[no-untyped-def]
    indices, dense_shape, dtype = INDEXED_CASES[name]
    rng = np.random.default_rng(len(name))
    values = rng.normal(size=(len(indices), *dense_shape[1:])).astype(dtype)
    index_dtype = np.int64 if "int64" in name else np.int32
    grad = _slices(tf, values, np.asarray(indices, index_dtype), dense_shape)

    row, touched = run(tf, mode, stats.indexed_slices_stats, grad)
    dense = tf.convert_to_tensor(grad).numpy()
    # The dense tensor independently: np.add.at sums duplicate rows.
    by_hand = np.zeros(dense_shape, np.float64)
    np.add.at(by_hand, np.asarray(indices), values.astype(np.float64))
    np.testing.assert_allclose(dense, by_hand, rtol=1e-3 if dtype == np.float16 else 1e-6)

    assert_matches_numpy(row, dense)
    assert math.isnan(fields(row)["dead_frac"])
    assert int(touched) == len(set(indices))


@pytest.mark.parametrize("mode", MODES)
def test_indexed_slices_cancelling_duplicates_count_as_zero(tf, mode) -> None:  # type: ignore[no-untyped-def]
    """Two updates of one row that cancel leave an exact zero row in the dense tensor."""
    values = np.array([[1.0, 2.0], [-1.0, -2.0], [0.5, 0.0]], np.float32)
    grad = _slices(tf, values, np.array([4, 4, 1], np.int32), (6, 2))
    row, touched = run(tf, mode, stats.indexed_slices_stats, grad)
    dense = tf.convert_to_tensor(grad).numpy()
    assert_matches_numpy(row, dense)
    got = fields(row)
    assert got["zero_frac"] == 11 / 12
    assert got["l2"] == pytest.approx(0.5, rel=1e-15)
    assert got["mean"] == pytest.approx(0.5 / 12, rel=1e-15)
    assert int(touched) == 2  # touched rows, even though row 4 sums to zero


def test_indexed_slices_large_values(tf) -> None:  # type: ignore[no-untyped-def]
    """Duplicate rows of 1e30 sum to 2e30 and square past float32; l2 must stay finite."""
    values = np.full((2, 3), 1e30, np.float32)
    grad = _slices(tf, values, np.array([0, 0], np.int32), (4, 3))
    row, touched = stats.indexed_slices_stats(grad)
    got = fields(row.numpy())
    one = float(np.float32(1e30))
    dense_value = float(np.float32(2 * np.float32(1e30)))  # the sum happens in float32
    assert got["l2"] == pytest.approx(math.sqrt(3) * dense_value, rel=1e-12)
    assert got["max_abs"] == dense_value
    assert got["mean"] == pytest.approx(3 * dense_value / 12, rel=1e-12)
    assert dense_value == pytest.approx(2 * one, rel=1e-7)
    assert int(touched) == 1


# -- weights and conversion --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_l2_norm_matches_numpy(tf, dtype) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    array = (rng.normal(size=(12, 7)) * 50).astype(dtype)
    got = stats.l2_norm(tf.constant(array)).numpy()
    assert got.dtype == np.float64
    expected = np.sqrt(np.sum(np.square(array.astype(np.float64))))
    assert got == pytest.approx(expected, rel=RTOL)


def test_to_tensor_stats_reads_fields_by_name() -> None:
    row = np.array([1.5, 2.5, -0.25, 0.75, 0.125, 3.0, 0.5])
    assert stats.FIELDS == ("l2", "max_abs", "mean", "std", "zero_frac", "nonfinite", "dead_frac")
    assert stats.to_tensor_stats(row) == TensorStats(1.5, 2.5, -0.25, 0.75, 0.125, 3)
    assert stats.to_value_stats(row) == ValueStats(1.5, 2.5, -0.25, 0.75, 0.125, 3, 0.5)
    nan_dead = row.copy()
    nan_dead[-1] = np.nan
    assert stats.to_value_stats(nan_dead).dead_frac is None
