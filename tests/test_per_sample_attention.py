"""Per-example gradients of attention and EinsumDense models, with oneDNN on.

pfor vectorizes a batch-of-one matmul ``(1, T, C) @ (C, D)`` into ``(n, 1, T, C) @ (C, D)``;
TensorFlow 2.21's oneDNN batch matmul corrupts memory on that broadcast rank-4 shape
(an abort, a segfault or garbage norms, depending on the CPU).  gradscope vectorizes
those ops as 2-D or rank-3 products instead (gradscope/engine/pfor_matmul.py).

* The structural tests check the traced per-example graph itself, so they fail on every
  machine when the rewrite is missing, including CPUs on which oneDNN happens not to
  crash.
* The model tests run the four models of issue 10 in a child process with
  ``TF_ENABLE_ONEDNN_OPTS=1`` (a native crash then fails the test instead of killing
  pytest) and compare every norm with the loop reference (one eager tape per example).

Tolerance: ``rtol=1e-4`` as in test_per_sample.py, plus an absolute term of ``1e-6`` times
the example's total norm.  Some attention gradients are zero in exact arithmetic (the key
bias: softmax is invariant to a shift shared by all keys) or nearly so (query/key kernels
of a freshly initialized attention); both computations then return float32 rounding
noise of a few 1e-8 relative to the whole gradient, which no relative tolerance can
compare.  The largest absolute difference seen is 2.1e-7 on totals above 0.88.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_per_sample import setup

from gradscope.engine import per_sample as per_sample_module
from gradscope.engine.per_sample import PerSampleEngine, per_sample_norms
from gradscope.engine.pfor_matmul import attach_converters

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "attention_models.py"
MODELS = ("einsum_dense", "attention", "embedding_attention", "bert")
RTOL = 1e-4
ATOL_OF_TOTAL = 1e-6
MATMULS = ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


# -- helpers ---------------------------------------------------------------------------


def attention_model(keras: Any) -> Any:
    keras.utils.set_random_seed(30)
    inputs = keras.Input((6, 8), name="x")
    h = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    h = keras.layers.GlobalAveragePooling1D(name="avg")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def attention_batch(keras: Any) -> tuple[Any, Any, Any, Any]:
    model = attention_model(keras)
    rng = np.random.default_rng(31)
    x = rng.normal(size=(5, 6, 8)).astype("float32")
    signature, spec, batch = setup(model, {"x": x}, {"logits": rng.integers(0, 3, 5)})
    return model, signature, spec, batch


def broadcast_or_deep_matmuls(graph: Any) -> list[str]:
    """Batched matmuls of pfor's vectorized ops whose operands differ in rank or have
    rank > 3 (written here independently of gradscope's own check)."""
    found = []
    for op in graph.get_operations():
        if op.type in MATMULS and "/pfor/" in op.name:
            ranks = {t.shape.rank for t in op.inputs[:2]}
            if len(ranks) != 1 or None in ranks or max(ranks) > 3:
                found.append(f"{op.name}: {[str(t.shape) for t in op.inputs[:2]]}")
    return found


def check_rows(result: dict[str, Any]) -> None:
    norms, expected = np.array(result["norms"]), np.array(result["expected"])
    total, expected_total = np.array(result["total"]), np.array(result["expected_total"])
    atol = ATOL_OF_TOTAL * expected_total[:, None]
    assert np.all(np.abs(norms - expected) <= atol + RTOL * np.abs(expected)), result["name"]
    np.testing.assert_allclose(total, expected_total, rtol=RTOL)


# -- the vectorized graph ----------------------------------------------------------------


def test_vectorized_graph_has_no_broadcast_rank4_matmul(keras: Any) -> None:
    model, signature, spec, batch = attention_batch(keras)
    engine = PerSampleEngine(model, signature, spec)
    engine._trace(engine._arrays(batch))  # trace only: nothing runs
    assert broadcast_or_deep_matmuls(engine._concrete.graph) == []
    assert engine.method == (
        "vectorized (2-D/rank-3 matmuls: oneDNN-safe for BatchMatMulV2, Einsum)"
    )
    # pfor's own converters would have produced them: the check is not vacuous.
    converter = per_sample_module.attach_converters
    try:
        per_sample_module.attach_converters = lambda ops: []  # type: ignore[assignment]
        plain = PerSampleEngine(model, signature, spec)
        plain._trace(plain._arrays(batch))
    finally:
        per_sample_module.attach_converters = converter
    assert plain.method.startswith("map_fn (pfor left")
    assert "BatchMatMulV2" in plain.method


def test_left_over_broadcast_matmul_falls_back_to_map_fn(
    tf: Any, keras: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a batched matmul keeps a risky shape (here: the rewrite switched off), the
    engine maps with tf.map_fn (per-example shapes, never vectorized) and says so."""
    model, signature, spec, batch = attention_batch(keras)
    expected = per_sample_norms(model, signature, spec, batch)
    monkeypatch.setattr(per_sample_module, "attach_converters", lambda ops: [])
    fallback = per_sample_norms(model, signature, spec, batch)
    assert fallback.method.startswith("map_fn (pfor left")
    np.testing.assert_allclose(fallback.norms, expected.norms, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "x_stacked", "y_stacked"),
    [
        ((1, 6, 5), (5, 4), True, False),  # a Dense/EinsumDense kernel
        ((6, 5), (1, 5, 4), False, True),  # the kernel on the left
        ((2, 6, 5), (2, 5, 4), True, True),  # attention scores, equal batch axes
        ((1, 2, 6, 5), (2, 1, 5, 4), True, True),  # batch axes broadcast both ways
        ((2, 6, 5), (1, 5, 4), True, True),  # ranks equal, one batch axis broadcast
    ],
)
@pytest.mark.parametrize(("adj_x", "adj_y"), [(False, False), (True, False), (False, True)])
def test_matmul_converter_against_numpy(
    tf: Any,
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...],
    x_stacked: bool,
    y_stacked: bool,
    adj_x: bool,
    adj_y: bool,
) -> None:
    rng = np.random.default_rng(32)
    n = 3
    x = rng.normal(size=((n,) if x_stacked else ()) + x_shape)
    y = rng.normal(size=((n,) if y_stacked else ()) + y_shape)
    if adj_x:
        x = np.swapaxes(x, -1, -2)
    if adj_y:
        y = np.swapaxes(y, -1, -2)

    def one(i: Any) -> Any:
        a = tf.gather(x, i) if x_stacked else tf.constant(x)
        b = tf.gather(y, i) if y_stacked else tf.constant(y)
        graph = tf.compat.v1.get_default_graph()
        first = len(graph.get_operations())
        product = tf.linalg.matmul(a, b, adjoint_a=adj_x, adjoint_b=adj_y)
        assert attach_converters(graph.get_operations()[first:]) == ["BatchMatMulV2"]
        return product

    vectorized = tf.function(lambda: tf.vectorized_map(one, tf.range(n)), autograph=False)
    assert broadcast_or_deep_matmuls(vectorized.get_concrete_function().graph) == []
    got = vectorized().numpy()
    for i in range(n):
        a = x[i] if x_stacked else x
        b = y[i] if y_stacked else y
        a = np.swapaxes(a, -1, -2) if adj_x else a
        b = np.swapaxes(b, -1, -2) if adj_y else b
        np.testing.assert_allclose(got[i], a @ b, rtol=1e-12, atol=1e-12)


def test_einsum_converter_against_numpy(tf: Any) -> None:
    rng = np.random.default_rng(33)
    q = rng.normal(size=(4, 1, 6, 2, 3))
    k = rng.normal(size=(4, 1, 5, 2, 3))
    equation = "BTNH,BSNH->BNTS"

    def one(i: Any) -> Any:
        graph = tf.compat.v1.get_default_graph()
        first = len(graph.get_operations())
        scores = tf.einsum(equation, tf.gather(q, i), tf.gather(k, i))
        assert "Einsum" in attach_converters(graph.get_operations()[first:])
        return scores

    vectorized = tf.function(lambda: tf.vectorized_map(one, tf.range(4)), autograph=False)
    ops = vectorized.get_concrete_function().graph.get_operations()
    ranks = [op.inputs[0].shape.rank for op in ops if op.type == "Einsum" and "/pfor/" in op.name]
    assert ranks == [4]  # the loop axis folded into B: the equation runs unchanged
    got = vectorized().numpy()
    for i in range(4):
        np.testing.assert_allclose(got[i], np.einsum(equation, q[i], k[i]), rtol=1e-12)


# -- the models of issue 10, oneDNN on, in a child process --------------------------------


@pytest.fixture(scope="module")
def child_results() -> dict[str, dict[str, Any]]:
    pytest.importorskip("keras_hub")
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(CHILD), *MODELS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    results = {}
    for line in done.stdout.splitlines():
        result = json.loads(line)
        results[result["name"]] = result
    if done.returncode != 0:
        results["error"] = {"returncode": done.returncode, "stderr": done.stderr[-2000:]}
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_model_matches_single_example_tapes_with_onednn(
    child_results: dict[str, dict[str, Any]], name: str
) -> None:
    assert name in child_results, f"child process died: {child_results.get('error')}"
    result = child_results[name]
    assert result["method"].startswith("vectorized (2-D/rank-3 matmuls: oneDNN-safe")
    check_rows(result)


def test_report_carries_the_method() -> None:
    from gradscope.engine.per_sample import PerSampleNorms

    norms = PerSampleNorms(
        ("k",), np.array([[3.0], [4.0]]), np.array([3.0, 4.0]), 2, "map_fn (why)"
    )
    data = norms.summary().to_dict()
    assert data["method"] == "map_fn (why)"
    assert data["examples"] == 2
