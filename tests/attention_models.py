"""Attention and EinsumDense models for the per-example tests, and a child-process runner.

Run as a script (``python tests/attention_models.py NAME ...``), it builds each named
model, computes its per-example gradient norms with gradscope and with the loop
reference of ``test_per_sample.reference_norms`` (one eager tape per example), and
prints one JSON line per model.  tests/test_per_sample_attention.py runs it in a child
process with oneDNN on, so that a native crash (TensorFlow 2.21's oneDNN batch matmul on
pfor's broadcast rank-4 shapes) fails a test instead of killing pytest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

EXAMPLES = 7
SEQUENCE = 12
VOCABULARY = 50
CLASSES = 3


def einsum_dense(keras: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """``Input((12, 16))`` -> ``EinsumDense("abc,cd->abd")`` -> pooling -> ``Dense(3)``."""
    inputs = keras.Input((SEQUENCE, 16), name="x")
    h = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 16), name="einsum")(inputs)
    h = keras.layers.GlobalAveragePooling1D(name="avg")(h)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, name="logits")(h))
    x = np.random.default_rng(20).normal(size=(EXAMPLES, SEQUENCE, 16)).astype("float32")
    return model, {"x": x}


def attention(keras: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """``Input((12, 16))`` -> ``MultiHeadAttention(2, 8)`` -> pooling -> ``Dense(3)``."""
    inputs = keras.Input((SEQUENCE, 16), name="x")
    h = keras.layers.MultiHeadAttention(2, 8, name="mha")(inputs, inputs)
    h = keras.layers.GlobalAveragePooling1D(name="avg")(h)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, name="logits")(h))
    x = np.random.default_rng(21).normal(size=(EXAMPLES, SEQUENCE, 16)).astype("float32")
    return model, {"x": x}


def embedding_attention(keras: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """Token ids -> ``Embedding`` -> ``MultiHeadAttention`` -> pooling -> ``Dense(3)``."""
    inputs = keras.Input((SEQUENCE,), dtype="int32", name="ids")
    e = keras.layers.Embedding(VOCABULARY, 16, name="embed")(inputs)
    h = keras.layers.MultiHeadAttention(2, 8, name="mha")(e, e)
    h = keras.layers.GlobalAveragePooling1D(name="avg")(h)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, name="logits")(h))
    ids = np.random.default_rng(22).integers(0, VOCABULARY, (EXAMPLES, SEQUENCE))
    return model, {"ids": ids.astype("int32")}


def bert(keras: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """A tiny keras_hub ``BertTextClassifier`` built from a config (no download), with
    padding in the batch."""
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=SEQUENCE,
    )
    model = keras_hub.models.BertTextClassifier(backbone, CLASSES, preprocessor=None)
    rng = np.random.default_rng(23)
    mask = np.ones((EXAMPLES, SEQUENCE), "int32")
    mask[:, 9:] = 0
    mask[2, 5:] = 0
    inputs = {
        "token_ids": rng.integers(0, VOCABULARY, (EXAMPLES, SEQUENCE)).astype("int32") * mask,
        "padding_mask": mask,
        "segment_ids": np.zeros((EXAMPLES, SEQUENCE), "int32"),
    }
    return model, inputs


BUILDERS = {
    "einsum_dense": einsum_dense,
    "attention": attention,
    "embedding_attention": embedding_attention,
    "bert": bert,
}


def run(name: str) -> dict[str, Any]:
    """gradscope's and the loop reference's per-example norms of model ``name``."""
    from test_per_sample import reference_norms, setup

    from gradscope import _tf
    from gradscope.engine.per_sample import per_sample_norms
    from gradscope.loading.signature import model_signature

    tf, keras = _tf.tensorflow(), _tf.keras()
    keras.utils.set_random_seed(7)
    model, inputs = BUILDERS[name](keras)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.random.default_rng(24).integers(0, CLASSES, EXAMPLES)
    output = model_signature(model).output_names[0]
    signature, spec, batch = setup(model, inputs, {output: labels})
    result = per_sample_norms(model, signature, spec, batch)
    expected, expected_total = reference_norms(tf, model, signature, batch)
    return {
        "name": name,
        "method": result.method,
        "variables": list(result.variables),
        "norms": result.norms.tolist(),
        "total": result.total.tolist(),
        "expected": expected.tolist(),
        "expected_total": expected_total.tolist(),
    }


def main(names: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for name in names:
        print(json.dumps(run(name)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
