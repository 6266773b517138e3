"""``gradscope hessian``: exact curvature blocks and matrix-free spectra."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ..commands.hessian import options as hessian_options
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
    VarsOpt,
)

_HESSIAN = hessian_options.defaults()
"""The library's defaults of the ``hessian`` options: the CLI declares none of its own."""


def _choice(flag: str, choices: Sequence[str], text: str) -> Any:
    """A string option shown as ``a|b|c``; the library checks the value, not click."""
    return typer.Option(flag, metavar="|".join(choices), help=text)


@app.command()
def hessian(
    model: ModelArg,
    data: DataOpt = None,
    limit: LimitOpt = None,
    loss: LossOpt = None,
    training: TrainingOpt = False,
    seed: SeedOpt = hessian_options.DEFAULT_SEED,
    variables: VarsOpt = _HESSIAN["variables"],
    layers: LayersOpt = _HESSIAN["layers"],
    block: Annotated[
        str,
        _choice(
            "--block",
            hessian_options.BLOCKS,
            "One block per variable, per layer, or one for the whole selection.",
        ),
    ] = _HESSIAN["block"],
    method: Annotated[
        str,
        _choice(
            "--method",
            hessian_options.METHODS,
            "Exact blocks, matrix-free Lanczos, or exact when it fits --max-memory.",
        ),
    ] = _HESSIAN["method"],
    matrix: Annotated[
        str,
        _choice(
            "--matrix",
            hessian_options.MATRICES,
            "The curvature matrix: Hessian, generalized Gauss-Newton, Monte Carlo Fisher "
            "or empirical Fisher.",
        ),
    ] = _HESSIAN["matrix"],
    mc_samples: Annotated[
        int,
        typer.Option("--mc-samples", help="--matrix fisher: target draws per example."),
    ] = _HESSIAN["mc_samples"],
    diagonal: Annotated[
        bool,
        typer.Option(
            "--diagonal",
            help="Per-parameter diagonal of the matrix: exact for exact blocks, else "
            "Hutchinson with --probes probes.",
        ),
    ] = _HESSIAN["diagonal"],
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k",
            help="Number of top eigenvalues (and, with --diagonal, of sharpest "
            "parameters per variable).",
        ),
    ] = _HESSIAN["top_k"],
    tol: Annotated[
        float, typer.Option("--tol", help="Lanczos: relative residual to stop at.")
    ] = _HESSIAN["tol"],
    max_iter: Annotated[
        int, typer.Option("--max-iter", help="Lanczos: at most this many HVPs per block.")
    ] = _HESSIAN["max_iter"],
    trace: Annotated[
        bool, typer.Option("--trace", help="Estimate the trace (Hutch++).")
    ] = _HESSIAN["trace"],
    probes: Annotated[
        int,
        typer.Option("--probes", help="Random probes of the trace and the diagonal estimates."),
    ] = _HESSIAN["probes"],
    density: Annotated[
        bool, typer.Option("--density", help="Spectral density (stochastic Lanczos quadrature).")
    ] = _HESSIAN["density"],
    cross: Annotated[
        bool, typer.Option("--cross", help="Off-diagonal blocks between each pair of variables.")
    ] = _HESSIAN["cross"],
    eigenvectors: Annotated[
        bool, typer.Option("--eigenvectors", help="With --save: also the top-k eigenvectors.")
    ] = _HESSIAN["eigenvectors"],
    max_memory: MaxMemoryOpt = None,
    hvp: Annotated[
        str,
        _choice(
            "--hvp",
            hessian_options.HVP_MODES,
            "Hessian-vector products: reverse (back-over-back) or forward (over-back).",
        ),
    ] = _HESSIAN["hvp"],
    jit: Annotated[
        bool,
        typer.Option(
            "--jit/--no-jit",
            help="Compile the products with XLA (off: no faster on CPU; see the README).",
        ),
    ] = _HESSIAN["jit"],
    save: Annotated[
        Path | None, typer.Option("--save", help="Write exact blocks and spectra to this .h5 file.")
    ] = None,
    output_format: FormatOpt = OutputFormat.TABLE,
    batch_size: BatchSizeOpt = None,
    max_batches: MaxBatchesOpt = None,
    plot: PlotOpt = None,
    tensorboard: TensorBoardOpt = None,
    custom_objects: CustomObjectsOpt = None,
    unsafe: UnsafeOpt = False,
    force: ForceOpt = False,
    strategy: StrategyOpt = "default",
    replicas: ReplicasOpt = None,
    timeout: TimeoutOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Hessian blocks of the loss: exact where they fit, Lanczos/Hutch++/SLQ otherwise."""

    def action() -> str:
        nonlocal quiet
        distribution = _distribution(strategy, replicas, timeout)
        quiet = quiet or not distribution.chief  # only the chief speaks
        # HessianOptions checks every option, as for a Python caller; the choices are
        # matched case-insensitively, as click's choices were.
        memory = _max_memory(max_memory)
        options = hessian_options.HessianOptions(
            variables=variables,
            layers=layers,
            block=block.lower(),  # type: ignore[arg-type]
            method=method.lower(),  # type: ignore[arg-type]
            top_k=top_k,
            tol=tol,
            max_iter=max_iter,
            trace=trace,
            probes=probes,
            density=density or plot is not None,
            cross=cross,
            eigenvectors=eigenvectors,
            hvp=hvp.lower(),  # type: ignore[arg-type]
            jit=jit,
            matrix=matrix.lower(),  # type: ignore[arg-type]
            mc_samples=mc_samples,
            diagonal=diagonal,
            seed=seed,
            **({} if memory is None else {"max_memory": memory}),
        )
        _keras_on_tensorflow(quiet)
        from .._progress import progress_bar
        from ..commands.hessian.run import hessian_file
        from ..export import hessian_hdf5

        if distribution.chief:
            _check_output_targets(save, hessian_hdf5.SUFFIXES, plot, tensorboard, force)
        with (
            progress_bar(enabled=not quiet and sys.stderr.isatty()) as progress,
            distribution.peers(),
        ):
            report = hessian_file(
                model,
                data,
                limit=limit,
                loss=loss,
                training=training,
                options=options,
                progress=progress,
                custom_objects=custom_objects,
                unsafe=unsafe,
                batch_size=batch_size,
                max_batches=max_batches,
                strategy=distribution.strategy,
            )
        if not distribution.chief:
            return ""
        for note in report.notes:  # fallbacks, on stderr like the model's notes
            _note(note, quiet)
        text = _finish(
            report, output_format, save, hessian_hdf5.write_blocks, "Hessian blocks", quiet
        )
        if plot is not None:
            from ..export.plot import plot_density

            plot_density(report, plot, force=force)
            _note(f"wrote the plot to {plot}", quiet)
        if tensorboard is not None:
            from ..export.tensorboard import write_hessian

            _note(f"wrote {write_hessian(report, tensorboard)}", quiet)
        return text

    _emit(run_distributed(action, debug, strategy.lower() == "multi-worker"))
