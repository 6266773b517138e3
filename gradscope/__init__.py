"""gradscope: gradients of every weight, input and layer output of a Keras model.

The public API is :func:`inspect` (an in-memory model and arrays) and
:func:`inspect_file` (a saved model and a batch file), returning a plain-data
:class:`Report`, and :func:`hessian` / :func:`hessian_file`, returning a
:class:`HessianReport`.  TensorFlow is imported on first use, not when this package is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .report import (
    ActivationRow,
    BatchInfo,
    CrossBlock,
    GradientTensors,
    HessianBlock,
    HessianReport,
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
    "CrossBlock",
    "GradientTensors",
    "HessianBlock",
    "HessianOptions",
    "HessianReport",
    "InputRow",
    "LossInfo",
    "ModelInfo",
    "Report",
    "TensorStats",
    "ValueStats",
    "VariableRow",
    "__version__",
    "hessian",
    "hessian_file",
    "inspect",
    "inspect_file",
]

if TYPE_CHECKING:
    from .api import inspect, inspect_file
    from .curvature import HessianOptions, hessian, hessian_file


def __getattr__(name: str) -> Any:
    """Import the API lazily, so ``import gradscope`` stays light."""
    if name in ("inspect", "inspect_file"):
        from . import api

        return getattr(api, name)
    if name in ("hessian", "hessian_file", "HessianOptions"):
        from . import curvature

        return getattr(curvature, name)
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
