"""The training instruments of ``GradientMonitor`` against independent computations.

* ``update`` / ``alignment``: the weights saved by a plain callback before and after the
  step a record follows, and a separate ``GradientTape`` of the probe loss.
* ``batch_tests``: the formulas of ``docs/monitor_schema.md`` on per-example gradients
  that the test computes itself, one tape per example (with and without sample weights).
* ``sharpness`` / ``trace``: the explicit Hessian (a nested-tape Jacobian of the
  gradient) of a tiny model, eigen-decomposed by numpy; and ``gradscope hessian --block
  model --method lanczos`` on a checkpoint saved at the same step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradscope
from gradscope.engine import spectral
from gradscope.errors import UsageError
from gradscope.monitor.instruments import InstrumentSettings, batch_test_values
from gradscope.monitor.results import Instruments, resolve_instruments

ROWS, BATCH, PROBE = 48, 8, 12


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 4)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(4, 2))).astype("float32")
    return x, y


def _model(keras: Any, optimizer: Any = None) -> Any:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6, activation="tanh", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    model.compile(loss="mse", optimizer=optimizer or keras.optimizers.SGD(0.1))
    return model


def _monitor(**kwargs: Any) -> Any:
    from gradscope.keras import GradientMonitor

    kwargs.setdefault("every_n_epochs", None)
    kwargs.setdefault("verbose", False)
    return GradientMonitor(**kwargs)


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _probe_gradient(tf: Any, model: Any, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """The probe loss's gradient, mean squared error written out."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=False) - y))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def _explicit_hessian(tf: Any, model: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The Hessian of the mean squared error over all trainable variables (float64)."""
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            loss = tf.reduce_mean(tf.square(model(x, training=False) - y))
        grads = inner.gradient(loss, variables)
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
    blocks = [tf.reshape(outer.jacobian(flat, v), [flat.shape[0], -1]) for v in variables]
    hessian = np.concatenate([b.numpy() for b in blocks], axis=1).astype(np.float64)
    return (hessian + hessian.T) / 2


class _Snapshots:
    """A plain callback that keeps the weights before and after every step."""

    def __init__(self, keras: Any) -> None:
        class Keep(keras.callbacks.Callback):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.before: list[list[np.ndarray]] = []
                self.after: list[list[np.ndarray]] = []
                self.initial: list[np.ndarray] | None = None

            def on_train_begin(self, logs: Any = None) -> None:
                self.initial = [v.numpy().copy() for v in self.model.trainable_variables]

            def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
                self.before.append([v.numpy().copy() for v in self.model.trainable_variables])

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                self.after.append([v.numpy().copy() for v in self.model.trainable_variables])

        self.callback = Keep()


