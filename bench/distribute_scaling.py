"""Wall time of a full-data ``gradscope hessian`` Lanczos run over 1, 2 and 4 replicas.

    python bench/distribute_scaling.py [--repeats N] [--warmup N] [--replicas 1 2 4]
                                       [--batches 64] [--batch-size 16] [--max-iter 5]
                                       [--rebuild]

A seeded mid-size CNN (32x32x3 input, three blocks of Conv2D+BatchNorm+ReLU+Conv2D+
max-pooling with 8, 16 and 32 filters, a dense layer of 256, 10 classes: 152,138
trainable parameters, compiled with sparse_categorical_crossentropy) and a seeded
dataset of ``--batches`` x ``--batch-size`` rows are built once, in a child process,
and cached in bench/.cache/ (git-ignored).
Then each configuration runs, each in a fresh process, alternately (A B C D A B C D ...):

  python -m gradscope hessian MODEL --data DATA --batch-size B --block model
      --method lanczos --max-iter M --tol 1e-12 --format json  STRATEGY

with STRATEGY ``--strategy default`` (one device: the baseline), then
``--strategy mirrored --replicas R`` for every R of ``--replicas``.  ``--tol 1e-12``
never stops Lanczos early, so every run does the same work: M Hessian-vector
products, each over every batch.  Each run is timed from spawn to exit (wall time
and the child's CPU time, user+sys); the report's own ``seconds`` of the block (the
Lanczos loop: tracing the product and the M products, in-process) is shown too.
The ``--warmup`` rounds are not timed.

Correctness: the top eigenvalue of every run (warm-up included) must equal the first
default run's to ``rtol 1e-5``; the script exits with 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
MODEL = CACHE / "distribute_cnn32.keras"
RTOL = 1e-5
TOL = "1e-12"

BUILD_MODEL = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
from keras import layers
keras.utils.set_random_seed(0)
inputs = keras.Input((32, 32, 3), name="image")
x = inputs
for index, filters in enumerate((8, 16, 32)):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{index}_a")(x)
    x = layers.BatchNormalization(name=f"bn{index}")(x)
    x = layers.Activation("relu", name=f"relu{index}")(x)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{index}_b")(x)
    x = layers.MaxPooling2D(name=f"pool{index}")(x)
x = layers.Flatten(name="flatten")(x)
x = layers.Dense(256, activation="relu", name="dense")(x)
outputs = layers.Dense(10, activation="softmax", name="class_probs")(x)
model = keras.Model(inputs, outputs, name="distribute_cnn32")
model.compile(loss="sparse_categorical_crossentropy")
model.save(sys.argv[1])
"""

BUILD_DATA = r"""
import sys
import numpy as np
path, rows = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.standard_normal((rows, 32, 32, 3)).astype(np.float32)
y = rng.integers(0, 10, size=rows).astype(np.int64)
np.savez(path, x=x, y=y)
"""


@dataclass
class Config:
    """One configuration: its label, its strategy options and what its runs gave."""

    label: str
    options: list[str]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    lanczos: list[float] = field(default_factory=list)
    tops: list[float] = field(default_factory=list)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.setdefault("KERAS_BACKEND", "tensorflow")
    return env


def fail(proc: subprocess.CompletedProcess[bytes], cmd: list[str]) -> None:
    sys.stderr.write(proc.stderr.decode(errors="replace"))
    sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}")


def build(code: str, target: Path, *args: str) -> None:
    """Run ``code`` in a child that writes a temporary file, then rename it to ``target``
    (an interrupted build leaves no half cache)."""
    tmp = target.with_name("tmp_" + target.name)
    cmd = [sys.executable, "-c", code, str(tmp), *args]
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, env=child_env(), cwd=REPO)
    if proc.returncode != 0:
        fail(proc, cmd)
    tmp.replace(target)


