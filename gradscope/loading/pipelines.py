"""The user's own input pipeline: ``tf.data``, ``keras.utils.PyDataset``, Python iterables.

A pipeline yields what ``model.fit`` accepts, one batch at a time: ``x``, ``(x,)``,
``(x, y)`` or ``(x, y, sample_weight)`` (a list is read as a tuple, as Keras does), where
``x`` and ``y`` are arrays or tensors, lists of them, or dicts keyed by input and output
names.  Each batch is converted to numpy and checked against the model exactly as an
in-memory batch is (:func:`gradscope.session.batch_from_arrays`); a problem is one line
naming the pipeline and the batch index, counted from 0.

**Read once.**  The pipeline is read once, up to ``max_batches`` batches (all of them
without it), and the batches are kept in memory: every later pass (the Hessian-vector
products of ``hessian``, per-example norms) sees the same rows, even when the pipeline
shuffles, augments at random, or is a one-shot generator.  The kept arrays may take at
most ``--max-memory`` (by default half the available memory, :func:`cache_budget`);
past that the read stops with the resource-limit error, suggesting ``max_batches``.
A ``tf.data`` pipeline whose cardinality is infinite (``.repeat()``), or a ``PyDataset``
with ``num_batches`` ``None``, is refused without ``max_batches``: it would never end.

**One batch or several.**  A pipeline that yields one batch gives that
:class:`~gradscope.loading.data.Batch`, exactly as the same arrays passed directly;
several give :class:`~gradscope.loading.data.Batches`, aggregated as ``--batch-size``
aggregates a file's batches (row-weighted, so a short last batch counts for its rows).

**The CLI** names a pipeline ``--data FILE.py:NAME``: the file is imported as
``--custom-objects`` imports its file, and ``NAME()`` must return a pipeline.  Only a
text whose part before the last ``:`` ends in ``.py`` is a pipeline, so data files with
colons in their path (``C:\\data\\x.npz``) keep working.  Every error in that file (on
import, a missing ``NAME``, ``NAME()`` raising or returning something else, a batch that
cannot be read or has the wrong structure) is a one-line data error (exit 4); a batch
that does not fit the model is a mismatch (exit 5), as for data files.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import _tf
from ..engine.graph_memory import format_bytes
from ..errors import (
    DataLoadError,
    GradscopeError,
    MismatchError,
    ResourceError,
    UsageError,
    first_line,
    received,
)
from .custom_objects import _import_file
from .data import Batch, Batches
from .signature import ModelSignature

EXPECTED = (
    "a tf.data.Dataset, a keras.utils.PyDataset or an iterable of batches "
    "(x, (x, y) or (x, y, sample_weight), as model.fit accepts)"
)
CACHE_FRACTION = 0.5
"""The share of the available memory the kept batches may take."""
_NUMERIC_KINDS = "biuf"


# -- which argument is a pipeline --------------------------------------------------------


def _is_array_like(value: Any) -> bool:
    """Arrays, tensors, and the containers of them that ``x`` may be (list, tuple, dict)."""
    if isinstance(value, list | tuple | Mapping | str | bytes | np.ndarray):
        return True
    return hasattr(value, "__array__") or (hasattr(value, "shape") and hasattr(value, "dtype"))


def _is_dataset(value: Any) -> bool:
    """A ``tf.data.Dataset`` or a ``keras.utils.PyDataset``."""
    tf, keras = _tf.tensorflow(), _tf.keras()
    return isinstance(value, tf.data.Dataset | keras.utils.PyDataset)


def is_pipeline(value: Any) -> bool:
    """Whether ``x`` is a pipeline rather than arrays: a ``tf.data.Dataset``, a
    ``PyDataset``, or any other iterable that is not an array, a tensor, a list, a tuple
    or a dict (a generator, an iterator, a loader object)."""
    if value is None or _is_array_like(value):
        return False
    return _is_dataset(value) or hasattr(value, "__iter__")


def _is_pipeline_result(value: Any) -> bool:
    """What ``NAME()`` may return: a pipeline, or a list or tuple of batches."""
    return isinstance(value, list | tuple) or is_pipeline(value)


# -- ``--data FILE.py:NAME`` -------------------------------------------------------------


@dataclass(frozen=True)
class PipelineSpec:
    """``FILE.py:NAME``: a Python file and the name of the function returning the data."""

    path: Path
    name: str

    @property
    def label(self) -> str:
        return f"{self.path}:{self.name}"


def parse_pipeline_spec(data: str | Path | None) -> PipelineSpec | None:
    """The pipeline named by ``--data``, or ``None`` for a data file.

    Only a text whose part before the last ``:`` ends in ``.py`` names a pipeline, so a
    path with colons (``C:\\data\\x.npz``, ``run:3/x.npz``) stays a data file.
    """
    if data is None:
        return None
    head, colon, name = str(data).rpartition(":")
    if not colon or not head.lower().endswith(".py"):
        return None
    return PipelineSpec(Path(head), name)


def check_pipeline_spec(spec: PipelineSpec) -> None:
    """Fail with a one-line :class:`DataLoadError` unless the file exists and ``NAME``
    is a Python identifier; nothing is imported (TensorFlow neither)."""
    if not spec.path.exists():
        raise DataLoadError(f"{spec.path}: no such file; --data FILE.py:NAME expects a .py file.")
    if not spec.path.is_file():
        raise DataLoadError(f"{spec.path}: not a file; --data FILE.py:NAME expects a .py file.")
    if not spec.name.isidentifier():
        raise DataLoadError(
            f"{spec.label}: expected FILE.py:NAME, NAME a Python function name. "
            f"{received(repr(spec.name))}"
        )


def _missing_name(spec: PipelineSpec, module: Any) -> DataLoadError:
    names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
    close = difflib.get_close_matches(spec.name, names, n=3)
    hint = f" Close names: {', '.join(close)}." if close else ""
    return DataLoadError(f"{spec.path}: defines no {spec.name!r}.{hint}")


def load_pipeline(spec: PipelineSpec) -> Any:
    """Import ``FILE.py`` and return what ``NAME()`` returns, checked to be a pipeline."""
    check_pipeline_spec(spec)
    module = _import_file(spec.path, DataLoadError, "pipeline")
    factory = getattr(module, spec.name, None)
    if factory is None:
        raise _missing_name(spec, module)
    if not callable(factory):
        raise DataLoadError(
            f"{spec.label}: expected a function returning {EXPECTED}. "
            f"{received(type(factory).__name__)}"
        )
    try:
        value = factory()
    except (Exception, SystemExit) as exc:
        raise DataLoadError(
            f"{spec.label}: calling {spec.name}() raised {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    if not _is_pipeline_result(value):
        raise DataLoadError(
            f"{spec.label}: {spec.name}() returned {type(value).__name__}; expected {EXPECTED}."
        )
    return value


# -- reading the batches -----------------------------------------------------------------


def cache_budget() -> int:
    """Bytes the kept batches may take without ``--max-memory``: the one default budget
    of every command (:func:`gradscope.engine.step_memory.default_max_memory`)."""
    from ..engine.step_memory import default_max_memory

    return default_max_memory()


def _positive(max_batches: int | None) -> None:
    if max_batches is not None and max_batches < 1:
        raise UsageError(
            f"max_batches (--max-batches): expected a positive number. {received(max_batches)}"
        )


def _infinite(label: str, why: str) -> UsageError:
    return UsageError(
        f"{label}: the dataset is infinite ({why}); pass max_batches (--max-batches) "
        "to read only its first batches."
    )


def _dataset_elements(dataset: Any, label: str, max_batches: int | None) -> Iterator[Any]:
    tf = _tf.tensorflow()
    if max_batches is None and int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY:
        raise _infinite(label, "tf.data cardinality INFINITE, e.g. .repeat()")
    return iter(dataset if max_batches is None else dataset.take(max_batches))


def _py_dataset_elements(dataset: Any, label: str, max_batches: int | None) -> Iterator[Any]:
    try:
        length: int | None = dataset.num_batches
    except NotImplementedError:
        length = None
    counts = [n for n in (length, max_batches) if n is not None]
    if not counts:
        raise _infinite(label, "PyDataset.num_batches is None")
    return (dataset[index] for index in range(min(counts)))


def _elements(source: Any, label: str, max_batches: int | None) -> Iterator[Any]:
    """The raw elements of ``source``, at most ``max_batches``."""
    tf, keras = _tf.tensorflow(), _tf.keras()
    if isinstance(source, tf.data.Dataset):
        return _dataset_elements(source, label, max_batches)
    if isinstance(source, keras.utils.PyDataset):
        return _py_dataset_elements(source, label, max_batches)
    iterator: Iterator[Any] = iter(source)
    if max_batches is None:
        return iterator
    return (element for _, element in zip(range(max_batches), iterator, strict=False))


def _next(elements: Iterator[Any], where: str) -> tuple[bool, Any]:
    """``(True, element)``, or ``(False, None)`` at the end; reading errors are one line."""
    try:
        return True, next(elements)
    except StopIteration:
        return False, None
    except GradscopeError:
        raise
    except (Exception, SystemExit) as exc:
        raise DataLoadError(
            f"{where}: reading it raised {type(exc).__name__}: {first_line(exc)}"
        ) from exc


def _unpack(element: Any, where: str) -> tuple[Any, Any, Any]:
    """``x, y, sample_weight`` of one element, as ``keras.utils.unpack_x_y_sample_weight``
    reads it (a list is a tuple), with a one-line error for any other length."""
    if isinstance(element, list):
        element = tuple(element)
    if not isinstance(element, tuple):
        return element, None, None
    if not 1 <= len(element) <= 3:
        raise DataLoadError(
            f"{where}: a tuple of {len(element)} items; expected x, (x, y) or "
            f"(x, y, sample_weight), as model.fit accepts. {received(_describe(element))}"
        )
    x, y, weight = (*element, None, None)[:3]
    return x, y, weight


def _describe(value: Any) -> str:
    """A short description of a yielded structure: types and shapes, never values."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(_describe(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__}{tuple(shape)}"
    return type(value).__name__


