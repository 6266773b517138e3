"""Every private Keras hook in ``gradscope/_keras_private.py`` still does its job.

Each test drives one hook on the installed Keras and checks the result against what the
test built by hand (layer names, closed-form losses, values computed with NumPy), so a
Keras release that renames or changes one of the private names fails here, naming the
hook, rather than producing a wrong report.  CI runs this file on the newest Keras and on
the oldest supported one (``ci/min-versions.txt``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gradscope import _keras_private as hooks


def broke(hook: str, keras: Any, detail: str) -> str:
    """The failure message: which hook, on which Keras, and what it did."""
    return f"_keras_private.{hook} no longer works on Keras {keras.__version__}: {detail}"


def test_flatten_layers(keras: Any) -> None:
    class Block(keras.layers.Layer):  # a plain Layer holding a sublayer as an attribute
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(3, name="block_inner")

        def call(self, x: Any) -> Any:
            return self.inner(x)

    inputs = keras.Input((4,), name="x")
    encoder_in = keras.Input((4,), name="enc_x")
    encoder = keras.Model(
        encoder_in, keras.layers.Dense(4, name="enc_dense")(encoder_in), name="encoder"
    )
    model = keras.Model(inputs, Block(name="block")(encoder(inputs)), name="outer")
    found = {layer.name for layer in hooks.flatten_layers(model)}
    expected = {"x", "encoder", "enc_x", "enc_dense", "block", "block_inner"}
    assert found == expected, broke("flatten_layers", keras, f"recursive gave {sorted(found)}")
    direct = {layer.name for layer in hooks.flatten_layers(model, recursive=False)}
    assert direct == {"x", "encoder", "block"}, broke(
        "flatten_layers", keras, f"recursive=False gave {sorted(direct)}"
    )
    assert hooks.flatten_layers(object()) == []


@pytest.fixture
def two_outputs(keras: Any) -> Any:
    """A model compiled with a loss per output and loss weights."""
    inputs = keras.Input((3,), name="x")
    a = keras.layers.Dense(2, name="a")(inputs)
    b = keras.layers.Dense(2, name="b")(inputs)
    model = keras.Model(inputs, {"a": a, "b": b})
    model.compile(loss={"a": "mse", "b": "mae"}, loss_weights={"a": 2.0, "b": 0.5})
    return model


def test_compile_loss_is_the_weighted_data_loss(keras: Any, two_outputs: Any) -> None:
    rng = np.random.default_rng(0)
    y = {k: rng.normal(size=(5, 2)).astype(np.float32) for k in "ab"}
    p = {k: rng.normal(size=(5, 2)).astype(np.float32) for k in "ab"}
    compile_loss = hooks.compile_loss(two_outputs)
    assert compile_loss is not None, broke("compile_loss", keras, "None after compile(loss=...)")
    expected = 2.0 * np.mean((y["a"] - p["a"]) ** 2) + 0.5 * np.mean(np.abs(y["b"] - p["b"]))
    value = float(compile_loss(y, p))
    assert value == pytest.approx(expected, rel=1e-6), broke(
        "compile_loss", keras, f"{value} instead of {expected}"
    )
    uncompiled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    assert hooks.compile_loss(uncompiled) is None, broke("compile_loss", keras, "not None")


def test_loss_weights_and_the_public_loss(keras: Any, two_outputs: Any) -> None:
    weights = hooks.loss_weights(two_outputs)
    assert weights == {"a": 2.0, "b": 0.5}, broke("loss_weights", keras, f"gave {weights!r}")
    # gradscope check rebuilds the compiled loss from the public ``model.loss``.
    assert two_outputs.loss == {"a": "mse", "b": "mae"}, f"model.loss is {two_outputs.loss!r}"


def _scaled_abs(y_true: Any, y_pred: Any, factor: float) -> Any:
    from gradscope import _tf

    return factor * _tf.keras().ops.mean(_tf.keras().ops.abs(y_true - y_pred), axis=-1)


def test_loss_function_wrapper_reduces_like_compile(keras: Any) -> None:
    rng = np.random.default_rng(1)
    y_true = rng.normal(size=(6,))  # rank 1 against a (6, 1) output: Keras aligns the ranks
    y_pred = rng.normal(size=(6, 1))
    weights = rng.uniform(size=(6,))
    loss = hooks.loss_function_wrapper(_scaled_abs, name="scaled", dtype="float64", factor=3.0)
    value = loss(y_true, y_pred, sample_weight=weights)
    expected = np.mean(3.0 * np.abs(y_true - y_pred[:, 0]) * weights)
    assert str(getattr(value.dtype, "name", value.dtype)) == "float64", broke(
        "loss_function_wrapper", keras, f"computes in {value.dtype}, not float64"
    )
    assert float(value) == pytest.approx(expected, rel=1e-12), broke(
        "loss_function_wrapper", keras, f"{float(value)} instead of {expected}"
    )
    summed = hooks.loss_function_wrapper(_scaled_abs, reduction="sum", factor=1.0)
    expected_sum = np.sum(np.abs(y_true - y_pred[:, 0]))
    assert float(summed(y_true, y_pred)) == pytest.approx(expected_sum, rel=1e-5), broke(
        "loss_function_wrapper", keras, "reduction='sum' ignored"
    )


def test_wrapped_function(keras: Any) -> None:
    loss = hooks.loss_function_wrapper(_scaled_abs, factor=2.5)
    assert hooks.wrapped_function(loss) == (_scaled_abs, {"factor": 2.5}), broke(
        "wrapped_function", keras, f"gave {hooks.wrapped_function(loss)!r}"
    )
    builtin = hooks.wrapped_function(keras.losses.MeanSquaredError())
    assert builtin is not None, broke(
        "wrapped_function", keras, f"MeanSquaredError gave {builtin!r}"
    )
    assert builtin[0] is keras.losses.mean_squared_error, broke(
        "wrapped_function", keras, f"MeanSquaredError gave {builtin!r}"
    )

    class Custom(keras.losses.Loss):
        def call(self, y_true: Any, y_pred: Any) -> Any:
            return y_pred

    assert hooks.wrapped_function(Custom()) is None


def test_cached_logits_are_detected_and_copied(keras: Any, tf: Any) -> None:
    """Probabilities saturate to (0, 1) in float32, so a crossentropy that reads the cached
    logits gives 100 and one that reads the probabilities gives -log(1e-7) = 16.1."""
    logits = tf.constant([[0.0, 100.0]])
    y = tf.constant([[1.0, 0.0]])
    probs = keras.activations.softmax(logits)
    assert hooks.has_cached_logits(probs), broke("has_cached_logits", keras, "softmax: False")
    assert not hooks.has_cached_logits(logits)
    copy = tf.identity(probs)
    assert float(keras.losses.categorical_crossentropy(y, copy)[0]) == pytest.approx(16.118, 1e-3)
    hooks.copy_tensor_attributes(probs, copy)
    value = float(keras.losses.categorical_crossentropy(y, copy)[0])
    assert value == pytest.approx(100.0, rel=1e-6), broke(
        "copy_tensor_attributes", keras, f"crossentropy did not read the logits ({value})"
    )


def test_copied_mask_is_read_downstream(keras: Any, tf: Any) -> None:
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(np.array([[1, 2, 0, 0], [3, 0, 0, 0]]))
    pool = keras.layers.GlobalAveragePooling1D()
    rows = embedded.numpy()
    by_hand = np.stack([rows[0, :2].mean(0), rows[1, :1].mean(0)])  # padding left out
    copy = tf.identity(embedded)
    hooks.copy_tensor_attributes(embedded, copy)
    np.testing.assert_allclose(
        pool(copy).numpy(), by_hand, rtol=1e-6, err_msg=broke("copy_tensor_attributes", keras, "")
    )


def test_producing_layer_name(keras: Any) -> None:
    inputs = keras.Input((3,), name="features")
    outputs = keras.layers.Dense(2, name="head")(inputs)
    names = hooks.producing_layer_name(inputs), hooks.producing_layer_name(outputs)
    assert names == ("features", "head"), broke("producing_layer_name", keras, f"{names}")
    assert hooks.producing_layer_name(np.zeros(2)) is None


def test_call_inputs_lists_every_call(keras: Any) -> None:
    first, second = keras.Input((3,), name="first"), keras.Input((3,), name="second")
    shared = keras.layers.Dense(2, name="shared")
    keras.Model([first, second], [shared(first), shared(second)])
    calls = hooks.call_inputs(shared)
    assert len(calls) == 2, broke("call_inputs", keras, f"gave {calls!r}")
    assert calls[0][0] is first, broke("call_inputs", keras, f"gave {calls!r}")
    assert calls[1][0] is second, broke("call_inputs", keras, f"gave {calls!r}")


def test_global_dtype_policy_can_be_read_and_unset(keras: Any) -> None:
    saved = hooks.global_attribute("dtype_policy")
    try:
        keras.config.set_dtype_policy("mixed_float16")
        policy = hooks.global_attribute("dtype_policy")
        assert getattr(policy, "name", None) == "mixed_float16", broke(
            "global_attribute", keras, f"'dtype_policy' is {policy!r}"
        )
        hooks.set_global_attribute("dtype_policy", None)
        # Unset, Keras derives the policy from floatx again.
        assert keras.config.dtype_policy().name == keras.config.floatx(), broke(
            "set_global_attribute", keras, "unsetting 'dtype_policy' did not take"
        )
    finally:
        hooks.set_global_attribute("dtype_policy", saved)


def test_global_seed_generator_state_restores_the_draws(keras: Any) -> None:
    keras.random.uniform((1,))  # makes sure the global generator exists
    generator = hooks.global_attribute("global_seed_generator")
    assert generator is not None, broke(
        "global_attribute", keras, f"'global_seed_generator' is {generator!r}"
    )
    assert hasattr(generator, "state"), broke(
        "global_attribute", keras, f"'global_seed_generator' is {generator!r}"
    )
    state = np.array(generator.state.numpy())
    first = keras.random.uniform((3,)).numpy()
    generator.state.assign(state)
    again = keras.random.uniform((3,)).numpy()
    np.testing.assert_array_equal(
        first, again, err_msg=broke("global_attribute", keras, "the seed state is not the draw")
    )
