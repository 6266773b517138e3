"""Loading models and batches through the CLI: the supported formats and every error path.

Every failure must give its documented exit code, exactly one stderr line starting with
``gradscope: error:`` (a traceback only with ``--debug``), nothing on stdout, and leave
no file behind.  Bad files are written into ``tmp_path``; the CLI runs in-process with
its working directory in ``tmp_path`` too, so a stray file would be noticed.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from cli_helpers import invoke

import gradscope
from gradscope.errors import (
    DataLoadError,
    ExitCode,
    GradscopeError,
    MismatchError,
    ModelLoadError,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MLP = SAMPLES / "mlp.keras"
TEXT = SAMPLES / "text_lstm.keras"


def run_json(*args: object) -> dict[str, Any]:
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def mlp_arrays() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLES / "mlp.npz") as data:
        return data["x"], data["y"]


def check_error(
    args: list[object], code: int, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str]:
    """Run a failing command without and with ``--debug``; return both messages."""
    monkeypatch.chdir(folder)
    before = listing(folder)
    result = invoke(*args)
    assert result.exit_code == code, (
        f"expected exit {code}, got {result.exit_code}; stderr: {result.stderr!r}"
    )
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line: {result.stderr!r}"
    assert lines[0].startswith("gradscope: error: "), lines[0]
    message = lines[0][len("gradscope: error: ") :]

    debug = invoke(*args, "--debug")
    assert debug.exit_code == code
    assert debug.stdout == ""
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-1] == lines[0]
    assert listing(folder) == before, "a failed run must leave no file behind"
    return message, str(args[1])


# -- bad model files -------------------------------------------------------------------


def _missing(tmp: Path) -> Path:
    return tmp / "missing.keras"


def _directory(tmp: Path) -> Path:
    (tmp / "model.keras").mkdir()
    return tmp / "model.keras"


def _empty(tmp: Path) -> Path:
    (tmp / "empty.keras").write_bytes(b"")
    return tmp / "empty.keras"


def _empty_h5(tmp: Path) -> Path:
    (tmp / "empty.h5").write_bytes(b"")
    return tmp / "empty.h5"


def _truncated_keras(tmp: Path) -> Path:
    raw = MLP.read_bytes()
    (tmp / "truncated.keras").write_bytes(raw[: len(raw) // 2])
    return tmp / "truncated.keras"


def _garbage_h5(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp / "garbage.h5").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return tmp / "garbage.h5"


def _garbage_keras(tmp: Path) -> Path:
    (tmp / "garbage.keras").write_bytes(b"this is not a zip file\n" * 40)
    return tmp / "garbage.keras"


def _truncated_h5(tmp: Path) -> Path:
    raw = (SAMPLES / "regression_keras3.h5").read_bytes()
    (tmp / "truncated.h5").write_bytes(raw[: len(raw) // 2])
    return tmp / "truncated.h5"


def _text_file(tmp: Path) -> Path:
    (tmp / "model.txt").write_text("not a model\n")
    return tmp / "model.txt"


def _other_zip(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "other.keras", "w") as archive:
        archive.writestr("readme.txt", "a zip file, but not a Keras model")
    return tmp / "other.keras"


def _weights_only_h5(tmp: Path) -> Path:
    with h5py.File(tmp / "weights.h5", "w") as handle:
        handle["dense/kernel"] = np.zeros((3, 2), np.float32)
    return tmp / "weights.h5"


@dataclass(frozen=True)
class BadModel:
    make: Callable[[Path], Path]
    pattern: str  # regex the message must match (besides naming the file)


BAD_MODELS = {
    "missing": BadModel(_missing, r"no such file"),
    "directory": BadModel(_directory, r"directory"),
    "empty_keras": BadModel(_empty, r"empty"),
    "empty_h5": BadModel(_empty_h5, r"empty"),
    # a zip archive cut in half: the message must not claim it is not a zip file
    "truncated_keras": BadModel(_truncated_keras, r"(?i)truncated|corrupt|incomplete|damaged"),
    "garbage_keras": BadModel(_garbage_keras, r"not a Keras archive"),
    "garbage_h5": BadModel(_garbage_h5, r"not an HDF5 file"),
    "truncated_h5": BadModel(_truncated_h5, r"(?i)truncated|corrupt"),
    "txt": BadModel(_text_file, r"unsupported model file type.*\.txt"),
    "zip_not_keras": BadModel(_other_zip, r"not a Keras model.*config\.json"),
    "h5_without_model_config": BadModel(_weights_only_h5, r"model_config"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_file(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = BAD_MODELS[case]
    path = bad.make(tmp_path)
    data = SAMPLES / "mlp.npz"
    message, _ = check_error(
        ["inspect", path, "--data", data, "--format", "json"], ExitCode.MODEL, tmp_path, monkeypatch
    )
    assert message.startswith(f"{path}: "), message
    body = message[len(f"{path}: ") :]  # the file name itself may contain the words
    assert re.search(bad.pattern, body), message


@pytest.mark.parametrize("case", ["missing", "truncated_h5", "zip_not_keras"])
def test_bad_model_file_api_raises_model_load_error(case: str, tmp_path: Path) -> None:
    path = BAD_MODELS[case].make(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        gradscope.inspect_file(path)
    assert info.value.exit_code == ExitCode.MODEL
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def lambda_model(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with a Lambda layer holding a Python lambda, saved by Keras itself."""
    inputs = keras.Input(shape=(3,), name="x")
    doubled = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    outputs = keras.layers.Dense(1, name="out")(doubled)
    model = keras.Model(inputs, outputs, name="with_lambda")
    model.compile(loss="mean_squared_error")
    path = tmp_path_factory.mktemp("lambda") / "lambda.keras"
    model.save(path)
    return path


