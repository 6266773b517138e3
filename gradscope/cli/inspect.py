"""``gradscope inspect``: every weight, input and layer-output gradient in one pass."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ExitCode, UsageError
from ..health import Thresholds
from ..render import OutputFormat
from .app import (
    _check_output_targets,
    _distribution,
    _emit,
    _finish,
    _keras_on_tensorflow,
    _max_memory,
    _note,
    app,
    run_distributed,
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
    ReplicasOpt,
    SeedOpt,
    StrategyOpt,
    TensorBoardOpt,
    TimeoutOpt,
    TrainingOpt,
    UnsafeOpt,
)

_THRESHOLDS = Thresholds()
"""The default health thresholds: the CLI's defaults are the library's."""


@app.command()
def inspect(
    model: ModelArg,
    data: DataOpt = None,
    limit: LimitOpt = None,
    loss: LossOpt = None,
    training: TrainingOpt = False,
    seed: SeedOpt = 0,
    output_format: FormatOpt = OutputFormat.TABLE,
    layers: LayersOpt = None,
    save: Annotated[
        Path | None, typer.Option("--save", help="Write the raw gradient tensors to this .h5 file.")
    ] = None,
    batch_size: BatchSizeOpt = None,
    max_batches: MaxBatchesOpt = None,
    per_sample: Annotated[
        bool,
        typer.Option(
            "--per-sample", help="Per-example gradient norms, and the examples that dominate."
        ),
    ] = False,
    fail_on: Annotated[
        str | None,
        typer.Option(
            "--fail-on",
            help="Exit 1 when one of these diagnoses fires: "
            "nonfinite,vanishing,exploding,dead,stalled (the report is still printed).",
        ),
    ] = None,
    vanishing_ratio: Annotated[
        float,
        typer.Option("--vanishing-ratio", help="Vanishing: layer ‖g‖ below this × the largest."),
    ] = _THRESHOLDS.vanishing_ratio,
    exploding_norm: Annotated[
        float, typer.Option("--exploding-norm", help="Exploding: global ‖g‖ above this.")
    ] = _THRESHOLDS.exploding_norm,
    exploding_ratio: Annotated[
        float, typer.Option("--exploding-ratio", help="Exploding: a layer's ‖g‖/‖w‖ above this.")
    ] = _THRESHOLDS.exploding_ratio,
    dead_fraction: Annotated[
        float,
        typer.Option(
            "--dead-fraction", help="Dead: ReLU units zero on the whole batch, above this fraction."
        ),
    ] = _THRESHOLDS.dead_fraction,
    stalled_ratio: Annotated[
        float, typer.Option("--stalled-ratio", help="Stalled: a layer's ‖g‖/‖w‖ below this.")
    ] = _THRESHOLDS.stalled_ratio,
    plot: PlotOpt = None,
    tensorboard: TensorBoardOpt = None,
    custom_objects: CustomObjectsOpt = None,
    unsafe: UnsafeOpt = False,
    max_memory: MaxMemoryOpt = None,
    force: ForceOpt = False,
    strategy: StrategyOpt = "default",
    replicas: ReplicasOpt = None,
    timeout: TimeoutOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Gradients of the loss for every weight, input and layer output, in one pass."""
    fired: list[str] = []

    def action() -> str:
        nonlocal quiet
        distribution = _distribution(strategy, replicas, timeout)
        quiet = quiet or not distribution.chief  # only the chief speaks
        _keras_on_tensorflow(quiet)
        from .. import health
        from .._progress import progress_bar
        from ..commands.inspect import inspect_file
        from ..export import hdf5

        if distribution.chief:
            _check_output_targets(save, hdf5.SUFFIXES, plot, tensorboard, force)
        try:
            wanted = health.parse_fail_on(fail_on)
        except ValueError as exc:
            raise UsageError(f"--fail-on: {exc}. Received: {fail_on!r}") from None
        thresholds = Thresholds(
            vanishing_ratio, exploding_norm, exploding_ratio, dead_fraction, stalled_ratio
        )
        with (
            progress_bar(enabled=not quiet and sys.stderr.isatty()) as progress,
            distribution.peers(),
        ):
            report = inspect_file(
                model,
                data,
                limit=limit,
                loss=loss,
                training=training,
                seed=seed,
                layers=layers,
                keep_tensors=save is not None or tensorboard is not None,
                custom_objects=custom_objects,
                unsafe=unsafe,
                batch_size=batch_size,
                max_batches=max_batches,
                per_sample=per_sample,
                progress=progress,
                thresholds=thresholds,
                max_memory=_max_memory(max_memory),
                strategy=distribution.strategy,
            )
        if report.health is None:  # inspect always diagnoses its report
            raise RuntimeError("the inspect report has no health section")
        fired.extend(kind for kind in wanted if kind in report.health.kinds())
        if not distribution.chief:
            return ""
        text = _finish(report, output_format, save, hdf5.write_tensors, "gradient tensors", quiet)
        if plot is not None:
            from ..export.plot import plot_inspect

            plot_inspect(report, plot, force=force)
            _note(f"wrote the plot to {plot}", quiet)
        if tensorboard is not None:
            from ..export.tensorboard import write_inspect

            _note(f"wrote {write_inspect(report, tensorboard)}", quiet)
        return text

    _emit(run_distributed(action, debug, strategy.lower() == "multi-worker"))
    if fired:
        _note(f"--fail-on: {', '.join(fired)} fired", quiet)
        raise typer.Exit(int(ExitCode.CHECK_FAILED))
