"""Property-based tests (hypothesis): random small architectures and batch shapes.

For every drawn model and batch, ``inspect`` must agree with a one-tape reference
written here independently of gradscope and of Keras's loss code: one eager
``tf.GradientTape`` over ``model(x)`` and a hand-written loss (mse, mae, huber,
log-cosh, or the sum of the outputs when nothing is compiled) plus, when the head
carries an L2 regularizer, ``factor * sum(kernel**2)`` written out.  The loss value,
every variable's and the input's gradient statistics (l2, max_abs, mean, std; the
zero and non-finite counts exactly, see :func:`tests.reference.assert_stats`) and the
global norm are compared, in training mode too (the reference starts from the same
dropout seed state).  The JSON and CSV must parse.  ``hessian`` must give a finite,
symmetric block.

Tolerance ``RTOL = 1e-5`` (relative; for mean and std, of the tensor's largest entry).
The forward pass and the backward ops are the same float32 kernels on both sides
(gradscope's step runs with Grappler off); what differs is the loss: Keras reduces per
row then over the batch, the reference takes one mean, and Keras writes huber and
log-cosh differently (``x + softplus(-2x) - log 2``).  So the cotangent at the output
differs by a few float32 roundings: at most about ``n * eps32`` of its largest entry,
``n`` <= 21 entries summed (7 rows, 3 outputs), ``21 * 1.2e-7 = 2.5e-6``.
Backpropagation is linear in that cotangent, so each gradient moves by that fraction of
what the cotangent's magnitude gives; a factor of 4 covers the cancellation the drawn
layers (LayerNormalization, GRU gates) add.  The worst error observed over 200 drawn
models was 8e-7 of the scale (below ``RTOL / 10``); a 1% change of any gradient (or a
dropped regularizer, or a loss off by a constant factor) is 1000 times larger.  Not
drawn: a LayerNormalization over 1 or 2 features, below which every gradient is zero in
exact arithmetic and float32 rounding noise on both sides (observed: 3e-4 of its own
largest entry), which no relative tolerance compares.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gradscope as api
from gradscope.commands.hessian import run as hessian_run
from gradscope.render import OutputFormat, render
from tests.reference import TapeGradients, assert_stats, one_tape_gradients

ACTIVATIONS = ["relu", "tanh", "sigmoid", "linear", "gelu", "softplus"]
LOSSES = [None, "mse", "mae", "huber", "log_cosh"]
L2_FACTOR = 0.05  # the head's kernel regularizer, when drawn
RTOL = 1e-5  # of the tensor's largest entry: see the module docstring


@dataclass(frozen=True)
class Architecture:
    """A drawn model: flat or sequence input, hidden layers, head, loss, batch."""

    sequence: bool
    features: int
    steps: int
    hidden: tuple[tuple[str, int, str], ...]
    outputs: int
    loss: str | None
    rows: int
    seed: int
    regularized: bool = False


@st.composite
def architectures(draw: Any) -> Architecture:
    sequence = draw(st.booleans())
    kinds = ["dense", "layernorm", "dropout"] + (["conv1d", "gru"] if sequence else [])
    hidden = draw(
        st.lists(
            st.tuples(st.sampled_from(kinds), st.integers(1, 6), st.sampled_from(ACTIVATIONS)),
            min_size=1,
            max_size=3,
        )
    )
    features = draw(st.integers(1, 5))
    assume(not _normalizes_two_or_fewer(features, hidden))
    return Architecture(
        sequence=sequence,
        features=features,
        steps=draw(st.integers(2, 5)),
        hidden=tuple(hidden),
        outputs=draw(st.integers(1, 3)),
        loss=draw(st.sampled_from(LOSSES)),
        rows=draw(st.integers(1, 7)),
        seed=draw(st.integers(0, 2**16)),
        regularized=draw(st.booleans()),
    )


def _normalizes_two_or_fewer(features: int, hidden: list[tuple[str, int, str]]) -> bool:
    """A LayerNormalization over 1 or 2 features: its output is ``beta`` or
    ``+-gamma + beta`` whatever its input, so every gradient below it is zero in exact
    arithmetic and rounding noise in float32, which no relative tolerance compares."""
    width = features
    for kind, units, _ in hidden:
        if kind == "layernorm" and width <= 2:
            return True
        if kind in ("dense", "conv1d", "gru"):
            width = units
    return False


def _layer(keras: Any, kind: str, width: int, activation: str) -> Any:
    if kind == "dense":
        return keras.layers.Dense(width, activation=activation)
    if kind == "conv1d":
        return keras.layers.Conv1D(width, 2, padding="same", activation=activation)
    if kind == "gru":
        return keras.layers.GRU(width, return_sequences=True)
    if kind == "layernorm":
        return keras.layers.LayerNormalization()
    return keras.layers.Dropout(0.3)


def build(keras: Any, arch: Architecture) -> tuple[Any, np.ndarray, np.ndarray]:
    keras.utils.set_random_seed(arch.seed)
    shape = (arch.steps, arch.features) if arch.sequence else (arch.features,)
    inputs = keras.Input(shape)
    tensor = inputs
    for kind, width, activation in arch.hidden:
        tensor = _layer(keras, kind, width, activation)(tensor)
    if arch.sequence:
        tensor = keras.layers.GlobalAveragePooling1D()(tensor)
    regularizer = keras.regularizers.L2(L2_FACTOR) if arch.regularized else None
    head = keras.layers.Dense(arch.outputs, kernel_regularizer=regularizer, name="head")
    model = keras.Model(inputs, head(tensor))
    if arch.loss is not None:
        model.compile(loss=arch.loss)
    rng = np.random.default_rng(arch.seed)
    x = rng.standard_normal((arch.rows, *shape)).astype(np.float32)
    y = rng.standard_normal((arch.rows, arch.outputs)).astype(np.float32)
    return model, x, y


# -- the one-tape reference -------------------------------------------------------------


def _data_loss(tf: Any, name: str | None, y: Any, pred: Any) -> Any:
    """The loss written out: the mean over every entry (the drawn batches have no
    sample weights, so Keras's per-row mean then batch mean is the same number)."""
    if name is None:
        return tf.reduce_sum(pred)
    diff = pred - y
    if name == "mse":
        pointwise = diff * diff
    elif name == "mae":
        pointwise = tf.abs(diff)
    elif name == "huber":  # delta = 1
        pointwise = tf.where(tf.abs(diff) <= 1.0, 0.5 * diff * diff, tf.abs(diff) - 0.5)
    else:  # log_cosh
        pointwise = tf.math.log(tf.math.cosh(diff))
    return tf.reduce_mean(pointwise)


def tape_reference(tf: Any, model: Any, arch: Architecture, x: Any, y: Any) -> TapeGradients:
    """One eager tape over the forward pass, the hand-written loss and regularizer."""
    target = tf.constant(y)

    def loss_of(pred: Any) -> Any:
        loss = _data_loss(tf, arch.loss, target, pred)
        if arch.regularized and arch.loss is not None:
            loss += L2_FACTOR * tf.reduce_sum(tf.square(model.get_layer("head").kernel))
        return loss

    return one_tape_gradients(model, x, loss_of, training=arch.rows > 3)


def assert_matches_reference(report: Any, ref: TapeGradients) -> None:
    """Loss, every gradient's statistics and the global norm, within ``RTOL``."""
    assert report.loss.value == pytest.approx(ref.loss, rel=RTOL, abs=RTOL)
    assert [row.path for row in report.variables] == list(ref.variables)
    grads = [g for g in ref.variables.values() if g is not None]
    for row in report.variables:
        want = ref.variables[row.path]
        if want is None:
            assert row.grad is None, row
        else:
            assert_stats(row.grad, want, RTOL, row.path)
    (input_row,) = report.inputs
    (input_grad,) = ref.inputs
    assert input_grad is not None
    assert_stats(input_row.grad, input_grad, RTOL, input_row.name)
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads))
    assert report.global_grad_norm == pytest.approx(norm, rel=RTOL)


