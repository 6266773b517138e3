"""``gradscope attribute`` on the command line: option errors, output files, the notes.

Option and output-file errors are checked before TensorFlow is imported (a subprocess
says which heavy modules a failing run imported).  The wiring after the engine (notes,
the completeness warning, ``--save``) runs against a stand-in engine that returns a
report built by hand; the end-to-end runs on the shipped samples skip until the engine
(``gradscope.commands.attribute.run``) exists, and compare with the model's own outputs
and gradients (an eager ``tf.GradientTape``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, SAMPLE_MODELS

from gradscope.commands.attribute.report import AttributeReport
from gradscope.errors import ExitCode
from tests.attribute_reports import ig_tensors, integrated_gradients
from tests.cli_helpers import error_line, invoke, run_reporting_heavy_modules

MLP, MLP_DATA = SAMPLE_MODELS / "mlp.keras", SAMPLE_MODELS / "mlp.npz"
CNN, CNN_DATA = SAMPLE_MODELS / "cnn.keras", SAMPLE_MODELS / "cnn.npz"
RUN = "gradscope.commands.attribute.run"


# --- option errors: exit 2, before any import --------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "lime"], "method: unknown value. Received: method='lime'"),
        (["--target", "class:x"], "--target: class index 'x' is not an integer >= 0"),
        (["--target", "logits"], "--target: unknown target"),
        (["--steps", "10"], "steps: only used by method integrated-gradients"),
        (["--samples", "4", "--method", "gradcam"], "samples: only used by method smoothgrad"),
        (["--layer", "conv", "--method", "smoothgrad"], "layer: only used by method gradcam"),
        (["--output", "probs"], "output: selects the output of a class target"),
        (["--logits"], "logits: reads the logits of a class target"),
        (
            ["--method", "integrated-gradients", "--baseline", "base.txt"],
            "--baseline: expected zeros, mean or the path of a .npy file",
        ),
        (["--method", "integrated-gradients", "--steps", "0"], "steps"),
        (["--method", "smoothgrad", "--noise", "-0.5"], "noise"),
        (["--top-k", "-1"], "top_k"),
        (["--vocabulary", "words.txt"], "--vocabulary: labels the tokens of --plot and --html"),
    ],
)
def test_option_errors_are_one_line_and_exit_2(extra: list[str], message: str) -> None:
    line = error_line(["attribute", MLP, "-d", MLP_DATA, *extra], ExitCode.USAGE)
    assert message in line
    assert "Received" in line


@pytest.mark.parametrize(
    "extra",
    [
        ["--method", "lime"],
        ["--target", "class:x"],
        ["--steps", "10"],
        ["--output", "probs", "--target", "loss"],
        ["--method", "integrated-gradients", "--baseline", "base.txt"],
        ["--save", "out.txt"],
    ],
)
def test_option_errors_come_before_tensorflow(extra: list[str]) -> None:
    args = ["attribute", str(MLP), "-d", str(MLP_DATA), *extra]
    code, out, err, heavy = run_reporting_heavy_modules(args, str(REPO))
    assert code in (ExitCode.USAGE, ExitCode.OUTPUT), err
    assert out == ""
    assert "Traceback" not in err
    assert heavy == ""


# --- output files: exit 8, before the model is loaded ------------------------------------


def test_save_needs_an_hdf5_suffix(tmp_path: Path) -> None:
    target = tmp_path / "attributions.txt"
    line = error_line(["attribute", MLP, "--save", target], ExitCode.OUTPUT)
    assert "--save" in line
    assert "expected a file name ending in .h5 or .hdf5. Received: '.txt'" in line


def test_existing_save_file_is_kept_without_force(tmp_path: Path) -> None:
    target = tmp_path / "old.h5"
    target.write_bytes(b"keep")
    line = error_line(["attribute", MLP, "--save", target], ExitCode.OUTPUT)
    assert "Pass --force" in line
    assert target.read_bytes() == b"keep"


def test_html_in_a_missing_folder_fails_first(tmp_path: Path) -> None:
    pytest.importorskip("gradscope.export.attribution_html")
    target = tmp_path / "missing" / "page.html"
    line = error_line(["attribute", MLP, "--html", target], ExitCode.OUTPUT)
    assert f"--html {target}: the folder {target.parent} does not exist" in line


def test_html_needs_an_html_suffix(tmp_path: Path) -> None:
    pytest.importorskip("gradscope.export.attribution_html")
    line = error_line(["attribute", MLP, "--html", tmp_path / "page.png"], ExitCode.OUTPUT)
    assert "--html" in line
    assert ".html or .htm" in line


def test_plot_with_a_wrong_suffix_fails_first(tmp_path: Path) -> None:
    pytest.importorskip("gradscope.export.attribution_plot")
    line = error_line(["attribute", MLP, "--plot", tmp_path / "plot.h5"], ExitCode.OUTPUT)
    assert "--plot" in line
    assert "Received: '.h5'" in line


# --- after the engine: a stand-in engine returns a report built by hand -----------------


def _report() -> AttributeReport:
    """Integrated Gradients (50 steps) on three examples; the second is off by 3.2%."""
    return dataclasses.replace(integrated_gradients(), tensors=ig_tensors())


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A stand-in ``gradscope.commands.attribute.run`` whose ``attribute_file`` records
    its arguments and returns :func:`_report`."""
    calls: list[dict[str, Any]] = []

    def attribute_file(model_path: Any, data_path: Any = None, **kwargs: Any) -> AttributeReport:
        calls.append({"model_path": model_path, "data_path": data_path, **kwargs})
        return _report()

    module = types.ModuleType(RUN)
    module.attribute_file = attribute_file  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, RUN, module)
    return calls


