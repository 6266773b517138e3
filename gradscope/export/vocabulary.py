"""``--vocab FILE``: the token labels of the attribution pictures.

A vocabulary file is UTF-8 text with one token per line: line ``i`` (from 0) is the
token of id ``i``.  Lines keep their spaces (``" the"`` and ``"the"`` are different
tokens); only the line break (``\\n`` or ``\\r\\n``) is removed, and a final line break
does not add an empty token.  A byte-order mark at the start is dropped.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataLoadError, first_line

MAX_BYTES = 50 * 1024 * 1024
"""Larger files are refused: a vocabulary of a million tokens is a few megabytes."""

_EXPECTED = "expected a vocabulary file (UTF-8 text, one token per line)"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, or a one-line :class:`DataLoadError`."""
    if not path.exists():
        raise DataLoadError(f"{path}: no such file; {_EXPECTED}.")
    if path.is_dir():
        raise DataLoadError(f"{path}: is a directory; {_EXPECTED}.")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise DataLoadError(
                f"{path}: the file is too large for a vocabulary; {_EXPECTED}, at most "
                f"{MAX_BYTES:,} bytes. Received: {size:,} bytes"
            )
        return path.read_bytes()
    except OSError as exc:
        raise DataLoadError(
            f"{path}: cannot read the file; {_EXPECTED}. {first_line(exc)}"
        ) from None


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataLoadError(
            f"{path}: not UTF-8 text (line {line}); {_EXPECTED}. "
            f"Received: byte 0x{data[exc.start]:02x} at offset {exc.start}"
        ) from None


def read_vocabulary(path: str | Path) -> tuple[str, ...]:
    """The tokens of the vocabulary file ``path``, by id.

    Raises a one-line :class:`~gradscope.errors.DataLoadError` (exit code 4) for a
    missing, unreadable, empty, non-UTF-8 or over-large (:data:`MAX_BYTES`) file.
    """
    target = Path(path)
    text = _decode(target, _read_bytes(target))
    if not text:
        raise DataLoadError(f"{target}: the file is empty; {_EXPECTED}.")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return tuple(line.removesuffix("\r") for line in lines)


__all__ = ["MAX_BYTES", "read_vocabulary"]
