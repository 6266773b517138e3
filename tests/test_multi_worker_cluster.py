"""``--strategy multi-worker`` on a real two-worker cluster of local processes.

Each test writes a small worker script, starts it as worker 0 and worker 1 on 127.0.0.1
(:mod:`workers`), and checks what every worker printed and how it ended:

* two healthy workers all-reduce to the hand-computed sum, and the DATA auto-shard
  policy splits a global batch between them as gradscope's engines assume;
* when one worker is killed, exits early or hangs, or never starts, the other ends with
  exit code 7 and gradscope's one-line error (no traceback) within about the timeout,
  and leaves promptly after printing it (``exit_now``: a normal exit would wait 9-10 s
  for the dead peer).

The workers meet at a file barrier after importing TensorFlow, so a small ``--timeout``
only has to cover the strategy's own start, not an import slowed by a busy machine.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from workers import WorkerRun, run_workers

from gradscope.distribute import PEER_EXIT_CODE

ROOT = Path(__file__).resolve().parent.parent
ERROR = "gradscope: error: "
# Slack for the time a worker takes to notice and report a dead peer on a loaded
# 2-core machine (TensorFlow's heartbeat timeout alone is 10 s).
SLACK = 12.0

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    from gradscope import _tf
    from gradscope.distribute import exit_now, make_strategy, parse_tf_config, peer_failures
    from gradscope.errors import GradscopeError

    scenario, timeout, meet = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    task = parse_tf_config(os.environ)
    tf = _tf.tensorflow()
    if meet != "-":  # every worker has imported TensorFlow before any strategy starts
        Path(meet, f"ready-{task.index}").touch()
        while not all(Path(meet, f"ready-{i}").exists() for i in range(len(task.workers))):
            time.sleep(0.05)
    if scenario == "no-barrier":  # TensorFlow without a registration barrier
        from gradscope import distribute
        distribute._configure_coordination = lambda task, timeout: False


    def rows_of(strategy, step, n):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        data = tf.data.Dataset.from_tensor_slices({"id": tf.range(n)}).batch(n)
        batches = strategy.experimental_distribute_dataset(data.with_options(options))
        return [
            strategy.experimental_local_results(step(batch)[1])[0].numpy().tolist()
            for batch in batches
        ]


    def main():
        print(f"strategy-at {time.monotonic()}", flush=True)
        strategy = make_strategy(tf, "multi-worker", timeout=timeout)

        def replica_step(batch):
            context = tf.distribute.get_replica_context()
            mine = tf.cast(context.replica_id_in_sync_group + 1, tf.float32)
            return context.all_reduce("SUM", mine * tf.constant([1.0, 10.0])), batch["id"]

        step = tf.function(lambda batch: strategy.run(replica_step, args=(batch,)))
        one = {"id": tf.constant([task.index])}
        with peer_failures(timeout):
            summed, _ = step(one)
            reduced = strategy.reduce(
                "SUM", strategy.run(lambda: tf.constant(10.0 * (task.index + 1))), axis=None
            )
            if scenario == "sum":
                print(json.dumps({
                    "replicas": strategy.num_replicas_in_sync,
                    "all_reduce": strategy.experimental_local_results(summed)[0].numpy().tolist(),
                    "reduce": float(reduced),
                    "rows_5": rows_of(strategy, step, 5),
                    "rows_1": rows_of(strategy, step, 1),
                }), flush=True)
                return
            for i in range(1000):
                print(f"step {i} {time.monotonic()}", flush=True)
                if task.index == 1 and scenario == "exits":
                    sys.exit(0)
                if task.index == 1 and scenario == "hangs":  # alive, but never joins
                    time.sleep(4 * timeout)
                    os._exit(0)
                step(one)
                time.sleep(0.2)


    try:
        main()
    except GradscopeError as exc:
        print(f"error-at {time.monotonic()}", flush=True)
        sys.stderr.write(f"gradscope: error: {exc}\\n")
        exit_now(exc.exit_code)  # as the CLI does: a normal exit waits for the dead peer
    """
)