def test_the_cli_hands_its_options_to_the_engine(
    engine: list[dict[str, Any]], tmp_path: Path
) -> None:
    save = tmp_path / "a.h5"
    result = invoke(
        "attribute", "m.keras", "-d", "d.npz", "--limit", "2", "--seed", "3",
        "--method", "Integrated-Gradients", "--target", "class:1", "--steps", "8",
        "--baseline", "mean", "--top-k", "4", "--batch-size", "16", "--save", save,
        "-f", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (call,) = engine
    options = call["options"]
    assert (options.method, options.target, options.steps) == ("integrated-gradients", "class:1", 8)
    assert (options.baseline, options.top_k, options.seed) == ("mean", 4, 3)
    assert options.keep_tensors is True
    assert (call["limit"], call["batch_size"], call["unsafe"]) == (2, 16, False)
    assert str(call["model_path"]) == "m.keras"
    assert result.stdout == _report().to_json() + "\n"


def test_notes_and_the_completeness_warning(engine: list[dict[str, Any]], tmp_path: Path) -> None:
    import h5py

    save = tmp_path / "a.h5"
    result = invoke(
        "attribute", "m.keras", "--method", "integrated-gradients", "--target", "class:1",
        "--save", save, "-f", "csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "gradscope: one note",
        "gradscope: integrated gradients: completeness error up to 3.2% (1 of 3 examples "
        "above 1.0%); use more --steps (now 50)",
        f"gradscope: wrote the attributions to {save}",
    ]
    assert result.stdout.splitlines()[0].startswith("index,target,score,baseline_score")
    with h5py.File(save, "r") as handle:
        assert handle.attrs["schema"] == "gradscope.attribute-tensors/1"
        np.testing.assert_array_equal(
            handle["attributions/1"][()], ig_tensors().attributions["ids"]
        )


def test_quiet_keeps_stderr_empty_and_tensors_are_not_kept_without_files(
    engine: list[dict[str, Any]],
) -> None:
    result = invoke("attribute", "m.keras", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "integrated-gradients: 50 steps (gauss-legendre), baseline mean" in result.stdout
    assert engine[0]["options"].keep_tensors is False


def test_no_warning_when_every_example_is_complete(
    engine: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    complete = _report()
    examples = tuple(dataclasses.replace(e, completeness_error=0.001) for e in complete.examples)
    module = sys.modules[RUN]
    report = dataclasses.replace(complete, examples=examples, notes=())
    monkeypatch.setattr(module, "attribute_file", lambda *a, **k: report)
    result = invoke("attribute", "m.keras", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""


# --- end to end on the shipped samples (once the engine exists) --------------------------


def _json_run(*args: object) -> dict[str, Any]:
    result = invoke("attribute", *args, "-f", "json", "-q")
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["schema"] == "gradscope.attribute/1"
    return data


def test_gradient_x_input_of_a_class_matches_a_tape() -> None:
    """Σ x·∂p_1/∂x per example and p_1 itself, from the model and an eager tape."""
    pytest.importorskip(RUN)
    from gradscope import _tf

    data = _json_run(MLP, "-d", MLP_DATA, "--limit", "8", "--method", "gradient-x-input",
                     "--target", "class:1")  # fmt: skip
    tf, keras = _tf.tensorflow(), _tf.keras()
    model = keras.models.load_model(MLP)
    x = tf.constant(np.load(MLP_DATA)["x"][:8])
    with tf.GradientTape() as tape:
        tape.watch(x)
        probs = model(x, training=False)[:, 1]
    gradient = tape.gradient(probs, x).numpy()  # rows are independent: one tape
    assert [e["index"] for e in data["examples"]] == list(range(8))
    totals = [e["inputs"][0]["total"] for e in data["examples"]]
    np.testing.assert_allclose(totals, (x.numpy() * gradient).sum(axis=1), rtol=1e-4, atol=1e-6)
    scores = [e["score"] for e in data["examples"]]
    np.testing.assert_allclose(scores, probs.numpy(), rtol=1e-5)
    assert [e["target"] for e in data["examples"]] == [1] * 8


def test_integrated_gradients_is_complete_on_the_mlp() -> None:
    """The baseline's score is the model's at zeros; the sum matches within 1%."""
    pytest.importorskip(RUN)
    from gradscope import _tf

    data = _json_run(MLP, "-d", MLP_DATA, "--limit", "4", "--method", "integrated-gradients",
                     "--target", "predicted")  # fmt: skip
    model = _tf.keras().models.load_model(MLP)
    x = np.load(MLP_DATA)["x"][:4]
    predicted = np.argmax(np.asarray(model(x, training=False)), axis=1)
    at_zero = np.asarray(model(np.zeros_like(x), training=False))
    assert [e["target"] for e in data["examples"]] == predicted.tolist()
    baseline = [e["baseline_score"] for e in data["examples"]]
    np.testing.assert_allclose(baseline, at_zero[np.arange(4), predicted], rtol=1e-5)
    assert data["completeness"]["above_1pct"] == 0
    assert data["method"]["steps"] == 50


def test_gradcam_on_the_cnn_writes_every_file(tmp_path: Path) -> None:
    pytest.importorskip(RUN)
    pytest.importorskip("gradscope.export.attribution_plot")
    pytest.importorskip("gradscope.export.attribution_html")
    import h5py

    save, plot, html = tmp_path / "cam.h5", tmp_path / "cam.png", tmp_path / "cam.html"
    data = _json_run(CNN, "-d", CNN_DATA, "--limit", "3", "--method", "gradcam",
                     "--target", "predicted", "--save", save, "--plot", plot,
                     "--html", html)  # fmt: skip
    assert data["method"]["name"] == "gradcam"
    assert data["method"]["chosen"] is True
    assert data["inputs"][0]["kind"] == "feature_map"
    assert len(data["examples"]) == 3
    with h5py.File(save, "r") as handle:
        assert handle.attrs["schema"] == "gradscope.attribute-tensors/1"
        assert handle["attributions/0"].attrs["name"] == data["method"]["layer"]
        assert handle["attributions/0"].shape[0] == 3
        assert handle["resized"].shape[:3] == (3, 28, 28)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<html" in html.read_text(encoding="utf-8").lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.h5", "cam.html", "cam.png"]


def test_smoothgrad_table_on_the_cnn() -> None:
    pytest.importorskip(RUN)
    result = invoke("attribute", CNN, "-d", CNN_DATA, "--limit", "2", "--method", "smoothgrad",
                    "--samples", "4", "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "method  smoothgrad: 4 samples, noise 15.0% of each example's value range" in (
        result.stdout
    )
    assert "image 28x28x1 float32" in result.stdout
