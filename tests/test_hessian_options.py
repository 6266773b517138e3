"""``HessianOptions``: every field validated once, by the library, for Python and the CLI.

A bad value is a :class:`UsageError` with a Keras-style message when the options are
built; the CLI shows the very same line with exit code 2, and its option defaults are
the library's.  None of these tests loads a model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.commands.hessian.options import (
    DEFAULT_SEED,
    HessianOptions,
    defaults,
    resolve_seed,
)
from gradscope.errors import ExitCode, UsageError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"

BAD_FIELDS: list[tuple[str, Any, str]] = [
    ("method", "lanczoss", "Received: method='lanczoss'; expected one of auto, exact, lanczos"),
    ("block", "layers", "Received: block='layers'; expected one of variable, layer, model"),
    ("hvp", "fwd", "Received: hvp='fwd'; expected one of reverse, forward"),
    ("top_k", 0, "top_k: expected an integer >= 1. Received: top_k=0"),
    ("top_k", 2.5, "top_k: expected an integer. Received: top_k=2.5"),
    ("max_iter", 0, "max_iter: expected an integer >= 1. Received: max_iter=0"),
    ("probes", -3, "probes: expected an integer >= 1. Received: probes=-3"),
    ("tol", 0.0, "tol: expected a positive number. Received: tol=0.0"),
    ("tol", float("nan"), "tol: expected a positive number. Received: tol=nan"),
    ("max_memory", 0, "max_memory: expected an integer >= 1. Received: max_memory=0"),
    ("seed", -1, "seed: expected an integer >= 0. Received: seed=-1"),
    ("trace", "yes", "trace: expected True or False. Received: trace='yes'"),
    ("cross", 1, "cross: expected True or False. Received: cross=1"),
    ("diagonal", "no", "diagonal: expected True or False. Received: diagonal='no'"),
    (
        "matrix",
        "gn",
        "Received: matrix='gn'; expected one of hessian, ggn, fisher, empirical-fisher",
    ),
    ("mc_samples", 0, "mc_samples: expected an integer >= 1. Received: mc_samples=0"),
    ("mc_samples", 257, "mc_samples: expected an integer <= 256. Received: mc_samples=257"),
    (
        "variables",
        "",
        "--vars: expected comma-separated globs, such as 'dense_1/*,kernel'. Received: --vars=''",
    ),
]


SELECTOR_OPTIONS = {"variables": "--vars", "layers": "--layers"}


@pytest.mark.parametrize(("name", "value", "message"), BAD_FIELDS)
def test_every_field_is_validated_when_built(name: str, value: Any, message: str) -> None:
    with pytest.raises(UsageError) as built:
        HessianOptions(**{name: value})
    assert message in str(built.value)
    # named as the user knows it: the field, or the CLI option for the selectors
    assert str(built.value).startswith((f"{name}: ", f"{SELECTOR_OPTIONS.get(name)}: "))
    # dataclasses.replace builds a new object: the same check applies.
    with pytest.raises(UsageError, match="Received: "):
        dataclasses.replace(HessianOptions(), **{name: value})


def test_the_seed_keyword_is_validated_too() -> None:
    import gradscope

    with pytest.raises(UsageError, match=r"^seed: expected an integer >= 0. Received: seed=-1$"):
        gradscope.hessian(object(), seed=-1)


CLI_CASES: list[tuple[list[str], dict[str, Any]]] = [
    (["--method", "lanczoss"], {"method": "lanczoss"}),
    (["--block", "layers"], {"block": "layers"}),
    (["--hvp", "fwd"], {"hvp": "fwd"}),
    (["--matrix", "gn"], {"matrix": "gn"}),
    (["--mc-samples", "0"], {"mc_samples": 0}),
    (["--probes", "0"], {"probes": 0}),
    (["--top-k", "0"], {"top_k": 0}),
    (["--max-iter", "0"], {"max_iter": 0}),
    (["--tol", "0"], {"tol": 0.0}),
    (["--tol", "-1e-3"], {"tol": -1e-3}),
    (["--seed", "-1"], {"seed": -1}),
]


@pytest.mark.parametrize(("args", "fields"), CLI_CASES)
def test_cli_shows_the_library_message(args: list[str], fields: dict[str, Any]) -> None:
    with pytest.raises(UsageError) as expected:
        HessianOptions(**fields)
    result = CliRunner().invoke(app, ["hessian", str(SAMPLES / "mlp.keras"), *args])
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert result.stderr.splitlines() == [f"gradscope: error: {expected.value}"]
    assert result.stdout == ""


def _hessian_parameters() -> dict[str, Any]:
    command = typer.main.get_command(app)
    return {p.name: p for p in command.commands["hessian"].params}  # type: ignore[attr-defined]


def test_cli_defaults_are_the_library_defaults() -> None:
    """Every field is a CLI option, with the dataclass default."""
    parameters = _hessian_parameters()
    library = defaults()
    fields = {f.name for f in dataclasses.fields(HessianOptions)}
    assert fields - set(parameters) == set()
    for name in sorted(fields - {"seed", "max_memory"}):
        assert parameters[name].default == library[name], name
    assert library["seed"] is None
    assert parameters["seed"].default == DEFAULT_SEED
    # max_memory: no CLI default either; the library computes it from the machine.
    assert parameters["max_memory"].default is None
    assert "max_memory" not in library


def test_cli_choices_are_case_insensitive_as_before() -> None:
    parameters = _hessian_parameters()
    assert parameters["method"].default == "auto"
    result = CliRunner().invoke(
        app, ["hessian", str(SAMPLES / "mlp.keras"), "--method", "LANCZOSS"]
    )
    assert result.stderr.splitlines() == [
        "gradscope: error: method: unknown value. Received: method='lanczoss'; "
        "expected one of auto, exact, lanczos"
    ]


@pytest.mark.parametrize(
    ("options", "seed", "expected"),
    [
        (None, None, DEFAULT_SEED),
        (None, 7, 7),
        (HessianOptions(seed=7), None, 7),
        (HessianOptions(seed=7), 7, 7),
    ],
)
def test_one_seed(options: HessianOptions | None, seed: int | None, expected: int) -> None:
    resolved, chosen = resolve_seed(options, seed)
    assert chosen == resolved.seed == expected


def test_two_different_seeds_are_refused() -> None:
    with pytest.raises(UsageError, match=r"Received: seed=7, options.seed=3$"):
        resolve_seed(HessianOptions(seed=3), 7)


def test_old_module_paths_still_work_with_a_warning() -> None:
    """``gradscope.curvature`` and ``gradscope.render.hessian`` moved; reading a name from
    them warns and returns the new object.  ``gradscope.report`` stays public: no warning."""
    import warnings

    import gradscope.curvature
    import gradscope.render.hessian
    import gradscope.report
    from gradscope.commands.hessian import HessianReport, render, run

    with pytest.warns(DeprecationWarning, match="gradscope.curvature is deprecated"):
        assert gradscope.curvature.hessian_file is run.hessian_file
    with pytest.warns(DeprecationWarning, match="gradscope.curvature is deprecated"):
        assert gradscope.curvature.HessianOptions is HessianOptions
    with pytest.warns(DeprecationWarning, match="gradscope.render.hessian is deprecated"):
        assert gradscope.render.hessian.format_csv is render.format_csv
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gradscope.report.HessianReport is HessianReport
        assert gradscope.HessianReport is HessianReport
    with pytest.raises(AttributeError):
        _ = gradscope.curvature.no_such_name  # type: ignore[attr-defined]
