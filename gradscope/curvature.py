"""Deprecated: the ``hessian`` command lives in :mod:`gradscope.commands.hessian`.

:class:`HessianOptions` is in :mod:`gradscope.commands.hessian.options`, everything else
(:func:`hessian`, :func:`hessian_file`, block selection, exact and Lanczos blocks) in
:mod:`gradscope.commands.hessian.run`; ``gradscope.hessian``, ``gradscope.hessian_file``
and ``gradscope.HessianOptions`` are the public names.  Any name read from this module
still works, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

from gradscope._deprecated import forwarder

__getattr__ = forwarder(
    __name__,
    (
        "gradscope.commands.hessian.run",
        "gradscope.commands.hessian.options",
        "gradscope.commands.hessian.report",
    ),
)