@pytest.fixture(scope="module")
def economy_run(keras, tf, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Momentum SGD (so the update is not the gradient), a record every 3 steps."""
    x, y = _data()
    model = _model(keras, keras.optimizers.SGD(0.05, momentum=0.9))
    keep = _Snapshots(keras).callback
    path = tmp_path_factory.mktemp("economy") / "run.jsonl"
    probe = (x[:PROBE], y[:PROBE])
    monitor = _monitor(probe=probe, every_n_batches=3, instruments="economy", jsonl=path)
    after_probe: dict[int, list[np.ndarray]] = {}

    class Grad(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            step = int(self.model.optimizer.iterations.numpy())
            if step % 3 == 0:
                after_probe[step] = _probe_gradient(tf, self.model, *probe)

    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[keep, Grad(), monitor],
    )
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return model, keep, records, after_probe


def test_update_sizes_equal_the_weights_saved_around_the_step(economy_run) -> None:  # type: ignore[no-untyped-def]
    _, keep, records, _ = economy_run
    assert [r["fit"]["step"] for r in records] == [3, 6]
    for record in records:
        step = record["fit"]["step"]
        before, after = keep.before[step - 1], keep.after[step - 1]
        update = record["instruments"]["update"]
        assert update["steps"] == 1
        delta = _flat(after) - _flat(before)
        assert update["total"]["norm"] == pytest.approx(np.linalg.norm(delta), rel=1e-6)
        ratio = np.linalg.norm(delta) / np.linalg.norm(_flat(before))
        assert update["total"]["ratio"] == pytest.approx(ratio, rel=1e-6)
        distance = np.linalg.norm(_flat(after) - _flat(keep.initial))
        assert update["total"]["distance"] == pytest.approx(distance, rel=1e-6)
        assert update["total"]["weight_norm"] == pytest.approx(
            np.linalg.norm(_flat(after)), rel=1e-6
        )
        layers = {layer["name"]: layer for layer in update["layers"]}
        assert list(layers) == ["hidden", "out"]
        for index, name in enumerate(["hidden", "out"]):
            part = _flat(after[2 * index : 2 * index + 2]) - _flat(
                before[2 * index : 2 * index + 2]
            )
            assert layers[name]["norm"] == pytest.approx(np.linalg.norm(part), rel=1e-6)


def test_alignment_is_the_cosine_of_the_probe_gradient_and_the_update(economy_run) -> None:  # type: ignore[no-untyped-def]
    _, keep, records, after_probe = economy_run
    for record in records:
        step = record["fit"]["step"]
        delta = _flat(keep.after[step - 1]) - _flat(keep.before[step - 1])
        gradient = _flat(after_probe[step])
        cosine = gradient @ delta / (np.linalg.norm(gradient) * np.linalg.norm(delta))
        alignment = record["instruments"]["alignment"]
        assert alignment["total"] == pytest.approx(cosine, abs=1e-5)
        g_out, d_out = _flat(after_probe[step][2:]), delta[-14:]
        out = next(item for item in alignment["layers"] if item["name"] == "out")
        expected = g_out @ d_out / (np.linalg.norm(g_out) * np.linalg.norm(d_out))
        assert out["cosine"] == pytest.approx(expected, abs=1e-5)


def test_plain_sgd_on_the_probe_batch_points_against_the_gradient(keras) -> None:  # type: ignore[no-untyped-def]
    """Full-batch SGD: the update is -lr * g at the weights before; with a tiny lr the
    gradient after the step is almost the same, so the cosine is almost -1."""
    x, y = _data()
    model = _model(keras, keras.optimizers.SGD(1e-4))
    monitor = _monitor(probe=(x, y), every_n_batches=1, instruments=["alignment"])
    model.fit(x, y, batch_size=ROWS, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    alignment = monitor.last_instruments.alignment
    assert alignment.total == pytest.approx(-1.0, abs=1e-4)
    assert monitor.last_instruments.update is None  # not asked for


def _example_gradients(
    tf: Any, model: Any, x: np.ndarray, y: np.ndarray, weight: np.ndarray | None
) -> np.ndarray:
    """One tape per example: the gradient of that example's (weighted) loss."""
    rows = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x[i : i + 1], training=False) - y[i : i + 1]))
            if weight is not None:
                loss = loss * float(weight[i])
        rows.append(_flat([g.numpy() for g in tape.gradient(loss, model.trainable_variables)]))
    return np.stack(rows)


def _reference_tests(gradients: np.ndarray, theta: float, nu: float) -> dict[str, float]:
    """The tests by their definitions (deviations written out, not expanded sums)."""
    rows = len(gradients)
    mean = gradients.mean(axis=0)
    norm_sq = mean @ mean
    variance = np.sum((gradients - mean) ** 2) / (rows - 1)
    inner = gradients @ mean
    variance_ip = np.sum((inner - norm_sq) ** 2) / (rows - 1)
    orth = gradients - np.outer(inner / norm_sq, mean)
    variance_orth = np.sum(orth**2) / (rows - 1)
    return {
        "gradient_norm": math.sqrt(norm_sq),
        "norm_test": math.sqrt(variance / rows) / (theta * math.sqrt(norm_sq)),
        "inner_product_test": math.sqrt(variance_ip / rows) / (theta * norm_sq),
        "orthogonality_test": math.sqrt(variance_orth / rows) / (nu * math.sqrt(norm_sq)),
        "snr": norm_sq / variance,
        "norm": math.ceil(variance / (theta**2 * norm_sq)),
        "inner_product": math.ceil(variance_ip / (theta**2 * norm_sq**2)),
        "orthogonality": math.ceil(variance_orth / (nu**2 * norm_sq)),
    }


