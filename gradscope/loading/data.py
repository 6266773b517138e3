"""Batches: read from ``.npz`` / ``.npy`` / ``.h5`` files, or synthesized from the model.

A file's arrays are matched to the model by name: ``x`` and ``y`` for a single-input,
single-output model (the input and output names work too), the input and output names
otherwise, and an optional ``sample_weight``.  Every array is checked against the model
signature (rank, shape, dtype, batch size) before anything runs, and every problem is a
one-line :class:`DataLoadError` or :class:`MismatchError` naming the file and key.

Pickles are never loaded: ``allow_pickle=False`` everywhere, so a file holding Python
objects is refused.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.step_memory import ROWS_OPTIONS, budget, describe_rows, refuse
from ..errors import DataLoadError, MismatchError, UsageError, first_line, received
from ..report import BatchInfo
from .models import looks_like_zip
from .signature import ModelSignature, TensorSpec

DATA_SUFFIXES = (".npz", ".npy", ".h5", ".hdf5")
_CHUNK = 1 << 20
"""Bytes read from a ``.npz`` member at a time."""
SAMPLE_WEIGHT_KEY = "sample_weight"


@dataclass(frozen=True)
class Batch:
    """Named input arrays, named target arrays (or ``None``), optional sample weights."""

    inputs: Mapping[str, np.ndarray]
    targets: Mapping[str, np.ndarray] | None
    sample_weight: np.ndarray | None
    info: BatchInfo

    @property
    def size(self) -> int:
        return self.info.size


def _refuse_pickle(path: Path, key: str) -> DataLoadError:
    return DataLoadError(
        f"{path}: key {key!r} holds pickled Python objects; refused, since loading a "
        "pickle can run arbitrary code. Save plain numeric arrays (np.savez)."
    )


class _NpzMember:
    """Rows of one array inside a ``.npz`` archive, read in order, never the whole array.

    The member is read as a stream (stored or deflated alike): its ``.npy`` header
    first, then only the bytes of the rows asked for.  Asking for rows before the
    current position reopens the stream.  Object arrays are refused (no pickle is ever
    loaded); Fortran-ordered arrays, which cannot be read by rows, are read whole.
    """

    def __init__(self, path: Path, archive: zipfile.ZipFile, key: str) -> None:
        self.path, self.key = path, key
        self._archive = archive
        self._name = key + ".npy"
        self._whole: np.ndarray | None = None
        self._open()
        if self.dtype.hasobject:
            raise _refuse_pickle(path, key)

    def _open(self) -> None:
        self._stream = self._archive.open(self._name)
        version = np.lib.format.read_magic(self._stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(self._stream)
        else:
            header = np.lib.format.read_array_header_2_0(self._stream)
        self.shape, self._fortran, self.dtype = header
        self._position = 0

    @property
    def _row_bytes(self) -> int:
        return int(self.dtype.itemsize * np.prod(self.shape[1:], dtype=np.int64))

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self._fortran and len(self.shape) > 1:  # read whole, once, when first asked
            if self._whole is None:
                self._whole = np.load(self._archive.open(self._name), allow_pickle=False)
            return np.array(self._whole[start:stop])
        if not self.shape:
            return np.frombuffer(self._read_exactly(self.dtype.itemsize), self.dtype).reshape(())
        if start < self._position:
            self._stream.close()
            self._open()
        self._skip((start - self._position) * self._row_bytes)
        count = max(0, min(stop, self.shape[0]) - start)
        array = np.empty((count, *self.shape[1:]), self.dtype)
        self._read_into(array.reshape(-1).view(np.uint8))
        self._position = start + count
        return array

    def _read_into(self, buffer: np.ndarray) -> None:
        """Fill ``buffer`` from the stream a chunk at a time (no second copy of the rows)."""
        for offset in range(0, buffer.size, _CHUNK):
            size = min(_CHUNK, buffer.size - offset)
            buffer[offset : offset + size] = np.frombuffer(self._read_exactly(size), np.uint8)

    def _skip(self, size: int) -> None:
        while size > 0:
            size -= len(self._read_exactly(min(size, _CHUNK)))

    def _read_exactly(self, size: int) -> bytes:
        data = self._stream.read(size)
        if len(data) != size:
            raise EOFError(f"key {self.key!r} is truncated")
        return data

    def close(self) -> None:
        self._stream.close()


class _DataFile:
    """Uniform, lazy access to the named arrays of one data file, by ranges of rows.

    Only the rows asked for are read: ``.npy`` files are memory-mapped, HDF5 datasets
    sliced, ``.npz`` members streamed (:class:`_NpzMember`).  Shapes and dtypes come
    from the headers, without reading data.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: list[str] = []
        self._arrays: dict[str, Any] = {}
        self._handle: Any = None

    def __enter__(self) -> _DataFile:
        check_data_path(self.path)
        suffix = self.path.suffix.lower()
        try:
            if suffix == ".npz":
                self._open_npz()
            elif suffix == ".npy":
                self._open_npy()
            else:
                self._open_h5()
        except (DataLoadError, MismatchError):
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise DataLoadError(
                f"{self.path}: unreadable or corrupt {suffix} file: {first_line(exc)}"
            ) from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        for array in self._arrays.values():
            if isinstance(array, _NpzMember):
                array.close()
        if self._handle is not None:
            self._handle.close()

    def _open_npz(self) -> None:
        if not zipfile.is_zipfile(self.path):
            if looks_like_zip(self.path):
                raise DataLoadError(f"{self.path}: truncated or corrupt .npz file (zip archive).")
            raise DataLoadError(f"{self.path}: not a .npz file (a .npz file is a zip archive).")
        self._handle = zipfile.ZipFile(self.path)
        names = self._handle.namelist()
        self.keys = [name[: -len(".npy")] for name in names if name.endswith(".npy")]

    def _open_npy(self) -> None:
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc) or "object" in str(exc).lower():
                raise _refuse_pickle(self.path, "x") from exc
            raise
        self.keys = ["x"]
        self._arrays["x"] = array

    def _open_h5(self) -> None:
        import h5py

        if not h5py.is_hdf5(self.path):
            raise DataLoadError(f"{self.path}: not an HDF5 file.")
        self._handle = h5py.File(self.path, "r")
        self.keys = [k for k, v in self._handle.items() if isinstance(v, h5py.Dataset)]

    def _array(self, key: str) -> Any:
        """The lazily opened array of ``key``: a memory map, a dataset or a member."""
        if key in self._arrays:
            return self._arrays[key]
        if key not in self.keys:
            raise DataLoadError(f"{self.path}: no array {key!r}")
        if self.path.suffix.lower() == ".npz":
            array: Any = _NpzMember(self.path, self._handle, key)
        else:
            array = self._handle[key]
            self._check_h5_dtype(key, array)
        self._arrays[key] = array
        return array

    def _check_h5_dtype(self, key: str, dataset: Any) -> None:
        import h5py

        if dataset.dtype.kind == "O" or h5py.check_string_dtype(dataset.dtype):
            raise DataLoadError(
                f"{self.path}: key {key!r} holds strings or objects ({dataset.dtype}); "
                "expected a numeric array."
            )

    def _guarded(self, key: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except (DataLoadError, MismatchError):
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise DataLoadError(
                f"{self.path}: key {key!r} cannot be read: {first_line(exc)}"
            ) from exc

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
        """Shape and dtype of ``key``, from the file's headers (no data is read)."""
        array = self._guarded(key, lambda: self._array(key))
        return tuple(int(d) for d in array.shape), np.dtype(array.dtype)

    def rows(self, key: str) -> int | None:
        """Rows of ``key`` (its first dimension), ``None`` for a scalar."""
        shape, _ = self.header(key)
        return int(shape[0]) if shape else None

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of ``key`` (a scalar whole), checked to be numeric."""
        self.check_numeric(key, self.header(key)[1])
        array: np.ndarray = self._guarded(key, lambda: self._read(key, start, stop))
        self.check_numeric(key, array.dtype)
        return array

    def check_numeric(self, key: str, dtype: np.dtype[Any]) -> None:
        if dtype.kind in "OUSV":
            raise DataLoadError(
                f"{self.path}: key {key!r} holds {dtype} data; expected a numeric array."
            )

    def _read(self, key: str, start: int, stop: int | None) -> np.ndarray:
        array = self._array(key)
        if not array.shape:
            return np.asarray(array.rows(0, 1) if isinstance(array, _NpzMember) else array[()])
        stop = int(array.shape[0]) if stop is None else stop
        if isinstance(array, _NpzMember):
            return array.rows(start, stop)
        return np.array(array[start:stop])


def check_data_path(path: Path) -> None:
    """Fail with a :class:`DataLoadError` unless ``path`` is a non-empty data file."""
    if not path.exists():
        raise DataLoadError(f"{path}: no such file; expected a .npz, .npy or .h5 data file.")
    if path.is_dir():
        raise DataLoadError(f"{path}: is a directory; expected a .npz, .npy or .h5 data file.")
    if path.stat().st_size == 0:
        raise DataLoadError(f"{path}: the file is empty; expected a .npz, .npy or .h5 data file.")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise DataLoadError(
            f"{path}: unsupported data file type; expected .npz, .npy, .h5 or .hdf5. "
            f"{received(repr(path.suffix or '(no extension)'))}"
        )


def _keys_for(specs: Sequence[TensorSpec], alias: str) -> list[tuple[str, tuple[str, ...]]]:
    """For each spec, the file keys that may hold it: the alias first when single."""
    if len(specs) == 1:
        return [(specs[0].name, (alias, specs[0].name))]
    return [(spec.name, (spec.name,)) for spec in specs]


def _find_key(candidates: Sequence[str], available: Sequence[str]) -> str | None:
    return next((key for key in candidates if key in available), None)


def _describe_shape(shape: Sequence[int | None]) -> str:
    return (
        "("
        + ", ".join("None" if d is None else str(d) for d in shape)
        + ("," if len(shape) == 1 else "")
        + ")"
    )


def _check_input_shape(
    source: str, key: str, shape: Sequence[int], dtype: np.dtype[Any], spec: TensorSpec
) -> None:
    """Rank, shape and dtype kind of an input array; from a file's header, or an array."""
    if len(shape) != len(spec.shape) or any(
        want is not None and want != got
        for want, got in zip(spec.shape[1:], shape[1:], strict=False)
    ):
        raise MismatchError(
            f"{source}: key {key!r} does not fit model input {spec.name!r}: expected shape "
            f"{_describe_shape(spec.shape)} (None = any), found {_describe_shape(shape)}."
        )
    if dtype.kind == "c":
        raise MismatchError(f"{source}: key {key!r} is complex; expected real numbers.")


def check_input_array(source: str, key: str, array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``array`` cast to the input's dtype, after checking rank, shape and dtype."""
    _check_input_shape(source, key, array.shape, array.dtype, spec)
    if spec.is_integer:
        integral = np.all(np.isfinite(array)) and np.all(np.equal(np.mod(array, 1), 0))
        if array.dtype.kind == "f" and not integral:
            raise MismatchError(
                f"{source}: key {key!r} feeds integer input {spec.name!r} ({spec.dtype}) "
                f"but holds non-integer values. {received(array.dtype)}"
            )
        return array.astype(spec.dtype, copy=False)
    return array.astype(spec.dtype if spec.dtype != "bfloat16" else np.float32, copy=False)


def _check_target_shape(
    source: str, key: str, shape: Sequence[int], dtype: np.dtype[Any], spec: TensorSpec
) -> None:
    if not shape:
        raise MismatchError(
            f"{source}: key {key!r} is a scalar; expected targets for output {spec.name!r} "
            f"with one row per example, shaped like {_describe_shape(spec.shape)}."
        )
    if dtype.kind == "c":
        raise MismatchError(f"{source}: key {key!r} is complex; expected real numbers.")


def _check_target_array(source: str, key: str, array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    _check_target_shape(source, key, array.shape, array.dtype, spec)
    return array


def _check_batch_sizes(source: str, rows: Mapping[str, int | None]) -> int:
    """The common number of rows of the arrays read (``rows`` is keyed by file key)."""
    sizes = {key: size for key, size in rows.items() if size is not None}
    if not sizes:
        raise MismatchError(f"{source}: no array has a batch dimension.")
    distinct = set(sizes.values())
    if len(distinct) > 1:
        listing = ", ".join(f"{key}: {size}" for key, size in sizes.items())
        raise MismatchError(
            f"{source}: the arrays have different numbers of rows; expected one batch size. "
            f"{received(listing)}"
        )
    size = distinct.pop()
    if size == 0:
        raise DataLoadError(f"{source}: the batch is empty (0 rows).")
    return size


@dataclass(frozen=True)
class _Layout:
    """Which file key feeds which model input and output, the rows they share, and the
    shape and dtype of each key used (from the headers)."""

    inputs: dict[str, str]
    targets: dict[str, str] | None
    weight: str | None
    rows: int
    keys: tuple[str, ...]
    headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]


def _input_keys(data: _DataFile, signature: ModelSignature) -> dict[str, str]:
    keys: dict[str, str] = {}
    for name, candidates in _keys_for(signature.inputs, "x"):
        key = _find_key(candidates, data.keys)
        if key is None:
            raise MismatchError(
                f"{data.path}: no array for model input {name!r}; expected key "
                f"{' or '.join(repr(c) for c in candidates)}. {received(sorted(data.keys))}"
            )
        keys[name] = key
    return keys


def _target_keys(data: _DataFile, signature: ModelSignature) -> dict[str, str] | None:
    found: dict[str, str] = {}
    missing: list[str] = []
    for name, candidates in _keys_for(signature.outputs, "y"):
        key = _find_key(candidates, data.keys)
        if key is None:
            missing.append(name)
        else:
            found[name] = key
    if not found:
        return None
    if missing:
        raise MismatchError(
            f"{data.path}: targets for some outputs but not for {missing}; expected a key for "
            f"every output {signature.output_names}. {received(sorted(data.keys))}"
        )
    return found


def _layout(data: _DataFile, signature: ModelSignature) -> _Layout:
    """Match the file's keys to the model, and check they share one number of rows."""
    inputs = _input_keys(data, signature)
    targets = _target_keys(data, signature)
    weight = SAMPLE_WEIGHT_KEY if SAMPLE_WEIGHT_KEY in data.keys else None
    used = [*inputs.values(), *(targets or {}).values(), *([weight] if weight else [])]
    rows = _check_batch_sizes(str(data.path), {key: data.rows(key) for key in used})
    headers = {key: data.header(key) for key in used}
    _check_headers(data, signature, inputs, targets, headers)
    return _Layout(inputs, targets, weight, rows, tuple(sorted(data.keys)), headers)


def _check_headers(
    data: _DataFile,
    signature: ModelSignature,
    inputs: Mapping[str, str],
    targets: Mapping[str, str] | None,
    headers: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]],
) -> None:
    """Every array used fits the model, judged from the headers alone: an array of the
    wrong shape or kind is refused before any of its rows is read (or decompressed)."""
    source = str(data.path)
    for key, (_, dtype) in headers.items():
        data.check_numeric(key, dtype)
    for spec in signature.inputs:
        _check_input_shape(source, inputs[spec.name], *headers[inputs[spec.name]], spec)
    for spec in signature.outputs if targets is not None else ():
        key = (targets or {})[spec.name]
        _check_target_shape(source, key, *headers[key], spec)


