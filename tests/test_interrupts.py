"""Ctrl-C in the middle of the work stops cleanly: exit 130, one line, no file left.
NaN in the data is not an error: the health checks report it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gradscope.aggregate import BatchAccumulator
from gradscope.cli import app
from gradscope.engine.hessian import HessianOperator
from gradscope.errors import ExitCode

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _interrupt_after(calls: int, original: Any) -> Any:
    count = {"n": 0}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    return wrapped


def _interrupted(result: Any, folder: Path) -> None:
    assert result.exit_code == ExitCode.INTERRUPTED, result.stderr
    assert result.stderr.strip().splitlines() == ["gradscope: error: interrupted"]
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == []


def test_ctrl_c_during_lanczos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HessianOperator, "hvp", _interrupt_after(5, HessianOperator.hvp))
    out = tmp_path / "h.h5"
    args = ["hessian", str(SAMPLES / "mlp.keras"), "--method", "lanczos", "--save", str(out)]
    _interrupted(CliRunner().invoke(app, args), tmp_path)


def test_ctrl_c_between_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BatchAccumulator, "add", _interrupt_after(2, BatchAccumulator.add))
    out = tmp_path / "g.h5"
    args = ["inspect", str(SAMPLES / "mlp.keras"), "-d", str(SAMPLES / "mlp.npz")]
    result = CliRunner().invoke(app, [*args, "--batch-size", "4", "--save", str(out)])
    _interrupted(result, tmp_path)


def test_nan_in_the_data_is_a_finding_not_an_error(tmp_path: Path) -> None:
    with np.load(SAMPLES / "mlp.npz") as data:
        x, y = data["x"].copy(), data["y"]
    x[3, 5] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=y)
    args = ["inspect", str(SAMPLES / "mlp.keras"), "-d", str(tmp_path / "nan.npz"), "-f", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    kinds = [f["kind"] for f in report["health"]["findings"]]
    assert "nonfinite" in kinds
    outputs = next(f for f in report["health"]["findings"] if "layer outputs" in f["message"])
    assert outputs["where"][0] == "hidden_1"  # the first layer fed by the NaN row
    failed = CliRunner().invoke(app, [*args, "--fail-on", "nonfinite"])
    assert failed.exit_code == ExitCode.CHECK_FAILED
