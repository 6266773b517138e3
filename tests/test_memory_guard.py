"""The memory guard: batches and steps above ``--max-memory`` are refused before they
are read or run (exit 7, one line), and wrong shapes are refused from the headers.

Every bomb here is built without ever holding its data: a ``.npz`` member whose ``.npy``
header claims millions of rows but whose data is cut short (a loader that reads it fails
as truncated, so a refusal proves the header alone was used), zeros deflated a chunk at a
time, and HDF5 datasets whose chunks were never written.  The runs that would exhaust
memory if the guard were broken are made in a subprocess under ``RLIMIT_AS``, so a
broken guard fails the test with a MemoryError instead of taking the machine down.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import error_line, invoke
from conftest import REPO, SAMPLE_MODELS

MLP = SAMPLE_MODELS / "mlp.keras"
MLP_FEATURES = 20
ADDRESS_SPACE = 3 * 1024**3
"""The address-space limit of the subprocess runs: TensorFlow and the mlp model run in
about 2 GB of it; a step over millions of rows does not fit."""


def _npy_header(shape: tuple[int, ...], fortran: bool = False) -> bytes:
    """The magic string and header of a float32 ``.npy`` array of ``shape``."""
    import io

    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def header_bomb(path: Path, shape: tuple[int, ...], fortran: bool = False) -> Path:
    """A ``.npz`` whose ``x`` claims ``shape`` in its header, with 64 bytes of data."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", _npy_header(shape, fortran) + bytes(64))
    return path


def deflate_bomb(path: Path, rows: int, cols: int = MLP_FEATURES) -> Path:
    """A real compressed ``.npz`` of ``rows x cols`` float32 zeros, written a chunk at a
    time (the zeros are never all in memory)."""
    chunk = bytes(4 * cols * 65536)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("x.npy", "w", force_zip64=True) as member,
    ):
        member.write(_npy_header((rows, cols)))
        left = 4 * rows * cols
        while left > 0:
            member.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return path


def hdf5_bomb(path: Path, shape: tuple[int, ...]) -> Path:
    """An HDF5 file holding ``x`` of ``shape`` float32, chunked and never written."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset(
            "x", shape=shape, dtype="f4", chunks=(4096, *shape[1:]), compression="gzip"
        )
    return path


def run_limited(*args: object) -> subprocess.CompletedProcess[str]:
    """``python -m gradscope ARGS`` in a subprocess limited to ``ADDRESS_SPACE``."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gradscope", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        preexec_fn=limit,
        timeout=600,
        check=False,
    )


def one_line(process: subprocess.CompletedProcess[str], code: int) -> str:
    """The one stderr line of a failed subprocess run, checked."""
    assert process.returncode == code, f"exit {process.returncode}: {process.stderr[-2000:]!r}"
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr[-2000:]
    assert "Traceback" not in process.stderr, process.stderr[-2000:]
    assert process.stdout == ""
    return lines[0]


# -- from the headers alone ----------------------------------------------------------


@pytest.mark.parametrize("fortran", [False, True])
def test_npz_bomb_refused_from_its_header(tmp_path: Path, fortran: bool) -> None:
    bomb = header_bomb(tmp_path / "data.npz", (20_000_000, MLP_FEATURES), fortran)
    message = error_line(["inspect", MLP, "--data", bomb, "--max-memory", "1G"], 7)
    assert message.startswith(f"{bomb}: x holds 20,000,000 rows × 20 float32 (1.5 GiB")
    assert "more than --max-memory 1.0 GiB" in message
    # 1 GiB over 80 bytes a row: 13,421,772 rows fit.
    assert message.endswith("Use --batch-size N or --limit N (about N <= 13421772 fits).")


@pytest.mark.parametrize("fortran", [False, True])
def test_wrong_shape_bomb_rejected_from_its_header(tmp_path: Path, fortran: bool) -> None:
    bomb = header_bomb(tmp_path / "data.npz", (20_000_000, MLP_FEATURES + 1), fortran)
    message = error_line(["inspect", MLP, "--data", bomb], 5)
    assert "expected shape (None, 20)" in message
    assert "found (20000000, 21)" in message


