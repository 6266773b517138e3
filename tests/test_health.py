"""Health diagnoses: each one fires on a model built to have the problem, names the right
layer, and stays silent on healthy models (attention's key bias included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import gradscope as api
from gradscope import health
from gradscope.cli import app
from gradscope.errors import ExitCode

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
HEALTHY = ["mlp", "cnn", "text_lstm", "multi_io", "nested"]


def _kinds(report: Any) -> list[str]:
    return [finding.kind for finding in report.health.findings]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_sample_models_have_no_findings(name: str) -> None:
    report = api.inspect_file(SAMPLES / f"{name}.keras", SAMPLES / f"{name}.npz")
    assert report.health is not None
    assert report.health.findings == ()
    assert report.to_dict()["health"]["ok"] is True


def test_deep_sigmoid_vanishes_from_the_first_layer() -> None:
    report = api.inspect_file(SAMPLES / "deep_sigmoid.keras", SAMPLES / "deep_sigmoid.npz")
    assert _kinds(report) == ["vanishing", "stalled"]
    vanishing = report.health.findings[0]  # type: ignore[union-attr]
    # Independent: per-layer norms in quadrature from the rows, against the largest.
    layers: dict[str, float] = {}
    for row in report.variables:
        layers[row.layer] = float(np.hypot(layers.get(row.layer, 0.0), row.grad.l2))  # type: ignore[union-attr]
    largest = max(layers.values())
    expected = tuple(name for name, norm in layers.items() if norm < 1e-4 * largest)
    assert vanishing.where == expected
    assert expected[0] == "dense_01"
    assert vanishing.values["largest_grad_l2"] == pytest.approx(largest)
    assert vanishing.threshold == 1e-4
    looser = api.inspect_file(
        SAMPLES / "deep_sigmoid.keras",
        SAMPLES / "deep_sigmoid.npz",
        thresholds=health.Thresholds(vanishing_ratio=1e-9, stalled_ratio=1e-9),
    )
    assert _kinds(looser) == []


def _log_layer(keras: Any) -> Any:
    """A layer taking the log of its input: NaN for negative inputs."""

    class Log(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return keras.ops.log(x)

    return Log(name="log")


def test_nonfinite_first_where_it_appears(keras: Any) -> None:
    rng = np.random.default_rng(0)
    inputs = keras.Input((4,))
    first = keras.layers.Dense(6, name="first")(inputs)
    logged = _log_layer(keras)(first)
    out = keras.layers.Dense(1, name="out")(keras.layers.Dense(3, name="middle")(logged))
    model = keras.Model(inputs, out)
    model.compile(loss="mse")
    x = rng.standard_normal((8, 4)).astype(np.float32)
    report = api.inspect(model, x, np.zeros((8, 1), np.float32))
    findings = [f for f in report.health.findings if f.kind == "nonfinite"]  # type: ignore[union-attr]
    messages = " | ".join(f.message for f in findings)
    assert "the loss is nan" in messages
    outputs = next(f for f in findings if f.message.startswith("layer outputs"))
    assert outputs.where[0] == "log"  # forward order: log is where NaN starts
    gradients = next(f for f in findings if f.message.startswith("gradients"))
    # backward order: the last layer output, the first the gradient meets
    assert "first in backward order at out" in gradients.message


def test_nonfinite_weights_are_named(keras: Any) -> None:
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))
    kernel = model.layers[1].kernel
    kernel.assign(np.where(np.eye(3, 2) > 0, np.inf, 0.5).astype(np.float32))
    report = api.inspect(model, np.ones((4, 3), np.float32))
    weights = [f for f in report.health.findings if f.message.startswith("weights")]  # type: ignore[union-attr]
    assert weights
    assert weights[0].where == ("d/kernel",)


def test_exploding_gradients(keras: Any) -> None:
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(hidden))
    model.compile(loss="mse")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = 1e6 * np.ones((16, 1), np.float32)  # a huge error: a huge gradient
    report = api.inspect(model, x, y)
    exploding = [f for f in report.health.findings if f.kind == "exploding"]  # type: ignore[union-attr]
    assert exploding[0].where == ("global",)
    assert exploding[0].values["global_grad_norm"] == pytest.approx(report.global_grad_norm)
    assert "out" in exploding[1].where


def test_dead_relu_units(keras: Any) -> None:
    inputs = keras.Input((4,))
    dead = keras.layers.Dense(10, activation="relu", name="dead", bias_initializer="zeros")
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(dead(inputs)))
    kernel, bias = dead.kernel, dead.bias
    kernel.assign(np.zeros((4, 10), np.float32))
    bias.assign(np.r_[-np.ones(7), np.ones(3)].astype(np.float32))  # 7 of 10 units dead
    report = api.inspect(model, np.random.default_rng(2).standard_normal((8, 4)).astype("f4"))
    findings = [f for f in report.health.findings if f.kind == "dead"]  # type: ignore[union-attr]
    assert [f.where for f in findings] == [("dead",)]
    assert findings[0].values["dead_frac"] == pytest.approx(0.7)
    row = next(r for r in report.activations if r.path == "dead")
    assert row.activation == "relu"


def test_attention_key_bias_is_no_false_alarm(keras: Any) -> None:
    """The key bias of attention has a zero gradient by construction (softmax is
    invariant to it); its layer learns, so nothing may be reported."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 8))
    attended = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    normed = keras.layers.LayerNormalization(name="norm")(inputs + attended)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(normed))
    model.compile(loss="mse")
    rng = np.random.default_rng(3)
    report = api.inspect(
        model, rng.standard_normal((4, 6, 8)).astype("f4"), rng.standard_normal((4, 6, 1))
    )
    key_bias = next(r for r in report.variables if r.path.endswith("key/bias"))
    assert key_bias.grad is not None
    assert key_bias.grad.l2 < 1e-6
    assert report.health is not None
    assert report.health.findings == ()


