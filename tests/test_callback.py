"""``gradscope.keras.GradientMonitor`` during ``model.fit``.

A record must equal a fresh ``gradscope.inspect`` at the same weights (and an independent
``GradientTape``), the JSON Lines and TensorBoard outputs must read back, a NaN must stop
training, and the gradient step must be traced once however many records are made.
The monitor's step runs with Grappler on, ``inspect``'s with it off: the same float32
graph, so equal up to float32 reduction order (``rtol=1e-5``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

import gradscope
from gradscope.errors import MismatchError, OutputError, UsageError

RTOL = 1e-5
ROWS, BATCH = 48, 8  # 6 batches per epoch


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 2))).astype("float32")
    return x, y


def _model(keras, lr: float = 0.05):  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    model.compile(loss="mse", optimizer=keras.optimizers.SGD(lr))
    return model


def _monitor(**kwargs):  # type: ignore[no-untyped-def]
    from gradscope.keras import GradientMonitor

    return GradientMonitor(**kwargs)


def _records(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]


def _lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    """Each record's inspect report, with the record's ``fit`` key added."""
    return [{"fit": record["fit"], **record["report"]} for record in _records(path)]


@pytest.fixture(scope="module")
def trained(keras, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Three epochs, a record every 4 batches and at every epoch end, both outputs."""
    folder = tmp_path_factory.mktemp("fit")
    x, y = _data()
    probe = (x[:16], y[:16])
    model = _model(keras)
    monitor = _monitor(
        probe=probe,
        every_n_batches=4,
        every_n_epochs=1,
        jsonl=folder / "grads.jsonl",
        tensorboard=folder / "tb",
    )
    model.fit(x, y, epochs=3, batch_size=BATCH, shuffle=False, callbacks=[monitor], verbose=0)
    return model, monitor, probe, folder


def test_jsonl_lines_parse_and_describe_each_record(trained) -> None:  # type: ignore[no-untyped-def]
    _, monitor, _, folder = trained
    lines = _lines(folder / "grads.jsonl")
    assert len(lines) == monitor.records
    fits = [line["fit"] for line in lines]
    batch_steps = [f["step"] for f in fits if f["trigger"] == "batch"]
    epoch_steps = [(f["epoch"], f["step"]) for f in fits if f["trigger"] == "epoch"]
    assert batch_steps == [4, 8, 12, 16]  # 18 optimizer steps in all
    assert epoch_steps == [(0, 6), (1, 12), (2, 18)]
    assert all(f["batch"] is None for f in fits if f["trigger"] == "epoch")
    assert [f["batch"] for f in fits if f["trigger"] == "batch"] == [3, 1, 5, 3]
    assert all(line["schema"] == "gradscope.inspect/1" for line in lines)
    records = _records(folder / "grads.jsonl")
    assert [list(r) for r in records] == [
        ["schema", "fit", "logs", "learning_rate", "instruments", "report"]
    ] * len(records)
    assert all(r["schema"] == "gradscope.monitor/1" for r in records)
    assert all(r["instruments"] == {} for r in records)  # none asked for
    assert all(line["batch"]["size"] == 16 for line in lines)  # the report's own key


def test_last_record_equals_a_fresh_inspect_at_the_same_weights(trained, tf) -> None:  # type: ignore[no-untyped-def]
    model, monitor, (x, y), folder = trained
    last = _lines(folder / "grads.jsonl")[-1]
    assert last["fit"] == {"epoch": 2, "batch": None, "step": 18, "trigger": "epoch"}
    fresh = gradscope.inspect(model, x, y).to_dict()
    assert np.isclose(last["global_grad_norm"], fresh["global_grad_norm"], rtol=RTOL)
    assert np.isclose(last["loss"]["value"], fresh["loss"]["value"], rtol=RTOL)
    for kind in ("variables", "activations", "inputs"):
        mine, theirs = last[kind], fresh[kind]
        assert [r.get("path", r.get("name")) for r in mine] == [
            r.get("path", r.get("name")) for r in theirs
        ]
        for a, b in zip(mine, theirs, strict=True):
            assert np.isclose(a["grad"]["l2"], b["grad"]["l2"], rtol=RTOL)
            assert np.isclose(a["grad"]["max_abs"], b["grad"]["max_abs"], rtol=RTOL)
    for a, b in zip(last["activations"], fresh["activations"], strict=True):
        assert np.isclose(a["value"]["l2"], b["value"]["l2"], rtol=RTOL)
        assert a["value"]["dead_frac"] == b["value"]["dead_frac"]
    # and an independent tape on the final weights
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=False) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    global_norm = np.sqrt(sum(np.sum(g.numpy().astype(np.float64) ** 2) for g in grads))
    assert np.isclose(last["global_grad_norm"], global_norm, rtol=RTOL)
    assert monitor.last_report.global_grad_norm == last["global_grad_norm"]


def test_the_step_is_traced_once(trained) -> None:  # type: ignore[no-untyped-def]
    _, monitor, _, _ = trained
    assert monitor.records == 7
    assert monitor.traces == 1


