"""The user's own input pipeline: ``tf.data``, ``PyDataset`` and generators.

* The mean gradient over a pipeline's batches (a short last batch, dict inputs of a
  multi-input model, a ``sample_weight`` in the 3-tuple) equals the gradient of the loss
  on all the rows at once: one ``tf.GradientTape`` over ``model.compute_loss`` on the
  concatenated data (every sample model's loss is mean-reduced, so the row-weighted mean
  of the batch gradients is exactly that).  Same for a ``PyDataset`` and a generator.
* ``hessian`` over a pipeline: an exact block equals the explicit Hessian of the
  full-data loss (the tape's Jacobian of its gradient), and Lanczos finds its top
  eigenvalue.
* ``check`` reads only the first batch, and its autodiff gradient is that batch's.
* ``--data FILE.py:NAME`` gives the report of the ``.npz`` route, and every error in the
  file is one line with its exit code.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import error_line, invoke

import gradscope
from gradscope.errors import DataLoadError, ExitCode, MismatchError, ResourceError, UsageError
from gradscope.loading import pipelines
from gradscope.loading.pipelines import PipelineSpec, parse_pipeline_spec
from gradscope.loading.signature import model_signature

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
MLP = SAMPLES / "mlp.keras"
RTOL = 2e-5  # float32 gradients of different batch splits, summed in float64


@pytest.fixture(scope="module")
def mlp(keras: Any) -> Any:
    return keras.saving.load_model(MLP)


@pytest.fixture(scope="module")
def multi_io(keras: Any) -> Any:
    return keras.saving.load_model(SAMPLES / "multi_io.keras")


@pytest.fixture(scope="module")
def mlp_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """32 rows of the mlp sample, and positive per-row weights."""
    with np.load(SAMPLES / "mlp.npz") as data:
        x, y = data["x"], data["y"]
    weight = np.random.default_rng(3).uniform(0.2, 2.0, size=len(x)).astype(np.float32)
    return x, y, weight


# -- the independent reference: one tape over all the rows ---------------------------------


def reference(model: Any, x: Any, y: Any, weight: Any = None) -> tuple[float, dict[str, Any]]:
    """The loss on all the rows at once and its gradient per variable (float64)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        predictions = model(x, training=False)
        loss = model.compute_loss(x=x, y=y, y_pred=predictions, sample_weight=weight)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    return float(loss), {
        v.path: np.asarray(g, np.float64) for v, g in zip(variables, grads, strict=True)
    }


def reference_hessian(model: Any, x: Any, y: Any, variable: Any) -> np.ndarray:
    """The explicit Hessian of the full-data loss in one variable: d(grad)/d(variable)."""
    import tensorflow as tf

    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False))
        gradient = inner.gradient(loss, variable.value)
    jacobian = outer.jacobian(gradient, variable.value, experimental_use_pfor=False)
    size = int(np.prod(variable.shape))
    return np.asarray(jacobian, np.float64).reshape(size, size)


def assert_mean_gradient(report: Any, expected_loss: float, expected: dict[str, Any]) -> None:
    assert report.tensors is not None
    assert report.loss.value == pytest.approx(expected_loss, rel=RTOL)
    assert set(report.tensors.variables) == set(expected)
    for path, want in expected.items():
        got = report.tensors.variables[path]
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * scale + 1e-9, err_msg=path)


# -- the Python API ---------------------------------------------------------------------------


def test_tf_data_short_last_batch_and_sample_weight(tf: Any, mlp: Any, mlp_data: Any) -> None:
    x, y, weight = mlp_data
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(10)  # 10, 10, 10, 2
    report = gradscope.inspect(mlp, dataset, keep_tensors=True)
    assert report.batches is not None
    assert (report.batches.count, report.batches.rows, report.batch.size) == (4, 32, 32)
    assert report.batches.batch_size == 10
    assert_mean_gradient(report, *reference(mlp, x, y, weight))


