"""Tensor statistics, reduced inside the TensorFlow graph.

Each function here builds graph ops that reduce one tensor to a small float64 vector, so
that a compiled step returns a few numbers per tensor instead of the tensors themselves.
Sums are accumulated in float64: float16/bfloat16/float32 inputs neither overflow (a
float32 gradient of 1e20 squares to 1e40) nor lose digits over millions of terms.

The vector layout is :data:`FIELDS`; :func:`to_tensor_stats` and :func:`to_value_stats`
turn a fetched row into the report's dataclasses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _tf
from .report import TensorStats, ValueStats

FIELDS = ("l2", "max_abs", "mean", "std", "zero_frac", "nonfinite", "dead_frac")
N_FIELDS = len(FIELDS)


def _wide(tensor: Any) -> Any:
    """``tensor`` as float64 (complex and integer tensors are not expected here)."""
    tf = _tf.tensorflow()
    return tf.cast(tensor, tf.float64)


def _dense_moments(values: Any, size: Any, extra_zeros: Any) -> list[Any]:
    """l2, max|x|, mean, std, zero fraction, non-finite count of ``values``.

    ``extra_zeros`` implicit zero entries are counted as part of the tensor (the rows of
    an ``IndexedSlices`` gradient that no index touched); ``size`` is the full count.
    """
    tf = _tf.tensorflow()
    size = tf.cast(size, tf.float64)
    extra = tf.cast(extra_zeros, tf.float64)
    # Exact in the tensor's own dtype: extremes and counts.
    max_abs = tf.maximum(tf.cast(tf.reduce_max(tf.abs(values)), tf.float64), 0.0)
    zeros = tf.cast(tf.math.count_nonzero(tf.equal(values, 0)), tf.float64) + extra
    nonfinite = tf.cast(tf.size(values), tf.float64) - tf.cast(
        tf.math.count_nonzero(tf.math.is_finite(values)), tf.float64
    )
    # Sums in float64: two-pass variance, and the sum of squares split into the
    # centered part plus n*mean^2 (both non-negative, so no cancellation).
    wide = _wide(values)
    mean = tf.reduce_sum(wide) / size
    centered = wide - mean
    centered_squares = tf.reduce_sum(centered * centered) + extra * mean * mean
    l2 = tf.sqrt(centered_squares + size * mean * mean)
    # With NaN or Inf present the centered sum is NaN; the true norm is NaN when a NaN
    # is present, +Inf otherwise, which is exactly what max|x| holds then.
    l2 = tf.where(nonfinite > 0, max_abs, l2)
    variance = centered_squares / size
    return [l2, max_abs, mean, tf.sqrt(variance), zeros / size, nonfinite]


def tensor_stats(tensor: Any) -> Any:
    """Float64 vector of :data:`FIELDS` for a dense tensor (``dead_frac`` is NaN)."""
    tf = _tf.tensorflow()
    size = tf.size(tensor)
    moments = _dense_moments(tensor, size, 0)
    return tf.stack([*moments, tf.constant(np.nan, tf.float64)])


def value_stats(tensor: Any) -> Any:
    """Like :func:`tensor_stats`, with the fraction of dead units in ``dead_frac``.

    A unit is a position on the last axis; it is dead when it is exactly zero across
    every other axis (the batch, and spatial or time positions).  Rank-1 outputs have
    one unit per tensor, scalars none.
    """
    tf = _tf.tensorflow()
    moments = _dense_moments(tensor, tf.size(tensor), 0)
    rank = tensor.shape.rank
    if rank is None or rank == 0:
        dead = tf.constant(np.nan, tf.float64)
    else:
        is_zero = tf.equal(tensor, tf.zeros([], tensor.dtype))
        if rank == 1:
            dead = tf.cast(tf.reduce_all(is_zero), tf.float64)
        else:
            per_unit = tf.reduce_all(is_zero, axis=list(range(rank - 1)))
            dead = tf.reduce_mean(tf.cast(per_unit, tf.float64))
    return tf.stack([*moments, dead])


def indexed_slices_stats(grad: Any) -> tuple[Any, Any]:
    """Stats of the dense tensor an ``IndexedSlices`` gradient stands for, and rows touched.

    Duplicate indices are summed first (as the dense conversion would), and rows that no
    index touched count as zeros, without ever building the dense tensor.
    """
    tf = _tf.tensorflow()
    unique_rows, position = tf.unique(grad.indices)
    rows_touched = tf.size(unique_rows)
    summed = tf.math.unsorted_segment_sum(grad.values, position, rows_touched)
    dense_shape = tf.cast(grad.dense_shape, tf.int64)
    full_size = tf.reduce_prod(dense_shape)
    extra_zeros = full_size - tf.cast(tf.size(summed), tf.int64)
    moments = _dense_moments(summed, full_size, extra_zeros)
    stats = tf.stack([*moments, tf.constant(np.nan, tf.float64)])
    return stats, rows_touched


def l2_norm(tensor: Any) -> Any:
    """Float64 L2 norm of ``tensor`` (a variable's weights, say)."""
    tf = _tf.tensorflow()
    wide = _wide(tensor)
    return tf.sqrt(tf.reduce_sum(wide * wide))


def _field(row: np.ndarray, name: str) -> float:
    return float(row[FIELDS.index(name)])


def to_tensor_stats(row: np.ndarray) -> TensorStats:
    """The report dataclass for one fetched stats vector."""
    return TensorStats(
        l2=_field(row, "l2"),
        max_abs=_field(row, "max_abs"),
        mean=_field(row, "mean"),
        std=_field(row, "std"),
        zero_frac=_field(row, "zero_frac"),
        nonfinite=int(_field(row, "nonfinite")),
    )


def to_value_stats(row: np.ndarray) -> ValueStats:
    """The report dataclass for one fetched activation-value stats vector."""
    dead = _field(row, "dead_frac")
    base = to_tensor_stats(row)
    return ValueStats(**vars(base), dead_frac=None if np.isnan(dead) else dead)
