"""Per-example gradient norms against a loop of single-example tapes.

The reference shares nothing with the engine: for each example, one eager
``tf.GradientTape`` over ``model(x_i)`` and ``model.compute_loss`` on that example alone
(its own target and sample weight), and numpy norms of the dense gradients.  Float32
models are compared with ``rtol=1e-4``: the engine and the reference compute the same
float32 ops, but the vectorized graph batches them differently (matmul and conv
accumulation order), so each gradient entry differs by a few float32 ulps (~1e-7
relative) and a norm by a small multiple of that; 1e-4 leaves a wide margin while still
catching any wrong term (a missing weight or regularizer changes norms by percent).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradscope.engine.per_sample import (
    PerSampleEngine,
    PerSampleNorms,
    dense_squared_norm,
    per_sample_norms,
    summarize_norms,
    top_indices,
)
from gradscope.errors import ResourceError, UsageError
from gradscope.loading.data import Batch
from gradscope.loading.signature import ModelSignature, model_signature
from gradscope.losses import LossSpec, resolve_loss
from gradscope.report import BatchInfo

RTOL = 1e-4
ATOL = 1e-7


# -- helpers ---------------------------------------------------------------------------


def make_batch(
    signature: ModelSignature,
    inputs: dict[str, np.ndarray],
    targets: dict[str, np.ndarray] | None,
    weight: np.ndarray | None = None,
) -> Batch:
    size = len(next(iter(inputs.values())))
    info = BatchInfo("file", size, path=None, has_targets=targets is not None)
    return Batch(inputs, targets, weight, info)


def setup(
    model: Any,
    inputs: dict[str, np.ndarray],
    targets: dict[str, np.ndarray] | None,
    weight: np.ndarray | None = None,
) -> tuple[ModelSignature, LossSpec, Batch]:
    signature = model_signature(model)
    spec = resolve_loss(model, signature.output_names, None, targets is not None)
    return signature, spec, make_batch(signature, inputs, targets, weight)


def reference_norms(
    tf: Any, model: Any, signature: ModelSignature, batch: Batch
) -> tuple[np.ndarray, np.ndarray]:
    """``[examples, variables]`` norms and ``[examples]`` totals, one tape per example."""
    rows = []
    for i in range(batch.size):
        x = signature.pack_inputs({k: v[i : i + 1] for k, v in batch.inputs.items()})
        y = None
        if batch.targets is not None:
            y = signature.pack_outputs({k: v[i : i + 1] for k, v in batch.targets.items()})
        w = None if batch.sample_weight is None else batch.sample_weight[i : i + 1]
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x), sample_weight=w)
        grads = tape.gradient(loss, model.trainable_variables)
        dense = [np.asarray(tf.convert_to_tensor(g).numpy(), np.float64).ravel() for g in grads]
        rows.append([np.sqrt(np.dot(g, g)) for g in dense])
    norms = np.array(rows)
    return norms, np.sqrt((norms**2).sum(axis=1))


def check_against_reference(tf: Any, model: Any, signature: Any, spec: Any, batch: Any) -> Any:
    result = per_sample_norms(model, signature, spec, batch)
    expected, expected_total = reference_norms(tf, model, signature, batch)
    assert result.variables == tuple(v.path for v in model.trainable_variables)
    assert result.norms.shape == (batch.size, len(model.trainable_variables))
    assert result.norms.dtype == np.float64
    np.testing.assert_allclose(result.norms, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.total, expected_total, rtol=RTOL, atol=ATOL)
    return result


# -- models ----------------------------------------------------------------------------


def dense_classifier(keras: Any) -> Any:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((5,), name="x")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax", name="probs")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(loss="sparse_categorical_crossentropy")
    return model


def small_cnn(keras: Any) -> Any:
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 2), name="image")
    h = keras.layers.Conv2D(4, 3, activation="tanh", name="conv1")(inputs)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Conv2D(3, 2, padding="same", name="conv2")(h)
    h = keras.layers.Flatten(name="flat")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    model = keras.Model(inputs, outputs)
    model.compile(loss="categorical_crossentropy")
    return model


def text_model(keras: Any) -> Any:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,), dtype="int32", name="ids")
    h = keras.layers.Embedding(12, 4, name="embed")(inputs)
    h = keras.layers.GlobalAveragePooling1D(name="avg")(h)
    outputs = keras.layers.Dense(2, name="logits")(h)
    model = keras.Model(inputs, outputs)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def two_in_two_out(keras: Any) -> Any:
    """Dict inputs (float features and int token ids), two outputs, loss weights and an
    L2 kernel regularizer (so regularization is part of every example's loss)."""
    keras.utils.set_random_seed(4)
    features = keras.Input((3,), name="features")
    ids = keras.Input((4,), dtype="int32", name="ids")
    embedded = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(7, 3)(ids))
    joined = keras.layers.Concatenate()([features, embedded])
    hidden = keras.layers.Dense(
        6, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01), name="hidden"
    )(joined)
    value = keras.layers.Dense(2, name="value")(hidden)
    label = keras.layers.Dense(3, activation="softmax", name="label")(hidden)
    model = keras.Model({"features": features, "ids": ids}, {"value": value, "label": label})
    model.compile(
        loss={"value": "mse", "label": "sparse_categorical_crossentropy"},
        loss_weights={"value": 0.5, "label": 2.0},
    )
    return model


