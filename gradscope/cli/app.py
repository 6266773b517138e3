"""The ``gradscope`` application: typer app, one-line errors and exit codes, stdout/stderr.

Every command module (:mod:`gradscope.cli.inspect`, ...) registers itself on :data:`app`
and goes through :func:`run_guarded`, which turns every expected failure (a
:class:`~gradscope.errors.GradscopeError`) into one stderr line and its documented exit
code (``--debug`` adds the traceback).  stdout carries only the requested output; notes
and errors go to stderr.  Nothing here imports TensorFlow at module import time, so
``gradscope --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from .. import __version__
from ..errors import ExitCode, GradscopeError
from ..render import OutputFormat

T = TypeVar("T")


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
    from .. import _tf

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
    # The CLI's last line of defence: an unexpected failure (a bug) is still one line and
    # exit 70, never a traceback, unless --debug.
    except Exception as exc:  # noqa: BLE001
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
    from ..render import render

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
    from .._atomic import check_writable

    if save is not None:
        check_writable(save, save_suffixes, "--save", force=force)
    if plot is not None:
        from ..export.plot import OPTION, SUFFIXES, ensure_available

        ensure_available()
        check_writable(plot, SUFFIXES, OPTION, force=force)
    if tensorboard is not None:
        from ..export.tensorboard import check_logdir_target

        check_logdir_target(tensorboard)


@dataclass(frozen=True)
class _Distribution:
    """A run's ``tf.distribute`` strategy (``None``: one device), whether this process
    is the chief (the only one that writes stdout and files), and the multi-worker
    ``--timeout`` (``None`` for other strategies)."""

    strategy: Any
    chief: bool
    timeout: float | None = None

    def peers(self) -> Any:
        """Around the work: a peer worker that is gone becomes one line (exit 7)."""
        import contextlib

        if self.timeout is None:
            return contextlib.nullcontext()
        from ..distribute import peer_failures

        return peer_failures(self.timeout)


def _distribution(kind: str, replicas: int | None, timeout: float | None) -> _Distribution:
    """``--strategy``/``--replicas``/``--timeout`` checked, then the strategy built.

    The options and ``TF_CONFIG`` are checked before TensorFlow is imported, and the
    strategy is built before anything runs on TensorFlow: logical CPU devices and
    collective ops can only be set up then.
    """
    from ..distribute import check_strategy_options, check_timeout, make_strategy, parse_tf_config

    kind = kind.lower()
    check_strategy_options(kind, replicas, timeout)
    if kind == "default":
        return _Distribution(None, True)
    multi = kind == "multi-worker"
    chief = parse_tf_config(os.environ).is_chief if multi else True
    wait = check_timeout(timeout) if multi else None
    from .. import _tf

    strategy = make_strategy(_tf.tensorflow(), kind, replicas, wait)
    return _Distribution(strategy, chief, wait)


def run_distributed(action: Callable[[], str], debug: bool, multi_worker: bool) -> str:
    """:func:`run_guarded`; a multi-worker run that failed leaves at once (a normal
    exit would wait seconds for peers that are gone)."""
    try:
        return run_guarded(action, debug)
    except typer.Exit as exit_:
        if multi_worker and exit_.exit_code:
            from ..distribute import exit_now

            exit_now(exit_.exit_code)
        raise


def _emit(text: str) -> None:
    """The requested output, and only it, on stdout.

    A reader that went away (``gradscope inspect ... | head``) ends the command quietly
    with :attr:`ExitCode.BROKEN_PIPE`, as a shell reports a command killed by SIGPIPE
    (click would exit 1, which means a failed check here); an stdout that cannot be
    written otherwise is reported by the entry point (:mod:`gradscope._entry`).
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise SystemExit(int(ExitCode.BROKEN_PIPE)) from None


def _max_memory(text: str | None) -> int | None:
    """``--max-memory`` in bytes; ``None`` (the default budget) when not given."""
    from ..engine.step_memory import parse_size

    return None if text is None else parse_size(text)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradscope {__version__}")
        raise typer.Exit()


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
