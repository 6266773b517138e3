"""Loading saved models: ``.keras`` (Keras 3), legacy ``.h5`` (Keras 3 or 2), SavedModel.

Safe mode stays on unless ``--unsafe`` is given: a model whose config carries Python
bytecode (a ``Lambda`` layer) is refused by Keras, and the refusal is reported as one line
that says why and how to turn safe mode off.  Pickles are never loaded.  Files are
checked before Keras sees them (exists, is a file, is a zip / HDF5 file, has a model
config), so that the common mistakes get a message naming the file and what was found,
not a traceback from deep inside the loader.

Custom classes come from ``--custom-objects FILE.py`` (see :mod:`.custom_objects`): the
file is imported, and its objects are in scope while the model and its loss are rebuilt.
A class the model needs and nobody provides is named in the error, with its registered
``package>Name`` read from the model's config.  A class whose package is not installed
(a keras_hub model on a machine without keras_hub) is named with its module and the
``pip install`` that provides it; a file saved by a newer Keras than the installed one
names both versions when it fails to load, and gets a note when it loads.  SavedModel
directories are wrapped as a Keras model by :mod:`.savedmodel`.

Models are loaded with ``compile=False`` and compiled again with just the saved loss and
loss weights, read directly from the file (``compile_config`` in a ``.keras`` archive,
``training_config`` in an HDF5 file's attributes).  The optimizer is never rebuilt, which
is faster, and this works where Keras's own loader fails on the compile config.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _tf
from ..errors import ModelLoadError, first_line, received
from .custom_objects import CustomObjects, import_custom_objects
from .savedmodel import SAVED_MODEL_FILE, load_savedmodel

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class LoadOptions:
    """How far to trust a model file.

    ``custom_objects`` is a Python file to import before loading, for the custom
    layers, models, losses and functions the model needs.  ``unsafe`` turns Keras's
    safe mode off (Lambda layers holding Python bytecode), for files the user trusts.
    ``saved_loss`` rebuilds the loss saved in the file; it is off when ``--loss``
    replaces it, so a saved loss that cannot be rebuilt does not stop the run.
    """

    custom_objects: Path | None = None
    unsafe: bool = False
    saved_loss: bool = True

    @classmethod
    def of(
        cls, custom_objects: str | Path | None, unsafe: bool, loss: str | None = None
    ) -> LoadOptions:
        """The options of a command: its ``--custom-objects``, ``--unsafe``, ``--loss``."""
        path = None if custom_objects is None else Path(custom_objects)
        return cls(path, unsafe, saved_loss=loss is None)


@dataclass(frozen=True)
class LoadedModel:
    """A model, how it was read, and notes for the report.

    ``format`` is ``"keras"``, ``"h5"`` or ``"savedmodel"``.  ``notes`` are one-line
    remarks about what this format cannot give (a SavedModel hides its layers).
    """

    model: Any
    path: str
    format: str
    notes: tuple[str, ...] = ()


def check_model_path(path: Path) -> None:
    """Fail with a :class:`ModelLoadError` unless ``path`` is a model file or SavedModel."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; expected a .keras or .h5 model file.")
    if path.is_dir():
        _check_savedmodel_dir(path)
        return
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


def _check_savedmodel_dir(path: Path) -> None:
    """A directory is a model only as a TensorFlow SavedModel (it has ``saved_model.pb``)."""
    graph = path / SAVED_MODEL_FILE
    if not graph.is_file():
        raise ModelLoadError(
            f"{path}: is a directory without {SAVED_MODEL_FILE}; expected a .keras or .h5 "
            "model file, or a TensorFlow SavedModel directory."
        )
    if not os.access(graph, os.R_OK):
        raise ModelLoadError(f"{graph}: the file is not readable (permission denied).")


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


@dataclass(frozen=True)
class _H5Configs:
    """The JSON attributes of a legacy HDF5 model that gradscope reads itself."""

    model: dict[str, Any] | None
    training: dict[str, Any] | None
    keras_version: str


