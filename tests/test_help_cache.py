"""``gradscope --help`` from the help cache (:mod:`gradscope._entry`).

Each test runs ``python -m gradscope`` in a fresh process with its own cache folder
(``XDG_CACHE_HOME``), so that the first run renders the help through typer and later
runs may read it back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _help(cache: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XDG_CACHE_HOME": str(cache),
        "GRADSCOPE_HELP_CACHE": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, *args, "-m", "gradscope", "--help"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=120,
    )


def _cached_files(cache: Path) -> list[Path]:
    return sorted((cache / "gradscope").glob("help-*.txt"))


def test_cached_help_is_the_rendered_help(tmp_path: Path) -> None:
    first = _help(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Usage:" in first.stdout
    assert "inspect" in first.stdout
    assert len(_cached_files(tmp_path)) == 1
    second = _help(tmp_path)
    uncached = _help(tmp_path, GRADSCOPE_HELP_CACHE="0")
    assert second.returncode == 0
    assert second.stdout == first.stdout
    assert uncached.stdout == first.stdout


def test_the_cache_answers_only_under_its_key(tmp_path: Path) -> None:
    """A planted text is printed under the key it was stored with, and not when the
    terminal width the help depends on changes."""
    assert _help(tmp_path, COLUMNS="80").returncode == 0
    (stored,) = _cached_files(tmp_path)
    stored.write_text("planted help\n", encoding="utf-8")
    assert _help(tmp_path, COLUMNS="80").stdout == "planted help\n"
    other = _help(tmp_path, COLUMNS="57")
    assert other.returncode == 0
    assert "Usage:" in other.stdout
    assert "planted" not in other.stdout


def test_cached_help_imports_neither_typer_nor_rich(tmp_path: Path) -> None:
    assert _help(tmp_path).returncode == 0
    cached = _help(tmp_path, "-X", "importtime")
    assert cached.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in cached.stderr.splitlines()}
    assert not {name for name in imported if name.split(".")[0] in ("typer", "rich", "click")}


def test_an_unwritable_cache_folder_is_ignored(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("", encoding="utf-8")
    for _ in range(2):
        result = _help(blocker)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout
        assert result.stderr == ""


@pytest.mark.parametrize("args", [["inspect", "--help"], ["--version"]])
def test_other_command_lines_go_through_typer(tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gradscope", *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "XDG_CACHE_HOME": str(tmp_path),
            "GRADSCOPE_HELP_CACHE": "1",
        },
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert _cached_files(tmp_path) == []