@pytest.mark.parametrize("weighted", [False, True])
def test_batch_tests_equal_the_formulas_on_per_example_gradients(keras, tf, weighted) -> None:  # type: ignore[no-untyped-def]
    x, y = _data(3)
    weight = np.linspace(0.5, 2.0, PROBE).astype("float32") if weighted else None
    probe = (x[:PROBE], y[:PROBE]) + ((weight,) if weighted else ())
    model = _model(keras)
    settings = InstrumentSettings(theta=0.4, nu=3.0)
    monitor = _monitor(
        probe=probe, every_n_batches=2, instruments=["batch_tests"], settings=settings
    )
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[monitor])
    tests = monitor.last_instruments.batch_tests
    gradients = _example_gradients(tf, model, x[:PROBE], y[:PROBE], weight)
    expected = _reference_tests(gradients, 0.4, 3.0)
    assert tests.batch_size == PROBE
    for key in ("gradient_norm", "norm_test", "inner_product_test", "orthogonality_test", "snr"):
        assert getattr(tests, key) == pytest.approx(expected[key], rel=1e-4), key
    for key in ("norm", "inner_product", "orthogonality"):
        assert abs(tests.suggested_batch_size[key] - expected[key]) <= 1, key


def test_batch_test_values_on_a_hand_example() -> None:
    """Two examples g1 = (1, 0), g2 = (1, 2): gbar = (1, 1), ||gbar||^2 = 2,
    Var = (1 + 1) / 1 = 2, g.gbar = 1 and 3 so Var_ip = (1 + 1) / 1 = 2,
    the components orthogonal to gbar are (1,-1)/2 and (-1,1)/2: Var_orth = 1."""
    # Deviations d1 = (0, -1), d2 = (0, 1): sum ||d||^2 = 2, d . gbar = -1 and 1.
    tests = batch_test_values(2, 2.0, 2.0, 2.0, theta=1.0, nu=1.0)
    assert tests.norm_test == pytest.approx(math.sqrt(2 / 2) / math.sqrt(2))
    assert tests.inner_product_test == pytest.approx(math.sqrt(2 / 2) / 2)
    assert tests.orthogonality_test == pytest.approx(math.sqrt(1 / 2) / math.sqrt(2))
    assert tests.snr == pytest.approx(1.0)
    assert tests.suggested_batch_size == {"norm": 1, "inner_product": 1, "orthogonality": 1}
    flat = batch_test_values(5, 5.0, 5.0, 0.0, theta=0.5, nu=5.84)
    assert math.isnan(flat.norm_test)
    assert flat.to_dict()["norm_test"] is None


