"""Atomic file output: write to a temporary file beside the target, then rename.

A reader never sees a half-written file, and an interrupted or failed run leaves no
file behind: the temporary file is removed on any exception (Ctrl-C included).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


def check_writable(
    path: Path, suffixes: tuple[str, ...], option: str, *, force: bool = False
) -> None:
    """Fail early, before any computation, when ``path`` cannot be written, or exists
    and ``force`` is not given (an existing file is never overwritten by surprise)."""
    if path.suffix.lower() not in suffixes:
        raise OutputError(
            f"{option} {path}: expected a file name ending in {' or '.join(suffixes)}. "
            f"Received: {path.suffix or '(no extension)'!r}"
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{option} {path}: the folder {parent} does not exist.")
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a directory; expected a file name.")
    if path.exists() and not force:
        raise OutputError(
            f"{option} {path}: the file exists; expected a new file name. "
            "Pass --force to overwrite it."
        )
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{option} {path}: the folder {parent} is not writable.")


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` on success."""
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or "."
    )
    os.close(handle)
    temp_path = Path(temporary)
    # mkstemp makes the file private (0600); the result should have the mode any new
    # file gets here (0666 less the umask), as if it had been opened directly.
    os.chmod(temp_path, 0o666 & ~_umask())
    try:
        yield temp_path
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp_path.unlink()
        raise
