"""Validation of options objects, shared by every command.

Each command's options dataclass validates itself in ``__post_init__`` with these
helpers, so a Python user and the CLI see the same rules and the same Keras-style
messages (``Received: method='lanczoss'; expected one of auto, exact, lanczos``).  The
CLI declares no defaults or rules of its own: it builds the same options object and lets
it raise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import UsageError


def _expected(name: str, value: object, expected: str) -> UsageError:
    return UsageError(f"{name}: expected {expected}. Received: {name}={value!r}")


def one_of(name: str, value: object, choices: Iterable[str]) -> None:
    """Refuse ``value`` unless it is one of ``choices`` (compared as strings, exactly)."""
    allowed = tuple(choices)
    if not isinstance(value, str) or value not in allowed:
        raise UsageError(
            f"{name}: unknown value. Received: {name}={value!r}; "
            f"expected one of {', '.join(allowed)}"
        )


def integer(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> None:
    """Refuse anything but an ``int`` (not ``bool``) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expected(name, value, "an integer")
    if minimum is not None and value < minimum:
        raise _expected(name, value, f"an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise _expected(name, value, f"an integer <= {maximum}")


def optional_integer(name: str, value: object, *, minimum: int | None = None) -> None:
    """Like :func:`integer`, but ``None`` (meaning "the default") is allowed."""
    if value is not None:
        integer(name, value, minimum=minimum)


def positive_number(name: str, value: object) -> None:
    """Refuse anything but a finite real number greater than zero."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _expected(name, value, "a positive number")
    if not (0 < float(value) < float("inf")):
        raise _expected(name, value, "a positive number")


def fraction(name: str, value: object) -> None:
    """Refuse anything but a real number in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise _expected(name, value, "a number between 0 and 1")


def flag(name: str, value: object) -> None:
    """Refuse anything but ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise _expected(name, value, "True or False")


def optional_text(name: str, value: Any) -> None:
    """Refuse anything but ``None`` or a non-empty string."""
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise _expected(name, value, "a non-empty string or None")
