"""gradscope's gradients against hand-derived formulas, computed in numpy.

Each model is tiny; its forward pass is redone in numpy (float64, from the layer's
float32 weights) and every gradient is written out by hand with the chain rule:

    z = x W + b,   a = f(z),   delta = dL/dz = dL/da * f'(z)
    dL/dW = x^T delta,   dL/db = sum_batch delta,   dL/dx = delta W^T

Keras reduces mse and crossentropy with "sum_over_batch_size": mse is the mean over the
batch *and* the last axis, crossentropy the mean over the batch.

Tolerances: float32 models are compared with ``rtol=2e-5`` relative to the largest
entry of the expected tensor (a float32 gradient made of a few products and sums of at
most ~50 terms is accurate to a few ulps times the length, <~ 1e-6 relative to the
largest entry; the margin is 20x).  The finite-difference
test runs a float64 model, where central differences with h=1e-6 are accurate to about
1e-9 (truncation h^2 ~ 1e-12, rounding eps/h ~ 2e-10), so ``rtol=1e-6`` there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.signal

import gradscope

RTOL32 = 2e-5


def assert_close(actual, expected, rtol: float = RTOL32, what: str = "") -> None:  # type: ignore[no-untyped-def]
    """``actual`` equals ``expected`` entry-wise within ``rtol`` of ``max|expected|``."""
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    assert scale > 0 or not np.any(actual), what
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def weights64(layer) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    return [np.asarray(w, np.float64) for w in layer.get_weights()]


# -- a 2-layer MLP ---------------------------------------------------------------------

B, N_IN, N_HIDDEN, N_OUT = 8, 5, 6, 4

MLP_CASES = {
    "tanh-linear-mse": ("tanh", "linear", "mse", "onehot"),
    "sigmoid-softmax-cce": ("sigmoid", "softmax", "categorical_crossentropy", "onehot"),
    "sigmoid-softmax-mse": ("sigmoid", "softmax", "mse", "onehot"),
    # Label-smoothed targets: no y/p term vanishes, the -y/p + sum(y) formula is exercised
    # in full.  (Rows must sum to 1: TensorFlow's softmax_cross_entropy_with_logits
    # back-propagates p - y, which is the gradient only for rows that sum to 1.)
    "tanh-softmax-cce-smoothed": ("tanh", "softmax", "categorical_crossentropy", "smoothed"),
}


class MLPCase:
    """An MLP, its batch, gradscope's report, and the numpy forward pass."""

    def __init__(self, keras, name: str, seed: int) -> None:  # type: ignore[no-untyped-def]
        hidden_act, out_act, loss, targets = MLP_CASES[name]
        self.hidden_act, self.out_act, self.loss = hidden_act, out_act, loss
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((N_IN,), name="x")
        h = keras.layers.Dense(N_HIDDEN, activation=hidden_act, name="hidden")(inputs)
        out = keras.layers.Dense(N_OUT, activation=out_act, name="out")(h)
        self.model = keras.Model(inputs, out, name=f"mlp_{seed}")
        self.model.compile(loss=loss)
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(B, N_IN)).astype(np.float32)
        if targets == "onehot":
            self.y = np.eye(N_OUT, dtype=np.float32)[rng.integers(0, N_OUT, size=B)]
        else:
            onehot = np.eye(N_OUT)[rng.integers(0, N_OUT, size=B)]
            self.y = (0.8 * onehot + 0.2 / N_OUT).astype(np.float32)
        self.report = gradscope.inspect(self.model, self.x, self.y, keep_tensors=True)

        self.hidden = self.model.get_layer("hidden")
        self.out = self.model.get_layer("out")
        (self.w1, self.b1), (self.w2, self.b2) = weights64(self.hidden), weights64(self.out)
        x = self.x.astype(np.float64)
        self.z1 = x @ self.w1 + self.b1
        self.h = np.tanh(self.z1) if hidden_act == "tanh" else sigmoid(self.z1)
        self.z2 = self.h @ self.w2 + self.b2
        self.p = softmax(self.z2) if out_act == "softmax" else self.z2

    def loss_value(self) -> float:
        y = self.y.astype(np.float64)
        if self.loss == "mse":
            return float(np.mean((self.p - y) ** 2))
        q = self.p / self.p.sum(axis=-1, keepdims=True)
        return float(-np.mean(np.sum(y * np.log(q), axis=-1)))

    def grad_out(self) -> np.ndarray:
        """dL/d(output of the last layer), the loss as a function of that output."""
        y = self.y.astype(np.float64)
        if self.loss == "mse":
            return 2.0 * (self.p - y) / y.size
        # CCE on probabilities: L = -(1/B) sum y log(p / S), S = sum_j p_j, so
        # dL/dp_k = (1/B) (-y_k / p_k + sum_j y_j / S).
        s = self.p.sum(axis=-1, keepdims=True)
        return (-y / self.p + y.sum(axis=-1, keepdims=True) / s) / B

    def delta_out(self) -> np.ndarray:
        """dL/dz2 (the last layer's pre-activation)."""
        y = self.y.astype(np.float64)
        if self.out_act == "linear":
            return self.grad_out()
        if self.loss == "categorical_crossentropy":
            # Keras's logits path: d/dz of -sum y log softmax(z) = (sum_j y_j) p - y.
            return (y.sum(axis=-1, keepdims=True) * self.p - y) / B
        # Softmax Jacobian: dz = p * (g - sum_j p_j g_j).
        g = self.grad_out()
        return self.p * (g - np.sum(self.p * g, axis=-1, keepdims=True))

    def hand_gradients(self) -> dict[str, np.ndarray]:
        delta2 = self.delta_out()
        grad_h = delta2 @ self.w2.T
        fprime = 1.0 - self.h**2 if self.hidden_act == "tanh" else self.h * (1.0 - self.h)
        delta1 = grad_h * fprime
        x = self.x.astype(np.float64)
        return {
            "hidden/kernel": x.T @ delta1,
            "hidden/bias": delta1.sum(axis=0),
            "out/kernel": self.h.T @ delta2,
            "out/bias": delta2.sum(axis=0),
            "input": delta1 @ self.w1.T,
            "act:hidden": grad_h,
            "act:out": self.grad_out(),
        }


