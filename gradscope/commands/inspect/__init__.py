"""The ``inspect`` command: every weight, input and layer-output gradient in one pass."""

from .options import InspectOptions
from .run import inspect, inspect_file, run_inspect

__all__ = ["InspectOptions", "inspect", "inspect_file", "run_inspect"]
