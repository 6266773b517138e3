"""``tf.distribute`` for gradscope: choosing and building the strategy (issue 12).

``--strategy default|mirrored|multi-worker``, ``--replicas N`` and ``--timeout S`` are
checked here before TensorFlow is imported, so a bad combination or a broken
``TF_CONFIG`` is one line and exit 2.  :func:`make_strategy` then builds the
``tf.distribute.Strategy``:

* ``default``: TensorFlow's default strategy (one device, no replica context);
* ``mirrored``: ``MirroredStrategy`` over every local GPU; on a machine without one,
  ``replicas`` logical CPU devices (how the tests run: TensorFlow splits the CPU, the
  replicas share its cores);
* ``multi-worker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``.

Logical CPU devices can only be made before TensorFlow initializes its devices, so the
split is done, or refused with a clear error, before the first op runs.

Multi-worker runs and dead peers (measured on TensorFlow 2.21, two CPU workers on
127.0.0.1).  Every collective of a worker waits for all the others, so a missing peer
would hang the rest; ``--timeout`` (:data:`DEFAULT_TIMEOUT` seconds unless given)
bounds every wait:

* *a worker never starts*: ``MultiWorkerMirroredStrategy()`` waits for every worker of
  ``TF_CONFIG`` to register with the coordination service (run by worker 0), and by
  default waits forever, holding the GIL (no Python thread runs meanwhile).
  :func:`make_strategy` configures that service itself, as the strategy would, plus a
  registration barrier that fails after ``--timeout`` (TensorFlow versions whose
  ``CoordinationServiceConfig`` has ``cluster_register_with_barrier``); on older ones,
  and as a backstop on all, :func:`worker_watchdog` runs a separate sentinel process
  that prints one line and kills the waiting worker;
* *a worker dies or exits during the run*: its peers' coordination service heartbeats
  stop, and TensorFlow aborts the pending collectives with ``UnavailableError``
  ("tasks are unhealthy (stopped sending heartbeats)") after about 10 s, whatever
  ``--timeout`` is; if worker 0 (the service) is the one that died, the others get
  ``UnavailableError`` at once (connection reset);
* *a worker hangs or is far slower*: every collective has ``timeout_seconds`` from
  ``CommunicationOptions`` and raises ``DeadlineExceededError`` (so ``--timeout`` must
  exceed the longest time one worker may wait for another, e.g. a slower model load);

:func:`collective_failure` turns those errors into one line, and the worker exits with
:data:`PEER_EXIT_CODE` (7, a resource that is not available: a peer, not a bug).  A normal
interpreter exit after that takes 9-10 s more (TensorFlow's coordination agent waits for
the dead peer at shutdown), so a failed worker should print its line and leave with
:func:`exit_now`; a successful one exits normally (about 2 s, not waiting for peers).

Row split (measured): ``strategy.experimental_distribute_dataset`` of a global batch of
``b`` rows with ``AutoShardPolicy.DATA`` gives worker ``i`` of ``W`` the contiguous rows
``[i*c, min((i+1)*c, b))`` with ``c = ceil(b / W)`` of *that* batch (a short last batch
is split the same way): 5 rows on 2 workers are rows 0-2 and 3-4, 4 rows on 3 workers
2, 2 and 0, and a 1-row batch gives worker 1 an empty batch (0 rows, the step still runs
and joins every collective).  ``AutoShardPolicy.OFF`` would give rows to workers twice.
Hence Keras's per-replica ``compute_loss`` (the local mean divided by the number of
replicas) sums to the global mean only when ``W`` divides ``b``, and on an empty replica
it is an empty tensor of shape ``(0,)``, not 0 (its gradients are zeros).  Also measured:
inside a ``tf.function``, ``ReplicaContext.all_reduce`` of a function *argument* passed
straight through fails with "destinations can not be empty"; a value computed in the
replica function (even ``tf.identity``) is fine.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, get_args

from .errors import ExitCode, ResourceError, UsageError, first_line, received

StrategyKind = Literal["default", "mirrored", "multi-worker"]
STRATEGIES: tuple[str, ...] = get_args(StrategyKind)

TF_CONFIG = "TF_CONFIG"

DEFAULT_TIMEOUT = 300.0
"""Seconds a multi-worker run waits for a peer (to start, or at a collective) by default.