def ensure_cache(data: Path, rows: int, rebuild: bool) -> None:
    """Build the model and the dataset of ``rows`` rows unless cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if rebuild or not MODEL.exists():
        print("building the CNN (32x32x3, 3 conv blocks, dense head, 10 classes)", flush=True)
        build(BUILD_MODEL, MODEL)
    if rebuild or not data.exists():
        print(f"building a seeded dataset of {rows} rows", flush=True)
        build(BUILD_DATA, data, str(rows))
    print(f"model: {MODEL.relative_to(REPO)}  data: {data.relative_to(REPO)}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other jobs on a shared machine inflate wall time."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def hessian_cmd(data: Path, batch_size: int, max_iter: int, options: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "gradscope", "hessian", str(MODEL), "--data", str(data),
        "--batch-size", str(batch_size), "--block", "model", "--method", "lanczos",
        "--max-iter", str(max_iter), "--tol", TOL, "--format", "json", *options,
    ]  # fmt: skip


def run_timed(cmd: list[str]) -> tuple[float, float, dict[str, Any]]:
    """Wall seconds, CPU seconds (user+sys) and the JSON report of one child, spawn to exit."""
    cpu = children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=child_env(), cwd=REPO)
    elapsed = time.perf_counter() - start
    cpu = children_cpu() - cpu
    if proc.returncode != 0:
        fail(proc, cmd)
    return elapsed, cpu, json.loads(proc.stdout)


def top_eigenvalue(report: dict[str, Any], rows: int, max_iter: int) -> float:
    """The top eigenvalue, once the run is known to have done the same work as the others."""
    block = report["blocks"][0]
    if report["batch"]["size"] != rows or block["iterations"] != max_iter:
        sys.exit(
            f"a run did other work than asked: {report['batch']['size']} rows and "
            f"{block['iterations']} HVPs. Expected: {rows} rows and {max_iter} HVPs"
        )
    return float(block["eigenvalues"][0])


def table(configs: list[Config]) -> None:
    """Medians of the timed rounds, and each against the baseline (the first)."""
    base = configs[0]
    base_wall, base_cpu = statistics.median(base.wall), statistics.median(base.cpu)
    base_lanczos = statistics.median(base.lanczos)
    print(
        f"{'configuration':<22}{'wall':>7}{'speedup':>9}{'CPU':>7}{'CPU/base':>9}"
        f"{'Lanczos':>9}{'speedup':>9}   wall runs"
    )
    for config in configs:
        wall, cpu = statistics.median(config.wall), statistics.median(config.cpu)
        lanczos = statistics.median(config.lanczos)
        runs = " ".join(f"{t:.1f}" for t in config.wall)
        print(
            f"{config.label:<22}{wall:>7.1f}{base_wall / wall:>9.2f}{cpu:>7.1f}"
            f"{cpu / base_cpu:>9.2f}{lanczos:>9.1f}{base_lanczos / lanczos:>9.2f}   {runs}"
        )


def check(configs: list[Config]) -> bool:
    """Every run's top eigenvalue against the first default run's (rtol ``RTOL``)."""
    reference = configs[0].tops[0]
    print(f"\ntop eigenvalue, default (first run): {reference!r}")
    worst = 0.0
    for config in configs:
        diff = max(abs(t - reference) / abs(reference) for t in config.tops)
        worst = max(worst, diff)
        print(f"  {config.label:<22} worst rel diff {diff:.2e} over {len(config.tops)} runs")
    ok = worst <= RTOL
    print(f"worst relative difference {worst:.2e} (rtol {RTOL:g}): {'OK' if ok else 'MISMATCH'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--batches", type=int, default=64, help="batches of data (default 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows a batch (default 16)")
    parser.add_argument("--max-iter", type=int, default=5, help="Lanczos HVPs (default 5)")
    parser.add_argument(
        "--replicas", type=int, nargs="+", default=[1, 2, 4],
        help="replica counts of --strategy mirrored (default 1 2 4)",
    )  # fmt: skip
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached model and data")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0 or args.batches < 1 or args.max_iter < 1:
        parser.error("--repeats, --batches and --max-iter must be >= 1, --warmup >= 0")
    if args.batch_size < max(args.replicas) or min(args.replicas) < 1:
        parser.error("--replicas must be >= 1 and at most --batch-size (a row per replica)")

    rows = args.batches * args.batch_size
    data = CACHE / f"distribute_cnn32_{args.batches}x{args.batch_size}.npz"
    ensure_cache(data, rows, args.rebuild)
    configs = [Config("default (1 device)", ["--strategy", "default"])]
    configs += [
        Config(
            f"mirrored, {r} replica{'s' * (r > 1)}",
            ["--strategy", "mirrored", "--replicas", str(r)],
        )
        for r in args.replicas
    ]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load_average()}")
    cmd = hessian_cmd(data.relative_to(REPO), args.batch_size, args.max_iter, ["STRATEGY"])
    print("each run: " + " ".join(["python", *cmd[1:]]).replace(str(REPO) + "/", ""))

    started = time.perf_counter()
    for round_ in range(args.warmup + args.repeats):
        timed = round_ >= args.warmup
        name = f"round {round_ - args.warmup + 1}" if timed else f"warm-up {round_ + 1}"
        line = []
        for config in configs:
            cmd = hessian_cmd(data, args.batch_size, args.max_iter, config.options)
            wall, cpu, report = run_timed(cmd)
            config.tops.append(top_eigenvalue(report, rows, args.max_iter))
            if timed:
                config.wall.append(wall)
                config.cpu.append(cpu)
                config.lanczos.append(float(report["blocks"][0]["seconds"]))
            line.append(f"{wall:.1f}")
        print(f"{name}: wall " + " / ".join(line) + " s", flush=True)

    print(
        f"\n{rows} rows in {args.batches} batches of {args.batch_size}, "
        f"{args.max_iter} HVPs a run; seconds, median of {args.repeats}"
    )
    table(configs)
    ok = check(configs)
    print(f"total time {time.perf_counter() - started:.0f} s, load {load_average()}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
