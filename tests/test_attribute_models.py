"""``attribute`` on models nobody here designed: keras_hub language models built from
configs, and a ``keras.applications`` network (``weights=None``).

The references are independent of gradscope: a watched zero added to the embedding
output by a one-off ``call`` replacement (:mod:`tests.reference`), and Grad-CAM's
formula computed from a tape on an extractor model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradscope.commands.attribute.options import AttributeOptions
from gradscope.commands.attribute.run import attribute, attribute_file
from tests import hub_language as hl
from tests.reference import Probe, _PerturbedCall

pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> hl.HubModel:
    return hl.build("gpt2", tmp_path_factory.mktemp("attribute_hub"))


def _embedding(model: Any) -> Any:
    return model.backbone.get_layer("token_embedding")


def test_gpt2_saliency_is_the_gradient_at_the_token_embedding(gpt2, tf) -> None:
    model = hl.load(gpt2)
    options = AttributeOptions(method="saliency", target="class:3", keep_tensors=True)
    report = attribute_file(gpt2.path, gpt2.data, options=options)
    assert report.inputs[0].through == "gpt2_backbone/token_embedding"
    inputs = {k: tf.constant(v) for k, v in gpt2.inputs.items()}
    with (
        tf.GradientTape() as tape,
        _PerturbedCall(Probe("embed", _embedding(model)), tape) as probe,
    ):
        logits = model(inputs, training=False)
        score = tf.reduce_sum(logits[..., 3])
    expected = tape.gradient(score, probe.delta).numpy()
    assert report.tensors is not None
    got = report.tensors.attributions["token_ids"]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(report.tensors.masks["token_ids"], gpt2.padding_mask > 0)
    per_example = tf.reduce_sum(logits[..., 3], axis=1).numpy()
    np.testing.assert_allclose([e.score for e in report.examples], per_example, rtol=1e-4)


def test_gpt2_integrated_gradients_of_the_loss_is_complete(gpt2, tf, keras) -> None:
    options = AttributeOptions(method="integrated-gradients", steps=64)
    report = attribute_file(gpt2.path, gpt2.data, options=options)
    model = hl.load(gpt2)
    # Each example's loss: its weighted token losses over the batch's token count, times
    # the batch size (Keras's mean over the batch is then the mean of these).
    logits = model(gpt2.inputs, training=False)
    tokens = keras.losses.sparse_categorical_crossentropy(gpt2.y, logits, from_logits=True)
    weighted = (tokens.numpy() * gpt2.sample_weight).sum(axis=1) / gpt2.y.shape[1]
    np.testing.assert_allclose([e.score for e in report.examples], weighted, rtol=1e-4)
    errors = [e.completeness_error for e in report.examples]
    assert all(e is not None for e in errors)
    assert max(errors) < 0.01  # type: ignore[type-var]
    # Padding never ranks among an example's top tokens.
    for example, mask in zip(report.examples, gpt2.padding_mask, strict=True):
        assert all(mask[p.position[0]] for p in example.inputs[0].top)


@pytest.mark.slow
def test_gradcam_on_mobilenet_uses_its_last_convolution(keras, tf) -> None:
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4
    )
    x = np.random.default_rng(0).uniform(-1, 1, size=(3, 32, 32, 3)).astype(np.float32)
    options = AttributeOptions(method="gradcam", target="predicted", keep_tensors=True)
    report = attribute(model, x, options=options)
    assert report.method.layer == "Conv_1"
    assert report.method.chosen
    extractor = keras.Model(model.inputs, [model.get_layer("Conv_1").output, model.output])
    with tf.GradientTape() as tape:
        maps, probs = extractor(tf.constant(x), training=False)
        predicted = tf.argmax(probs, axis=1)
        score = tf.reduce_sum(probs * tf.one_hot(predicted, 4))
    grads = tape.gradient(score, maps).numpy().astype(np.float64)
    expected = np.maximum((maps.numpy() * grads.mean(axis=(1, 2))[:, None, None]).sum(-1), 0)
    assert report.tensors is not None
    got = report.tensors.attributions["Conv_1"]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6 * np.abs(expected).max())
    assert report.tensors.resized is not None
    assert report.tensors.resized.shape == (3, 32, 32)


def test_gradcam_on_a_text_convolution_has_no_image_to_draw_on(keras, tf) -> None:
    keras.utils.set_random_seed(1)
    ids = keras.Input((12,), dtype="int32", name="ids")
    hidden = keras.layers.Embedding(30, 6)(ids)
    hidden = keras.layers.Conv1D(5, 3, activation="relu", name="conv")(hidden)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalMaxPooling1D()(hidden))
    model = keras.Model(ids, outputs)
    x = np.random.default_rng(1).integers(1, 30, size=(4, 12)).astype(np.int32)
    report = attribute(model, x, options=AttributeOptions(method="gradcam", target="class:1"))
    assert report.inputs[0].kind == "feature_map"
    assert report.inputs[0].shape == (10,)
    assert report.inputs[0].overlay is None


def test_nested_sample_model_attributes_its_inputs(sample_dir: Path) -> None:
    # A ReLU network is piecewise linear along the path: the quadrature converges slowly.
    options = AttributeOptions(method="integrated-gradients", steps=256, target="predicted")
    report = attribute_file(sample_dir / "nested.keras", sample_dir / "nested.npz", options=options)
    worst, above = report.completeness()
    assert worst is not None
    assert worst < 0.01
    assert above == 0
