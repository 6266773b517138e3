"""Compare two saved ``inspect`` reports: what changed between two checkpoints or runs.

``gradscope diff A.json B.json`` reads two JSON reports of schema ``gradscope.inspect/1``
(``gradscope inspect --format json``) and says, per variable and per layer output
(matched by ``path``), by which factor the gradient norms moved from A to B, which
tensors appeared or disappeared, and which became non-finite (or recovered).  It only
reads JSON: nothing here imports TensorFlow, so a CI job can diff reports cheaply.

The reports are read with :meth:`gradscope.report.Report.from_dict`; the result is a
:class:`~gradscope.commands.diff.report.DiffReport`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from gradscope.commands.diff.report import (
    ActivationDiff,
    Change,
    CheckResult,
    Checks,
    DiffReport,
    LossChange,
    NonfiniteChange,
    Presence,
    ReportSide,
    TensorKind,
    TopChange,
    VariableDiff,
)
from gradscope.commands.inspect.report import SCHEMA as INSPECT_SCHEMA
from gradscope.commands.inspect.report import ActivationRow, InputRow, Report, VariableRow
from gradscope.errors import DataLoadError, UsageError, received
from gradscope.report import TensorStats, finite_or_none

__all__ = [
    "FAIL_CONDITIONS",
    "change",
    "diff_files",
    "diff_reports",
    "load_report",
    "parse_fail_on",
]

FAIL_CONDITIONS: tuple[str, ...] = ("nonfinite", "ratio", "added", "removed")
"""What ``--fail-on`` can name: a tensor newly non-finite in B; a variable whose gradient
norm moved by more than ``max_ratio`` either way; a tensor only in B; a tensor only in A."""

# --- ratios -----------------------------------------------------------------------------


def _state(value: float | None, nonfinite: bool) -> str:
    """``nonfinite``, ``missing``, ``zero`` or ``ok`` for one side of a ratio."""
    if value is None:
        return "nonfinite" if nonfinite else "missing"
    return "zero" if value == 0 else "ok"


def _reason(state_a: str, state_b: str) -> str | None:
    """The reason code of a pair of states; the worst problem wins (non-finite first)."""
    for state in ("nonfinite", "missing", "zero"):
        if state_a == state and state_b == state:
            return f"{state}_both"
        if state_a == state:
            return f"{state}_a"
        if state_b == state:
            return f"{state}_b"
    return None


def change(
    a: float | None, b: float | None, *, a_nonfinite: bool = False, b_nonfinite: bool = False
) -> Change:
    """The change of a non-negative norm from ``a`` to ``b``.

    ``None`` is a missing value; ``*_nonfinite`` says it is missing because the tensor
    held NaN/Inf (the inspect JSON writes those as ``null``).  ``log10_ratio`` is
    ``log10(b) - log10(a)``, which cannot overflow even when ``b / a`` does.
    """
    reason = _reason(_state(a, a_nonfinite), _state(b, b_nonfinite))
    if reason is not None or a is None or b is None:  # a reason whenever one is None
        return Change(a, b, 0.0 if reason == "zero_b" else None, None, reason)
    log10_ratio = math.log10(b) - math.log10(a)
    ratio = b / a
    if not math.isfinite(ratio):
        return Change(a, b, None, log10_ratio, "overflow")
    return Change(a, b, ratio, log10_ratio)


def _loss_change(a: float | None, b: float | None) -> LossChange:
    """Loss values are always computed, so a ``null`` loss means a non-finite one."""
    reason = _reason(_state(a, True), _state(b, True))
    if a is None or b is None:
        return LossChange(a, b, None, reason)
    delta = b - a
    return LossChange(a, b, delta, None if math.isfinite(delta) else "overflow")


# --- reading an inspect report -----------------------------------------------------------


@dataclass(frozen=True)
class _Stats:
    """The two numbers of a statistics object the diff uses."""

    l2: float | None
    nonfinite: int


@dataclass(frozen=True)
class _Tensor:
    """One row of an inspect report, reduced to what the diff compares."""

    kind: TensorKind
    path: str
    layer: str
    layer_class: str
    shape: tuple[int, ...]
    grad: _Stats | None
    value: _Stats | None = None
    weight_l2: float | None = None
    ratio: float | None = None


@dataclass(frozen=True)
class _Parsed:
    """A validated inspect report."""

    side: ReportSide
    loss: float | None
    global_grad_norm: float | None
    variables: dict[str, _Tensor]
    activations: dict[str, _Tensor]
    inputs: dict[str, _Tensor]


def _stats(stats: TensorStats | None) -> _Stats | None:
    return None if stats is None else _Stats(finite_or_none(stats.l2), stats.nonfinite)


def _side(report: Report, file: str | None) -> ReportSide:
    """What the report describes: the notes compare these between A and B."""
    model, batch = report.model, report.batch
    return ReportSide(
        file=file,
        model=model.name,
        model_path=model.path,
        batch_source=batch.source,
        batch_path=batch.path,
        batch_size=batch.size,
        batch_seed=batch.seed,
        loss_source=report.loss.source,
        training=report.training,
    )


def _variable(row: VariableRow) -> _Tensor:
    return _Tensor(
        kind="variable",
        path=row.path,
        layer=row.layer,
        layer_class=row.layer_class,
        shape=row.shape,
        grad=_stats(row.grad),
        weight_l2=finite_or_none(row.weight_l2),
        ratio=finite_or_none(row.ratio),
    )


def _activation(row: ActivationRow) -> _Tensor:
    return _Tensor(
        kind="activation",
        path=row.path,
        layer=row.path,
        layer_class=row.layer_class,
        shape=row.shape,
        grad=_stats(row.grad),
        value=_stats(row.value),
    )


def _input(row: InputRow) -> _Tensor:
    return _Tensor("input", row.name, "", "", row.shape, _stats(row.grad))


def _keyed(tensors: Iterable[_Tensor]) -> dict[str, _Tensor]:
    """Rows keyed by path, in report order; a repeated path gets ``#2``, ``#3``, ... ."""
    out: dict[str, _Tensor] = {}
    for tensor in tensors:
        name, n = tensor.path, 1
        while name in out:
            n += 1
            name = f"{tensor.path}#{n}"
        out[name] = tensor
    return out


