"""The ``gradscope`` command line: typer options -> library call -> renderer -> exit code.

Nothing here imports TensorFlow at module import time (``gradscope --help`` stays fast);
the library is imported inside the command.  stdout carries only the requested output;
notes and errors go to stderr.  Every expected failure is a :class:`GradscopeError`,
printed as one line with its documented exit code; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from . import __version__
from .commands.check.options import DEFAULT_TOL, TOP_ENTRIES, CheckOptions
from .commands.hessian import options as hessian_options
from .errors import ExitCode, GradscopeError, UsageError
from .health import Thresholds
from .render import OutputFormat

T = TypeVar("T")

_THRESHOLDS = Thresholds()
"""The default health thresholds: the CLI's defaults are the library's."""


# typer >= 0.25 vendors click; reach its exception classes through typer's public ones.
_UsageError: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineErrors(TyperGroup):
    """Report click's usage errors (bad option, bad value) as one line, exit code 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # plain `gradscope`: the help
                sys.stdout.write(exc.format_message() + "\n")
                sys.exit(0)
            _error(_usage_message(exc))
            sys.exit(int(ExitCode.USAGE))
        except typer.Abort:
            _error("interrupted")
            sys.exit(int(ExitCode.INTERRUPTED))
        except _ClickException as exc:
            _error(exc.format_message())
            sys.exit(exc.exit_code)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def _usage_message(exc: Any) -> str:
    """click's message, tidied, with a pointer to the command's help."""
    message = exc.format_message().replace("Value error, ", "")
    command = exc.ctx.command_path if exc.ctx is not None else "gradscope"
    return f"{message} (see '{command} --help')"


