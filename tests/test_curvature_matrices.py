"""``--matrix ggn|fisher|empirical-fisher`` and ``--diagonal``, against independent
computations: closed forms (linear and logistic regression), explicit ``J^T H_L J`` from
a full Jacobian built one tape per output entry, a loop of per-example gradients, and
Monte Carlo / Hutchinson estimates within three standard errors of the exact values."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import error_line, invoke
from conftest import SAMPLE_MODELS

from gradscope.commands.hessian import run as hessian_run
from gradscope.commands.hessian.options import HessianOptions
from gradscope.commands.inspect.options import InspectOptions
from gradscope.engine import spectral
from gradscope.engine.hessian import HessianOperator
from gradscope.errors import ExitCode, LossError, UsageError
from gradscope.loading.signature import model_signature
from gradscope.session import batch_from_arrays, prepare_loss_and_batch

SAMPLES = SAMPLE_MODELS


def _operator(model: Any, x: Any, y: Any, matrix: str, **kwargs: Any) -> HessianOperator:
    signature = model_signature(model)
    weight = kwargs.pop("sample_weight", None)
    batch = batch_from_arrays(signature, x, y, weight)
    spec, batch = prepare_loss_and_batch(model, signature, batch, InspectOptions())
    variables = kwargs.pop("variables", model.trainable_variables)
    return HessianOperator(model, signature, spec, batch, variables, matrix=matrix, **kwargs)


def _flat(tensors: Any) -> np.ndarray:
    return np.concatenate([np.asarray(t, dtype=np.float64).ravel() for t in tensors])


def _jacobian(tf: Any, model: Any, x: np.ndarray, head: Any) -> tuple[np.ndarray, np.ndarray]:
    """The model's ``head`` tensor (outputs or logits) and its full Jacobian with respect to
    every trainable weight: one tape per output entry, no vectorization."""
    sources = [v.value for v in model.trainable_variables]
    rows = []
    with tf.GradientTape(persistent=True) as tape:
        values = head(tf.constant(x))
        flat = tf.reshape(values, [-1])
        entries = [flat[i] for i in range(int(flat.shape[0]))]
    for entry in entries:
        grads = tape.gradient(entry, sources, unconnected_gradients="zero")
        rows.append(_flat([g.numpy() for g in grads]))
    return values.numpy().astype(np.float64), np.array(rows)


def _explicit_ggn(tf: Any, model: Any, x: np.ndarray, y: np.ndarray, loss: Any) -> np.ndarray:
    """``J^T H_L J`` at the model's outputs: the full Jacobian (one tape per entry) and the
    Hessian of the Keras ``loss`` object as a function of the outputs."""
    outputs, jacobian = _jacobian(tf, model, x, model)
    curvature = _loss_hessian(tf, lambda out: loss(tf.constant(y, tf.float64), out), outputs)
    return jacobian.T @ curvature @ jacobian


def _loss_hessian(tf: Any, loss_of: Any, point: np.ndarray) -> np.ndarray:
    """The Hessian of ``loss_of`` at ``point`` (flattened), by nested tapes in float64."""
    z = tf.Variable(point.astype(np.float64))
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_of(z)
        grad = tf.reshape(inner.gradient(loss, z), [-1])
    return np.asarray(outer.jacobian(grad, z).numpy()).reshape(point.size, point.size)


@pytest.fixture(scope="module")
def softmax_net(keras: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """An MLP ending in a softmax with a sparse crossentropy: Keras reads cached logits."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="tanh")(inputs)
    logits = keras.layers.Dense(3, name="logits")(hidden)
    outputs = keras.layers.Activation("softmax")(logits)
    model = keras.Model(inputs, outputs)
    model.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=6)
    return model, x, y


def _softmax_ggn(tf: Any, keras: Any, model: Any, x: np.ndarray) -> np.ndarray:
    """Explicit ``J^T H_L J`` at the logits: ``H_L`` per example is
    ``(diag(p) - p p^T) / N`` (softmax crossentropy averaged over N examples)."""
    logits_model = keras.Model(model.inputs, model.get_layer("logits").output)
    z, jacobian = _jacobian(tf, model, x, logits_model)
    rows, classes = z.shape
    curvature = np.zeros((z.size, z.size))
    for i in range(rows):
        p = np.exp(z[i] - z[i].max())
        p /= p.sum()
        block = slice(i * classes, (i + 1) * classes)
        curvature[block, block] = (np.diag(p) - np.outer(p, p)) / rows
    return jacobian.T @ curvature @ jacobian