def test_check_and_hessian_refuse_from_the_header(tmp_path: Path) -> None:
    bomb = header_bomb(tmp_path / "data.npz", (20_000_000, MLP_FEATURES))
    message = error_line(["check", MLP, "--data", bomb, "--max-memory", "1G"], 7)
    assert message.endswith("Use --limit N (about N <= 13421772 fits).")  # no --batch-size
    message = error_line(["hessian", MLP, "--data", bomb, "--max-memory", "1G"], 7)
    assert "x holds 20,000,000 rows" in message


def test_streaming_counts_the_batches_held(tmp_path: Path) -> None:
    """With --batch-size two batches are held (the first is kept for the report)."""
    bomb = header_bomb(tmp_path / "data.npz", (20_000_000, MLP_FEATURES))
    args = ["inspect", MLP, "--data", bomb, "--batch-size", "10000000"]
    message = error_line([*args, "--max-memory", "1G"], 7)
    assert "(1.5 GiB decompressed, 10,000,000 rows at a time)" in message
    assert "about N <= 6710886 fits" in message


# -- the data part, exactly ----------------------------------------------------------


def test_data_estimate_is_the_decompressed_size(tmp_path: Path, keras: object) -> None:
    """The data part is what reading takes: every array used, plus the float32 copy
    that a float64 input is cast into; one byte less is refused."""
    from gradscope.errors import ResourceError
    from gradscope.loading.data import load_batch
    from gradscope.loading.models import load_model
    from gradscope.loading.signature import model_signature

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(37, MLP_FEATURES)), rng.normal(size=(37, 3)).astype(np.float32)
    weight = np.ones(37, np.float64)
    path = tmp_path / "data.npz"
    np.savez_compressed(path, x=x, y=y, sample_weight=weight)
    expected = x.nbytes + y.nbytes + weight.nbytes + x.astype(np.float32).nbytes
    expected += weight.astype(np.float32).nbytes
    signature = model_signature(load_model(MLP).model)
    batch = load_batch(path, signature, max_memory=expected)
    assert batch.size == 37
    with pytest.raises(ResourceError, match=r"x holds 37 rows × 20 float64"):
        load_batch(path, signature, max_memory=expected - 1)
    assert load_batch(path, signature, limit=36, max_memory=expected - 1).size == 36


