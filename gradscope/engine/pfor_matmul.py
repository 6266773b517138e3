"""Vectorize batched matmuls and einsums so that oneDNN never sees a broadcast rank-4+ matmul.

**The defect this routes around.**  ``pfor`` (``tf.vectorized_map``) vectorizes a
``BatchMatMulV2`` by prepending the loop axis and letting ``matmul`` broadcast.  In the
per-example step every example is a batch of one, so a Dense or ``EinsumDense`` layer on
a sequence, ``(1, T, C) @ (C, D)``, becomes ``(chunk, 1, T, C) @ (C, D)``: a rank-4
left operand with a size-1 axis against a broadcast rank-2 kernel.  With oneDNN on
(``TF_ENABLE_ONEDNN_OPTS=1``, TensorFlow's default on CPUs with AVX-512 VNNI/BF16 or
AMX), the MKL layout pass rewrites that op to ``_MklBatchMatMulV2``, and TensorFlow 2.21's
oneDNN batch matmul computes wrong strides for the prepended broadcast axes and merges
the batch axes of such a 4-D operand into ``M`` (tensorflow/tensorflow#117700, #123109,
fixed upstream by tensorflow/tensorflow#120199 and uxlfoundation/oneDNN#4632): it reads
and writes past the buffers, so the process aborts (heap corruption), segfaults, or
returns garbage.  The ops involved are the forward matmul of every ``Dense``/``EinsumDense``
on a sequence and the two matmuls of its gradient (``(chunk, 1, T, D) @ (C, D)^T`` and
``(chunk, 1, T, C)^T @ (chunk, 1, T, D)``), i.e. every attention layer.  TensorFlow reads
``TF_ENABLE_ONEDNN_OPTS`` once per process (``IsMKLEnabled`` caches it), so the switch
cannot be scoped to the per-example step.

**The route around it.**  While the one-example function is traced, every
``BatchMatMul``/``BatchMatMulV2``/``BatchMatMulV3`` and ``Einsum`` op it creates gets its
own ``pfor`` converter (pfor's per-op hook: an op's ``pfor_converter`` attribute wins
over the registry).  The converters compute the same products with only the shapes
ordinary Keras training runs through oneDNN:

* one operand stacked (per example), the other a loop-invariant matrix (a kernel): the
  stacked operand's leading axes are folded into rows and multiplied as one 2-D
  ``MatMul``;
* both stacked: their batch axes are broadcast to a common shape explicitly and folded
  into one, so the product is a rank-3 ``BatchMatMulV2`` with equal batch axes;
* an einsum whose operands are all stacked and whose output and every operand start with
  the same (batch) label: the loop axis is folded into that label's axis and the
  original equation runs unchanged.

Anything else (complex or integer dtypes, a loop-invariant operand of rank > 2, other
einsums) keeps pfor's own converter.  :func:`risky_matmuls` lists what is left in a
vectorized graph; the engine maps with ``tf.map_fn`` instead if that list is not empty.

Private TensorFlow API used here (run on TensorFlow 2.21.0; where a converter is not
honoured, :func:`risky_matmuls` still finds the broadcast matmuls and ``tf.map_fn`` runs):
``Operation.pfor_converter`` (read by ``PFor._convert_helper``),
``tensorflow.python.ops.parallel_for.pfor._pfor_converter_registry`` and ``wrap``, and
``_PforInput.input``/``get_attr``/``num_inputs``/``pfor.loop_len_vector``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import _tf

MATMUL_TYPES = ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
"""Op types of batched matmuls (each has attributes ``adj_x`` and ``adj_y``)."""

EINSUM_TYPE = "Einsum"

REWRITTEN_NOTE = "2-D/rank-3 matmuls: oneDNN-safe"
"""What the engine's method string says when these converters ran."""


def _pfor() -> Any:
    """``tensorflow.python.ops.parallel_for.pfor`` (private; see the module docstring)."""
    from tensorflow.python.ops.parallel_for import pfor

    return pfor


def _dims(tensor: Any) -> Any:
    """The shape of ``tensor`` as an int32 vector (static where known)."""
    return _tf.tensorflow().shape(tensor, out_type="int32")


def _rows_times_matrix(stacked: Any, matrix: Any, adj_stacked: bool, adj_matrix: bool) -> Any:
    """``op(stacked) @ op(matrix)`` with ``stacked`` of rank >= 3 and ``matrix`` 2-D, as
    one 2-D ``MatMul`` over the stacked operand's rows."""
    tf = _tf.tensorflow()
    if adj_stacked:
        stacked = tf.linalg.matrix_transpose(stacked)
    inner = _dims(stacked)[-1]
    flat = tf.reshape(stacked, tf.stack([-1, inner]))
    product = tf.linalg.matmul(flat, matrix, transpose_b=adj_matrix)
    return tf.reshape(product, tf.concat([_dims(stacked)[:-1], _dims(product)[-1:]], 0))


def _matrix_times_rows(matrix: Any, stacked: Any, adj_matrix: bool, adj_stacked: bool) -> Any:
    """``op(matrix) @ op(stacked)``, as the transpose of ``op(stacked)^T @ op(matrix)^T``
    (real dtypes only: transposes, not adjoints)."""
    tf = _tf.tensorflow()
    transposed = _rows_times_matrix(stacked, matrix, not adj_stacked, not adj_matrix)
    return tf.linalg.matrix_transpose(transposed)