def _h5_configs(path: Path) -> _H5Configs:
    """The ``model_config`` and ``training_config`` attributes of a legacy HDF5 model."""
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
            raw_model = handle.attrs.get("model_config")
            raw_training = handle.attrs.get("training_config")
            version = _text(handle.attrs.get("keras_version", "")) or ""
    except ModelLoadError:
        raise
    except OSError as exc:
        raise ModelLoadError(f"{path}: unreadable HDF5 file: {first_line(exc)}") from exc
    return _H5Configs(
        _json_attribute(path, "model_config", raw_model),
        _json_attribute(path, "training_config", raw_training),
        version,
    )


def _json_attribute(path: Path, name: str, raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        config = json.loads(_text(raw))
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {name!r} is not valid JSON.") from exc
    return config if isinstance(config, dict) else None


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
    """A Keras loss object or function from a saved config leaf (string or dict).

    Runs inside the custom-object scope.  A loss saved by name (an ``.h5`` file stores a
    function's name) is checked now: a custom one is resolved to its function, since
    Keras would otherwise look the name up later, when the scope is gone, and an unknown
    one fails here, where the error can name it.  Built-in names stay strings.
    """
    keras = _tf.keras()
    if config is None:
        return config
    if isinstance(config, str):
        return _loss_by_name(config)
    if isinstance(config, dict) and "class_name" in config:
        loss = keras.losses.deserialize(config)  # a function it cannot find comes back a name
        return _loss_by_name(loss) if isinstance(loss, str) else loss
    if isinstance(config, dict):
        return {key: _deserialize_loss(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_deserialize_loss(item) for item in config]
    return config


def _loss_by_name(name: str) -> Any:
    """A custom loss's object, or a built-in loss's name once Keras has recognised it."""
    keras = _tf.keras()
    custom = keras.saving.get_registered_object(name)
    if custom is not None:
        return custom
    keras.losses.get(name)  # an unknown name fails here, while the custom objects are known
    return name


def compile_from_config(
    model: Any,
    config: dict[str, Any],
    path: Path,
    *,
    keras2: bool,
    context: _Context | None = None,
) -> None:
    """Compile ``model`` with the loss and loss weights of a saved compile config.

    Only the loss matters to gradscope, so the saved optimizer and metrics are never
    rebuilt: that is faster than Keras's own ``compile=True`` and avoids its failures on
    some configs (Keras 3.15 cannot rebuild ``loss="mse"`` from an ``.h5`` it wrote).
    ``keras2`` adapts configs written by Keras 2.  Without a saved loss, the model is
    left uncompiled.  ``context`` names the custom-objects file in errors.
    """
    loss_config = config.get("loss")
    if loss_config is None:
        return
    try:
        loss = _deserialize_loss(_keras2_loss_config(loss_config) if keras2 else loss_config)
        model.compile(loss=loss, loss_weights=config.get("loss_weights"))
    except Exception as exc:  # the config is data from the file: anything can be wrong
        missing = _missing_object(_full_text(exc))
        if missing is not None:
            needs = _describe_missing(missing, {"loss": loss_config})
            raise ModelLoadError(
                f"{path}: the saved loss needs {needs}, which is not available"
                f"{_provided_by(context)}. Pass the Python file that defines it with "
                "--custom-objects FILE.py."
            ) from exc
        raise ModelLoadError(
            f"{path}: the saved loss cannot be rebuilt: {_reason(exc)}. "
            "Use --loss NAME to choose the loss instead (the saved one is then not read)."
        ) from exc


@dataclass(frozen=True)
class _Context:
    """What a load needs besides the path: safe mode, custom objects, the saved config."""

    safe_mode: bool
    custom_objects: dict[str, Any] = field(default_factory=dict)
    source: CustomObjects | None = None
    model_config: dict[str, Any] | None = None
    keras_version: str = ""  # of the Keras that saved the file, when it says


# -- explaining failures -----------------------------------------------------------------

_MISSING_PATTERNS = (
    re.compile(r"Could not locate (class|function) '([^']+)'"),
    re.compile(r"Unknown (layer|object|config_item|loss|metric)[^:']*: '([^']+)'"),
    re.compile(r"Unknown (activation) function '([^']+)'"),
    re.compile(r"Could not interpret (loss) identifier: '?([^'\s]+)'?"),
)
_SAFE_MODE_MARKERS = ("safe_mode=False", "enable_unsafe_deserialization")
_REFUSED_CLASS = re.compile(r"deserialization of an? `(\w+)`")


_MESSAGE_LIMIT = 150  # characters of a library message quoted in an error line (lines < 300)


def _short(text: str) -> str:
    """A library message cut to one short line: Keras appends whole configs to some."""
    line = text.split(" Full object config:", 1)[0].strip()
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 3].rstrip() + "..."


_ENCOUNTERED = "Exception encountered: "


def _reason(exc: BaseException) -> str:
    """The innermost cause Keras quotes in ``exc`` (it nests them after ``Exception
    encountered:``), as one short line."""
    text = str(exc).rsplit(_ENCOUNTERED, 1)[-1].strip()
    return _short(text.splitlines()[0] if text else type(exc).__name__)


def _full_text(exc: BaseException) -> str:
    """The messages of ``exc`` and of the exceptions it was raised from."""
    texts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(texts) < 10:
        texts.append(str(current))
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


def _missing_object(text: str) -> tuple[str, str] | None:
    """``(kind, name)`` of the object Keras could not find, if that is the failure."""
    for pattern in _MISSING_PATTERNS:
        match = pattern.search(text)
        if match:
            kind = "function" if match.group(1) in ("function", "activation", "loss") else "class"
            return kind, match.group(2)
    return None


def _config_nodes(config: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a nested JSON config, depth first."""
    if isinstance(config, dict):
        yield config
        for value in config.values():
            yield from _config_nodes(value)
    elif isinstance(config, list):
        for item in config:
            yield from _config_nodes(item)


def _registered_name(name: str, config: Any) -> str:
    """The ``package>Name`` the model's config records for class ``name``."""
    if ">" in name:
        return name
    suffix = f">{name}"
    for node in _config_nodes(config):
        class_name = node.get("class_name")
        registered = node.get("registered_name")
        if class_name == name and isinstance(registered, str) and ">" in registered:
            return registered
        if isinstance(class_name, str) and class_name.endswith(suffix):  # Keras 2
            return class_name
        inner = node.get("config")
        if class_name == "function" and isinstance(inner, str) and inner.endswith(suffix):
            return inner
    return name


def _describe_missing(missing: tuple[str, str], config: Any) -> str:
    """``class 'MyLayer' (registered as 'my_pkg>MyLayer')``, for an error message."""
    kind, name = missing
    registered = _registered_name(name, config)
    short = registered.rsplit(">", 1)[-1]
    if ">" in registered:
        return f"{kind} {short!r} (registered as {registered!r})"
    return f"{kind} {short!r} (saved without a package name)"


def _provided_by(context: _Context | None) -> str:
    source = context.source if context is not None else None
    if source is None:
        return ""
    provided = ", ".join(source.names()) or "no Keras objects"
    return f": {source.path} does not define or register it (it provides: {provided})"


def _layer_names(config: Any, class_name: str) -> list[str]:
    names = []
    for node in _config_nodes(config):
        if node.get("class_name") == class_name and isinstance(node.get("config"), dict):
            name = node["config"].get("name")
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names


_REFUSED_LAYERS = {"Lambda": "Python bytecode", "TFSMLayer": "an external SavedModel graph"}


def _refused_what(text: str, config: Any) -> str:
    """What safe mode refused: ``Lambda layer 'double', which holds Python bytecode``."""
    match = _REFUSED_CLASS.search(text)
    class_name = match.group(1) if match else None
    if class_name not in _REFUSED_LAYERS:
        sentence = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
        return f"the model ({sentence.rstrip('.')})" if sentence else "the model"
    names = _layer_names(config, class_name)
    content = _REFUSED_LAYERS[class_name]
    if len(names) == 1:
        return f"{class_name} layer {names[0]!r}, which holds {content}"
    listed = f" {', '.join(map(repr, names))}" if names else ""
    return f"{class_name} layers{listed}, which hold {content}"


def _safe_mode_error(path: Path, text: str, config: Any) -> ModelLoadError:
    """Safe mode refused code stored in the file: say why, and what ``--unsafe`` does."""
    return ModelLoadError(
        f"{path}: refused to load {_refused_what(text, config)}: Keras safe mode (on by "
        "default) will not run code stored in a model file, since it could do anything. "
        "If you trust this file, pass --unsafe to turn safe mode off."
    )


# -- classes from packages that are not installed ----------------------------------------

# Keras's messages when the module a config names cannot give the class (Keras 3.15.1,
# keras/src/saving/serialization_lib.py); Keras imports keras, keras_hub, keras_cv and
# keras_nlp modules itself, and looks every other class up in its registry only.
_UNIMPORTABLE = re.compile(
    r"Could not deserialize (class|function) '([^']+)' because its parent module "
    r"([\w.]+) cannot be imported"
)
_NOT_IN_MODULE = re.compile(
    r"Could not deserialize '([\w.]+)\.(\w+)' because it is not a KerasSaveable subclass"
)
# Import names whose pip distribution is spelled differently.
_DISTRIBUTIONS = {
    "keras_hub": "keras-hub",
    "keras_nlp": "keras-nlp",
    "keras_cv": "keras-cv",
    "tf_keras": "tf-keras",
}
_NOT_PACKAGES = frozenset({"__main__", "builtins", "keras"})


def _distribution(package: str) -> str:
    """The ``pip install`` name of a top-level module (the module name when not known)."""
    return _DISTRIBUTIONS.get(package, package)


def _installed(package: str) -> bool:
    """Whether the top-level module ``package`` can be found (without importing it)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _installed_version(distribution: str) -> str:
    try:
        return f" {importlib.metadata.version(distribution)}"
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return ""


def _not_found_module(exc: BaseException) -> str | None:
    """The name of the module whose ``ModuleNotFoundError`` caused ``exc``, if one did."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return None
        if isinstance(current, ModuleNotFoundError) and current.name:
            return current.name
        current = current.__cause__ or current.__context__
    return None


def _saved_module(name: str, config: Any) -> str | None:
    """The ``module`` the model's config records for class ``name`` (or ``pkg>name``)."""
    for node in _config_nodes(config):
        if name in (node.get("class_name"), node.get("registered_name")):
            module = node.get("module")
            return module if isinstance(module, str) and module else None
    return None


@dataclass(frozen=True)
class _Unavailable:
    """A class the config names that its module cannot give, and why.

    ``installed`` is whether the module's package (and what it imports) is installed, so
    the cause is the installed version, not a missing package.
    """

    kind: str
    name: str
    module: str
    why: str
    installed: bool

    def message(self, config: Any) -> str:
        """``class 'pkg>Name' from module M is not available: ...``."""
        name = _registered_name(self.name, config)
        return f"{self.kind} {name!r} from module {self.module} is not available: {self.why}."


def _unavailable(
    kind: str, name: str, module: str, not_found: str | None, *, custom_objects_hint: bool
) -> _Unavailable:
    """Why class ``name`` cannot come from ``module``, and the install that fixes it.

    ``not_found`` is the module whose import failed, when it is known: a dependency of
    the package, or the package itself.
    """
    package = module.split(".", 1)[0]
    missing = not_found.split(".", 1)[0] if not_found else package
    if missing != package and not _installed(missing):
        why = (
            f"importing it needs module {missing!r}, which is not installed; "
            f"install {_distribution(missing)} (pip install {_distribution(missing)})"
        )
        return _Unavailable(kind, name, module, why, installed=False)
    distribution = _distribution(package)
    if not _installed(package):
        hint = ", or pass the Python file that defines it with --custom-objects FILE.py"
        tail = hint if custom_objects_hint else ""
        why = (
            f"{package} is not installed; install {distribution} (pip install {distribution}){tail}"
        )
        return _Unavailable(kind, name, module, why, installed=False)
    why = (
        f"the installed {distribution}{_installed_version(distribution)} does not provide it; "
        f"the file may need a newer version (pip install -U {distribution})"
    )
    return _Unavailable(kind, name, module, why, installed=True)


def _keras_import_failure(exc: BaseException, text: str) -> _Unavailable | None:
    """Keras imported the module the config names, and it failed or lacks the class."""
    found = _UNIMPORTABLE.search(text)
    if found is not None:
        kind, name, module = found.groups()
        return _unavailable(kind, name, module, _not_found_module(exc), custom_objects_hint=False)
    found = _NOT_IN_MODULE.search(text)
    if found is not None:
        module, name = found.groups()
        return _unavailable("class", name, module, None, custom_objects_hint=False)
    return None


def _uninstalled_module(text: str, config: Any) -> _Unavailable | None:
    """A class Keras looked up only in its registry, from a module that is not installed.

    Keras never imports modules outside its own packages; a class from a package that is
    installed but not imported is left to the ``--custom-objects`` advice.
    """
    missing = _missing_object(text)
    if missing is None:
        return None
    kind, name = missing
    module = _saved_module(name, config)
    package = module.split(".", 1)[0] if module else ""
    if module is None or not package or package in _NOT_PACKAGES or _installed(package):
        return None
    return _unavailable(kind, name, module, None, custom_objects_hint=True)


# -- files from a newer Keras --------------------------------------------------------------


def _version_tuple(version: str) -> tuple[int, int, int] | None:
    """``(3, 15, 1)`` from ``"3.15.1"`` (or ``"3.16.0.dev2025..."``); ``None`` if unparsable."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version.strip())
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _newer_keras(saved: str) -> str | None:
    """``Keras 3.16.0, newer than the installed Keras 3.15.1`` when the file is newer."""
    installed = str(_tf.keras().__version__)
    file_version, own_version = _version_tuple(saved), _version_tuple(installed)
    if file_version is None or own_version is None or file_version <= own_version:
        return None
    return f"Keras {saved}, newer than the installed Keras {installed}"


def _newer_keras_note(saved: str) -> tuple[str, ...]:
    """A note for a file that a newer Keras saved and the installed one could load."""
    newer = _newer_keras(saved)
    if newer is None:
        return ()
    installed = _tf.keras().__version__
    return (f"saved by {newer}; it loaded, and its layers run as Keras {installed} defines them",)


def _archive_keras_version(path: Path) -> str:
    """``keras_version`` from a ``.keras`` archive's ``metadata.json`` (``""`` if absent)."""
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read("metadata.json"))
    except (KeyError, zipfile.BadZipFile, OSError, ValueError, EOFError):
        return ""
    version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) else ""