app = typer.Typer(
    cls=_OneLineErrors,
    name="gradscope",
    help=(
        "Gradient inspector for Keras models: every weight, input and layer-output "
        "gradient in one pass."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _error(message: str) -> None:
    sys.stderr.write(f"gradscope: error: {message}\n")
    sys.stderr.flush()


def _note(message: str, quiet: bool) -> None:
    if not quiet:
        sys.stderr.write(f"gradscope: {message}\n")


def _keras_on_tensorflow(quiet: bool) -> None:
    """The CLI owns its process: Keras runs on TensorFlow, whatever ``KERAS_BACKEND`` or
    ``keras.json`` say (a ``.keras`` file does not depend on the backend), with a note."""
    from . import _tf

    note = _tf.use_tensorflow_backend()
    if note is not None:
        _note(note, quiet)


def run_guarded(action: Callable[[], T], debug: bool) -> T:
    """Run ``action``; turn failures into one stderr line and a documented exit code.

    Python warnings from the libraries underneath (Keras, TensorFlow, h5py) are noise on
    a terminal; they are shown only with ``--debug``.
    """
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore")
            return action()
    except GradscopeError as exc:
        if debug:
            traceback.print_exc()
        _error(exc.message)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        _error("interrupted")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except MemoryError:
        if debug:
            traceback.print_exc()
        _error("out of memory: the model, the batch or its gradients do not fit; try --limit")
        raise typer.Exit(int(ExitCode.RESOURCE)) from None
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        _error(
            f"internal error: {type(exc).__name__}: {first} (run with --debug for the traceback)"
        )
        raise typer.Exit(int(ExitCode.INTERNAL)) from None


def _use_color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _columns() -> int | None:
    """``COLUMNS`` as a width, or ``None`` when it is unset or not a positive integer:
    like a shell or rich, a malformed value is ignored rather than an error."""
    text = os.environ.get("COLUMNS", "").strip()
    return int(text) if text.isdecimal() and int(text) > 0 else None


def _table_width() -> int | None:
    """The table width: ``COLUMNS``, else the terminal's (``None``), else 160 in a pipe."""
    columns = _columns()
    if columns is None and not sys.stdout.isatty():
        return 160
    return columns


def _finish(
    report: Any,
    output_format: OutputFormat,
    save: Path | None,
    write: Callable[[Any, Path], None],
    what: str,
    quiet: bool,
) -> str:
    """The end every command shares: notes on stderr, the ``--save`` file, the rendering."""
    from .render import render

    for note in report.model.notes:
        _note(note, quiet)
    if report.loss.kind == "sum_of_outputs":
        _note(f"loss: {report.loss.source}", quiet)
    if save is not None:
        write(report, save)
        _note(f"wrote {what} to {save}", quiet)
    return render(report, output_format, width=_table_width(), color=_use_color())


def _check_output_targets(
    save: Path | None,
    save_suffixes: tuple[str, ...],
    plot: Path | None,
    tensorboard: Path | None,
    force: bool,
) -> None:
    """Before any work: every requested output (``--save``, ``--plot``, ``--tensorboard``)
    can be written, so a typo or a missing extra fails at once and leaves nothing."""
    from ._atomic import check_writable

    if save is not None:
        check_writable(save, save_suffixes, "--save", force=force)
    if plot is not None:
        from .export.plot import OPTION, SUFFIXES, ensure_available

        ensure_available()
        check_writable(plot, SUFFIXES, OPTION, force=force)
    if tensorboard is not None:
        from .export.tensorboard import check_logdir_target

        check_logdir_target(tensorboard)


def _emit(text: str) -> None:
    """The requested output, and only it, on stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _max_memory(text: str | None) -> int | None:
    """``--max-memory`` in bytes; ``None`` (the default budget) when not given."""
    from .engine.step_memory import parse_size

    return None if text is None else parse_size(text)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradscope {__version__}")
        raise typer.Exit()


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
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No notes on stderr.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the traceback of errors.")]


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Gradient inspector for Keras models."""


@app.command()
def inspect(
    model: ModelArg,
    data: DataOpt = None,
    limit: LimitOpt = None,
    loss: LossOpt = None,
    training: TrainingOpt = False,
    seed: SeedOpt = 0,
    output_format: FormatOpt = OutputFormat.TABLE,
    layers: Annotated[
        str | None,
        typer.Option("--layers", help="Only layers matching these globs (comma-separated)."),
    ] = None,
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
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Gradients of the loss for every weight, input and layer output, in one pass."""
    fired: list[str] = []

    def action() -> str:
        _keras_on_tensorflow(quiet)
        from . import api, health
        from ._progress import progress_bar
        from .export import hdf5

        _check_output_targets(save, hdf5.SUFFIXES, plot, tensorboard, force)
        try:
            wanted = health.parse_fail_on(fail_on)
        except ValueError as exc:
            raise UsageError(f"--fail-on: {exc}. Received: {fail_on!r}") from None
        thresholds = Thresholds(
            vanishing_ratio, exploding_norm, exploding_ratio, dead_fraction, stalled_ratio
        )
        with progress_bar(enabled=not quiet and sys.stderr.isatty()) as progress:
            report = api.inspect_file(
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
            )
        text = _finish(report, output_format, save, hdf5.write_tensors, "gradient tensors", quiet)
        if plot is not None:
            from .export.plot import plot_inspect

            plot_inspect(report, plot, force=force)
            _note(f"wrote the plot to {plot}", quiet)
        if tensorboard is not None:
            from .export.tensorboard import write_inspect

            _note(f"wrote {write_inspect(report, tensorboard)}", quiet)
        if report.health is None:  # inspect always diagnoses its report
            raise RuntimeError("the inspect report has no health section")
        fired.extend(kind for kind in wanted if kind in report.health.kinds())
        return text

    _emit(run_guarded(action, debug))
    if fired:
        _note(f"--fail-on: {', '.join(fired)} fired", quiet)
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


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
    variables: Annotated[
        str | None, typer.Option("--vars", help="Only variables matching these globs.")
    ] = _HESSIAN["variables"],
    layers: Annotated[
        str | None, typer.Option("--layers", help="Only variables of layers matching these globs.")
    ] = _HESSIAN["layers"],
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
    top_k: Annotated[
        int,
        typer.Option("--top-k", help="Number of top eigenvalues."),
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
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Hessian blocks of the loss: exact where they fit, Lanczos/Hutch++/SLQ otherwise."""

    def action() -> str:
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
            density=density or plot is not None,
            cross=cross,
            eigenvectors=eigenvectors,
            hvp=hvp.lower(),  # type: ignore[arg-type]
            seed=seed,
            **({} if memory is None else {"max_memory": memory}),
        )
        _keras_on_tensorflow(quiet)
        from ._progress import progress_bar
        from .commands.hessian.run import hessian_file
        from .export import hessian_hdf5

        _check_output_targets(save, hessian_hdf5.SUFFIXES, plot, tensorboard, force)
        with progress_bar(enabled=not quiet and sys.stderr.isatty()) as progress:
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
            )
        for note in report.notes:  # fallbacks, on stderr like the model's notes
            _note(note, quiet)
        text = _finish(
            report, output_format, save, hessian_hdf5.write_blocks, "Hessian blocks", quiet
        )
        if plot is not None:
            from .export.plot import plot_density

            plot_density(report, plot, force=force)
            _note(f"wrote the plot to {plot}", quiet)
        if tensorboard is not None:
            from .export.tensorboard import write_hessian

            _note(f"wrote {write_hessian(report, tensorboard)}", quiet)
        return text

    _emit(run_guarded(action, debug))


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
    variables: Annotated[
        str | None,
        typer.Option("--vars", help="Only variables matching these globs (path, name or layer)."),
    ] = None,
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
        from .commands.check import run

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


@app.command()
def diff(
    report_a: Annotated[
        Path,
        typer.Argument(metavar="A.json", help="Baseline: a 'gradscope inspect -f json' report."),
    ],
    report_b: Annotated[
        Path, typer.Argument(metavar="B.json", help="The inspect JSON report to compare with A.")
    ],
    top: Annotated[
        int, typer.Option("--top", help="List the N largest changes (by |log10 B/A|).")
    ] = 10,
    fail_on: Annotated[
        str | None,
        typer.Option(
            "--fail-on",
            help="Exit 1 when one of these fires: nonfinite,ratio,added,removed "
            "(the report is still printed).",
        ),
    ] = None,
    max_ratio: Annotated[
        float,
        typer.Option(
            "--max-ratio", help="ratio: a variable's ‖g‖ changed by more than this factor."
        ),
    ] = 10.0,
    output_format: FormatOpt = OutputFormat.TABLE,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare two saved inspect JSON reports (two checkpoints, before/after a change)."""
    fired: list[str] = []

    def action() -> str:
        from .commands.diff import diff_files, parse_fail_on
        from .render import render

        wanted = parse_fail_on(fail_on)
        report = diff_files(report_a, report_b, top=top, max_ratio=max_ratio, fail_on=wanted)
        if output_format is not OutputFormat.TABLE:  # the table shows them in its header
            for note in report.notes:
                _note(note, quiet)
        fired.extend(r.condition for r in report.checks.results if r.requested and r.triggered)
        return render(report, output_format, width=_table_width(), color=_use_color())

    _emit(run_guarded(action, debug))
    if fired:
        _note(f"--fail-on: {', '.join(fired)} fired", quiet)
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


def main() -> None:
    """Console-script entry point.

    Once the command is done and its output flushed, the process ends without Python's
    interpreter teardown when TensorFlow was loaded: TensorFlow's shutdown takes a
    second or more and does nothing a finished command needs (every output file is
    already closed and renamed into place).
    """
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if not isinstance(code, int):
        if code is not None:
            sys.stderr.write(f"{code}\n")
        code = 0 if code is None else 1
    sys.stdout.flush()
    sys.stderr.flush()
    if "tensorflow" in sys.modules:
        os._exit(code)
    raise SystemExit(code)