@pytest.fixture(scope="module", params=list(MLP_CASES))
def mlp(request, keras) -> MLPCase:  # type: ignore[no-untyped-def]
    return MLPCase(keras, request.param, seed=11 + list(MLP_CASES).index(request.param))


def test_mlp_probabilities_are_not_clipped(mlp: MLPCase) -> None:
    """The formulas below assume Keras's [1e-7, 1 - 1e-7] clip is inactive."""
    if mlp.out_act == "softmax":
        assert mlp.p.min() > 1e-3
        assert mlp.p.max() < 1 - 1e-3
    keras_pred = mlp.model(mlp.x, training=False).numpy()
    assert_close(keras_pred, mlp.p, what="numpy forward pass vs Keras")


def test_mlp_loss_value(mlp: MLPCase) -> None:
    assert mlp.report.loss.kind == "compiled"
    assert mlp.report.loss.value == pytest.approx(mlp.loss_value(), rel=1e-6)
    assert mlp.report.loss.regularization == 0.0


def test_mlp_weight_gradients(mlp: MLPCase) -> None:
    expected = mlp.hand_gradients()
    tensors = mlp.report.tensors
    assert tensors is not None
    for variable, key in [
        (mlp.hidden.kernel, "hidden/kernel"),
        (mlp.hidden.bias, "hidden/bias"),
        (mlp.out.kernel, "out/kernel"),
        (mlp.out.bias, "out/bias"),
    ]:
        assert_close(tensors.variables[variable.path], expected[key], what=key)


def test_mlp_input_gradient(mlp: MLPCase) -> None:
    assert mlp.report.tensors is not None
    assert_close(mlp.report.tensors.inputs["x"], mlp.hand_gradients()["input"], what="dL/dx")


def test_mlp_layer_output_gradients(mlp: MLPCase) -> None:
    """dL/d(hidden output) = delta_out W_out^T; dL/d(out) is the loss's own derivative."""
    expected = mlp.hand_gradients()
    assert mlp.report.tensors is not None
    activations = mlp.report.tensors.activations
    assert set(activations) == {"hidden", "out"}
    assert_close(activations["hidden"], expected["act:hidden"], what="dL/dh")
    assert_close(activations["out"], expected["act:out"], what="dL/d(out)")