@pytest.mark.slow
def test_tf_data_dict_inputs_of_a_multi_input_model(tf: Any, multi_io: Any) -> None:
    with np.load(SAMPLES / "multi_io.npz") as data:
        x = {name: data[name] for name in ("image_features", "metadata")}
        y = {name: data[name] for name in ("category", "score")}
    weight = np.linspace(0.5, 1.5, 32, dtype=np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(7)  # 7 x 4, then 4
    report = gradscope.inspect(multi_io, dataset, keep_tensors=True)
    assert report.batches is not None
    assert report.batches.count == 5
    assert_mean_gradient(report, *reference(multi_io, x, y, weight))


def test_py_dataset(keras: Any, mlp: Any, mlp_data: Any) -> None:
    x, y, _ = mlp_data

    class Rows(keras.utils.PyDataset):  # type: ignore[misc,name-defined]
        def __len__(self) -> int:
            return math.ceil(len(x) / 12)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            rows = slice(12 * index, 12 * (index + 1))
            return x[rows], y[rows]

    report = gradscope.inspect(mlp, Rows(), keep_tensors=True)
    assert report.batches is not None
    assert report.batches.count == 3
    assert_mean_gradient(report, *reference(mlp, x, y))


def test_generator_of_tensors_and_lists(tf: Any, mlp: Any, mlp_data: Any) -> None:
    x, y, weight = mlp_data

    def rows() -> Iterator[Any]:
        for start in range(0, 32, 9):  # 9, 9, 9, 5; a list is read as a tuple, as Keras does
            part = slice(start, start + 9)
            yield [tf.constant(x[part]), y[part], weight[part]]

    report = gradscope.inspect(mlp, rows(), keep_tensors=True)
    assert report.batches is not None
    assert report.batches.count == 4
    assert_mean_gradient(report, *reference(mlp, x, y, weight))


def test_max_batches_caps_an_infinite_dataset(tf: Any, mlp: Any, mlp_data: Any) -> None:
    x, y, _ = mlp_data
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(10).repeat()
    with pytest.raises(UsageError, match=r"infinite .*max_batches"):
        gradscope.inspect(mlp, endless)
    report = gradscope.inspect(mlp, endless, max_batches=5, keep_tensors=True)
    assert report.batches is not None
    assert report.batches.count == 5
    # batches of 10, 10, 10, 2 (short, in the middle), then 10 again: rows 0-31, 0-9
    rows = np.r_[np.arange(32), np.arange(10)]
    assert report.batch.size == 42
    assert_mean_gradient(report, *reference(mlp, x[rows], y[rows]))


def test_one_batch_is_the_same_as_its_arrays(tf: Any, mlp: Any, mlp_data: Any) -> None:
    x, y, _ = mlp_data
    report = gradscope.inspect(mlp, tf.data.Dataset.from_tensors((x, y)), keep_tensors=True)
    assert report.batches is None  # one batch: no "across batches" section
    assert report.batch.size == 32
    assert_mean_gradient(report, *reference(mlp, x, y))


@pytest.mark.slow
def test_hessian_exact_block_and_lanczos_over_a_pipeline(tf: Any, mlp: Any, mlp_data: Any) -> None:
    x, y, _ = mlp_data
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(32, seed=1).batch(10)
    variable = next(v for v in mlp.trainable_variables if v.path == "hidden_2/bias")
    expected = reference_hessian(mlp, x, y, variable)
    exact = gradscope.hessian(
        mlp, dataset, options=gradscope.HessianOptions(variables="hidden_2/bias", method="exact")
    )
    block = exact.blocks[0]
    assert block.method == "exact"
    assert exact.batch.size == 32
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(block.matrix, expected, rtol=0, atol=1e-4 * scale)
    top = float(np.linalg.eigvalsh(0.5 * (expected + expected.T))[-1])
    lanczos = gradscope.hessian(
        mlp,
        dataset,
        options=gradscope.HessianOptions(
            variables="hidden_2/bias", method="lanczos", top_k=1, tol=1e-6
        ),
    )
    assert lanczos.blocks[0].eigenvalues[0] == pytest.approx(top, rel=1e-4)


def test_check_reads_only_the_first_batch(tf: Any, mlp: Any, mlp_data: Any) -> None:
    x, y, _ = mlp_data

    def rows() -> Iterator[Any]:
        yield x[:10], y[:10]
        raise AssertionError("check read a second batch")

    report = gradscope.check(mlp, rows(), variables="probs/*", inputs=False)
    assert report.batch.size == 10
    assert report.passed
    _, expected = reference(mlp, x[:10], y[:10])
    for row in report.rows:
        for coordinate in row.coordinates:
            want = expected[row.path][coordinate.index]
            assert coordinate.autodiff == pytest.approx(want, rel=1e-4, abs=1e-7), row.path


def test_python_api_refusals(tf: Any, mlp: Any, mlp_data: Any) -> None:
    x, y, _ = mlp_data
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    with pytest.raises(UsageError, match=r"^y: must be None when x is a dataset"):
        gradscope.inspect(mlp, dataset, y)
    with pytest.raises(UsageError, match=r"^batch_size: not used when x is a dataset"):
        gradscope.hessian(mlp, dataset, batch_size=8)
    with pytest.raises(UsageError, match=r"^x: a function; .* Call it"):
        gradscope.inspect(mlp, lambda: dataset)
    with pytest.raises(UsageError, match=r"max_batches .*positive"):
        gradscope.inspect(mlp, dataset, max_batches=0)
    wrong = tf.data.Dataset.from_tensor_slices((x[:, :5], y)).batch(10)
    with pytest.raises(MismatchError, match=r"^x \(\w+\): batch 0: x: key 'features'"):
        gradscope.inspect(mlp, wrong)
    with pytest.raises(DataLoadError, match=r"yielded no batch"):
        gradscope.inspect(mlp, iter([]))


def test_the_kept_batches_are_bounded(mlp: Any, mlp_data: Any) -> None:
    x, y, _ = mlp_data
    signature = model_signature(mlp)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    one_batch = x[:8].nbytes + y[:8].nbytes
    kept = pipelines.read_batches(batches, signature, "data", budget=4 * one_batch)
    assert [b.size for b in kept] == [8, 8, 8, 8]
    with pytest.raises(ResourceError, match=r"the first 4 batches hold .*max_batches"):
        pipelines.read_batches(batches, signature, "data", budget=4 * one_batch - 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pipe.py:train_batches", PipelineSpec(Path("pipe.py"), "train_batches")),
        ("my:dir/Pipe.PY:make", PipelineSpec(Path("my:dir/Pipe.PY"), "make")),
        ("pipe.py:", PipelineSpec(Path("pipe.py"), "")),
        ("C:\\data\\batch.npz", None),
        ("run:3/batch.npz", None),
        ("batch.npz", None),
        ("pipe.py", None),
        (None, None),
    ],
)
def test_which_data_option_is_a_pipeline(text: str | None, expected: PipelineSpec | None) -> None:
    assert parse_pipeline_spec(text) == expected


