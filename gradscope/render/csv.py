"""CSV primitives shared by every command's CSV renderer.

Non-finite values are kept (``nan``, ``inf``, ``-inf``, which ``float()`` and pandas
parse back); an empty cell always means "not applicable/missing".  Floats are written
with ``repr`` (shortest round-trip), so no precision is lost.  ``inspect``'s CSV lives
in :mod:`gradscope.commands.inspect.render`; its old names here still resolve, with a
``DeprecationWarning``.
"""

from __future__ import annotations

from gradscope._deprecated import forwarder

__all__ = ["Row", "format_float"]

Row = dict[str, str]
"""One CSV row: column name to cell text."""


def format_float(value: float | None) -> str:
    """A float cell: ``repr`` precision, ``nan``/``inf``/``-inf`` kept, ``None`` empty.

    ``float()`` first so numpy scalars print as plain numbers (numpy 2's ``repr`` of a
    ``float64`` is ``np.float64(...)``).
    """
    return "" if value is None else repr(float(value))


__getattr__ = forwarder(
    "gradscope.render.csv",
    ("gradscope.commands.inspect.render",),
    renames={"format_report": "format_csv", "COLUMNS": "CSV_COLUMNS"},
)
