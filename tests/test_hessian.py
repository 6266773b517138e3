"""``gradscope hessian`` against closed forms, finite differences and exact eigenvalues."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gradscope import InspectOptions
from gradscope.cli import app
from gradscope.commands.hessian import HessianOptions
from gradscope.commands.hessian import run as hessian_run
from gradscope.engine.hessian import (
    MAX_ROWS_PER_PASS,
    HessianOperator,
    WorkEstimate,
    exact_block_bytes,
)
from gradscope.errors import ExitCode, ResourceError, UsageError
from gradscope.loading.signature import model_signature
from gradscope.session import batch_from_arrays, prepare_loss_and_batch

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _operator(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    variables: Any = None,
    hvp_mode: Any = "reverse",
    training: bool = False,
) -> HessianOperator:
    signature = model_signature(model)
    spec, batch = prepare_loss_and_batch(
        model, signature, batch_from_arrays(signature, x, y), InspectOptions(training=training)
    )
    chosen = model.trainable_variables if variables is None else variables
    return HessianOperator(
        model, signature, spec, batch, chosen, training=training, hvp_mode=hvp_mode
    )


def test_linear_regression_block_is_the_closed_form(regression) -> None:  # type: ignore[no-untyped-def]
    model, x, y = regression
    hessian = _operator(model, x, y).exact()
    gram = x.astype(np.float64).T @ x.astype(np.float64)
    # Keras's mse averages over the batch and the 2 outputs; the kernel is (5, 2) flattened
    # row-major, so output j of input i is entry 2*i + j: H = kron(2/(N*2) X^T X, I_2).
    expected = np.kron(2.0 / (24 * 2) * gram, np.eye(2))
    np.testing.assert_allclose(hessian, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_logistic_regression_block_is_the_closed_form(keras) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = rng.integers(0, 2, (40, 1)).astype(np.float32)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", use_bias=False)(inputs))
    model.compile(loss="binary_crossentropy")
    hessian = _operator(model, x, y).exact()
    weights = model.trainable_variables[0].numpy().astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ weights)))
    s = (p * (1 - p)).ravel()
    expected = (x.T.astype(np.float64) * s) @ x.astype(np.float64) / 40
    np.testing.assert_allclose(hessian, expected, rtol=1e-4, atol=1e-6)


L2 = 2.0**-5
"""Exact in float32, as Keras keeps the L2 coefficient (0.03 would differ by 2e-9)."""
BN_EPSILON = 1e-3  # Keras's BatchNormalization default
TRAINING_SCALE = 1.5


def _training_scale(keras):  # type: ignore[no-untyped-def]
    """A layer whose training flag changes the math deterministically: ``1.5 x`` in
    training mode, ``x`` otherwise (inverted dropout with an all-ones mask)."""

    class TrainingScale(keras.layers.Layer):
        def call(self, inputs, training=None):  # type: ignore[no-untyped-def]
            return inputs * TRAINING_SCALE if training else inputs

    return TrainingScale(dtype="float64", name="scale")


def _small_net(keras, middle: str, rows_per_pass: int):  # type: ignore[no-untyped-def]
    """A float64 net whose loss depends on the training flag, differentiated in training
    mode: an L2-regularized kernel, then ``middle`` (the training-only scale, or
    BatchNorm with batch statistics), tanh, softmax and categorical crossentropy.

    The layers get ``dtype="float64"`` explicitly (Keras caches its global dtype policy),
    and ``floatx`` is float64 while the loss is built and evaluated, since Keras computes
    the compiled loss in ``floatx``.
    """
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        rng = np.random.default_rng(2)
        x = rng.standard_normal((12, 3))
        y = np.eye(3)[rng.integers(0, 3, 12)]
        inputs = keras.Input((3,), dtype="float64")
        hidden = keras.layers.Dense(
            4,
            use_bias=False,
            kernel_regularizer=keras.regularizers.L2(L2),
            dtype="float64",
            name="hidden",
        )(inputs)
        if middle == "batchnorm":
            layer = keras.layers.BatchNormalization(dtype="float64", name="norm")
        else:
            layer = _training_scale(keras)
        activated = keras.layers.Activation("tanh", dtype="float64")(layer(hidden))
        outputs = keras.layers.Dense(3, activation="softmax", dtype="float64", name="probs")(
            activated
        )
        model = keras.Model(inputs, outputs)
        model.compile(loss="categorical_crossentropy")
        if middle == "batchnorm":
            layer.gamma.assign(rng.uniform(0.5, 1.5, 4))  # away from the initial 1 and 0
            layer.beta.assign(rng.normal(0.0, 0.3, 4))
        operator = _operator(model, x, y, training=True)
        forward = _operator(model, x, y, hvp_mode="forward", training=True)
        exact = operator.exact()
        reference = _independent_hessian(operator, x, y)
        vectors = np.random.default_rng(3).standard_normal((3, operator.size))
        products = [(v, operator.hvp(v), forward.hvp(v)) for v in vectors]
        passes: list[int] = []
        in_passes = operator.exact(rows_per_pass=rows_per_pass, on_rows=passes.append)
        loss = operator.loss_value()
    finally:
        keras.config.set_floatx(previous)
    return operator, exact, reference, products, (in_passes, passes), loss


@pytest.fixture(scope="module")
def small_net(keras):  # type: ignore[no-untyped-def]
    """The net with the training-only scale; 4 rows a pass: 7 passes over n = 27, the
    last one padded."""
    return _small_net(keras, "scale", rows_per_pass=4)


def _independent_loss(weights: dict[str, Any], x: np.ndarray, y: np.ndarray) -> Any:
    """The small net's training-mode loss, written out in TensorFlow ops: the scale (or
    BatchNorm with batch statistics, when ``weights`` has its gamma and beta), the
    categorical crossentropy of the softmax, plus the L2 penalty."""
    import tensorflow as tf

    hidden = tf.constant(x) @ weights["hidden/kernel"]
    if "norm/gamma" in weights:
        mean = tf.reduce_mean(hidden, axis=0)
        variance = tf.reduce_mean(tf.square(hidden - mean), axis=0)
        normed = (hidden - mean) / tf.sqrt(variance + BN_EPSILON)
        hidden = normed * weights["norm/gamma"] + weights["norm/beta"]
    else:
        hidden = TRAINING_SCALE * hidden
    logits = tf.tanh(hidden) @ weights["probs/kernel"] + weights["probs/bias"]
    log_probs = logits - tf.reduce_logsumexp(logits, axis=1, keepdims=True)
    crossentropy = -tf.reduce_mean(tf.reduce_sum(tf.constant(y) * log_probs, axis=1))
    return crossentropy + L2 * tf.reduce_sum(tf.square(weights["hidden/kernel"]))


def _independent_hessian(
    operator: HessianOperator, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, float]:
    """Nested ``tf.GradientTape``s over :func:`_independent_loss` of one flat float64
    vector laid out as the operator's variables: the Hessian and the loss."""
    import tensorflow as tf

    flat = np.concatenate([v.numpy().ravel() for v in operator.variables])
    w = tf.Variable(flat, dtype=tf.float64)
    bounds = np.cumsum([0, *operator.sizes])
    paths = [v.path for v in operator.variables]
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            weights = {
                path: tf.reshape(w[bounds[i] : bounds[i + 1]], shape)
                for i, (path, shape) in enumerate(zip(paths, operator.shapes, strict=True))
            }
            loss = _independent_loss(weights, x, y)
        gradient = inner.gradient(loss, w)
    return outer.jacobian(gradient, w).numpy(), float(loss)


