"""Memory estimates read off traced graphs, for work that is vectorized over items.

A vectorized (``pfor``) computation over ``c`` items (Hessian rows, examples) holds the
tensors that depend on the item ``c`` times and the others once.  Tracing the
one-item function, without running it, gives both sums; then as many items as fit a
budget are processed per call.  Every tensor is counted as if all were alive at once,
so the estimates are upper bounds (tensors of unknown shape are not counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def tensor_bytes(tensor: Any) -> int:
    """Bytes of a graph tensor of fully known shape, 0 otherwise."""
    shape = tensor.shape
    if shape.rank is None or not shape.is_fully_defined() or tensor.dtype.size == 0:
        return 0
    return int(shape.num_elements()) * int(tensor.dtype.size)


def split_graph_bytes(graph: Any, sources: Sequence[Any]) -> tuple[int, int]:
    """``(shared, dependent)``: bytes of the tensors of ``graph`` that do not, and that
    do, depend on ``sources`` (the per-item placeholders, themselves not counted)."""
    dependent = {t.name for t in sources}
    shared = per_item = 0
    for op in graph.get_operations():  # creation order is a topological order
        reached = any(t.name in dependent for t in op.inputs)
        for output in op.outputs:
            if reached:
                dependent.add(output.name)
                per_item += tensor_bytes(output)
            elif output.name not in dependent:
                shared += tensor_bytes(output)
    return shared, per_item


def items_within(
    budget: int, shared: int, per_item: int, items: int, cap: int | None = None
) -> int:
    """The most items (at most ``items`` and ``cap``) with ``shared + c * per_item <=
    budget``; 0 when not even one fits."""
    room = budget - shared
    if room <= 0 or room < per_item:
        return 0
    count = min(items, room // max(per_item, 1))
    return int(count if cap is None else min(count, cap))


def format_bytes(size: float) -> str:
    """``1.5 GiB``-style sizes for messages."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
