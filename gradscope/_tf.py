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
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from types import ModuleType

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


def _quiet_environment() -> None:
    """Ask TensorFlow and Keras to keep their logs to errors only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|tf_keras|h5py)(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _import_quietly() -> None:
    _quiet_environment()
    with _fd2_captured():
        import keras as keras_module
        import tensorflow as tf_module
    tf_module.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        raise ImportError(
            "gradscope needs the TensorFlow backend of Keras. "
            f"Received: KERAS_BACKEND={os.environ['KERAS_BACKEND']!r}"
        )
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