def _assert_hessian_of_the_independent_loss(net: Any, paths: list[str]) -> None:
    operator, exact, (reference, reference_loss), _, _, loss = net
    assert [v.path for v in operator.variables] == paths
    # The same function: gradscope's training-mode loss with the penalty.
    assert loss == pytest.approx(reference_loss, rel=1e-12)
    # Float64 throughout: both are exact derivatives, equal up to rounding.
    scale = np.abs(reference).max()
    np.testing.assert_allclose(exact, reference, rtol=1e-9, atol=1e-12 * scale)


def test_exact_block_is_the_hessian_of_an_independent_loss(small_net) -> None:  # type: ignore[no-untyped-def]
    paths = ["hidden/kernel", "probs/kernel", "probs/bias"]
    _assert_hessian_of_the_independent_loss(small_net, paths)


@pytest.mark.xfail(
    strict=True,
    reason="known defect: tf.nn.moments computes the variance around stop_gradient(mean), "
    "so autodiff's second derivative through BatchNormalization (and LayerNormalization, "
    "GroupNormalization) in training mode misses the terms through the batch mean",
)
def test_batchnorm_training_block_is_the_hessian_of_an_independent_loss(keras) -> None:  # type: ignore[no-untyped-def]
    net = _small_net(keras, "batchnorm", rows_per_pass=8)
    paths = ["hidden/kernel", "norm/gamma", "norm/beta", "probs/kernel", "probs/bias"]
    _assert_hessian_of_the_independent_loss(net, paths)


