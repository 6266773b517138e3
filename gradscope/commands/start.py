"""The start of the library entry points of ``hessian`` and ``landscape``.

Both commands run on ``inspect``'s session settings (:class:`InspectOptions`: loss, mode,
seed, rows, batching, memory budget) next to their own options, and both start the same
way: an in-memory model with its data argument (arrays, a pipeline or ``None``), or a
saved model and a data file loaded by :func:`gradscope.session.load_for_cli`.  This
module is that start, written once; each command then runs its own pipeline on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..loading.data import Batch, Batches
from ..loading.models import LoadOptions
from ..loading.pipelines import data_argument
from ..loading.signature import ModelSignature, model_signature
from ..loading.synthetic import DEFAULT_ROWS
from ..report import ModelInfo
from ..session import ArrayLike, load_for_cli, model_info_of
from .inspect.options import InspectOptions


@dataclass(frozen=True)
class Start:
    """What a command's pipeline starts from.

    ``data`` is ``None`` for a synthetic batch (made later, once the loss is known);
    ``settings`` are the session settings the pipeline reads; ``load`` is how a saved
    model was read (``None`` for an in-memory one), for the command to read another
    model the same way.
    """

    model: Any
    signature: ModelSignature
    data: Batch | Batches | None
    settings: InspectOptions
    info: ModelInfo
    load: LoadOptions | None = None


def start_in_memory(
    model: Any,
    x: ArrayLike,
    y: ArrayLike,
    sample_weight: ArrayLike,
    *,
    loss: str | None,
    training: bool,
    seed: int,
    rows: int,
    batch_size: int | None,
    max_batches: int | None,
    max_memory: int | None,
) -> Start:
    """An in-memory model and its data argument (see :func:`gradscope.hessian`): the
    data is checked (and a pipeline read) before the settings are built."""
    signature = model_signature(model)
    data = data_argument(
        signature, x, y, sample_weight,
        batch_size=batch_size, max_batches=max_batches, budget=max_memory,
    )  # fmt: skip
    settings = InspectOptions(
        loss, training, seed, rows, batch_size=batch_size, max_batches=max_batches,
        max_memory=max_memory,
    )  # fmt: skip
    return Start(model, signature, data, settings, model_info_of(model, None, "memory"))


def start_from_files(
    model_path: str | Path,
    data_path: str | Path | None,
    *,
    limit: int | None,
    loss: str | None,
    training: bool,
    seed: int,
    custom_objects: str | Path | None,
    unsafe: bool,
    batch_size: int | None,
    max_batches: int | None,
    max_memory: int | None,
    strategy: Any = None,
) -> Start:
    """A saved model and its data file (``None``: ``limit`` synthetic rows, default
    :data:`~gradscope.loading.synthetic.DEFAULT_ROWS`), loaded as
    :func:`gradscope.inspect_file` loads them (``strategy``: under its scope)."""
    load = LoadOptions.of(custom_objects, unsafe, loss)
    settings = InspectOptions(
        loss, training, seed, limit or DEFAULT_ROWS, batch_size=batch_size,
        max_batches=max_batches, max_memory=max_memory,
    )  # fmt: skip
    model, signature, data, info = load_for_cli(
        model_path, data_path, limit, seed, load, settings, strategy=strategy
    )
    return Start(model, signature, data, settings, info, load)


__all__ = ["Start", "start_from_files", "start_in_memory"]
