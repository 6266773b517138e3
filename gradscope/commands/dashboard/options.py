"""What ``dashboard`` shows: the one validated options object of the command.

:class:`DashboardOptions` validates its fields when built, with Keras-style messages, so
a Python user and the CLI meet the same rules; the CLI reads its defaults off the
dataclass.  This module imports neither TensorFlow nor the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from ... import validation

DEFAULT_TOP = 8
"""Layers shown per per-layer section (and plotted per panel) by default."""
MAX_TOP = 1000


@dataclass(frozen=True)
class DashboardOptions:
    """``top``: with more layers than this, the table and the plot show only the ``top``
    layers whose gradient norm (or update ratio) moved most, by ``|log10(last/first)|``,
    and say how many were left out.  The JSON always has every layer.
    """

    top: int = DEFAULT_TOP

    def __post_init__(self) -> None:
        """Refuse a bad field with one line that names it and what it received."""
        validation.integer("top", self.top, minimum=1, maximum=MAX_TOP)


__all__ = ["DEFAULT_TOP", "DashboardOptions"]
