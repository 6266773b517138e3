"""Tests of the ``gradscope`` command line.

Most tests run the typer app in-process with :class:`typer.testing.CliRunner` (TensorFlow
is imported once per test session); stdout and stderr are captured separately, so every
test can check that stdout holds only the requested output and stderr only notes/errors.
A few tests need a real process: that ``--help`` does not import TensorFlow, that
TensorFlow's start-up lines never reach stderr, and ``python -m gradscope --version``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE_PAIRS
from typer.testing import CliRunner

import gradscope
from gradscope.cli import app
from gradscope.errors import ExitCode

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
REPO = SAMPLES.parent


TOP_LEVEL_KEYS = {
    "schema",
    "model",
    "batch",
    "loss",
    "training",
    "global_grad_norm",
    "variables",
    "inputs",
    "activations",
    "health",
}
STAT_KEYS = {"l2", "max_abs", "mean", "std", "zero_frac", "nonfinite"}
TF_NOISE = ("absl", "oneDNN", "cudart", "I0000", "WARNING: All log messages")


# -- helpers ---------------------------------------------------------------------------


def sample(name: str) -> str:
    return str(SAMPLES / name)


def model_and_data(key: str) -> tuple[str, str]:
    model, data = SAMPLE_PAIRS[key]
    return sample(model), sample(data)


def invoke(*args: object) -> Any:
    """Run ``gradscope ARGS`` in-process; stdout and stderr are kept apart."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}\nstderr: {result.stderr}")
    return result


@functools.cache
def _cached(args: tuple[str, ...]) -> tuple[int, str, str]:
    result = invoke(*args)
    return result.exit_code, result.stdout, result.stderr


def run_ok(*args: object) -> str:
    """stdout of a run that must succeed (inference runs are deterministic: cached)."""
    code, out, err = _cached(tuple(str(a) for a in args))
    assert code == 0, f"exit {code}; stderr: {err}"
    return out


def run_json(*args: object) -> dict[str, Any]:
    return json.loads(run_ok(*args, "--format", "json"))


def sample_json(key: str) -> dict[str, Any]:
    model, data = model_and_data(key)
    return run_json("inspect", model, "--data", data)


def error_line(result: Any, code: int) -> str:
    """Check the one-line error contract and return the message after the prefix."""
    assert result.exit_code == code, (
        f"expected exit {code}, got {result.exit_code}; stderr: {result.stderr!r}"
    )
    assert result.stdout == "", f"stdout should be empty on error: {result.stdout!r}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got: {result.stderr!r}"
    assert lines[0].startswith("gradscope: error: "), lines[0]
    return lines[0][len("gradscope: error: ") :]


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def num(cell: str) -> float | None:
    return None if cell == "" else float(cell)


# -- JSON output -------------------------------------------------------------------------


# cnn and deep_sigmoid left out for speed (slow to trace, nothing the others lack)
@pytest.mark.parametrize("key", sorted(set(SAMPLE_PAIRS) - {"cnn", "deep_sigmoid"}))
def test_json_equals_python_api(key: str) -> None:
    """The JSON output is exactly ``inspect_file(...).to_dict()`` (no rounding, no drift)."""
    model, data = model_and_data(key)
    from_cli = sample_json(key)
    report = gradscope.inspect_file(model, data)
    assert from_cli == report.to_dict()
    assert from_cli["loss"]["value"] == report.loss.value
    assert [v["grad"] for v in from_cli["variables"]] == [
        None if v.grad is None else v.grad.to_dict() for v in report.variables
    ]


