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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataLoadError, MismatchError, UsageError, first_line, received
from ..report import BatchInfo
from .models import looks_like_zip
from .signature import ModelSignature, TensorSpec

DATA_SUFFIXES = (".npz", ".npy", ".h5", ".hdf5")
SAMPLE_WEIGHT_KEY = "sample_weight"

ArrayReader = Callable[[str, int | None], np.ndarray]


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


class _DataFile:
    """Uniform, lazy access to the named arrays of one data file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: list[str] = []
        self.rows: dict[str, int | None] = {}
        self._read: ArrayReader = self._unavailable
        self._handle: Any = None

    def _unavailable(self, key: str, limit: int | None) -> np.ndarray:
        raise DataLoadError(f"{self.path}: no array {key!r}")

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
        if self._handle is not None:
            self._handle.close()

    def _open_npz(self) -> None:
        if not zipfile.is_zipfile(self.path):
            if looks_like_zip(self.path):
                raise DataLoadError(f"{self.path}: truncated or corrupt .npz file (zip archive).")
            raise DataLoadError(f"{self.path}: not a .npz file (a .npz file is a zip archive).")
        self._handle = np.load(self.path, allow_pickle=False)
        self.keys = list(self._handle.files)

        def read(key: str, limit: int | None) -> np.ndarray:
            try:
                array = np.asarray(self._handle[key])
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise _refuse_pickle(self.path, key) from exc
                raise
            return array[:limit] if limit is not None and array.ndim else array

        self._read = read

    def _open_npy(self) -> None:
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc) or "object" in str(exc).lower():
                raise _refuse_pickle(self.path, "x") from exc
            raise
        self.keys = ["x"]

        def read(key: str, limit: int | None) -> np.ndarray:
            return np.array(array[:limit] if limit is not None and array.ndim else array)

        self._read = read

    def _open_h5(self) -> None:
        import h5py

        if not h5py.is_hdf5(self.path):
            raise DataLoadError(f"{self.path}: not an HDF5 file.")
        self._handle = h5py.File(self.path, "r")
        self.keys = [k for k, v in self._handle.items() if isinstance(v, h5py.Dataset)]

        def read(key: str, limit: int | None) -> np.ndarray:
            dataset = self._handle[key]
            if dataset.dtype.kind == "O" or h5py.check_string_dtype(dataset.dtype):
                raise DataLoadError(
                    f"{self.path}: key {key!r} holds strings or objects ({dataset.dtype}); "
                    "expected a numeric array."
                )
            if dataset.shape == ():
                return np.asarray(dataset[()])
            return np.asarray(dataset[:limit] if limit is not None else dataset[()])

        self._read = read

    def read(self, key: str, limit: int | None) -> np.ndarray:
        try:
            array = self._read(key, limit)
        except (DataLoadError, MismatchError):
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise DataLoadError(
                f"{self.path}: key {key!r} cannot be read: {first_line(exc)}"
            ) from exc
        if array.dtype.kind in "OUSV":
            raise DataLoadError(
                f"{self.path}: key {key!r} holds {array.dtype} data; expected a numeric array."
            )
        self.rows[key] = int(array.shape[0]) if array.ndim else None
        return array


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


def check_input_array(source: str, key: str, array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``array`` cast to the input's dtype, after checking rank, shape and dtype."""
    expected = _describe_shape(spec.shape)
    if array.ndim != len(spec.shape) or any(
        want is not None and want != got
        for want, got in zip(spec.shape[1:], array.shape[1:], strict=False)
    ):
        raise MismatchError(
            f"{source}: key {key!r} does not fit model input {spec.name!r}: expected shape "
            f"{expected} (None = any), found {_describe_shape(array.shape)}."
        )
    if array.dtype.kind == "c":
        raise MismatchError(f"{source}: key {key!r} is complex; expected real numbers.")
    if spec.is_integer:
        integral = np.all(np.isfinite(array)) and np.all(np.equal(np.mod(array, 1), 0))
        if array.dtype.kind == "f" and not integral:
            raise MismatchError(
                f"{source}: key {key!r} feeds integer input {spec.name!r} ({spec.dtype}) "
                f"but holds non-integer values. {received(array.dtype)}"
            )
        return array.astype(spec.dtype, copy=False)
    return array.astype(spec.dtype if spec.dtype != "bfloat16" else np.float32, copy=False)


def _check_target_array(source: str, key: str, array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if array.ndim == 0:
        raise MismatchError(
            f"{source}: key {key!r} is a scalar; expected targets for output {spec.name!r} "
            f"with one row per example, shaped like {_describe_shape(spec.shape)}."
        )
    if array.dtype.kind == "c":
        raise MismatchError(f"{source}: key {key!r} is complex; expected real numbers.")
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


def _read_inputs(
    data: _DataFile, signature: ModelSignature, limit: int | None
) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    for spec, (name, candidates) in zip(
        signature.inputs, _keys_for(signature.inputs, "x"), strict=True
    ):
        key = _find_key(candidates, data.keys)
        if key is None:
            raise MismatchError(
                f"{data.path}: no array for model input {name!r}; expected key "
                f"{' or '.join(repr(c) for c in candidates)}. {received(sorted(data.keys))}"
            )
        inputs[name] = check_input_array(str(data.path), key, data.read(key, limit), spec)
    return inputs


def _read_targets(
    data: _DataFile, signature: ModelSignature, limit: int | None
) -> dict[str, np.ndarray] | None:
    found: dict[str, tuple[str, TensorSpec]] = {}
    missing: list[str] = []
    for spec, (name, candidates) in zip(
        signature.outputs, _keys_for(signature.outputs, "y"), strict=True
    ):
        key = _find_key(candidates, data.keys)
        if key is None:
            missing.append(name)
        else:
            found[name] = (key, spec)
    if not found:
        return None
    if missing:
        raise MismatchError(
            f"{data.path}: targets for some outputs but not for {missing}; expected a key for "
            f"every output {signature.output_names}. {received(sorted(data.keys))}"
        )
    return {
        name: _check_target_array(str(data.path), key, data.read(key, limit), spec)
        for name, (key, spec) in found.items()
    }


def load_batch(path: str | Path, signature: ModelSignature, *, limit: int | None = None) -> Batch:
    """Read a batch from ``path`` and check it fits ``signature``; ``limit`` keeps N rows."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit: expected a positive number of rows. {received(limit)}")
    file = Path(path)
    with _DataFile(file) as data:
        inputs = _read_inputs(data, signature, limit)
        targets = _read_targets(data, signature, limit)
        weight_key = SAMPLE_WEIGHT_KEY if SAMPLE_WEIGHT_KEY in data.keys else None
        sample_weight = None
        if weight_key is not None:
            sample_weight = data.read(weight_key, limit).astype(np.float32)
        keys = tuple(sorted(data.keys))
    size = _check_batch_sizes(str(file), data.rows)
    info = BatchInfo("file", size, path=str(file), has_targets=targets is not None, keys=keys)
    return Batch(inputs, targets, sample_weight, info)
