"""The ``dashboard`` command: the JSON Lines of ``GradientMonitor`` as series over steps.

* :mod:`.reader`: :func:`read_run` and the record types (schema ``gradscope.monitor/1``,
  ``docs/monitor_schema.md``), each with ``from_dict``/``to_dict``;
* :mod:`.summary`: the series (loss, gradient norms, update ratios, sharpness, batch
  tests...), per-layer series, health events and the top movers;
* :mod:`.options`: :class:`DashboardOptions`; :mod:`.run`: :func:`dashboard`;
* :mod:`.report`: :class:`DashboardReport` (schema ``gradscope.dashboard/1``);
* :mod:`.render`: the terminal summary (table), JSON and CSV.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

from .options import DEFAULT_TOP, DashboardOptions
from .reader import MONITOR_SCHEMA, MonitorRecord, MonitorRun, read_run
from .report import DASHBOARD_SCHEMA, DashboardReport, RunInfo
from .run import dashboard, dashboard_run
from .summary import HealthEvent, Series, top_movers

__all__ = [
    "DASHBOARD_SCHEMA",
    "DEFAULT_TOP",
    "MONITOR_SCHEMA",
    "DashboardOptions",
    "DashboardReport",
    "HealthEvent",
    "MonitorRecord",
    "MonitorRun",
    "RunInfo",
    "Series",
    "dashboard",
    "dashboard_run",
    "read_run",
    "top_movers",
]
