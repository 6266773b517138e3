"""``gradscope landscape``: the loss along directions in weight space, or between models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..commands.hessian.options import MATRICES
from ..commands.landscape import options as landscape_options
from ..render import OutputFormat
from .app import (
    _check_output_targets,
    _emit,
    _finish,
    _keras_on_tensorflow,
    _max_memory,
    _note,
    app,
    run_guarded,
)
from .options import (
    BatchSizeOpt,
    CustomObjectsOpt,
    DataOpt,
    DebugOpt,
    ForceOpt,
    FormatOpt,
    LayersOpt,
    LimitOpt,
    LossOpt,
    MaxBatchesOpt,
    MaxMemoryOpt,
    ModelArg,
    PlotOpt,
    QuietOpt,
    SeedOpt,
    TrainingOpt,
    UnsafeOpt,
    VarsOpt,
)

_LANDSCAPE = landscape_options.defaults()
"""The library's defaults of the ``landscape`` options: the CLI declares none of its own."""


@app.command()
def landscape(
    model: ModelArg,
    data: DataOpt = None,
    limit: LimitOpt = None,
    loss: LossOpt = None,
    training: TrainingOpt = False,
    seed: SeedOpt = landscape_options.DEFAULT_SEED,
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            metavar="OTHER",
            help="Interpolate from MODEL (alpha=0) to this model (alpha=1), same architecture.",
        ),
    ] = None,
    directions: Annotated[
        str | None,
        typer.Option(
            "--directions",
            metavar="|".join(landscape_options.DIRECTIONS),
            help="Random filter-normalized directions, or the top Hessian eigenvectors "
            "(Lanczos) [default: random].",
        ),
    ] = _LANDSCAPE["directions"],
    grid: Annotated[
        str | None,
        typer.Option(
            "--grid",
            metavar="START:STOP:NUM[,START:STOP:NUM]",
            help=f"One axis (a line) or two (a plane) [default: {landscape_options.DEFAULT_GRID}; "
            f"with --to {landscape_options.DEFAULT_INTERPOLATION_GRID}].",
        ),
    ] = _LANDSCAPE["grid"],
    include_biases: Annotated[
        bool,
        typer.Option(
            "--include-biases",
            help="Random directions: move 1-D variables (biases, normalization) too.",
        ),
    ] = _LANDSCAPE["include_biases"],
    recompute_bn: Annotated[
        bool,
        typer.Option(
            "--recompute-bn",
            help="Recompute BatchNorm moving statistics on the data at each point.",
        ),
    ] = _LANDSCAPE["recompute_bn"],
    variables: VarsOpt = _LANDSCAPE["variables"],
    layers: LayersOpt = _LANDSCAPE["layers"],
    max_iter: Annotated[
        int, typer.Option("--max-iter", help="Eigen directions: at most this many HVPs.")
    ] = _LANDSCAPE["max_iter"],
    matrix: Annotated[
        str,
        typer.Option(
            "--matrix",
            metavar="|".join(MATRICES),
            help="Eigen directions: eigenvectors of this curvature matrix (see hessian).",
        ),
    ] = _LANDSCAPE["matrix"],
    max_memory: MaxMemoryOpt = None,
    save: Annotated[
        Path | None, typer.Option("--save", help="Write the grid and its losses to this .h5 file.")
    ] = None,
    plot: PlotOpt = None,
    output_format: FormatOpt = OutputFormat.TABLE,
    batch_size: BatchSizeOpt = None,
    max_batches: MaxBatchesOpt = None,
    custom_objects: CustomObjectsOpt = None,
    unsafe: UnsafeOpt = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The loss on a 1-D or 2-D grid along directions in weight space, or between models."""

    def action() -> str:
        memory = _max_memory(max_memory)
        options = landscape_options.LandscapeOptions(
            grid=grid,
            directions=None if directions is None else directions.lower(),  # type: ignore[arg-type]
            include_biases=include_biases,
            recompute_bn=recompute_bn,
            variables=variables,
            layers=layers,
            max_iter=max_iter,
            matrix=matrix.lower(),  # type: ignore[arg-type]
            seed=seed,
            **({} if memory is None else {"max_memory": memory}),
        )
        options.axes(to is not None)  # a bad --grid for --to fails before any import
        from ..export import landscape_hdf5

        _check_output_targets(save, landscape_hdf5.SUFFIXES, plot, None, force)
        _keras_on_tensorflow(quiet)
        from .._progress import progress_bar
        from ..commands.landscape.run import landscape_file

        with progress_bar(enabled=not quiet and sys.stderr.isatty()) as progress:
            report = landscape_file(
                model,
                data,
                to=to,
                limit=limit,
                loss=loss,
                training=training,
                options=options,
                progress=progress,
                custom_objects=custom_objects,
                unsafe=unsafe,
                batch_size=batch_size,
                max_batches=max_batches,
            )
        for note in report.notes:
            _note(note, quiet)
        text = _finish(report, output_format, save, landscape_hdf5.write_grid, "the grid", quiet)
        if plot is not None:
            from ..export.landscape_plot import plot_landscape

            plot_landscape(report, plot, force=force)
            _note(f"wrote the plot to {plot}", quiet)
        return text

    _emit(run_guarded(action, debug))