# -- against the loop of single-example tapes ------------------------------------------


def test_dense_classifier_matches_single_example_tapes(tf: Any, keras: Any) -> None:
    model = dense_classifier(keras)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype("float32")
    y = rng.integers(0, 4, 12)
    signature, spec, batch = setup(model, {"x": x}, {"probs": y})
    result = check_against_reference(tf, model, signature, spec, batch)
    assert result.method == "vectorized"
    assert result.chunk_size == 12


def test_cnn_matches_single_example_tapes(tf: Any, keras: Any) -> None:
    model = small_cnn(keras)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 8, 8, 2)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 10)]
    signature, spec, batch = setup(model, {"image": x}, {"probs": y})
    result = check_against_reference(tf, model, signature, spec, batch)
    # pfor vectorizes everything but the per-example conv filter gradient, and says so.
    assert result.method.startswith("vectorized")


def test_embedding_with_repeated_ids_uses_the_dense_gradient(tf: Any, keras: Any) -> None:
    model = text_model(keras)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 12, (9, 6)).astype("int32")
    ids[:, 1] = ids[:, 0]  # every example repeats an id, some twice more
    ids[::2, 2] = ids[::2, 0]
    y = rng.integers(0, 2, 9)
    signature, spec, batch = setup(model, {"ids": ids}, {"logits": y})
    result = check_against_reference(tf, model, signature, spec, batch)
    # The check is not vacuous: the norm of the slices (duplicates not summed) differs.
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=ids[:1], y=y[:1], y_pred=model(ids[:1]))
    slices = tape.gradient(loss, model.get_layer("embed").embeddings)
    assert isinstance(slices, tf.IndexedSlices)
    naive = float(tf.norm(slices.values))
    assert abs(naive - result.norms[0, 0]) > 1e-3 * result.norms[0, 0]


def test_dense_squared_norm_sums_duplicate_slices(tf: Any) -> None:
    values = tf.constant([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [1.0, 1.0]])
    indices = tf.constant([4, 1, 4, 4])
    slices = tf.IndexedSlices(values, indices, tf.constant([6, 2]))
    dense = tf.convert_to_tensor(slices).numpy().astype(np.float64)
    assert float(dense_squared_norm(slices)) == pytest.approx(float((dense**2).sum()))
    assert float(dense_squared_norm(None)) == 0.0


def test_two_inputs_two_outputs_loss_weights_and_sample_weight(tf: Any, keras: Any) -> None:
    model = two_in_two_out(keras)
    rng = np.random.default_rng(3)
    n = 8
    inputs = {
        "features": rng.normal(size=(n, 3)).astype("float32"),
        "ids": rng.integers(0, 7, (n, 4)).astype("int32"),
    }
    targets = {
        "value": rng.normal(size=(n, 2)).astype("float32"),
        "label": rng.integers(0, 3, n),
    }
    weight = rng.uniform(0.1, 2.0, n).astype("float32")
    weight[3] = 0.0
    signature, spec, batch = setup(model, inputs, targets, weight)
    result = check_against_reference(tf, model, signature, spec, batch)
    # Example 3 has weight 0: only the regularizer's gradient is left, on one kernel.
    hidden = result.variables.index("hidden/kernel")
    assert result.norms[3, hidden] > 0
    others = [j for j in range(len(result.variables)) if j != hidden]
    np.testing.assert_allclose(result.norms[3, others], 0.0, atol=1e-12)


