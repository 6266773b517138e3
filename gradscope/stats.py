"""Tensor statistics, reduced inside the TensorFlow graph.

Each function here builds graph ops that reduce tensors to small float64 vectors, so
that a compiled step returns a few numbers per tensor instead of the tensors themselves.
:func:`batch_stats` stacks tensors of equal shape and reduces them together, so the
graph does not grow by dozens of ops per tensor.
Sums are accumulated in float64: float16/bfloat16/float32 inputs neither overflow (a
float32 gradient of 1e20 squares to 1e40) nor lose digits over millions of terms.

The vector layout is :data:`FIELDS`; :func:`to_tensor_stats` and :func:`to_value_stats`
turn a fetched row into the report's dataclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from . import _tf
from .report import TensorStats, ValueStats

FIELDS = ("l2", "max_abs", "mean", "std", "zero_frac", "nonfinite", "dead_frac")
N_FIELDS = len(FIELDS)


class Reducer(Protocol):
    """How the partial reductions of the pieces of a tensor combine into the whole's.

    A tensor split across replicas (each replica holds some rows of a batch) has the
    statistics of the whole when its sums, counts and extremes are combined across the
    replicas inside the graph; :class:`gradscope.engine.replicas.AcrossReplicas` does it
    with collective ops.  Every call gets a ``[k]`` vector, one entry per tensor, in the
    tensors' own order, so every replica issues the same collectives with the same
    shapes whatever its share of the rows.
    """

    def sum(self, value: Any) -> Any: ...
    def max(self, value: Any) -> Any: ...
    def min(self, value: Any) -> Any: ...


def _combined(reducer: Reducer | None, kind: str, value: Any) -> Any:
    """``value`` combined over the pieces by ``reducer`` (``kind``: sum, max or min);
    ``value`` itself for tensors held whole."""
    return value if reducer is None else getattr(reducer, kind)(value)


def _raw_sums(matrix: Any, is_zero: Any, count: Any, extra_zeros: Any = None) -> Any:
    """``[k, 5]`` float64 raw reductions of each row of the ``[k, n]`` ``matrix``.

    Columns: max, min, zero count, sum, centered sum of squares.  ``count`` is the
    number of entries of one row, ``extra_zeros`` of them implicit zeros that ``matrix``
    does not hold (the rows of an ``IndexedSlices`` gradient that no index touched).
    Extremes and counts are exact in the tensor's own dtype; sums are taken in float64,
    the variance in two passes (the mean first, then the centered squares).  Only
    reductions live here, a few ops per group of tensors: the arithmetic that turns
    them into statistics runs once for all tensors, in :func:`_finish`.
    """
    tf = _tf.tensorflow()
    wide = tf.cast(matrix, tf.float64)
    total = tf.reduce_sum(wide, axis=1)
    mean = total / count
    centered = tf.reduce_sum(tf.math.squared_difference(wide, mean[:, None]), axis=1)
    zeros = tf.reduce_sum(tf.cast(is_zero, tf.int32), axis=1)
    if extra_zeros is not None:
        zeros += tf.cast(extra_zeros, tf.int32)
        centered += tf.cast(extra_zeros, tf.float64) * mean * mean
    extremes = tf.stack([tf.reduce_max(matrix, axis=1), tf.reduce_min(matrix, axis=1)], axis=1)
    return tf.concat(
        [
            tf.cast(extremes, tf.float64),
            tf.stack([tf.cast(zeros, tf.float64), total, centered], axis=1),
        ],
        axis=1,
    )


def _finite_counts(matrix: Any) -> Any:
    """``[k]`` float64: the finite entries of each row."""
    tf = _tf.tensorflow()
    finite = tf.reduce_sum(tf.cast(tf.math.is_finite(matrix), tf.int32), axis=1)
    return tf.cast(finite, tf.float64)


def _finish(raw: Any, count: Any, finite: Any, dead: Any) -> Any:
    """``[k, N_FIELDS]`` statistics from raw reductions, counts and dead fractions.

    Vectorized over all tensors at once, so this arithmetic costs its ops only once.
    """
    tf = _tf.tensorflow()
    highest, lowest, zeros, total, centered = tf.unstack(raw, axis=1)
    count = tf.cast(count, tf.float64)
    max_abs = tf.maximum(tf.maximum(highest, -lowest), 0.0)
    mean = total / count
    # sum(x^2) = sum((x - mean)^2) + n*mean^2: both non-negative, no cancellation.  With
    # NaN or Inf present the sums are NaN; the true norm is then NaN when a NaN is
    # present, +Inf otherwise, which is exactly what max|x| holds.
    l2 = tf.where(tf.math.is_finite(centered), tf.sqrt(centered + count * mean * mean), max_abs)
    std = tf.sqrt(centered / count)
    return tf.stack([l2, max_abs, mean, std, zeros / count, count - finite, dead], axis=1)


def _dead_units(is_zero: Any, shape: tuple[int, ...]) -> Any:
    """Bool ``[k, units]``: per row of ``is_zero`` (tensors of ``shape``, rank >= 1),
    which units are zero everywhere.  A unit is a position on the last axis; a rank-1
    tensor is one unit."""
    tf = _tf.tensorflow()
    if len(shape) == 1:
        return tf.reduce_all(is_zero, axis=1, keepdims=True)
    grid = tf.reshape(is_zero, [-1, int(np.prod(shape[:-1])), shape[-1]])
    return tf.reduce_all(grid, axis=1)


def _dead_fractions(
    is_zero: Sequence[Any],
    tensors: Sequence[Any],
    groups: Sequence[list[int]],
    reducer: Reducer | None,
) -> Any:
    """``[k]`` float64 dead-unit fractions of the tensors, in their order, from their
    groups' ``is_zero`` matrices; NaN for scalars, which have no units.

    With a ``reducer`` a unit is dead when it is zero in every piece: the pieces' live
    indicators, one vector in the tensors' order, are summed across them (an AND of the
    dead masks) before the fractions are taken.
    """
    tf = _tf.tensorflow()
    dead: list[Any] = [None] * len(tensors)
    for zero, group in zip(is_zero, groups, strict=True):
        shape = tuple(tensors[group[0]].shape.as_list())
        if shape:
            rows = tf.unstack(tf.cast(_dead_units(zero, shape), tf.float64), num=len(group))
            for index, row in zip(group, rows, strict=True):
                dead[index] = row
    if reducer is not None:
        present = [d for d in dead if d is not None]
        if present:
            live = reducer.sum(tf.concat([1.0 - d for d in present], axis=0))
            pieces = iter(tf.split(live, [int(d.shape[0]) for d in present]))
            dead = [
                None if d is None else tf.cast(tf.equal(next(pieces), 0.0), tf.float64)
                for d in dead
            ]
    nan = tf.constant(np.nan, tf.float64)
    return tf.stack([nan if d is None else tf.reduce_mean(d) for d in dead])


def live_units(tensor: Any) -> Any:
    """Bool ``[units]``: which units (positions on the last axis) are non-zero somewhere.

    The complement of :func:`_dead_fraction`'s dead units, kept per unit so that
    several batches can be merged: a unit is dead on all of them when it is live on
    none.  Scalars have no units (an empty vector).
    """
    tf = _tf.tensorflow()
    if tensor.shape.rank == 0:
        return tf.zeros([0], tf.bool)
    nonzero = tf.not_equal(tensor, tf.zeros([], tensor.dtype))
    if tensor.shape.rank == 1:
        return tf.reshape(tf.reduce_any(nonzero), [1])
    last = tensor.shape[-1]
    return tf.reduce_any(tf.reshape(nonzero, [-1, last]), axis=0)


def _compute_dtype(tensor: Any) -> Any:
    tf = _tf.tensorflow()
    return tf.float64 if tensor.dtype == tf.float64 else tf.float32


def _group_key(index: int, tensor: Any) -> tuple[Any, ...]:
    """Tensors with equal keys (dtype and static shape) are stacked and reduced together."""
    if not tensor.shape.is_fully_defined():
        return ("alone", index)
    return (tensor.dtype, tuple(tensor.shape.as_list()))


def _matrix(tensors: list[Any]) -> Any:
    """Same-shape tensors as the rows of one ``[k, n]`` matrix, widened to float32."""
    tf = _tf.tensorflow()
    dtype = _compute_dtype(tensors[0])
    if tensors[0].dtype != dtype:  # float16/bfloat16: exact widening
        tensors = [tf.cast(t, dtype) for t in tensors]
    if len(tensors) == 1:
        return tf.reshape(tensors[0], [1, -1])
    return tf.reshape(tf.stack(tensors), [len(tensors), -1])


def _entry_count(tensor: Any) -> Any:
    """Entries of ``tensor``: a Python float when its shape is static, else a tensor."""
    tf = _tf.tensorflow()
    size = tensor.shape.num_elements()
    if size is not None:
        return float(size)
    return tf.cast(tf.size(tensor, out_type=tf.int64), tf.float64)


def _groups(tensors: Sequence[Any]) -> list[list[int]]:
    """Indices of the tensors with equal dtype and static shape, which are reduced
    together; a tensor whose shape is not fully known is a group of its own."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(_group_key(index, tensor), []).append(index)
    return list(groups.values())