@pytest.fixture(scope="module")
def curvature_run(keras, tf, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Full instruments, a record every 2 steps, a checkpoint saved after each record,
    and the explicit Hessian of the probe at that step."""
    x, y = _data(5)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=3, decay_rate=0.5)
    model = _model(keras, keras.optimizers.SGD(schedule))
    folder = tmp_path_factory.mktemp("curvature")
    probe = (x[:PROBE], y[:PROBE])
    settings = InstrumentSettings(trace_probes=60, sharpness_tol=1e-6)
    monitor = _monitor(probe=probe, every_n_batches=2, instruments="full", settings=settings)
    seen: dict[int, Any] = {}

    class Save(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            step = int(self.model.optimizer.iterations.numpy())
            if step % 2 == 0:
                hessian = _explicit_hessian(tf, self.model, *probe)
                checkpoint = folder / f"step{step}.keras"
                self.model.save(checkpoint)
                seen[step] = (hessian, monitor.last_instruments, checkpoint)

    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[monitor, Save()]
    )
    return seen, probe, monitor


def test_sharpness_is_the_top_eigenvalue_of_the_explicit_hessian(curvature_run) -> None:  # type: ignore[no-untyped-def]
    seen, _, _ = curvature_run
    assert sorted(seen) == [2, 4, 6]
    for step, (hessian, instruments, _) in seen.items():
        top = float(np.linalg.eigvalsh(hessian)[-1])
        sharpness = instruments.sharpness
        assert sharpness.lambda_max == pytest.approx(top, rel=1e-4)
        rate = 0.2 * 0.5 ** (step / 3)  # the schedule at the current step
        assert sharpness.two_over_lr == pytest.approx(2 / rate, rel=1e-5)
        assert sharpness.eos_ratio == pytest.approx(top * rate / 2, rel=1e-4)
        assert sharpness.converged


def test_sharpness_warm_start_needs_fewer_products(curvature_run) -> None:  # type: ignore[no-untyped-def]
    seen, _, _ = curvature_run
    matvecs = [seen[step][1].sharpness.matvecs for step in sorted(seen)]
    assert max(matvecs[1:]) < matvecs[0]


def test_trace_equals_the_explicit_hessian_trace(curvature_run) -> None:  # type: ignore[no-untyped-def]
    seen, _, _ = curvature_run
    for hessian, instruments, _ in seen.values():
        trace = instruments.trace
        assert trace.probes == hessian.shape[0]  # 60 probes >= 44 parameters: exact
        assert trace.stderr == 0.0
        assert trace.trace == pytest.approx(float(np.trace(hessian)), rel=1e-4)


def test_sharpness_equals_gradscope_hessian_on_the_checkpoint(curvature_run) -> None:  # type: ignore[no-untyped-def]
    seen, (x, y), _ = curvature_run
    for _, instruments, checkpoint in seen.values():
        data = checkpoint.with_suffix(".npz")
        np.savez(data, x=x, y=y)
        options = gradscope.HessianOptions(block="model", method="lanczos", top_k=1, tol=1e-6)
        report = gradscope.hessian_file(checkpoint, data, options=options)
        top = report.blocks[0].eigenvalues[0]
        assert instruments.sharpness.lambda_max == pytest.approx(top, rel=1e-4)


def test_the_instruments_compile_once(curvature_run) -> None:  # type: ignore[no-untyped-def]
    _, _, monitor = curvature_run
    compiled = monitor._compiled
    assert compiled.tracker._measure_fn.experimental_get_tracing_count() == 1
    assert compiled.batch_tests._sums_fn.experimental_get_tracing_count() == 1
    assert compiled.curvature.hessian._hvp_fn.experimental_get_tracing_count() == 1
    assert monitor.traces == 1


def test_snapshots_only_before_recorded_steps(keras) -> None:  # type: ignore[no-untyped-def]
    from gradscope.monitor.instruments import WeightTracker

    x, y = _data()
    model = _model(keras)
    monitor = _monitor(probe=(x[:PROBE], y[:PROBE]), every_n_batches=4, instruments=["update"])
    calls: list[int] = []
    original = WeightTracker.snapshot

    def counting(self: Any, step: int) -> None:
        calls.append(step)
        original(self, step)

    WeightTracker.snapshot = counting  # type: ignore[method-assign]
    try:
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    finally:
        WeightTracker.snapshot = original  # type: ignore[method-assign]
    assert calls == [3, 7, 11]  # 12 steps: records after steps 4, 8 and 12
    assert monitor.last_instruments.update.steps == 1


def test_stop_eos_ratio_stops_training(keras, capsys) -> None:  # type: ignore[no-untyped-def]
    x, y = _data()
    model = _model(keras, keras.optimizers.SGD(5.0))
    monitor = _monitor(
        probe=(x[:PROBE], y[:PROBE]),
        every_n_batches=1,
        instruments=["sharpness"],
        stop_eos_ratio=1.0,
    )
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[monitor])
    assert monitor.records == 1
    assert monitor.last_instruments.sharpness.eos_ratio > 1.0
    assert "edge-of-stability ratio" in monitor.stop_reason
    assert "stopping training" in capsys.readouterr().err


def test_tensorboard_gets_the_instruments_under_grouped_tags(keras, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tensorflow.python.summary.summary_iterator import summary_iterator

    x, y = _data()
    model = _model(keras)
    monitor = _monitor(
        probe=(x[:PROBE], y[:PROBE]),
        every_n_batches=3,
        instruments="full",
        tensorboard=tmp_path / "tb",
        histograms=False,
    )
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[monitor])
    tags = set()
    for event in (tmp_path / "tb").rglob("events.out.tfevents.*"):
        for record in summary_iterator(str(event)):
            tags.update(value.tag for value in record.summary.value)
    expected = {
        "update/ratio",
        "update_ratio/hidden",
        "alignment/total",
        "batch_tests/norm_test",
        "sharpness/lambda_max",
        "sharpness/two_over_lr",
        "sharpness/eos_ratio",
        "trace/hessian",
        "learning_rate",
        "global_grad_norm",
    }
    assert expected <= tags


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instruments": "fancy"}, "unknown instrument 'fancy'"),
        ({"instruments": ["update", "sharp"]}, "unknown instrument 'sharp'"),
        ({"instruments": "update", "stop_eos_ratio": 1.0}, "needs the sharpness instrument"),
        ({"instruments": "full", "stop_eos_ratio": -1}, "expected a positive number"),
        ({"settings": "x"}, "settings"),
    ],
)
def test_bad_instrument_arguments_are_one_line_errors(kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=message) as caught:
        _monitor(every_n_batches=1, **kwargs)
    assert "\n" not in str(caught.value)


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(UsageError, match="theta: expected a positive number"):
        InstrumentSettings(theta=0)
    with pytest.raises(UsageError, match="trace_matrix: expected 'hessian' or 'ggn'"):
        InstrumentSettings(trace_matrix="fisher")


def test_presets_and_names_resolve_in_order() -> None:
    assert resolve_instruments("economy") == ("update", "alignment", "batch_tests")
    assert resolve_instruments("sharpness,update") == ("update", "sharpness")
    assert resolve_instruments(["business", "sharpness"])[-2:] == ("sharpness", "trace")
    assert resolve_instruments(None) == ()


def test_instruments_round_trip_through_their_dicts(curvature_run, economy_run) -> None:  # type: ignore[no-untyped-def]
    seen, _, _ = curvature_run
    _, _, records, _ = economy_run
    for instruments in [seen[4][1]]:
        data = json.loads(json.dumps(instruments.to_dict()))
        assert Instruments.from_dict(data) == instruments
    for record in records:
        assert Instruments.from_dict(record["instruments"]).to_dict() == record["instruments"]


def test_lanczos_warm_start_from_the_top_eigenvector_converges_at_once() -> None:
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    values = np.linspace(-1.0, 3.0, 50)
    matrix = (basis * values) @ basis.T
    cold = spectral.lanczos(lambda v: matrix @ v, 50, k=1, tol=1e-3, rng=rng, want_smallest=False)
    warm = spectral.lanczos(
        lambda v: matrix @ v, 50, k=1, tol=1e-3, rng=rng, v0=basis[:, -1], want_smallest=False
    )
    assert warm.eigenvalues[0] == pytest.approx(3.0, rel=1e-5)
    assert cold.iterations >= 10
    assert warm.iterations <= 3
    # A start near, not at, the top eigenvector still ends at the top eigenvalue.
    near = spectral.lanczos(
        lambda v: matrix @ v,
        50,
        k=1,
        tol=1e-6,
        rng=rng,
        v0=basis[:, -1] + 0.5 * basis[:, -2],
        want_smallest=False,
    )
    assert near.eigenvalues[0] == pytest.approx(3.0, rel=1e-5)


def test_a_monitor_without_instruments_writes_an_empty_object(tmp_path: Path, keras) -> None:  # type: ignore[no-untyped-def]
    x, y = _data()
    model = _model(keras)
    monitor = _monitor(probe=(x, y), every_n_batches=6, jsonl=tmp_path / "r.jsonl")
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[monitor])
    record = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert record["instruments"] == {}
    assert record["learning_rate"] == pytest.approx(0.1)
    assert set(record["logs"]) == {"loss"}


def _keys(data: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON object, lists entered (``layers[*].name`` as ``name``)."""
    found = set()
    if isinstance(data, dict):
        for key, value in data.items():
            found.add(key)
            found |= _keys(value)
    elif isinstance(data, list):
        for item in data:
            found |= _keys(item)
    return found


def test_every_key_of_a_full_record_is_documented(keras, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import REPO

    x, y = _data()
    model = _model(keras)
    monitor = _monitor(
        probe=(x[:PROBE], y[:PROBE]),
        every_n_batches=3,
        instruments="full",
        jsonl=tmp_path / "run.jsonl",
    )
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[monitor])
    record = json.loads((tmp_path / "run.jsonl").read_text().splitlines()[-1])
    document = (REPO / "docs" / "monitor_schema.md").read_text()
    outer = {key: value for key, value in record.items() if key not in ("report", "logs")}
    missing = sorted(
        k for k in _keys(outer) if f"`{k}`" not in document and f".{k}`" not in document
    )
    assert missing == []
    assert list(record["instruments"]) == [
        "update",
        "alignment",
        "batch_tests",
        "sharpness",
        "trace",
    ]


def test_weight_copies_beyond_the_budget_are_refused_before_allocating(keras) -> None:  # type: ignore[no-untyped-def]
    from gradscope.errors import ResourceError
    from gradscope.monitor.instruments import _check_copies

    model = _model(keras)
    size = sum(int(np.prod(v.shape)) for v in model.trainable_variables) * 4
    _check_copies(model.trainable_variables, budget=2 * size)
    with pytest.raises(ResourceError, match=r"two copies of the trainable weights need about"):
        _check_copies(model.trainable_variables, budget=2 * size - 1)


def test_epoch_records_measure_the_last_update_of_the_epoch(keras) -> None:  # type: ignore[no-untyped-def]
    x, y = _data()
    model = _model(keras)
    keep = _Snapshots(keras).callback
    monitor = _monitor(
        probe=(x[:PROBE], y[:PROBE]),
        every_n_batches=None,
        every_n_epochs=1,
        instruments=["update"],
    )
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[keep, monitor])
    update = monitor.last_instruments.update
    assert update.steps == 1
    delta = _flat(keep.after[-1]) - _flat(keep.before[-1])
    assert update.total.norm == pytest.approx(np.linalg.norm(delta), rel=1e-6)