# -- explaining failures, in order ---------------------------------------------------------


def _explain_load_failure(
    path: Path, exc: BaseException, context: _Context | None = None
) -> ModelLoadError:
    """Turn a Keras loader exception into one line a user can act on."""
    text = _full_text(exc)
    config = context.model_config if context is not None else None
    if any(marker in text for marker in _SAFE_MODE_MARKERS):
        return _safe_mode_error(path, text, config)
    absent = _keras_import_failure(exc, text) or _uninstalled_module(text, config)
    if absent is not None and not absent.installed:  # a missing package: install it first
        return ModelLoadError(f"{path}: {absent.message(config)}")
    newer = _newer_keras(context.keras_version) if context is not None else None
    if newer is not None:
        return ModelLoadError(
            f"{path}: cannot load the model, saved by {newer} (pip install -U keras): "
            f"{_reason(exc)}"
        )
    if absent is not None:
        return ModelLoadError(f"{path}: {absent.message(config)}")
    missing = _missing_object(text)
    if missing is not None:
        return ModelLoadError(
            f"{path}: the model needs {_describe_missing(missing, config)}, which is not "
            f"available{_provided_by(context)}. Pass the Python file that defines it with "
            "--custom-objects FILE.py."
        )
    return ModelLoadError(f"{path}: cannot load the model: {_reason(exc)}")


