"""Progress of long work (Hessian blocks and products, batches): a rich bar on stderr.

:class:`Progress` is the silent default the library uses; the CLI passes a rich bar on
stderr, off when stderr is not a terminal or with ``--quiet``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class Progress:
    """Where long work reports itself; the default does nothing.

    The CLI passes a rich progress bar on stderr.  ``block`` starts block ``index`` of
    ``count`` (``total`` is the expected number of Hessian-vector products, or ``None``),
    ``step`` follows every Hessian-vector product.
    """

    def block(self, index: int, count: int, name: str, total: int | None) -> None:
        """Block ``index`` of ``count`` starts."""

    def step(self, done: int = 1) -> None:
        """One more Hessian-vector product (or exact block) is done."""


class _RichProgress(Progress):
    """Drives one rich task per block; each step is one Hessian-vector product."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.task: Any = None

    def block(self, index: int, count: int, name: str, total: int | None) -> None:
        if self.task is not None:
            self.bar.update(self.task, visible=False)
        label = f"block {index + 1}/{count} {name}"
        self.task = self.bar.add_task(label, total=total)

    def step(self, done: int = 1) -> None:
        if self.task is not None:
            self.bar.advance(self.task, done)


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress]:
    """A progress reporter: a transient rich bar on stderr, or a silent one."""
    if not enabled:
        yield Progress()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichBar

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with RichBar(*columns, console=Console(stderr=True), transient=True) as bar:
        yield _RichProgress(bar)