def test_mlp_report_rows_agree_with_the_tensors(mlp: MLPCase) -> None:
    """The statistics rows describe the hand gradients (l2 and max |g|)."""
    expected = mlp.hand_gradients()
    rows = {row.path: row for row in mlp.report.variables}
    for variable, key in [(mlp.hidden.kernel, "hidden/kernel"), (mlp.out.bias, "out/bias")]:
        grad = rows[variable.path].grad
        assert grad is not None
        assert grad.l2 == pytest.approx(np.linalg.norm(expected[key]), rel=RTOL32)
        assert grad.max_abs == pytest.approx(np.max(np.abs(expected[key])), rel=RTOL32)
        weights = np.asarray(variable.numpy(), np.float64)
        assert rows[variable.path].weight_l2 == pytest.approx(np.linalg.norm(weights), rel=1e-12)


# -- softmax output and crossentropy: the probability path ------------------------------


@pytest.fixture(scope="module")
def softmax_cce(keras) -> MLPCase:  # type: ignore[no-untyped-def]
    return MLPCase(keras, "sigmoid-softmax-cce", seed=101)


def test_softmax_output_gradient_is_the_probability_path(softmax_cce: MLPCase) -> None:
    """For one-hot y and unclipped p: dL/dp = (1/B)(-y/p + sum_j y_j), per row."""
    case = softmax_cce
    y = case.y.astype(np.float64)
    assert np.all(y.sum(axis=-1) == 1.0)
    assert case.p.min() > 1e-3  # no clipping
    by_formula = (-y / case.p + y.sum(axis=-1, keepdims=True)) / B
    assert case.report.tensors is not None
    reported = case.report.tensors.activations["out"]
    # sum_j p_j = 1 up to float rounding, so the normalisation term is 1/B to ~1e-7.
    assert_close(reported, by_formula, what="dL/dp")
    # Sanity: the probability path is not the logits path (p - y)/B.
    assert not np.allclose(reported, (case.p - y) / B, atol=1e-3)


def test_softmax_final_dense_uses_the_logits_path(softmax_cce: MLPCase) -> None:
    """The final Dense gets Keras's exact logits-path gradient: h^T (p - y) / B."""
    case = softmax_cce
    y = case.y.astype(np.float64)
    delta = (case.p - y) / B
    assert case.report.tensors is not None
    variables = case.report.tensors.variables
    assert_close(variables[case.out.kernel.path], case.h.T @ delta, what="dL/dW_out")
    assert_close(variables[case.out.bias.path], delta.sum(axis=0), what="dL/db_out")
    # and the loss value is the crossentropy of the probabilities
    expected_loss = -np.mean(np.sum(y * np.log(case.p), axis=-1))
    assert case.report.loss.value == pytest.approx(expected_loss, rel=1e-6)


# -- Conv2D ------------------------------------------------------------------------------


