"""``tf.distribute`` for gradscope: choosing and building the strategy (issue 12, first step).

``--strategy default|mirrored|multi-worker`` and ``--replicas N`` are checked here before
TensorFlow is imported, so a bad combination or a broken ``TF_CONFIG`` is one line and
exit 2.  :func:`make_strategy` then builds the ``tf.distribute.Strategy``:

* ``default``: TensorFlow's default strategy (one device, no replica context);
* ``mirrored``: ``MirroredStrategy`` over every local GPU; on a machine without one,
  ``replicas`` logical CPU devices (how the tests run: TensorFlow splits the CPU, the
  replicas share its cores);
* ``multi-worker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``.

Logical CPU devices can only be made before TensorFlow initializes its devices, so the
split is done, or refused with a clear error, before the first op runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import UsageError, received

StrategyKind = Literal["default", "mirrored", "multi-worker"]
STRATEGIES: tuple[str, ...] = get_args(StrategyKind)

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class WorkerTask:
    """This process's place in a multi-worker cluster, read from ``TF_CONFIG``."""

    workers: tuple[str, ...]
    index: int

    @property
    def is_chief(self) -> bool:
        """Worker 0 is the chief: the only one that writes files and stdout."""
        return self.index == 0


def check_strategy_options(kind: str, replicas: int | None) -> None:
    """Refuse a strategy name or a ``--replicas`` that cannot apply, before any work.

    ``--replicas`` splits the CPU of a ``mirrored`` run; with ``default`` (one device) or
    ``multi-worker`` (one replica per worker) it means nothing, so it is an error rather
    than silently ignored.  Whether a GPU makes it meaningless is decided by
    :func:`make_strategy`, which can see the devices.
    """
    if kind not in STRATEGIES:
        raise UsageError(
            f"--strategy: unknown value. Received: --strategy={kind!r}; "
            f"expected one of {', '.join(STRATEGIES)}"
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
    """The ``tf.distribute.Strategy`` for ``--strategy kind`` (see the module docstring)."""
    check_strategy_options(kind, replicas)
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "multi-worker":
        import os

        parse_tf_config(os.environ)
        return tf.distribute.MultiWorkerMirroredStrategy()
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
