"""``attribute``: every method against an independent computation.

Saliency against one plain tape per example, gradient × input and Integrated Gradients
against the closed form of a linear model, Integrated Gradients' completeness against
forward passes, Grad-CAM against its formula computed here from a tape on the feature
maps, SmoothGrad against saliency averaged over the same seeded noise, and token inputs
through their embedding against a tape on the embedding output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gradscope.commands.attribute.options import AttributeOptions
from gradscope.commands.attribute.run import attribute, gauss_legendre
from gradscope.errors import DataLoadError, MismatchError, ResourceError, UsageError

ROWS = 6


def _dense_model(keras: Any, seed: int = 0, activation: str = "tanh") -> Any:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,), name="features")
    hidden = keras.layers.Dense(7, activation=activation)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(loss="sparse_categorical_crossentropy")
    return model


def _data(rows: int = ROWS, features: int = 5, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = rng.integers(0, 3, size=rows)
    return x, y


def _attributions(report: Any, name: str) -> np.ndarray:
    assert report.tensors is not None
    return np.asarray(report.tensors.attributions[name], np.float64)


def _options(**kwargs: Any) -> AttributeOptions:
    return AttributeOptions(keep_tensors=True, **kwargs)


# -- saliency ------------------------------------------------------------------------------


def test_saliency_of_the_loss_is_each_examples_own_loss_gradient(keras, tf) -> None:
    model = _dense_model(keras)
    x, y = _data()
    report = attribute(model, x, y, options=_options(method="saliency"))
    got = _attributions(report, "features")
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    for i in range(ROWS):
        one = tf.constant(x[i : i + 1])
        with tf.GradientTape() as tape:
            tape.watch(one)
            loss = loss_fn(y[i : i + 1], model(one, training=False))
        expected = tape.gradient(loss, one).numpy()[0]
        np.testing.assert_allclose(got[i], expected, rtol=2e-4, atol=1e-7)
        np.testing.assert_allclose(report.examples[i].score, float(loss), rtol=2e-5)


def test_saliency_of_a_class_is_the_gradient_of_that_output(keras, tf) -> None:
    model = _dense_model(keras)
    x, y = _data()
    report = attribute(model, x, y, options=_options(method="saliency", target="class:2"))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = model(xt, training=False)[:, 2]
    expected = tape.gradient(score, xt).numpy()
    np.testing.assert_allclose(_attributions(report, "features"), expected, rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose([e.score for e in report.examples], score.numpy(), rtol=1e-5)
    assert [e.target for e in report.examples] == [2] * ROWS


def test_predicted_target_uses_each_examples_argmax_and_logits(keras, tf) -> None:
    model = _dense_model(keras)
    x, y = _data()
    report = attribute(
        model, x, y, options=_options(method="saliency", target="predicted", logits=True)
    )
    hidden, last = model.layers[1], model.layers[2]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = tf.matmul(hidden(xt), last.kernel) + last.bias
        predicted = np.argmax(model(xt).numpy(), axis=1)
        score = tf.reduce_sum(logits * tf.one_hot(predicted, 3))
    expected = tape.gradient(score, xt).numpy()
    np.testing.assert_allclose(_attributions(report, "features"), expected, rtol=2e-4, atol=1e-6)
    assert [e.target for e in report.examples] == predicted.tolist()


# -- gradient x input and integrated gradients on a linear model ---------------------------


def _linear(keras: Any) -> Any:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(inputs))
    model.compile(loss="mse")
    return model


def test_gradient_x_input_is_exact_for_a_linear_model(keras) -> None:
    model = _linear(keras)
    x, _ = _data()
    report = attribute(model, x, options=_options(method="gradient-x-input", target="class:1"))
    kernel = model.layers[1].kernel.numpy().astype(np.float64)
    expected = x.astype(np.float64) * kernel[:, 1]
    np.testing.assert_allclose(_attributions(report, "features"), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("baseline", ["zeros", "mean", "file"])
def test_integrated_gradients_of_a_linear_model_is_the_difference_times_the_weights(
    keras, tmp_path, baseline
) -> None:
    model = _linear(keras)
    x, _ = _data()
    choice, start = baseline, np.zeros(5)
    if baseline == "mean":
        start = x.astype(np.float64).mean(axis=0)
    if baseline == "file":
        start = np.linspace(-1, 1, 5)
        choice = str(tmp_path / "start.npy")
        np.save(choice, start.astype(np.float32))
    options = _options(method="integrated-gradients", target="class:0", steps=3, baseline=choice)
    report = attribute(model, x, options=options)
    kernel = model.layers[1].kernel.numpy().astype(np.float64)
    expected = (x.astype(np.float64) - start) * kernel[:, 0]
    np.testing.assert_allclose(_attributions(report, "features"), expected, rtol=1e-5, atol=1e-6)
    errors = [e.completeness_error for e in report.examples]
    assert max(e for e in errors if e is not None) < 1e-4


def test_completeness_error_falls_with_more_steps_and_matches_forward_passes(keras) -> None:
    model = _dense_model(keras, activation="tanh")
    x, y = _data()
    scale = np.float32(3.0)  # far from the baseline: a curved path
    worst = []
    for steps in (1, 2, 4, 8):
        options = _options(method="integrated-gradients", target="class:1", steps=steps)
        report = attribute(model, x * scale, y, options=options)
        attributions = _attributions(report, "features")
        at_x = model(x * scale).numpy()[:, 1].astype(np.float64)
        at_zero = model(np.zeros_like(x)).numpy()[:, 1].astype(np.float64)
        delta = at_x - at_zero
        expected = np.abs(attributions.sum(axis=1) - delta) / np.abs(delta)
        got = np.array([e.completeness_error for e in report.examples], np.float64)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6)
        worst.append(float(got.max()))
    assert worst[3] < worst[2] < worst[1] < worst[0]
    assert worst[3] < 1e-3


def test_gauss_legendre_on_the_unit_interval() -> None:
    nodes, weights = gauss_legendre(4)
    assert abs(weights.sum() - 1.0) < 1e-12
    # Exact for degree 7: the integral of t^7 over [0, 1] is 1/8.
    assert abs((weights * nodes**7).sum() - 1 / 8) < 1e-12


# -- smoothgrad -------------------------------------------------------------------------------


def test_smoothgrad_is_the_mean_saliency_over_the_seeded_noise(keras, tf) -> None:
    model = _dense_model(keras)
    x, y = _data()
    samples, noise, seed = 7, 0.2, 11
    options = _options(method="smoothgrad", target="class:0", samples=samples, noise=noise)
    report = attribute(model, x, y, seed=seed, options=options)
    draws = np.random.default_rng(seed).standard_normal((samples, ROWS, 5), dtype=np.float32)
    sigma = noise * (x.max(axis=1) - x.min(axis=1))
    expected = np.zeros_like(x, dtype=np.float64)
    for sample in range(samples):
        noisy = tf.constant(x + sigma[:, None] * draws[sample])
        with tf.GradientTape() as tape:
            tape.watch(noisy)
            score = model(noisy, training=False)[:, 0]
        expected += tape.gradient(score, noisy).numpy() / samples
    np.testing.assert_allclose(_attributions(report, "features"), expected, rtol=2e-4, atol=1e-7)


def test_chunks_of_samples_and_batches_give_the_reference_with_one_trace_each(keras, tf) -> None:
    model = _dense_model(keras)
    x, y = _data(rows=10)
    options = AttributeOptions(
        method="integrated-gradients", target="class:2", steps=16, keep_tensors=True,
        max_memory=5_000,
    )  # fmt: skip
    report = attribute(model, x, y, options=options, batch_size=4)
    nodes, weights = gauss_legendre(16)
    xt = tf.constant(x)
    expected = np.zeros_like(x, dtype=np.float64)
    for alpha, weight in zip(nodes, weights, strict=True):
        point = xt * float(alpha)
        with tf.GradientTape() as tape:
            tape.watch(point)
            score = model(point, training=False)[:, 2]
        expected += weight * tape.gradient(score, point).numpy()
    expected *= x
    np.testing.assert_allclose(_attributions(report, "features"), expected, rtol=2e-4, atol=1e-7)
    assert report.timing.chunk_rows < 16 * 4  # the budget cut the steps into chunks
    assert report.timing.traces == 3  # forward, the rows' estimate, the rows


def test_a_step_that_does_not_fit_the_budget_is_refused_before_it_runs(keras) -> None:
    model = _dense_model(keras)
    x, y = _data(rows=10)
    options = AttributeOptions(method="smoothgrad", target="class:0", max_memory=600)
    with pytest.raises(ResourceError, match=r"attribute: one step of 10 examples needs about"):
        attribute(model, x, y, options=options)


# -- grad-cam ---------------------------------------------------------------------------------


def _cnn(keras: Any) -> Any:
    keras.utils.set_random_seed(5)
    inputs = keras.Input((12, 12, 3), name="image")
    hidden = keras.layers.Conv2D(4, 3, activation="relu", name="conv_a")(inputs)
    hidden = keras.layers.Conv2D(5, 3, activation="relu", name="conv_b")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("layer", [None, "conv_a"])
def test_gradcam_is_the_gradient_weighted_feature_maps_after_relu(keras, tf, layer) -> None:
    model = _cnn(keras)
    x = np.random.default_rng(2).normal(size=(4, 12, 12, 3)).astype(np.float32)
    options = _options(method="gradcam", target="class:1", layer=layer)
    report = attribute(model, x, options=options)
    name = layer or "conv_b"
    extractor = keras.Model(model.inputs, [model.get_layer(name).output, model.outputs[0]])
    with tf.GradientTape() as tape:
        maps, probs = extractor(tf.constant(x))
        score = probs[:, 1]
    grads = tape.gradient(score, maps).numpy().astype(np.float64)
    weights = grads.mean(axis=(1, 2))
    expected = np.maximum((maps.numpy() * weights[:, None, None, :]).sum(axis=-1), 0.0)
    np.testing.assert_allclose(_attributions(report, name), expected, rtol=2e-4, atol=1e-7)
    assert report.method.layer == name
    assert report.method.chosen is (layer is None)
    assert report.inputs[0].overlay == "image"
    assert report.tensors is not None
    assert report.tensors.resized is not None
    assert report.tensors.resized.shape == (4, 12, 12)


def test_gradcam_refuses_a_model_without_convolutions(keras) -> None:
    model = _dense_model(keras)
    x, y = _data()
    with pytest.raises(UsageError, match=r"no convolution layer"):
        attribute(model, x, y, options=AttributeOptions(method="gradcam"))


def test_gradcam_refuses_a_layer_without_spatial_axes(keras) -> None:
    model = _cnn(keras)
    x = np.zeros((2, 12, 12, 3), np.float32)
    options = AttributeOptions(method="gradcam", layer="probs", target="class:0")
    with pytest.raises(UsageError, match=r"spatial axes.*Received: output shape"):
        attribute(model, x, options=options)


def test_an_unknown_layer_is_named_with_close_names(keras) -> None:
    model = _cnn(keras)
    x = np.zeros((2, 12, 12, 3), np.float32)
    with pytest.raises(UsageError, match=r"no layer 'conv_c'.*'conv_"):
        attribute(model, x, options=AttributeOptions(method="gradcam", layer="conv_c"))


# -- token inputs through their embedding ----------------------------------------------------


def _text(keras: Any) -> Any:
    keras.utils.set_random_seed(7)
    ids = keras.Input((6,), dtype="int32", name="ids")
    embedded = keras.layers.Embedding(20, 4, mask_zero=True, name="embed")(ids)
    hidden = keras.layers.GlobalAveragePooling1D()(embedded)
    outputs = keras.layers.Dense(2, activation="softmax", name="probs")(hidden)
    model = keras.Model(ids, outputs)
    model.compile(loss="sparse_categorical_crossentropy")
    return model


def test_token_ids_are_attributed_through_their_embedding(keras, tf) -> None:
    model = _text(keras)
    ids = np.array([[3, 5, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6], [9, 9, 0, 0, 0, 0]], np.int32)
    y = np.array([0, 1, 1])
    report = attribute(model, ids, y, options=_options(method="gradient-x-input", target="class:1"))
    assert report.inputs[0].through == "embed"
    assert report.inputs[0].kind == "tokens"
    embedding = model.get_layer("embed")
    pooled, dense = model.layers[2], model.get_layer("probs")
    mask = ids != 0
    with tf.GradientTape() as tape:
        vectors = embedding(tf.constant(ids))
        tape.watch(vectors)
        score = dense(pooled(vectors, mask=tf.constant(mask)))[:, 1]
    gradient = tape.gradient(score, vectors).numpy()
    expected = gradient * vectors.numpy()
    np.testing.assert_allclose(_attributions(report, "ids"), expected, rtol=2e-4, atol=1e-7)
    assert report.tensors is not None
    np.testing.assert_array_equal(report.tensors.masks["ids"], mask)
    # Padding is never a top position.
    tops = [p.position[0] for p in report.examples[0].inputs[0].top]
    assert sorted(tops) == [0, 1, 2]


def test_integrated_gradients_through_an_embedding_is_complete(keras) -> None:
    model = _text(keras)
    ids = np.array([[3, 5, 7, 1, 2, 0], [1, 2, 3, 4, 5, 6]], np.int32)
    options = _options(method="integrated-gradients", target="class:0", steps=32)
    report = attribute(model, ids, options=options)
    probs = model(ids).numpy()[:, 0]
    baseline = model.get_layer("probs")(np.zeros((2, 4), np.float32)).numpy()[:, 0]
    for example, at_x, at_base in zip(report.examples, probs, baseline, strict=True):
        assert example.score == pytest.approx(float(at_x), rel=1e-5)
        assert example.baseline_score == pytest.approx(float(at_base), rel=1e-5)
        assert example.completeness_error is not None
        assert example.completeness_error < 1e-3


def test_mean_baseline_is_refused_for_token_ids(keras) -> None:
    model = _text(keras)
    ids = np.ones((2, 6), np.int32)
    options = AttributeOptions(method="integrated-gradients", baseline="mean", target="class:0")
    with pytest.raises(UsageError, match=r"--baseline mean: input 'ids' holds integer ids"):
        attribute(model, ids, options=options)


# -- targets ---------------------------------------------------------------------------------


def test_a_sum_reduced_loss_gives_each_examples_loss(keras, tf) -> None:
    model = _dense_model(keras)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(reduction="sum"))
    x, y = _data()
    report = attribute(model, x, y, options=_options(method="saliency"))
    per_example = keras.losses.sparse_categorical_crossentropy(y, model(x)).numpy()
    np.testing.assert_allclose([e.score for e in report.examples], per_example, rtol=2e-5)


def test_a_class_index_beyond_the_output_is_refused(keras) -> None:
    model = _dense_model(keras)
    x, y = _data()
    with pytest.raises(UsageError, match=r"has 3 classes.*Received: class:3"):
        attribute(model, x, y, options=AttributeOptions(target="class:3"))


def test_a_multi_output_model_needs_output_for_a_class_target(keras) -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    model = keras.Model(
        inputs, {"a": keras.layers.Dense(2)(inputs), "b": keras.layers.Dense(3)(inputs)}
    )
    x = np.ones((2, 4), np.float32)
    with pytest.raises(UsageError, match=r"--output: the model has 2 outputs"):
        attribute(model, x, options=AttributeOptions(target="class:0"))
    report = attribute(model, x, options=_options(target="class:2", output="b"))
    kernel = next(layer.kernel.numpy() for layer in model.layers[1:] if layer.units == 3)
    np.testing.assert_allclose(_attributions(report, "x"), np.tile(kernel[:, 2], (2, 1)), rtol=1e-5)


# -- baseline files ----------------------------------------------------------------------------


def _ig(baseline: str, **kwargs: Any) -> AttributeOptions:
    return AttributeOptions(
        method="integrated-gradients", target="class:0", baseline=baseline, **kwargs
    )


def test_a_baseline_file_of_another_shape_is_refused(keras, tmp_path) -> None:
    model = _linear(keras)
    x, _ = _data()
    path = tmp_path / "wrong.npy"
    np.save(path, np.zeros((7,), np.float32))
    with pytest.raises(MismatchError, match=r"one example's shape \(5,\)\. Received: \(7,\)"):
        attribute(model, x, options=_ig(str(path)))


def test_a_pickled_baseline_is_refused_without_being_loaded(keras, tmp_path) -> None:
    model = _linear(keras)
    x, _ = _data()
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataLoadError, match=r"evil\.npy: cannot read the baseline.*no pickles"):
        attribute(model, x, options=_ig(str(path)))


def test_a_missing_baseline_file_is_named(keras, tmp_path) -> None:
    model = _linear(keras)
    x, _ = _data()
    with pytest.raises(DataLoadError, match=r"--baseline: no such file.*absent\.npz"):
        attribute(model, x, options=_ig(str(tmp_path / "absent.npz")))


def test_a_npz_baseline_needs_every_input(keras, tmp_path) -> None:
    keras.utils.set_random_seed(0)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], keras.layers.Dense(2)(joined))
    x = [np.ones((2, 3), np.float32), np.ones((2, 2), np.float32)]
    path = tmp_path / "partial.npz"
    np.savez(path, a=np.zeros(3, np.float32))
    with pytest.raises(MismatchError, match=r"no baseline array for input 'b'"):
        attribute(model, x, options=_ig(str(path)))
    np.save(tmp_path / "one.npy", np.zeros(3, np.float32))
    with pytest.raises(UsageError, match=r"the model has 2 inputs; expected a \.npz"):
        attribute(model, x, options=_ig(str(tmp_path / "one.npy")))


def test_baseline_token_ids_start_the_path_at_their_embedding(keras, tf, tmp_path) -> None:
    model = _text(keras)
    ids = np.array([[3, 5, 7, 1, 2, 4]], np.int32)
    start = np.array([1, 1, 1, 1, 1, 1], np.int32)
    np.save(tmp_path / "ids.npy", start)
    options = AttributeOptions(
        method="integrated-gradients", target="class:0", steps=32,
        baseline=str(tmp_path / "ids.npy"), keep_tensors=True,
    )  # fmt: skip
    report = attribute(model, ids, options=options)
    baseline_score = float(model(start[None]).numpy()[0, 0])
    assert report.examples[0].baseline_score == pytest.approx(baseline_score, rel=1e-5)
    assert report.examples[0].completeness_error is not None
    assert report.examples[0].completeness_error < 1e-3


def test_a_tf_data_pipeline_with_a_short_last_batch_needs_no_second_trace(keras, tf) -> None:
    model = _linear(keras)
    x, _ = _data(rows=10)
    pipeline = tf.data.Dataset.from_tensor_slices(x).batch(4)  # 4, 4 and 2 rows
    options = _options(method="integrated-gradients", target="class:2", steps=2)
    report = attribute(model, pipeline, options=options)
    kernel = model.layers[1].kernel.numpy().astype(np.float64)
    expected = x.astype(np.float64) * kernel[:, 2]
    np.testing.assert_allclose(_attributions(report, "features"), expected, rtol=1e-5, atol=1e-6)
    assert [e.index for e in report.examples] == list(range(10))
    assert report.timing.traces == 2  # the forward pass and the rows, for every batch


def test_arrays_kept_for_the_outputs_are_sized_before_any_work(keras) -> None:
    model = _linear(keras)
    x, _ = _data(rows=200)  # 200 examples x (20 + 20) bytes: 8,000 bytes to keep
    options = AttributeOptions(keep_tensors=True, target="class:0", max_memory=5_000)
    with pytest.raises(ResourceError, match=r"keeping the arrays of 200 examples.*--limit N"):
        attribute(model, x, options=options, batch_size=5)