Long enough for workers launched by hand a few minutes apart, or for one that loads the
model more slowly; a crashed peer is noticed after about 10 s anyway (heartbeats).
"""

PEER_EXIT_CODE = ExitCode.RESOURCE
"""Exit code of a worker whose peer is gone: a resource outside the process (another
worker) is not available, the same family as out of memory; not ``INTERNAL`` (70),
which tells the user that gradscope has a bug."""

# The sentinel of :func:`worker_watchdog` fires this long after TensorFlow's own
# registration barrier should have (it is only a backstop there).
_WATCHDOG_GRACE = 15.0


@dataclass(frozen=True)
class WorkerTask:
    """This process's place in a multi-worker cluster, read from ``TF_CONFIG``."""

    workers: tuple[str, ...]
    index: int

    @property
    def is_chief(self) -> bool:
        """Worker 0 is the chief: the only one that writes files and stdout."""
        return self.index == 0


def check_strategy_options(kind: str, replicas: int | None, timeout: float | None = None) -> None:
    """Refuse a strategy name, a ``--replicas`` or a ``--timeout`` that cannot apply.

    ``--replicas`` splits the CPU of a ``mirrored`` run; with ``default`` (one device) or
    ``multi-worker`` (one replica per worker) it means nothing, so it is an error rather
    than silently ignored; likewise ``--timeout``, which only bounds the waits for other
    workers.  Whether a GPU makes ``--replicas`` meaningless is decided by
    :func:`make_strategy`, which can see the devices.
    """
    if kind not in STRATEGIES:
        raise UsageError(
            f"--strategy: unknown value. Received: --strategy={kind!r}; "
            f"expected one of {', '.join(STRATEGIES)}"
        )
    if timeout is not None:
        check_timeout(timeout)
        if kind != "multi-worker":
            raise UsageError(
                "--timeout: only with --strategy multi-worker (it bounds the waits for "
                f"other workers). Received: --strategy {kind} --timeout {timeout}"
            )
    if replicas is None:
        return
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise UsageError(f"--replicas: expected an integer >= 1. {received(replicas)}")
    if kind != "mirrored":
        raise UsageError(
            f"--replicas: only with --strategy mirrored (logical CPU devices). "
            f"Received: --strategy {kind} --replicas {replicas}"
        )


def check_timeout(timeout: float | None) -> float:
    """The seconds to wait for a peer worker: ``timeout``, or :data:`DEFAULT_TIMEOUT`.

    A positive, finite number of seconds; anything else is a :class:`UsageError`.
    """
    if timeout is None:
        return DEFAULT_TIMEOUT
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise UsageError(f"--timeout: expected a positive number of seconds. {received(timeout)}")
    return float(timeout)


def parse_tf_config(environ: Mapping[str, str]) -> WorkerTask:
    """This worker's task from the ``TF_CONFIG`` of ``environ``, checked key by key.

    A worker needs ``{"cluster": {"worker": ["host:port", ...]}, "task": {"type":
    "worker", "index": i}}``; whatever is missing or malformed is named in one line.
    """
    text = environ.get(TF_CONFIG)
    if not text:
        raise UsageError(
            "--strategy multi-worker: TF_CONFIG is not set; expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
            '"index": 0}} in the environment of every worker'
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"TF_CONFIG: not JSON ({exc.msg}). {received(text[:80])}") from None
    workers = _cluster_workers(config)
    index = _task_index(config, len(workers))
    return WorkerTask(workers, index)


def _cluster_workers(config: Any) -> tuple[str, ...]:
    """``TF_CONFIG["cluster"]["worker"]``: a non-empty list of ``host:port`` strings."""
    cluster = config.get("cluster") if isinstance(config, dict) else None
    workers = cluster.get("worker") if isinstance(cluster, dict) else None
    if (
        not isinstance(workers, list)
        or not workers
        or not all(isinstance(w, str) and ":" in w for w in workers)
    ):
        raise UsageError(
            "TF_CONFIG: cluster.worker: expected a non-empty list of 'host:port' addresses. "
            f"{received(workers)}"
        )
    return tuple(workers)


def _task_index(config: dict[str, Any], count: int) -> int:
    """``TF_CONFIG["task"]``: type ``worker`` and an index into the worker list."""
    task = config.get("task")
    if not isinstance(task, dict):
        raise UsageError(
            f"TF_CONFIG: task: expected an object with type and index. {received(task)}"
        )
    if task.get("type") != "worker":
        raise UsageError(f"TF_CONFIG: task.type: expected 'worker'. {received(task.get('type'))}")
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise UsageError(
            f"TF_CONFIG: task.index: expected an integer from 0 to {count - 1}. {received(index)}"
        )
    return index