def _both_stacked(x: Any, y: Any, adj_x: bool, adj_y: bool) -> Any:
    """``op(x) @ op(y)``, both of rank >= 3, as a rank-3 matmul with equal batch axes."""
    tf = _tf.tensorflow()
    batch = tf.broadcast_dynamic_shape(_dims(x)[:-2], _dims(y)[:-2])
    x = tf.broadcast_to(x, tf.concat([batch, _dims(x)[-2:]], 0))
    y = tf.broadcast_to(y, tf.concat([batch, _dims(y)[-2:]], 0))
    x3 = tf.reshape(x, tf.concat([[-1], _dims(x)[-2:]], 0))
    y3 = tf.reshape(y, tf.concat([[-1], _dims(y)[-2:]], 0))
    product = tf.linalg.matmul(x3, y3, adjoint_a=adj_x, adjoint_b=adj_y)
    return tf.reshape(product, tf.concat([batch, _dims(product)[-2:]], 0))


def _convert_matmul(pfor_input: Any) -> Any:
    """pfor converter of a batched matmul (see the module docstring)."""
    x, x_stacked, _ = pfor_input.input(0)
    y, y_stacked, _ = pfor_input.input(1)
    adj_x = bool(pfor_input.get_attr("adj_x"))
    adj_y = bool(pfor_input.get_attr("adj_y"))
    real = x.dtype.is_floating and x.dtype == y.dtype
    rank_x, rank_y = x.shape.rank, y.shape.rank
    if real and rank_x is not None and rank_y is not None:
        if x_stacked and y_stacked and rank_x >= 3 and rank_y >= 3:
            return _pfor().wrap(_both_stacked(x, y, adj_x, adj_y), True)
        if x_stacked and not y_stacked and rank_y == 2:
            return _pfor().wrap(_rows_times_matrix(x, y, adj_x, adj_y), True)
        if y_stacked and not x_stacked and rank_x == 2:
            return _pfor().wrap(_matrix_times_rows(x, y, adj_x, adj_y), True)
    return _pfor()._pfor_converter_registry[pfor_input.op_type](pfor_input)


def _leading_label(equation: str) -> str | None:
    """The label every operand and the output of ``equation`` start with, if any."""
    if "..." in equation or "->" not in equation:
        return None
    inputs, output = equation.replace(" ", "").split("->")
    terms = [*inputs.split(","), output]
    first = {term[:1] for term in terms}
    return first.pop() if len(first) == 1 and "" not in first else None


def _convert_einsum(pfor_input: Any) -> Any:
    """pfor converter of an einsum (see the module docstring)."""
    tf = _tf.tensorflow()
    equation = pfor_input.get_attr("equation")
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    operands = [pfor_input.input(i) for i in range(pfor_input.num_inputs)]
    if _leading_label(equation) is None or not all(stacked for _, stacked, _ in operands):
        return _pfor()._pfor_converter_registry[pfor_input.op_type](pfor_input)
    folded = [tf.reshape(t, tf.concat([[-1], _dims(t)[2:]], 0)) for t, _, _ in operands]
    result = tf.einsum(equation, *folded)
    leading = tf.concat([pfor_input.pfor.loop_len_vector, _dims(operands[0][0])[1:2]], 0)
    return _pfor().wrap(tf.reshape(result, tf.concat([leading, _dims(result)[1:]], 0)), True)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(MATMUL_TYPES, _convert_matmul),
    EINSUM_TYPE: _convert_einsum,
}


def attach_converters(operations: Sequence[Any]) -> list[str]:
    """Give every batched matmul and einsum among ``operations`` the converters above;
    return the op types that got one (each once, in order)."""
    attached: list[str] = []
    for op in operations:
        converter = _CONVERTERS.get(op.type)
        if converter is not None:
            op.pfor_converter = converter
            if op.type not in attached:
                attached.append(op.type)
    return attached


def _rank(tensor: Any) -> int | None:
    return tensor.shape.rank  # type: ignore[no-any-return]


def _walk(graph: Any) -> Iterator[Any]:
    """Every op of ``graph`` and of the function bodies it calls (while loops, conds)."""
    seen: set[int] = set()
    stack = [graph]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield from current.get_operations()
        stack.extend(
            f.graph for f in getattr(current, "_functions", {}).values() if hasattr(f, "graph")
        )


def risky_matmuls(graph: Any, scope: str = "/pfor/") -> list[str]:
    """Names of the batched matmuls under ``scope`` (pfor's vectorized ops) that are
    broadcast across ranks or of rank > 3, the shapes oneDNN corrupts memory on."""
    risky = []
    for op in _walk(graph):
        if op.type not in MATMUL_TYPES or scope not in op.name:
            continue
        ranks = [_rank(t) for t in op.inputs[:2]]
        if None in ranks or ranks[0] != ranks[1] or max(r for r in ranks if r is not None) > 3:
            risky.append(f"{op.type} {op.name} {[str(t.shape) for t in op.inputs[:2]]}")
    return risky
