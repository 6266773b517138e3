"""``gradscope.distribute``: strategy options, ``TF_CONFIG``, peer failures, Keras's loss
scaling.

The option and ``TF_CONFIG`` checks are pure Python; so is the classification of the
TensorFlow errors that mean a peer worker is gone (checked on TensorFlow's own error
classes, with the messages a real two-worker cluster produced), and the watchdog, run in
a child process because it kills it.  A real cluster is in
``test_multi_worker_cluster.py``.  The strategy itself is built in a
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
import time
from pathlib import Path

import pytest

from gradscope.distribute import (
    DEFAULT_TIMEOUT,
    PEER_EXIT_CODE,
    check_strategy_options,
    check_timeout,
    collective_failure,
    parse_tf_config,
    peer_failures,
)
from gradscope.errors import ExitCode, ResourceError, UsageError

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


@pytest.mark.parametrize("timeout", [0, -1, 0.0, float("nan"), float("inf"), True, "30", [30]])
def test_a_bad_timeout_is_a_usage_error_naming_the_option(timeout: object) -> None:
    with pytest.raises(UsageError) as raised:
        check_timeout(timeout)  # type: ignore[arg-type]
    assert str(raised.value) == (
        f"--timeout: expected a positive number of seconds. Received: {timeout}"
    )
    with pytest.raises(UsageError, match=r"^--timeout: expected a positive number"):
        check_strategy_options("multi-worker", None, timeout)  # type: ignore[arg-type]


def test_timeout_defaults_and_is_only_for_multi_worker() -> None:
    assert check_timeout(None) == DEFAULT_TIMEOUT == 300.0
    assert check_timeout(2) == 2.0
    assert check_timeout(0.5) == 0.5
    check_strategy_options("multi-worker", None, 5)
    for kind in ("default", "mirrored"):
        with pytest.raises(UsageError) as raised:
            check_strategy_options(kind, None, 5)
        assert str(raised.value) == (
            "--timeout: only with --strategy multi-worker (it bounds the waits for other "
            f"workers). Received: --strategy {kind} --timeout 5"
        )


# TensorFlow's messages as a two-worker cluster on TensorFlow 2.21 raised them.
HEARTBEATS = (
    "{{function_node __inference_<lambda>_34}} Collective ops is aborted by: Error reported "
    "from /job:worker/task:1: The following tasks are unhealthy (stopped sending heartbeats):"
    "\n/job:worker/replica:0/task:1\nThe tasks have crashed. Check the task logs for an "
    "earlier error, or scheduler events (e.g. preemption, eviction) to debug further.\nThe "
    "error could be from a previous operation. Restart your program to reset.\n\t "
    "[[{{node CollectiveReduceV2}}]] [Op:__inference_<lambda>_34]"
)
CHIEF_GONE = (
    "{{function_node __inference_<lambda>_34}} Collective ops is aborted by: recvmsg:"
    "Connection reset by peer\nAdditional GRPC error information from remote target "
    "/job:worker/replica:0/task:0 while calling /tensorflow.WorkerService/CompleteInstance:"
)
TIMED_OUT = (
    "{{function_node __inference_<lambda>_34}} Collective has timed out during execution."
    "\n\t [[{{node CollectiveReduceV2}}]] [Op:__inference_<lambda>_34]"
)
BARRIER = (
    "Barrier timed out. Id: [Init]Wait_for_all_tasks_to_register::0. This usually happens "
    "because a task triggered the barrier too early or too slowly.\n# of tasks that reached "
    "the barrier: 1/2.\nThe first task at the barrier: /job:worker/replica:0/task:0. Some "
    "timed out task names:\n/job:worker/replica:0/task:1\n"
)


@pytest.mark.parametrize(
    ("error", "text", "timeout", "expected"),
    [
        (
            "DeadlineExceededError",
            TIMED_OUT,
            30,
            "multi-worker: a peer worker did not answer within 30 s (--timeout): it stopped, "
            "hangs, or is much slower than this one. Received: DeadlineExceededError: "
            "Collective has timed out during execution.",
        ),
        (
            "DeadlineExceededError",
            BARRIER,
            None,
            "multi-worker: a peer worker did not answer within 300 s (--timeout): it stopped, "
            "hangs, or is much slower than this one (worker 1). Received: "
            "DeadlineExceededError: Barrier timed out. Id: [Init]Wait_for_all_tasks_to_register"
            "::0. This usually happens because a task triggered the barrier too early or too "
            "slowly.",
        ),
        (
            "UnavailableError",
            HEARTBEATS,
            30,
            "multi-worker: a peer worker stopped (it crashed, was killed or exited) or cannot "
            "be reached, and the run cannot go on without it (worker 1). Received: "
            "UnavailableError: Collective ops is aborted by: Error reported from "
            "/job:worker/task:1: The following tasks are unhealthy (stopped sending "
            "heartbeats):",
        ),
        (
            "UnavailableError",
            CHIEF_GONE,
            2.5,
            "multi-worker: a peer worker stopped (it crashed, was killed or exited) or cannot "
            "be reached, and the run cannot go on without it. Received: UnavailableError: "
            "Collective ops is aborted by: recvmsg:Connection reset by peer",
        ),
        (
            "InternalError",
            "Collective ops is aborted by: unexpected exception in check alive: boom",
            30,
            "multi-worker: TensorFlow aborted the collectives between workers. Received: "
            "InternalError: Collective ops is aborted by: unexpected exception in check "
            "alive: boom",
        ),
    ],
    ids=["collective-timed-out", "registration-barrier", "heartbeats", "chief-gone", "aborted"],
)
def test_a_gone_peer_is_one_line_naming_timeout_and_worker(
    tf, error: str, text: str, timeout: float | None, expected: str
) -> None:
    exc = getattr(tf.errors, error)(None, None, text)
    assert collective_failure(exc, timeout) == expected
    with pytest.raises(ResourceError) as raised, peer_failures(timeout):
        raise exc
    assert str(raised.value) == expected
    assert raised.value.exit_code == PEER_EXIT_CODE == ExitCode.RESOURCE


class _LooksLikeTF(Exception):
    error_code = 4  # DEADLINE_EXCEEDED's number, but not a TensorFlow error


@pytest.mark.parametrize(
    "make",
    [
        lambda tf: tf.errors.InvalidArgumentError(None, None, "Incompatible shapes"),
        lambda tf: tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"),
        lambda tf: tf.errors.InternalError(None, None, "cuDNN failed"),
        lambda tf: ValueError("Collective ops is aborted"),
        lambda tf: _LooksLikeTF("deadline"),
    ],
    ids=["invalid-argument", "out-of-memory", "internal", "not-tensorflow", "look-alike"],
)
def test_other_errors_are_not_peer_failures(tf, make) -> None:  # type: ignore[no-untyped-def]
    exc = make(tf)
    assert collective_failure(exc, 30) is None
    with pytest.raises(type(exc)), peer_failures(30):
        raise exc


WATCHED = textwrap.dedent(
    """
    import sys, time
    from gradscope.distribute import worker_watchdog

    timeout, inside, after = (float(a) for a in sys.argv[1:4])
    with worker_watchdog(timeout, "multi-worker: stuck"):
        time.sleep(inside)
    print("left the block", flush=True)
    time.sleep(after)
    """
)


def _watched(
    timeout: float, inside: float, after: float
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", WATCHED, str(timeout), str(inside), str(after)]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    return done, time.monotonic() - start


def test_the_watchdog_kills_a_block_that_outlives_it_with_one_line() -> None:
    done, took = _watched(timeout=1.0, inside=30, after=0)
    assert done.returncode == -9  # SIGKILL from the sentinel
    assert done.stderr == "gradscope: error: multi-worker: stuck\n"
    assert done.stdout == ""
    assert took < 1.0 + 5.0, took


def test_the_watchdog_is_disarmed_when_the_block_ends() -> None:
    done, _ = _watched(timeout=0.5, inside=0.05, after=1.5)  # outlives the sentinel's timer
    assert (done.returncode, done.stdout, done.stderr) == (0, "left the block\n", "")


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
