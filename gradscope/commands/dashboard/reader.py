"""Reading the JSON Lines of :class:`gradscope.keras.GradientMonitor` (``gradscope.monitor/1``).

One line is one :class:`MonitorRecord` (``docs/monitor_schema.md``): where in ``fit`` it
was taken (:class:`FitPosition`), Keras's ``logs``, the learning rate, the instruments
asked for, and the parts of the nested inspect report the dashboard reads
(:class:`ProbeReport`: the loss, the global gradient norm, each variable's gradient norm
and layer, and the health findings).  Every record type has ``from_dict``/``to_dict``;
``null`` (a value that is not finite or not available) reads as ``None`` and is written
back as ``null``.

:func:`read_run` reads a whole file into a :class:`MonitorRun`.  Bad data is one
:class:`~gradscope.errors.DataLoadError` line (exit code 4) naming the file, the line and
the key, what was expected and ``Received: ...``.  A last line that is cut off (no
trailing newline, not parseable) is skipped with a note: training may still be writing
the file.  Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ..._reading import ABSENT, Fields, Found
from ...errors import DataLoadError, received
from ...monitor import MONITOR_SCHEMA
from ...monitor.results import (
    INSTRUMENT_TYPES,
    INSTRUMENTS,
    Alignment,
    BatchTests,
    Sharpness,
    TraceStat,
    UpdateSizes,
)

INSPECT_SCHEMA = "gradscope.inspect/1"
TRIGGERS: tuple[str, ...] = ("batch", "epoch")

EXPECTED_LINE = f"a JSON object of schema '{MONITOR_SCHEMA}' (a line of GradientMonitor(jsonl=...))"


# --- helpers ------------------------------------------------------------------------------


def _nullable(f: Fields, key: str, *, norm: bool = False) -> float | None:
    """A key that must be there: a finite number, or ``null`` (read as ``None``)."""
    if f.get(key) is ABSENT:
        f.fail(key, "a non-negative number or null" if norm else "a number or null", ABSENT)
    return f.optional_number(key, norm=norm)


def _nullable_int(f: Fields, key: str) -> int | None:
    """A key that must be there: an integer, or ``null``."""
    if f.get(key) is ABSENT:
        f.fail(key, "an integer or null", ABSENT)
    return f.optional_int(key)


def _present(f: Fields, key: str, expected: str) -> Any:
    """The raw value of a key that must be there (``null`` allowed)."""
    value = f.get(key)
    if value is ABSENT:
        f.fail(key, expected, ABSENT)
    return value


# --- instruments --------------------------------------------------------------------------


Instrument = UpdateSizes | Alignment | BatchTests | Sharpness | TraceStat
"""The values of one instrument (:mod:`gradscope.monitor.results`)."""


# --- the nested inspect report ------------------------------------------------------------


@dataclass(frozen=True)
class ProbeVariable:
    """One trainable variable of the probe report: its path, layer and ‖g‖.

    ``has_grad`` is false for a variable without a gradient (``grad: null``);
    ``grad_l2`` is ``None`` then, or when the norm was not finite.
    """

    path: str
    layer: str
    grad_l2: float | None
    has_grad: bool = True

    @classmethod
    def from_dict(cls, f: Fields) -> ProbeVariable:
        grad = f.optional_object("grad")
        if grad is None:
            return cls(f.text("path"), f.text("layer"), None, has_grad=False)
        return cls(f.text("path"), f.text("layer"), _nullable(grad, "l2", norm=True))

    def to_dict(self) -> dict[str, Any]:
        grad = {"l2": self.grad_l2} if self.has_grad else None
        return {"path": self.path, "layer": self.layer, "grad": grad}


@dataclass(frozen=True)
class ProbeFinding:
    """One health finding of the probe report: its kind, where and what it says.

    ``target`` is the finding's ``target``; reports that name their targets in a
    ``where`` list (``gradscope.inspect/1`` of this version) give them joined by ``, ``.
    """

    kind: str
    target: str
    message: str
    severity: str | None = None

    @classmethod
    def from_dict(cls, f: Fields) -> ProbeFinding:
        if f.get("target") is ABSENT and f.get("where") is not ABSENT:
            target = ", ".join(f.texts("where"))
        else:
            target = f.text("target")
        return cls(f.text("kind"), target, f.text("message"), f.optional_text("severity"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.severity is not None:
            out["severity"] = self.severity
        return {**out, "target": self.target, "message": self.message}


@dataclass(frozen=True)
class ProbeReport:
    """What the dashboard reads of a record's inspect report (schema
    ``gradscope.inspect/1``); ``to_dict`` writes only these keys."""

    loss: float | None
    global_grad_norm: float | None
    variables: tuple[ProbeVariable, ...]
    findings: tuple[ProbeFinding, ...]

    @classmethod
    def from_dict(cls, f: Fields) -> ProbeReport:
        schema = f.get("schema")
        if schema != INSPECT_SCHEMA:
            f.fail("schema", repr(INSPECT_SCHEMA), schema)
        health = f.object("health")
        return cls(
            loss=_nullable(f.object("loss"), "value"),
            global_grad_norm=_nullable(f, "global_grad_norm", norm=True),
            variables=tuple(ProbeVariable.from_dict(row) for row in f.objects("variables")),
            findings=tuple(ProbeFinding.from_dict(row) for row in health.objects("findings")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": INSPECT_SCHEMA,
            "loss": {"value": self.loss},
            "global_grad_norm": self.global_grad_norm,
            "variables": [row.to_dict() for row in self.variables],
            "health": {
                "ok": not self.findings,
                "findings": [finding.to_dict() for finding in self.findings],
            },
        }


# --- one record ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FitPosition:
    """Where in ``fit`` a record was taken (``batch`` is ``None`` at an epoch end)."""

    epoch: int
    batch: int | None
    step: int
    trigger: str

    @classmethod
    def from_dict(cls, f: Fields) -> FitPosition:
        if f.get("batch") is ABSENT:
            f.fail("batch", "a non-negative integer or null", ABSENT)
        batch = f.optional_int("batch")
        if batch is not None and batch < 0:
            f.fail("batch", "a non-negative integer or null", batch)
        return cls(f.count("epoch"), batch, f.count("step"), f.choice("trigger", TRIGGERS))

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "trigger": self.trigger,
        }


def _logs(f: Fields) -> dict[str, float | None]:
    return {key: _nullable(f, key) for key in f.data}


def _instruments(f: Fields, notes: list[str]) -> dict[str, Instrument | None]:
    out: dict[str, Instrument | None] = {}
    for key in f.data:
        if key not in INSTRUMENT_TYPES:
            notes.append(f"instruments.{key}: unknown instrument; ignored")
            continue
        value = f.optional_object(key)
        out[key] = None if value is None else INSTRUMENT_TYPES[key].from_fields(value)
    return out


@dataclass(frozen=True)
class MonitorRecord:
    """One line of ``gradscope.monitor/1``.

    ``instruments`` maps each instrument asked for to its values, or to ``None`` when it
    has none at this record (``update`` and ``alignment`` at the first record); an
    instrument not asked for is not a key.  ``line`` is the record's line number in its
    file (0 when built in memory); it is not part of the record's JSON.
    """

    fit: FitPosition
    logs: dict[str, float | None]
    learning_rate: float | None
    instruments: dict[str, Instrument | None]
    report: ProbeReport
    line: int = field(default=0, compare=False)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "record", notes: list[str] | None = None
    ) -> MonitorRecord:
        """The record ``data`` holds; ``source`` names it in error messages
        (``run.jsonl: line 3``); ``notes`` collects what was ignored (without
        ``source``)."""
        f = Fields(data, source)
        check_schema(f)
        _present(f, "learning_rate", "a number or null")
        return cls(
            fit=FitPosition.from_dict(f.object("fit")),
            logs=_logs(f.object("logs")),
            learning_rate=_nullable(f, "learning_rate"),
            instruments=_instruments(f.object("instruments"), [] if notes is None else notes),
            report=ProbeReport.from_dict(f.object("report")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The record as ``gradscope.monitor/1`` (the report: only what is read)."""
        return {
            "schema": MONITOR_SCHEMA,
            "fit": self.fit.to_dict(),
            "logs": dict(self.logs),
            "learning_rate": self.learning_rate,
            "instruments": {
                key: None if value is None else value.to_dict()
                for key, value in self.instruments.items()
            },
            "report": self.report.to_dict(),
        }

    def to_line(self) -> str:
        """The record as one JSON line, ``\\n`` included."""
        return json.dumps(self.to_dict(), allow_nan=False) + "\n"

    def instrument(self, name: str) -> Instrument | None:
        """The values of instrument ``name`` at this record (``None``: none)."""
        return self.instruments.get(name)


