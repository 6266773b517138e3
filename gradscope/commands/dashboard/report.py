"""The result of ``dashboard``: a run's series, per-layer series and health events.

:class:`DashboardReport` is plain data (schema ``gradscope.dashboard/1``); its JSON holds
every series, every layer, and the top movers the table and plot show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ...render import renders_with
from .summary import HealthEvent, Series, top_movers

DASHBOARD_SCHEMA = "gradscope.dashboard/1"


@dataclass(frozen=True)
class RunInfo:
    """What the file holds: records, steps, epochs and the instruments asked for."""

    file: str
    records: int
    first_step: int
    last_step: int
    epochs: int
    instruments: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "records": self.records,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "epochs": self.epochs,
            "instruments": list(self.instruments),
        }


@renders_with("gradscope.commands.dashboard.render")
@dataclass(frozen=True)
class DashboardReport:
    """A monitored run, as series over optimizer steps.

    ``series``: the run-wide series (logs, probe loss, global gradient norm, learning
    rate, instruments); ``grad_norms`` and ``update_ratios``: one series per layer, in
    model order; ``events``: the health findings; ``top``: how many layers the table and
    plot show per section; ``notes``: what was skipped while reading.
    """

    run: RunInfo
    series: tuple[Series, ...]
    grad_norms: tuple[Series, ...]
    update_ratios: tuple[Series, ...]
    events: tuple[HealthEvent, ...]
    top: int
    notes: tuple[str, ...] = ()
    schema: str = DASHBOARD_SCHEMA

    def get(self, key: str) -> Series | None:
        """The run-wide series ``key`` (``sharpness.lambda_max``), or ``None``."""
        return next((s for s in self.series if s.key == key), None)

    def top_grad_norms(self) -> tuple[Series, ...]:
        """The :attr:`top` layers whose gradient norm moved most."""
        return top_movers(self.grad_norms, self.top)

    def top_update_ratios(self) -> tuple[Series, ...]:
        """The :attr:`top` layers whose update ratio moved most."""
        return top_movers(self.update_ratios, self.top)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "run": self.run.to_dict(),
            "series": [s.to_dict() for s in self.series],
            "layers": {
                "grad_norm": [s.to_dict() for s in self.grad_norms],
                "update_ratio": [s.to_dict() for s in self.update_ratios],
            },
            "top_movers": {
                "top": self.top,
                "grad_norm": [s.key for s in self.top_grad_norms()],
                "update_ratio": [s.key for s in self.top_update_ratios()],
            },
            "events": [event.to_dict() for event in self.events],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (non-finite values are ``null``)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


__all__ = ["DASHBOARD_SCHEMA", "DashboardReport", "RunInfo"]
