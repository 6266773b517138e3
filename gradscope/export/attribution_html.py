"""``attribute --html FILE.html``: one self-contained page of the attributions.

The page needs nothing but itself: the CSS is inline, there is no script and no
external reference, and the pictures are PNG images embedded as ``data:`` URIs, so it
opens offline and can be mailed or attached to an issue.  A header gives the model,
the batch, the method and its settings, the target, the completeness of Integrated
Gradients and the report's notes.  Then, for each of the first ``max_examples``
examples: its index, target and score (Integrated Gradients: the baseline score and the
completeness error, highlighted above 1%), and for each attributed input its picture
and its largest positions (the report's ``top``):

* ``image``, ``feature_map``, ``sequence``, ``other``: the panel of ``--plot``
  (:func:`~gradscope.export.attribution_plot.panel_png`), so these need matplotlib;
* ``tokens``: the text itself, a ``<span>`` per token with the attribution as its
  background colour and its value in the ``title`` (shown on hover); padding greyed and
  left out of the scale;
* ``tabular``: a table of the largest features with inline bars.

Colours are the ones of ``--plot`` (:mod:`gradscope.export.attribution_views`).  Every
string from the report (model, input and layer names, notes, vocabulary entries) is
escaped.  The file is written atomically.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

from .._atomic import atomic_path
from ..commands.attribute.report import (
    COMPLETENESS_WARNING,
    AttributeReport,
    InputAttribution,
    MethodInfo,
)
from ..errors import OutputError
from .attribution_plot import MAX_EXAMPLES, MAX_FEATURES, panel_png, scale_text
from .attribution_views import (
    IMAGE_KINDS,
    NEGATIVE,
    POSITIVE,
    WHITE,
    Mode,
    Panel,
    color_mode,
    example_title,
    hex_color,
    mode_text,
    order_features,
    prepare,
    ramp_color,
    text_color,
)
from .plot import ensure_available

SUFFIXES = (".html", ".htm")
OPTION = "--html"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.1em; margin: 1.6em 0 0.3em; border-bottom: 1px solid #ccc; }
h3 { font-size: 0.95em; margin: 0.9em 0 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { padding: 1px 8px; text-align: left; vertical-align: top; }
th { color: #555; font-weight: normal; }
.facts th { text-align: right; }
.warn { background: #ffd9d9; color: #8b0000; font-weight: bold; padding: 0 4px; }
.notes li { font-size: 0.85em; }
.tokens { line-height: 2.1em; }
.tok { padding: 2px 3px; margin: 1px; border-radius: 3px; white-space: pre;
       font-family: ui-monospace, monospace; font-size: 0.85em; border: 1px solid #ddd; }
.pad { background: #eeeeee; color: #aaaaaa; border-style: dashed; }
.legend { display: inline-block; width: 160px; height: 0.8em; border: 1px solid #999;
          vertical-align: middle; margin: 0 6px; }
.bar { display: flex; width: 220px; }
.bar div { flex: 1; display: flex; }
.bar .neg { justify-content: flex-end; border-right: 1px solid #555; }
.bar span { display: block; height: 0.8em; margin-top: 0.2em; }
img { max-width: 100%; }
.scale { color: #555; font-size: 0.85em; }
.top { font-size: 0.8em; color: #333; margin: 0.3em 0 0.6em; }
.top b { font-weight: 600; }
"""


def _e(text: object) -> str:
    """``text`` escaped for HTML content and attribute values."""
    return html.escape(str(text), quote=True)


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


# --------------------------------------------------------------------------- header


def method_settings(method: MethodInfo) -> list[tuple[str, str]]:
    """The method's settings that are set, as ``(name, value)``."""
    settings: list[tuple[str, object]] = [
        ("steps", method.steps),
        ("rule", method.rule),
        ("baseline", method.baseline),
        ("samples", method.samples),
        ("noise", method.noise),
        ("layer", method.layer),
    ]
    out = [
        (name, f"{value:g}" if isinstance(value, float) else str(value))
        for name, value in settings
        if value is not None
    ]
    if method.layer is not None:
        out.append(
            ("layer chosen", "by gradscope (last convolution)" if method.chosen else "by --layer")
        )
    return out


