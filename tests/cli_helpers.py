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


HEAVY_MODULES_SCRIPT = (
    "import sys\nfrom gradscope.cli import main\n"
    "sys.argv = ['gradscope', *sys.argv[1:]]\n"
    "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
    "heavy = [m for m in ('tensorflow', 'keras', 'h5py') if m in sys.modules]\n"
    "print('HEAVY=' + ','.join(heavy))\nsys.exit(code)\n"
)
"""Runs ``gradscope ARGS`` in a fresh interpreter, then prints which heavy modules
(TensorFlow, Keras, h5py) it imported, after a ``HEAVY=`` marker on stdout."""


def run_reporting_heavy_modules(args: list[str], repo: str) -> tuple[int, str, str, str]:
    """A real process ``gradscope ARGS`` (``repo`` on ``PYTHONPATH``): its exit code, its
    stdout before the marker, its stderr and the heavy modules it imported (``,``-joined)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": repo}
    command = [sys.executable, "-c", HEAVY_MODULES_SCRIPT, *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    out, _, heavy = proc.stdout.rpartition("HEAVY=")
    return proc.returncode, out, proc.stderr, heavy.strip()
