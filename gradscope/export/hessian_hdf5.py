"""``hessian --save FILE.h5``: exact Hessian blocks and spectra, in one HDF5 file.

Layout (schema ``gradscope.hessian-blocks/1``)::

    /                     attrs: schema, model, loss, loss_source, matrix
    /blocks/<i>/<matrix>      the exact n x n block (float64; exact blocks only), named
                              after the matrix: hessian, ggn, fisher or empirical-fisher
    /blocks/<i>/eigenvalues   its whole spectrum, ascending (exact) or the Ritz values
                              found (Lanczos: top-k descending, then the minimum)
    /blocks/<i>/eigenvectors  with ``--eigenvectors``: n x k, column j the unit eigenvector
                              of the j-th largest eigenvalue (the top-k of the report)
    /blocks/<i>               attrs: vars, layers, shapes (JSON), size, method
    /blocks/<i>/diagonal/<variable path>         with ``--diagonal``: the diagonal of the
                              matrix over that variable, in the variable's shape
    /blocks/<i>/diagonal_stderr/<variable path>  its standard errors (Hutchinson only)

Written atomically, like every output file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path
from ..errors import OutputError
from ..report import HessianBlock, HessianReport
from .hdf5 import write_root_attributes

SCHEMA = "gradscope.hessian-blocks/1"
SUFFIXES = (".h5", ".hdf5")


def _spectrum(block: HessianBlock) -> np.ndarray:
    if block.eigenvalues_all is not None:
        return np.asarray(block.eigenvalues_all, dtype=np.float64)
    return np.asarray([*block.eigenvalues, block.min_eigenvalue], dtype=np.float64)


def _write_diagonals(group: Any, block: HessianBlock) -> None:
    """``--diagonal``: each variable's diagonal (and standard errors) under its path."""
    for item in block.diagonals or ():
        group.create_dataset(f"diagonal/{item.var}", data=item.values)
        if item.stderr is not None:
            group.create_dataset(f"diagonal_stderr/{item.var}", data=item.stderr)


def write_blocks(report: HessianReport, path: str | Path) -> None:
    """Write every block of ``report`` to ``path`` atomically (layout in the module doc)."""
    import h5py

    target = Path(path)
    try:
        with atomic_path(target) as temporary, h5py.File(temporary, "w") as handle:
            write_root_attributes(handle, SCHEMA, report)
            handle.attrs["matrix"] = report.matrix
            for index, block in enumerate(report.blocks):
                group = handle.create_group(f"blocks/{index}")
                group.attrs["vars"] = json.dumps(list(block.vars))
                group.attrs["layers"] = json.dumps(list(block.layers))
                group.attrs["shapes"] = json.dumps([list(s) for s in block.shapes])
                group.attrs["size"] = block.size
                group.attrs["method"] = block.method
                group.create_dataset("eigenvalues", data=_spectrum(block))
                if block.matrix is not None:
                    group.create_dataset(report.matrix, data=block.matrix)
                if block.eigenvectors is not None:
                    group.create_dataset("eigenvectors", data=block.eigenvectors)
                _write_diagonals(group, block)
    except OSError as exc:
        raise OutputError(f"--save {target}: cannot write the file: {exc}") from exc
