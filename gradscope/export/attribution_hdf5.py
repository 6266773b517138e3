"""``attribute --save FILE.h5``: the full attribution arrays of a report, in one HDF5 file.

Layout (schema ``gradscope.attribute-tensors/1``)::

    /                    attrs: schema, model, loss, loss_source, training, seed,
                                method and target (the JSON of the report's ``method``
                                and ``target``), examples (their count)
    /attributions/<i>    the i-th attributed tensor (the order of the report's
                         ``inputs``), shape (examples, *shape); attrs: name, kind,
                         dtype, through, overlay ("" when none), reduced_axis (-1 when
                         none)
    /inputs/<i>          the i-th model input as fed (token ids for a token input),
                         shape (examples, ...); attrs: name
    /masks/<i>           the i-th token input's mask, (examples, tokens) booleans,
                         True for a real token; attrs: name
    /resized             Grad-CAM only: the map resized to its overlay input's height
                         and width, (examples, height, width)
    /indices             each example's row in the data (int64)
    /scores              the target's score f(x) per example (float64, NaN where not
                         finite)
    /targets             the class attributed per example (int64, -1 for the loss or
                         no single class)
    /baseline_scores     Integrated Gradients' f(x') per example (float64, NaN for none)
    /completeness_error  Integrated Gradients' completeness error per example
                         (float64, NaN for none)

The groups ``/attributions``, ``/inputs`` and ``/masks`` name their datasets ``0``,
``1``, ... and keep the tensor's name in the ``name`` attribute, since a name can hold a
``/`` (a Grad-CAM layer's path such as ``encoder/conv``); each group's ``names``
attribute lists them in order (JSON).  Written atomically, like every output file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..commands.attribute.report import AttributedInput, AttributeReport, AttributionTensors
from ..errors import UsageError
from .hdf5 import report_file

SCHEMA = "gradscope.attribute-tensors/1"
SUFFIXES = (".h5", ".hdf5")


def _named_group(handle: Any, group: str, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``arrays`` as datasets ``group/0``, ``group/1``, ... with their names in attrs;
    the datasets by name."""
    created = handle.create_group(group)
    created.attrs["names"] = json.dumps(list(arrays))
    datasets = {}
    for index, (name, array) in enumerate(arrays.items()):
        datasets[name] = created.create_dataset(str(index), data=np.asarray(array))
        datasets[name].attrs["name"] = name
    return datasets


def _describe(dataset: Any, item: AttributedInput | None) -> None:
    """An attribution dataset's attrs: what the report says about its tensor."""
    if item is None:
        return
    dataset.attrs["kind"] = item.kind
    dataset.attrs["dtype"] = item.dtype
    dataset.attrs["through"] = item.through or ""
    dataset.attrs["overlay"] = item.overlay or ""
    dataset.attrs["reduced_axis"] = -1 if item.reduced_axis is None else item.reduced_axis


def _ordered(report: AttributeReport, tensors: AttributionTensors) -> dict[str, np.ndarray]:
    """The attribution arrays in the order of ``report.inputs``, then any others."""
    order = [item.name for item in report.inputs if item.name in tensors.attributions]
    order += [name for name in tensors.attributions if name not in order]
    return {name: tensors.attributions[name] for name in order}


def _floats(values: list[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _write_examples(handle: Any, report: AttributeReport) -> None:
    """The per-example vectors: indices, scores, targets, baseline scores, errors."""
    examples = report.examples
    handle.create_dataset("indices", data=np.asarray([e.index for e in examples], dtype=np.int64))
    handle.create_dataset("scores", data=_floats([e.score for e in examples]))
    targets = [-1 if e.target is None else e.target for e in examples]
    handle.create_dataset("targets", data=np.asarray(targets, dtype=np.int64))
    handle.create_dataset("baseline_scores", data=_floats([e.baseline_score for e in examples]))
    handle.create_dataset(
        "completeness_error", data=_floats([e.completeness_error for e in examples])
    )


def write_attributions(report: AttributeReport, path: str | Path) -> None:
    """Write the arrays of ``report`` to ``path`` atomically (layout in the module doc)."""
    tensors = report.tensors
    if tensors is None:
        raise UsageError(
            "--save: the report holds no attribution arrays; run attribute with "
            "AttributeOptions(keep_tensors=True). Received: a report without tensors"
        )
    described = {item.name: item for item in report.inputs}
    with report_file(path, SCHEMA, report) as handle:
        handle.attrs["training"] = report.training
        handle.attrs["seed"] = report.seed
        handle.attrs["method"] = json.dumps(report.method.to_dict())
        handle.attrs["target"] = json.dumps(report.target.to_dict())
        handle.attrs["examples"] = len(report.examples)
        attributions = _named_group(handle, "attributions", _ordered(report, tensors))
        for name, dataset in attributions.items():
            _describe(dataset, described.get(name))
        _named_group(handle, "inputs", tensors.inputs)
        _named_group(handle, "masks", tensors.masks)
        if tensors.resized is not None:
            handle.create_dataset("resized", data=np.asarray(tensors.resized))
        _write_examples(handle, report)


__all__ = ["SCHEMA", "SUFFIXES", "write_attributions"]