def _leaf(value: Any, where: str) -> np.ndarray:
    """One array or tensor as numpy; ragged, sparse and non-numeric data are refused."""
    tf = _tf.tensorflow()
    if isinstance(value, tf.RaggedTensor | tf.SparseTensor):
        raise DataLoadError(
            f"{where}: holds a {type(value).__name__}; expected dense arrays "
            "(pad it, e.g. .to_tensor() or padded_batch)."
        )
    try:
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    except (ValueError, TypeError) as exc:
        raise DataLoadError(f"{where}: not an array: {first_line(exc)}") from exc
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise DataLoadError(
            f"{where}: holds {array.dtype} data; expected numbers. {received(type(value).__name__)}"
        )
    return array


def _numpy(value: Any, where: str) -> Any:
    """``value`` with every array or tensor, in lists, tuples and dicts, as numpy."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {key: _numpy(item, where) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_numpy(item, where) for item in value]
    return _leaf(value, where)


def _to_batch(element: Any, signature: ModelSignature, where: str, path: str | None) -> Batch:
    """One yielded element as a checked :class:`Batch` (see :func:`batch_from_arrays`)."""
    from ..session import batch_from_arrays  # the one conversion of in-memory arrays

    raw_x, raw_y, raw_weight = _unpack(element, where)
    if raw_x is None:
        raise DataLoadError(f"{where}: x is None; expected the model inputs.")
    x, y, weight = (_numpy(v, where) for v in (raw_x, raw_y, raw_weight))
    try:
        batch = batch_from_arrays(signature, x, y, weight)
    except MismatchError as exc:
        raise MismatchError(f"{where}: {exc.message}") from exc
    except (ValueError, TypeError) as exc:  # arrays numpy cannot stack, e.g. ragged lists
        raise DataLoadError(f"{where}: not an array: {first_line(exc)}") from exc
    if batch.size == 0:
        raise DataLoadError(f"{where}: the batch is empty (0 rows).")
    weight = batch.sample_weight
    if weight is not None and (weight.ndim == 0 or weight.shape[0] != batch.size):
        raise MismatchError(
            f"{where}: sample_weight does not have one weight per row ({batch.size} rows). "
            f"{received(f'shape {weight.shape}')}"
        )
    return replace(batch, info=replace(batch.info, path=path))


def _bytes(batch: Batch) -> int:
    arrays = [*batch.inputs.values(), *(batch.targets or {}).values()]
    if batch.sample_weight is not None:
        arrays.append(batch.sample_weight)
    return int(sum(array.nbytes for array in arrays))


def read_batches(
    source: Any,
    signature: ModelSignature,
    label: str,
    *,
    max_batches: int | None = None,
    path: str | None = None,
    budget: int | None = None,
) -> list[Batch]:
    """Read and check the batches of ``source`` (at most ``max_batches``), kept in memory.

    ``label`` names the pipeline in messages, ``path`` goes into the batches' info.  The
    batches together may take ``budget`` bytes (default :func:`cache_budget`).
    """
    _positive(max_batches)
    limit = cache_budget() if budget is None else budget
    elements = _elements(source, label, max_batches)
    batches: list[Batch] = []
    held = 0
    while True:
        where = f"{label}: batch {len(batches)}"
        more, element = _next(elements, where)
        if not more:
            break
        batch = _to_batch(element, signature, where, path)
        held += _bytes(batch)
        if held > limit:
            raise ResourceError(
                f"{label}: the first {len(batches) + 1} batches hold {format_bytes(held)}, "
                f"more than --max-memory {format_bytes(limit)}; pass max_batches "
                "(--max-batches) to read fewer."
            )
        batches.append(batch)
    if not batches:
        raise DataLoadError(f"{label}: the pipeline yielded no batch.")
    return batches


def as_data(batches: list[Batch], max_batches: int | None) -> Batch | Batches:
    """One batch as itself (as if the arrays were passed directly), several as
    :class:`Batches` that replay the kept batches in order."""
    if len(batches) == 1:
        return batches[0]
    rows = sum(batch.size for batch in batches)
    largest = max(batch.size for batch in batches)
    return Batches(batches[0], lambda: iter(batches), rows, largest, len(batches), max_batches)


def pipeline_data(
    source: Any,
    signature: ModelSignature,
    label: str,
    *,
    max_batches: int | None = None,
    path: str | None = None,
    budget: int | None = None,
) -> Batch | Batches:
    """The batches of a pipeline, ready for ``inspect``/``hessian`` (:func:`as_data`);
    ``budget`` is ``--max-memory`` (see :func:`read_batches`)."""
    batches = read_batches(
        source, signature, label, max_batches=max_batches, path=path, budget=budget
    )
    return as_data(batches, max_batches)


def data_argument(
    signature: ModelSignature,
    x: Any,
    y: Any,
    sample_weight: Any,
    *,
    batch_size: int | None = None,
    max_batches: int | None = None,
    budget: int | None = None,
) -> Batch | Batches | None:
    """The data of a Python API call: ``None`` (synthetic), arrays, or a pipeline.

    With a pipeline as ``x``, ``y`` and ``sample_weight`` must be ``None`` (the pipeline
    yields them) and ``batch_size`` too (the pipeline makes its own batches).
    """
    from ..session import batch_from_arrays

    if x is None:
        return None
    if not is_pipeline(x):
        if callable(x):
            raise UsageError(
                f"x: a function; expected arrays or {EXPECTED}. Call it: x=f(). "
                f"{received(getattr(x, '__name__', type(x).__name__))}"
            )
        return batch_from_arrays(signature, x, y, sample_weight)
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None:
            raise UsageError(
                f"{name}: must be None when x is a dataset (the dataset yields it). "
                f"{received(type(value).__name__)}"
            )
    if batch_size is not None:
        raise UsageError(
            "batch_size: not used when x is a dataset, which makes its own batches "
            f"(e.g. .batch(32)). {received(batch_size)}"
        )
    label = f"x ({type(x).__name__})"
    return pipeline_data(x, signature, label, max_batches=max_batches, budget=budget)


def check_cli_options(spec: PipelineSpec, limit: int | None, batch_size: int | None) -> None:
    """``--limit`` and ``--batch-size`` cut a data file; a pipeline makes its own batches."""
    for option, value in (("--limit", limit), ("--batch-size", batch_size)):
        if value is not None:
            raise UsageError(
                f"{option}: not used with --data {spec.label}, which makes its own batches; "
                f"use --max-batches to read fewer. {received(value)}"
            )


def cli_data(
    spec: PipelineSpec,
    signature: ModelSignature,
    max_batches: int | None,
    budget: int | None = None,
) -> Batch | Batches:
    """The batches of ``--data FILE.py:NAME``; ``budget`` is ``--max-memory``."""
    source = load_pipeline(spec)
    return pipeline_data(
        source, signature, spec.label, max_batches=max_batches, path=spec.label, budget=budget
    )


__all__ = [
    "PipelineSpec",
    "check_cli_options",
    "check_pipeline_spec",
    "cli_data",
    "data_argument",
    "is_pipeline",
    "parse_pipeline_spec",
    "pipeline_data",
    "read_batches",
]