def check_schema(f: Fields) -> None:
    """Refuse an object that is not a ``gradscope.monitor/1`` record, saying what it is."""
    schema = f.get("schema")
    if schema == MONITOR_SCHEMA:
        return
    if schema == INSPECT_SCHEMA:
        f.fail(
            "schema",
            f"{MONITOR_SCHEMA!r}; this line is a bare inspect report, what GradientMonitor "
            "wrote before gradscope.monitor/1: record the run again with this version",
            schema,
        )
    f.fail("schema", repr(MONITOR_SCHEMA), schema)


# --- a whole file -------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorRun:
    """The records of one JSON Lines file, in file order, and notes about reading it."""

    path: str
    records: tuple[MonitorRecord, ...]
    notes: tuple[str, ...] = ()


def _reject_constant(token: str) -> NoReturn:
    raise ValueError(f"{token} is not a JSON value (non-finite numbers are written as null)")


def _read_text(path: Path) -> str:
    what = f"expected a JSON Lines file of schema '{MONITOR_SCHEMA}'"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataLoadError(f"{path}: no such file; {what}. {received(str(path))}") from None
    except IsADirectoryError:
        raise DataLoadError(f"{path}: is a directory; {what}. {received(str(path))}") from None
    except UnicodeDecodeError as exc:
        raise DataLoadError(
            f"{path}: not text (not UTF-8); {what}. {received(f'byte {exc.start}')}"
        ) from None
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot be read; {what}. {received(exc.strerror)}") from None