def batch_stats(
    tensors: list[Any], *, dead_units: bool = False, reducer: Reducer | None = None
) -> Any:
    """``[len(tensors), N_FIELDS]`` float64 stats of dense tensors, in their order.

    Tensors of the same dtype and shape are stacked and reduced together, so the graph
    grows by a few dozen ops per distinct shape rather than per tensor: on a ResNet, that
    is the difference between seconds and tens of seconds of tracing and graph
    optimization.  With ``dead_units`` the last field is the fraction of dead units (see
    :func:`value_stats`); otherwise it is NaN.

    With a ``reducer`` each tensor is one piece of a whole (a replica's rows): the
    statistics are the whole's, the same two passes (the mean of the whole first, then
    the squares centered on it) as for a tensor held whole.
    """
    tf = _tf.tensorflow()
    if not tensors:
        return tf.zeros([0, N_FIELDS], tf.float64)
    groups = _groups(tensors)
    order = [i for group in groups for i in group]
    back = None if order == sorted(order) else tf.constant(np.argsort(order), tf.int32)

    def in_order(pieces: list[Any]) -> Any:
        joined = tf.concat(pieces, axis=0)
        return joined if back is None else tf.gather(joined, back)

    matrices = [_matrix([tensors[i] for i in group]) for group in groups]
    wide = [tf.cast(m, tf.float64) for m in matrices]
    is_zero = [tf.equal(m, 0) for m in matrices]
    counts = [_entry_count(tensors[i]) for i in range(len(tensors))]
    count = (
        tf.stack(counts)
        if any(tf.is_tensor(c) for c in counts)
        else tf.constant(counts, tf.float64)
    )
    first = tf.stack(
        [
            count,
            in_order([tf.reduce_sum(w, axis=1) for w in wide]),
            in_order([tf.reduce_sum(tf.cast(z, tf.float64), axis=1) for z in is_zero]),
            in_order([_finite_counts(m) for m in matrices]),
        ],
        axis=1,
    )
    count, total, zeros, finite = tf.unstack(_combined(reducer, "sum", first), axis=1)
    means = tf.split(tf.gather(total / count, order), [len(g) for g in groups])
    centered = _combined(
        reducer,
        "sum",
        in_order(
            [
                tf.reduce_sum(tf.math.squared_difference(w, mean[:, None]), axis=1)
                for w, mean in zip(wide, means, strict=True)
            ]
        ),
    )
    highest = _combined(reducer, "max", in_order([_extreme(m, "max") for m in matrices]))
    lowest = _combined(reducer, "min", in_order([_extreme(m, "min") for m in matrices]))
    if dead_units:
        dead = _dead_fractions(is_zero, tensors, groups, reducer)
    else:
        dead = tf.fill([len(tensors)], tf.constant(np.nan, tf.float64))
    raw = tf.stack([highest, lowest, zeros, total, centered], axis=1)
    return _finish(raw, count, finite, dead)