@pytest.mark.parametrize("key", sorted(SAMPLE_PAIRS))
def test_json_schema(key: str) -> None:
    out = sample_json(key)
    assert set(out) == TOP_LEVEL_KEYS
    assert out["schema"] == "gradscope.inspect/1"
    assert out["training"] is False
    assert isinstance(out["global_grad_norm"], float)
    assert out["global_grad_norm"] > 0
    assert {"value", "source", "kind"} <= set(out["loss"])
    assert isinstance(out["loss"]["value"], float)
    assert out["loss"]["source"].startswith("compiled: ")
    assert out["batch"]["synthetic"] is False
    assert out["batch"]["size"] > 0
    assert out["model"]["path"] == model_and_data(key)[0]

    assert out["variables"], "every sample model has trainable variables"
    for row in out["variables"]:
        assert {"path", "layer", "shape", "grad", "weight_l2", "ratio"} <= set(row)
        assert isinstance(row["shape"], list)
        assert set(row["grad"]) == STAT_KEYS
        assert row["grad"]["nonfinite"] == 0
        if row["weight_l2"] == 0:  # e.g. the zero biases of the untrained deep_sigmoid
            assert row["ratio"] is None
        else:
            assert row["ratio"] == pytest.approx(row["grad"]["l2"] / row["weight_l2"], rel=1e-12)
    norms = [row["grad"]["l2"] for row in out["variables"]]
    assert out["global_grad_norm"] == pytest.approx(math.sqrt(sum(n * n for n in norms)))

    assert out["inputs"]
    for row in out["inputs"]:
        assert {"name", "grad"} <= set(row)
        if row["grad"] is None:
            assert row["note"]
        else:
            assert set(row["grad"]) == STAT_KEYS
            assert row["shape"][0] == out["batch"]["size"]

    assert out["activations"]
    for row in out["activations"]:
        assert {"layer", "path", "shape", "grad", "value"} <= set(row)
        assert row["grad"] is None or set(row["grad"]) == STAT_KEYS
        assert row["value"] is None or set(row["value"]) >= STAT_KEYS


def test_multi_output_loss_source_names_both_outputs_and_weight() -> None:
    loss = sample_json("multi_io")["loss"]
    assert loss["kind"] == "compiled"
    assert "category" in loss["source"]
    assert "score" in loss["source"]
    assert "0.5" in loss["source"]
    assert loss["regularization_terms"] == 1
    assert loss["regularization"] > 0


def test_multi_input_rows_have_gradients() -> None:
    inputs = {row["name"]: row for row in sample_json("multi_io")["inputs"]}
    assert set(inputs) == {"image_features", "metadata"}
    assert all(row["grad"]["l2"] > 0 for row in inputs.values())


def test_integer_input_has_null_grad_and_a_note() -> None:
    (row,) = sample_json("text_lstm")["inputs"]
    assert row["name"] == "tokens"
    assert row["grad"] is None
    assert isinstance(row["note"], str)
    assert row["note"]


def test_nested_model_rows() -> None:
    out = sample_json("nested")
    paths = [row["path"] for row in out["activations"]]
    assert "encoder" in paths
    assert "encoder/enc_dense_1" in paths
    layers = {row["path"]: row["layer"] for row in out["variables"]}
    assert layers["enc_dense_1/kernel"] == "encoder/enc_dense_1"


# -- CSV and table ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["mlp", "multi_io", "text_lstm", "nested"])
def test_csv_numbers_equal_json(key: str) -> None:
    model, data = model_and_data(key)
    text = run_ok("inspect", model, "--data", data, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    out = sample_json(key)
    assert len(rows) == len(out["variables"]) + len(out["inputs"]) + len(out["activations"])
    by_kind: dict[str, dict[str, dict[str, str]]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], {})[row["path"]] = row
    assert set(by_kind.get("variable", {})) == {v["path"] for v in out["variables"]}
    assert set(by_kind.get("input", {})) == {i["name"] for i in out["inputs"]}
    assert set(by_kind.get("activation", {})) == {a["path"] for a in out["activations"]}

    def check_grad(cells: dict[str, str], grad: dict[str, Any] | None) -> None:
        if grad is None:
            assert all(cells[f"grad_{k}"] == "" for k in STAT_KEYS)
            return
        for k in STAT_KEYS - {"nonfinite"}:
            assert num(cells[f"grad_{k}"]) == grad[k], k
        assert int(cells["grad_nonfinite"]) == grad["nonfinite"]

    for var in out["variables"]:
        cells = by_kind["variable"][var["path"]]
        assert cells["layer"] == var["layer"]
        assert cells["shape"] == "x".join(str(d) for d in var["shape"])
        check_grad(cells, var["grad"])
        assert num(cells["weight_l2"]) == var["weight_l2"]
        assert num(cells["ratio"]) == var["ratio"]
    for inp in out["inputs"]:
        cells = by_kind["input"][inp["name"]]
        check_grad(cells, inp["grad"])
        assert cells["note"] == (inp.get("note") or "")
    for act in out["activations"]:
        cells = by_kind["activation"][act["path"]]
        check_grad(cells, act["grad"])
        value = act["value"]
        assert num(cells["value_l2"]) == (None if value is None else value["l2"])


