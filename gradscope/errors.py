"""User-facing errors.

Every failure gradscope expects (a bad file, a batch that does not fit the model, an
unknown loss) is raised as a :class:`GradscopeError` subclass.  Each class carries the
process exit code the CLI uses for it, so scripts can tell failures apart, and a message
written for the user: it names the file or key, says what was expected and what was
found.  The CLI prints that message as one line; ``--debug`` adds the traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (see the README's "Exit codes" table)."""

    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    MODEL = 3
    DATA = 4
    MISMATCH = 5
    LOSS = 6
    RESOURCE = 7
    OUTPUT = 8
    INTERNAL = 70
    INTERRUPTED = 130
    BROKEN_PIPE = 141


class GradscopeError(Exception):
    """Base class of every error gradscope reports to the user as one line."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(GradscopeError):
    """An option has a value gradscope cannot use (bad glob, bad format, ...)."""

    exit_code = ExitCode.USAGE


class ModelLoadError(GradscopeError):
    """The model file is missing, unreadable, corrupt or unsafe to load."""

    exit_code = ExitCode.MODEL


class DataLoadError(GradscopeError):
    """The data file is missing, unreadable, corrupt, or holds unusable arrays."""

    exit_code = ExitCode.DATA


class MismatchError(GradscopeError):
    """The batch does not fit the model: names, shapes, dtypes or batch sizes."""

    exit_code = ExitCode.MISMATCH


class LossError(GradscopeError):
    """The loss is unknown, or cannot be computed on this model's outputs."""

    exit_code = ExitCode.LOSS


class ResourceError(GradscopeError):
    """The computation would not fit the available memory or limits."""

    exit_code = ExitCode.RESOURCE


class OutputError(GradscopeError):
    """An output file (``--save``) cannot be written."""

    exit_code = ExitCode.OUTPUT


def received(value: object) -> str:
    """Format the tail of an error message the Keras way: ``Received: ...``."""
    return f"Received: {value}"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name if the message is empty).

    Library exceptions can carry pages of context; a user-facing error keeps one line.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
