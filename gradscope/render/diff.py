"""Deprecated: the renderers of a diff report live in :mod:`gradscope.commands.diff.render`.

Importing a name from here still works, with a :class:`DeprecationWarning`.
"""

from gradscope._deprecated import forwarder

__getattr__ = forwarder(__name__, ("gradscope.commands.diff.render",))