@pytest.mark.parametrize("key", sorted(SAMPLE_PAIRS))
def test_table_lists_every_variable(key: str) -> None:
    model, data = model_and_data(key)
    text = run_ok("inspect", model, "--data", data)
    out = sample_json(key)
    for var in out["variables"]:
        assert var["path"] in text, var["path"]
    for act in out["activations"]:
        assert act["path"] in text, act["path"]
    assert out["loss"]["source"] in text
    assert "\x1b[" not in text, "no colour codes when stdout is not a terminal"


def test_format_is_case_insensitive() -> None:
    model, data = model_and_data("mlp")
    assert json.loads(run_ok("inspect", model, "--data", data, "-f", "JSON")) == sample_json("mlp")


# -- synthetic batches, --limit, --layers, --training --------------------------------------


def test_synthetic_batch_is_recorded_and_reproducible() -> None:
    model = sample("mlp.keras")
    first = invoke("inspect", model, "--seed", "7", "--format", "json")
    again = invoke("inspect", model, "--seed", "7", "--format", "json")
    other = invoke("inspect", model, "--seed", "8", "--format", "json")
    for result in (first, again, other):
        assert result.exit_code == 0, result.stderr
    out = json.loads(first.stdout)
    assert out["batch"]["synthetic"] is True
    assert out["batch"]["source"] == "synthetic"
    assert out["batch"]["seed"] == 7
    assert out["batch"]["path"] is None
    assert out["loss"]["kind"] == "compiled"
    assert first.stdout == again.stdout
    assert json.loads(other.stdout)["batch"]["seed"] == 8
    assert json.loads(other.stdout)["loss"]["value"] != out["loss"]["value"]
    assert json.loads(other.stdout)["variables"] != out["variables"]


@pytest.mark.parametrize("key", ["text_lstm", "multi_io"])
def test_synthetic_batch_on_other_models(key: str) -> None:
    out = run_json("inspect", model_and_data(key)[0], "--seed", "3")
    assert out["batch"]["synthetic"] is True
    assert out["batch"]["seed"] == 3
    assert out["loss"]["kind"] == "compiled"
    assert math.isfinite(out["loss"]["value"])


def test_limit_with_data() -> None:
    model, data = model_and_data("mlp")
    out = run_json("inspect", model, "--data", data, "--limit", "5")
    assert out["batch"]["size"] == 5
    assert out["inputs"][0]["shape"] == [5, 20]
    assert out["loss"]["value"] != sample_json("mlp")["loss"]["value"]


def test_limit_with_synthetic_batch() -> None:
    out = run_json("inspect", sample("mlp.keras"), "--limit", "5")
    assert out["batch"]["size"] == 5
    assert out["batch"]["synthetic"] is True
    assert out["inputs"][0]["shape"] == [5, 20]


def test_layers_glob_keeps_only_matching_rows() -> None:
    model, data = model_and_data("mlp")
    full = sample_json("mlp")
    out = run_json("inspect", model, "--data", data, "--layers", "hidden_*")
    assert out["variables"]
    assert out["activations"]
    assert all(fnmatchcase(row["layer"], "hidden_*") for row in out["variables"])
    assert all(fnmatchcase(row["path"], "hidden_*") for row in out["activations"])
    assert out["variables"] == [r for r in full["variables"] if r["layer"].startswith("hidden_")]
    assert out["activations"] == [r for r in full["activations"] if r["path"].startswith("hidden_")]
    assert not any(r["layer"] == "probs" for r in out["variables"])
    assert out["loss"] == full["loss"]
    table = run_ok("inspect", model, "--data", data, "--layers", "hidden_*")
    assert "hidden_1/kernel" in table
    assert "probs/kernel" not in table


def test_layers_glob_matches_nested_paths() -> None:
    model, data = model_and_data("nested")
    out = run_json("inspect", model, "--data", data, "--layers", "encoder/*")
    assert {r["path"] for r in out["activations"]} == {
        "encoder/enc_dense_1",
        "encoder/enc_dense_2",
    }
    assert {r["layer"] for r in out["variables"]} == {"encoder/enc_dense_1", "encoder/enc_dense_2"}


@pytest.mark.parametrize("glob", ["nothing_like_this*", "hiden_1"])
def test_layers_unknown_glob_is_a_usage_error(glob: str) -> None:
    model, data = model_and_data("mlp")
    message = error_line(invoke("inspect", model, "--data", data, "--layers", glob), 2)
    assert glob in message
    assert "hidden_1" in message  # lists (close) layer names


