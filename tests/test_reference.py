"""gradscope on every sample model against the one-tape-per-quantity reference.

The reference (``tests/reference.py``) takes every gradient with its own eager
``tf.GradientTape`` and extracts layer outputs with extractor models built on Keras's
functional graph, so it shares nothing with gradscope's one-pass engine (a single traced
tape over ``call``-patched layers).  gradscope runs through :func:`gradscope.inspect_file`
on the sample model and batch files, exactly as the CLI does, and through
:func:`gradscope.inspect` on three small in-memory models for what the samples do not
cover (a softmax output that another head reads, a separate Softmax layer after a nested
Sequential, two levels of nesting).

Tolerances: both sides are float32 computations of the same functions in different
orders (graph vs eager, one tape vs many), so entries may differ by float32 rounding
accumulated through the network: ``RTOL=1e-4`` relative to the tensor's largest entry
(observed differences are <~ 5e-6).  Statistics computed from such tensors then agree to
the same relative order; ``mean`` and ``std`` can be close to 0, so they get an absolute
tolerance of ``RTOL * max|g|``.  Counts of exact zeros, non-finite entries and dead units
come from structural zeros (ReLU, masking, untouched embedding rows) and must be equal.
The statistics are also checked against gradscope's own tensors at float64 precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import gradscope
from gradscope.commands.inspect.report import Report
from gradscope.engine.capture import LOOP_NOTE
from gradscope.report import TensorStats
from tests.reference import (
    ReferenceGradients,
    Sample,
    input_name,
    load_sample,
    numpy_dead_frac,
    numpy_stats,
    reference_gradients,
)

RTOL = 1e-4
STATS_RTOL = 1e-9  # report statistics vs gradscope's own tensors: float64 reductions

SAMPLES = [
    "mlp.keras",
    "cnn.keras",
    "text_lstm.keras",
    "multi_io.keras",
    "nested.keras",
    "deep_sigmoid.keras",
    "legacy_keras2.h5",
    "regression_keras3.h5",
]


@dataclass
class Case:
    name: str
    ref: ReferenceGradients
    report: Report
    input_arrays: dict[str, np.ndarray]


# -- in-memory models for what the sample models do not cover -------------------------------


def _softmax_feeds_a_head(keras, rng):  # type: ignore[no-untyped-def]
    """A softmax output that another output reads too: its gradient is the probability
    path of its own crossentropy plus what flows back from the second head."""
    inputs = keras.Input((5,), name="x")
    h = keras.layers.Dense(6, activation="tanh", name="h")(inputs)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    aux = keras.layers.Dense(1, name="aux")(probs)
    model = keras.Model(inputs, [probs, aux], name="softmax_feeds_a_head")
    model.compile(loss={"probs": "categorical_crossentropy", "aux": "mse"})
    x = rng.normal(size=(8, 5)).astype(np.float32)
    y = [np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)], rng.normal(size=(8, 1))]
    return model, x, [y[0], y[1].astype(np.float32)]


def _nested_sequential_softmax_layer(keras, rng):  # type: ignore[no-untyped-def]
    """A Sequential inside a Functional model, then a separate Softmax layer."""
    inner = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, activation="relu", name="d1"),
            keras.layers.Dense(3, name="d2"),
        ],
        name="inner",
    )
    inputs = keras.Input((5,), name="x")
    probs = keras.layers.Softmax(name="softmax")(inner(inputs))
    model = keras.Model(inputs, probs, name="nested_sequential")
    model.compile(loss="categorical_crossentropy")
    x = rng.normal(size=(8, 5)).astype(np.float32)
    return model, x, np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]


def _two_levels_of_nesting(keras, rng):  # type: ignore[no-untyped-def]
    a_in = keras.Input((5,))
    inner_a = keras.Model(a_in, keras.layers.Dense(4, activation="tanh", name="a1")(a_in), name="A")
    b_in = keras.Input((5,))
    inner_b = keras.Model(b_in, keras.layers.Dense(2, name="b1")(inner_a(b_in)), name="B")
    inputs = keras.Input((5,), name="x")
    model = keras.Model(inputs, inner_b(inputs), name="two_levels")
    model.compile(loss="mse")
    x = rng.normal(size=(8, 5)).astype(np.float32)
    return model, x, rng.normal(size=(8, 2)).astype(np.float32)


BUILT = {
    "softmax_feeds_a_head": _softmax_feeds_a_head,
    "nested_sequential_softmax_layer": _nested_sequential_softmax_layer,
    "two_levels_of_nesting": _two_levels_of_nesting,
}


@pytest.fixture(scope="module", params=SAMPLES + list(BUILT))
def case(request, sample_dir, keras) -> Case:  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(0)
    if request.param in BUILT:
        model, x, y = BUILT[request.param](keras, np.random.default_rng(0))
        arrays = x if isinstance(x, list) else [x]
        names = [input_name(t) for t in model.inputs]
        sample = Sample(model, x, y, names, arrays)
        ref = reference_gradients(sample)
        report = gradscope.inspect(model, x, y, keep_tensors=True)
    else:
        model_path = sample_dir / request.param
        data_path = model_path.with_suffix(".npz")
        sample = load_sample(model_path, data_path)
        ref = reference_gradients(sample)
        report = gradscope.inspect_file(model_path, data_path, keep_tensors=True)
    inputs = dict(zip(sample.input_names, sample.input_arrays, strict=True))
    return Case(request.param, ref, report, inputs)


def assert_close(actual: Any, expected: np.ndarray, what: str) -> None:
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected)))
    assert math.isfinite(scale), what
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def assert_stats(got: TensorStats | None, array: np.ndarray, what: str, rtol: float) -> None:
    """Report statistics ``got`` describe ``array`` (within ``rtol``, counts exact)."""
    assert got is not None, f"{what}: no statistics"
    want = numpy_stats(array)
    scale = want["max_abs"]
    assert got.l2 == pytest.approx(want["l2"], rel=rtol), f"{what}: l2"
    assert got.max_abs == pytest.approx(want["max_abs"], rel=rtol), f"{what}: max_abs"
    assert got.mean == pytest.approx(want["mean"], rel=rtol, abs=rtol * scale), f"{what}: mean"
    assert got.std == pytest.approx(want["std"], rel=rtol, abs=rtol * scale), f"{what}: std"
    assert got.zero_frac == want["zero_frac"], f"{what}: zero_frac"
    assert got.nonfinite == want["nonfinite"], f"{what}: nonfinite"


# -- the loss ------------------------------------------------------------------------------


def test_loss_value(case: Case) -> None:
    """The loss is Keras's compiled loss (regularization included) on the batch."""
    loss = case.report.loss
    assert loss.kind == "compiled"
    assert loss.value == pytest.approx(case.ref.loss, rel=1e-5)
    assert loss.regularization == pytest.approx(case.ref.regularization, rel=1e-5, abs=1e-12)
    assert (loss.regularization_terms > 0) == (case.ref.regularization > 0)


