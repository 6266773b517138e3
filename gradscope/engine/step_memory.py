"""The memory budget (``--max-memory``) and the memory guard of a gradient step.

**The budget.**  Every command takes ``--max-memory``; its default,
:func:`default_max_memory`, is half of the memory the machine has available when the
command starts (``MemAvailable`` in ``/proc/meminfo``, else the free physical pages),
or 2 GiB where neither can be read.  Hessian blocks, per-example chunks, batches and
gradient steps are all sized against it.

**The guard.**  A data file's headers give the shape and dtype of every array without
reading its data (see :mod:`gradscope.loading.data`), so a batch that does not fit is
refused before anything is decompressed.  The step is estimated from its traced graph,
before it runs: :func:`peak_live_bytes` walks the graph's operations in creation order
(a topological order), adds each output when its op runs and frees it after its last
reader (a tensor written into a list, as the statistics hand tensors to their reduction
loops, after the list's last reader), and returns the largest total.  Unlike
:func:`~.graph_memory.split_graph_bytes`, which counts every tensor as if all were
alive at once, this follows what the executor keeps.  Tensors of unknown shape, and
work inside loops and called functions (the statistics' chunks: 2 MiB each), are not
counted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ResourceError, UsageError, received
from .graph_memory import format_bytes, tensor_bytes

DEFAULT_FRACTION = 0.5
"""The default budget is this fraction of the memory available when the command starts."""

FALLBACK_MAX_MEMORY = 2 * 1024**3
"""The default budget where the available memory cannot be read (2 GiB)."""

MEMINFO = Path("/proc/meminfo")


def available_memory() -> int | None:
    """Bytes of memory available to a new process, or ``None`` when it cannot be read.

    ``MemAvailable`` (Linux) counts the page cache that can be dropped; the free
    physical pages (``os.sysconf``) are the fallback elsewhere.
    """
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def default_max_memory() -> int:
    """The default ``--max-memory``: half the available memory, else 2 GiB."""
    available = available_memory()
    if available is None or available <= 0:
        return FALLBACK_MAX_MEMORY
    return int(available * DEFAULT_FRACTION)


def parse_size(text: str) -> int:
    """Bytes from ``512M``, ``2GiB``, ``1.5G``, ``100000`` (binary multiples)."""
    units = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = cleaned, ""
    if cleaned and cleaned[-1] in units:
        number, unit = cleaned[:-1], cleaned[-1]
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise UsageError(
            f"--max-memory: expected a size such as 512M or 2GiB. {received(repr(text))}"
        )
    return int(value)


def budget(max_memory: int | str | None) -> int:
    """The budget in bytes: ``None`` is the default, a string is parsed."""
    if max_memory is None:
        return default_max_memory()
    if isinstance(max_memory, str):
        return parse_size(max_memory)
    if max_memory <= 0:
        raise UsageError(f"--max-memory: expected a positive size. {received(max_memory)}")
    return int(max_memory)


ROWS_OPTIONS = ("--batch-size", "--limit")
"""The options that bound the rows of a step, named by the hint of a refusal."""


def describe_rows(
    source: str,
    key: str,
    shape: Sequence[int],
    dtype: str,
    size: int,
    held: int,
    state: str,
) -> str:
    """``data.npz: x holds 20,000,000 rows × 20 float32 (1.5 GiB decompressed)``;
    ``held`` rows at a time when fewer than all."""
    inner = "×".join(str(d) for d in shape[1:]) or "1"
    total = int(shape[0]) if shape else 1
    text = f"{source}: {key} holds {total:,} rows × {inner} {dtype} ({format_bytes(size)} {state}"
    if held < total:
        text += f", {held:,} rows at a time"
    return text + ")"


def rows_hint(rows: int, needed: int, limit: int, options: Sequence[str]) -> str:
    """``Use --batch-size N or --limit N (N <= 1234 fits).``: how many rows fit ``limit``
    if ``needed`` bytes grow in proportion to ``rows``."""
    fitting = max(1, int(rows * (limit / max(needed, 1))))
    named = " or ".join(f"{option} N" for option in options)
    return f"Use {named} (about N <= {fitting} fits)."


def refuse(what: str, needed: int, limit: int, rows: int, options: Sequence[str]) -> ResourceError:
    """The one-line error of ``what`` needing ``needed`` bytes for ``rows`` rows."""
    return ResourceError(
        f"{what}, more than --max-memory {format_bytes(limit)}. "
        f"{rows_hint(rows, needed, limit, options)}"
    )


ALIASING_OPS = frozenset(
    {"Identity", "StopGradient", "PreventGradient", "Snapshot", "Reshape", "ExpandDims", "Squeeze"}
)
"""Ops whose output is their first input's buffer, not a new allocation."""


def _buffers(operations: Sequence[Any]) -> dict[str, str]:
    """For each output of an aliasing op, the tensor that owns its buffer."""
    owner: dict[str, str] = {}
    for op in operations:
        if op.type in ALIASING_OPS and op.inputs and op.outputs:
            source = op.inputs[0].name
            owner[op.outputs[0].name] = owner.get(source, source)
    return owner


LIST_WRITES = {"TensorListSetItem": 2, "TensorListPushBack": 1, "TensorListFromTensor": 0}
"""Ops that put a tensor (the input at this index) into a list without copying it."""