def test_sum_of_outputs_without_targets(tf: Any, keras: Any) -> None:
    # Not the softmax classifier: the sum of its probabilities is 1 for every example, so
    # every gradient is zero in exact arithmetic and both sides would compare rounding
    # noise.  A linear head's sum depends on every weight.
    keras.utils.set_random_seed(4)
    inputs = keras.Input((5,), name="x")
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(hidden))
    x = np.random.default_rng(4).normal(size=(5, 5)).astype("float32")
    signature, spec, batch = setup(model, {"x": x}, None)
    assert spec.kind == "sum_of_outputs"
    result = per_sample_norms(model, signature, spec, batch)
    for i in range(batch.size):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(model(x[i : i + 1]))
        grads = tape.gradient(total, model.trainable_variables)
        expected = [np.linalg.norm(g.numpy()) for g in grads]
        np.testing.assert_allclose(result.norms[i], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_recurrent_model_vectorizes(tf: Any, keras: Any) -> None:
    keras.utils.set_random_seed(5)
    inputs = keras.Input((4, 3), name="seq")
    h = keras.layers.SimpleRNN(5, name="rnn")(inputs)
    outputs = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(loss="mse")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 4, 3)).astype("float32")
    y = rng.normal(size=(6, 1)).astype("float32")
    signature, spec, batch = setup(model, {"seq": x}, {"out": y})
    result = check_against_reference(tf, model, signature, spec, batch)
    assert result.method == "vectorized"  # pfor converts Keras's while loop (slowly: ~5 s)


# -- the definition: the mean of per-example gradients is the batch gradient -----------


def test_mean_of_example_gradients_is_the_batch_gradient(tf: Any, keras: Any) -> None:
    """In float64 (layers and loss), with sample weights and no regularization."""
    keras.utils.set_random_seed(6)
    inputs = keras.Input((4,), dtype="float64", name="x")
    hidden = keras.layers.Dense(5, activation="tanh", dtype="float64", name="h")(inputs)
    outputs = keras.layers.Dense(2, dtype="float64", name="y")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(loss=keras.losses.MeanSquaredError(dtype="float64"))
    rng = np.random.default_rng(6)
    x = rng.normal(size=(7, 4))
    y = rng.normal(size=(7, 2))
    weight = rng.uniform(0.0, 2.0, 7)
    signature, spec, batch = setup(model, {"x": x}, {"y": y}, weight)
    engine = PerSampleEngine(model, signature, spec)

    @tf.function(autograph=False)
    def example_gradients(chunk: Any) -> Any:
        return tf.vectorized_map(
            lambda example: [tf.convert_to_tensor(g) for g in engine.example_gradients(example)],
            chunk,
        )

    chunk = {"inputs": {"x": x}, "targets": {"y": y}, "weight": weight}
    per_example = [g.numpy() for g in example_gradients(chunk)]
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x), sample_weight=weight)
    batch_grads = tape.gradient(loss, model.trainable_variables)
    for stacked, expected in zip(per_example, batch_grads, strict=True):
        np.testing.assert_allclose(stacked.mean(axis=0), expected.numpy(), rtol=1e-12, atol=1e-14)
    # ... and the engine's norms are the norms of those same gradients.
    result = engine.run(batch)
    direct = np.stack([np.linalg.norm(g.reshape(len(x), -1), axis=1) for g in per_example], 1)
    np.testing.assert_allclose(result.norms, direct, rtol=1e-12, atol=1e-14)


# -- chunks, tracing, fallbacks ----------------------------------------------------------


