"""An stdout that cannot be written: one line and exit 8, or, for a reader that went
away (``| head``), a quiet exit 141; never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradscope.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent
INSPECT = ["inspect", str(REPO / "sample_models" / "mlp.keras"), "-f", "json"]


def _run(args: list[str], stdout: int, cache: Path) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XDG_CACHE_HOME": str(cache),
        "GRADSCOPE_HELP_CACHE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "gradscope", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def _closed_pipe(args: list[str], cache: Path) -> subprocess.CompletedProcess[bytes]:
    """``args`` with stdout a pipe whose reader is already closed."""
    read, write = os.pipe()
    os.close(read)
    try:
        return _run(args, write, cache)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [INSPECT, ["--help"]], ids=["inspect", "cached help"])
def test_a_closed_pipe_ends_quietly(args: list[str], tmp_path: Path) -> None:
    if args == ["--help"]:
        assert _run(args, subprocess.DEVNULL, tmp_path).returncode == 0  # fills the cache
    result = _closed_pipe(args, tmp_path)
    assert result.returncode == ExitCode.BROKEN_PIPE
    assert result.stderr == b""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [INSPECT, ["--help"]], ids=["inspect", "help"])
def test_a_full_device_is_one_line_and_exit_8(args: list[str], tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        result = _run(args, full.fileno(), tmp_path)
    assert result.returncode == ExitCode.OUTPUT
    lines = result.stderr.decode().splitlines()
    assert lines == ["gradscope: error: standard output: cannot write (No space left on device)."]