def _list_contents(operations: Sequence[Any], owner: dict[str, str]) -> dict[str, set[str]]:
    """For each list handle (``TensorArray``), the buffers of the tensors it holds.

    A list written element by element (as :mod:`gradscope.stats` hands its tensors to
    its reduction loops) keeps every element alive until the list itself is read for
    the last time, although each element's only direct reader is the write.
    """
    contents: dict[str, set[str]] = {}
    for op in operations:
        position = LIST_WRITES.get(op.type)
        if position is None or len(op.inputs) <= position or not op.outputs:
            continue
        held = set(contents.get(op.inputs[0].name, set())) if position else set()
        item = op.inputs[position].name
        held.add(owner.get(item, item))
        contents[op.outputs[0].name] = held
    return contents


def _read_buffers(tensor: Any, owner: dict[str, str], contents: dict[str, set[str]]) -> list[str]:
    """The buffers that reading ``tensor`` keeps alive: its own, and a list's elements."""
    buffer = owner.get(tensor.name, tensor.name)
    return [buffer, *sorted(contents.get(tensor.name, ()))]


def peak_live_bytes(graph: Any) -> int:
    """The largest total size of the tensors alive at once while ``graph`` runs.

    Operations run in creation order; an output is allocated when its op runs and
    freed after its last reader ran (at once if nothing reads it).  The output of an
    aliasing op (``Identity``, ``Reshape``...) shares its input's buffer, which lives
    until the readers of both are done; a tensor written into a list lives until the
    readers of the list are done.  The function's results are never freed: they are
    handed back together at the end.
    """
    operations = graph.get_operations()
    owner = _buffers(operations)
    contents = _list_contents(operations, owner)
    readers: dict[str, int] = {}
    for tensor in [t for op in operations for t in op.inputs] + list(graph.outputs or []):
        for buffer in _read_buffers(tensor, owner, contents):
            readers[buffer] = readers.get(buffer, 0) + 1
    sizes: dict[str, int] = {}
    live = peak = 0
    for op in operations:
        for output in op.outputs:
            if output.name not in owner:
                sizes[output.name] = tensor_bytes(output)
                live += sizes[output.name]
        peak = max(peak, live)
        for output in op.outputs:
            if output.name not in owner and readers.get(output.name, 0) == 0:
                live -= sizes[output.name]
        for tensor in op.inputs:
            for buffer in _read_buffers(tensor, owner, contents):
                readers[buffer] -= 1
                if readers[buffer] == 0:
                    live -= sizes.get(buffer, 0)
    return peak


def traced_peak_bytes(function: Any, *arguments: Any) -> int:
    """:func:`peak_live_bytes` of ``function`` (a ``tf.function``) traced, not run, on
    arguments shaped like ``arguments`` (numpy arrays, nested in dicts, or ``None``).

    The trace is the one a later call with those shapes reuses.
    """
    from .. import _tf

    tf = _tf.tensorflow()

    def spec(array: Any) -> Any:
        return tf.TensorSpec(tuple(array.shape), tf.as_dtype(array.dtype))

    specs = [None if a is None else tf.nest.map_structure(spec, a) for a in arguments]
    return peak_live_bytes(function.get_concrete_function(*specs).graph)


def batch_bytes(batch: Any) -> int:
    """Bytes of a batch's arrays (inputs, targets, sample weights) in memory."""
    arrays = [*batch.inputs.values(), *(batch.targets or {}).values()]
    if batch.sample_weight is not None:
        arrays.append(batch.sample_weight)
    return int(sum(array.nbytes for array in arrays))


def describe_batch(batch: Any, state: str = "in memory", held: int = 1) -> str:
    """:func:`describe_rows` of a batch, naming its largest input array."""
    name, array = max(batch.inputs.items(), key=lambda item: item[1].nbytes)
    source = batch.info.path or "the batch"
    size = held * batch_bytes(batch)
    return describe_rows(source, name, array.shape, str(array.dtype), size, len(array), state)


def guard_step(
    engine: Any,
    batch: Any,
    max_memory: int | None,
    *,
    held: int = 1,
    options: Sequence[str] = ROWS_OPTIONS,
) -> int:
    """Refuse, with a :class:`ResourceError`, a gradient step that would not fit.

    ``engine`` is a :class:`~gradscope.engine.gradients.GradientEngine`; its compiled step
    is traced (not run) on ``batch``'s shapes, which is the trace its run then reuses.
    The step's peak (:func:`peak_live_bytes`) plus ``held`` batches of arrays in memory
    must fit ``max_memory`` (``None``: the default).  Returns that total.
    """
    targets = batch.targets if engine.loss.needs_targets else None
    weight = batch.sample_weight
    peak = traced_peak_bytes(engine._step_fn, dict(batch.inputs), targets, weight)
    resident = held * batch_bytes(batch)
    limit = budget(max_memory)
    needed = resident + peak
    if needed > limit:
        rows = len(next(iter(batch.inputs.values())))
        raise ResourceError(
            f"{describe_batch(batch, held=held)} and the step needs about "
            f"{format_bytes(peak)} for them, more than --max-memory {format_bytes(limit)}. "
            f"{rows_hint(rows, needed, limit, options)}"
        )
    return needed


__all__: Sequence[str] = [
    "ROWS_OPTIONS",
    "available_memory",
    "batch_bytes",
    "budget",
    "default_max_memory",
    "describe_batch",
    "describe_rows",
    "guard_step",
    "parse_size",
    "peak_live_bytes",
    "refuse",
    "traced_peak_bytes",
]
