"""``--custom-objects FILE.py``: import a user's Python file for the classes a model needs.

A model that uses custom layers, models, losses, metrics or functions can only be rebuilt
when Keras can find them by name.  The file given to ``--custom-objects`` is imported as a
module (under a unique name, so it never shadows a real module), which runs its
``@keras.saving.register_keras_serializable`` decorators: those objects then live in
Keras's global registry.  Its public Keras classes and its own functions are also
collected into a ``custom_objects`` dictionary, for the ones it forgot to register.

Every failure is one line naming the file: a path that is not a ``.py`` file is a usage
error (exit 2); an exception raised while the module runs is reported as
``FILE.py: importing it raised ExcType: message`` (exit 3), never as a traceback.

Importing a file runs its code: this is what the user asks for by naming it.  A file
imported once is cached (by path, size and modification time), so loading several models
in one process does not run it again.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import _tf
from ..errors import GradscopeError, ModelLoadError, UsageError, first_line, received

OPTION = "--custom-objects"
_LIBRARY_ROOTS = frozenset({"keras", "tensorflow", "tf_keras"})
_counter = itertools.count()


@dataclass(frozen=True)
class CustomObjects:
    """What a custom-objects file provides to the loader.

    ``objects`` maps every name Keras may look up (the attribute name, the class or
    function name, and the registered ``package>Name``) to the object.  ``registered``
    lists the names the file added to Keras's global registry while it was imported.
    """

    path: Path
    objects: dict[str, Any] = field(default_factory=dict)
    registered: tuple[str, ...] = ()

    def names(self) -> list[str]:
        """The names this file provides, registered ones included, sorted."""
        return sorted(set(self.objects) | set(self.registered))


_cache: dict[tuple[str, int, int], CustomObjects] = {}


def check_custom_objects_path(path: Path) -> None:
    """Fail with a one-line :class:`UsageError` unless ``path`` is a readable ``.py`` file."""
    if not path.exists():
        raise UsageError(f"{path}: no such file; {OPTION} expects a Python file (.py).")
    if not path.is_file():
        raise UsageError(f"{path}: not a file; {OPTION} expects a Python file (.py).")
    if path.suffix.lower() != ".py":
        raise UsageError(
            f"{path}: not a Python file; {OPTION} expects a .py file. "
            f"{received(repr(path.suffix or '(no extension)'))}"
        )


def import_custom_objects(path: str | Path) -> CustomObjects:
    """Import the Python file ``path`` and collect the Keras objects it defines or registers."""
    file = Path(path)
    check_custom_objects_path(file)
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        registry = _tf.keras().saving.get_custom_objects()
        before = set(registry)
        module = _import_file(file)
        registered = tuple(sorted(set(registry) - before))
        _cache[key] = CustomObjects(file, keras_objects_of(module), registered)
    return _cache[key]


def _module_name(path: Path, kind: str) -> str:
    """A module name no real module has: ``_gradscope_<kind>_<stem>_<n>``."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"_gradscope_{kind}_{stem}_{next(_counter)}"


@contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """Let the file import its sibling modules, as ``python FILE.py`` would."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _import_file(
    path: Path, error: type[GradscopeError] = ModelLoadError, kind: str = "custom_objects"
) -> ModuleType:
    """Run ``path`` as a fresh module; an exception in it becomes one line.

    ``error`` is the class of that line (the exit code): a model's custom objects are a
    model error, a data pipeline's file a data error.  ``kind`` goes into the module name.
    """
    name = _module_name(path, kind)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        with _on_sys_path(path.resolve().parent):
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise error(f"{path}: importing it raised {type(exc).__name__}: {first_line(exc)}") from exc
    return module


def _keras_bases() -> tuple[type, ...]:
    """The base classes of Keras objects a saved model can refer to by name."""
    keras = _tf.keras()
    return (
        keras.layers.Layer,  # layers and models
        keras.losses.Loss,
        keras.metrics.Metric,
        keras.initializers.Initializer,
        keras.regularizers.Regularizer,
        keras.constraints.Constraint,
    )


def _is_library_object(obj: Any) -> bool:
    root = str(getattr(obj, "__module__", "") or "").split(".", 1)[0]
    return root in _LIBRARY_ROOTS


def _is_keras_object(obj: Any, module: ModuleType, bases: tuple[type, ...]) -> bool:
    """A Keras subclass not from Keras itself, or a plain function the file defines."""
    if inspect.isclass(obj):
        return issubclass(obj, bases) and not _is_library_object(obj)
    return inspect.isfunction(obj) and obj.__module__ == module.__name__


def keras_objects_of(module: ModuleType) -> dict[str, Any]:
    """The module's public Keras classes and functions, under every name Keras may use."""
    keras = _tf.keras()
    bases = _keras_bases()
    objects: dict[str, Any] = {}
    for attribute, obj in vars(module).items():
        if attribute.startswith("_") or not _is_keras_object(obj, module, bases):
            continue
        for name in (attribute, obj.__name__, keras.saving.get_registered_name(obj)):
            objects.setdefault(name, obj)
    return objects