# -- the CLI ------------------------------------------------------------------------------------

PIPELINE = """
import numpy as np
import tensorflow as tf

def batches():
    with np.load({npz!r}) as data:
        x, y = data["x"], data["y"]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
"""


def _pipeline_file(tmp_path: Path, body: str, name: str = "pipe.py") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _json(*args: object) -> dict[str, Any]:
    result = invoke(*args, "-f", "json", "-q")
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def _numbers(value: Any) -> Any:
    """Every number of a JSON value, in order (to compare two reports to a tolerance)."""
    if isinstance(value, dict):
        return [n for key in sorted(value) for n in _numbers(value[key])]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    return [float(value)]


@pytest.mark.slow
def test_cli_pipeline_equals_the_npz_route(tmp_path: Path) -> None:
    npz = SAMPLES / "mlp.npz"
    spec = f"{_pipeline_file(tmp_path, PIPELINE.format(npz=str(npz)))}:batches"
    inspected = _json("inspect", MLP, "--data", spec)
    streamed = _json("inspect", MLP, "--data", npz, "--batch-size", 10)
    assert inspected["batches"]["count"] == 4
    assert inspected["batch"]["path"] == spec
    for key in ("variables", "activations", "inputs", "loss", "batches", "global_grad_norm"):
        assert _numbers(inspected[key]) == pytest.approx(_numbers(streamed[key]), rel=1e-6)
    hessians = [
        _json("hessian", MLP, "--data", data, "--vars", "probs/bias", *extra)
        for data, extra in ((spec, ()), (npz, ("--batch-size", 10)))
    ]
    assert _numbers(hessians[0]["blocks"][0]["eigenvalues"]) == pytest.approx(
        _numbers(hessians[1]["blocks"][0]["eigenvalues"]), rel=1e-6
    )
    checks = [
        _json("check", MLP, "--data", data, "--vars", "probs/*", "--no-inputs", *extra)
        for data, extra in ((spec, ()), (npz, ("--limit", 10)))
    ]
    assert checks[0]["batch"]["size"] == 10
    assert _numbers(checks[0]["variables"]) == pytest.approx(
        _numbers(checks[1]["variables"]), rel=1e-9
    )


GOOD_ROWS = "np.zeros((4, 20), np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]"

