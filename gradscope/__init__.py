"""gradscope: gradients of every weight, input and layer output of a Keras model.

The public API is :func:`inspect` (an in-memory model and arrays) and
:func:`inspect_file` (a saved model and a batch file), returning a plain-data
:class:`Report`; :func:`hessian` / :func:`hessian_file`, returning a
:class:`HessianReport`; :func:`check` / :func:`check_file` (finite-difference gradient
check), returning a :class:`CheckReport`; and :func:`diff_files`, comparing two saved
reports.  TensorFlow is imported on first use, not when this package is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .commands.hessian.report import CrossBlock, HessianBlock, HessianReport
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
    "CheckReport",
    "CrossBlock",
    "GradientTensors",
    "HessianBlock",
    "HessianOptions",
    "HessianReport",
    "InputRow",
    "InspectOptions",
    "LossInfo",
    "ModelInfo",
    "Report",
    "TensorStats",
    "ValueStats",
    "VariableRow",
    "__version__",
    "check",
    "check_file",
    "diff_files",
    "hessian",
    "hessian_file",
    "inspect",
    "inspect_file",
]

if TYPE_CHECKING:
    from .commands.check.report import CheckReport
    from .commands.check.run import check, check_file
    from .commands.diff import diff_files
    from .commands.hessian import HessianOptions, hessian, hessian_file
    from .commands.inspect import InspectOptions, inspect, inspect_file

_LAZY = {
    "inspect": "commands.inspect",
    "inspect_file": "commands.inspect",
    "InspectOptions": "commands.inspect",
    "hessian": "commands.hessian",
    "hessian_file": "commands.hessian",
    "HessianOptions": "commands.hessian",
    "check": "commands.check.run",
    "check_file": "commands.check.run",
    "CheckReport": "commands.check.report",
    "diff_files": "commands.diff",
}


def __getattr__(name: str) -> Any:
    """Import the API lazily, so ``import gradscope`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