def test_linear_regression_ggn_is_the_hessian_closed_form(regression: Any) -> None:
    """For a linear model and mse the network is linear: GGN = Hessian = 2/(N*D) X^T X."""
    model, x, y = regression
    rng = np.random.default_rng(0)
    gram = x.astype(np.float64).T @ x.astype(np.float64)
    expected = np.kron(2.0 / (24 * 2) * gram, np.eye(2))
    for mode in ("reverse", "forward"):
        ggn = _operator(model, x, y, "ggn", hvp_mode=mode).exact()
        np.testing.assert_allclose(ggn, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    vector = rng.standard_normal(10)
    product = _operator(model, x, y, "ggn").hvp(vector)
    np.testing.assert_allclose(product, expected @ vector, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def logistic(keras: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """Logistic regression: ``GGN = Fisher = X^T S X / N`` with ``S = diag(p (1 - p))``
    over the inputs with a column of ones for the bias."""
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 3)).astype(np.float32)
    y = (rng.random(20) < 0.5).astype(np.float32)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    model.compile(loss="binary_crossentropy")
    kernel, bias = (v.numpy().astype(np.float64) for v in model.trainable_variables)
    design = np.hstack([x.astype(np.float64), np.ones((20, 1))])
    p = 1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ kernel + bias)[:, 0]))
    closed = design.T @ (design * (p * (1 - p))[:, None]) / 20
    return model, x, y, closed


def test_logistic_regression_ggn_is_xt_s_x(logistic: Any) -> None:
    model, x, y, closed = logistic
    ggn = _operator(model, x, y, "ggn").exact()
    np.testing.assert_allclose(ggn, closed, rtol=1e-5, atol=1e-7)


def _monte_carlo_products(
    model: Any, x: Any, y: Any, vector: np.ndarray, runs: int, draws: int
) -> np.ndarray:
    """``runs`` independent Monte Carlo Fisher products (different seeds: the seed is an
    argument of the compiled product, so changing it does not retrace)."""
    operator = _operator(model, x, y, "fisher", mc_samples=draws)
    products = []
    for seed in range(runs):
        operator.seed = seed
        products.append(operator.hvp(vector))
    return np.array(products)


def _within_three_standard_errors(samples: np.ndarray, exact: np.ndarray) -> None:
    mean = samples.mean(axis=0)
    stderr = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
    assert np.all(stderr > 0), stderr
    np.testing.assert_array_less(np.abs(mean - exact), 3 * stderr + 1e-7)


def test_logistic_regression_fisher_within_three_standard_errors(logistic: Any) -> None:
    model, x, y, closed = logistic
    vector = np.random.default_rng(5).standard_normal(4)
    samples = _monte_carlo_products(model, x, y, vector, runs=12, draws=16)
    _within_three_standard_errors(samples, closed @ vector)
    # The estimate is not the exact GGN itself: one draw is visibly off.
    single = _operator(model, x, y, "fisher", mc_samples=1).hvp(vector)
    assert np.abs(single - closed @ vector).max() > 1e-4


def test_fisher_draws_are_fixed_across_products(logistic: Any) -> None:
    """Lanczos needs one matrix: the same seed gives the same draws for every product,
    and the exact block is symmetric (each row is a product with the same draws)."""
    model, x, y, _ = logistic
    operator = _operator(model, x, y, "fisher", mc_samples=2, seed=7)
    vector = np.random.default_rng(0).standard_normal(4)
    np.testing.assert_array_equal(operator.hvp(vector), operator.hvp(vector))
    block = operator.exact()
    np.testing.assert_allclose(block, block.T, atol=1e-7)
    np.testing.assert_allclose(block @ vector, operator.hvp(vector), rtol=1e-5, atol=1e-7)


def test_softmax_ggn_is_the_explicit_jacobian_product(
    tf: Any, keras: Any, softmax_net: Any
) -> None:
    model, x, y = softmax_net
    expected = _softmax_ggn(tf, keras, model, x)
    for mode in ("reverse", "forward"):
        ggn = _operator(model, x, y, "ggn", hvp_mode=mode).exact()
        np.testing.assert_allclose(ggn, expected, rtol=1e-4, atol=1e-6)
    # ... and it is not the Hessian: the network's own curvature is left out.
    hessian = _operator(model, x, y, "hessian").exact()
    assert np.abs(hessian - expected).max() > 1e-3
    assert np.linalg.eigvalsh(expected).min() > -1e-6


