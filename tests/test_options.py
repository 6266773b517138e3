"""Options objects validate themselves, once, for the CLI and for Python callers.

``InspectOptions`` and ``Thresholds`` (``HessianOptions`` and the check options are
tested with their commands) refuse a bad field when they are made, with one Keras-style
line (``Received: name=value``); the CLI shows that same line with exit code 2, and the
CLI's defaults are the library's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer.main

from gradscope import InspectOptions
from gradscope.cli import app
from gradscope.errors import UsageError
from gradscope.health import Thresholds
from gradscope.validation import fraction, integer, one_of, positive_number
from tests.cli_helpers import error_line

MLP = Path(__file__).resolve().parent.parent / "sample_models" / "mlp.keras"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("rows", 0, "rows: expected an integer >= 1. Received: rows=0"),
        ("rows", 2.5, "rows: expected an integer. Received: rows=2.5"),
        ("training", "yes", "training: expected True or False. Received: training='yes'"),
        ("seed", -1, "seed: expected an integer >= 0. Received: seed=-1"),
        ("batch_size", 0, "batch_size: expected an integer >= 1. Received: batch_size=0"),
        ("max_batches", True, "max_batches: expected an integer. Received: max_batches=True"),
        (
            "layers",
            "  ",
            "--layers: expected comma-separated globs, such as 'dense_1/*,kernel'. "
            "Received: --layers='  '",
        ),
        ("max_memory", -5, "max_memory: expected an integer >= 1. Received: max_memory=-5"),
    ],
)
def test_inspect_options_refuse_bad_fields(field: str, value: object, expected: str) -> None:
    with pytest.raises(UsageError) as caught:
        InspectOptions(**{field: value})  # type: ignore[arg-type]
    assert str(caught.value) == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vanishing_ratio", 0.0),
        ("exploding_norm", -1.0),
        ("exploding_ratio", float("inf")),
        ("stalled_ratio", float("nan")),
        ("dead_fraction", 1.5),
        ("dead_fraction", "half"),
    ],
)
def test_thresholds_refuse_bad_fields(field: str, value: object) -> None:
    with pytest.raises(UsageError, match=rf"^{field}: expected .* Received: {field}="):
        Thresholds(**{field: value})  # type: ignore[arg-type]


def test_validators_accept_the_edges() -> None:
    """The bounds are inclusive where documented, and nothing else is refused."""
    integer("n", 1, minimum=1)
    fraction("f", 0)
    fraction("f", 1.0)
    positive_number("p", 1e-300)
    one_of("m", "exact", ("auto", "exact"))
    with pytest.raises(UsageError, match=r"Received: m='Exact'; expected one of auto, exact"):
        one_of("m", "Exact", ("auto", "exact"))


def test_cli_shows_the_library_message_with_exit_2() -> None:
    message = error_line(["inspect", MLP, "--dead-fraction", "2"], 2)
    assert (
        message == "dead_fraction: expected a number between 0 and 1. Received: dead_fraction=2.0"
    )


def test_cli_threshold_defaults_are_the_library_defaults() -> None:
    """Every ``--<threshold>`` option of ``inspect`` defaults to ``Thresholds()``'s field."""
    command = typer.main.get_command(app).commands["inspect"]  # type: ignore[attr-defined]
    defaults = {param.name: param.default for param in command.params}
    library = dataclasses.asdict(Thresholds())
    assert library  # five thresholds
    for name, value in library.items():
        assert defaults[name] == value, name