def test_steps_per_execution_updates_span_one_call(keras) -> None:  # type: ignore[no-untyped-def]
    x, y = _data()
    model = _model(keras)
    model.compile(loss="mse", optimizer=keras.optimizers.SGD(0.1), steps_per_execution=2)
    keep = _Snapshots(keras).callback
    monitor = _monitor(probe=(x[:PROBE], y[:PROBE]), every_n_batches=4, instruments=["update"])
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[keep, monitor])
    update = monitor.last_instruments.update
    assert update.steps == 2
    # Keras calls the batch hooks once per call of 2 steps: the record follows the
    # call that ends at step 4, the second one.
    assert len(keep.after) == 3
    delta = _flat(keep.after[1]) - _flat(keep.before[1])
    assert update.total.norm == pytest.approx(np.linalg.norm(delta), rel=1e-6)


def test_a_diverged_model_gives_null_instruments_not_a_crash(keras, tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = _data()
    model = _model(keras)
    kernel = model.get_layer("hidden").kernel
    kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))
    monitor = _monitor(
        probe=(x[:PROBE], y[:PROBE]),
        every_n_batches=2,
        instruments="full",
        jsonl=tmp_path / "r.jsonl",
    )
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[monitor])
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["instruments"]["sharpness"]["lambda_max"] is None
        assert record["instruments"]["sharpness"]["two_over_lr"] == pytest.approx(20.0)
        assert record["instruments"]["trace"]["trace"] is None
        assert record["instruments"]["batch_tests"]["norm_test"] is None
        assert "nonfinite" in {f["kind"] for f in record["report"]["health"]["findings"]}
