"""JSON renderer: exactly the report's ``to_json``.

The structure is owned by each report's ``to_dict`` so that the JSON output and any
programmatic consumer of the report can never disagree; this module only frames it as a
text file (trailing newline).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["format_report"]


class JsonReport(Protocol):
    """Any report: it knows its own JSON."""

    def to_json(self) -> str: ...


def format_report(report: JsonReport) -> str:
    """The report as indented JSON text ending in a newline (NaN/inf become ``null``)."""
    return report.to_json() + "\n"
