"""``gradscope inspect ... --save FILE.h5``: the raw gradient tensors, read back with h5py.

The file must hold exactly ``inspect_file(..., keep_tensors=True).tensors`` (bit for bit),
in the documented layout (schema ``gradscope.tensors/1``)::

    /variables/<path>/grad  /inputs/<name>/grad  /activations/<path>/grad

with the dataset attributes ``kind``, ``path``, ``layer``, ``shape``, ``loss``.  A run
that fails, at any point, leaves neither the file nor a temporary file behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from cli_helpers import invoke

import gradscope
from gradscope.errors import ExitCode
from gradscope.export import hdf5

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
KINDS = {"variables": "variable", "inputs": "input", "activations": "activation"}


def one_error_line(result: Any, code: int) -> str:
    assert result.exit_code == code, (
        f"expected exit {code}, got {result.exit_code}; stderr: {result.stderr!r}"
    )
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gradscope: error: "), result.stderr
    return lines[0][len("gradscope: error: ") :]


def datasets(handle: h5py.File) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}
    handle.visititems(
        lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None
    )
    return found


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


class Saved:
    """One ``--save`` run and the Python API's report of the same inspection."""

    def __init__(self, key: str, folder: Path) -> None:
        self.model = str(SAMPLES / f"{key}.keras")
        self.data = str(SAMPLES / f"{key}.npz")
        self.path = folder / f"{key}.h5"
        self.result = invoke(
            "inspect", self.model, "--data", self.data, "--save", self.path, "--format", "json"
        )
        self.report = gradscope.inspect_file(self.model, self.data, keep_tensors=True)
        self.folder = folder