def test_npz_rows_are_read_without_a_second_copy(tmp_path: Path) -> None:
    """A member's rows are read a chunk at a time into their array: the numbers come back
    unchanged (across chunk boundaries) and reading allocates the rows about once."""
    import tracemalloc

    from gradscope.loading import data

    rows = 47 * (data._CHUNK // (4 * 8)) + 5  # 48 chunks, the last one partial
    x = np.arange(rows * 8, dtype=np.float32).reshape(rows, 8)
    np.savez_compressed(tmp_path / "a.npz", x=x)
    with data._DataFile(tmp_path / "a.npz") as handle:
        tracemalloc.start()
        got = handle.read("x", 1, rows)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    np.testing.assert_array_equal(got, x[1:])
    assert peak < x.nbytes + 8 * data._CHUNK  # zipfile's read of a chunk copies it a few times


# -- the step part -------------------------------------------------------------------


def test_peak_of_a_chain_is_two_live_tensors(tf: object) -> None:
    """``x -> 2x -> 2x+1 -> sum``: each elementwise op reads one tensor of B·n floats and
    writes one, so two are alive at once (plus scalars); all alive would be three."""
    from gradscope import _tf
    from gradscope.engine.graph_memory import split_graph_bytes
    from gradscope.engine.step_memory import peak_live_bytes

    tensorflow = _tf.tensorflow()
    rows, cols = 1000, 30

    @tensorflow.function(autograph=False)  # type: ignore[misc]
    def chain(x: object) -> object:
        return tensorflow.reduce_sum(x * 2.0 + 1.0)

    spec = tensorflow.TensorSpec([rows, cols], tensorflow.float32)
    graph = chain.get_concrete_function(spec).graph
    tensor = 4 * rows * cols
    peak = peak_live_bytes(graph)
    assert 2 * tensor <= peak <= 2 * tensor + 64
    shared, _ = split_graph_bytes(graph, [])
    assert shared >= 3 * tensor


def test_a_reshape_shares_its_input_buffer(tf: object) -> None:
    """``sum(reshape(2x)) + sum(x)``: x and 2x are alive together; the reshape of 2x is
    the same buffer, not a third tensor."""
    from gradscope import _tf
    from gradscope.engine.step_memory import peak_live_bytes

    tensorflow = _tf.tensorflow()
    rows, cols = 1000, 30

    @tensorflow.function(autograph=False)  # type: ignore[misc]
    def sums(x: object) -> object:
        twice = tensorflow.reshape(x * 2.0, [-1])
        return tensorflow.reduce_sum(twice) + tensorflow.reduce_sum(x)

    spec = tensorflow.TensorSpec([rows, cols], tensorflow.float32)
    tensor = 4 * rows * cols
    peak = peak_live_bytes(sums.get_concrete_function(spec).graph)
    assert 2 * tensor <= peak <= 2 * tensor + 64


def test_tensors_written_to_a_list_live_until_the_list_is_read(tf: object) -> None:
    """Three tensors written one after another into a ``TensorArray`` that a loop reads
    at the end are alive together (the list holds them), although each one's only direct
    reader is its write: the statistics hand their tensors to their loops this way."""
    from gradscope import _tf
    from gradscope.engine.step_memory import peak_live_bytes

    tensorflow = _tf.tensorflow()
    rows, cols = 1000, 30

    @tensorflow.function(autograph=False)  # type: ignore[misc]
    def held(x: object) -> object:
        array = tensorflow.TensorArray(tensorflow.float32, size=3, infer_shape=False)
        for index in range(3):
            array = array.write(index, x * float(index + 2))
        return tensorflow.while_loop(
            lambda i, total: i < 3,
            lambda i, total: (i + 1, total + tensorflow.reduce_sum(array.read(i))),
            [0, 0.0],
        )[1]

    spec = tensorflow.TensorSpec([rows, cols], tensorflow.float32)
    tensor = 4 * rows * cols
    peak = peak_live_bytes(held.get_concrete_function(spec).graph)
    assert 4 * tensor <= peak <= 4 * tensor + 256  # x and the three products


def test_step_estimate_per_row_of_a_dense_model(keras: object) -> None:
    """The inspect step of ``d -> Dense(h, relu) -> Dense(k)`` holds, per row, at least
    the activations and their gradients, 2·4·(d+h+k) bytes, and at most every tensor
    of the step at once."""
    from gradscope import _tf
    from gradscope.engine.gradients import GradientEngine
    from gradscope.engine.graph_memory import split_graph_bytes
    from gradscope.engine.step_memory import guard_step
    from gradscope.loading.signature import model_signature
    from gradscope.losses import resolve_loss
    from gradscope.session import batch_from_arrays

    tf = _tf.tensorflow()
    k3 = _tf.keras()
    d, h, k = 6, 40, 3
    inputs = k3.Input((d,), name="x")
    outputs = k3.layers.Dense(k)(k3.layers.Dense(h, activation="relu")(inputs))
    model = k3.Model(inputs, outputs)
    model.compile(loss="mse")
    signature = model_signature(model)
    spec = resolve_loss(model, signature.output_names, None, True)
    rng = np.random.default_rng(1)

    def estimate(rows: int) -> tuple[int, int]:
        x, y = rng.normal(size=(rows, d)), rng.normal(size=(rows, k))
        batch = batch_from_arrays(signature, x.astype(np.float32), y.astype(np.float32))
        engine = GradientEngine(model, signature, spec)
        needed = guard_step(engine, batch, 2**40)
        specs = [
            {"x": tf.TensorSpec([rows, d], tf.float32)},
            {signature.output_names[0]: tf.TensorSpec([rows, k], tf.float32)},
            None,
        ]
        graph = engine._step_fn.get_concrete_function(*specs).graph
        everything, _ = split_graph_bytes(graph, [])
        return needed, everything

    (small, all_small), (large, all_large) = estimate(1000), estimate(3000)
    per_row = (large - small) / 2000
    assert 2 * 4 * (d + h + k) <= per_row <= (all_large - all_small) / 2000


def test_python_api_guards_the_step_on_arrays_in_memory(keras: object) -> None:
    import gradscope
    from gradscope.errors import ResourceError
    from gradscope.loading.models import load_model

    model = load_model(MLP).model
    x = np.zeros((100_000, MLP_FEATURES), np.float32)
    with pytest.raises(ResourceError) as caught:
        gradscope.inspect(model, x, max_memory=50 * 1024**2)
    message = str(caught.value)
    assert message.startswith("the batch: features holds 100,000 rows × 20 float32")
    assert "and the step needs about" in message
    assert "\n" not in message
    report = gradscope.inspect(model, x, max_memory=50 * 1024**2, batch_size=5000, max_batches=2)
    assert report.batch.size == 10_000


def test_synthetic_batch_is_guarded() -> None:
    message = error_line(["inspect", MLP, "--limit", "200000", "--max-memory", "8M"], 7)
    assert message.startswith("synthetic batch: features holds 200,000 rows × 20 float32")
    assert message.endswith("Use --limit N (about N <= 91180 fits).")  # 8 MiB / 92 B


# -- real bombs, in a subprocess with limited memory -----------------------------------


@pytest.mark.slow
def test_deflated_bomb_refused_before_the_step_runs(tmp_path: Path) -> None:
    """2,000,000 rows of zeros (150 KiB deflated, 153 MiB read) fit 1 GiB; the step over
    them needs about 3.5 GiB and is refused before it runs.  --limit and --batch-size make
    the same file pass, since only the rows of one step count."""
    bomb = deflate_bomb(tmp_path / "data.npz", 2_000_000)
    assert bomb.stat().st_size < 1024**2
    process = run_limited("inspect", MLP, "--data", bomb, "--max-memory", "1G")
    message = one_line(process, 7)
    assert "x holds" not in message  # the data fits: the step is what is refused
    assert "features holds 2,000,000 rows × 20 float32 (152.6 MiB in memory)" in message
    assert "and the step needs about" in message
    assert "more than --max-memory 1.0 GiB. Use --batch-size N or --limit N" in message
    passed = invoke("inspect", MLP, "--data", bomb, "--max-memory", "1G", "--limit", "1000")
    assert passed.exit_code == 0, passed.stderr
    args = ["--batch-size", "50000", "--max-batches", "2", "-f", "json"]
    passed = invoke("inspect", MLP, "--data", bomb, "--max-memory", "1G", *args)
    assert passed.exit_code == 0, passed.stderr
    assert '"rows": 100000' in passed.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("columns", "code"), [(MLP_FEATURES, 7), (MLP_FEATURES + 1, 5)])
