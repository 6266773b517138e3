"""Import TensorFlow and Keras quietly.

TensorFlow 2.21 writes absl lines to file descriptor 2 while it is imported (oneDNN,
cudart, "All log messages before absl::InitializeLog()"), whatever
``TF_CPP_MIN_LOG_LEVEL`` says.  Those lines come from C++ and bypass ``sys.stderr``, so
they are silenced at the file-descriptor level: fd 2 points at a temporary file for the
duration of the import.  If the import fails, whatever TensorFlow wrote is replayed to
the real stderr before the exception propagates, so a real import error is never hidden.

Everything in gradscope that needs TensorFlow goes through :func:`tensorflow` and
:func:`keras`; nothing imports them at module import time, so ``gradscope --help`` stays
fast.

gradscope runs Keras on TensorFlow only.  Keras picks its backend once, when it is first
imported, from ``KERAS_BACKEND`` or else the ``"backend"`` of ``keras.json``.  The CLI owns
its process, so :func:`use_tensorflow_backend` overrides either setting there (a
``.keras`` file does not depend on the backend).  A Python caller's process is theirs:
there a non-TensorFlow setting, or a Keras already imported on another backend, is a
:class:`~gradscope.errors.UsageError` that names the fix, raised before Keras is imported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .errors import UsageError

TENSORFLOW = "tensorflow"
_FIX = "set KERAS_BACKEND=tensorflow before importing keras"
_modules: dict[str, ModuleType] = {}


@contextlib.contextmanager
def _fd2_captured() -> Iterator[None]:
    """Point fd 2 at a temporary file; replay its content only if the block raises."""
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved_fd, 2)
            sink.seek(0)
            os.write(2, sink.read())
            raise
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


_NOISY_MODULES = r"(tensorflow|keras|tf_keras|absl|h5py)(\.|$)"
"""The packages whose Python warnings are hidden while they are imported."""


def _quiet_environment() -> None:
    """Ask TensorFlow and Keras to keep their logs to errors only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _import_warnings_hidden() -> Iterator[None]:
    """Hide the Python warnings TensorFlow, Keras, absl and h5py raise while imported.

    Only for the duration of the import, and only warnings raised from those packages:
    the process's warning filters are a caller's (a notebook's), so gradscope leaves them
    as a plain ``import tensorflow`` would.  The filters the libraries install while they
    are imported (numpy's, urllib3's) are kept; only gradscope's own filter is dropped.
    Like :class:`warnings.catch_warnings`, this is not thread-safe: it runs once, on the
    first use of TensorFlow.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=_NOISY_MODULES)
        ours = list(warnings.filters)
        yield
        final = list(warnings.filters)
    # What comes after the last filter there was before the import was appended.
    last = final.index(ours[-1]) if ours[-1] in final else len(final)
    for entry in reversed([e for e in final[:last] if e not in ours]):
        _add_filter(entry, append=False)
    for entry in [e for e in final[last + 1 :] if e not in ours]:
        _add_filter(entry, append=True)


def _add_filter(entry: Any, append: bool) -> None:
    """Install a ``warnings.filters`` entry again, through the public API."""
    action, message, category, module, lineno = entry
    pattern = "" if message is None else message.pattern
    where = "" if module is None else module.pattern
    warnings.filterwarnings(action, pattern, category, where, lineno, append)


# -- the Keras backend ------------------------------------------------------------------


@dataclass(frozen=True)
class BackendSetting:
    """A Keras backend other than TensorFlow, and where it is set.

    ``source`` is ``"KERAS_BACKEND"`` or the path of the ``keras.json`` that names it.
    """

    backend: str
    source: str

    def describe(self) -> str:
        """``KERAS_BACKEND=jax``, or ``"backend": "jax" in /home/me/.keras/keras.json``."""
        if self.source == "KERAS_BACKEND":
            return f"KERAS_BACKEND={self.backend}"
        return f'"backend": {json.dumps(self.backend)} in {self.source}'


def _keras_json() -> str:
    """The ``keras.json`` Keras reads: in ``$KERAS_HOME``, else ``~/.keras`` (``/tmp/.keras``
    when the home folder is not writable), as in ``keras/src/backend/config.py`` (checked
    on Keras 3.15.1)."""
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.expanduser(os.path.join(home, "keras.json"))


def configured_backend() -> BackendSetting | None:
    """The backend ``import keras`` would pick, if it is not TensorFlow.

    A non-empty ``KERAS_BACKEND`` wins over ``keras.json``; a ``keras.json`` that is not
    valid JSON counts as empty, as Keras treats it.
    """
    variable = os.environ.get("KERAS_BACKEND")
    if variable:
        return None if variable == TENSORFLOW else BackendSetting(variable, "KERAS_BACKEND")
    path = _keras_json()
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    backend = config.get("backend", TENSORFLOW) if isinstance(config, dict) else TENSORFLOW
    return None if backend == TENSORFLOW else BackendSetting(str(backend), path)


def use_tensorflow_backend() -> str | None:
    """Make the Keras this process imports run on TensorFlow, whatever the settings say.

    Only for a process gradscope owns (the CLI): it sets ``KERAS_BACKEND=tensorflow`` in
    this process's environment when ``KERAS_BACKEND`` or ``keras.json`` names another
    backend, before Keras is imported.  Returns a note naming the setting it overrode, or
    ``None`` when there was nothing to override (or Keras is already imported, which
    :func:`keras` then checks).
    """
    if "keras" in sys.modules:
        return None
    setting = configured_backend()
    if setting is None:
        return None
    os.environ["KERAS_BACKEND"] = TENSORFLOW
    return f"{setting.describe()} ignored; gradscope runs Keras on TensorFlow"


def _loaded_backend() -> str | None:
    """The backend of the Keras already imported in this process, if there is one."""
    module = sys.modules.get("keras")
    try:
        return str(module.config.backend()) if module is not None else None
    except AttributeError:  # Keras 2, or a Keras still being imported
        return None


def check_backend() -> None:
    """Raise a one-line :class:`UsageError` unless Keras runs (or will run) on TensorFlow."""
    loaded = _loaded_backend()
    if loaded is not None:
        if loaded != TENSORFLOW:
            raise UsageError(
                f"Keras was already imported with the {loaded!r} backend in this process, "
                f"but gradscope runs Keras on TensorFlow: {_FIX}, in a new process (a "
                f".keras file loads on any backend). Received: keras.config.backend()={loaded!r}"
            )
        return
    setting = configured_backend()
    if setting is not None:
        raise UsageError(
            f"{setting.describe()} selects the {setting.backend!r} backend of Keras, but "
            f"gradscope runs Keras on TensorFlow: {_FIX} (a .keras file loads on any backend)."
        )


# -- importing -------------------------------------------------------------------------


def _import_quietly() -> None:
    check_backend()  # before the import: never load Keras on another backend
    _quiet_environment()
    with _import_warnings_hidden(), _fd2_captured():
        import keras as keras_module
        import tensorflow as tf_module
    tf_module.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    check_backend()
    _modules["tensorflow"] = tf_module
    _modules["keras"] = keras_module


def tensorflow() -> ModuleType:
    """The ``tensorflow`` module, imported on first use without start-up noise."""
    if "tensorflow" not in _modules:
        _import_quietly()
    return _modules["tensorflow"]


def keras() -> ModuleType:
    """The ``keras`` (Keras 3) module, imported on first use without start-up noise."""
    if "keras" not in _modules:
        _import_quietly()
    return _modules["keras"]
