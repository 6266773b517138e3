"""``gradscope check``: the autodiff gradient against central finite differences.

* :mod:`.options`: :class:`CheckOptions`, validated, and every default of the command;
* :mod:`.run`: :func:`check` / :func:`check_file`, the check itself;
* :mod:`.float64`: the float64 copy of the model and the float32 fallback;
* :mod:`.finite_differences`: difference quotients and the kink rule (numpy only);
* :mod:`.report`: :class:`CheckReport` (schema ``gradscope.check/1``);
* :mod:`.render`: its table, JSON and CSV.

The options and the report are imported with the package (neither needs TensorFlow);
:func:`check` and :func:`check_file` on first use, so ``gradscope check --help`` and
``gradscope.render`` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import DEFAULT_SAMPLES, DEFAULT_TOL, CheckOptions
from .report import CHECK_SCHEMA, CheckedCoordinate, CheckPrecision, CheckReport, CheckRow

if TYPE_CHECKING:
    from .run import check, check_file

__all__ = [
    "CHECK_SCHEMA",
    "DEFAULT_SAMPLES",
    "DEFAULT_TOL",
    "CheckOptions",
    "CheckPrecision",
    "CheckReport",
    "CheckRow",
    "CheckedCoordinate",
    "check",
    "check_file",
]

_LAZY = {"check": "run", "check_file": "run"}


def __getattr__(name: str) -> Any:
    """Import :mod:`.run` (and with it TensorFlow's wrappers) on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