def test_softmax_fisher_within_three_standard_errors(tf: Any, keras: Any, softmax_net: Any) -> None:
    model, x, y = softmax_net
    expected = _softmax_ggn(tf, keras, model, x)
    vector = np.random.default_rng(6).standard_normal(expected.shape[0])
    samples = _monte_carlo_products(model, x, y, vector, runs=10, draws=8)
    _within_three_standard_errors(samples, expected @ vector)


def test_mse_mlp_ggn_and_fisher(tf: Any, keras: Any) -> None:
    """A nonlinear mse model: ``H_L`` is read off the loss itself (nested tapes on
    Keras's mse as a function of the outputs), and the Fisher's Gaussian draws
    ``N(z, I/2)`` average to it."""
    keras.utils.set_random_seed(8)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(3, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    model.compile(loss="mse")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = rng.standard_normal((5, 2)).astype(np.float32)
    expected = _explicit_ggn(tf, model, x, y, keras.losses.MeanSquaredError())
    np.testing.assert_allclose(
        _operator(model, x, y, "ggn").exact(), expected, rtol=1e-4, atol=1e-6
    )
    vector = rng.standard_normal(expected.shape[0])
    samples = _monte_carlo_products(model, x, y, vector, runs=10, draws=8)
    _within_three_standard_errors(samples, expected @ vector)


def test_probability_outputs_are_split_at_the_probabilities(tf: Any, keras: Any) -> None:
    """Without cached logits (a softmax written by hand) the loss reads the probabilities:
    the GGN is taken there, with the crossentropy's Hessian in the probabilities."""
    keras.utils.set_random_seed(10)
    inputs = keras.Input((3,))
    scores = keras.layers.Dense(3)(inputs)
    exp = keras.layers.Lambda(lambda t: keras.ops.exp(t - keras.ops.max(t, -1, keepdims=True)))
    unnormalized = exp(scores)
    probabilities = keras.layers.Lambda(lambda t: t / keras.ops.sum(t, -1, keepdims=True))(
        unnormalized
    )
    model = keras.Model(inputs, probabilities)
    model.compile(loss="categorical_crossentropy")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 4)]
    expected = _explicit_ggn(tf, model, x, y, keras.losses.CategoricalCrossentropy())
    np.testing.assert_allclose(
        _operator(model, x, y, "ggn").exact(), expected, rtol=1e-4, atol=1e-6
    )


def _example_gradients(tf: Any, model: Any, x: Any, y: Any, weight: Any = None) -> np.ndarray:
    """One tape per example: the loss on that example alone (with its own weight)."""
    rows = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            y_pred = model(x[i : i + 1])
            sample_weight = None if weight is None else weight[i : i + 1]
            loss = model.compute_loss(
                x=x[i : i + 1], y=y[i : i + 1], y_pred=y_pred, sample_weight=sample_weight
            )
        grads = tape.gradient(loss, model.trainable_variables)
        rows.append(_flat(tf.convert_to_tensor(g).numpy() for g in grads))
    return np.array(rows)


def test_empirical_fisher_is_the_mean_of_outer_products(tf: Any, softmax_net: Any) -> None:
    model, x, y = softmax_net
    weight = np.linspace(0.0, 2.0, len(x)).astype(np.float32)
    gradients = _example_gradients(tf, model, x, y, weight)
    expected = gradients.T @ gradients / len(x)
    operator = _operator(model, x, y, "empirical-fisher", sample_weight=weight)
    np.testing.assert_allclose(operator.exact(), expected, rtol=1e-5, atol=1e-7)
    vector = np.random.default_rng(12).standard_normal(expected.shape[0])
    np.testing.assert_allclose(operator.hvp(vector), expected @ vector, rtol=1e-5, atol=1e-7)


def test_blocks_over_batches_are_the_row_weighted_mean(
    tf: Any, keras: Any, softmax_net: Any
) -> None:
    """With --batch-size the GGN of the mean loss over all rows, batch by batch."""
    model, x, y = softmax_net
    expected = _softmax_ggn(tf, keras, model, x)
    options = HessianOptions(matrix="ggn", block="model", method="exact", seed=0)
    report = hessian_run.hessian(model, x, y, options=options, batch_size=4)
    assert report.matrix == "ggn"
    np.testing.assert_allclose(report.blocks[0].matrix, expected, rtol=1e-4, atol=1e-6)