def _facts(report: AttributeReport) -> list[tuple[str, str]]:
    """The header's rows: what was run on what."""
    model, batch = report.model, report.batch
    where = batch.path if batch.source == "file" else f"synthetic (seed {batch.seed})"
    settings = ", ".join(f"{name} {value}" for name, value in method_settings(report.method))
    facts = [
        (
            "model",
            f"{model.name} ({model.class_name}, {model.format}, "
            f"{model.trainable_params:,} trainable parameters)",
        ),
        ("batch", f"{where}, {batch.size} rows"),
        ("loss", f"{_number(report.loss.value)} ({report.loss.source})"),
        ("method", report.method.name + (f": {settings}" if settings else "")),
        ("target", report.target.describe()),
        ("seed", str(report.seed)),
        ("mode", "training" if report.training else "inference"),
    ]
    worst, above = report.completeness()
    if worst is not None:
        facts.append(
            (
                "completeness",
                f"largest error {worst:.2%}; {above} of {len(report.examples)} "
                f"examples above {COMPLETENESS_WARNING:.0%}",
            )
        )
    return facts


def _header(report: AttributeReport, drawn: int) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _facts(report))
    notes = [*report.notes, *report.model.notes]
    listed = "".join(f"<li>{_e(note)}</li>" for note in notes)
    total = len(report.examples)
    shown = f"all {total} examples" if drawn == total else f"the first {drawn} of {total} examples"
    return (
        f"<h1>{_e(report.model.name)}: {_e(report.method.name)} attributions</h1>\n"
        f'<table class="facts">{rows}</table>\n'
        + (f'<h3>Notes</h3><ul class="notes">{listed}</ul>\n' if notes else "")
        + f"<p>{_legend(report)} Shown: {_e(shown)}.</p>\n"
    )


def _legend(report: AttributeReport) -> str:
    """The colour scale, as a CSS gradient."""
    mode = color_mode(report.method.name)
    if mode == "cam":
        return "Colours: jet, from 0 (blue) to the map's largest value (red), per example."
    white, red, blue = hex_color(WHITE), hex_color(POSITIVE), hex_color(NEGATIVE)
    if mode == "signed":
        gradient, ends = f"{blue}, {white}, {red}", ("negative", "positive")
    else:
        gradient, ends = f"{white}, {red}", ("0", "largest |a|")
    bar = f'<span class="legend" style="background: linear-gradient(to right, {gradient})"></span>'
    return f"Colours: {ends[0]}{bar}{ends[1]}, scaled per example and input."


# --------------------------------------------------------------------------- panels


def _image(panel: Panel) -> str:
    data = base64.b64encode(panel_png(panel)).decode("ascii")
    alt = f"{panel.spec.name}: attribution of example {panel.example.index}"
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _scale(panel: Panel) -> str:
    hidden = f", {panel.padding} padding tokens greyed" if panel.padding else ""
    return (
        f'<div class="scale">{_e(mode_text(panel.mode, panel.spec))}, colour extremes '
        f"{_e(scale_text(panel))}{_e(hidden)}</div>"
    )


def token_span(panel: Panel, position: int) -> str:
    """One token as a ``<span>``: coloured by its value, or greyed for padding."""
    label = panel.labels[position] or "\u2205"
    token = panel.ids[position] if panel.ids else position
    where = f"position {position} · id {token}"
    if panel.mask is not None and not panel.mask[position]:
        return f'<span class="tok pad" title="{_e(where)} · padding">{_e(label)}</span>'
    value = float(panel.values[position])
    fill = ramp_color(value, panel.limit, panel.mode)
    style = f"background:{hex_color(fill)};color:{text_color(fill)}"
    return (
        f'<span class="tok" style="{style}" data-value="{value:.6g}" '
        f'title="{_e(where)} · {value:.4g}">{_e(label)}</span>'
    )


def _tokens(panel: Panel) -> str:
    spans = " ".join(token_span(panel, i) for i in range(len(panel.labels)))
    return f'{_scale(panel)}<div class="tokens">{spans}</div>'


