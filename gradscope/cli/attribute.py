"""``gradscope attribute``: which inputs drive the loss or a chosen output of a model.

Every option is checked before TensorFlow is imported (the options object, every output
file, matplotlib for ``--plot``/``--html``, the ``--vocabulary`` file), so a typo fails
at once and leaves nothing behind.  Attribution always runs in inference mode.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..commands.attribute import options as attribute_options
from ..errors import UsageError
from ..render import OutputFormat
from .app import _emit, _finish, _keras_on_tensorflow, _max_memory, _note, app, run_guarded
from .options import (
    BatchSizeOpt,
    CustomObjectsOpt,
    DataOpt,
    DebugOpt,
    ForceOpt,
    FormatOpt,
    LimitOpt,
    LossOpt,
    MaxBatchesOpt,
    MaxMemoryOpt,
    ModelArg,
    PlotOpt,
    QuietOpt,
    SeedOpt,
    UnsafeOpt,
)

if TYPE_CHECKING:
    from ..commands.attribute.report import AttributeReport

_ATTRIBUTE = attribute_options.defaults()
"""The library's defaults of the ``attribute`` options: the CLI declares none of its own."""


def _check_attribute_targets(
    save: Path | None, plot: Path | None, html: Path | None, force: bool
) -> None:
    """Before any work: ``--save``, ``--plot`` and ``--html`` can be written (and
    matplotlib imported for the last two), so that nothing is computed in vain."""
    from .._atomic import check_writable

    if save is not None:
        from ..export.attribution_hdf5 import SUFFIXES

        check_writable(save, SUFFIXES, "--save", force=force)
    if plot is not None or html is not None:
        from ..export.plot import ensure_available

        ensure_available("--plot" if plot is not None else "--html")
    if plot is not None:
        from ..export import attribution_plot

        check_writable(plot, attribution_plot.SUFFIXES, "--plot", force=force)
    if html is not None:
        from ..export import attribution_html

        check_writable(html, attribution_html.SUFFIXES, "--html", force=force)


def _vocabulary(path: Path | None, plot: Path | None, html: Path | None) -> tuple[str, ...] | None:
    """The ``--vocabulary`` token labels, read up front; refused without a picture."""
    if path is None:
        return None
    if plot is None and html is None:
        raise UsageError(
            "--vocabulary: labels the tokens of --plot and --html. "
            f"Received: --vocabulary {path} without either"
        )
    from ..export.attribution_plot import read_vocabulary

    labels: tuple[str, ...] = read_vocabulary(path)
    return labels


def _completeness_warning(report: AttributeReport) -> str | None:
    """Integrated Gradients with examples above the 1% completeness error: the note
    that says how far off the sum is and what to do about it."""
    if report.method.name != "integrated-gradients":
        return None
    from ..commands.attribute.report import COMPLETENESS_WARNING
    from ..render.table import fmt_percent

    worst, above = report.completeness()
    if worst is None or above == 0:
        return None
    return (
        f"integrated gradients: completeness error up to {fmt_percent(worst)} ({above} of "
        f"{len(report.examples)} examples above {fmt_percent(COMPLETENESS_WARNING)}); "
        f"use more --steps (now {report.method.steps})"
    )


def _drawn(kind: str, count: int, report: AttributeReport, path: Path) -> str:
    """``wrote the plot of 8 of 32 examples to FILE``."""
    total = len(report.examples)
    shown = f"{count} of {total}" if count < total else f"{count}"
    return f"wrote the {kind} of {shown} example{'s' if count != 1 else ''} to {path}"


def _pictures(
    report: AttributeReport,
    plot: Path | None,
    html: Path | None,
    vocabulary: tuple[str, ...] | None,
    force: bool,
    quiet: bool,
) -> None:
    """``--plot`` and ``--html``, each with a note of what it drew."""
    if plot is not None:
        from ..export.attribution_plot import plot_attributions

        count = plot_attributions(report, plot, force=force, vocabulary=vocabulary)
        _note(_drawn("plot", count, report, plot), quiet)
    if html is not None:
        from ..export.attribution_html import write_html

        count = write_html(report, html, force=force, vocabulary=vocabulary)
        _note(_drawn("page", count, report, html), quiet)


MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        metavar="|".join(attribute_options.METHODS),
        help="The input gradient (saliency), gradient times input, SmoothGrad, Integrated "
        "Gradients or Grad-CAM.",
    ),
]
TargetOpt = Annotated[
    str,
    typer.Option(
        "--target",
        metavar="loss|predicted|class:K",
        help="Attribute each example's loss, the score of its predicted class, or of class K.",
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        metavar="NAME",
        help="With a class target: the model output it reads (models with several).",
    ),
]
LogitsOpt = Annotated[
    bool,
    typer.Option(
        "--logits",
        help="With a class target: read the logits a softmax or sigmoid output is computed "
        "from, not the probabilities.",
    ),
]
LayerOpt = Annotated[
    str | None,
    typer.Option(
        "--layer",
        metavar="NAME",
        help="Grad-CAM: the layer whose feature map is weighted [default: the last convolution].",
    ),
]
StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps",
        help="Integrated Gradients: quadrature points (Gauss-Legendre) "
        f"[default: {attribute_options.DEFAULT_STEPS}].",
    ),
]
BaselineOpt = Annotated[
    str | None,
    typer.Option(
        "--baseline",
        metavar="zeros|mean|FILE.npy",
        help="Integrated Gradients: the path's start (.npz: one array per input) [default: zeros].",
    ),
]
SamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--samples",
        help="SmoothGrad: noisy copies per example "
        f"[default: {attribute_options.DEFAULT_SAMPLES}].",
    ),
]
NoiseOpt = Annotated[
    float | None,
    typer.Option(
        "--noise",
        help="SmoothGrad: the noise's standard deviation, a fraction of each example's "
        f"value range [default: {attribute_options.DEFAULT_NOISE}].",
    ),
]
TopKOpt = Annotated[
    int, typer.Option("--top-k", help="The largest attributions listed per example and input.")
]
SaveOpt = Annotated[
    Path | None,
    typer.Option("--save", help="Write the full attribution arrays to this .h5 file."),
]
HtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Also write an HTML page of the first examples (needs the 'plot' extra: matplotlib).",
    ),
]
VocabularyOpt = Annotated[
    Path | None,
    typer.Option(
        "--vocabulary",
        metavar="FILE.txt",
        help="Token labels for --plot and --html: a text file, one token a line.",
    ),
]


@app.command()
def attribute(
    model: ModelArg,
    data: DataOpt = None,
    limit: LimitOpt = None,
    loss: LossOpt = None,
    seed: SeedOpt = attribute_options.DEFAULT_SEED,
    method: MethodOpt = _ATTRIBUTE["method"],
    target: TargetOpt = _ATTRIBUTE["target"],
    output: OutputOpt = _ATTRIBUTE["output"],
    logits: LogitsOpt = _ATTRIBUTE["logits"],
    layer: LayerOpt = _ATTRIBUTE["layer"],
    steps: StepsOpt = _ATTRIBUTE["steps"],
    baseline: BaselineOpt = _ATTRIBUTE["baseline"],
    samples: SamplesOpt = _ATTRIBUTE["samples"],
    noise: NoiseOpt = _ATTRIBUTE["noise"],
    top_k: TopKOpt = _ATTRIBUTE["top_k"],
    max_memory: MaxMemoryOpt = None,
    save: SaveOpt = None,
    plot: PlotOpt = None,
    html: HtmlOpt = None,
    vocabulary: VocabularyOpt = None,
    output_format: FormatOpt = OutputFormat.TABLE,
    batch_size: BatchSizeOpt = None,
    max_batches: MaxBatchesOpt = None,
    custom_objects: CustomObjectsOpt = None,
    unsafe: UnsafeOpt = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Which inputs drive the loss or an output: saliency, gradient x input, SmoothGrad,
    Integrated Gradients, Grad-CAM."""

    def action() -> str:
        memory = _max_memory(max_memory)
        options = attribute_options.AttributeOptions(
            method=method.lower(),  # type: ignore[arg-type]
            target=target,
            output=output,
            logits=logits,
            layer=layer,
            steps=steps,
            baseline=baseline,
            samples=samples,
            noise=noise,
            top_k=top_k,
            seed=seed,
            keep_tensors=any(path is not None for path in (save, plot, html)),
            **({} if memory is None else {"max_memory": memory}),
        )
        _check_attribute_targets(save, plot, html, force)
        labels = _vocabulary(vocabulary, plot, html)
        _keras_on_tensorflow(quiet)
        from .._progress import progress_bar
        from ..commands.attribute.run import attribute_file
        from ..export.attribution_hdf5 import write_attributions

        with progress_bar(enabled=not quiet and sys.stderr.isatty()) as progress:
            report = attribute_file(
                model,
                data,
                limit=limit,
                loss=loss,
                options=options,
                progress=progress,
                custom_objects=custom_objects,
                unsafe=unsafe,
                batch_size=batch_size,
                max_batches=max_batches,
            )
        for note in (*report.notes, _completeness_warning(report)):
            if note is not None:
                _note(note, quiet)
        text = _finish(report, output_format, save, write_attributions, "the attributions", quiet)
        _pictures(report, plot, html, labels, force, quiet)
        return text

    _emit(run_guarded(action, debug))
