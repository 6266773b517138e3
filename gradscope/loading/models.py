"""Loading saved Keras models: ``.keras`` (Keras 3) and legacy ``.h5`` (Keras 3 or 2).

Safe mode stays on: a model whose config carries Python bytecode (a ``Lambda`` layer)
is refused by Keras, and the refusal is reported as one line.  Files are checked before
Keras sees them (exists, is a file, is a zip / HDF5 file, has a model config), so that
the common mistakes get a message naming the file and what was found, not a traceback
from deep inside the loader.

Models are loaded with ``compile=False`` and compiled again with just the saved loss and
loss weights, read directly from the file (``compile_config`` in a ``.keras`` archive,
``training_config`` in an HDF5 file's attributes).  The optimizer is never rebuilt, which
is faster, and this works where Keras's own loader fails on the compile config.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _tf
from ..errors import ModelLoadError, first_line, received

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class LoadOptions:
    """How far to trust a model file.

    ``custom_objects`` is a Python file to import before loading, for the custom
    layers, models, losses and functions the model needs.  ``unsafe`` turns Keras's
    safe mode off (Lambda layers holding Python bytecode), for files the user trusts.
    """

    custom_objects: Path | None = None
    unsafe: bool = False


@dataclass(frozen=True)
class LoadedModel:
    """A model and how it was read."""

    model: Any
    path: str
    format: str


def check_model_path(path: Path) -> None:
    """Fail with a :class:`ModelLoadError` unless ``path`` is a non-empty model file."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; expected a .keras or .h5 model file.")
    if path.is_dir():
        raise ModelLoadError(
            f"{path}: is a directory; expected a .keras or .h5 model file "
            "(TensorFlow SavedModel directories are not supported yet)."
        )
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty; expected a .keras or .h5 model file.")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"{path}: the file is not readable (permission denied).")
    suffix = path.suffix.lower()
    if suffix not in KERAS_SUFFIXES + H5_SUFFIXES:
        raise ModelLoadError(
            f"{path}: unsupported model file type; expected a .keras or .h5/.hdf5 file. "
            f"{received(repr(path.suffix or '(no extension)'))}"
        )


