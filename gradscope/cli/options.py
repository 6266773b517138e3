"""Option declarations shared by every command (typer ``Annotated`` aliases).

A command declares ``model: ModelArg, data: DataOpt = None, ...``; the help text and the
flag spelling live here once.  Defaults of the library's options come from the options
objects (``InspectOptions``, ``HessianOptions``, ``CheckOptions``), never from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..render import OutputFormat
from ..selection import describe

# Options shared by every command that loads a model and differentiates its loss.
ModelArg = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL",
        help="Saved model: .keras, legacy .h5 (Keras 3 or 2), or a SavedModel directory.",
    ),
]


DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Batch: .npz, .npy (inputs only) or .h5; or FILE.py:NAME, a function returning "
        "a tf.data.Dataset, PyDataset or generator of batches. Default: synthetic.",
    ),
]


LimitOpt = Annotated[
    int | None, typer.Option("--limit", help="Use only the first N rows (synthetic: N rows).")
]


LossOpt = Annotated[
    str | None, typer.Option("--loss", help="Keras loss name overriding the compiled loss.")
]


TrainingOpt = Annotated[
    bool,
    typer.Option("--training", help="Forward pass in training mode (dropout, batch statistics)."),
]


SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed of the synthetic batch, dropout and random probes.")
]


FormatOpt = Annotated[
    OutputFormat, typer.Option("--format", "-f", case_sensitive=False, help="Output format.")
]


BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Stream the data in batches of N rows; report their mean gradient.",
    ),
]


MaxBatchesOpt = Annotated[
    int | None,
    typer.Option("--max-batches", help="With --batch-size or FILE.py:NAME: at most M batches."),
]


CustomObjectsOpt = Annotated[
    Path | None,
    typer.Option(
        "--custom-objects",
        help="Python file defining the custom layers, losses or functions the model needs.",
    ),
]


UnsafeOpt = Annotated[
    bool,
    typer.Option(
        "--unsafe", help="Turn Keras safe mode off (Lambda layers run code): trusted files only."
    ),
]


TensorBoardOpt = Annotated[
    Path | None,
    typer.Option("--tensorboard", help="Also write TensorBoard summaries to this log folder."),
]


PlotOpt = Annotated[
    Path | None,
    typer.Option("--plot", help="Also draw a PNG (needs the 'plot' extra: matplotlib)."),
]


ForceOpt = Annotated[bool, typer.Option("--force", help="With --save: overwrite an existing file.")]


MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="Memory budget, e.g. 512M, 2GiB; work above it is refused or split "
        "[default: half the available memory].",
    ),
]


VarsOpt = Annotated[str | None, typer.Option("--vars", help=describe("--vars"))]
LayersOpt = Annotated[str | None, typer.Option("--layers", help=describe("--layers"))]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No notes on stderr.")]


DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the traceback of errors.")]


# tf.distribute (inspect and hessian): see gradscope.distribute.
StrategyOpt = Annotated[
    str,
    typer.Option(
        "--strategy",
        metavar="default|mirrored|multi-worker",
        help="Split every batch across replicas: mirrored (every local GPU, or --replicas "
        "logical CPU devices) or multi-worker (TF_CONFIG); same results as one device.",
    ),
]


ReplicasOpt = Annotated[
    int | None,
    typer.Option(
        "--replicas",
        help="With --strategy mirrored on a machine without GPU: split the CPU into N "
        "logical devices.",
    ),
]


TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="With --strategy multi-worker: fail when a worker does not answer in time.",
    ),
]
