"""``gradscope landscape`` on the command line: outputs, files and exit codes.

The two models are saved to ``.keras`` files and loaded back by the test itself, whose
losses (eager calls, ``model.compute_loss``) are the reference for alpha = 0 and 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradscope import _tf
from gradscope.errors import ExitCode
from tests.cli_helpers import error_line, invoke
from tests.reference import model_loss

RTOL = 1e-5


def _save_model(path: Path, seed: int, units: int = 6) -> None:
    keras = _tf.keras()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(units, activation="tanh", name="hidden"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model(np.random.default_rng(seed).normal(size=(8, 5)).astype(np.float32), training=True)
    model.save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("landscape")
    paths = {name: folder / f"{name}.keras" for name in ("a", "b", "wide")}
    _save_model(paths["a"], 0)
    _save_model(paths["b"], 1)
    _save_model(paths["wide"], 2, units=7)
    rng = np.random.default_rng(3)
    paths["data"] = folder / "data.npz"
    np.savez(paths["data"], x=rng.normal(size=(12, 5)).astype(np.float32), y=rng.integers(0, 3, 12))
    return paths


def _loss_of(model_path: Path, data_path: Path) -> float:
    keras = _tf.keras()
    model = keras.models.load_model(model_path)
    data = np.load(data_path)
    x, y = data["x"], data["y"]
    return float(model_loss(model, x, y, model(x, training=False), False))


def test_interpolation_json_endpoints(files: dict[str, Path]) -> None:
    result = invoke(
        "landscape", files["a"], "-d", files["data"], "--to", files["b"], "-f", "json", "-q"
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "gradscope.landscape/1"
    alphas = report["grid"]["axes"][0]["values"]
    assert report["grid"]["axes"][0]["name"] == "alpha"
    assert alphas[0] == -0.25
    assert alphas[-1] == 1.25
    losses = dict(zip(alphas, report["losses"], strict=True))
    assert losses[0.0] == pytest.approx(_loss_of(files["a"], files["data"]), rel=RTOL)
    assert losses[1.0] == pytest.approx(_loss_of(files["b"], files["data"]), rel=RTOL)
    assert report["other_loss"] == pytest.approx(losses[1.0], rel=RTOL)
    assert report["directions"]["to"] == str(files["b"])


def test_save_and_plot(files: dict[str, Path], tmp_path: Path) -> None:
    import h5py

    save, plot = tmp_path / "grid.h5", tmp_path / "grid.png"
    result = invoke(
        "landscape", files["a"], "-d", files["data"], "--grid", "-1:1:3,-1:1:4",
        "--save", save, "--plot", plot, "-f", "json", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    with h5py.File(save, "r") as handle:
        assert handle.attrs["schema"] == "gradscope.landscape-grid/1"
        np.testing.assert_array_equal(handle["axes/x"][()], [-1.0, 0.0, 1.0])
        np.testing.assert_allclose(handle["axes/y"][()], np.linspace(-1, 1, 4))
        np.testing.assert_array_equal(handle["losses"][()], np.asarray(report["losses"]))
        assert json.loads(handle.attrs["directions"])["kind"] == "random"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.h5", "grid.png"]  # no temp files


def test_one_dimensional_plot_of_an_interpolation(files: dict[str, Path], tmp_path: Path) -> None:
    plot = tmp_path / "line.png"
    result = invoke(
        "landscape", files["a"], "-d", files["data"], "--to", files["b"], "--plot", plot, "-q"
    )
    assert result.exit_code == 0, result.stderr
    assert "curve" in result.stdout
    assert "OTHER" in result.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--grid", "-1:1"], ExitCode.USAGE, "--grid: axis '-1:1' does not have three fields"),
        (["--grid", "1:0:3"], ExitCode.USAGE, "START 1 is not below STOP 0"),
        (["--directions", "hessian"], ExitCode.USAGE, "directions: unknown value"),
        (["--recompute-bn", "--training"], ExitCode.USAGE, "--recompute-bn: has no effect"),
        (
            ["--to", "{b}", "--grid", "0:1:3,0:1:3"],
            ExitCode.USAGE,
            "--to interpolates along one line",
        ),
        (
            ["--to", "{b}", "--directions", "eigen"],
            ExitCode.USAGE,
            "--directions: not used with --to",
        ),
        (["--to", "{wide}"], ExitCode.MISMATCH, "the models differ in architecture"),
        (["--to", "{missing}"], ExitCode.MODEL, "missing.keras"),
        (["--save", "{data}"], ExitCode.OUTPUT, "--save"),
    ],
)
def test_bad_input_is_one_line_with_its_exit_code(
    files: dict[str, Path], tmp_path: Path, extra: list[str], code: int, message: str
) -> None:
    names: dict[str, Any] = {**files, "missing": tmp_path / "missing.keras"}
    args = [str(a).format(**names) for a in extra]
    line = error_line(["landscape", files["a"], "-d", files["data"], *args], code)
    assert message in line
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_force(files: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "old.h5"
    target.write_bytes(b"keep")
    line = error_line(["landscape", files["a"], "--save", target], ExitCode.OUTPUT)
    assert "Pass --force" in line
    assert target.read_bytes() == b"keep"