def _bar(value: float, limit: float, mode: Mode) -> str:
    width = f"{min(100.0, 100.0 * abs(value) / limit):.1f}%"
    colour = hex_color(ramp_color(math.copysign(1.0, value), 1.0, mode))
    bar = f'<span style="width:{width};background:{colour}"></span>'
    negative, positive = (bar, "") if value < 0 else ("", bar)
    return (
        f'<div class="bar"><div class="neg">{negative}</div><div class="pos">{positive}</div></div>'
    )


def _features(panel: Panel) -> str:
    shown, rest = order_features(panel.values, MAX_FEATURES)
    flat = panel.values.reshape(-1)
    rows = "".join(
        f"<tr><td>feature {i}</td><td>{_number(float(flat[i]))}</td>"
        f"<td>{_bar(float(flat[i]), panel.limit, panel.mode)}</td></tr>"
        for i in shown
    )
    more = f"<tr><td colspan=3>+ {rest} more features</td></tr>" if rest else ""
    heading = "<tr><th>feature</th><th>value</th><th></th></tr>"
    return f"{_scale(panel)}<table>{heading}{rows}{more}</table>"


def _top(panel: Panel, found: InputAttribution | None) -> str:
    """The report's largest positions of this example and input, on one line."""
    if found is None or not found.top:
        return ""
    items = []
    for item in found.top:
        where = "(" + ", ".join(str(p) for p in item.position) + ")"
        label = _top_label(panel, item.position)
        shown = f"{where} {label!r}" if label is not None else where
        items.append(f"<b>{_e(shown)}</b> {_number(item.value)}")
    return f'<div class="top">largest by |value|: {" · ".join(items)}</div>'


def _top_label(panel: Panel, position: tuple[int, ...]) -> str | None:
    """The token at a position of a token panel, else ``None``."""
    if panel.spec.kind != "tokens" or len(position) != 1:
        return None
    index = position[0]
    return panel.labels[index] if 0 <= index < len(panel.labels) else None


def _panel(panel: Panel) -> str:
    kind = panel.spec.kind
    body = (
        _tokens(panel)
        if kind == "tokens"
        else _features(panel)
        if kind == "tabular"
        else _image(panel)
    )
    through = f" (through {panel.spec.through})" if panel.spec.through else ""
    found = next((a for a in panel.example.inputs if a.name == panel.spec.name), None)
    return f"<h3>{_e(panel.spec.name + through)}</h3>{body}{_top(panel, found)}"


def _example(report: AttributeReport, row: list[Panel]) -> str:
    example = row[0].example
    facts = [_e(example_title(report, example))]
    if example.baseline_score is not None:
        facts.append(f"baseline score {_number(example.baseline_score)}")
    error = example.completeness_error
    if error is not None:
        text = f"completeness error {error:.2%}"
        facts.append(f'<span class="warn">{text}</span>' if error > COMPLETENESS_WARNING else text)
    return f"<section><h2>{' · '.join(facts)}</h2>{''.join(_panel(p) for p in row)}</section>\n"


def render_page(report: AttributeReport, rows: Sequence[list[Panel]]) -> str:
    """The whole page, as text."""
    title = _e(f"gradscope attribute: {report.model.name}")
    body = _header(report, len(rows)) + "".join(_example(report, row) for row in rows)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def write_html(
    report: AttributeReport,
    path: str | Path,
    *,
    force: bool = False,
    max_examples: int = MAX_EXAMPLES,
    vocabulary: Sequence[str] | None = None,
) -> int:
    """Write the page of ``report``'s first ``max_examples`` examples to ``path``;
    return how many examples it shows.

    ``report.tensors`` must be set (``keep_tensors=True``).  Pictures (every kind but
    ``tokens`` and ``tabular``) need matplotlib.  An existing file is overwritten only
    with ``force``.
    """
    target, rows = prepare(
        report,
        path,
        OPTION,
        SUFFIXES,
        force=force,
        max_examples=max_examples,
        vocabulary=vocabulary,
    )
    if any(spec.kind in IMAGE_KINDS for spec in report.inputs):
        ensure_available(OPTION)
    page = render_page(report, rows)
    try:
        with atomic_path(target) as temporary:
            temporary.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{OPTION} {target}: cannot write the file: {exc}") from exc
    return len(rows)


__all__ = ["OPTION", "SUFFIXES", "render_page", "token_span", "write_html"]
