"""Running the CLI in-process in tests, and checking its one-line errors."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from gradscope.cli import app

ERROR_PREFIX = "gradscope: error: "


def invoke(*args: object) -> Any:
    """Run ``gradscope ARGS`` in-process; an uncaught exception fails the test."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}\nstderr: {result.stderr}")
    return result


def error_line(args: list[object], code: int) -> str:
    """Run a failing command; check exit code, empty stdout, one line; return its message."""
    result = invoke(*args)
    assert result.exit_code == code, f"exit {result.exit_code}; stderr: {result.stderr!r}"
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line: {result.stderr!r}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    return lines[0][len(ERROR_PREFIX) :]
