"""``gradscope check``: the finite-difference gradient check."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..commands.check.options import DEFAULT_TOL, TOP_ENTRIES, CheckOptions
from ..errors import ExitCode
from ..render import OutputFormat
from .app import (
    _emit,
    _finish,
    _keras_on_tensorflow,
    _max_memory,
    _note,
    app,
    run_guarded,
)
from .options import (
    CustomObjectsOpt,
    DataOpt,
    DebugOpt,
    FormatOpt,
    LimitOpt,
    LossOpt,
    MaxMemoryOpt,
    ModelArg,
    QuietOpt,
    SeedOpt,
    UnsafeOpt,
    VarsOpt,
)


@app.command()
def check(
    model: ModelArg,
    data: DataOpt = None,
    limit: LimitOpt = None,
    loss: LossOpt = None,
    training: Annotated[
        bool,
        typer.Option(
            "--training",
            help="Training mode; every evaluation reuses the same dropout mask and state.",
        ),
    ] = False,
    seed: SeedOpt = 0,
    variables: VarsOpt = None,
    inputs: Annotated[
        bool, typer.Option("--inputs/--no-inputs", help="Also check the float model inputs.")
    ] = CheckOptions.inputs,
    samples: Annotated[
        int,
        typer.Option(
            "--samples", help=f"Random entries per tensor, besides the {TOP_ENTRIES} largest |g|."
        ),
    ] = CheckOptions.samples,
    tol: Annotated[
        float | None,
        typer.Option(
            "--tol",
            help="Largest relative error that passes "
            f"[default: {DEFAULT_TOL['float64']:g}; float32: {DEFAULT_TOL['float32']:g}].",
        ),
    ] = CheckOptions.tol,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="auto (float64 copy, float32 if it cannot be cast), float64 or float32.",
        ),
    ] = CheckOptions.precision,
    require_float64: Annotated[
        bool,
        typer.Option(
            "--require-float64",
            help="A model that cannot be cast to float64 is an error (exit 2), "
            "not a float32 check.",
        ),
    ] = CheckOptions.require_float64,
    allow_unchecked: Annotated[
        bool,
        typer.Option(
            "--allow-unchecked",
            help="A tensor whose sampled entries are all at kinks of the loss may pass.",
        ),
    ] = CheckOptions.allow_unchecked,
    output_format: FormatOpt = OutputFormat.TABLE,
    custom_objects: CustomObjectsOpt = None,
    unsafe: UnsafeOpt = False,
    max_memory: MaxMemoryOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check the autodiff gradient against central finite differences (in float64).

    Exit 1 when a relative error exceeds --tol, or when a tensor has no checkable entry
    (after printing the whole report).
    """
    outcome: list[Any] = []

    def action() -> str:
        _keras_on_tensorflow(quiet)
        from ..commands.check import run

        report = run.check_file(
            model,
            data,
            limit=limit,
            loss=loss,
            training=training,
            seed=seed,
            variables=variables,
            inputs=inputs,
            samples=samples,
            tol=tol,
            precision=precision.lower(),  # type: ignore[arg-type]  # checked by CheckOptions
            custom_objects=custom_objects,
            unsafe=unsafe,
            max_memory=_max_memory(max_memory),
            allow_unchecked=allow_unchecked,
            require_float64=require_float64,
        )
        if report.precision.note is not None:
            _note(report.precision.note, quiet)
        outcome.append(report)
        return _finish(report, output_format, None, lambda *_: None, "", quiet)

    _emit(run_guarded(action, debug))
    report = outcome[0]
    if report.failed:
        failed = ", ".join(row.path for row in report.failed)
        _note(
            f"check failed: relative error above --tol {report.precision.tol:g} in {failed}", quiet
        )
    if report.unchecked and not report.allow_unchecked:
        unchecked = ", ".join(row.path for row in report.unchecked)
        _note(
            f"check failed: no sampled entry of {unchecked} could be checked (each is within "
            "one step of a kink of the loss); --allow-unchecked accepts that",
            quiet,
        )
    if not report.passed:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))
