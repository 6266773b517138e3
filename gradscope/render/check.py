"""Deprecated: the ``check`` renderers moved to :mod:`gradscope.commands.check.render`.

Importing a name from here still works, with a :class:`DeprecationWarning`; import it
from ``gradscope.commands.check.render`` instead.
"""

from __future__ import annotations

from gradscope._deprecated import forwarder

__getattr__ = forwarder(__name__, ("gradscope.commands.check.render",))