def test_hvp_equals_the_independent_hessian_product(small_net) -> None:  # type: ignore[no-untyped-def]
    _, _, (reference, _), products, _, _ = small_net
    for vector, reverse, forward in products:
        expected = reference @ vector
        atol = 1e-12 * np.abs(expected).max()
        np.testing.assert_allclose(reverse, expected, rtol=1e-9, atol=atol)
        np.testing.assert_allclose(forward, expected, rtol=1e-9, atol=atol)


def test_exact_rows_in_passes_equal_the_single_pass(small_net) -> None:  # type: ignore[no-untyped-def]
    operator, exact, _, _, (in_passes, passes), _ = small_net
    assert operator.size == 27
    assert passes == [4] * 6 + [3]
    np.testing.assert_allclose(in_passes, exact, rtol=1e-12, atol=1e-15)


@pytest.fixture(scope="module")
def mlp_reports():  # type: ignore[no-untyped-def]
    data = SAMPLES / "mlp.npz"
    exact = hessian_run.hessian_file(
        SAMPLES / "mlp.keras",
        data,
        options=hessian_run.HessianOptions(block="layer", layers="probs", method="exact", top_k=3),
    )
    lanczos = hessian_run.hessian_file(
        SAMPLES / "mlp.keras",
        data,
        options=hessian_run.HessianOptions(
            block="layer", layers="probs", method="lanczos", top_k=3, tol=1e-6, trace=True
        ),
    )
    return exact.blocks[0], lanczos.blocks[0]


def test_lanczos_extremes_match_eigvalsh_of_the_exact_block(mlp_reports) -> None:  # type: ignore[no-untyped-def]
    exact, lanczos = mlp_reports
    assert lanczos.method == "lanczos"
    assert exact.method == "exact"
    scale = max(abs(exact.eigenvalues[0]), abs(exact.min_eigenvalue))
    np.testing.assert_allclose(lanczos.eigenvalues, exact.eigenvalues, atol=1e-4 * scale)
    assert lanczos.min_eigenvalue == pytest.approx(exact.min_eigenvalue, abs=1e-4 * scale)
    assert lanczos.converged
    assert lanczos.residuals is not None
    assert max(lanczos.residuals) <= 1e-3 * scale


def test_hutchinson_trace_within_three_standard_errors(mlp_reports) -> None:  # type: ignore[no-untyped-def]
    exact, lanczos = mlp_reports
    assert exact.trace is not None
    assert lanczos.trace is not None
    assert lanczos.trace_stderr is not None
    assert abs(lanczos.trace - exact.trace) <= 3 * lanczos.trace_stderr + 1e-6


def test_exact_block_statistics_are_consistent(mlp_reports) -> None:  # type: ignore[no-untyped-def]
    exact, _ = mlp_reports
    assert exact.size == 32 * 3 + 3
    assert exact.vars == ("probs/kernel", "probs/bias")
    assert exact.asymmetry is not None
    assert exact.asymmetry < 1e-5
    assert exact.frobenius is not None
    assert exact.frobenius >= abs(exact.eigenvalues[0])
    assert exact.diagonal is not None
    assert exact.diagonal["min"] <= exact.diagonal["mean"] <= exact.diagonal["max"]


def test_memory_guard_refuses_without_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(self: HessianOperator) -> np.ndarray:
        raise AssertionError("the exact block was computed")

    monkeypatch.setattr(HessianOperator, "exact", never)
    options = hessian_run.HessianOptions(block="model", method="exact", max_memory=1024**2)
    with pytest.raises(ResourceError, match="--method lanczos"):
        hessian_run.hessian_file(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", options=options)


def test_unconnected_second_derivatives_are_zero_not_a_crash(keras) -> None:  # type: ignore[no-untyped-def]
    """Sum of outputs of linear heads: the heads' biases have a constant gradient, so
    their rows of H are zero (TensorFlow has no second-order path to them)."""
    rng = np.random.default_rng(5)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="tanh")(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(2)(hidden), keras.layers.Dense(1)(hidden)])
    x = rng.standard_normal((6, 3)).astype(np.float32)
    exact = hessian_run.hessian(model, x, options=hessian_run.HessianOptions(block="model"))
    block = exact.blocks[0]
    assert block.method == "exact"
    assert block.matrix is not None
    offsets = np.cumsum([0, *(int(np.prod(v.shape)) for v in model.trainable_variables)])
    for index, variable in enumerate(model.trainable_variables):
        part = block.matrix[offsets[index] : offsets[index + 1]]
        if variable.path.endswith("bias") and variable.shape[0] != 4:
            assert not np.any(part), variable.path
    lanczos = hessian_run.hessian(
        model, x, options=hessian_run.HessianOptions(block="model", method="lanczos", tol=1e-6)
    )
    scale = max(abs(block.eigenvalues[0]), abs(block.min_eigenvalue))
    np.testing.assert_allclose(lanczos.blocks[0].eigenvalues, block.eigenvalues, atol=1e-4 * scale)


