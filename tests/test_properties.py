"""Property-based tests (hypothesis): random small architectures and batch shapes.

For every drawn model and batch, ``inspect`` and ``hessian`` must run without a
traceback, give finite gradients for finite inputs and weights (bounded activations
and losses keep everything finite), and produce JSON and CSV that always parse.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradscope import api
from gradscope.commands.hessian import run as hessian_run
from gradscope.render import OutputFormat, render

ACTIVATIONS = ["relu", "tanh", "sigmoid", "linear", "gelu", "softplus"]
LOSSES = [None, "mse", "mae", "huber", "log_cosh"]


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
    return Architecture(
        sequence=sequence,
        features=draw(st.integers(1, 5)),
        steps=draw(st.integers(2, 5)),
        hidden=tuple(hidden),
        outputs=draw(st.integers(1, 3)),
        loss=draw(st.sampled_from(LOSSES)),
        rows=draw(st.integers(1, 7)),
        seed=draw(st.integers(0, 2**16)),
    )


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
    model = keras.Model(inputs, keras.layers.Dense(arch.outputs)(tensor))
    if arch.loss is not None:
        model.compile(loss=arch.loss)
    rng = np.random.default_rng(arch.seed)
    x = rng.standard_normal((arch.rows, *shape)).astype(np.float32)
    y = rng.standard_normal((arch.rows, arch.outputs)).astype(np.float32)
    return model, x, y


PROPERTY_SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@PROPERTY_SETTINGS
@given(arch=architectures())
def test_inspect_is_finite_and_its_outputs_parse(keras: Any, arch: Architecture) -> None:
    model, x, y = build(keras, arch)
    report = api.inspect(model, x, y, training=arch.rows > 3)
    assert np.isfinite(report.loss.value)
    assert np.isfinite(report.global_grad_norm)
    assert len(report.variables) == len(model.trainable_variables)
    for row in (*report.variables, *report.inputs, *report.activations):
        if row.grad is not None:
            assert row.grad.nonfinite == 0, row
            assert np.isfinite(row.grad.l2) and row.grad.l2 >= 0
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
    assert block.matrix is not None and np.all(np.isfinite(block.matrix))
    assert block.asymmetry is not None and block.asymmetry < 1e-4
    assert block.min_eigenvalue <= block.eigenvalues[0]
    json.loads(report.to_json())