@pytest.fixture(scope="module")
def save_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``save_run(key)``: one ``--save`` run per sample model, shared by the tests."""
    runs: dict[str, Saved] = {}

    def get(key: str) -> Saved:
        if key not in runs:
            runs[key] = Saved(key, tmp_path_factory.mktemp(f"save_{key}"))
        return runs[key]

    return get


@pytest.fixture(params=["nested", "multi_io", "text_lstm"])
def saved(request: pytest.FixtureRequest, save_run: Any) -> Saved:
    return save_run(request.param)  # type: ignore[no-any-return]


def test_save_succeeds_with_a_note_and_leaves_only_the_file(saved: Saved) -> None:
    result = saved.result
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"gradscope: wrote gradient tensors to {saved.path}\n"
    assert json.loads(result.stdout)["schema"] == "gradscope.inspect/1"  # stdout unchanged
    assert listing(saved.folder) == {saved.path.name}, "no temporary file left behind"


def test_root_attributes(saved: Saved) -> None:
    report = saved.report
    with h5py.File(saved.path, "r") as handle:
        attrs = dict(handle.attrs)
    assert attrs["schema"] == "gradscope.tensors/1"
    assert attrs["loss"] == report.loss.value
    assert attrs["loss_source"] == report.loss.source
    assert attrs["model"] == report.model.name
    assert attrs["batch_size"] == report.batch.size
    assert not attrs["synthetic"]


def test_layout_matches_the_report_tensors(saved: Saved) -> None:
    tensors = saved.report.tensors
    assert tensors is not None
    expected = (
        {f"variables/{p}/grad" for p in tensors.variables}
        | {f"inputs/{n}/grad" for n in tensors.inputs}
        | {f"activations/{p}/grad" for p in tensors.activations}
    )
    with h5py.File(saved.path, "r") as handle:
        assert set(datasets(handle)) == expected
    assert {v.path for v in saved.report.variables} == set(tensors.variables)


def test_arrays_equal_the_python_api_tensors(saved: Saved) -> None:
    tensors = saved.report.tensors
    assert tensors is not None
    groups = {
        "variables": tensors.variables,
        "inputs": tensors.inputs,
        "activations": tensors.activations,
    }
    with h5py.File(saved.path, "r") as handle:
        for group, arrays in groups.items():
            for path, array in arrays.items():
                stored = handle[f"{group}/{path}/grad"][()]
                assert stored.dtype == np.asarray(array).dtype, path
                assert np.array_equal(stored, np.asarray(array)), path


def test_dataset_attributes(saved: Saved) -> None:
    report = saved.report
    variable_layers = {row.path: row.layer for row in report.variables}
    activation_paths = {row.path for row in report.activations}
    with h5py.File(saved.path, "r") as handle:
        for name, dataset in datasets(handle).items():
            group, rest = name.split("/", 1)
            path = rest[: -len("/grad")]
            attrs = dict(dataset.attrs)
            assert {"kind", "path", "layer", "shape", "loss"} <= set(attrs), name
            assert attrs["kind"] == KINDS[group]
            assert attrs["path"] == path
            assert tuple(int(d) for d in attrs["shape"]) == dataset.shape
            assert attrs["loss"] == report.loss.value
            if group == "variables":
                assert attrs["layer"] == variable_layers[path]
            elif group == "activations":
                assert path in activation_paths
                assert attrs["layer"]


def test_gradients_in_the_file_match_the_report_statistics(saved: Saved) -> None:
    """The statistics of the report are those of the saved arrays."""
    with h5py.File(saved.path, "r") as handle:
        for row in saved.report.variables:
            if row.grad is None:
                continue
            grad = handle[f"variables/{row.path}/grad"][()].astype(np.float64)
            assert tuple(grad.shape) == row.shape
            assert np.sqrt(np.sum(grad**2)) == pytest.approx(row.grad.l2, rel=1e-5)
            assert np.max(np.abs(grad)) == pytest.approx(row.grad.max_abs, rel=1e-6)


def test_nested_model_keeps_both_the_submodel_and_its_layers(save_run: Any) -> None:
    saved = save_run("nested")
    assert saved.result.exit_code == 0, saved.result.stderr
    with h5py.File(saved.path, "r") as handle:
        encoder = handle["activations/encoder/grad"]
        inner = handle["activations/encoder/enc_dense_1/grad"]
        assert encoder.attrs["path"] == "encoder"
        assert inner.attrs["path"] == "encoder/enc_dense_1"
        assert encoder.shape == (32, 8)
        assert inner.shape == (32, 16)
        assert "activations/encoder/enc_dense_2/grad" in handle
        assert "variables/enc_dense_1/kernel/grad" in handle


def test_integer_input_has_no_input_gradient(save_run: Any) -> None:
    saved = save_run("text_lstm")
    assert saved.result.exit_code == 0
    with h5py.File(saved.path, "r") as handle:
        assert "inputs/tokens/grad" not in handle
        assert "variables/embedding/embeddings/grad" in handle


def test_synthetic_batch_attributes_and_quiet(tmp_path: Path) -> None:
    out = tmp_path / "synthetic.hdf5"
    result = invoke("inspect", SAMPLES / "mlp.keras", "--seed", "5", "--save", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "hidden_1/kernel" in result.stdout  # the table still goes to stdout
    with h5py.File(out, "r") as handle:
        assert bool(handle.attrs["synthetic"]) is True
        assert handle.attrs["seed"] == 5
        assert handle.attrs["batch_size"] == 16


def test_save_refuses_an_existing_file_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    out.write_bytes(b"old content")
    args = ("inspect", SAMPLES / "mlp.keras", "--data", SAMPLES / "mlp.npz", "--save", out, "-q")
    refused = invoke(*args)
    assert refused.exit_code == ExitCode.OUTPUT
    assert "exists" in refused.stderr
    assert "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert refused.stdout == ""
    assert out.read_bytes() == b"old content"
    result = invoke(*args, "--force")
    assert result.exit_code == 0, result.stderr
    assert h5py.is_hdf5(out)
    assert listing(tmp_path) == {"out.h5"}


# -- failures leave nothing behind -------------------------------------------------------


def _bad_batch(folder: Path) -> Path:
    bad = folder / "bad.npz"
    np.savez(bad, x=np.zeros((4, 7), np.float32), y=np.zeros((4, 3), np.float32))
    return bad


def test_failed_run_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = _bad_batch(tmp_path)
    out = tmp_path / "out.h5"
    result = invoke("inspect", SAMPLES / "mlp.keras", "--data", bad, "--save", out)
    one_error_line(result, ExitCode.MISMATCH)
    assert listing(tmp_path) == {"bad.npz"}


def test_failed_run_keeps_an_existing_file(tmp_path: Path) -> None:
    bad = _bad_batch(tmp_path)
    out = tmp_path / "out.h5"
    out.write_bytes(b"previous results")
    result = invoke("inspect", SAMPLES / "mlp.keras", "--data", bad, "--save", out, "--force")
    one_error_line(result, ExitCode.MISMATCH)
    assert out.read_bytes() == b"previous results"
    assert listing(tmp_path) == {"bad.npz", "out.h5"}


def test_failed_model_load_leaves_no_file(tmp_path: Path) -> None:
    (tmp_path / "broken.keras").write_bytes(b"broken")
    out = tmp_path / "out.h5"
    result = invoke("inspect", tmp_path / "broken.keras", "--save", out)
    one_error_line(result, ExitCode.MODEL)
    assert listing(tmp_path) == {"broken.keras"}


@pytest.mark.parametrize(
    ("exception", "code"),
    [
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (OSError(28, "No space left on device"), ExitCode.OUTPUT),
    ],
)
def test_failure_while_writing_leaves_no_file(
    exception: BaseException, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted (Ctrl-C) or failing half-way through the file: no file, no temp file."""
    original = hdf5._write_group

    def failing(handle: Any, kind: str, tensors: Any, report: Any) -> None:
        original(handle, kind, tensors, report)
        if kind == "inputs":  # the variables and inputs are already in the file
            raise exception

    monkeypatch.setattr(hdf5, "_write_group", failing)
    out = tmp_path / "out.h5"
    result = invoke(
        "inspect", SAMPLES / "mlp.keras", "--data", SAMPLES / "mlp.npz", "--save", out, "-q"
    )
    message = one_error_line(result, code)
    if code == ExitCode.OUTPUT:
        assert str(out) in message
    assert listing(tmp_path) == set()


@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        ("missing_folder/out.h5", "does not exist"),
        ("out.npz", ".npz"),
        ("out", "(no extension)"),
        ("a_folder.h5", "directory"),
    ],
)
def test_bad_save_target(
    target: str, pattern: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_folder.h5").mkdir()
    before = listing(tmp_path)
    out = tmp_path / target
    result = invoke("inspect", SAMPLES / "mlp.keras", "--data", SAMPLES / "mlp.npz", "--save", out)
    message = one_error_line(result, ExitCode.OUTPUT)
    assert message.startswith(f"--save {out}"), message
    assert pattern in message
    assert listing(tmp_path) == before
    assert not (tmp_path / "missing_folder").exists()

    debug = invoke(
        "inspect", SAMPLES / "mlp.keras", "--data", SAMPLES / "mlp.npz", "--save", out, "--debug"
    )
    assert debug.exit_code == ExitCode.OUTPUT
    assert "Traceback" in debug.stderr
    assert listing(tmp_path) == before


def test_saved_file_has_the_usual_permissions(tmp_path: Path) -> None:
    """Written through a private temporary file, the result still gets 0666 & ~umask."""
    import os

    mask = os.umask(0o022)
    try:
        out = tmp_path / "g.h5"
        result = invoke("inspect", SAMPLES / "mlp.keras", "--save", out, "-q")
        assert result.exit_code == 0, result.stderr
        assert out.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