# -- the gradient tensors -------------------------------------------------------------------


def test_variable_gradients(case: Case) -> None:
    tensors = case.report.tensors
    assert tensors is not None
    assert set(tensors.variables) == set(case.ref.variables)
    for path, expected in case.ref.variables.items():
        assert_close(tensors.variables[path], expected, f"{case.name} variable {path}")


def test_input_gradients(case: Case) -> None:
    tensors = case.report.tensors
    assert tensors is not None
    assert set(tensors.inputs) == set(case.ref.inputs)
    for name, expected in case.ref.inputs.items():
        assert_close(tensors.inputs[name], expected, f"{case.name} input {name}")
    for row in case.report.inputs:
        if row.name in case.ref.inputs:
            assert row.grad is not None, row
        else:  # integer inputs (token ids) have no gradient, and say so
            assert not np.issubdtype(case.input_arrays[row.name].dtype, np.floating)
            assert row.grad is None, row
            assert row.note, row


def test_layer_output_gradients(case: Case) -> None:
    """Every layer output at every depth, the nested ones through the chain rule."""
    tensors = case.report.tensors
    assert tensors is not None
    assert set(tensors.activations) == set(case.ref.activations)
    for path, expected in case.ref.activations.items():
        assert_close(tensors.activations[path], expected, f"{case.name} layer output {path}")


