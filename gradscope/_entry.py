"""The ``gradscope`` entry point: ``gradscope --help`` from a cache, the rest through typer.

Importing typer and rich and building the command tree takes longer than everything
else ``gradscope --help`` does (about 200 ms against 20 ms on a 2-core machine).  The
top-level help is the same text every time for the same code and the same terminal, so
its first rendering is kept in the user's cache folder and printed as is the next time,
without importing typer.  The cache key covers everything the text depends on: the
Python version, the program's path (the help names it), every ``.py`` file of the
package and of typer, click and rich (path, size and modification time), whether the
output is a terminal, its size, and the environment variables that change how rich
renders.  Any change renders anew.

``GRADSCOPE_HELP_CACHE=0`` turns the cache off; a cache folder that cannot be written is
ignored (the help is then rendered every time, as without a cache).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from importlib.util import find_spec
from pathlib import Path

HELP_ARGS = (["--help"], ["-h"])
"""Command lines answered from the cache: the top-level help only."""

RENDERING_ENV = (
    "COLUMNS",
    "LINES",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    "FORCE_COLOR",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "TYPER_USE_RICH",
    "_TYPER_FORCE_DISABLE_TERMINAL",
    "_TYPER_STANDARD_TRACEBACK",
    "JUPYTER_COLUMNS",
    "JUPYTER_LINES",
)
"""Environment variables that change what rich prints."""


def _source_stamp(folder: Path, digest: hashlib._Hash) -> None:
    """Add the path, size and modification time of every ``.py`` file under ``folder``."""
    for path in sorted(folder.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())


def _terminal() -> str:
    """Whether stdout is a terminal, and its size when it is."""
    try:
        if not sys.stdout.isatty():
            return "pipe"
        size = os.get_terminal_size(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return "unknown"
    return f"tty:{size.columns}x{size.lines}"


def help_cache_key() -> str:
    """The key of the top-level help text under the current code, terminal and
    environment (see the module docstring)."""
    digest = hashlib.sha256(f"{sys.version}\n{sys.argv[0]}\n".encode())
    _source_stamp(Path(__file__).resolve().parent, digest)
    for module in ("typer", "click", "rich"):
        spec = find_spec(module)
        if spec is None or spec.origin is None:
            digest.update(f"{module}:missing\n".encode())
            continue
        _source_stamp(Path(spec.origin).parent, digest)
    digest.update(_terminal().encode())
    for name in RENDERING_ENV:
        digest.update(f"{name}={os.environ.get(name)}\n".encode())
    return digest.hexdigest()[:32]


def help_cache_folder() -> Path:
    """``$XDG_CACHE_HOME/gradscope``, else ``~/.cache/gradscope``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gradscope"


class _Recorder(io.TextIOBase):
    """A stdout that also keeps what is written to it; asked whether it is a terminal,
    or for its descriptor, it answers as the stream it wraps (so rich renders the
    same)."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str | bytes) -> int:  # type: ignore[override]
        if isinstance(text, bytes):  # click may write encoded text
            text = text.decode(self.encoding, errors="replace")
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.stream, "encoding", "utf-8"))


def _store(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; a folder that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        return


def _cache_enabled() -> bool:
    return os.environ.get("GRADSCOPE_HELP_CACHE", "1") != "0"


def _silence_stdout() -> None:
    """Point stdout at the null device, so that flushing it at exit cannot fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main() -> None:
    """Console-script entry point: :func:`run`, with an stdout that cannot be written
    (a full disk, a closed pipe) reported in one line instead of a traceback."""
    from .errors import ExitCode

    try:
        run()
    except BrokenPipeError:  # the reader went away: end quietly, as after SIGPIPE
        _silence_stdout()
        raise SystemExit(int(ExitCode.BROKEN_PIPE)) from None
    except OSError as exc:
        _silence_stdout()
        reason = exc.strerror or str(exc)
        sys.stderr.write(f"gradscope: error: standard output: cannot write ({reason}).\n")
        raise SystemExit(int(ExitCode.OUTPUT)) from None


def run() -> None:
    """The cached top-level help, or the typer application."""
    cached: Path | None = None
    if sys.argv[1:] in HELP_ARGS and _cache_enabled():
        cached = help_cache_folder() / f"help-{help_cache_key()}.txt"
        try:
            text = cached.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            pass
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
    from .cli import main as typer_main

    if cached is None:
        typer_main()
        return
    recorder = _Recorder(sys.stdout)  # type: ignore[arg-type]
    sys.stdout = recorder
    try:
        typer_main()
    except SystemExit as exc:
        if exc.code in (0, None):
            _store(cached, "".join(recorder.parts))
        raise
    finally:
        sys.stdout = recorder.stream  # type: ignore[assignment]
