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
from dataclasses import dataclass
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


CHUNK_ENTRIES = 1 << 18
"""Entries read per step of the reduction loops.

The sums are taken in float64, and a float64 copy of a whole gradient (8 bytes an entry,
two or three of them with the squares and the counts) costs more than the reduction
itself: the fresh pages of every copy are faulted in and written once.  Read in chunks of
2**18 entries, each copy is 2 MiB and stays in the cache.
"""

STACK_LIMIT = 1 << 16
"""Tensors with at least this many entries are reduced on their own, not stacked with
same-shape tensors (stacking copies them)."""


def _count(condition: Any) -> Any:
    """``[k]`` float64: the true entries of each row of a boolean chunk (an int32 sum:
    a chunk holds far fewer than 2**31 entries)."""
    tf = _tf.tensorflow()
    return tf.cast(tf.reduce_sum(tf.cast(condition, tf.int32), axis=1), tf.float64)


def _finite_count(piece: Any, total: Any) -> Any:
    """``[k]`` float64: the finite entries of each row of ``piece``, whose float64 row
    sums are ``total``.

    A sum is finite only if every entry is (a NaN or an infinity makes it NaN or
    infinite), so when all sums are finite every entry is, and the count is the row
    length: the entries are counted only otherwise (a float64 sum can also overflow,
    which then costs the count, not its exactness).
    """
    tf = _tf.tensorflow()
    columns = tf.cast(tf.shape(piece)[1], tf.float64)
    return tf.cond(
        tf.reduce_all(tf.math.is_finite(total)),
        lambda: tf.fill(tf.shape(total), columns),
        lambda: _count(tf.math.is_finite(piece)),
    )


def _int64_vector(values: Sequence[Any]) -> Any:
    """An int64 vector of Python ints and int scalar tensors (one constant when all are
    ints: a graph op per entry would add thousands of ops on a large model)."""
    tf = _tf.tensorflow()
    if all(isinstance(v, int) for v in values):
        return tf.constant(list(values), tf.int64, shape=[len(values)])
    return tf.stack([tf.cast(v, tf.int64) for v in values])


def _starts(sizes: Sequence[Any]) -> Any:
    """Where each size starts in their concatenation (int64)."""
    tf = _tf.tensorflow()
    if all(isinstance(v, int) for v in sizes):
        return _int64_vector([sum(sizes[:i]) for i in range(len(sizes))])
    return tf.cumsum(_int64_vector(sizes), exclusive=True)


@dataclass(frozen=True)
class _Part:
    """The groups of one dtype, as one reduction loop walks them.

    ``array`` holds each group's tensor (a stack of same-shape tensors, or one tensor)
    without copying it.  Per group: ``rows`` (tensors in it), ``columns`` (entries of
    each), ``chunk`` (columns read per step), ``row_start`` (its first row in the
    accumulators, rows in group order), ``units`` (positions on the last axis, 1 when
    not wanted), ``has_units`` (1 when its live units are wanted) and ``live_start``
    (its first entry in the flat live-unit vector).
    """

    array: Any
    count: int
    rows: Any
    columns: Any
    chunk: Any
    row_start: Any
    units: Any
    has_units: Any
    live_start: Any

    def row_indices(self, group: Any) -> Any:
        """``[k, 1]`` scatter indices of the group's rows."""
        tf = _tf.tensorflow()
        start = self.row_start[group]
        return tf.range(start, start + self.rows[group])[:, None]

    def fold(self, body: Any, initial: list[Any]) -> list[Any]:
        """Fold ``body(piece, group, *accumulators)`` over every chunk of every group.

        One ``tf.while_loop`` serves all groups: a loop or a function call per group
        costs tens of milliseconds each to instantiate.  Each piece is a ``[k, c]``
        slice of a group's ``[k, columns]`` matrix, ``c`` at most its ``chunk``.
        """
        tf = _tf.tensorflow()
        zero = tf.constant(0, tf.int64)

        def step(group: Any, start: Any, *accumulators: Any) -> Any:
            columns = self.columns[group]
            size = tf.minimum(self.chunk[group], columns - start)
            matrix = tf.reshape(self.array.read(group), tf.stack([self.rows[group], columns]))
            piece = tf.slice(matrix, tf.stack([zero, start]), tf.stack([-1, size]))
            updated = body(piece, group, *accumulators)
            done = start + size >= columns
            advanced = tf.where(done, zero, start + size)
            return (group + tf.cast(done, tf.int32), advanced, *updated)

        first = tf.constant(0, tf.int32)
        loop = tf.while_loop(lambda group, *_: group < self.count, step, [first, zero, *initial])
        return list(loop[2:])


