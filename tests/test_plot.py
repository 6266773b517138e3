"""``gradscope.export.plot``: PNG files of inspect and hessian reports (optional matplotlib)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, SAMPLE_MODELS

from gradscope.commands.inspect.report import Report
from gradscope.errors import OutputError, UsageError
from gradscope.export.plot import MAX_PANELS, _short, plot_density, plot_inspect
from gradscope.health import diagnose
from gradscope.report import HessianReport

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="matplotlib is not installed (pip install 'gradscope[plot]')",
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RED = np.array([0xD6, 0x27, 0x28]) / 255  # the vanishing colour


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sigmoid_report() -> Report:
    from gradscope import inspect_file

    return inspect_file(SAMPLE_MODELS / "deep_sigmoid.keras", SAMPLE_MODELS / "deep_sigmoid.npz")


@pytest.fixture(scope="module")
def mlp_report() -> Report:
    from gradscope import inspect_file

    return inspect_file(SAMPLE_MODELS / "mlp.keras", SAMPLE_MODELS / "mlp.npz")


@pytest.fixture(scope="module")
def mlp_hessian() -> HessianReport:
    from gradscope.commands.hessian import HessianOptions, hessian_file

    options = HessianOptions(density=True, method="lanczos", block="layer")
    return hessian_file(SAMPLE_MODELS / "mlp.keras", SAMPLE_MODELS / "mlp.npz", options=options)


# --------------------------------------------------------------------------- PNG checks


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which a valid PNG holds first."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def pixels(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    image = imread(path)
    return np.asarray(image[..., :3]).reshape(-1, 3)


def red_pixels(path: Path) -> int:
    # 0.05 in [0, 1] is ~13 of 255 per channel: the exact colour, allowing antialiasing
    return int(np.sum(np.all(np.abs(pixels(path) - RED) < 0.05, axis=1)))


def check_png(path: Path) -> None:
    width, height = png_size(path)
    assert 600 <= width <= 3000, width
    assert 300 <= height <= 2000, height
    # lines, text, fills and antialiasing: far more colours than an empty canvas
    rgb = np.rint(pixels(path) * 255).astype(np.int64)
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colours) > 100
    assert path.stat().st_size > 20_000


def no_leftovers(folder: Path, expected: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == expected


# --------------------------------------------------------------------------- inspect


@needs_matplotlib
def test_inspect_marks_the_vanishing_layers_of_the_health_finding(
    sigmoid_report: Report, tmp_path: Path
) -> None:
    assert sigmoid_report.health is not None
    finding = next(f for f in sigmoid_report.health.findings if f.kind == "vanishing")
    target = tmp_path / "sigmoid.png"
    result = plot_inspect(sigmoid_report, target)
    assert result.path == target
    check_png(target)
    assert result.marked == finding.where
    assert result.marked[0] == "dense_01"
    assert result.plotted == tuple(r.path for r in sigmoid_report.activations)
    assert result.edge == ()
    no_leftovers(tmp_path, {"sigmoid.png"})


@needs_matplotlib
def test_inspect_without_a_health_section_recomputes_it(
    sigmoid_report: Report, tmp_path: Path
) -> None:
    bare = dataclasses.replace(sigmoid_report, health=None)
    expected = next(f for f in diagnose(bare).findings if f.kind == "vanishing").where
    assert plot_inspect(bare, tmp_path / "bare.png").marked == expected


@needs_matplotlib
def test_inspect_of_a_healthy_model_marks_nothing(
    mlp_report: Report, sigmoid_report: Report, tmp_path: Path
) -> None:
    result = plot_inspect(mlp_report, tmp_path / "mlp.png")
    check_png(tmp_path / "mlp.png")
    assert result.marked == ()
    assert result.plotted == ("hidden_1", "hidden_2", "probs")
    # the red markers and tick labels of the vanishing layers show in the picture
    plot_inspect(sigmoid_report, tmp_path / "sigmoid.png")
    assert red_pixels(tmp_path / "sigmoid.png") > 2 * red_pixels(tmp_path / "mlp.png")


def _with_grad(row: Any, l2: float | None) -> Any:
    grad = None if l2 is None else dataclasses.replace(row.grad, l2=l2)
    return dataclasses.replace(row, grad=grad)


@needs_matplotlib
def test_nonfinite_zero_and_missing_norms_go_on_the_axis_edge(
    sigmoid_report: Report, tmp_path: Path
) -> None:
    variables = list(sigmoid_report.variables)
    by_layer = {row.layer: i for i, row in reversed(list(enumerate(variables)))}
    variables[by_layer["dense_02"]] = _with_grad(variables[by_layer["dense_02"]], math.nan)
    variables[by_layer["dense_06"]] = _with_grad(variables[by_layer["dense_06"]], math.inf)
    for i, row in enumerate(variables):
        if row.layer == "dense_04":
            variables[i] = _with_grad(row, 0.0)
        if row.layer == "dense_08":
            variables[i] = _with_grad(row, None)
    activations = list(sigmoid_report.activations)
    first = activations[0]
    assert first.value is not None
    activations[0] = dataclasses.replace(first, value=dataclasses.replace(first.value, l2=math.nan))
    broken = dataclasses.replace(
        sigmoid_report, variables=tuple(variables), activations=tuple(activations), health=None
    )
    result = plot_inspect(broken, tmp_path / "broken.png")
    check_png(tmp_path / "broken.png")
    assert set(result.edge) == {
        "dense_02: nan",
        "dense_04: zero",
        "dense_06: inf",
        "dense_08: no gradient",
        "dense_01 (output): nan",
    }


@needs_matplotlib
def test_many_long_layer_paths_stay_readable(sigmoid_report: Report, tmp_path: Path) -> None:
    rows, outputs = [], []
    for k in range(15):
        for row in sigmoid_report.variables:
            rows.append(dataclasses.replace(row, layer=f"stage_{k}/block/{row.layer}"))
        for out in sigmoid_report.activations:
            outputs.append(dataclasses.replace(out, path=f"stage_{k}/block/{out.path}"))
    big = dataclasses.replace(sigmoid_report, variables=tuple(rows), activations=tuple(outputs))
    result = plot_inspect(big, tmp_path / "big.png")
    assert len(result.plotted) == 15 * len(sigmoid_report.activations)
    check_png(tmp_path / "big.png")


def test_long_labels_keep_their_tail() -> None:
    assert _short("dense_1") == "dense_1"
    assert _short("stage_11/block/dense_09") == "…/block/dense_09"
    assert _short("x" * 30) == "…" + "x" * 19


@needs_matplotlib
def test_an_empty_report_is_a_usage_error(sigmoid_report: Report, tmp_path: Path) -> None:
    empty = dataclasses.replace(sigmoid_report, variables=(), activations=())
    with pytest.raises(UsageError, match="no variable and no layer-output rows"):
        plot_inspect(empty, tmp_path / "empty.png")
    no_leftovers(tmp_path, set())


# --------------------------------------------------------------------------- density


@needs_matplotlib
def test_density_has_one_panel_per_block(mlp_hessian: HessianReport, tmp_path: Path) -> None:
    result = plot_density(mlp_hessian, tmp_path / "density.png")
    check_png(tmp_path / "density.png")
    assert result.plotted == ("hidden_1", "hidden_2", "probs")
    assert result.omitted == ()
    assert result.edge == ()


@needs_matplotlib
def test_density_panels_are_capped(mlp_hessian: HessianReport, tmp_path: Path) -> None:
    many = dataclasses.replace(mlp_hessian, blocks=mlp_hessian.blocks * 3)
    result = plot_density(many, tmp_path / "many.png")
    assert len(result.plotted) == MAX_PANELS
    assert len(result.omitted) == 3 * len(mlp_hessian.blocks) - MAX_PANELS
    check_png(tmp_path / "many.png")


@needs_matplotlib
def test_density_tolerates_nonfinite_eigenvalues(
    mlp_hessian: HessianReport, tmp_path: Path
) -> None:
    block = mlp_hessian.blocks[0]
    bad = dataclasses.replace(
        block, eigenvalues=(math.nan, *block.eigenvalues[1:]), min_eigenvalue=-math.inf
    )
    result = plot_density(dataclasses.replace(mlp_hessian, blocks=(bad,)), tmp_path / "bad.png")
    assert result.edge == ("hidden_1: non-finite eigenvalues",)
    check_png(tmp_path / "bad.png")


@needs_matplotlib
def test_density_needs_a_density(mlp_hessian: HessianReport, tmp_path: Path) -> None:
    bare = dataclasses.replace(
        mlp_hessian, blocks=tuple(dataclasses.replace(b, density=None) for b in mlp_hessian.blocks)
    )
    with pytest.raises(UsageError, match="--density"):
        plot_density(bare, tmp_path / "d.png")
    no_leftovers(tmp_path, set())


# --------------------------------------------------------------------------- errors


def test_missing_matplotlib_is_a_one_line_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    report: Any = object()  # never read: the import fails first
    for plot in (plot_inspect, plot_density):
        with pytest.raises(UsageError) as caught:
            plot(report, tmp_path / "x.png")
        message = str(caught.value)
        assert "pip install 'gradscope[plot]'" in message
        assert "\n" not in message
    no_leftovers(tmp_path, set())


@needs_matplotlib
@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("missing/x.png", "does not exist"),
        ("x.pdf", "ending in .png"),
        ("folder", "ending in .png"),
    ],
)
def test_bad_targets_are_output_errors(
    sigmoid_report: Report, tmp_path: Path, name: str, match: str
) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match=match):
        plot_inspect(sigmoid_report, tmp_path / name)
    no_leftovers(tmp_path, {"folder"})


@needs_matplotlib
def test_an_existing_file_needs_force(sigmoid_report: Report, tmp_path: Path) -> None:
    target = tmp_path / "old.png"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match="exists"):
        plot_inspect(sigmoid_report, target)
    assert target.read_bytes() == b"old"
    plot_inspect(sigmoid_report, target, force=True)
    check_png(target)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@needs_matplotlib
def test_an_unwritable_folder_is_an_output_error(sigmoid_report: Report, tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            plot_inspect(sigmoid_report, folder / "x.png")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


@needs_matplotlib
def test_a_folder_without_write_access_is_an_output_error(
    sigmoid_report: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same check as above, where root ignores permissions: access is denied."""
    import gradscope._atomic

    monkeypatch.setattr(gradscope._atomic.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(OutputError, match="not writable"):
        plot_inspect(sigmoid_report, tmp_path / "x.png")
    no_leftovers(tmp_path, set())


@needs_matplotlib
@pytest.mark.parametrize("error", [OSError("disk full"), RuntimeError("renderer crashed")])
def test_a_failed_write_leaves_no_file(
    sigmoid_report: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    from matplotlib.figure import Figure

    def half_write(self: Any, fname: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(PNG_SIGNATURE)  # a partial file, then the failure
        raise error

    monkeypatch.setattr(Figure, "savefig", half_write)
    expected = OutputError if isinstance(error, OSError) else type(error)
    with pytest.raises(expected):
        plot_inspect(sigmoid_report, tmp_path / "x.png")
    no_leftovers(tmp_path, set())


def test_importing_the_module_imports_neither_tensorflow_nor_matplotlib() -> None:
    code = (
        "import sys, gradscope.export.plot; "
        "print([m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- through the command line ------------------------------------------------------------


def test_cli_plot_options(tmp_path: Path) -> None:
    from cli_helpers import error_line, invoke

    from gradscope.errors import ExitCode

    samples = Path(__file__).resolve().parent.parent / "sample_models"
    grads, spectrum = tmp_path / "grads.png", tmp_path / "spectrum.png"
    deep = (samples / "deep_sigmoid.keras", "-d", samples / "deep_sigmoid.npz")
    result = invoke("inspect", *deep, "--plot", grads, "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert grads.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote the plot to {grads}" in result.stderr
    # --plot implies --density for hessian
    args = ("hessian", samples / "mlp.keras", "--layers", "probs", "--method", "lanczos")
    result = invoke(*args, "--plot", spectrum, "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["blocks"][0]["density"] is not None
    assert spectrum.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an existing file needs --force, and nothing runs before that is known
    message = error_line(["inspect", *deep, "--plot", grads], ExitCode.OUTPUT)
    assert "--force" in message
    assert invoke("inspect", *deep, "--plot", grads, "--force", "-q").exit_code == 0