def test_training_mode_differs_from_inference() -> None:
    model, data = model_and_data("cnn")
    inference = sample_json("cnn")
    training = run_json("inspect", model, "--data", data, "--training")
    assert training["training"] is True
    assert training["loss"]["value"] != inference["loss"]["value"]
    bn = {r["path"]: r for r in training["activations"]}["bn_1"]
    assert bn["value"] != {r["path"]: r for r in inference["activations"]}["bn_1"]["value"]
    # the run in training mode must not change the model state seen by later runs
    again = invoke("inspect", model, "--data", data, "--format", "json")
    assert json.loads(again.stdout) == inference


def test_training_mode_is_reproducible_with_a_seed() -> None:
    """``--seed`` is documented as the seed "of the synthetic batch and of dropout"."""
    model, data = model_and_data("cnn")
    args = ("inspect", model, "--data", data, "--training", "--seed", "1", "--format", "json")
    first = invoke(*args)
    other = run_json("inspect", model, "--data", data, "--training")  # seed 0, in between
    again = invoke(*args)
    assert first.exit_code == again.exit_code == 0, first.stderr + again.stderr
    assert json.loads(first.stdout) == json.loads(again.stdout)
    assert other["loss"]["value"] != json.loads(first.stdout)["loss"]["value"]  # other mask


def test_integer_valued_floats_feed_an_integer_input(tmp_path: Path) -> None:
    """Token ids saved as whole-number floats are accepted and give the int32 results."""
    import numpy as np

    with np.load(sample("text_lstm.npz")) as arrays:
        tokens, labels = arrays["x"], arrays["y"]
    np.savez(tmp_path / "float_ids.npz", x=tokens.astype(np.float32), y=labels)
    as_floats = run_json("inspect", sample("text_lstm.keras"), "--data", tmp_path / "float_ids.npz")
    as_ints = sample_json("text_lstm")
    assert as_floats["loss"] == as_ints["loss"]
    assert as_floats["variables"] == as_ints["variables"]


# -- notes, --quiet, version ---------------------------------------------------------------


def test_sum_of_outputs_note_goes_to_stderr_and_quiet_hides_it(tmp_path: Path) -> None:
    import numpy as np

    x = np.load(sample("mlp.npz"))["x"]
    np.save(tmp_path / "x.npy", x)
    model = sample("mlp.keras")
    noisy = invoke("inspect", model, "--data", tmp_path / "x.npy", "--format", "json")
    assert noisy.exit_code == 0
    assert json.loads(noisy.stdout)["loss"]["kind"] == "sum_of_outputs"
    assert noisy.stderr == "gradscope: loss: sum of outputs (no targets in the batch)\n"
    quiet = invoke("inspect", model, "--data", tmp_path / "x.npy", "--format", "json", "--quiet")
    assert quiet.exit_code == 0
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout) == json.loads(noisy.stdout)


def test_successful_run_writes_nothing_to_stderr() -> None:
    model, data = model_and_data("mlp")
    code, out, err = _cached(("inspect", model, "--data", data, "--format", "json"))
    assert code == 0
    assert err == ""
    assert out.endswith("}\n")


def test_version_in_process() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"gradscope {gradscope.__version__}\n"
    assert result.stderr == ""


# -- usage errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [("--format", "xml"), ("--limit", "0")],
)
def test_bad_option_value_is_one_line_usage_error(option: str, value: str) -> None:
    model, data = model_and_data("mlp")
    message = error_line(invoke("inspect", model, "--data", data, option, value), 2)
    assert option in message
    assert value in message
    if option == "--format":
        assert all(name in message for name in ("table", "json", "csv"))


def test_unknown_loss_suggests_close_names() -> None:
    model, data = model_and_data("mlp")
    message = error_line(invoke("inspect", model, "--data", data, "--loss", "mse2"), 6)
    assert "mse2" in message
    lowered = message.lower()
    assert "did you mean" in lowered, message
    assert "mse" in lowered.split("did you mean", 1)[1], message


def test_unknown_loss_with_debug_shows_traceback() -> None:
    model, data = model_and_data("mlp")
    result = invoke("inspect", model, "--data", data, "--loss", "huber_los", "--debug")
    assert result.exit_code == ExitCode.LOSS
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("gradscope: error: --loss")
    assert "huber" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("name", "same_as_compiled"),
    [("mse", True), ("mean_squared_error", True), ("MeanSquaredError", True), ("mae", False)],
)
def test_loss_override_is_used(name: str, same_as_compiled: bool) -> None:
    """nested.keras is compiled with mse: overriding with mse gives the compiled value."""
    model, data = model_and_data("nested")
    out = run_json("inspect", model, "--data", data, "--loss", name)
    assert out["loss"]["kind"] == "override"
    assert name in out["loss"]["source"]
    compiled = sample_json("nested")["loss"]["value"]
    if same_as_compiled:
        assert out["loss"]["value"] == pytest.approx(compiled, rel=1e-6)
    else:
        assert out["loss"]["value"] != pytest.approx(compiled, rel=1e-3)