@dataclass(frozen=True)
class _Plan:
    """A table's groups, split by dtype into :class:`_Part` loops.  ``row_units``: the
    units of each row (group order) whose live units are wanted, else 0."""

    parts: list[_Part]
    rows: int
    row_units: Any
    with_live: bool


def _plan(tensors: Sequence[Any], groups: list[list[int]], dead_units: bool) -> _Plan:
    """Lay the groups of ``tensors`` out for the reduction loops."""
    tf = _tf.tensorflow()
    sizes = [len(group) for group in groups]
    row_start = _starts(sizes)
    units = [_units(tensors[group[0]]) if dead_units else None for group in groups]
    live_sizes = [0 if u is None else k * u for k, u in zip(sizes, units, strict=True)]
    live_start = _starts(live_sizes)
    parts = []
    for members in _loops(tensors, groups):
        dtype = tensors[groups[members[0]][0]].dtype
        array = tf.TensorArray(dtype, size=len(members), infer_shape=False, clear_after_read=False)
        for position, index in enumerate(members):
            array = array.write(position, _group_tensor([tensors[i] for i in groups[index]]))
        rows = [sizes[i] for i in members]
        widths = [1 if units[i] is None else units[i] for i in members]
        columns = _int64_vector([_row_entries(tensors[groups[i][0]]) for i in members])
        width = _int64_vector(widths)
        per_row = tf.maximum(CHUNK_ENTRIES // _int64_vector(rows), 1)
        parts.append(
            _Part(
                array=array,
                count=len(members),
                rows=_int64_vector(rows),
                columns=columns,
                chunk=tf.maximum(width, per_row // width * width),
                row_start=tf.gather(row_start, members),
                units=width,
                has_units=_int64_vector([int(units[i] is not None) for i in members]),
                live_start=tf.gather(live_start, members),
            )
        )
    row_units = [0 if u is None else u for u, k in zip(units, sizes, strict=True) for _ in range(k)]
    return _Plan(
        parts=parts,
        rows=sum(sizes),
        row_units=_int64_vector(row_units),
        with_live=any(u is not None for u in units),
    )


def _loops(tensors: Sequence[Any], groups: list[list[int]]) -> list[list[int]]:
    """The groups each reduction loop walks: one loop per dtype.

    Every loop instantiates its own body functions, at a cost in time and memory that
    grows with the graph: splitting a table into loops of at most 16 M entries, so that
    activation gradients could be released earlier, took a ResNet50 step from 9 to 24 s
    and its peak from 1.5 to 2.4 GB.
    """
    by_dtype: dict[Any, list[int]] = {}
    for index, group in enumerate(groups):
        by_dtype.setdefault(tensors[group[0]].dtype, []).append(index)
    return list(by_dtype.values())


def _group_tensor(tensors: list[Any]) -> Any:
    """One tensor, or a stack of same-shape tensors."""
    tf = _tf.tensorflow()
    return tensors[0] if len(tensors) == 1 else tf.stack(tensors)


def _row_entries(tensor: Any) -> Any:
    """Entries of ``tensor``: an int when its shape is static, else an int64 tensor."""
    tf = _tf.tensorflow()
    size = tensor.shape.num_elements()
    return int(size) if size is not None else tf.size(tensor, out_type=tf.int64)


def _with_nan(combine: Any, current: Any, new: Any) -> Any:
    """``combine(current, new)``, NaN where either is NaN (a NaN anywhere in a tensor
    makes its max and min NaN, as a whole-tensor reduction gives)."""
    tf = _tf.tensorflow()
    either = tf.logical_or(tf.math.is_nan(current), tf.math.is_nan(new))
    return tf.where(either, tf.constant(np.nan, tf.float64), combine(current, new))


def _first_body(part: _Part, with_live: bool) -> Any:
    """The first pass over one chunk.  Per row: the float64 sum, the zero and finite
    counts (added to ``sums``, ``[T, 3]``) and the max and min in the tensor's own dtype
    (merged into ``extremes``, ``[T, 2]``); with ``with_live``, the chunk's non-zero
    units OR-ed (a max of 0/1) into the flat int32 ``live`` vector."""
    tf = _tf.tensorflow()

    def body(piece: Any, group: Any, sums: Any, extremes: Any, live: Any) -> Any:
        where = part.row_indices(group)
        total = tf.reduce_sum(tf.cast(piece, tf.float64), axis=1)
        values = tf.stack([total, _count(tf.equal(piece, 0)), _finite_count(piece, total)], axis=1)
        sums = tf.tensor_scatter_nd_add(sums, where, values)
        current = tf.gather_nd(extremes, where)
        high = _with_nan(
            tf.maximum, current[:, 0], tf.cast(tf.reduce_max(piece, axis=1), tf.float64)
        )
        low = _with_nan(
            tf.minimum, current[:, 1], tf.cast(tf.reduce_min(piece, axis=1), tf.float64)
        )
        extremes = tf.tensor_scatter_nd_update(extremes, where, tf.stack([high, low], axis=1))
        if with_live:
            shape = tf.stack([part.rows[group], -1, part.units[group]])
            nonzero = tf.reduce_any(tf.reshape(tf.not_equal(piece, 0), shape), axis=1)
            flags = tf.reshape(tf.cast(nonzero, tf.int32), [-1])
            size = tf.size(flags, out_type=tf.int64) * part.has_units[group]
            start = part.live_start[group]
            at = tf.range(start, start + size)[:, None]
            live = tf.tensor_scatter_nd_max(live, at, flags[: tf.cast(size, tf.int32)])
        return sums, extremes, live

    return body


def _first_pass(plan: _Plan) -> tuple[Any, Any, Any]:
    """Per row (group order): ``[T, 3]`` float64 sum, zero count and finite count,
    ``[T, 2]`` float64 max and min, and the flat int32 live-unit flags of the rows with
    units (``plan.row_units`` of them each, rows in group order)."""
    tf = _tf.tensorflow()
    sums = tf.zeros([plan.rows, 3], tf.float64)
    extremes = tf.tile(tf.constant([[-np.inf, np.inf]], tf.float64), [plan.rows, 1])
    live = tf.zeros(tf.reshape(tf.reduce_sum(plan.row_units), [1]), tf.int32)
    for part in plan.parts:
        body = _first_body(part, plan.with_live)
        sums, extremes, live = part.fold(body, [sums, extremes, live])
    return sums, extremes, live


def _centered_body(part: _Part, means: Any) -> Any:
    """The second pass over one chunk: each row's sum of squares about its mean, added
    to the ``[T]`` accumulator."""
    tf = _tf.tensorflow()

    def body(piece: Any, group: Any, centered: Any) -> Any:
        where = part.row_indices(group)
        mean = tf.gather_nd(means, where)
        squares = tf.math.squared_difference(tf.cast(piece, tf.float64), mean[:, None])
        return (tf.tensor_scatter_nd_add(centered, where, tf.reduce_sum(squares, axis=1)),)

    return body


def _centered_pass(plan: _Plan, means: Any) -> Any:
    """``[T]`` float64: every row's sum of squares about its mean (``means``, rows in
    group order), the second pass of the variance."""
    tf = _tf.tensorflow()
    centered = tf.zeros([plan.rows], tf.float64)
    for part in plan.parts:
        (centered,) = part.fold(_centered_body(part, means), [centered])
    return centered


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


def _units(tensor: Any) -> Any:
    """The units of ``tensor`` (positions on its last axis; a rank-1 tensor is one
    unit), as a Python int when static; ``None`` for a scalar, which has none."""
    tf = _tf.tensorflow()
    rank = tensor.shape.rank
    if rank == 0:
        return None
    if rank == 1:
        return 1
    last = tensor.shape[-1]
    return int(last) if last is not None else tf.shape(tensor, out_type=tf.int64)[-1]


def _dead_fractions(plan: _Plan, live: Any, reducer: Reducer | None) -> Any:
    """``[T]`` float64 dead-unit fractions of the rows (group order), from the flat
    live-unit flags of :func:`_first_pass`; NaN for rows without units (scalars).

    With a ``reducer`` a unit is dead when it is zero in every piece: the flags are
    summed across the pieces (an AND of the dead masks) before the fractions are taken.
    """
    tf = _tf.tensorflow()
    flags = tf.cast(live, tf.float64)
    if reducer is not None:
        flags = tf.cast(reducer.sum(flags) > 0.0, tf.float64)
    owner = tf.repeat(tf.range(plan.rows, dtype=tf.int64), plan.row_units)
    live_units = tf.math.unsorted_segment_sum(flags, owner, plan.rows)
    units = tf.cast(plan.row_units, tf.float64)
    # divide_no_nan, not a division: Grappler turns a division by a constant into a
    # multiplication by its reciprocal, and 3 * (1/10) is not 3/10.
    dead = tf.math.divide_no_nan(units - live_units, units)
    return tf.where(units > 0, dead, tf.constant(np.nan, tf.float64))


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


def _group_key(index: int, tensor: Any) -> tuple[Any, ...]:
    """Tensors with equal keys (dtype and static shape) are stacked and reduced together."""
    if not tensor.shape.is_fully_defined() or tensor.shape.num_elements() >= STACK_LIMIT:
        return ("alone", index)
    return (tensor.dtype, tuple(tensor.shape.as_list()))


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

    def in_order(rows: Any) -> Any:
        """Rows in group order, put back in the tensors' order."""
        return rows if back is None else tf.gather(rows, back)

    plan = _plan(tensors, groups, dead_units)
    sums, extremes, live = _first_pass(plan)
    counts = [_entry_count(tensors[i]) for i in range(len(tensors))]
    count = (
        tf.stack(counts)
        if any(tf.is_tensor(c) for c in counts)
        else tf.constant(counts, tf.float64)
    )
    first = tf.concat([count[:, None], in_order(sums)], axis=1)
    count, total, zeros, finite = tf.unstack(_combined(reducer, "sum", first), axis=1)
    centered = _combined(
        reducer, "sum", in_order(_centered_pass(plan, tf.gather(total / count, order)))
    )
    highest = _combined(reducer, "max", in_order(extremes[:, 0]))
    lowest = _combined(reducer, "min", in_order(extremes[:, 1]))
    if dead_units:
        dead = in_order(_dead_fractions(plan, live, reducer))
    else:
        dead = tf.fill([len(tensors)], tf.constant(np.nan, tf.float64))
    raw = tf.stack([highest, lowest, zeros, total, centered], axis=1)
    return _finish(raw, count, finite, dead)


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
    extra_zeros = tf.cast(full_size - tf.size(summed, out_type=tf.int64), tf.float64)
    count = tf.cast(full_size, tf.float64)
    plan = _plan([summed], [[0]], dead_units=False)
    sums, extremes, _ = _first_pass(plan)
    total, zeros, finite = tf.unstack(sums[0])
    mean = total / count
    centered = _centered_pass(plan, tf.reshape(mean, [1]))[0] + extra_zeros * mean * mean
    raw = tf.concat([extremes[0], tf.stack([zeros + extra_zeros, total, centered])], 0)[None, :]
    dead = tf.constant([np.nan], tf.float64)
    stats = _finish(raw, count, tf.reshape(finite + extra_zeros, [1]), dead)[0]
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