def _magic(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(8)
    return repr(head)


def looks_like_zip(path: Path) -> bool:
    """Starts like a zip file, whether or not the rest of it is there."""
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _check_keras_archive(path: Path) -> dict[str, Any]:
    """Return the archive's ``config.json`` after checking it is a Keras zip archive."""
    if not zipfile.is_zipfile(path):
        if looks_like_zip(path):
            raise ModelLoadError(f"{path}: truncated or corrupt Keras archive (zip file).")
        raise ModelLoadError(
            f"{path}: not a Keras archive (a .keras file is a zip file); the file starts "
            f"with {_magic(path)}."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise ModelLoadError(
                    f"{path}: a zip file but not a Keras model: no config.json inside. "
                    f"{received(sorted(names)[:5])}"
                )
            config = json.loads(archive.read("config.json"))
    except ModelLoadError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelLoadError(f"{path}: corrupt Keras archive: {first_line(exc)}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: config.json does not hold a model config.")
    return config


def _h5_training_config(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The ``training_config`` attribute of a legacy HDF5 model, and its Keras version."""
    import h5py

    if not h5py.is_hdf5(path):
        raise ModelLoadError(f"{path}: not an HDF5 file; the file starts with {_magic(path)}.")
    try:
        with h5py.File(path, "r") as handle:
            if "model_config" not in handle.attrs:
                raise ModelLoadError(
                    f"{path}: an HDF5 file but not a saved Keras model: no 'model_config' "
                    "attribute (a weights-only file?)."
                )
            raw = handle.attrs.get("training_config")
            version = _text(handle.attrs.get("keras_version", "")) or ""
    except ModelLoadError:
        raise
    except OSError as exc:
        raise ModelLoadError(f"{path}: unreadable HDF5 file: {first_line(exc)}") from exc
    if raw is None:
        return None, version
    try:
        config = json.loads(_text(raw))
    except ValueError as exc:
        raise ModelLoadError(f"{path}: 'training_config' is not valid JSON.") from exc
    return (config if isinstance(config, dict) else None), version


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _keras2_loss_config(config: Any) -> Any:
    """Adapt a Keras 2 loss config to Keras 3 (no ``reduction='auto'``, no ``fn`` key)."""
    if isinstance(config, dict):
        if "class_name" in config and isinstance(config.get("config"), dict):
            inner = dict(config["config"])
            inner.pop("fn", None)  # Keras 2 stores the wrapped function's name
            if inner.get("reduction") in ("auto", "sum_over_batch_size", None):
                inner["reduction"] = "sum_over_batch_size"
            return {**config, "config": inner}
        return {key: _keras2_loss_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_keras2_loss_config(item) for item in config]
    return config


def _deserialize_loss(config: Any) -> Any:
    """A Keras loss object or function from a saved config leaf (string or dict)."""
    keras = _tf.keras()
    if config is None or isinstance(config, str):
        return config
    if isinstance(config, dict) and "class_name" in config:
        return keras.losses.deserialize(config)
    if isinstance(config, dict):
        return {key: _deserialize_loss(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_deserialize_loss(item) for item in config]
    return config


def compile_from_config(model: Any, config: dict[str, Any], path: Path, *, keras2: bool) -> None:
    """Compile ``model`` with the loss and loss weights of a saved compile config.

    Only the loss matters to gradscope, so the saved optimizer and metrics are never
    rebuilt: that is faster than Keras's own ``compile=True`` and avoids its failures on
    some configs (Keras 3.15 cannot rebuild ``loss="mse"`` from an ``.h5`` it wrote).
    ``keras2`` adapts configs written by Keras 2.  Without a saved loss, the model is
    left uncompiled.
    """
    loss_config = config.get("loss")
    if loss_config is None:
        return
    try:
        loss = _deserialize_loss(_keras2_loss_config(loss_config) if keras2 else loss_config)
        model.compile(loss=loss, loss_weights=config.get("loss_weights"))
    except Exception as exc:  # the config is data from the file: anything can be wrong
        raise ModelLoadError(
            f"{path}: the saved loss cannot be rebuilt: {first_line(exc)}. "
            "Use --loss NAME to choose the loss."
        ) from exc


def _keras_load(path: Path, *, compile: bool, safe_mode: bool, custom_objects: Any) -> Any:
    keras = _tf.keras()
    return keras.saving.load_model(
        str(path), compile=compile, safe_mode=safe_mode, custom_objects=custom_objects
    )


def _explain_load_failure(path: Path, exc: BaseException) -> ModelLoadError:
    """Turn a Keras loader exception into one line a user can act on."""
    text = str(exc)
    if "Lambda" in text and ("safe_mode" in text or "arbitrary code" in text):
        return ModelLoadError(
            f"{path}: refused to load a Lambda layer holding Python code: Keras safe mode "
            "is on, since loading it could run arbitrary code."
        )
    if "Could not locate" in text or "Unknown layer" in text or "Unknown object" in text:
        return ModelLoadError(
            f"{path}: the model uses a class that is not available: {first_line(exc)}"
        )
    return ModelLoadError(f"{path}: cannot load the model: {first_line(exc)}")


def load_model(
    path: str | os.PathLike[str],
    options: LoadOptions | None = None,
    *,
    custom_objects: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a ``.keras`` or ``.h5`` model with its compiled loss, safe mode on.

    Raises :class:`ModelLoadError` with a one-line message for every failure.
    """
    options = options or LoadOptions()
    safe_mode = not options.unsafe
    file = Path(path)
    check_model_path(file)
    if file.suffix.lower() in KERAS_SUFFIXES:
        return _load_keras_archive(file, safe_mode, custom_objects)
    return _load_h5(file, safe_mode, custom_objects)


def _load_keras_archive(path: Path, safe_mode: bool, custom_objects: Any) -> LoadedModel:
    config = _check_keras_archive(path)
    model = _load_uncompiled(path, safe_mode, custom_objects)
    compile_from_config(model, config.get("compile_config") or {}, path, keras2=False)
    return LoadedModel(model, str(path), "keras")


def _load_h5(path: Path, safe_mode: bool, custom_objects: Any) -> LoadedModel:
    training_config, keras_version = _h5_training_config(path)
    model = _load_uncompiled(path, safe_mode, custom_objects)
    keras2 = keras_version.startswith("2")
    compile_from_config(model, training_config or {}, path, keras2=keras2)
    return LoadedModel(model, str(path), "h5")


def _load_uncompiled(path: Path, safe_mode: bool, custom_objects: Any) -> Any:
    """The model without Keras's own compile step (the optimizer is never needed here)."""
    try:
        return _keras_load(path, compile=False, safe_mode=safe_mode, custom_objects=custom_objects)
    except Exception as exc:
        raise _explain_load_failure(path, exc) from exc