def split_cpu(tf: Any, replicas: int) -> list[str]:
    """``replicas`` logical CPU devices (their names), made before TensorFlow starts.

    TensorFlow fixes its devices when the first op runs; after that the split cannot
    change, and a run asking for another number of replicas is refused.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError:  # devices already initialized: keep them if the count agrees
        existing = tf.config.list_logical_devices("CPU")
        if len(existing) != replicas:
            raise UsageError(
                f"--replicas {replicas}: TensorFlow's devices were already set up with "
                f"{len(existing)} CPU device(s) in this process; give the same number, or "
                "choose the strategy before anything runs on TensorFlow"
            ) from None
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def make_strategy(
    tf: Any, kind: str, replicas: int | None = None, timeout: float | None = None
) -> Any:
    """The ``tf.distribute.Strategy`` for ``--strategy kind`` (see the module docstring).

    For ``multi-worker`` this must run before any other TensorFlow op of the process (the
    cluster is set up when TensorFlow starts), and ``timeout`` (seconds, default
    :data:`DEFAULT_TIMEOUT`) bounds the wait for the other workers, at start and at every
    collective.  A worker that does not join in time is a :class:`ResourceError`, or, if
    TensorFlow cannot give up by itself, a one-line message and a killed process.
    """
    check_strategy_options(kind, replicas, timeout)
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "multi-worker":
        return _multi_worker_strategy(tf, parse_tf_config(os.environ), check_timeout(timeout))
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and replicas is not None:
        raise UsageError(
            f"--replicas {replicas}: this machine has {len(gpus)} GPU(s), and "
            "--strategy mirrored uses one replica per GPU; leave --replicas out"
        )
    if gpus:
        return tf.distribute.MirroredStrategy()
    devices = split_cpu(tf, replicas or 1)
    return tf.distribute.MirroredStrategy(devices=devices)


def _multi_worker_strategy(tf: Any, task: WorkerTask, timeout: float) -> Any:
    """``MultiWorkerMirroredStrategy`` whose waits for peers all end after ``timeout``."""
    native = _configure_coordination(task, timeout)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    try:
        with worker_watchdog(
            timeout + _WATCHDOG_GRACE if native else timeout, _not_joined(task, timeout)
        ):
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except tf.errors.DeadlineExceededError as exc:
        missing = _gone_workers(str(exc))
        joined = _not_joined(task, timeout, f" (missing: {missing})" if missing else "")
        raise ResourceError(f"{joined}. Received: {_tf_message(exc)}") from None
    except tf.errors.OpError as exc:
        message = collective_failure(exc, timeout)
        if message is None:
            raise
        raise ResourceError(message) from None
    except RuntimeError as exc:
        if "startup" not in str(exc):
            raise
        raise UsageError(
            "--strategy multi-worker: the strategy must be made before TensorFlow runs "
            f"anything in this process. Received: RuntimeError: {first_line(exc)}"
        ) from None


def _not_joined(task: WorkerTask, timeout: float, missing: str = "") -> str:
    """The one line for workers that did not all start (``missing``: which, if known)."""
    return (
        f"multi-worker: the {len(task.workers)} workers of TF_CONFIG "
        f"({', '.join(task.workers)}) did not all start within {_seconds(timeout)} "
        f"(--timeout){missing}; this is worker {task.index}: start every worker, and check "
        "that each address is reachable from every machine"
    )


def _configure_coordination(task: WorkerTask, timeout: float) -> bool:
    """Set up the coordination service as the strategy would, but with a registration
    barrier that fails after ``timeout``; whether this TensorFlow has that barrier.

    ``MultiWorkerMirroredStrategy`` configures the service only if nobody did, with no
    registration timeout: worker 0 would then wait forever for a worker that never
    starts.  The configuration goes through TensorFlow's private eager context (the
    strategy itself does the same); where it is missing, nothing is configured and
    :func:`worker_watchdog` alone bounds the wait.
    """
    try:
        context = importlib.import_module("tensorflow.python.eager.context").context()
        if context.coordination_service is not None or context._initialized:
            return False  # configured by someone else, or too late (the strategy says so)
        context.configure_coordination_service(
            service_type="standalone",
            service_leader="/job:worker/replica:0/task:0",
            cluster_register_timeout_in_ms=int(timeout * 1000),
        )
        config: Any = context.coordination_service  # the proto just configured
        config.coordinated_job_list.add(name="worker", num_tasks=len(task.workers))
    except (ImportError, AttributeError, TypeError):
        return False
    if "cluster_register_with_barrier" not in config.DESCRIPTOR.fields_by_name:
        return False
    config.cluster_register_with_barrier = True
    return True


_SENTINEL = """
import os, signal, sys, threading
pid, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
done = threading.Event()
def wait_for_disarm():
    sys.stdin.buffer.read()
    done.set()
threading.Thread(target=wait_for_disarm, daemon=True).start()
if not done.wait(seconds):
    os.write(2, message.encode() + b"\\n")
    os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