def _parse(doc: Any, name: str, file: str | None) -> _Parsed:
    """Read ``doc`` as an inspect report (:meth:`Report.from_dict`, which names ``name``
    in its errors) and keep what the diff compares."""
    report = Report.from_dict(doc, source=name)
    return _Parsed(
        side=_side(report, file),
        loss=finite_or_none(report.loss.value),
        global_grad_norm=finite_or_none(report.global_grad_norm),
        variables=_keyed(map(_variable, report.variables)),
        activations=_keyed(map(_activation, report.activations)),
        inputs=_keyed(map(_input, report.inputs)),
    )


def _reject_constant(token: str) -> NoReturn:
    raise ValueError(f"{token} is not a JSON value")


def load_report(path: str | Path) -> Any:
    """The parsed JSON of ``path``; a missing, unreadable or invalid file is a
    :class:`DataLoadError` (exit code 4) naming it.  NaN/Infinity literals are refused:
    gradscope never writes them, so they mean the file was made by something else."""
    expected = f"a JSON report of schema '{INSPECT_SCHEMA}' (gradscope inspect --format json)"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataLoadError(f"{path}: no such file; expected {expected}.") from None
    except IsADirectoryError:
        raise DataLoadError(f"{path}: is a directory; expected {expected}.") from None
    except UnicodeDecodeError:
        raise DataLoadError(f"{path}: not text (not UTF-8); expected {expected}.") from None
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot be read ({exc.strerror}).") from None
    if not text.strip():
        raise DataLoadError(f"{path}: empty file; expected {expected}.")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise DataLoadError(f"{path}: not valid JSON ({where}); expected {expected}.") from None
    except ValueError as exc:
        raise DataLoadError(f"{path}: not valid JSON ({exc}); expected {expected}.") from None


# --- comparing --------------------------------------------------------------------------


def _grad_change(a: _Tensor, b: _Tensor) -> Change:
    return _stats_change(a.grad, b.grad)


def _stats_change(a: _Stats | None, b: _Stats | None) -> Change:
    return change(
        None if a is None else a.l2,
        None if b is None else b.l2,
        a_nonfinite=a is not None and a.nonfinite > 0,
        b_nonfinite=b is not None and b.nonfinite > 0,
    )


def _shape_note(a: _Tensor, b: _Tensor, *, batched: bool = False) -> str | None:
    """A note when the shapes differ; ``batched`` ignores the first (batch) dimension,
    whose change the notes already report once as a different batch size."""
    skip = 1 if batched else 0
    if a.shape[skip:] == b.shape[skip:]:
        return None
    return f"shape changed: {_shape_text(a.shape)} -> {_shape_text(b.shape)}"


def _shape_text(shape: tuple[int, ...]) -> str:
    """``20x64`` (``scalar`` for rank 0), as the inspect table writes shapes."""
    return "x".join(map(str, shape)) or "scalar"


def _ratio_nonfinite(t: _Tensor) -> bool:
    """Whether a ``null`` ‖g‖/‖w‖ comes from NaN/Inf (rather than from ‖w‖ = 0)."""
    return t.weight_l2 is None or (t.grad is not None and t.grad.nonfinite > 0)


