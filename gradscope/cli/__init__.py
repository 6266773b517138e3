"""The ``gradscope`` command line: typer options -> library call -> renderer -> exit code.

:mod:`gradscope.cli.app` holds the application, its error handling and output streams;
:mod:`gradscope.cli.options` the option declarations every command shares; and one module
per command (``inspect``, ``hessian``, ``landscape``, ``attribute``, ``check``, ``diff``,
``dashboard``) its thin function, which builds the library's options object, calls the
library and renders the report.
Importing this package registers every command on :data:`app`.
"""

from __future__ import annotations

# Registration order is the order of ``gradscope --help``.
from . import inspect  # isort: skip
from . import hessian  # isort: skip
from . import landscape  # isort: skip
from . import attribute  # isort: skip
from . import check  # isort: skip
from . import diff  # isort: skip
from . import dashboard  # isort: skip
from .app import app, main, run_guarded  # isort: skip

__all__ = [
    "app",
    "attribute",
    "check",
    "dashboard",
    "diff",
    "hessian",
    "inspect",
    "landscape",
    "main",
    "run_guarded",
]