def test_hdf5_bomb_refused_from_its_metadata(tmp_path: Path, columns: int, code: int) -> None:
    bomb = hdf5_bomb(tmp_path / "data.h5", (20_000_000, columns))
    assert bomb.stat().st_size < 1024**2
    message = one_line(run_limited("inspect", MLP, "--data", bomb, "--max-memory", "1G"), code)
    if code == 7:
        assert "x holds 20,000,000 rows × 20 float32 (1.5 GiB decompressed)" in message
    else:
        assert "expected shape (None, 20)" in message
        assert "found (20000000, 21)" in message


# -- the budget ----------------------------------------------------------------------


def test_default_budget_is_half_the_available_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradscope.engine import step_memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    monkeypatch.setattr(step_memory, "MEMINFO", meminfo)
    assert step_memory.default_max_memory() == 8000000 * 1024 // 2
    monkeypatch.setattr(step_memory, "MEMINFO", tmp_path / "missing")

    def unavailable(name: str) -> int:
        raise ValueError(name)

    monkeypatch.setattr(os, "sysconf", unavailable)
    assert step_memory.default_max_memory() == 2 * 1024**3
    from gradscope.commands.hessian import run as hessian_run

    assert hessian_run.HessianOptions().max_memory == 2 * 1024**3


@pytest.mark.parametrize("command", ["inspect", "check", "hessian"])
def test_max_memory_is_parsed_alike(command: str) -> None:
    message = error_line([command, MLP, "--max-memory", "lots"], 2)
    assert message == "--max-memory: expected a size such as 512M or 2GiB. Received: 'lots'"
