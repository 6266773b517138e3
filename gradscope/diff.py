"""Deprecated: ``gradscope diff`` lives in :mod:`gradscope.commands.diff` now.

The comparison (``diff_files``, ``diff_reports``, ``load_report``, ``parse_fail_on``) is
in :mod:`gradscope.commands.diff.compare` and the report types (``DiffReport``,
``Change``, ...) in :mod:`gradscope.commands.diff.report`.  Importing a name from here
still works, with a :class:`DeprecationWarning`.
"""

from gradscope._deprecated import forwarder

__getattr__ = forwarder(
    __name__,
    (
        "gradscope.commands.diff.report",
        "gradscope.commands.diff.compare",
    ),
)
