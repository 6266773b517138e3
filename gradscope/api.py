"""Deprecated: moved to :mod:`gradscope.session` (loading, loss, batches) and
:mod:`gradscope.commands.inspect` (``inspect``, ``inspect_file``, ``InspectOptions``).

Use ``gradscope.inspect`` / ``gradscope.inspect_file`` / ``gradscope.InspectOptions``.
Old names still resolve here, with a ``DeprecationWarning``.
"""

from __future__ import annotations

from ._deprecated import forwarder

__getattr__ = forwarder(
    "gradscope.api",
    ("gradscope.commands.inspect.run", "gradscope.commands.inspect.options", "gradscope.session"),
)