def test_records_do_not_retrace_the_forward_pass(keras, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Counted independently: each trace runs the layer capture once."""
    from gradscope.engine import capture

    traces = []
    original = capture.LayerCapture.recording

    def counting(self, tape):  # type: ignore[no-untyped-def]
        traces.append(1)
        return original(self, tape)

    monkeypatch.setattr(capture.LayerCapture, "recording", counting)
    x, y = _data(1)
    model = _model(keras)
    monitor = _monitor(probe=(x[:8], y[:8]), every_n_batches=1, every_n_epochs=None)
    model.fit(x, y, epochs=2, batch_size=BATCH, callbacks=[monitor], verbose=0)
    assert monitor.records == 12
    assert len(traces) == 1
    # a second fit reuses the cached step
    model.fit(x, y, epochs=1, batch_size=BATCH, callbacks=[monitor], verbose=0)
    assert monitor.records == 18
    assert len(traces) == 1


def test_tensorboard_events_match_the_jsonl(trained, tf) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator as ea

    _, _, _, folder = trained
    acc = ea.EventAccumulator(str(folder / "tb"), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    events = {
        e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("global_grad_norm")
    }
    lines = _lines(folder / "grads.jsonl")
    expected = {line["fit"]["step"]: line["global_grad_norm"] for line in lines}
    assert sorted(events) == sorted(expected) == [4, 6, 8, 12, 16, 18]
    for step, value in expected.items():
        assert np.isclose(events[step], value, rtol=1e-6)
    hist = acc.Tensors("grad_hist/hidden/kernel")
    assert len(hist) == 6
    assert all(tf.make_ndarray(e.tensor_proto)[:, 2].sum() == 4 * 8 for e in hist)


def _count_batches(keras):  # type: ignore[no-untyped-def]
    class Counter(keras.callbacks.Callback):  # type: ignore[misc]
        batches = 0

        def on_train_batch_end(self, batch, logs=None):  # type: ignore[no-untyped-def]
            Counter.batches += 1

    return Counter()


@pytest.mark.parametrize("stop", [True, False])
def test_stop_on_nonfinite_stops_training(keras, stop, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    x, y = _data(2)
    x_bad = x.copy()
    x_bad[2 * BATCH + 1, 0] = np.nan  # the third batch of the first epoch
    model = _model(keras)
    monitor = _monitor(
        probe=(x[:8], y[:8]),
        every_n_batches=1,
        every_n_epochs=None,
        stop_on=("nonfinite",) if stop else (),
        jsonl=tmp_path / "g.jsonl",
    )
    counter = _count_batches(keras)
    model.fit(x_bad, y, epochs=2, batch_size=BATCH, shuffle=False,
              callbacks=[monitor, counter], verbose=0)  # fmt: skip
    lines = _lines(tmp_path / "g.jsonl")
    kinds = [{f["kind"] for f in line["health"]["findings"]} for line in lines]
    assert "nonfinite" not in kinds[1]
    assert "nonfinite" in kinds[2]
    err = capsys.readouterr().err
    if stop:
        assert model.stop_training is True
        assert counter.batches == 3
        assert monitor.records == 3
        assert monitor.stop_finding.kind == "nonfinite"
        # The NaN update reaches the weights; whether the probe's loss finding (listed
        # first) fires as well depends on how the backend propagates NaN in the loss.
        assert "stopping training at epoch 0, batch 2 (step 3): nonfinite: " in err
        messages = [f["message"] for f in lines[2]["health"]["findings"]]
        assert any(m.startswith("weights hold NaN") for m in messages)
    else:
        assert counter.batches == 12
        assert monitor.stop_finding is None
        assert "stopping" not in err


def test_probe_none_uses_the_synthetic_batch_of_inspect(keras, capsys) -> None:  # type: ignore[no-untyped-def]
    x, y = _data(3)
    model = _model(keras)
    monitor = _monitor(probe=None, every_n_epochs=1)
    model.fit(x, y, epochs=1, batch_size=BATCH, callbacks=[monitor], verbose=0)
    assert "no probe batch" in capsys.readouterr().err
    fresh = gradscope.inspect(model)
    assert monitor.last_report.batch.source == "synthetic"
    assert np.isclose(monitor.last_report.global_grad_norm, fresh.global_grad_norm, rtol=RTOL)


def test_dataset_probe_takes_its_first_batch(keras, tf) -> None:  # type: ignore[no-untyped-def]
    x, y = _data(4)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model = _model(keras)
    monitor = _monitor(probe=dataset, every_n_epochs=1)
    model.fit(dataset, epochs=1, shuffle=False, callbacks=[monitor], verbose=0)
    fresh = gradscope.inspect(model, x[:8], y[:8])
    assert monitor.last_report.batch.size == 8
    assert np.isclose(monitor.last_report.global_grad_norm, fresh.global_grad_norm, rtol=RTOL)


def test_a_probe_that_does_not_fit_fails_before_training(keras) -> None:  # type: ignore[no-untyped-def]
    x, y = _data(5)
    model = _model(keras)
    counter = _count_batches(keras)
    Counter = type(counter)
    Counter.batches = 0
    monitor = _monitor(probe=(np.zeros((4, 3), "float32"), y[:4]), every_n_epochs=1)
    with pytest.raises(MismatchError):
        model.fit(x, y, epochs=1, batch_size=BATCH, callbacks=[monitor, counter], verbose=0)
    assert Counter.batches == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_batches": 0}, UsageError, "every_n_batches: expected a positive integer"),
        ({"every_n_epochs": None}, UsageError, "expected every_n_batches or every_n_epochs"),
        ({"stop_on": ("nonfinite", "bogus")}, UsageError, "unknown"),
        ({"jsonl": "/nonexistent-folder/g.jsonl"}, OutputError, "does not exist"),
        ({"tensorboard": __file__}, OutputError, "is a file"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match) as caught:
        _monitor(**kwargs)
    assert "\n" not in str(caught.value)


def test_importing_gradscope_does_not_import_the_callback() -> None:
    code = (
        "import sys, gradscope; "
        "print('tensorflow' in sys.modules, 'gradscope.keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]
