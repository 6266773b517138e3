"""Reading a report's JSON structure back into its dataclasses, with one-line errors.

The ``from_dict`` of every report reads through :class:`Fields`: one JSON object, whose
values are fetched by key and checked on the way.  A missing key or a value of the wrong
type raises :class:`~gradscope.errors.DataLoadError` (exit code 4) naming the source (a
file), the key path (``variables[2].grad.l2``), what was expected and what was found::

    run.json: variables[2].grad.l2: expected a non-negative number or null. Received: 'big'

Non-finite floats are written as ``null`` (see :func:`~gradscope.report.finite_or_none`),
so a ``null`` where the dataclass holds a plain ``float`` reads back as NaN; ``NaN`` and
``Infinity`` literals are not JSON and are refused.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from .errors import DataLoadError, received

__all__ = ["ABSENT", "Fields", "Found"]

ABSENT: Any = object()
"""Marks a key that is not there at all (as opposed to ``null``); shown as ``missing``."""


@dataclass(frozen=True)
class Found:
    """What was found, already in words (``a JSON list``), for an error message."""

    text: str


def _shown(value: Any) -> str:
    """``repr`` of a found value, cut to one short line for an error message."""
    if isinstance(value, Found):
        return value.text
    text = "missing" if value is ABSENT else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Fields:
    """One JSON object of a report being read: ``source`` names the file (or ``report``)
    and ``path`` where the object sits in the document (``variables[2].grad``)."""

    def __init__(self, data: Mapping[str, Any], source: str, path: str = "") -> None:
        self.data = data
        self.source = source
        self.path = path

    # -- errors and structure ---------------------------------------------------------

    def fail(self, key: str | None, expected: str, found: Any) -> NoReturn:
        """Raise the one-line error about ``key`` (the object itself when ``None``);
        ``found`` is a value (shown by ``repr``) or a :class:`Found` description."""
        where = self._where(key)
        location = f"{self.source}: {where}" if where else self.source
        raise DataLoadError(f"{location}: expected {expected}. {received(_shown(found))}")

    def _where(self, key: str | None) -> str:
        if key is None:
            return self.path
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Any:
        """The raw value of ``key``, or :data:`ABSENT`."""
        return self.data.get(key, ABSENT)

    def has(self, key: str) -> bool:
        """Whether ``key`` is there with a non-null value (keys written only when set)."""
        return self.get(key) not in (ABSENT, None)

    def object(self, key: str) -> Fields:
        value = self.get(key)
        if not isinstance(value, dict):
            self.fail(key, "an object", value)
        return Fields(value, self.source, self._where(key))

    def optional_object(self, key: str, expected: str = "an object or null") -> Fields | None:
        """An object, or ``None`` when the key is ``null`` or absent."""
        value = self.get(key)
        if value is ABSENT or value is None:
            return None
        if not isinstance(value, dict):
            self.fail(key, expected, value)
        return Fields(value, self.source, self._where(key))

    def objects(self, key: str) -> list[Fields]:
        """A list of objects, each read with its index in the path (``variables[2]``)."""
        value = self.get(key)
        if not isinstance(value, list):
            self.fail(key, "a list", value)
        out = []
        for i, item in enumerate(value):
            where = f"{self._where(key)}[{i}]"
            if not isinstance(item, dict):
                Fields({}, self.source, where).fail(None, "an object", item)
            out.append(Fields(item, self.source, where))
        return out

    # -- scalars -----------------------------------------------------------------------

    def text(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str):
            self.fail(key, "a string", value)
        return value

    def optional_text(self, key: str) -> str | None:
        """A string, or ``None`` when the key is ``null`` or absent."""
        value = self.get(key)
        if value is ABSENT or value is None:
            return None
        if not isinstance(value, str):
            self.fail(key, "a string or null", value)
        return value

    def choice(self, key: str, options: Collection[str]) -> str:
        value = self.get(key)
        if value not in options:
            self.fail(key, f"one of {', '.join(map(repr, options))}", value)
        return str(value)

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return value

    def count(self, key: str) -> int:
        """A non-negative integer."""
        value = self.get(key)
        if not _is_int(value) or value < 0:
            self.fail(key, "a non-negative integer", value)
        return int(value)

    def optional_int(self, key: str) -> int | None:
        """An integer, or ``None`` when the key is ``null`` or absent."""
        value = self.get(key)
        if value is ABSENT or value is None:
            return None
        if not _is_int(value):
            self.fail(key, "an integer or null", value)
        return int(value)

    def optional_number(self, key: str, *, norm: bool = False) -> float | None:
        """A finite number, or ``None`` when the key is ``null`` or absent; a ``norm``
        must also be non-negative."""
        value = self.get(key)
        if value is ABSENT or value is None:
            return None
        if not _is_number(value) or not math.isfinite(value) or (norm and value < 0):
            what = "a non-negative number or null" if norm else "a number or null"
            self.fail(key, what, value)
        return float(value)

    def number(self, key: str, *, norm: bool = False) -> float:
        """A number that must be there: ``null`` (how non-finite values are written)
        reads as NaN."""
        if self.get(key) is ABSENT:
            self.fail(key, "a non-negative number or null" if norm else "a number or null", ABSENT)
        value = self.optional_number(key, norm=norm)
        return math.nan if value is None else value

    # -- sequences ---------------------------------------------------------------------

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, "a list of strings", value)
        return tuple(value)

    def shape(self, key: str = "shape") -> tuple[int, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not all(_is_int(d) for d in value):
            self.fail(key, "a list of integers", value)
        return tuple(int(d) for d in value)

    def numbers(self, key: str) -> tuple[float, ...]:
        """A list of numbers, ``null`` entries (non-finite values) read as NaN."""
        value = self.get(key)
        if not isinstance(value, list) or not all(v is None or _is_number(v) for v in value):
            self.fail(key, "a list of numbers or nulls", value)
        return tuple(math.nan if v is None else float(v) for v in value)
