"""Deprecated: ``gradscope check`` moved to :mod:`gradscope.commands.check`.

The code lives in ``gradscope/commands/check/`` now: ``run.py`` (:func:`check`,
:func:`check_file`), ``options.py`` (:class:`CheckOptions`, the defaults), ``float64.py``
(the float64 copy) and ``finite_differences.py``.  Importing a name from here still works,
with a :class:`DeprecationWarning`; import it from the new module instead.
"""

from __future__ import annotations

from ._deprecated import forwarder

__getattr__ = forwarder(
    __name__,
    (
        "gradscope.commands.check.run",
        "gradscope.commands.check.options",
        "gradscope.commands.check.float64",
        "gradscope.commands.check.finite_differences",
    ),
)
