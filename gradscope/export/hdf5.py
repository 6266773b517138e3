"""``--save FILE.h5``: the raw gradient tensors of a report, in one HDF5 file.

Layout (schema ``gradscope.tensors/1``)::

    /                      attrs: schema, model, loss, loss_source, batch_size, synthetic, seed
    /variables/<path>/grad     one dataset per trainable variable (path = variable.path)
    /inputs/<name>/grad        one dataset per float model input
    /activations/<path>/grad   one dataset per layer output (path as in the report)

Each dataset is named ``grad`` inside a group named after the tensor's path, so that a
path that is a prefix of another (a nested model ``encoder`` and its layer
``encoder/dense``) never collides.  Each dataset carries the attributes ``kind``,
``path``, ``layer``, ``shape`` and ``loss``.  The file is written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path
from ..commands.inspect.report import Report
from ..errors import OutputError
from ..report import _JsonMixin

SCHEMA = "gradscope.tensors/1"
SUFFIXES = (".h5", ".hdf5")


def _layers_by_path(report: Report) -> dict[tuple[str, str], str]:
    layers = {("variables", row.path): row.layer for row in report.variables}
    layers.update({("activations", row.path): row.layer for row in report.activations})
    layers.update({("inputs", row.name): "" for row in report.inputs})
    return layers


def _write_group(handle: Any, kind: str, tensors: Mapping[str, np.ndarray], report: Report) -> None:
    """One dataset per tensor, in ``handle`` (an open, writable ``h5py.File``)."""
    layers = _layers_by_path(report)
    loss = report.loss.value
    for path, array in tensors.items():
        dataset = handle.create_dataset(f"{kind}/{path}/grad", data=np.asarray(array))
        dataset.attrs["kind"] = kind[:-1]
        dataset.attrs["path"] = path
        dataset.attrs["layer"] = layers.get((kind, path), "")
        dataset.attrs["shape"] = np.asarray(array.shape, dtype=np.int64)
        dataset.attrs["loss"] = loss


def write_root_attributes(handle: Any, schema: str, report: _JsonMixin) -> None:
    """What every gradscope HDF5 file says about itself: schema, model and loss."""
    handle.attrs["schema"] = schema
    handle.attrs["model"] = report.model.name
    handle.attrs["loss"] = report.loss.value
    handle.attrs["loss_source"] = report.loss.source


def write_tensors(report: Report, path: str | Path) -> None:
    """Write ``report.tensors`` to ``path`` atomically (see the module doc for the layout)."""
    import h5py

    if report.tensors is None:
        raise OutputError("--save: the report holds no tensors (inspect with keep_tensors=True).")
    target = Path(path)
    try:
        with atomic_path(target) as temporary, h5py.File(temporary, "w") as handle:
            write_root_attributes(handle, SCHEMA, report)
            handle.attrs["batch_size"] = report.batch.size
            handle.attrs["synthetic"] = report.batch.source == "synthetic"
            handle.attrs["seed"] = -1 if report.batch.seed is None else report.batch.seed
            _write_group(handle, "variables", report.tensors.variables, report)
            _write_group(handle, "inputs", report.tensors.inputs, report)
            _write_group(handle, "activations", report.tensors.activations, report)
    except OSError as exc:
        raise OutputError(f"--save {target}: cannot write the file: {exc}") from exc