# (file body, exit code, a regular expression the one error line must match)
CLI_ERRORS = {
    "syntax error": ("def batches(:\n", ExitCode.DATA, r"importing it raised SyntaxError"),
    "raises on import": (
        "raise RuntimeError('no data here')\n",
        ExitCode.DATA,
        r"pipe\.py: importing it raised RuntimeError: no data here$",
    ),
    "name missing": (
        "def batchez():\n    return []\n",
        ExitCode.DATA,
        r"pipe\.py: defines no 'batches'\. Close names: batchez\.$",
    ),
    "not callable": ("batches = 3\n", ExitCode.DATA, r"expected a function .* Received: int$"),
    "call raises": (
        "def batches():\n    raise FileNotFoundError('train.csv')\n",
        ExitCode.DATA,
        r"pipe\.py:batches: calling batches\(\) raised FileNotFoundError: train\.csv$",
    ),
    "wrong return type": (
        "def batches():\n    return 42\n",
        ExitCode.DATA,
        r"batches\(\) returned int; expected a tf\.data\.Dataset",
    ),
    "a dict of arrays": (
        "def batches():\n    return {'x': 1}\n",
        ExitCode.DATA,
        r"batches\(\) returned dict",
    ),
    "empty": ("def batches():\n    return []\n", ExitCode.DATA, r"yielded no batch\.$"),
    "four items": (
        f"import numpy as np\ndef batches():\n    yield ({GOOD_ROWS}, np.ones(4), 0)\n",
        ExitCode.DATA,
        r"batch 0: a tuple of 4 items; expected x, \(x, y\) or \(x, y, sample_weight\).*"
        r"Received: \(ndarray\(4, 20\), ndarray\(4, 3\), ndarray\(4,\), int\)$",
    ),
    "strings": (
        "import numpy as np\ndef batches():\n    yield np.array([['a'] * 20] * 4)\n",
        ExitCode.DATA,
        r"batch 0: holds <U1 data; expected numbers",
    ),
    "x is None": (
        "import numpy as np\ndef batches():\n    yield None, np.zeros((4, 3))\n",
        ExitCode.DATA,
        r"batch 0: x is None",
    ),
    "ragged": (
        "import tensorflow as tf\ndef batches():\n"
        "    yield tf.ragged.constant([[1.0] * 20, [2.0] * 19])\n",
        ExitCode.DATA,
        r"batch 0: holds a RaggedTensor; expected dense arrays",
    ),
    "arrays of unequal rows": (
        "import numpy as np\ndef batches():\n"
        "    yield [np.zeros((4, 20)), np.zeros((3, 20))], np.zeros((4, 3))\n",
        ExitCode.DATA,
        r"batch 0: not an array: .*inhomogeneous",
    ),
    "raises while read": (
        f"import numpy as np\ndef batches():\n    yield {GOOD_ROWS}\n"
        "    raise ValueError('corrupt record 17')\n",
        ExitCode.DATA,
        r"pipe\.py:batches: batch 1: reading it raised ValueError: corrupt record 17$",
    ),
    "tf.data error": (
        "import tensorflow as tf\ndef batches():\n"
        "    return tf.data.TFRecordDataset('missing.tfrecord')\n",
        ExitCode.DATA,
        r"batch 0: reading it raised NotFoundError",
    ),
    "shape of batch 2": (
        f"import numpy as np\ndef batches():\n    yield {GOOD_ROWS}\n    yield {GOOD_ROWS}\n"
        "    yield np.zeros((4, 21), np.float32), np.zeros((4, 3), np.float32)\n",
        ExitCode.MISMATCH,
        r"pipe\.py:batches: batch 2: x: key 'features' does not fit model input 'features'",
    ),
    "sample_weight rows": (
        f"import numpy as np\ndef batches():\n    yield {GOOD_ROWS}, np.ones(3)\n",
        ExitCode.MISMATCH,
        r"batch 0: sample_weight does not have one weight per row \(4 rows\)\. "
        r"Received: shape \(3,\)$",
    ),
    "infinite": (
        "import numpy as np, tensorflow as tf\ndef batches():\n"
        f"    return tf.data.Dataset.from_tensors(({GOOD_ROWS})).repeat()\n",
        ExitCode.USAGE,
        r"the dataset is infinite \(tf\.data cardinality INFINITE.*--max-batches",
    ),
    "infinite PyDataset": (
        "import keras\nclass Endless(keras.utils.PyDataset):\n"
        "    num_batches = None\n    def __getitem__(self, i):\n        return None\n"
        "def batches():\n    return Endless()\n",
        ExitCode.USAGE,
        r"infinite \(PyDataset\.num_batches is None\)",
    ),
}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_cli_errors_in_the_pipeline_file(tmp_path: Path, case: str) -> None:
    body, code, pattern = CLI_ERRORS[case]
    spec = f"{_pipeline_file(tmp_path, body)}:batches"
    message = error_line(["inspect", MLP, "--data", spec], code)
    assert re.search(pattern, message), message