def _variable_diff(path: str, a: _Tensor, b: _Tensor) -> VariableDiff:
    """Gradient norm, weight norm and ‖g‖/‖w‖ of a variable in both reports.

    A ``null`` weight norm is a non-finite one (inspect always computes it); a ``null``
    ‖g‖/‖w‖ is non-finite when the gradient or the weights are, missing otherwise (‖w‖=0).
    """
    return VariableDiff(
        path=path,
        layer=b.layer,
        layer_class=b.layer_class,
        shape=b.shape,
        grad_l2=_grad_change(a, b),
        weight_l2=change(a.weight_l2, b.weight_l2, a_nonfinite=True, b_nonfinite=True),
        grad_weight_ratio=change(
            a.ratio, b.ratio, a_nonfinite=_ratio_nonfinite(a), b_nonfinite=_ratio_nonfinite(b)
        ),
        note=_shape_note(a, b),
    )


def _activation_diff(path: str, a: _Tensor, b: _Tensor) -> ActivationDiff:
    return ActivationDiff(
        path=path,
        layer_class=b.layer_class,
        shape=b.shape,
        grad_l2=_grad_change(a, b),
        value_l2=_stats_change(a.value, b.value),
        note=_shape_note(a, b, batched=True),
    )


def _matched(
    a: Mapping[str, _Tensor], b: Mapping[str, _Tensor]
) -> list[tuple[str, _Tensor, _Tensor]]:
    """The paths in both, in A's order."""
    return [(path, row, b[path]) for path, row in a.items() if path in b]


def _presence(only_in: Mapping[str, _Tensor], other: Mapping[str, _Tensor]) -> list[Presence]:
    return [Presence(t.kind, path) for path, t in only_in.items() if path not in other]


def _nonfinite_count(stats: _Stats | None) -> int:
    return 0 if stats is None else stats.nonfinite


def _transitions(
    a: Mapping[str, _Tensor], b: Mapping[str, _Tensor]
) -> tuple[list[NonfiniteChange], list[NonfiniteChange]]:
    """Tensors newly non-finite in B (count 0 or absent in A, > 0 in B), and recovered
    ones (> 0 in A, 0 in B), for gradients and layer-output values."""
    new: list[NonfiniteChange] = []
    recovered: list[NonfiniteChange] = []
    for path, tb in b.items():
        ta = a.get(path)
        for quantity in ("grad", "value"):
            sa = None if ta is None else getattr(ta, quantity)
            sb = getattr(tb, quantity)
            count_a = None if sa is None else sa.nonfinite
            count_b = None if sb is None else sb.nonfinite
            if _nonfinite_count(sa) == 0 and _nonfinite_count(sb) > 0:
                new.append(NonfiniteChange(tb.kind, path, quantity, count_a, count_b))
            elif _nonfinite_count(sa) > 0 and sb is not None and sb.nonfinite == 0:
                recovered.append(NonfiniteChange(tb.kind, path, quantity, count_a, count_b))
    return new, recovered


def _top(
    variables: Sequence[VariableDiff], activations: Sequence[ActivationDiff], n: int
) -> list[TopChange]:
    """The ``n`` largest non-zero ``|log10 ratio|`` of gradient, weight and activation
    norms; changes from or to zero rank first; ties keep report order."""
    candidates: list[TopChange] = []
    for v in variables:
        candidates.append(TopChange("variable", v.path, "grad_l2", v.grad_l2))
        candidates.append(TopChange("variable", v.path, "weight_l2", v.weight_l2))
    for act in activations:
        candidates.append(TopChange("activation", act.path, "grad_l2", act.grad_l2))
        candidates.append(TopChange("activation", act.path, "value_l2", act.value_l2))
    ranked = sorted(
        (c for c in candidates if c.change.magnitude > 0), key=lambda c: -c.change.magnitude
    )
    return ranked[:n]


def _unique(paths: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(paths))


def _checks(
    fail_on: tuple[str, ...],
    max_ratio: float,
    variables: Sequence[VariableDiff],
    fired: Mapping[str, Iterable[str]],
) -> Checks:
    """Every condition of :data:`FAIL_CONDITIONS`, with the paths that make it fire."""
    by_condition = {**fired, "ratio": (v.path for v in variables if v.grad_l2.beyond(max_ratio))}
    results = []
    for condition in FAIL_CONDITIONS:
        paths = _unique(by_condition[condition])
        results.append(CheckResult(condition, condition in fail_on, bool(paths), paths))
    return Checks(fail_on, max_ratio, tuple(results))