def _lambda_h5(lambda_model: Path, keras: Any) -> Path:
    """The same Lambda model in a legacy HDF5 file written by Keras 3."""
    path = lambda_model.with_suffix(".h5")
    if not path.exists():
        keras.saving.load_model(lambda_model, safe_mode=False).save(path)
    return path


@pytest.mark.parametrize("kind", ["keras", "keras3_h5", "keras2_h5"])
def test_lambda_layer_refused_in_safe_mode(
    kind: str,
    lambda_model: Path,
    keras: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = {
        "keras": lambda: lambda_model,
        "keras3_h5": lambda: _lambda_h5(lambda_model, keras),
        "keras2_h5": lambda: Path(__file__).parent / "fixtures" / "keras2_lambda.h5",
    }[kind]()
    message, _ = check_error(["inspect", path], ExitCode.MODEL, tmp_path, monkeypatch)
    assert str(path) in message
    assert "safe mode" in message.lower()
    assert "Lambda" in message


# -- bad data files ---------------------------------------------------------------------


def _data_missing(tmp: Path) -> Path:
    return tmp / "missing.npz"


def _data_truncated_npz(tmp: Path) -> Path:
    raw = (SAMPLES / "mlp.npz").read_bytes()
    (tmp / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    return tmp / "truncated.npz"


def _data_pickled_npz(tmp: Path) -> Path:
    x, y = mlp_arrays()
    objects = np.empty(len(x), dtype=object)
    for i, row in enumerate(x):
        objects[i] = row
    np.savez(tmp / "pickled.npz", x=objects, y=y)
    return tmp / "pickled.npz"


def _data_object_npy(tmp: Path) -> Path:
    np.save(tmp / "objects.npy", np.array([{"a": 1}, [1, 2]], dtype=object), allow_pickle=True)
    return tmp / "objects.npy"


def _data_strings(tmp: Path) -> Path:
    _, y = mlp_arrays()
    np.savez(tmp / "strings.npz", x=np.full((32, 20), "0.5"), y=y)
    return tmp / "strings.npz"


def _data_h5_strings(tmp: Path) -> Path:
    _, y = mlp_arrays()
    with h5py.File(tmp / "strings.h5", "w") as handle:
        handle["x"] = np.full((32, 20), b"0.5")
        handle["y"] = y
    return tmp / "strings.h5"


def _data_wrong_shape(tmp: Path) -> Path:
    x, y = mlp_arrays()
    np.savez(tmp / "shape.npz", x=x[:, :10], y=y)
    return tmp / "shape.npz"


def _data_wrong_rank(tmp: Path) -> Path:
    x, y = mlp_arrays()
    np.savez(tmp / "rank.npz", x=x[:, :, None], y=y)
    return tmp / "rank.npz"


def _data_missing_key(tmp: Path) -> Path:
    x, y = mlp_arrays()
    np.savez(tmp / "keys.npz", features_v2=x, labels=y)
    return tmp / "keys.npz"


def _data_batch_sizes(tmp: Path) -> Path:
    x, y = mlp_arrays()
    np.savez(tmp / "sizes.npz", x=x, y=y[:10])
    return tmp / "sizes.npz"


def _data_empty_batch(tmp: Path) -> Path:
    x, y = mlp_arrays()
    np.savez(tmp / "rows0.npz", x=x[:0], y=y[:0])
    return tmp / "rows0.npz"


def _data_empty_file(tmp: Path) -> Path:
    (tmp / "empty.npz").write_bytes(b"")
    return tmp / "empty.npz"


def _data_csv(tmp: Path) -> Path:
    (tmp / "batch.csv").write_text("1,2,3\n")
    return tmp / "batch.csv"


def _data_not_zip_npz(tmp: Path) -> Path:
    (tmp / "garbage.npz").write_bytes(b"garbage" * 100)
    return tmp / "garbage.npz"


def _data_float_tokens(tmp: Path) -> Path:
    with np.load(SAMPLES / "text_lstm.npz") as data:
        tokens, labels = data["x"], data["y"]
    np.savez(tmp / "float_tokens.npz", x=tokens.astype(np.float32) + 0.5, y=labels)
    return tmp / "float_tokens.npz"


@dataclass(frozen=True)
class BadData:
    make: Callable[[Path], Path]
    code: ExitCode
    patterns: tuple[str, ...]
    model: Path = MLP


BAD_DATA = {
    "missing": BadData(_data_missing, ExitCode.DATA, (r"no such file",)),
    "empty_file": BadData(_data_empty_file, ExitCode.DATA, (r"empty",)),
    "csv": BadData(_data_csv, ExitCode.DATA, (r"unsupported data file type", r"\.csv")),
    "garbage_npz": BadData(_data_not_zip_npz, ExitCode.DATA, (r"not a \.npz file",)),
    # a .npz archive cut in half: the message must say so, not that it is no zip archive
    "truncated_npz": BadData(
        _data_truncated_npz, ExitCode.DATA, (r"(?i)truncated|corrupt|incomplete|damaged",)
    ),
    "pickled_npz": BadData(_data_pickled_npz, ExitCode.DATA, (r"pickle", r"'x'")),
    "object_npy": BadData(_data_object_npy, ExitCode.DATA, (r"pickle",)),
    "strings_npz": BadData(_data_strings, ExitCode.DATA, (r"'x'", r"numeric")),
    "strings_h5": BadData(_data_h5_strings, ExitCode.DATA, (r"'x'", r"numeric")),
    "wrong_shape": BadData(
        _data_wrong_shape,
        ExitCode.MISMATCH,
        (r"'x'", r"'features'", r"expected shape \(None, 20\)", r"found \(32, 10\)"),
    ),
    "wrong_rank": BadData(
        _data_wrong_rank,
        ExitCode.MISMATCH,
        (r"'x'", r"expected shape \(None, 20\)", r"found \(32, 20, 1\)"),
    ),
    "missing_key": BadData(
        _data_missing_key, ExitCode.MISMATCH, (r"'x'", r"'features_v2'", r"'labels'")
    ),
    # the file's keys are x and y: the message names them, with both row counts
    "batch_sizes": BadData(
        _data_batch_sizes, ExitCode.MISMATCH, (r"\b32\b", r"\b10\b", r"\bx\b", r"\by\b")
    ),
    "empty_batch": BadData(_data_empty_batch, ExitCode.DATA, (r"empty", r"0 rows")),
    "float_for_int_input": BadData(
        _data_float_tokens, ExitCode.MISMATCH, (r"'x'", r"integer", r"'tokens'"), TEXT
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_file(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = BAD_DATA[case]
    path = bad.make(tmp_path)
    message, _ = check_error(
        ["inspect", bad.model, "--data", path, "--format", "json"], bad.code, tmp_path, monkeypatch
    )
    assert message.startswith(f"{path}: "), message
    body = message[len(f"{path}: ") :]
    for pattern in bad.patterns:
        assert re.search(pattern, body), f"{pattern!r} not in {message!r}"


@pytest.mark.parametrize(
    ("case", "error"),
    [("pickled_npz", DataLoadError), ("object_npy", DataLoadError), ("wrong_shape", MismatchError)],
)
def test_bad_data_api_raises(case: str, error: type[GradscopeError], tmp_path: Path) -> None:
    path = BAD_DATA[case].make(tmp_path)
    with pytest.raises(error) as info:
        gradscope.inspect_file(MLP, path)
    assert str(path) in str(info.value)


# -- legacy .h5 models -------------------------------------------------------------------


def _cce(y: np.ndarray, probs: np.ndarray) -> float:
    """Keras's categorical crossentropy on probabilities, in numpy (float64)."""
    p = probs.astype(np.float64)
    p = p / p.sum(axis=-1, keepdims=True)
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(np.mean(-np.sum(y * np.log(p), axis=-1)))


def _mse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean((pred.astype(np.float64) - y) ** 2))


@pytest.mark.parametrize(
    ("stem", "source", "hand_loss"),
    [
        ("legacy_keras2", "compiled: categorical_crossentropy", _cce),
        ("regression_keras3", "compiled: mse", _mse),
    ],
)
def test_h5_model_restores_compiled_loss(
    stem: str, source: str, hand_loss: Callable[[np.ndarray, np.ndarray], float], keras: Any
) -> None:
    model_path, data_path = SAMPLES / f"{stem}.h5", SAMPLES / f"{stem}.npz"
    result = invoke("inspect", model_path, "--data", data_path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "", "no 'sum of outputs' note: the compiled loss is used"
    out = json.loads(result.stdout)
    assert out["model"]["format"] == "h5"
    assert out["loss"]["kind"] == "compiled"
    assert out["loss"]["source"] == source
    assert "sum of outputs" not in out["loss"]["source"]

    model = keras.saving.load_model(model_path, compile=False)
    with np.load(data_path) as data:
        x, y = data["x"], data["y"]
    predicted = np.asarray(model.predict(x, verbose=0))
    assert out["loss"]["value"] == pytest.approx(hand_loss(y, predicted), rel=1e-5)


# -- .npy and .h5 batches ---------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("batches")
    x, y = mlp_arrays()
    np.save(folder / "x.npy", x)
    with h5py.File(folder / "xy.h5", "w") as handle:
        handle["x"] = x
        handle["y"] = y
    np.savez(folder / "first5.npz", x=x[:5], y=y[:5])
    np.save(folder / "first5.npy", x[:5])
    return {
        "npy": folder / "x.npy",
        "h5": folder / "xy.h5",
        "first5_npz": folder / "first5.npz",
        "first5_npy": folder / "first5.npy",
    }


def test_npy_batch_has_no_targets_so_the_loss_is_the_sum_of_outputs(
    batch_files: dict[str, Path], keras: Any
) -> None:
    out = run_json("inspect", MLP, "--data", batch_files["npy"])
    assert out["loss"]["source"] == "sum of outputs (no targets in the batch)"
    assert out["loss"]["kind"] == "sum_of_outputs"
    assert out["batch"]["has_targets"] is False
    assert out["batch"]["size"] == 32
    model = keras.saving.load_model(MLP, compile=False)
    expected = float(np.sum(np.asarray(model.predict(mlp_arrays()[0], verbose=0), np.float64)))
    assert out["loss"]["value"] == pytest.approx(expected, rel=1e-5)


def test_h5_batch_works_like_the_npz(batch_files: dict[str, Path]) -> None:
    from_h5 = run_json("inspect", MLP, "--data", batch_files["h5"])
    from_npz = run_json("inspect", MLP, "--data", SAMPLES / "mlp.npz")
    assert from_h5["batch"]["path"] == str(batch_files["h5"])
    assert from_h5["batch"]["keys"] == ["x", "y"]
    for key in ("loss", "variables", "inputs", "activations", "global_grad_norm"):
        assert from_h5[key] == from_npz[key], key


@pytest.mark.parametrize(("kind", "reference"), [("h5", "first5_npz"), ("npy", "first5_npy")])
def test_limit_keeps_the_first_rows(
    kind: str, reference: str, batch_files: dict[str, Path]
) -> None:
    limited = run_json("inspect", MLP, "--data", batch_files[kind], "--limit", "5")
    first5 = run_json("inspect", MLP, "--data", batch_files[reference])
    assert limited["batch"]["size"] == 5
    assert limited["inputs"][0]["shape"] == [5, 20]
    for key in ("loss", "variables", "inputs", "activations"):
        assert limited[key] == first5[key], key


def test_limit_with_npz(batch_files: dict[str, Path]) -> None:
    limited = run_json("inspect", MLP, "--data", SAMPLES / "mlp.npz", "--limit", "5")
    first5 = run_json("inspect", MLP, "--data", batch_files["first5_npz"])
    assert limited["batch"]["size"] == 5
    assert limited["variables"] == first5["variables"]


def test_multi_input_batch_from_h5(tmp_path: Path) -> None:
    """Multi-input/-output models take their arrays by input and output name."""
    with np.load(SAMPLES / "multi_io.npz") as data:
        arrays = {key: data[key] for key in data.files}
    with h5py.File(tmp_path / "multi.h5", "w") as handle:
        for key, value in arrays.items():
            handle[key] = value
    from_h5 = run_json("inspect", SAMPLES / "multi_io.keras", "--data", tmp_path / "multi.h5")
    from_npz = run_json("inspect", SAMPLES / "multi_io.keras", "--data", SAMPLES / "multi_io.npz")
    assert from_h5["loss"] == from_npz["loss"]
    assert from_h5["variables"] == from_npz["variables"]