@dataclass(frozen=True)
class Footprint:
    """The memory the rows of a data file take once read, from its headers alone.

    ``rows`` rows are read for a step, ``batches`` such batches are held at once (two
    while streaming: the first is kept for the report), each row taking ``row_bytes``
    over every array used, including the copy an input is cast into.  ``key`` is the
    largest array (its ``shape`` and ``dtype`` as stored), which messages name.
    """

    source: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    row_bytes: int
    rows: int
    batches: int = 1

    @property
    def bytes(self) -> int:
        return self.rows * self.batches * self.row_bytes

    def describe(self) -> str:
        """``data.npz: x holds 20,000,000 rows × 20 float32 (1.5 GiB decompressed)``."""
        return describe_rows(
            self.source, self.key, self.shape, self.dtype, self.bytes, self.rows, "decompressed"
        )


def _row_bytes(shape: Sequence[int], dtype: np.dtype[Any] | str) -> int:
    itemsize = 4 if str(dtype) == "bfloat16" else np.dtype(dtype).itemsize
    return int(itemsize * np.prod(shape[1:], dtype=np.int64)) if shape else 0


def footprint(
    source: Path, signature: ModelSignature, layout: _Layout, rows: int, batches: int = 1
) -> Footprint:
    """The :class:`Footprint` of ``rows`` rows of the file laid out as ``layout``."""
    read = {key: _row_bytes(shape, dtype) for key, (shape, dtype) in layout.headers.items()}
    cast = 0
    for spec in signature.inputs:
        shape, dtype = layout.headers[layout.inputs[spec.name]]
        if str(dtype) != spec.dtype:
            cast += _row_bytes(shape, spec.dtype)
    if layout.weight is not None and layout.headers[layout.weight][1] != np.float32:
        cast += _row_bytes(layout.headers[layout.weight][0], np.dtype(np.float32))
    key = max(read, key=lambda k: read[k])
    shape, dtype = layout.headers[key]
    return Footprint(str(source), key, shape, str(dtype), sum(read.values()) + cast, rows, batches)


