"""``gradscope.distribute``: strategy options, ``TF_CONFIG``, and Keras's loss scaling.

The option and ``TF_CONFIG`` checks are pure Python.  The strategy itself is built in a
child process, because logical CPU devices can only be made before TensorFlow runs its
first op.  That child also pins down the fact every distributed gradscope step will rely
on: inside a replica context Keras 3's ``compute_loss`` already divides by the number
of replicas, so the per-replica losses and gradients must be *summed* (not averaged)
to equal the single-device ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradscope.distribute import check_strategy_options, parse_tf_config
from gradscope.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent

CLUSTER = {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}


@pytest.mark.parametrize(
    ("kind", "replicas", "message"),
    [
        ("mirror", None, "--strategy: unknown value. Received: --strategy='mirror'; expected"),
        ("default", 2, "--replicas: only with --strategy mirrored"),
        ("multi-worker", 2, "--replicas: only with --strategy mirrored"),
        ("mirrored", 0, "--replicas: expected an integer >= 1. Received: 0"),
        ("mirrored", True, "--replicas: expected an integer >= 1. Received: True"),
    ],
)
def test_bad_strategy_options_are_usage_errors(kind: str, replicas: object, message: str) -> None:
    with pytest.raises(UsageError) as raised:
        check_strategy_options(kind, replicas)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(("kind", "replicas"), [("default", None), ("mirrored", 4)])
def test_good_strategy_options_pass(kind: str, replicas: int | None) -> None:
    check_strategy_options(kind, replicas)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "--strategy multi-worker: TF_CONFIG is not set"),
        ("{cluster", "TF_CONFIG: not JSON"),
        ({"task": {"type": "worker", "index": 0}}, "TF_CONFIG: cluster.worker: expected"),
        ({"cluster": {"worker": ["nohost"]}, "task": {}}, "TF_CONFIG: cluster.worker: expected"),
        ({"cluster": CLUSTER}, "TF_CONFIG: task: expected an object"),
        ({"cluster": CLUSTER, "task": {"type": "ps", "index": 0}}, "TF_CONFIG: task.type"),
        (
            {"cluster": CLUSTER, "task": {"type": "worker", "index": 2}},
            "TF_CONFIG: task.index: expected an integer from 0 to 1. Received: 2",
        ),
    ],
)
def test_tf_config_errors_name_what_is_missing(config: object, message: str) -> None:
    environ = (
        {}
        if config is None
        else {"TF_CONFIG": config if isinstance(config, str) else json.dumps(config)}
    )
    with pytest.raises(UsageError) as raised:
        parse_tf_config(environ)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_tf_config_gives_the_task_and_the_chief() -> None:
    for index in (0, 1):
        config = {"cluster": CLUSTER, "task": {"type": "worker", "index": index}}
        task = parse_tf_config({"TF_CONFIG": json.dumps(config)})
        assert task.workers == tuple(CLUSTER["worker"])
        assert task.index == index
        assert task.is_chief is (index == 0)


CHILD = textwrap.dedent(
    """
    import json
    import numpy as np
    from gradscope import _tf
    from gradscope.distribute import make_strategy, split_cpu
    from gradscope.errors import UsageError

    tf, keras = _tf.tensorflow(), _tf.keras()
    strategy = make_strategy(tf, "mirrored", 2)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3)).astype("float32")
    y = rng.standard_normal((8, 2)).astype("float32")

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x))
        return loss, tape.gradient(loss, model.trainable_variables)

    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    for xb, yb in strategy.experimental_distribute_dataset(data):
        per_replica_loss, per_replica_grads = strategy.run(tf.function(step), args=(xb, yb))
    losses = [float(v) for v in strategy.experimental_local_results(per_replica_loss)]
    summed = [strategy.reduce("SUM", g, axis=None).numpy().tolist() for g in per_replica_grads]
    # The hand-written single-device reference: mean squared error over all 8 rows.
    with tf.GradientTape() as tape:
        reference = tf.reduce_mean(tf.square(model(x) - y))
    expected = [g.numpy().tolist() for g in tape.gradient(reference, model.trainable_variables)]
    try:
        split_cpu(tf, 3)
        refused = None
    except UsageError as exc:
        refused = str(exc)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "losses": losses,
        "reference": float(reference),
        "summed": summed,
        "expected": expected,
        "refused": refused,
    }))
    """
)


@pytest.mark.slow
def test_mirrored_cpu_replicas_and_keras_loss_scaling() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    # Each replica's compute_loss is its half-batch mean divided by 2 replicas: summed,
    # they are the whole-batch mean (averaging them would halve it).
    assert sum(out["losses"]) == pytest.approx(out["reference"], rel=1e-6)
    assert all(loss < out["reference"] for loss in out["losses"])
    import numpy as np

    for summed, expected in zip(out["summed"], out["expected"], strict=True):
        np.testing.assert_allclose(summed, expected, rtol=1e-5, atol=1e-7)
    assert out["refused"].startswith("--replicas 3: TensorFlow's devices were already set up")
