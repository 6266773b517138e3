"""gradscope: gradients of every weight, input and layer output of a Keras model.

The public API, one function pair per command, each taking a validated options object
or the same options as keywords and returning a plain-data report:

* :func:`inspect` / :func:`inspect_file` -> :class:`Report` (:class:`InspectOptions`);
* :func:`hessian` / :func:`hessian_file` -> :class:`HessianReport` (:class:`HessianOptions`);
* :func:`landscape` / :func:`landscape_file` -> :class:`LandscapeReport`
  (:class:`LandscapeOptions`);
* :func:`check` / :func:`check_file` -> :class:`CheckReport` (:class:`CheckOptions`);
* :func:`diff_files` / :func:`diff_reports` -> :class:`DiffReport`;
* :func:`dashboard` -> :class:`DashboardReport` (:class:`DashboardOptions`): the JSON
  Lines of a monitored run as series over training steps;
* :class:`GradientMonitor`, the ``fit`` callback (:mod:`gradscope.keras`).

The report field types, :class:`Thresholds`, :class:`Health` and :class:`Finding` are
exported too.  TensorFlow is imported on first use, not when this package is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .commands.check import (
    CheckedCoordinate,
    CheckOptions,
    CheckPrecision,
    CheckReport,
    CheckRow,
)
from .commands.dashboard import DashboardOptions, DashboardReport, dashboard
from .commands.diff import (
    ActivationDiff,
    Change,
    CheckResult,
    Checks,
    DiffReport,
    LossChange,
    NonfiniteChange,
    Presence,
    ReportSide,
    TopChange,
    VariableDiff,
    diff_files,
    diff_reports,
)
from .commands.hessian import CrossBlock, Density, HessianBlock, HessianOptions, HessianReport
from .commands.inspect import InspectOptions
from .commands.inspect.report import (
    ActivationRow,
    BatchesReport,
    GradientTensors,
    InputRow,
    NormSpread,
    PerSampleReport,
    PerSampleRow,
    Report,
    VariableRow,
    VariableSpread,
)
from .commands.landscape import LandscapeOptions, LandscapeReport
from .health import Finding, Health, Thresholds
from .report import BatchInfo, LossInfo, ModelInfo, TensorStats, ValueStats

__version__ = "0.1.0"

__all__ = [
    "ActivationDiff",
    "ActivationRow",
    "BatchInfo",
    "BatchesReport",
    "Change",
    "CheckOptions",
    "CheckPrecision",
    "CheckReport",
    "CheckResult",
    "CheckRow",
    "CheckedCoordinate",
    "Checks",
    "CrossBlock",
    "DashboardOptions",
    "DashboardReport",
    "Density",
    "DiffReport",
    "Finding",
    "GradientMonitor",
    "GradientTensors",
    "Health",
    "HessianBlock",
    "HessianOptions",
    "HessianReport",
    "InputRow",
    "InspectOptions",
    "LandscapeOptions",
    "LandscapeReport",
    "LossChange",
    "LossInfo",
    "ModelInfo",
    "NonfiniteChange",
    "NormSpread",
    "PerSampleReport",
    "PerSampleRow",
    "Presence",
    "Report",
    "ReportSide",
    "TensorStats",
    "Thresholds",
    "TopChange",
    "ValueStats",
    "VariableDiff",
    "VariableRow",
    "VariableSpread",
    "__version__",
    "check",
    "check_file",
    "dashboard",
    "diff_files",
    "diff_reports",
    "hessian",
    "hessian_file",
    "inspect",
    "inspect_file",
    "landscape",
    "landscape_file",
]

if TYPE_CHECKING:
    from .commands.check.run import check, check_file
    from .commands.hessian.run import hessian, hessian_file
    from .commands.inspect.run import inspect, inspect_file
    from .commands.landscape.run import landscape, landscape_file
    from .keras import GradientMonitor

_LAZY = {
    "inspect": "commands.inspect.run",
    "inspect_file": "commands.inspect.run",
    "hessian": "commands.hessian.run",
    "hessian_file": "commands.hessian.run",
    "check": "commands.check.run",
    "check_file": "commands.check.run",
    "landscape": "commands.landscape.run",
    "landscape_file": "commands.landscape.run",
    "GradientMonitor": "keras",
}
"""The entry points, imported on first use (``GradientMonitor`` imports TensorFlow)."""


def __getattr__(name: str) -> Any:
    """Import the API lazily, so ``import gradscope`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