def _guard(found: Footprint, max_memory: int | None, options: Sequence[str]) -> None:
    """Refuse (:class:`ResourceError`) rows whose arrays alone exceed the budget."""
    limit = budget(max_memory)
    if found.bytes > limit:
        raise refuse(found.describe(), found.bytes, limit, found.rows, options)


def _read_batch(
    data: _DataFile, signature: ModelSignature, layout: _Layout, start: int, stop: int
) -> Batch:
    """Rows ``start:stop`` as a checked :class:`Batch`."""
    source = str(data.path)
    specs = {spec.name: spec for spec in signature.inputs}
    inputs = {
        name: check_input_array(source, key, data.read(key, start, stop), specs[name])
        for name, key in layout.inputs.items()
    }
    targets = None
    if layout.targets is not None:
        outputs = {spec.name: spec for spec in signature.outputs}
        targets = {
            name: _check_target_array(source, key, data.read(key, start, stop), outputs[name])
            for name, key in layout.targets.items()
        }
    sample_weight = None
    if layout.weight is not None:
        sample_weight = data.read(layout.weight, start, stop).astype(np.float32)
    size = stop - start
    info = BatchInfo("file", size, path=source, has_targets=targets is not None, keys=layout.keys)
    return Batch(inputs, targets, sample_weight, info)