# -- real processes ------------------------------------------------------------------


def _env_without_tf_quieting() -> dict[str, str]:
    """The user's environment: gradscope must silence TensorFlow by itself."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    env["PYTHONPATH"] = str(REPO)
    return env


def _run(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=_env_without_tf_quieting(), capture_output=True, text=True, timeout=120
    )


def test_importing_the_cli_does_not_import_tensorflow() -> None:
    code = (
        "import sys, gradscope, gradscope.cli; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules, 'numpy' in sys.modules)"
    )
    proc = _run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False False"  # numpy too: a faster --help


_RUN_AND_REPORT_MODULES = """
import sys
from gradscope.cli import main
sys.argv = ["gradscope", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("tensorflow", "keras", "h5py") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


def _run_reporting_modules(args: list[str], cwd: Path = REPO) -> tuple[int, str, str, str]:
    """Run the CLI in a fresh process; also say which heavy modules it imported.

    (``python -X importtime`` cannot tell: gradscope silences fd 2 while TensorFlow is
    imported, which hides the import-time lines too.)
    """
    proc = _run([sys.executable, "-c", _RUN_AND_REPORT_MODULES, *args], cwd=cwd)
    out, _, marker = proc.stdout.rpartition("HEAVY=")
    return proc.returncode, out, proc.stderr, marker.strip()


@pytest.mark.parametrize("args", [["--help"], ["inspect", "--help"], ["attribute", "--help"]])
def test_help_does_not_import_tensorflow(args: list[str]) -> None:
    code, out, err, heavy = _run_reporting_modules(args)
    assert code == 0, err
    assert "Usage:" in out
    assert heavy == ""
    if args == ["--help"]:
        assert "inspect" in out


@pytest.mark.parametrize(
    "args", [["--help"], ["inspect", "--help"], ["dashboard", "--help"], ["attribute", "--help"]]
)
def test_help_does_not_import_numpy(args: list[str]) -> None:
    """numpy's import is half of a bare ``--help``'s time: the facade and the options and
    report modules the CLI declares its defaults from import it only where it is used."""
    code = _RUN_AND_REPORT_MODULES.replace('("tensorflow", "keras", "h5py")', '("numpy",)')
    proc = _run([sys.executable, "-c", code, *args])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rpartition("HEAVY=")[2].strip() == ""


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "gradscope"
    if not script.exists():
        pytest.skip("the gradscope console script is not installed beside this Python")
    proc = _run([str(script), "--help"])
    assert proc.returncode == 0
    assert "inspect" in proc.stdout
    assert proc.stderr == ""


def test_python_m_version() -> None:
    proc = _run([sys.executable, "-m", "gradscope", "--version"])
    assert proc.returncode == 0
    assert proc.stdout == f"gradscope {gradscope.__version__}\n"
    assert proc.stderr == ""


def test_real_process_stdout_is_only_json_and_stderr_has_no_tensorflow_noise(
    tmp_path: Path,
) -> None:
    model, data = model_and_data("mlp")
    proc = _run(
        [sys.executable, "-m", "gradscope", "inspect", model, "--data", data, "--format", "json"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for marker in TF_NOISE:
        assert marker not in proc.stderr, proc.stderr
    assert proc.stderr == "", proc.stderr
    out = json.loads(proc.stdout)  # stdout is nothing but the JSON document
    assert out["schema"] == "gradscope.inspect/1"
    reference = sample_json("mlp")
    assert [v["path"] for v in out["variables"]] == [v["path"] for v in reference["variables"]]
    assert out["loss"]["value"] == pytest.approx(reference["loss"]["value"], rel=1e-5)
    assert listing(tmp_path) == set()


def test_missing_model_fails_fast_without_importing_tensorflow(tmp_path: Path) -> None:
    """A mistyped file name is reported before the (multi-second) TensorFlow import."""
    code, out, err, heavy = _run_reporting_modules(["inspect", "missing.keras"], cwd=tmp_path)
    assert code == ExitCode.MODEL
    assert out == ""
    assert err == (
        "gradscope: error: missing.keras: no such file; expected a .keras or .h5 model file.\n"
    )
    assert heavy == "", f"imported {heavy} before checking the model path"