def _extreme(matrix: Any, kind: str) -> Any:
    """``[k]`` float64: each row's max or min, taken in the tensor's own dtype (exact)."""
    tf = _tf.tensorflow()
    reduce = tf.reduce_max if kind == "max" else tf.reduce_min
    return tf.cast(reduce(matrix, axis=1), tf.float64)


def tensor_stats(tensor: Any) -> Any:
    """Float64 vector of :data:`FIELDS` for one dense tensor (``dead_frac`` is NaN)."""
    return batch_stats([tensor])[0]


def value_stats(tensor: Any) -> Any:
    """Like :func:`tensor_stats`, with the fraction of dead units in ``dead_frac``.

    A unit is a position on the last axis; it is dead when it is exactly zero across
    every other axis (the batch, and spatial or time positions).  Rank-1 outputs have
    one unit per tensor, scalars none.
    """
    return batch_stats([tensor], dead_units=True)[0]


def indexed_slices_stats(grad: Any) -> tuple[Any, Any]:
    """Stats of the dense tensor an ``IndexedSlices`` gradient stands for, and rows touched.

    Duplicate indices are summed first (as the dense conversion would), and rows that no
    index touched count as zeros, without ever building the dense tensor.
    """
    tf = _tf.tensorflow()
    unique_rows, position = tf.unique(grad.indices)
    rows_touched = tf.size(unique_rows)
    summed = tf.math.unsorted_segment_sum(grad.values, position, rows_touched)
    full_size = tf.reduce_prod(tf.cast(grad.dense_shape, tf.int64))
    extra_zeros = full_size - tf.size(summed, out_type=tf.int64)
    matrix = tf.reshape(summed, [1, -1])
    count = tf.cast(full_size, tf.float64)
    raw = _raw_sums(matrix, tf.equal(matrix, 0), count, extra_zeros)
    finite = _finite_counts(matrix) + tf.cast(extra_zeros, tf.float64)
    stats = _finish(raw, count, finite, tf.constant([np.nan], tf.float64))[0]
    return stats, rows_touched


def l2_norm(tensor: Any) -> Any:
    """Float64 L2 norm of ``tensor`` (a variable's weights, say)."""
    return batch_stats([tensor])[0, 0]


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
