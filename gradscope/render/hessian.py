"""Deprecated: the hessian renderers live in :mod:`gradscope.commands.hessian.render`.

Any name read from this module still works, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

from gradscope._deprecated import forwarder

__getattr__ = forwarder(__name__, ("gradscope.commands.hessian.render",))