def _notes(a: ReportSide, b: ReportSide) -> list[str]:
    """How the two runs differ besides their numbers (model, batch, loss, mode)."""
    fields = (
        ("model", a.model, b.model),
        ("loss", a.loss_source, b.loss_source),
        ("batch source", a.batch_source, b.batch_source),
        ("batch file", a.batch_path, b.batch_path),
        ("batch size", a.batch_size, b.batch_size),
        ("batch seed", a.batch_seed, b.batch_seed),
        ("mode", _mode(a), _mode(b)),
    )
    return [f"{what} differs: A {va} vs B {vb}" for what, va, vb in fields if va != vb]


def _mode(side: ReportSide) -> str:
    return "training" if side.training else "inference"


def parse_fail_on(text: str | None) -> tuple[str, ...]:
    """``--fail-on``'s comma-separated list, validated (case-insensitive, duplicates dropped)."""
    if text is None:
        return ()
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in FAIL_CONDITIONS]
    if unknown or not names:
        raise UsageError(
            f"--fail-on: expected a comma-separated list of {', '.join(FAIL_CONDITIONS)}. "
            f"{received(repr(text))}"
        )
    return tuple(dict.fromkeys(names))


def _check_options(top: int, max_ratio: float, fail_on: Sequence[str]) -> None:
    if top < 0:
        raise UsageError(f"--top: expected a number >= 0. {received(top)}")
    if math.isnan(max_ratio) or max_ratio < 1:
        raise UsageError(f"--max-ratio: expected a factor >= 1. {received(max_ratio)}")
    unknown = [name for name in fail_on if name not in FAIL_CONDITIONS]
    if unknown:
        raise UsageError(
            f"--fail-on: expected some of {', '.join(FAIL_CONDITIONS)}. {received(unknown)}"
        )


def diff_reports(
    a: Any,
    b: Any,
    *,
    top: int = 10,
    max_ratio: float = 10.0,
    fail_on: Sequence[str] = (),
    sources: tuple[str | None, str | None] = (None, None),
) -> DiffReport:
    """Compare two inspect reports given as parsed JSON (``Report.to_dict()`` output).

    ``top`` is how many of the largest changes to list; ``max_ratio`` the factor beyond
    which a variable's gradient norm change fires the ``ratio`` check; ``fail_on`` the
    checks that make :attr:`Checks.failed` true; ``sources`` the files the reports came
    from (named in errors and in the report).  A report that is not a valid
    ``gradscope.inspect/1`` document raises :class:`DataLoadError`.
    """
    _check_options(top, max_ratio, fail_on)
    pa = _parse(a, sources[0] or "A", sources[0])
    pb = _parse(b, sources[1] or "B", sources[1])
    variables = [_variable_diff(p, ta, tb) for p, ta, tb in _matched(pa.variables, pb.variables)]
    activations = [
        _activation_diff(p, ta, tb) for p, ta, tb in _matched(pa.activations, pb.activations)
    ]
    groups = (
        (pa.variables, pb.variables),
        (pa.activations, pb.activations),
        (pa.inputs, pb.inputs),
    )
    added = [p for ga, gb in groups for p in _presence(gb, ga)]
    removed = [p for ga, gb in groups for p in _presence(ga, gb)]
    new: list[NonfiniteChange] = []
    recovered: list[NonfiniteChange] = []
    for ga, gb in groups:
        group_new, group_recovered = _transitions(ga, gb)
        new += group_new
        recovered += group_recovered
    fired = {
        "nonfinite": (c.path for c in new),
        "added": (p.path for p in added),
        "removed": (p.path for p in removed),
    }
    return DiffReport(
        a=pa.side,
        b=pb.side,
        notes=tuple(_notes(pa.side, pb.side)),
        global_grad_norm=change(
            pa.global_grad_norm, pb.global_grad_norm, a_nonfinite=True, b_nonfinite=True
        ),
        loss=_loss_change(pa.loss, pb.loss),
        variables=tuple(variables),
        activations=tuple(activations),
        added=tuple(added),
        removed=tuple(removed),
        nonfinite_new=tuple(new),
        nonfinite_recovered=tuple(recovered),
        top=tuple(_top(variables, activations, top)),
        checks=_checks(tuple(dict.fromkeys(fail_on)), max_ratio, variables, fired),
    )


def diff_files(
    path_a: str | Path,
    path_b: str | Path,
    *,
    top: int = 10,
    max_ratio: float = 10.0,
    fail_on: Sequence[str] = (),
) -> DiffReport:
    """Compare two saved inspect JSON reports (what ``gradscope diff`` calls).

    Options are checked before the files are read, so a bad option is a usage error
    (exit 2) even when a file is bad too.
    """
    _check_options(top, max_ratio, fail_on)
    doc_a, doc_b = load_report(path_a), load_report(path_b)
    sources = (str(path_a), str(path_b))
    return diff_reports(
        doc_a, doc_b, top=top, max_ratio=max_ratio, fail_on=fail_on, sources=sources
    )