def test_layers_inside_a_loop_get_one_note_row(case: Case) -> None:
    """Rows without a gradient are exactly the RNN cells, one row each, with the note."""
    rows = case.report.activations
    missing = [row for row in rows if row.grad is None]
    for row in missing:
        assert row.note == LOOP_NOTE, row
        assert row.layer_class.endswith("Cell"), row
        assert row.value is None
    assert {row.path for row in rows if row.grad is not None} == set(case.ref.activations)
    assert len({row.path for row in rows}) == len(rows)
    expected_loops = ["lstm/lstm_cell"] if case.name == "text_lstm.keras" else []
    assert [row.path for row in missing] == expected_loops


# -- the statistics, against numpy on the reference tensors ----------------------------------


def test_variable_statistics(case: Case) -> None:
    rows = {row.path: row for row in case.report.variables}
    assert set(rows) == set(case.ref.variables)
    for path, grad in case.ref.variables.items():
        row = rows[path]
        assert_stats(row.grad, grad, f"{case.name} variable {path}", RTOL)
        weights = case.ref.weights[path]
        assert row.weight_l2 == pytest.approx(np.linalg.norm(weights), rel=1e-12), path
        if np.any(weights):
            ratio = np.linalg.norm(grad) / np.linalg.norm(weights)
            assert row.ratio == pytest.approx(ratio, rel=RTOL), path
        else:  # zero weights (untrained biases): no finite ratio
            assert row.weight_l2 == 0.0, path
            assert row.ratio is None, path
        assert row.shape == weights.shape
        assert row.rows_touched == case.ref.rows_touched.get(path), path
        if row.rows_touched is not None:  # an embedding table: one row per distinct token id
            (tokens,) = [a for a in case.input_arrays.values() if a.dtype.kind in "iu"]
            assert row.rows_touched == np.unique(tokens).size, path


def test_input_statistics(case: Case) -> None:
    rows = {row.name: row for row in case.report.inputs}
    for name, grad in case.ref.inputs.items():
        assert_stats(rows[name].grad, grad, f"{case.name} input {name}", RTOL)


def test_layer_output_statistics(case: Case) -> None:
    """Gradient statistics and value statistics (with dead units) of every layer output."""
    rows = {row.path: row for row in case.report.activations}
    for path, grad in case.ref.activations.items():
        row = rows[path]
        assert_stats(row.grad, grad, f"{case.name} layer output {path}", RTOL)
        value = case.ref.values[path]
        assert row.shape == value.shape, path
        assert row.value is not None, path
        assert_stats(row.value, value, f"{case.name} layer value {path}", RTOL)
        assert row.value.dead_frac == numpy_dead_frac(value), f"{case.name} dead units {path}"


def test_global_grad_norm(case: Case) -> None:
    squares = sum(float(np.sum(g * g)) for g in case.ref.variables.values())
    assert case.report.global_grad_norm == pytest.approx(math.sqrt(squares), rel=RTOL)


def test_statistics_describe_gradscope_own_tensors(case: Case) -> None:
    """The in-graph float64 reductions equal numpy on gradscope's own tensors (also for the
    embedding's IndexedSlices gradient, reduced without densifying)."""
    tensors = case.report.tensors
    assert tensors is not None
    for row in case.report.variables:
        assert_stats(row.grad, tensors.variables[row.path], row.path, STATS_RTOL)
    for row in case.report.inputs:
        if row.grad is not None:
            assert_stats(row.grad, tensors.inputs[row.name], row.name, STATS_RTOL)
    for row in case.report.activations:
        if row.grad is not None:
            assert_stats(row.grad, tensors.activations[row.path], row.path, STATS_RTOL)