def _invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, ["inspect", *map(str, args)])


def test_fail_on_exit_codes_and_json() -> None:
    deep = (SAMPLES / "deep_sigmoid.keras", "-d", SAMPLES / "deep_sigmoid.npz")
    fired = _invoke(*deep, "--fail-on", "nonfinite,vanishing", "-f", "json")
    assert fired.exit_code == ExitCode.CHECK_FAILED
    data = json.loads(fired.stdout)  # the report is still printed in full
    assert data["health"]["ok"] is False
    assert data["health"]["findings"][0]["kind"] == "vanishing"
    assert set(data["health"]["findings"][0]) == {"kind", "message", "where", "values", "threshold"}
    assert "--fail-on: vanishing fired" in fired.stderr
    quiet = _invoke(*deep, "--fail-on", "nonfinite,exploding,dead")
    assert quiet.exit_code == 0
    assert "Health: 2 findings" in quiet.stdout
    healthy = _invoke(SAMPLES / "mlp.keras", "-d", SAMPLES / "mlp.npz", "--fail-on", "vanishing")
    assert healthy.exit_code == 0
    assert "Health: no findings" in healthy.stdout
    unknown = _invoke(*deep, "--fail-on", "vanish")
    assert unknown.exit_code == ExitCode.USAGE
    assert "--fail-on" in unknown.stderr


def test_near_zero_weights_are_not_exploding(keras: Any) -> None:
    """LayerScale-style weights initialized at 1e-6 have a huge ||g||/||w|| by design."""

    class Scale(keras.layers.Layer):
        def build(self, shape: Any) -> None:
            self.gamma = self.add_weight(shape=(shape[-1],), initializer="zeros")
            self.gamma.assign(np.full((shape[-1],), 1e-6, np.float32))

        def call(self, x: Any) -> Any:
            return x * self.gamma

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="dense")(inputs)
    out = keras.layers.Dense(1, name="out")(inputs + Scale(name="scale")(hidden))
    model = keras.Model(inputs, out)
    model.compile(loss="mse")
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((16, 4)).astype("f4"), rng.standard_normal((16, 1)).astype("f4")
    report = api.inspect(model, x, y)
    scale = next(r for r in report.variables if r.layer == "scale")
    assert scale.ratio is not None
    assert scale.ratio > 10
    assert "exploding" not in _kinds(report)