def test_rows_within_a_budget() -> None:
    work = WorkEstimate(shared=1000, per_row=100)
    assert work.pass_bytes(3) == 1300
    assert work.rows_within(1099, size=50) == 0
    assert work.rows_within(1100, size=50) == 1
    assert work.rows_within(1799, size=50) == 7
    assert work.rows_within(10**9, size=50) == 50
    assert work.rows_within(10**12, size=10**6) == MAX_ROWS_PER_PASS


def _probs_operator() -> HessianOperator:
    from gradscope.session import load_for_cli

    model, signature, batch, _ = load_for_cli(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", None, 0)
    spec, batch = prepare_loss_and_batch(model, signature, batch, InspectOptions())
    variables = [v for v in model.trainable_variables if v.path.startswith("probs/")]
    return HessianOperator(model, signature, spec, batch, variables)


def test_work_estimate_splits_the_graph_at_the_vector() -> None:
    operator = _probs_operator()
    work = operator.work_estimate()
    # Every row holds at least its own tangent and product (n float32 each); the shared
    # part holds at least the batch and the first gradient.
    assert work.per_row >= 2 * 4 * operator.size
    assert work.shared >= 4 * operator.size + operator.data.first.inputs["features"].nbytes


def test_memory_guard_counts_the_work_space_and_sizes_the_passes() -> None:
    operator = _probs_operator()
    work = operator.work_estimate()
    matrix = exact_block_bytes(operator.size)
    exact = hessian_run.HessianOptions(method="exact", max_memory=matrix + work.pass_bytes(3))
    plan = hessian_run._plan(operator, exact, "the block")
    assert plan == hessian_run._Plan("exact", 3)
    tight = replace(exact, max_memory=matrix + work.pass_bytes(1) - 1)
    with pytest.raises(ResourceError, match=r"matrix and work space.*--method lanczos"):
        hessian_run._plan(operator, tight, "the block")
    assert hessian_run._plan(operator, replace(tight, method="auto"), "x").method == "lanczos"


def test_exact_block_under_a_tight_budget_is_still_exact() -> None:
    operator = _probs_operator()
    work = operator.work_estimate()
    budget = exact_block_bytes(operator.size) + work.pass_bytes(2)
    options = hessian_run.HessianOptions(layers="probs", block="layer", max_memory=budget)
    tight = hessian_run.hessian_file(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", options=options)
    roomy = hessian_run.hessian_file(
        SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", options=replace(options, max_memory=2**31)
    )
    assert tight.blocks[0].method == roomy.blocks[0].method == "exact"
    np.testing.assert_allclose(tight.blocks[0].matrix, roomy.blocks[0].matrix, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("batch_size", [8, 7])
def test_blocks_over_batches_equal_the_whole_data(batch_size: int) -> None:
    """The mean of the batch Hessians (rows-weighted) is the whole data's Hessian."""
    exact = hessian_run.HessianOptions(layers="hidden_2", block="layer", method="exact")
    files = (SAMPLES / "mlp.keras", SAMPLES / "mlp.npz")
    whole = hessian_run.hessian_file(*files, options=exact)
    merged = hessian_run.hessian_file(*files, options=exact, batch_size=batch_size)
    assert merged.batch.size == whole.batch.size == 32
    assert merged.loss.value == pytest.approx(whole.loss.value, rel=1e-5)
    np.testing.assert_allclose(
        merged.blocks[0].matrix, whole.blocks[0].matrix, rtol=1e-4, atol=1e-7
    )
    lanczos = replace(exact, method="lanczos", tol=1e-6, top_k=2)
    streamed = hessian_run.hessian_file(*files, options=lanczos, batch_size=batch_size)
    scale = abs(whole.blocks[0].eigenvalues[0])
    np.testing.assert_allclose(
        streamed.blocks[0].eigenvalues, whole.blocks[0].eigenvalues[:2], atol=1e-4 * scale
    )


def test_auto_switches_to_lanczos_above_the_limit() -> None:
    options = hessian_run.HessianOptions(block="model", max_memory=1024**2, tol=1e-2)
    report = hessian_run.hessian_file(
        SAMPLES / "nested.keras", SAMPLES / "nested.npz", options=options
    )
    assert [b.method for b in report.blocks] == ["lanczos"]


@pytest.mark.parametrize(
    ("size", "expected"), [("512M", 512 * 1024**2), ("2GiB", 2 * 1024**3), ("1000", 1000)]
)
def test_parse_size(size: str, expected: int) -> None:
    assert hessian_run.parse_size(size) == expected


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["hessian", *map(str, args)])


def test_cli_json_contract() -> None:
    result = _invoke(
        SAMPLES / "nested.keras", "--data", SAMPLES / "nested.npz", "-f", "json", "--block", "layer"
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "gradscope.hessian/1"
    assert {"loss", "blocks", "cross"} <= set(data)
    paths = [tuple(b["vars"]) for b in data["blocks"]]
    assert paths[0] == ("enc_dense_1/kernel", "enc_dense_1/bias")
    for block in data["blocks"]:
        assert block["eigenvalues"] == sorted(block["eigenvalues"], reverse=True)
        assert block["min_eigenvalue"] <= block["eigenvalues"][-1]


def test_cli_forward_and_reverse_products_agree() -> None:
    def top(mode: str) -> list[float]:
        result = _invoke(
            SAMPLES / "cnn.keras", "--data", SAMPLES / "cnn.npz", "--block", "model",
            "--method", "lanczos", "--tol", "1e-6", "--hvp", mode, "-f", "json",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        block = json.loads(result.stdout)["blocks"][0]
        return [*block["eigenvalues"], block["min_eigenvalue"]]

    reverse, forward = top("reverse"), top("forward")
    np.testing.assert_allclose(forward, reverse, rtol=1e-4, atol=1e-5 * abs(reverse[0]))


def test_cli_table_and_csv() -> None:
    table = _invoke(SAMPLES / "mlp.keras", "--layers", "probs")
    assert table.exit_code == 0
    assert "probs/kernel" in table.stdout
    assert "exact" in table.stdout
    csv_out = _invoke(SAMPLES / "mlp.keras", "--layers", "probs", "-f", "csv")
    lines = csv_out.stdout.splitlines()
    assert lines[0].startswith("kind,vars,layers,size,method")
    assert len(lines) == 3


def test_csv_holds_blocks_cross_blocks_and_densities() -> None:
    args = (SAMPLES / "mlp.keras", "--layers", "probs", "--cross", "--density")
    data = json.loads(_invoke(*args, "-f", "json").stdout)
    rows = list(csv.DictReader(io.StringIO(_invoke(*args, "-f", "csv").stdout)))
    blocks = [r for r in rows if r["kind"] == "block"]
    cross = [r for r in rows if r["kind"] == "cross"]
    density = [r for r in rows if r["kind"] == "density"]
    assert [b["vars"] for b in blocks] == [" ".join(b["vars"]) for b in data["blocks"]]
    assert float(blocks[0]["trace"]) == data["blocks"][0]["trace"]
    assert len(cross) == len(data["cross"]) == 1
    assert cross[0]["vars"] == "probs/kernel probs/bias"
    assert cross[0]["shape"] == "96 3"
    assert float(cross[0]["max_abs"]) == data["cross"][0]["max_abs"]
    expected = [
        (" ".join(b["vars"]), g, v)
        for b in data["blocks"]
        for g, v in zip(b["density"]["grid"], b["density"]["values"], strict=True)
    ]
    got = [(r["vars"], float(r["eigenvalue"]), float(r["density"])) for r in density]
    assert got == expected


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (
            ["--method", "exact", "--block", "model", "--max-memory", "1M"],
            ExitCode.RESOURCE,
            "lanczos",
        ),
        (["--vars", "nothing*"], ExitCode.USAGE, "no trainable variable"),
        (["--max-memory", "lots"], ExitCode.USAGE, "--max-memory"),
        (["--top-k", "0"], ExitCode.USAGE, "Received: top_k=0"),
        (["--block", "row"], ExitCode.USAGE, "Received: block='row'"),
    ],
)
def test_cli_errors(args: list[str], code: int, fragment: str) -> None:
    result = _invoke(SAMPLES / "mlp.keras", *args)
    assert result.exit_code == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gradscope: error:")
    assert fragment in lines[0]
    assert result.stdout == ""


LSTM_FILES = (SAMPLES / "text_lstm.keras", SAMPLES / "text_lstm.npz")
LSTM_BIAS = "lstm/lstm_cell/bias"
"""64 parameters whose curvature runs through every step of the LSTM loop."""


def _keras_lstm_hessian(keras) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The Hessian of the LSTM bias under the binary crossentropy written out in
    TensorFlow ops, by nested tapes (a loop of rows: pfor cannot vectorize it)."""
    import tensorflow as tf

    model = keras.saving.load_model(LSTM_FILES[0])
    with np.load(LSTM_FILES[1]) as data:
        x, y = data["x"], data["y"].astype(np.float64)
    (bias,) = [v for v in model.trainable_variables if v.path == LSTM_BIAS]

    @tf.function(autograph=False)
    def hessian() -> Any:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                p = tf.cast(model(x, training=False), tf.float64)
                loss = -tf.reduce_mean(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))
            gradient = inner.gradient(loss, bias.value)
        return outer.jacobian(gradient, bias.value, experimental_use_pfor=False)

    return np.asarray(hessian().numpy(), dtype=np.float64)


@pytest.mark.slow
def test_rnn_blocks_fall_back_and_agree(keras) -> None:  # type: ignore[no-untyped-def]
    """pfor and forward mode fail inside Keras's RNN loop.  Each fallback is recorded in
    the report's notes, and both give the Hessian of Keras's loss (an independent
    nested-tape reference); Lanczos over forward-requested products agrees with it."""
    options = HessianOptions(block="model", variables=LSTM_BIAS, top_k=2)
    exact = hessian_run.hessian_file(*LSTM_FILES, options=replace(options, method="exact"))
    lanczos = hessian_run.hessian_file(
        *LSTM_FILES, options=replace(options, method="lanczos", tol=1e-6, hvp="forward")
    )
    (exact_note,) = exact.notes
    assert exact_note.startswith("the exact block could not be vectorized (ValueError: ")
    assert exact_note.endswith(
        f"one Hessian-vector product per row instead (64 products): [{LSTM_BIAS}]"
    )
    (forward_note,) = lanczos.notes
    assert forward_note.startswith("forward-mode Hessian-vector products are not supported")
    assert json.loads(exact.to_json())["notes"] == [exact_note]

    reference = _keras_lstm_hessian(keras)
    block = exact.blocks[0]
    assert block.matrix is not None
    scale = np.abs(reference).max()
    # float32 products through 24 LSTM steps against a float32 reference.
    np.testing.assert_allclose(block.matrix, reference, rtol=1e-4, atol=1e-4 * scale)
    spectrum = np.linalg.eigvalsh(0.5 * (reference + reference.T))
    top = abs(spectrum[-1])
    np.testing.assert_allclose(lanczos.blocks[0].eigenvalues, spectrum[::-1][:2], atol=1e-4 * top)
    assert lanczos.blocks[0].min_eigenvalue == pytest.approx(spectrum[0], abs=1e-4 * top)


def test_forward_mode_fallback_is_a_note() -> None:
    """Forward-over-back fails to trace through the LSTM loop (in about a second): the
    report says which products were used instead, and why, in its JSON and table."""
    options = HessianOptions(
        block="model", variables=LSTM_BIAS, method="lanczos", hvp="forward", max_iter=3
    )
    report = hessian_run.hessian_file(*LSTM_FILES, options=options)
    (note,) = report.notes
    assert note.startswith(
        "forward-mode Hessian-vector products are not supported here (ValueError: "
    )
    assert "without handle data" in note
    assert note.endswith(f"used reverse mode (back-over-back) instead: [{LSTM_BIAS}]")
    assert json.loads(report.to_json())["notes"] == [note]
    from gradscope.render import OutputFormat, render

    table = render(report, OutputFormat.TABLE, width=400)
    assert "forward-mode Hessian-vector products are not supported here" in table


def test_no_fallback_no_notes_key(regression) -> None:  # type: ignore[no-untyped-def]
    """Without a fallback the JSON is what it was before ``notes`` existed."""
    model, x, y = regression
    report = hessian_run.hessian(model, x, y, options=HessianOptions(block="model", hvp="forward"))
    assert report.notes == ()
    assert "notes" not in json.loads(report.to_json())


@pytest.mark.parametrize("error", [ValueError, TypeError, LookupError, AttributeError])
def test_a_bug_in_the_vectorized_pass_is_not_a_fallback(
    regression, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:  # type: ignore[no-untyped-def]
    """Only TensorFlow saying "not supported" switches to one product per row; an error
    of gradscope's own (here planted in the vectorized pass) propagates."""
    model, x, y = regression

    def broken(self: HessianOperator, indices: Any, key: Any, batch: Any) -> Any:
        raise error("a bug in gradscope")

    monkeypatch.setattr(HessianOperator, "_rows", broken)
    operator = _operator(model, x, y)
    with pytest.raises(error, match="a bug in gradscope"):
        operator.exact()
    assert operator.notes == []


@pytest.mark.parametrize("error", [ValueError, TypeError, LookupError, AttributeError])
def test_a_bug_in_forward_mode_is_not_a_fallback(
    regression, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:  # type: ignore[no-untyped-def]
    model, x, y = regression

    def broken(self: HessianOperator, vector: Any, key: Any, batch: Any) -> Any:
        raise error("a bug in gradscope")

    monkeypatch.setattr(HessianOperator, "_hvp_forward", broken)
    operator = _operator(model, x, y, hvp_mode="forward")
    with pytest.raises(error, match="a bug in gradscope"):
        operator.hvp(np.ones(operator.size))
    assert operator.notes == []


def test_what_counts_as_not_supported() -> None:
    """TensorFlow's own LookupError/ValueError (and a lost tangent) are "not supported
    here"; the same types raised outside TensorFlow, and other types, are not."""
    import tensorflow as tf

    from gradscope.engine.hessian import TangentLost, not_supported_reason

    @tf.function(autograph=False)
    def bad_shape() -> Any:
        return tf.reshape(tf.zeros([3]), [2])

    with pytest.raises(ValueError, match="Cannot reshape") as raised:
        bad_shape()
    reason = not_supported_reason(raised.value)
    assert reason is not None
    assert reason.startswith("InvalidArgumentError: Cannot reshape")
    assert not_supported_reason(TangentLost("lost")) is not None
    for error in (ValueError("ours"), LookupError("ours"), RuntimeError("x")):
        with pytest.raises(type(error)) as raised_here:
            raise error
        assert not_supported_reason(raised_here.value) is None


def test_one_seed_drives_the_batch_and_the_probes(regression) -> None:  # type: ignore[no-untyped-def]
    """``seed=`` and ``options.seed`` are one setting: given either way, the synthetic batch
    and the random trace probes follow it, so the two reports are the same."""
    model, _, _ = regression
    options = HessianOptions(block="model", method="lanczos", trace=True, probes=4)
    by_keyword = hessian_run.hessian(model, seed=7, rows=16, options=options)
    by_options = hessian_run.hessian(model, rows=16, options=replace(options, seed=7))
    default = hessian_run.hessian(model, rows=16, options=options)
    assert by_keyword.batch.seed == by_options.batch.seed == 7
    assert default.batch.seed == 0
    assert by_keyword.blocks[0].trace == by_options.blocks[0].trace
    assert by_keyword.blocks[0].trace != default.blocks[0].trace  # the seed matters
    with pytest.raises(UsageError, match=r"Received: seed=7, options.seed=3"):
        hessian_run.hessian(model, seed=7, rows=16, options=replace(options, seed=3))


def test_save_writes_blocks_that_read_back(tmp_path: Path) -> None:
    import h5py

    target = tmp_path / "blocks.h5"
    result = _invoke(
        SAMPLES / "mlp.keras", "--layers", "probs", "--block", "layer", "--save", target
    )
    assert result.exit_code == 0, result.stderr
    report = hessian_run.hessian_file(
        SAMPLES / "mlp.keras", options=hessian_run.HessianOptions(layers="probs", block="layer")
    )
    with h5py.File(target) as handle:
        assert handle.attrs["schema"] == "gradscope.hessian-blocks/1"
        group = handle["blocks/0"]
        assert json.loads(group.attrs["vars"]) == ["probs/kernel", "probs/bias"]
        matrix = group["hessian"][()]
        np.testing.assert_allclose(matrix, report.blocks[0].matrix, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(
            group["eigenvalues"][()], np.linalg.eigvalsh(0.5 * (matrix + matrix.T)), atol=1e-9
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.h5"]


def test_cross_blocks_are_slices_of_the_joint_exact_block() -> None:
    options = hessian_run.HessianOptions(layers="probs", cross=True)
    report = hessian_run.hessian_file(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", options=options)
    joint = hessian_run.hessian_file(
        SAMPLES / "mlp.keras",
        SAMPLES / "mlp.npz",
        options=hessian_run.HessianOptions(layers="probs", block="model", method="exact"),
    ).blocks[0]
    assert joint.matrix is not None
    off_diagonal = joint.matrix[:96, 96:]
    (cross,) = report.cross
    assert cross.vars == ("probs/kernel", "probs/bias")
    assert cross.shape == (96, 3)
    assert cross.frobenius == pytest.approx(np.linalg.norm(off_diagonal), rel=1e-6)
    assert cross.max_abs == pytest.approx(np.abs(off_diagonal).max(), rel=1e-6)


@pytest.mark.slow
def test_training_mode_products_see_one_function() -> None:
    """Dropout and BatchNorm in training mode: every HVP must use the same mask and stats,
    or Lanczos works on a moving operator.  Lanczos must agree with the exact block."""
    common = {"block": "model", "top_k": 2}
    paths = (SAMPLES / "cnn.keras", SAMPLES / "cnn.npz")
    exact = hessian_run.hessian_file(
        *paths, training=True, options=hessian_run.HessianOptions(method="exact", **common)
    ).blocks[0]
    lanczos = hessian_run.hessian_file(
        *paths,
        training=True,
        options=hessian_run.HessianOptions(method="lanczos", tol=1e-6, **common),
    ).blocks[0]
    scale = abs(exact.eigenvalues[0])
    np.testing.assert_allclose(lanczos.eigenvalues, exact.eigenvalues, atol=1e-4 * scale)
    assert lanczos.min_eigenvalue == pytest.approx(exact.min_eigenvalue, abs=1e-4 * scale)


def test_every_exact_block_statistic_against_the_closed_form(regression) -> None:  # type: ignore[no-untyped-def]
    """All numbers of an exact block, against numpy on the closed-form Hessian."""
    import gradscope

    model, x, y = regression
    options = gradscope.HessianOptions(block="model", method="exact", top_k=4)
    block = gradscope.hessian(model, x, y, options=options).blocks[0]
    gram = x.astype(np.float64).T @ x.astype(np.float64)
    expected = np.kron(2.0 / (24 * 2) * gram, np.eye(2))
    spectrum = np.linalg.eigvalsh(expected)
    assert block.size == 10
    assert block.method == "exact"
    np.testing.assert_allclose(block.eigenvalues, spectrum[::-1][:4], rtol=1e-5)
    assert block.min_eigenvalue == pytest.approx(spectrum[0], rel=1e-5)
    assert block.trace == pytest.approx(np.trace(expected), rel=1e-6)
    assert block.frobenius == pytest.approx(np.linalg.norm(expected), rel=1e-6)
    assert block.condition == pytest.approx(spectrum[-1] / spectrum[0], rel=1e-4)
    assert block.negative_count == 0
    assert block.asymmetry is not None
    assert block.asymmetry < 1e-6
    assert block.diagonal == pytest.approx(
        {
            "min": np.diag(expected).min(),
            "max": np.diag(expected).max(),
            "mean": np.diag(expected).mean(),
        },
        rel=1e-6,
    )


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_saved_eigenvectors_are_eigenvectors(method: str, tmp_path: Path) -> None:
    """Column j of /blocks/0/eigenvectors satisfies H v = lambda_j v for the reported lambda_j."""
    import h5py

    target = tmp_path / "vectors.h5"
    args = ["--layers", "probs", "--block", "layer", "--method", method, "--top-k", "2"]
    result = _invoke(
        SAMPLES / "mlp.keras",
        *args,
        "--tol",
        "1e-7",
        "--save",
        target,
        "--eigenvectors",
        "-f",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    eigenvalues = json.loads(result.stdout)["blocks"][0]["eigenvalues"]
    exact = hessian_run.hessian_file(
        SAMPLES / "mlp.keras",
        options=hessian_run.HessianOptions(layers="probs", block="layer", method="exact"),
    ).blocks[0]
    assert exact.matrix is not None
    symmetric = 0.5 * (exact.matrix + exact.matrix.T)
    with h5py.File(target) as handle:
        vectors = handle["blocks/0/eigenvectors"][()]
    assert vectors.shape == (99, 2)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=0), 1.0, rtol=1e-9)
    residual = symmetric @ vectors - vectors * np.asarray(eigenvalues)
    assert np.abs(residual).max() <= 1e-5 * abs(eigenvalues[0])


def test_one_trace_serves_every_method_and_every_batch(regression) -> None:  # type: ignore[no-untyped-def]
    """Lanczos, Hutch++ and the spectral density over three equal batches call one
    traced product; the products over the batches are the whole batch's Hessian's."""
    from gradscope.engine import spectral
    from gradscope.loading.data import split_batch

    model, x, y = regression
    signature = model_signature(model)
    spec, batch = prepare_loss_and_batch(
        model, signature, batch_from_arrays(signature, x, y), InspectOptions()
    )
    batches = split_batch(batch, 8, None)
    operator = HessianOperator(model, signature, spec, batches, model.trainable_variables)
    rng = np.random.default_rng(4)
    spectral.lanczos(operator.hvp, operator.size, k=2, rng=rng)
    spectral.hutchinson_trace(operator.hvp, operator.size, probes=6, rng=rng)
    spectral.spectral_density(operator.hvp, operator.size, runs=2, iterations=5, rng=rng)
    assert operator.hvp_calls > 10
    assert operator._hvp_fn.experimental_get_tracing_count() == 1
    wide = x.astype(np.float64)
    expected = np.kron(2.0 / (24 * 2) * wide.T @ wide, np.eye(2))
    vector = rng.standard_normal(operator.size)
    np.testing.assert_allclose(operator.hvp(vector), expected @ vector, rtol=1e-5, atol=1e-6)