def test_chunked_run_equals_unchunked_and_traces_once(tf: Any, keras: Any) -> None:
    model = small_cnn(keras)
    rng = np.random.default_rng(7)
    n = 64
    x = rng.normal(size=(n, 8, 8, 2)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, n)]
    signature, spec, batch = setup(model, {"image": x}, {"probs": y})
    whole = per_sample_norms(model, signature, spec, batch)
    assert whole.chunk_size == n
    engine = PerSampleEngine(model, signature, spec)
    plan = engine.plan(batch)
    budget = plan.shared + 9 * plan.per_example + plan.per_example // 2
    chunked = engine.run(batch, max_memory=budget)
    assert chunked.chunk_size == 9  # 7 chunks of 9 and a last one of 1
    np.testing.assert_allclose(chunked.norms, whole.norms, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(chunked.total, whole.total, rtol=1e-5, atol=1e-8)
    # One trace of the chunk step for all 8 chunks, and the one-example function traced
    # twice in all (memory estimate, vectorized step), not once per example.
    assert engine.compiled.experimental_get_tracing_count() == 1
    assert engine.example_traces == 2


def test_map_fn_path_matches_vectorized(tf: Any, keras: Any) -> None:
    model = text_model(keras)
    rng = np.random.default_rng(8)
    ids = rng.integers(0, 12, (7, 6)).astype("int32")
    ids[:, 3] = ids[:, 4]
    signature, spec, batch = setup(model, {"ids": ids}, {"logits": rng.integers(0, 2, 7)})
    vectorized = per_sample_norms(model, signature, spec, batch)
    looped = PerSampleEngine(model, signature, spec, vectorize=False).run(batch)
    assert looped.method == "map_fn"
    np.testing.assert_allclose(looped.norms, vectorized.norms, rtol=1e-5, atol=1e-8)


def test_falls_back_to_map_fn_when_pfor_fails(
    tf: Any, keras: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = dense_classifier(keras)
    rng = np.random.default_rng(9)
    x = rng.normal(size=(5, 5)).astype("float32")
    signature, spec, batch = setup(model, {"x": x}, {"probs": rng.integers(0, 4, 5)})
    expected = per_sample_norms(model, signature, spec, batch)

    def cannot_vectorize(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("No pfor vectorization defined for SomeOp")

    monkeypatch.setattr(tf, "vectorized_map", cannot_vectorize)
    result = per_sample_norms(model, signature, spec, batch)
    assert result.method == "map_fn"
    np.testing.assert_allclose(result.norms, expected.norms, rtol=1e-5, atol=1e-8)


def test_not_even_one_example_fits(keras: Any) -> None:
    model = dense_classifier(keras)
    x = np.zeros((3, 5), "float32")
    signature, spec, batch = setup(model, {"x": x}, {"probs": np.zeros(3, "int64")})
    with pytest.raises(ResourceError, match="--max-memory"):
        per_sample_norms(model, signature, spec, batch, max_memory=1024)


def test_selected_variables_only(tf: Any, keras: Any) -> None:
    model = dense_classifier(keras)
    rng = np.random.default_rng(10)
    x = rng.normal(size=(4, 5)).astype("float32")
    signature, spec, batch = setup(model, {"x": x}, {"probs": rng.integers(0, 4, 4)})
    full = per_sample_norms(model, signature, spec, batch)
    kernel = model.get_layer("probs").kernel
    one = per_sample_norms(model, signature, spec, batch, [kernel])
    assert one.variables == ("probs/kernel",)
    column = full.variables.index("probs/kernel")
    np.testing.assert_allclose(one.norms[:, 0], full.norms[:, column], rtol=1e-6)
    np.testing.assert_allclose(one.total, one.norms[:, 0], rtol=1e-12)


# -- training mode -----------------------------------------------------------------------


def batchnorm_model(keras: Any) -> Any:
    keras.utils.set_random_seed(11)
    inputs = keras.Input((3,), name="x")
    h = keras.layers.Dense(4, name="dense")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    outputs = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(loss="mse")
    return model


def test_training_mode_refuses_trainable_batchnorm(keras: Any) -> None:
    model = batchnorm_model(keras)
    x = np.ones((4, 3), "float32")
    signature, spec, batch = setup(model, {"x": x}, {"out": np.ones((4, 1), "float32")})
    with pytest.raises(UsageError, match=r"BatchNormalization.*Received: bn"):
        per_sample_norms(model, signature, spec, batch, training=True)
    model.get_layer("bn").trainable = False  # frozen: moving statistics, fine
    frozen = per_sample_norms(model, signature, spec, batch, training=True)
    assert np.all(np.isfinite(frozen.norms))
    inference = per_sample_norms(model, signature, spec, batch)
    assert np.all(np.isfinite(inference.norms))


# -- summary -----------------------------------------------------------------------------


def test_summary_against_numpy() -> None:
    rng = np.random.default_rng(12)
    norms = rng.uniform(0, 1, (11, 2))
    norms[[2, 7, 9], 0] = 0.95  # a three-way tie for the largest
    total = np.sqrt((norms**2).sum(axis=1))
    result = PerSampleNorms(("a/kernel", "a/bias"), norms, total)
    summary = result.summary(top=4)
    assert summary.examples == 11
    assert summary.total.path == "*"
    for row, values in zip(
        (*summary.variables, summary.total), (norms[:, 0], norms[:, 1], total), strict=True
    ):
        assert row.norms.min == pytest.approx(np.min(values))
        assert row.norms.median == pytest.approx(np.median(values))
        assert row.norms.max == pytest.approx(np.max(values))
        expected = sorted(range(11), key=lambda i: (-values[i], i))[:4]
        assert list(row.top) == expected
        assert row.top_norms == pytest.approx(values[expected])
    assert summary.variables[0].top[:3] == (2, 7, 9)  # ties by index


def test_summary_ranks_non_finite_first_and_spreads_finite_values() -> None:
    values = np.array([0.5, np.nan, 2.0, np.inf, 1.0])
    assert list(top_indices(values, 3)) == [1, 3, 2]
    row = summarize_norms("v", values, top=10)
    assert row.top == (1, 3, 2, 4, 0)
    assert (row.norms.min, row.norms.median, row.norms.max) == (0.5, 1.0, 2.0)
    empty = summarize_norms("v", np.array([np.nan]), top=2)
    assert np.isnan(empty.norms.median)
    assert empty.top == (0,)


# -- through the library and the command line -----------------------------------------


def test_per_sample_report_does_not_depend_on_the_batching() -> None:
    """Per-example gradients are per example: cutting the data into batches (a short
    last one included) must not change a single norm or index."""
    import gradscope as api

    sample = Path(__file__).resolve().parent.parent / "sample_models"
    files = (sample / "cnn.keras", sample / "cnn.npz")
    whole = api.inspect_file(*files, per_sample=True)
    batched = api.inspect_file(*files, per_sample=True, batch_size=5)
    assert whole.per_sample is not None
    assert batched.per_sample is not None
    assert whole.per_sample.examples == batched.per_sample.examples == whole.batch.size
    for a, b in zip(
        (whole.per_sample.total, *whole.per_sample.variables),
        (batched.per_sample.total, *batched.per_sample.variables),
        strict=True,
    ):
        assert a.path == b.path
        assert a.top == b.top
        np.testing.assert_allclose(a.top_norms, b.top_norms, rtol=1e-5)
        assert a.norms.median == pytest.approx(b.norms.median, rel=1e-5)


def test_cli_per_sample_json_contract() -> None:
    from typer.testing import CliRunner

    from gradscope.cli import app

    sample = Path(__file__).resolve().parent.parent / "sample_models"
    args = ["inspect", str(sample / "mlp.keras"), "-d", str(sample / "mlp.npz")]
    result = CliRunner().invoke(app, [*args, "--per-sample", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    per_sample = data["per_sample"]
    assert per_sample["examples"] == data["batch"]["size"]
    assert per_sample["total"]["path"] == "*"
    assert [v["path"] for v in per_sample["variables"]] == [v["path"] for v in data["variables"]]
    for row in (per_sample["total"], *per_sample["variables"]):
        norms = [t["norm"] for t in row["top"]]
        assert norms == sorted(norms, reverse=True)
        assert len(norms) == 5
        assert row["norms"]["max"] == norms[0]
        assert row["norms"]["min"] <= row["norms"]["median"] <= row["norms"]["max"]
    table = CliRunner().invoke(app, [*args, "--per-sample"])
    assert "Per-example gradient norms (32 examples)" in table.stdout
