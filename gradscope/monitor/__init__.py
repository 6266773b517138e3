"""The training cockpit: instruments that :class:`~gradscope.keras.GradientMonitor`
records during ``model.fit`` (:mod:`.instruments`, which imports TensorFlow) and their
results as plain data (:mod:`.results`, which does not)."""

from .results import INSTRUMENTS, PRESETS, Instruments, resolve_instruments

MONITOR_SCHEMA = "gradscope.monitor/1"
"""The ``schema`` of every line of the monitor's JSON Lines (``docs/monitor_schema.md``)."""

__all__ = ["INSTRUMENTS", "MONITOR_SCHEMA", "PRESETS", "Instruments", "resolve_instruments"]