def conv2d_valid(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D ('valid', stride 1, channels last) with explicit loops."""
    b, hh, ww, _ = x.shape
    kh, kw, _, c_out = kernel.shape
    out = np.zeros((b, hh - kh + 1, ww - kw + 1, c_out))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            patch = x[:, i : i + kh, j : j + kw, :]  # (b, kh, kw, c_in)
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out + bias


@pytest.fixture(scope="module")
def conv_case(keras):  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(21)
    inputs = keras.Input((6, 7, 2), name="image")
    a = keras.layers.Conv2D(3, (3, 2), padding="valid", activation="tanh", name="conv")(inputs)
    flat = keras.layers.Flatten(name="flat")(a)
    out = keras.layers.Dense(1, name="out")(flat)
    model = keras.Model(inputs, out, name="conv_model")
    model.compile(loss="mse")
    rng = np.random.default_rng(21)
    x = rng.normal(size=(2, 6, 7, 2)).astype(np.float32)
    y = rng.normal(size=(2, 1)).astype(np.float32)
    report = gradscope.inspect(model, x, y, keep_tensors=True)
    return model, x, y, report


def test_conv2d_filter_gradient_is_a_cross_correlation(conv_case) -> None:  # type: ignore[no-untyped-def]
    model, x32, y32, report = conv_case
    conv, dense = model.get_layer("conv"), model.get_layer("out")
    kernel, bias = weights64(conv)
    w_out, b_out = weights64(dense)
    x, y = x32.astype(np.float64), y32.astype(np.float64)

    z = conv2d_valid(x, kernel, bias)
    a = np.tanh(z)
    out = a.reshape(len(x), -1) @ w_out + b_out
    assert report.loss.value == pytest.approx(np.mean((out - y) ** 2), rel=1e-5)

    grad_out = 2.0 * (out - y) / y.size
    grad_a = (grad_out @ w_out.T).reshape(a.shape)
    grad_z = grad_a * (1.0 - a**2)

    # dL/dK[i, j, c, o] = sum_{b, p, q} x[b, p + i, q + j, c] * dL/dz[b, p, q, o]
    filter_grad = np.zeros_like(kernel)
    for c in range(x.shape[-1]):
        for o in range(z.shape[-1]):
            for b in range(len(x)):
                filter_grad[:, :, c, o] += scipy.signal.correlate(
                    x[b, :, :, c], grad_z[b, :, :, o], mode="valid"
                )
    # dL/dx[b, p + i, q + j, c] = sum_o dL/dz[b, p, q, o] K[i, j, c, o]: a full convolution
    input_grad = np.zeros_like(x)
    for b in range(len(x)):
        for c in range(x.shape[-1]):
            for o in range(z.shape[-1]):
                input_grad[b, :, :, c] += scipy.signal.convolve(
                    grad_z[b, :, :, o], kernel[:, :, c, o], mode="full"
                )

    tensors = report.tensors
    assert tensors is not None
    assert_close(tensors.variables[conv.kernel.path], filter_grad, what="dL/dK")
    assert_close(tensors.variables[conv.bias.path], grad_z.sum(axis=(0, 1, 2)), what="dL/db")
    assert_close(tensors.inputs["image"], input_grad, what="dL/dx")
    assert_close(tensors.activations["conv"], grad_a, what="dL/d(conv output)")
    assert_close(tensors.activations["flat"], grad_a.reshape(len(x), -1), what="dL/d(flat)")
    assert_close(tensors.activations["out"], grad_out, what="dL/d(out)")
    assert_close(tensors.variables[dense.kernel.path], a.reshape(len(x), -1).T @ grad_out)


# -- finite differences in float64 ------------------------------------------------------


@pytest.fixture(scope="module")
def fd_case(keras):  # type: ignore[no-untyped-def]
    """A float64 Dense-tanh-Dense model and mse, floatx float64 (Keras's compiled loss is
    computed in floatx), restored afterwards."""
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        keras.utils.set_random_seed(31)
        inputs = keras.Input((3,), name="x", dtype="float64")
        h = keras.layers.Dense(5, activation="tanh", name="hidden", dtype="float64")(inputs)
        out = keras.layers.Dense(2, name="out", dtype="float64")(h)
        model = keras.Model(inputs, out, name="fd_model")
        model.compile(loss="mse")
        rng = np.random.default_rng(31)
        x = rng.normal(size=(4, 3))
        y = rng.normal(size=(4, 2))
        report = gradscope.inspect(model, x, y, keep_tensors=True)
    finally:
        keras.config.set_floatx(previous)
    return model, x, y, report


def _fd_loss(params: dict[str, np.ndarray], y: np.ndarray) -> float:
    h = params["h"] if "h" in params else np.tanh(params["x"] @ params["w1"] + params["b1"])
    out = h @ params["w2"] + params["b2"]
    return float(np.mean((out - y) ** 2))


def _central_differences(params: dict[str, np.ndarray], name: str, y: np.ndarray) -> np.ndarray:
    step = 1e-6
    grad = np.zeros_like(params[name])
    for index in np.ndindex(params[name].shape):
        plus = {k: v.copy() for k, v in params.items()}
        minus = {k: v.copy() for k, v in params.items()}
        plus[name][index] += step
        minus[name][index] -= step
        grad[index] = (_fd_loss(plus, y) - _fd_loss(minus, y)) / (2 * step)
    return grad


def test_finite_differences_float64(fd_case) -> None:  # type: ignore[no-untyped-def]
    model, x, y, report = fd_case
    hidden, out = model.get_layer("hidden"), model.get_layer("out")
    (w1, b1), (w2, b2) = weights64(hidden), weights64(out)
    params = {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2}
    # The numpy loss is the model's loss (to float64 rounding), so the differences below
    # differentiate the very function gradscope differentiated.
    assert report.loss.value == pytest.approx(_fd_loss(params, y), rel=1e-12)

    tensors = report.tensors
    assert tensors is not None
    reported = {
        "w1": tensors.variables[hidden.kernel.path],
        "b1": tensors.variables[hidden.bias.path],
        "w2": tensors.variables[out.kernel.path],
        "b2": tensors.variables[out.bias.path],
        "x": tensors.inputs["x"],
    }
    for name, grad in reported.items():
        assert grad.dtype == np.float64, f"{name}: {grad.dtype} (expected a float64 gradient)"
        numeric = _central_differences(params, name, y)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9, err_msg=name)

    # The hidden layer's output: differentiate the loss as a function of h.
    h_params = {"h": np.tanh(x @ w1 + b1), "w2": w2, "b2": b2}
    numeric_h = _central_differences(h_params, "h", y)
    np.testing.assert_allclose(tensors.activations["hidden"], numeric_h, rtol=1e-6, atol=1e-9)


# -- the sum of the outputs (no compiled loss) --------------------------------------------


def test_sum_of_outputs_single_dense(keras) -> None:  # type: ignore[no-untyped-def]
    """L = sum(x W + b): dL/dW = x^T 1, dL/db = B * 1, dL/dx = 1 W^T."""
    keras.utils.set_random_seed(41)
    inputs = keras.Input((4,), name="x")
    out = keras.layers.Dense(3, name="dense")(inputs)
    model = keras.Model(inputs, out)  # not compiled
    x = np.random.default_rng(41).normal(size=(5, 4)).astype(np.float32)
    report = gradscope.inspect(model, x, keep_tensors=True)
    dense = model.get_layer("dense")
    w, b = weights64(dense)
    x64 = x.astype(np.float64)
    ones = np.ones((5, 3))

    assert report.loss.kind == "sum_of_outputs"
    assert report.loss.value == pytest.approx(np.sum(x64 @ w + b), rel=1e-5, abs=1e-5)
    tensors = report.tensors
    assert tensors is not None
    assert_close(tensors.variables[dense.kernel.path], x64.T @ ones, what="dL/dW")
    assert_close(tensors.variables[dense.bias.path], np.full(3, 5.0), what="dL/db")
    assert_close(tensors.inputs["x"], ones @ w.T, what="dL/dx")
    assert_close(tensors.activations["dense"], ones, what="dL/d(out)")


def test_sum_of_outputs_softmax_has_no_weight_gradient(keras) -> None:  # type: ignore[no-untyped-def]
    """sum(softmax(z)) = B whatever z: zero weight gradient, ones at the probabilities."""
    keras.utils.set_random_seed(42)
    inputs = keras.Input((4,), name="x")
    out = keras.layers.Dense(3, activation="softmax", name="probs")(inputs)
    model = keras.Model(inputs, out)
    model.compile(loss="categorical_crossentropy")  # compiled, but no targets given
    x = np.random.default_rng(42).normal(size=(6, 4)).astype(np.float32)
    report = gradscope.inspect(model, x, keep_tensors=True)
    assert report.loss.kind == "sum_of_outputs"
    assert report.loss.value == pytest.approx(6.0, rel=1e-6)
    tensors = report.tensors
    assert tensors is not None
    np.testing.assert_array_equal(tensors.activations["probs"], np.ones((6, 3)))
    layer = model.get_layer("probs")
    # float32 softmax Jacobian rows sum to 0 up to rounding: |g| <~ 1e-7 * sum|x|.
    np.testing.assert_allclose(tensors.variables[layer.kernel.path], 0.0, atol=1e-5)
    np.testing.assert_allclose(tensors.variables[layer.bias.path], 0.0, atol=1e-5)


# -- regularization -----------------------------------------------------------------------


def test_kernel_regularizer_adds_2_lambda_w(keras) -> None:  # type: ignore[no-untyped-def]
    lam = 0.05
    keras.utils.set_random_seed(51)
    inputs = keras.Input((3,), name="x")
    out = keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(lam), name="dense")(inputs)
    model = keras.Model(inputs, out)
    model.compile(loss="mse")
    rng = np.random.default_rng(51)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    y = rng.normal(size=(6, 2)).astype(np.float32)
    report = gradscope.inspect(model, x, y, keep_tensors=True)

    dense = model.get_layer("dense")
    w, b = weights64(dense)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    out_value = x64 @ w + b
    delta = 2.0 * (out_value - y64) / y64.size
    penalty = lam * np.sum(w**2)

    assert report.loss.regularization == pytest.approx(penalty, rel=1e-6)
    assert report.loss.regularization_terms == 1
    assert report.loss.value == pytest.approx(np.mean((out_value - y64) ** 2) + penalty, rel=1e-6)
    tensors = report.tensors
    assert tensors is not None
    assert_close(tensors.variables[dense.kernel.path], x64.T @ delta + 2 * lam * w, what="dW")
    assert_close(tensors.variables[dense.bias.path], delta.sum(axis=0), what="db (no penalty)")
    assert_close(tensors.inputs["x"], delta @ w.T, what="dL/dx")


def test_activity_regularizer_reaches_the_layer_output(keras) -> None:  # type: ignore[no-untyped-def]
    """Keras adds mu * sum(h^2) / B for an activity regularizer: dL/dh gains 2 mu h / B."""
    lam, mu = 0.03, 0.2
    keras.utils.set_random_seed(52)
    inputs = keras.Input((3,), name="x")
    h = keras.layers.Dense(
        4, activation="tanh", activity_regularizer=keras.regularizers.L2(mu), name="hidden"
    )(inputs)
    out = keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(lam), name="out")(h)
    model = keras.Model(inputs, out)
    model.compile(loss="mse")
    rng = np.random.default_rng(52)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    y = rng.normal(size=(5, 2)).astype(np.float32)
    report = gradscope.inspect(model, x, y, keep_tensors=True)

    hidden, last = model.get_layer("hidden"), model.get_layer("out")
    (w1, b1), (w2, b2) = weights64(hidden), weights64(last)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    h64 = np.tanh(x64 @ w1 + b1)
    out64 = h64 @ w2 + b2
    penalty = lam * np.sum(w2**2) + mu * np.sum(h64**2) / len(x)
    delta2 = 2.0 * (out64 - y64) / y64.size
    grad_h = delta2 @ w2.T + 2 * mu * h64 / len(x)
    delta1 = grad_h * (1 - h64**2)

    assert report.loss.regularization_terms == 2
    assert report.loss.regularization == pytest.approx(penalty, rel=1e-5)
    assert report.loss.value == pytest.approx(np.mean((out64 - y64) ** 2) + penalty, rel=1e-5)
    tensors = report.tensors
    assert tensors is not None
    assert_close(tensors.activations["hidden"], grad_h, what="dL/dh with activity penalty")
    assert_close(tensors.variables[last.kernel.path], h64.T @ delta2 + 2 * lam * w2, what="dW2")
    assert_close(tensors.variables[hidden.kernel.path], x64.T @ delta1, what="dW1")
    assert_close(tensors.inputs["x"], delta1 @ w1.T, what="dL/dx")


# -- --loss override ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mae_model(keras):  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(61)
    inputs = keras.Input((3,), name="x")
    out = keras.layers.Dense(2, name="dense")(inputs)
    model = keras.Model(inputs, out)
    model.compile(loss="mae")
    rng = np.random.default_rng(61)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    y = rng.normal(size=(7, 2)).astype(np.float32)
    return model, x, y


@pytest.mark.parametrize("override", [None, "mse"])
def test_loss_override(mae_model, override) -> None:  # type: ignore[no-untyped-def]
    model, x, y = mae_model
    report = gradscope.inspect(model, x, y, loss=override, keep_tensors=True)
    dense = model.get_layer("dense")
    w, b = weights64(dense)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    err = x64 @ w + b - y64
    assert np.min(np.abs(err)) > 1e-3  # mae's derivative is well defined everywhere here
    if override == "mse":
        assert report.loss.kind == "override"
        value, delta = np.mean(err**2), 2.0 * err / err.size
    else:
        assert report.loss.kind == "compiled"
        value, delta = np.mean(np.abs(err)), np.sign(err) / err.size
    assert report.loss.value == pytest.approx(value, rel=1e-6)
    tensors = report.tensors
    assert tensors is not None
    assert_close(tensors.variables[dense.kernel.path], x64.T @ delta, what="dW")
    assert_close(tensors.variables[dense.bias.path], delta.sum(axis=0), what="db")
    assert_close(tensors.activations["dense"], delta, what="dL/d(out)")


def test_loss_override_multi_output_sums_outputs_plus_regularization(keras) -> None:  # type: ignore[no-untyped-def]
    """--loss mse on 2 outputs: mse(a) + mse(b) + penalty; loss weights do not apply."""
    lam = 0.1
    keras.utils.set_random_seed(62)
    inputs = keras.Input((3,), name="x")
    head_a = keras.layers.Dense(2, name="a", kernel_regularizer=keras.regularizers.L2(lam))(inputs)
    head_b = keras.layers.Dense(1, name="b")(inputs)
    model = keras.Model(inputs, [head_a, head_b])
    model.compile(loss={"a": "mae", "b": "mae"}, loss_weights={"a": 0.5, "b": 3.0})
    rng = np.random.default_rng(62)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    ya = rng.normal(size=(6, 2)).astype(np.float32)
    yb = rng.normal(size=(6, 1)).astype(np.float32)
    report = gradscope.inspect(model, x, [ya, yb], loss="mse", keep_tensors=True)

    layer_a, layer_b = model.get_layer("a"), model.get_layer("b")
    (wa, ba), (wb, bb) = weights64(layer_a), weights64(layer_b)
    x64 = x.astype(np.float64)
    err_a = x64 @ wa + ba - ya.astype(np.float64)
    err_b = x64 @ wb + bb - yb.astype(np.float64)
    penalty = lam * np.sum(wa**2)
    assert report.loss.kind == "override"
    assert report.loss.regularization == pytest.approx(penalty, rel=1e-6)
    assert report.loss.value == pytest.approx(
        np.mean(err_a**2) + np.mean(err_b**2) + penalty, rel=1e-6
    )
    delta_a, delta_b = 2 * err_a / err_a.size, 2 * err_b / err_b.size
    tensors = report.tensors
    assert tensors is not None
    assert_close(tensors.variables[layer_a.kernel.path], x64.T @ delta_a + 2 * lam * wa)
    assert_close(tensors.variables[layer_b.kernel.path], x64.T @ delta_b)
    assert_close(tensors.inputs["x"], delta_a @ wa.T + delta_b @ wb.T, what="dL/dx")
    assert_close(tensors.activations["a"], delta_a)
    assert_close(tensors.activations["b"], delta_b)


@pytest.mark.parametrize("loss", ["mse", None])
def test_float64_models_keep_float64_losses(keras: Any, loss: str | None) -> None:
    """A ``--loss`` override and the sum of outputs stay float64 on a float64 model:
    rounding them to float32 would cost eight digits (caught at 1e-12 here)."""
    import tensorflow as tf

    import gradscope as api

    rng = np.random.default_rng(4)
    inputs = keras.Input((3,), dtype="float64")
    model = keras.Model(inputs, keras.layers.Dense(2, dtype="float64")(inputs))
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    report = api.inspect(model, x, y if loss else None, loss=loss)
    with tf.GradientTape() as tape:
        out = model(x)
        value = tf.reduce_mean((out - y) ** 2) if loss else tf.reduce_sum(out)
    grads = tape.gradient(value, model.trainable_variables)
    assert report.loss.value == pytest.approx(float(value), rel=1e-12)
    for row, grad in zip(report.variables, grads, strict=True):
        assert row.grad is not None
        assert row.grad.l2 == pytest.approx(float(tf.norm(grad)), rel=1e-12)
