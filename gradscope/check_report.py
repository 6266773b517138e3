"""Deprecated: the ``check`` report moved to :mod:`gradscope.commands.check.report`.

Importing a name from here still works, with a :class:`DeprecationWarning`; import it
from ``gradscope.commands.check.report`` (or ``gradscope.commands.check``) instead.
"""

from __future__ import annotations

from ._deprecated import forwarder

__getattr__ = forwarder(__name__, ("gradscope.commands.check.report",))