def guard_synthetic(signature: ModelSignature, rows: int, max_memory: int | None) -> None:
    """Refuse a synthetic batch of ``rows`` rows whose arrays exceed the budget (unknown
    dimensions count as 1), before it is generated."""
    specs = [*signature.inputs, *signature.outputs]
    sizes = {s.name: _row_bytes([rows, *(d or 1 for d in s.shape[1:])], s.dtype) for s in specs}
    largest = max(signature.inputs, key=lambda s: sizes[s.name])
    shape = (rows, *(d or 1 for d in largest.shape[1:]))
    found = Footprint(
        "synthetic batch", largest.name, shape, largest.dtype, sum(sizes.values()), rows
    )
    _guard(found, max_memory, ("--limit",))


def load_batch(
    path: str | Path,
    signature: ModelSignature,
    *,
    limit: int | None = None,
    max_memory: int | None = None,
    options: Sequence[str] = ROWS_OPTIONS,
) -> Batch:
    """Read a batch from ``path`` and check it fits ``signature``; ``limit`` keeps N rows.

    Shapes and sizes are checked from the headers first: rows whose arrays take more
    than ``max_memory`` (``None``: the default budget) are refused before they are read,
    with a hint naming ``options``.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"--limit: expected a positive number of rows. {received(limit)}")
    with _DataFile(Path(path)) as data:
        layout = _layout(data, signature)
        stop = layout.rows if limit is None else min(limit, layout.rows)
        _guard(footprint(data.path, signature, layout, stop), max_memory, options)
        return _read_batch(data, signature, layout, 0, stop)


@dataclass(frozen=True)
class BatchPlan:
    """How a data file is cut into batches: ``count`` batches of ``batch_size`` rows
    (the last may be shorter) over the first ``rows`` rows."""

    path: Path
    rows: int
    batch_size: int
    count: int


def plan_batches(
    path: str | Path,
    signature: ModelSignature,
    batch_size: int,
    *,
    max_batches: int | None = None,
    limit: int | None = None,
    max_memory: int | None = None,
) -> BatchPlan:
    """Check the file against the model (headers only) and plan its batches.

    ``limit`` caps the rows used, ``max_batches`` the number of batches; the batches
    held at once must fit ``max_memory`` (``None``: the default budget).
    """
    if batch_size < 1:
        raise UsageError(
            f"--batch-size: expected a positive number of rows. {received(batch_size)}"
        )
    if max_batches is not None and max_batches < 1:
        raise UsageError(f"--max-batches: expected a positive number. {received(max_batches)}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit: expected a positive number of rows. {received(limit)}")
    with _DataFile(Path(path)) as data:
        layout = _layout(data, signature)
    rows = layout.rows if limit is None else min(layout.rows, limit)
    count = -(-rows // batch_size)
    if max_batches is not None and count > max_batches:
        count, rows = max_batches, max_batches * batch_size
    held = footprint(data.path, signature, layout, min(batch_size, rows), min(count, 2))
    _guard(held, max_memory, ROWS_OPTIONS)
    return BatchPlan(Path(path), rows, batch_size, count)


def iter_batches(plan: BatchPlan, signature: ModelSignature) -> Iterator[Batch]:
    """The planned batches in order, read one at a time from disk."""
    with _DataFile(plan.path) as data:
        layout = _layout(data, signature)
        for start in range(0, plan.rows, plan.batch_size):
            yield _read_batch(
                data, signature, layout, start, min(start + plan.batch_size, plan.rows)
            )


@dataclass(frozen=True)
class Batches:
    """A data set cut into batches that are produced one at a time (streamed from disk).

    ``first`` is the first batch (for the loss checks and the trace), ``iterate()``
    yields every batch from the first, ``rows`` is their total number of rows.
    """

    first: Batch
    iterate: Callable[[], Iterator[Batch]]
    rows: int
    batch_size: int
    count: int
    max_batches: int | None


def split_batch(batch: Batch, batch_size: int, max_batches: int | None) -> Batches:
    """An in-memory batch cut into batches of ``batch_size`` rows (the last may be short)."""
    plan_rows = batch.size
    count = -(-plan_rows // batch_size)
    if max_batches is not None and count > max_batches:
        count, plan_rows = max_batches, max_batches * batch_size

    def piece(start: int) -> Batch:
        stop = min(start + batch_size, plan_rows)

        def rows(arrays: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
            return None if arrays is None else {k: a[start:stop] for k, a in arrays.items()}

        weight = None if batch.sample_weight is None else batch.sample_weight[start:stop]
        info = replace(batch.info, size=stop - start)
        return Batch(rows(batch.inputs) or {}, rows(batch.targets), weight, info)

    def iterate() -> Iterator[Batch]:
        return (piece(start) for start in range(0, plan_rows, batch_size))

    return Batches(piece(0), iterate, plan_rows, batch_size, count, max_batches)


def as_batches(data: Batch | Batches) -> Batches:
    """``data`` as :class:`Batches` (one batch is one batch of its own size)."""
    if isinstance(data, Batches):
        return data
    return Batches(data, lambda: iter([data]), data.size, data.size, 1, None)