# -- loading -------------------------------------------------------------------------------


def load_model(
    path: str | os.PathLike[str],
    options: LoadOptions | None = None,
    *,
    custom_objects: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a ``.keras``/``.h5`` model with its compiled loss, or a SavedModel directory.

    ``options.custom_objects`` (a Python file) is imported first, and its Keras objects,
    with ``custom_objects`` (a dict, for Python callers), are in scope during the load.
    Safe mode is on unless ``options.unsafe``.  Raises :class:`ModelLoadError` (or
    :class:`UsageError` for a bad custom-objects path) with a one-line message.
    """
    options = options or LoadOptions()
    file = Path(path)
    check_model_path(file)
    source = _import_source(options)
    objects = {**(source.objects if source else {}), **(custom_objects or {})}
    context = _Context(not options.unsafe, objects, source)
    if file.is_dir():
        return _load_savedmodel(file, context)
    with _tf.keras().saving.custom_object_scope(objects):
        if file.suffix.lower() in KERAS_SUFFIXES:
            return _load_keras_archive(file, context, options.saved_loss)
        return _load_h5(file, context, options.saved_loss)


def _import_source(options: LoadOptions) -> CustomObjects | None:
    """The imported ``--custom-objects`` file, if one was given."""
    if options.custom_objects is None:
        return None
    return import_custom_objects(options.custom_objects)


def _keras_load(path: Path, *, compile: bool, safe_mode: bool, custom_objects: Any) -> Any:
    keras = _tf.keras()
    return keras.saving.load_model(
        str(path), compile=compile, safe_mode=safe_mode, custom_objects=custom_objects
    )


def _load_savedmodel(path: Path, context: _Context) -> LoadedModel:
    model, notes = load_savedmodel(path, safe_mode=context.safe_mode)
    return LoadedModel(model, str(path), "savedmodel", notes)


def _load_keras_archive(path: Path, context: _Context, saved_loss: bool) -> LoadedModel:
    config = _check_keras_archive(path)
    context = _with_config(context, config, _archive_keras_version(path))
    model = _load_uncompiled(path, context)
    if saved_loss:
        compile_from_config(
            model, config.get("compile_config") or {}, path, keras2=False, context=context
        )
    return LoadedModel(model, str(path), "keras", _newer_keras_note(context.keras_version))


def _load_h5(path: Path, context: _Context, saved_loss: bool) -> LoadedModel:
    configs = _h5_configs(path)
    context = _with_config(context, configs.model, configs.keras_version)
    model = _load_uncompiled(path, context)
    keras2 = configs.keras_version.startswith("2")
    if saved_loss:
        compile_from_config(model, configs.training or {}, path, keras2=keras2, context=context)
    return LoadedModel(model, str(path), "h5", _newer_keras_note(configs.keras_version))


def _with_config(context: _Context, config: dict[str, Any] | None, keras_version: str) -> _Context:
    return _Context(
        context.safe_mode, context.custom_objects, context.source, config, keras_version
    )


def _load_uncompiled(path: Path, context: _Context) -> Any:
    """The model without Keras's own compile step (the optimizer is never needed here)."""
    try:
        return _keras_load(
            path,
            compile=False,
            safe_mode=context.safe_mode,
            custom_objects=context.custom_objects or None,
        )
    except Exception as exc:
        raise _explain_load_failure(path, exc, context) from exc