def _parse(text: str, source: str) -> Any:
    """The JSON of one line; a one-line error when it is not JSON."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        found = Found(f"{exc.msg} at column {exc.colno}: {_cut(text)}")
        Fields({}, source).fail(None, EXPECTED_LINE, found)
    except ValueError as exc:
        Fields({}, source).fail(None, EXPECTED_LINE, Found(str(exc)))


def _cut(text: str, most: int = 40) -> str:
    text = text.strip()
    return repr(text if len(text) <= most else text[: most - 3] + "...")


def parse_line(text: str, source: str, notes: list[str] | None = None) -> MonitorRecord:
    """One JSON line as a :class:`MonitorRecord`; ``source`` names it in errors."""
    data = _parse(text, source)
    if not isinstance(data, dict):
        Fields({}, source).fail(None, EXPECTED_LINE, Found(f"a JSON {type(data).__name__}"))
    return MonitorRecord.from_dict(data, source, notes)


def _incomplete(text: str) -> bool:
    """Whether a last line without its newline is cut off (not parseable JSON)."""
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def read_records(lines: Iterable[str], name: str) -> MonitorRun:
    """The records of ``lines`` (each ending in ``\\n`` but perhaps the last), read as the
    file ``name``.  Blank lines are skipped; a cut-off last line is skipped with a note."""
    records: list[MonitorRecord] = []
    notes: list[str] = []
    ignored: dict[str, list[int]] = {}
    rows = list(lines)
    for number, text in enumerate(rows, start=1):
        if not text.strip():
            continue
        source = f"{name}: line {number}"
        last = number == len(rows) and not text.endswith("\n")
        if last and _incomplete(text):
            notes.append(
                f"{name}: line {number} is incomplete (training may still be writing the "
                "file); skipped"
            )
            continue
        found: list[str] = []
        record = parse_line(text, source, found)
        for message in found:
            ignored.setdefault(message, []).append(number)
        records.append(dataclasses.replace(record, line=number))
    notes[:0] = [_ignored_note(name, message, at) for message, at in ignored.items()]
    if not records:
        what = "only an incomplete line" if rows and any(r.strip() for r in rows) else "empty file"
        raise DataLoadError(
            f"{name}: {what}; expected at least one record of schema '{MONITOR_SCHEMA}'. "
            f"{received(f'{len(rows)} line(s)')}"
        )
    return MonitorRun(name, tuple(records), tuple(notes))


def _ignored_note(name: str, message: str, lines: list[int]) -> str:
    """One note for what every line of ``lines`` had ignored."""
    if len(lines) == 1:
        return f"{name}: line {lines[0]}: {message}"
    return f"{name}: lines {lines[0]}..{lines[-1]} ({len(lines)} lines): {message}"


def split_lines(text: str) -> list[str]:
    """``text`` cut after each ``\\n`` only (JSON strings may hold other line breaks)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def read_run(path: str | Path) -> MonitorRun:
    """Every record of the JSON Lines file ``path`` (see :func:`read_records`)."""
    target = Path(path)
    text = _read_text(target)
    return read_records(split_lines(text), str(path))


def write_lines(records: Iterable[MonitorRecord]) -> str:
    """``records`` as JSON Lines text (each line ends in ``\\n``)."""
    return "".join(record.to_line() for record in records)


__all__ = [
    "INSPECT_SCHEMA",
    "INSTRUMENTS",
    "MONITOR_SCHEMA",
    "FitPosition",
    "Instrument",
    "MonitorRecord",
    "MonitorRun",
    "ProbeFinding",
    "ProbeReport",
    "ProbeVariable",
    "parse_line",
    "read_records",
    "read_run",
    "write_lines",
]
