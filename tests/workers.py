"""Test harness: a multi-worker cluster of local processes on 127.0.0.1.

:func:`run_workers` starts every worker at once, each with its own ``TF_CONFIG``,
collects their output, can kill one of them once it has printed a marker line (a worker
that dies mid-run), and kills all of them when the overall timeout passes, so a test
never hangs, whatever TensorFlow does.  Each worker runs in its own process group, so
killing it on timeout also ends whatever it started (gradscope's watchdog sentinel).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    All sockets are bound before any is closed, so the ports differ; another process
    could still take one before a worker binds it (rare; a test then fails, not hangs).
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(ports: Sequence[int], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of one worker per port."""
    return json.dumps(
        {
            "cluster": {"worker": [f"{HOST}:{port}" for port in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


class WorkerRun(subprocess.CompletedProcess[str]):
    """One worker's outcome: ``CompletedProcess`` plus when it ended and why.

    ``ended`` and ``killed_at`` are ``time.monotonic()`` values (one clock for every
    process of the machine); ``hung`` means the harness killed it because the overall
    timeout passed.
    """

    def __init__(
        self,
        process: subprocess.Popen[str],
        stdout: str,
        stderr: str,
        *,
        index: int,
        ended: float,
        killed_at: float | None,
        hung: bool,
    ) -> None:
        super().__init__(process.args, process.returncode, stdout, stderr)
        self.index = index
        self.ended = ended
        self.killed_at = killed_at
        self.hung = hung


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[str]
    kill_marker: str | None
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    killed_at: float | None = None

    def read_stdout(self) -> None:
        """Collect stdout; kill the worker (SIGKILL, itself only) at its marker line."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.out.append(line)
            if self.kill_marker is not None and self.kill_marker in line and not self.killed_at:
                self.killed_at = time.monotonic()
                self.process.kill()

    def read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.err.extend(self.process.stderr)


def run_workers(
    argv: Sequence[str] | Sequence[Sequence[str]],
    count: int = 2,
    *,
    timeout: float = 180.0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    kill_after: Mapping[int, str] | None = None,
    absent: Sequence[int] = (),
) -> list[WorkerRun]:
    """Run a cluster of ``count`` workers on 127.0.0.1 and wait for all of them.

    ``argv`` is one command for every worker, or one per worker (then ``count`` is its
    length); a leading ``"python"`` is replaced by ``sys.executable``.  Each worker gets
    ``os.environ``, then ``env``, then its ``TF_CONFIG``.  ``kill_after`` maps a worker
    index to a marker: that worker is killed (SIGKILL) when a stdout line contains it.
    Workers listed in ``absent`` are in ``TF_CONFIG`` but never started (a worker that
    never comes up).  After ``timeout`` seconds every worker still running is killed
    with its process group and reported ``hung``.  Returns the started workers' runs,
    in index order.
    """
    commands = _commands(argv, count)
    ports = free_ports(len(commands))
    workers: list[_Worker] = []
    try:
        for index, command in enumerate(commands):
            if index in absent:
                continue
            worker_env = {**os.environ, **(env or {}), "TF_CONFIG": tf_config(ports, index)}
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=worker_env,
                cwd=cwd,
                start_new_session=True,
            )
            workers.append(_Worker(index, process, (kill_after or {}).get(index)))
        return _wait(workers, time.monotonic() + timeout)
    finally:
        for worker in workers:
            _kill_group(worker.process)


def _commands(argv: Sequence[str] | Sequence[Sequence[str]], count: int) -> list[list[str]]:
    """One command per worker, with ``python`` meaning this interpreter."""
    per_worker = [list(argv)] * count if isinstance(argv[0], str) else [list(a) for a in argv]
    return [
        [sys.executable if i == 0 and part == "python" else str(part) for i, part in enumerate(c)]
        for c in per_worker
    ]


def _wait(workers: list[_Worker], deadline: float) -> list[WorkerRun]:
    """Read every worker's output until it exits or ``deadline`` passes."""
    readers = []
    for worker in workers:
        for target in (worker.read_stdout, worker.read_stderr):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            readers.append(thread)
    ended: dict[int, float] = {}
    hung: set[int] = set()
    while len(ended) < len(workers):
        now = time.monotonic()
        for worker in workers:
            if worker.index not in ended and worker.process.poll() is not None:
                ended[worker.index] = now
            elif worker.index not in ended and now > deadline:
                hung.add(worker.index)
                _kill_group(worker.process)
        time.sleep(0.05)
    for thread in readers:
        thread.join(timeout=10)
    return [
        WorkerRun(
            worker.process,
            "".join(worker.out),
            "".join(worker.err),
            index=worker.index,
            ended=ended[worker.index],
            killed_at=worker.killed_at,
            hung=worker.index in hung,
        )
        for worker in workers
    ]


def _kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL a worker's process group (it leads its own session) if it still runs."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