def _cluster(
    tmp_path: Path,
    scenario: str,
    timeout: float,
    *,
    meet: bool = True,
    kill_after: dict[int, str] | None = None,
    absent: tuple[int, ...] = (),
) -> list[WorkerRun]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    meet_dir = tmp_path / "meet"
    meet_dir.mkdir()
    env = {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    argv = ["python", str(script), scenario, str(timeout), str(meet_dir) if meet else "-"]
    return run_workers(
        argv, 2, timeout=240, env=env, cwd=tmp_path, kill_after=kill_after, absent=absent
    )


def _error_line(run: WorkerRun) -> str:
    """The survivor's stderr: one gradscope error line, nothing else (no traceback)."""
    assert not run.hung, f"worker {run.index} hung: {run.stderr[-2000:]}"
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith(ERROR), lines[0]
    return lines[0][len(ERROR) :]


def _printed(run: WorkerRun, label: str) -> float:
    """The ``time.monotonic()`` a worker printed after ``label`` (one clock for all
    processes of the machine, the harness's included)."""
    return float(run.stdout.split(f"{label} ")[1].split()[0])


def _left_promptly(run: WorkerRun) -> None:
    """The survivor exits within seconds of printing its error (no shutdown hang)."""
    assert run.ended - _printed(run, "error-at") < 5.0, run.ended - _printed(run, "error-at")


@pytest.mark.slow
def test_two_workers_all_reduce_and_split_batches_by_rows(tmp_path: Path) -> None:
    runs = _cluster(tmp_path, "sum", 30)
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    out = [json.loads(run.stdout.strip().splitlines()[-1]) for run in runs]
    for result in out:
        assert result["replicas"] == 2
        # Replica values 1 and 2, times [1, 10]: summed by hand.
        assert result["all_reduce"] == [3.0, 30.0]
        assert result["reduce"] == 10.0 + 20.0
    # A 5-row global batch: ceil(5/2) = 3 contiguous rows to worker 0, the rest to 1;
    # a 1-row batch leaves worker 1 an empty batch, and its step still joins.
    assert [r["rows_5"] for r in out] == [[[0, 1, 2]], [[3, 4]]]
    assert [r["rows_1"] for r in out] == [[[0]], [[]]]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scenario", "timeout", "message"),
    [
        # Killed: TensorFlow's heartbeats notice within ~10 s, well before --timeout.
        ("killed", 60, "a peer worker stopped (it crashed, was killed or exited)"),
        # A clean early exit is the same to the others: heartbeats stop.
        ("exits", 60, "a peer worker stopped (it crashed, was killed or exited)"),
        # Alive but stuck: only the collective timeout can tell.
        ("hangs", 5, "a peer worker did not answer within 5 s (--timeout)"),
    ],
    ids=["killed", "exits", "hangs"],
)
def test_a_worker_gone_mid_run_ends_the_other_with_one_line(
    tmp_path: Path, scenario: str, timeout: float, message: str
) -> None:
    kill_after = {1: "step 0"} if scenario == "killed" else None
    chief, other = _cluster(tmp_path, scenario, timeout, kill_after=kill_after)
    assert "step 0" in other.stdout, other.stderr[-3000:]
    line = _error_line(chief)
    assert chief.returncode == PEER_EXIT_CODE == 7
    assert line.startswith(f"multi-worker: {message}"), line
    assert "Received: " in line
    failed = _printed(chief, "error-at")
    if scenario == "hangs":
        # The collective timeout, counted from the step worker 0 was waiting in.
        waited = failed - _printed(chief, "step 0")
        assert timeout - 0.5 < waited < timeout + SLACK, waited
    else:
        assert "(worker 1)" in line, line
        gone = other.killed_at or other.ended
        assert failed - gone < min(timeout, 10.0 + SLACK), failed - gone
    _left_promptly(chief)


@pytest.mark.slow
@pytest.mark.parametrize("absent", [1, 0])
def test_a_worker_that_never_starts_ends_the_other_after_the_timeout(
    tmp_path: Path, absent: int
) -> None:
    (run,) = _cluster(tmp_path, "sum", 5, meet=False, absent=(absent,))
    line = _error_line(run)
    assert run.returncode == PEER_EXIT_CODE
    assert line.startswith("multi-worker: the 2 workers of TF_CONFIG (127.0.0.1:"), line
    # Worker 0 runs the registration barrier and knows who is missing; worker 1 only
    # learns that worker 0 never answered.
    missing = " (missing: worker 1)" if absent == 1 else ""
    assert f"within 5 s (--timeout){missing}; this is worker {1 - absent}: start every" in line
    assert "Received: DeadlineExceededError: " in line
    waited = _printed(run, "error-at") - _printed(run, "strategy-at")
    assert 5.0 - 0.5 < waited < 5.0 + SLACK, waited
    _left_promptly(run)


@pytest.mark.slow
def test_without_a_registration_barrier_the_watchdog_kills_the_waiting_worker(
    tmp_path: Path,
) -> None:
    # TensorFlow before cluster_register_with_barrier: worker 0 would wait forever.
    (run,) = _cluster(tmp_path, "no-barrier", 5, meet=False, absent=(1,))
    line = _error_line(run)
    assert run.returncode == -9  # killed by the sentinel: TensorFlow held the GIL
    assert line.startswith("multi-worker: the 2 workers of TF_CONFIG"), line
    assert "did not all start within 5 s (--timeout); this is worker 0" in line
    waited = run.ended - _printed(run, "strategy-at")
    assert 5.0 - 0.5 < waited < 5.0 + SLACK, waited