@pytest.mark.parametrize("command", ["inspect", "hessian", "check"])
def test_cli_errors_before_anything_is_loaded(tmp_path: Path, command: str) -> None:
    message = error_line([command, MLP, "--data", tmp_path / "nowhere.py:f"], ExitCode.DATA)
    assert message.endswith("nowhere.py: no such file; --data FILE.py:NAME expects a .py file.")
    _pipeline_file(tmp_path, "")
    for name in ("", "1st"):
        message = error_line([command, MLP, "--data", f"{tmp_path}/pipe.py:{name}"], ExitCode.DATA)
        assert f"expected FILE.py:NAME, NAME a Python function name. Received: {name!r}" in message
    # a path with a colon that is not FILE.py:NAME is a data file, as before
    message = error_line([command, MLP, "--data", tmp_path / "run:3.npz"], ExitCode.DATA)
    assert "run:3.npz: no such file; expected a .npz, .npy or .h5 data file." in message


def test_cli_options_that_cut_a_data_file(tmp_path: Path) -> None:
    spec = f"{_pipeline_file(tmp_path, CLI_ERRORS['empty'][0])}:batches"
    for option in ("--batch-size", "--limit"):
        message = error_line(["inspect", MLP, "--data", spec, option, 8], ExitCode.USAGE)
        assert message.startswith(f"{option}: not used with --data {spec}, which makes its own")


@pytest.mark.slow
def test_cli_infinite_dataset_with_max_batches_and_the_memory_bound(tmp_path: Path) -> None:
    body = (
        "import numpy as np, tensorflow as tf\ndef batches():\n"
        f"    return tf.data.Dataset.from_tensors(({GOOD_ROWS})).repeat()\n"
    )
    spec = f"{_pipeline_file(tmp_path, body)}:batches"
    report = _json("inspect", MLP, "--data", spec, "--max-batches", 3)
    assert (report["batches"]["count"], report["batch"]["size"]) == (3, 12)
    # One batch is 368 bytes: the second one passes the budget.
    args = ["hessian", MLP, "--data", spec, "--max-batches", 3, "--max-memory", 700]
    message = error_line(args, ExitCode.RESOURCE)
    assert "the first 2 batches hold 736 B, more than --max-memory 700 B" in message


# -- the README recipe ------------------------------------------------------------------------


def _readme_blocks() -> list[tuple[str, str]]:
    """The fenced code blocks (language, text) of the README's pipeline section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own input pipeline", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_the_readme_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keras: Any) -> None:
    blocks = _readme_blocks()
    api_code = next(code for lang, code in blocks if lang == "python" and "gradscope." in code)
    file_code = next(code for lang, code in blocks if code.startswith("# pipeline.py"))
    command = next(code for lang, code in blocks if lang == "sh")
    # the CSV the README reads: 20 feature columns, then 3 one-hot label columns
    rng = np.random.default_rng(7)
    x = rng.normal(size=(70, 20)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, size=70)]
    np.savetxt(tmp_path / "features.csv", np.hstack([x, y]), delimiter=",", fmt="%.9g")
    (tmp_path / "sample_models").symlink_to(SAMPLES)
    monkeypatch.chdir(tmp_path)
    expected_loss, expected = reference(keras.saving.load_model(MLP), x, y)

    scope: dict[str, Any] = {}
    exec(compile(api_code, "README.md", "exec"), scope)  # our own README
    report = scope["report"]
    assert report.batches.count == 3
    assert report.batch.size == 70
    assert_mean_gradient(report, expected_loss, expected)
    assert scope["curvature"].blocks

    (tmp_path / "pipeline.py").write_text(file_code)
    args = shlex.split(command.strip().splitlines()[0])[1:]
    result = _json(*args)
    assert result["batches"]["count"] == 3
    assert result["loss"]["value"] == pytest.approx(expected_loss, rel=RTOL)
    norms = {row["path"]: row["grad"]["l2"] for row in result["variables"]}
    for path, want in expected.items():
        assert norms[path] == pytest.approx(float(np.linalg.norm(want)), rel=1e-4), path