def test_lanczos_on_the_ggn_finds_its_top_eigenvalue(tf: Any, keras: Any, softmax_net: Any) -> None:
    model, x, y = softmax_net
    eigenvalues = np.linalg.eigvalsh(_softmax_ggn(tf, keras, model, x))
    options = HessianOptions(
        matrix="ggn", block="model", method="lanczos", top_k=2, tol=1e-7, max_iter=60
    )
    report = hessian_run.hessian(model, x, y, options=options)
    np.testing.assert_allclose(report.blocks[0].eigenvalues, eigenvalues[::-1][:2], rtol=1e-4)


def test_exact_diagonal_and_sharpest_parameters(tf: Any, keras: Any, softmax_net: Any) -> None:
    model, x, y = softmax_net
    diagonal = np.diag(_softmax_ggn(tf, keras, model, x))
    options = HessianOptions(matrix="ggn", block="model", method="exact", diagonal=True, top_k=2)
    block = hessian_run.hessian(model, x, y, options=options).blocks[0]
    assert block.diagonals is not None
    start = 0
    for item, variable in zip(block.diagonals, model.trainable_variables, strict=True):
        size = int(np.prod(variable.shape))
        part = diagonal[start : start + size]
        start += size
        assert item.var == variable.path
        assert item.method == "exact"
        np.testing.assert_allclose(item.values.ravel(), part, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(
            [item.mean, item.max, item.sum], [part.mean(), part.max(), part.sum()], rtol=1e-4
        )
        flat = np.argsort(-part)[:2]
        assert [p.index for p in item.top] == [np.unravel_index(i, variable.shape) for i in flat]
        assert item.sum_stderr is None
        assert item.top[0].stderr is None


def test_hutchinson_diagonal_within_three_standard_errors(
    tf: Any, keras: Any, softmax_net: Any
) -> None:
    model, x, y = softmax_net
    diagonal = np.diag(_softmax_ggn(tf, keras, model, x))
    options = HessianOptions(
        matrix="ggn", block="model", method="lanczos", diagonal=True, probes=200, max_iter=5
    )
    block = hessian_run.hessian(model, x, y, options=options).blocks[0]
    assert block.diagonals is not None
    estimate = np.concatenate([item.values.ravel() for item in block.diagonals])
    stderr = np.concatenate([np.asarray(item.stderr).ravel() for item in block.diagonals])
    assert {item.method for item in block.diagonals} == {"hutchinson"}
    np.testing.assert_array_less(np.abs(estimate - diagonal), 3 * stderr + 1e-9)
    sums = np.array([item.sum for item in block.diagonals])
    sum_errors = np.array([item.sum_stderr for item in block.diagonals])
    bounds = np.cumsum([0, *(int(np.prod(v.shape)) for v in model.trainable_variables)])
    exact_sums = np.add.reduceat(diagonal, bounds[:-1])
    np.testing.assert_array_less(np.abs(sums - exact_sums), 3 * sum_errors)


def test_hutchinson_diagonal_of_a_known_matrix() -> None:
    rng = np.random.default_rng(13)
    a = rng.standard_normal((30, 30))
    matrix = a @ a.T / 30
    estimate = spectral.hutchinson_diagonal(
        lambda v: matrix @ v, 30, probes=400, rng=rng, segments=(10, 20)
    )
    np.testing.assert_array_less(np.abs(estimate.diagonal - np.diag(matrix)), 3 * estimate.stderr)
    # The entry errors are the probes' spread: sum_{k != j} A_jk^2 / probes.
    expected = np.sqrt(((matrix**2).sum(axis=1) - np.diag(matrix) ** 2) / 400)
    np.testing.assert_allclose(estimate.stderr, expected, rtol=0.2)
    for segment, part in enumerate((slice(0, 10), slice(10, 30))):
        error = abs(estimate.diagonal[part].sum() - np.diag(matrix)[part].sum())
        assert error < 3 * estimate.segment_stderr(segment)


def test_fisher_is_refused_for_a_loss_it_is_not_defined_for(keras: Any, softmax_net: Any) -> None:
    _, x, _ = softmax_net
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(loss="huber")
    y = np.zeros((len(x), 2), np.float32)
    with pytest.raises(LossError, match=r"output .* has the loss 'huber'.*Received: huber"):
        _operator(model, x, y, "fisher").hvp(np.ones(8))
    model.compile(loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
    with pytest.raises(LossError, match=r"label_smoothing=0.1"):
        _operator(model, x, y, "fisher").hvp(np.ones(8))
    # The GGN needs no predictive distribution: it works for any loss.
    assert np.isfinite(_operator(model, x, y, "ggn").hvp(np.ones(8))).all()


def test_gauss_newton_matrices_need_a_loss(softmax_net: Any) -> None:
    model, x, _ = softmax_net
    signature = model_signature(model)
    spec, batch = prepare_loss_and_batch(
        model, signature, batch_from_arrays(signature, x, None), InspectOptions()
    )
    with pytest.raises(LossError, match="--matrix ggn: needs a loss with targets"):
        HessianOperator(model, signature, spec, batch, model.trainable_variables, matrix="ggn")


def test_matrix_options_are_validated() -> None:
    with pytest.raises(UsageError, match="Received: matrix='gauss-newton'"):
        HessianOptions(matrix="gauss-newton")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"mc_samples.*<= 256"):
        HessianOptions(mc_samples=1000)
    line = error_line(["hessian", SAMPLES / "mlp.keras", "--matrix", "newton"], int(ExitCode.USAGE))
    assert "matrix" in line
    assert "newton" in line


def test_cli_names_the_matrix_everywhere(tmp_path: Path) -> None:
    import h5py

    args = [SAMPLES / "mlp.keras", "--data", SAMPLES / "mlp.npz", "--layers", "probs"]
    result = invoke("hessian", *args, "--matrix", "ggn", "--diagonal", "-f", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["matrix"] == "ggn"
    assert "mc_samples" not in data
    assert [d["var"] for d in data["blocks"][0]["diagonals"]] == ["probs/kernel"]
    table = invoke("hessian", *args, "--matrix", "fisher", "--mc-samples", "3")
    assert table.exit_code == 0, table.stderr
    assert "Fisher (Monte Carlo, 3 draw(s) per example)" in table.stdout
    assert "Fisher blocks" in table.stdout
    target = tmp_path / "ggn.h5"
    saved = invoke("hessian", *args, "--matrix", "ggn", "--diagonal", "--save", target)
    assert saved.exit_code == 0, saved.stderr
    with h5py.File(target) as handle:
        assert handle.attrs["matrix"] == "ggn"
        block = handle["blocks/0"]
        assert "ggn" in block
        assert "hessian" not in block
        matrix = block["ggn"][()]
        kernel = block["diagonal/probs/kernel"][()]
        np.testing.assert_allclose(kernel.ravel(), np.diag(matrix)[: kernel.size], rtol=1e-6)


def test_report_round_trips_the_matrix_fields(softmax_net: Any) -> None:
    model, x, y = softmax_net
    options = HessianOptions(matrix="fisher", mc_samples=2, block="model", method="exact")
    report = hessian_run.hessian(model, x, y, options=options)
    data = report.to_dict()
    assert data["matrix"] == "fisher"
    assert data["mc_samples"] == 2
    assert replace(report, matrix="hessian", mc_samples=None).to_dict()["matrix"] == "hessian"


def test_empirical_fisher_memory_is_checked_before_allocating() -> None:
    """6 rows x 3,523 parameters x 4 bytes = 82.6 KiB of per-example gradients, above the
    80 KiB budget that the batch and the gradient step fit."""
    line = error_line(
        [
            "hessian", SAMPLES / "mlp.keras", "--matrix", "empirical-fisher",
            "--block", "model", "--method", "lanczos", "--limit", "6", "--max-memory", "80KiB",
        ],
        int(ExitCode.RESOURCE),
    )  # fmt: skip
    assert "--matrix empirical-fisher: the per-example gradients of a batch (6 rows" in line
    assert "more than --max-memory" in line


def test_recurrent_model_ggn_and_empirical_fisher(tf: Any, keras: Any) -> None:
    """Keras's RNN loop over masked tokens: the GGN's Jacobian-vector products by two
    reverse passes, and per-example gradients that ``pfor`` converts into a graph that
    fails when run (so they are mapped with ``tf.map_fn``, with a note)."""
    keras.utils.set_random_seed(14)
    inputs = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(6, 2, mask_zero=True)(inputs)
    hidden = keras.layers.LSTM(2)(embedded)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(loss="mse")
    rng = np.random.default_rng(15)
    x = rng.integers(0, 6, size=(4, 4)).astype(np.int32)
    x[:, 0] = 1  # no empty sequence
    y = rng.standard_normal((4, 1)).astype(np.float32)
    gradients = _example_gradients(tf, model, x, y)
    operator = _operator(model, x, y, "empirical-fisher")
    vector = rng.standard_normal(gradients.shape[1])
    expected = gradients.T @ (gradients @ vector) / 4
    np.testing.assert_allclose(operator.hvp(vector), expected, rtol=1e-4, atol=1e-6)
    assert any("map_fn" in note for note in operator.notes), operator.notes
    lstm = [v for v in model.trainable_variables if "embeddings" not in v.path]
    ggn = _operator(model, x, y, "ggn", variables=lstm).exact()
    sources = [v.value for v in lstm]
    rows = []
    with tf.GradientTape(persistent=True) as tape:
        outputs = tf.reshape(model(x), [-1])
        entries = [outputs[i] for i in range(4)]
    for entry in entries:
        rows.append(_flat(g.numpy() for g in tape.gradient(entry, sources)))
    jacobian = np.array(rows)
    # mse over one output, mean over 4 rows: H_L = 2/4 I.
    np.testing.assert_allclose(ggn, jacobian.T @ jacobian * 0.5, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["gpt2", "bart"])
def test_keras_hub_ggn_quadratic_form(tf: Any, tmp_path: Path, name: str) -> None:
    """keras_hub language models (sequence logits, padding, sample weights that are 0 at
    padded targets): ``v^T G v`` against a reference built from pieces gradscope does not
    use.  ``J v`` by a ``ForwardAccumulator`` (gradscope's default is two reverse passes);
    each position's weight ``c_u`` in the loss read off the loss's own gradient at the
    logits (``dL/dz_u = c_u (p_u - e_y)``); then ``sum_u c_u (Jv_u^T (diag p_u - p_u
    p_u^T) Jv_u)``."""
    pytest.importorskip("keras_hub")  # not in the minimum-versions environment
    import hub_language

    built = hub_language.build(name, tmp_path)
    model, x, y, weight = built.model, built.inputs, built.y, built.sample_weight
    variables = model.trainable_variables
    rng = np.random.default_rng(16)
    vector = rng.standard_normal(sum(int(np.prod(v.shape)) for v in variables))
    operator = _operator(model, x, y, "ggn", sample_weight=weight)
    quadratic = float(vector @ operator.hvp(vector))

    inputs = {key: tf.constant(value) for key, value in x.items()}
    sizes = np.cumsum([0, *(int(np.prod(v.shape)) for v in variables)])
    tangents = [
        tf.constant(vector[sizes[i] : sizes[i + 1]].reshape(v.shape), v.dtype)
        for i, v in enumerate(variables)
    ]
    with tf.autodiff.ForwardAccumulator([v.value for v in variables], tangents) as acc:
        logits = model(inputs, training=False)
    directional = acc.jvp(logits).numpy().astype(np.float64)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = model.compute_loss(x=inputs, y=y, y_pred=logits, sample_weight=weight)
    slopes = tape.gradient(loss, logits).numpy().astype(np.float64)
    z = logits.numpy().astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    residual = p - np.eye(z.shape[-1])[y]
    c = (slopes * residual).sum(-1) / (residual**2).sum(-1)
    per_position = (directional**2 * p).sum(-1) - (directional * p).sum(-1) ** 2
    expected = float((c * per_position).sum())
    assert quadratic == pytest.approx(expected, rel=1e-4)
    assert np.all(c[weight == 0] == 0)
    assert np.any(c > 0)


def test_empirical_fisher_refuses_batchnorm_in_training_mode(keras: Any) -> None:
    """In training mode BatchNorm couples the examples: no per-example gradients."""
    inputs = keras.Input((3,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(2)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(loss="mse")
    x = np.ones((4, 3), np.float32)
    with pytest.raises(UsageError, match=r"^--matrix empirical-fisher with --training"):
        _operator(model, x, np.ones((4, 1), np.float32), "empirical-fisher", training=True)


def test_empirical_fisher_diagonal_is_exact_without_the_block(tf: Any, softmax_net: Any) -> None:
    """Matrix-free blocks of the empirical Fisher get the exact diagonal, mean_i g_i^2."""
    model, x, y = softmax_net
    gradients = _example_gradients(tf, model, x, y)
    options = HessianOptions(
        matrix="empirical-fisher", block="model", method="lanczos", diagonal=True, max_iter=3
    )
    block = hessian_run.hessian(model, x, y, options=options).blocks[0]
    assert block.diagonals is not None
    assert {item.method for item in block.diagonals} == {"exact"}
    values = np.concatenate([item.values.ravel() for item in block.diagonals])
    np.testing.assert_allclose(values, (gradients**2).mean(axis=0), rtol=1e-5, atol=1e-9)
