"""``landscape --save FILE.h5``: the grid and the loss values, in one HDF5 file.

Layout (schema ``gradscope.landscape-grid/1``)::

    /                 attrs: schema, model, loss, loss_source, training, seed,
                             directions (the JSON of the report's ``directions``)
    /axes/<name>      the coordinates of each axis (``alpha``, or ``x`` then ``y``), float64;
                      attrs: index (its position in the grid's shape)
    /losses           the loss at every point, shaped like the grid (float64, NaN where
                      not finite)

Written atomically, like every output file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..commands.landscape.report import LandscapeReport
from ..errors import OutputError
from .hdf5 import write_root_attributes

SCHEMA = "gradscope.landscape-grid/1"
SUFFIXES = (".h5", ".hdf5")


def write_grid(report: LandscapeReport, path: str | Path) -> None:
    """Write the grid of ``report`` to ``path`` atomically (layout in the module doc)."""
    import h5py

    target = Path(path)
    try:
        with atomic_path(target) as temporary, h5py.File(temporary, "w") as handle:
            write_root_attributes(handle, SCHEMA, report)
            handle.attrs["training"] = report.training
            handle.attrs["seed"] = report.seed
            handle.attrs["directions"] = json.dumps(report.directions.to_dict())
            for index, axis in enumerate(report.axes):
                dataset = handle.create_dataset(
                    f"axes/{axis.name}", data=np.asarray(axis.values, dtype=np.float64)
                )
                dataset.attrs["index"] = index
            handle.create_dataset("losses", data=report.loss_grid())
    except OSError as exc:
        raise OutputError(f"--save {target}: cannot write the file: {exc}") from exc