PROPERTY_SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@PROPERTY_SETTINGS
@given(arch=architectures())
def test_inspect_matches_a_one_tape_reference_and_its_outputs_parse(
    keras: Any, tf: Any, arch: Architecture
) -> None:
    model, x, y = build(keras, arch)
    ref = tape_reference(tf, model, arch, x, y)
    report = api.inspect(model, x, y, training=arch.rows > 3)
    assert report.loss.kind == ("sum_of_outputs" if arch.loss is None else "compiled")
    assert_matches_reference(report, ref)
    data = json.loads(render(report, OutputFormat.JSON))
    assert data["global_grad_norm"] == pytest.approx(report.global_grad_norm)
    rows = list(csv.DictReader(io.StringIO(render(report, OutputFormat.CSV))))
    assert len(rows) == len(report.variables) + len(report.inputs) + len(report.activations)
    assert render(report, OutputFormat.TABLE).startswith("model")


@PROPERTY_SETTINGS
@given(arch=architectures())
def test_hessian_is_finite_and_symmetric(keras: Any, arch: Architecture) -> None:
    model, x, y = build(keras, arch)
    last = model.layers[-1].name
    options = hessian_run.HessianOptions(layers=last, block="layer", method="exact", top_k=1)
    report = hessian_run.hessian(model, x, y, options=options)
    block = report.blocks[0]
    assert block.matrix is not None
    assert np.all(np.isfinite(block.matrix))
    assert block.asymmetry is not None
    assert block.asymmetry < 1e-4
    assert block.min_eigenvalue <= block.eigenvalues[0]
    json.loads(report.to_json())