os._exit(0)  # the reader thread may still be blocked on stdin
"""


@contextlib.contextmanager
def worker_watchdog(timeout: float, message: str) -> Iterator[None]:
    """Kill this process, after printing ``gradscope: error: <message>``, if the block
    has not finished after ``timeout`` seconds.

    For waits TensorFlow may never end by itself: ``MultiWorkerMirroredStrategy()``
    blocks in C++ *holding the GIL* until every worker has registered, so no Python
    thread (and no signal handler) can run meanwhile.  The watchdog is therefore a
    separate, tiny Python process (the sentinel): leaving the block closes its stdin and
    it exits quietly; if this process dies first, the closed pipe ends the sentinel too.
    A killed worker's exit status is the signal's (137 in a shell), not an exit code.
    """
    seconds = check_timeout(timeout)
    sentinel = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _SENTINEL,
            str(os.getpid()),
            repr(seconds),
            f"gradscope: error: {message}",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        yield
    finally:
        if sentinel.stdin is not None:
            sentinel.stdin.close()
        sentinel.wait()


# Canonical error codes (tf.errors.*, the gRPC status codes) that mean a peer is gone.
_DEADLINE_EXCEEDED = 4
_UNAVAILABLE = 14
_GONE_TASKS = re.compile(
    r"(?:stopped sending heartbeats\)|timed out task names):"
    r"\s*((?:/job:\w+/replica:\d+/task:\d+\s*)+)"
)
_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def collective_failure(exc: BaseException, timeout: float | None) -> str | None:
    """The one-line message for a TensorFlow error that means a peer worker is gone
    (see the module docstring), or ``None`` for any other exception.

    For a multi-worker run: a ``DeadlineExceededError`` (a collective waited
    ``timeout`` seconds), an ``UnavailableError`` (a peer stopped sending heartbeats,
    or cannot be reached), or any other TensorFlow error saying the collectives were
    aborted.  ``timeout`` is the ``--timeout`` in effect (``None``: the default).
    """
    code = getattr(exc, "error_code", None)
    if not type(exc).__module__.startswith("tensorflow") or not isinstance(code, int):
        return None
    text = str(exc)
    gone = _gone_workers(text)
    tail = f"{f' ({gone})' if gone else ''}. Received: {_tf_message(exc)}"
    if code == _DEADLINE_EXCEEDED:
        return (
            f"multi-worker: a peer worker did not answer within "
            f"{_seconds(check_timeout(timeout))} (--timeout): it stopped, hangs, or is much "
            f"slower than this one{tail}"
        )
    if code == _UNAVAILABLE:
        return (
            "multi-worker: a peer worker stopped (it crashed, was killed or exited) or "
            f"cannot be reached, and the run cannot go on without it{tail}"
        )
    if "collective" in text.lower() and "abort" in text.lower():
        return f"multi-worker: TensorFlow aborted the collectives between workers{tail}"
    return None


@contextlib.contextmanager
def peer_failures(timeout: float | None) -> Iterator[None]:
    """Re-raise a TensorFlow error that means a peer worker is gone as a
    :class:`ResourceError` with :func:`collective_failure`'s one line; let others pass."""
    try:
        yield
    except Exception as exc:
        message = collective_failure(exc, timeout)
        if message is None:
            raise
        raise ResourceError(message) from None


def exit_now(code: int) -> NoReturn:
    """Flush stdout and stderr and end the process at once with ``code``.

    For a multi-worker run that failed: a normal exit would wait 9-10 s at interpreter
    shutdown for a peer that is gone (measured on TensorFlow 2.21).  Skips ``atexit``
    handlers and ``finally`` blocks, so call it only once the error line is printed and
    any partial output removed.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(int(code))


def _gone_workers(text: str) -> str:
    """``"worker 1"``: the tasks TensorFlow's message lists as gone ('' if none).

    Only the lists after "stopped sending heartbeats)" and "timed out task names" are
    read: other task names in those messages are the reporter or the waiting one.
    """
    found = _GONE_TASKS.search(text)
    if found is None:
        return ""
    return ", ".join(sorted({f"{job} {index}" for job, index in _TASK.findall(found.group(1))}))


def _tf_message(exc: BaseException) -> str:
    """``Class: first line`` of a TensorFlow error, without its graph-node decorations."""
    text = re.sub(r"\{\{function_node [^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]", "", first_line(exc))
    return f"{type(exc).__name__}: {text.strip() or type(exc).__name__}"


def _seconds(timeout: float) -> str:
    """``30 s``, ``2.5 s``: a number of seconds as the user would write it."""
    return f"{timeout:g} s"
