"""gradscope: gradients of every weight, input and layer output of a Keras model.

The public API is :func:`inspect` (an in-memory model and arrays) and
:func:`inspect_file` (a saved model and a batch file); both return a plain-data
:class:`Report`.  TensorFlow is imported on first use, not when this package is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .report import (
    ActivationRow,
    BatchInfo,
    GradientTensors,
    InputRow,
    LossInfo,
    ModelInfo,
    Report,
    TensorStats,
    ValueStats,
    VariableRow,
)

__version__ = "0.1.0"

__all__ = [
    "ActivationRow",
    "BatchInfo",
    "GradientTensors",
    "InputRow",
    "LossInfo",
    "ModelInfo",
    "Report",
    "TensorStats",
    "ValueStats",
    "VariableRow",
    "__version__",
    "inspect",
    "inspect_file",
]

if TYPE_CHECKING:
    from .api import inspect, inspect_file


def __getattr__(name: str) -> Any:
    """Import the API lazily, so ``import gradscope`` stays light."""
    if name in ("inspect", "inspect_file"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
