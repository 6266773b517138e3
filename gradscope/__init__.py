"""gradscope: gradients of every weight, input and layer output of a Keras model.

The public API, one function pair per command, each taking a validated options object
or the same options as keywords and returning a plain-data report:

* :func:`inspect` / :func:`inspect_file` -> :class:`Report` (:class:`InspectOptions`);
* :func:`hessian` / :func:`hessian_file` -> :class:`HessianReport` (:class:`HessianOptions`);
* :func:`landscape` / :func:`landscape_file` -> :class:`LandscapeReport`
  (:class:`LandscapeOptions`);
* :func:`attribute` / :func:`attribute_file` -> :class:`AttributeReport`
  (:class:`AttributeOptions`): input attributions (saliency, SmoothGrad, Integrated
  Gradients, Grad-CAM);
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

__version__ = "0.1.0"

__all__ = [
    "ActivationDiff",
    "ActivationRow",
    "AttributeOptions",
    "AttributeReport",
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
    "attribute",
    "attribute_file",
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
    from .commands.attribute import AttributeOptions, AttributeReport
    from .commands.attribute.run import attribute, attribute_file
    from .commands.check import (
        CheckedCoordinate,
        CheckOptions,
        CheckPrecision,
        CheckReport,
        CheckRow,
    )
    from .commands.check.run import check, check_file
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
    from .commands.hessian.run import hessian, hessian_file
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
    from .commands.inspect.run import inspect, inspect_file
    from .commands.landscape import LandscapeOptions, LandscapeReport
    from .commands.landscape.run import landscape, landscape_file
    from .health import Finding, Health, Thresholds
    from .keras import GradientMonitor
    from .report import BatchInfo, LossInfo, ModelInfo, TensorStats, ValueStats

_TYPES = {
    "AttributeOptions": "commands.attribute",
    "AttributeReport": "commands.attribute",
    "CheckedCoordinate": "commands.check",
    "CheckOptions": "commands.check",
    "CheckPrecision": "commands.check",
    "CheckReport": "commands.check",
    "CheckRow": "commands.check",
    "DashboardOptions": "commands.dashboard",
    "DashboardReport": "commands.dashboard",
    "dashboard": "commands.dashboard",
    "ActivationDiff": "commands.diff",
    "Change": "commands.diff",
    "CheckResult": "commands.diff",
    "Checks": "commands.diff",
    "DiffReport": "commands.diff",
    "LossChange": "commands.diff",
    "NonfiniteChange": "commands.diff",
    "Presence": "commands.diff",
    "ReportSide": "commands.diff",
    "TopChange": "commands.diff",
    "VariableDiff": "commands.diff",
    "diff_files": "commands.diff",
    "diff_reports": "commands.diff",
    "CrossBlock": "commands.hessian",
    "Density": "commands.hessian",
    "HessianBlock": "commands.hessian",
    "HessianOptions": "commands.hessian",
    "HessianReport": "commands.hessian",
    "InspectOptions": "commands.inspect",
    "ActivationRow": "commands.inspect.report",
    "BatchesReport": "commands.inspect.report",
    "GradientTensors": "commands.inspect.report",
    "InputRow": "commands.inspect.report",
    "NormSpread": "commands.inspect.report",
    "PerSampleReport": "commands.inspect.report",
    "PerSampleRow": "commands.inspect.report",
    "Report": "commands.inspect.report",
    "VariableRow": "commands.inspect.report",
    "VariableSpread": "commands.inspect.report",
    "LandscapeOptions": "commands.landscape",
    "LandscapeReport": "commands.landscape",
    "Finding": "health",
    "Health": "health",
    "Thresholds": "health",
    "BatchInfo": "report",
    "LossInfo": "report",
    "ModelInfo": "report",
    "TensorStats": "report",
    "ValueStats": "report",
}
"""The options and report types, also imported on first use (numpy and the report
modules stay out of ``gradscope --help``)."""

_LAZY = {
    "inspect": "commands.inspect.run",
    "inspect_file": "commands.inspect.run",
    "hessian": "commands.hessian.run",
    "hessian_file": "commands.hessian.run",
    "check": "commands.check.run",
    "check_file": "commands.check.run",
    "landscape": "commands.landscape.run",
    "landscape_file": "commands.landscape.run",
    "attribute": "commands.attribute.run",
    "attribute_file": "commands.attribute.run",
    "GradientMonitor": "keras",
}
"""The entry points, imported on first use (``GradientMonitor`` imports TensorFlow)."""


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    """Import the API lazily, so ``import gradscope`` stays light."""
    module = _LAZY.get(name) or _TYPES.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
