"""Whole-process wall time of ``gradscope inspect`` on ResNet50 versus a hand-written baseline.

    python bench/inspect_resnet50.py [--repeats N] [--warmup N] [--profile] [--rebuild]

The model (ResNet50, weights=None, 128x128x3 input, 10 classes, compiled with
categorical_crossentropy) and a seeded batch of 8 are built once, in a child process, and
cached in bench/.cache/ (git-ignored).  Then, alternately (A B A B ...):

  A: python -m gradscope inspect MODEL --data BATCH --format json > /dev/null
  B: python bench/baseline_weight_grads.py MODEL BATCH

Each is timed from spawn to exit (imports, model loading, tracing, one step, output).
The ``--warmup`` rounds (default 1) run first, untimed, to warm the file cache; the
warm-up gradscope run also keeps its JSON so that its ``global_grad_norm`` can be
checked against the baseline's global norm (rtol 1e-4).

``--profile`` then runs bench/profile_phases.py for both sides: phase timings in one
process (import, load, trace, first and second execution, report).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
MODEL = CACHE / "resnet50_128_c10.keras"
BATCH = CACHE / "resnet50_128_c10_batch8.npz"
BASELINE = HERE / "baseline_weight_grads.py"
PROFILE = HERE / "profile_phases.py"
RTOL = 1e-4

BUILD_CODE = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
model_path, batch_path = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(0)
model = keras.applications.ResNet50(weights=None, input_shape=(128, 128, 3), classes=10)
model.compile(loss="categorical_crossentropy")
model.save(model_path)
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 128, 128, 3)).astype(np.float32)
y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, size=8)]
np.savez(batch_path, x=x, y=y)
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.setdefault("KERAS_BACKEND", "tensorflow")
    return env


def run_quiet(cmd: list[str]) -> None:
    """Run ``cmd`` with stdout shown; its stderr (TensorFlow's start-up lines) only on failure."""
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, env=child_env(), cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}")


def ensure_cache(rebuild: bool) -> None:
    if MODEL.exists() and BATCH.exists() and not rebuild:
        print(f"cached model: {MODEL.relative_to(REPO)}  batch: {BATCH.relative_to(REPO)}")
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    print("building ResNet50 (weights=None, 128x128x3, 10 classes) + a batch of 8", flush=True)
    start = time.perf_counter()
    # Write to temporary names and rename, so an interrupted build leaves no half cache.
    tmp_model = MODEL.with_name("tmp_" + MODEL.name)
    tmp_batch = BATCH.with_name("tmp_" + BATCH.name)
    run_quiet([sys.executable, "-c", BUILD_CODE, str(tmp_model), str(tmp_batch)])
    tmp_model.replace(MODEL)
    tmp_batch.replace(BATCH)
    print(f"  built in {time.perf_counter() - start:.1f} s")


def gradscope_cmd() -> list[str]:
    return [
        sys.executable,
        "-m",
        "gradscope",
        "inspect",
        str(MODEL),
        "--data",
        str(BATCH),
        "--format",
        "json",
    ]


def baseline_cmd() -> list[str]:
    return [sys.executable, str(BASELINE), str(MODEL), str(BATCH)]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: list[str], stdout: object) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds and CPU seconds (user+sys) of one child process, spawn to exit."""
    cpu = children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, env=child_env(), cwd=REPO)
    elapsed = time.perf_counter() - start
    cpu = children_cpu() - cpu
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return elapsed, cpu, proc


def run_gradscope(json_out: Path | None) -> tuple[float, float]:
    if json_out is None:
        return run_timed(gradscope_cmd(), subprocess.DEVNULL)[:2]
    with json_out.open("wb") as handle:
        return run_timed(gradscope_cmd(), handle)[:2]


def run_baseline() -> tuple[float, float, float]:
    elapsed, cpu, proc = run_timed(baseline_cmd(), subprocess.PIPE)
    for line in proc.stdout.decode().splitlines():
        if line.startswith("global_norm "):
            return elapsed, cpu, float(line.split()[1])
    sys.exit(f"baseline printed no global norm: {proc.stdout!r}")


def summary(name: str, times: list[float]) -> tuple[float, float]:
    med, low = statistics.median(times), min(times)
    print(f"{name:<22}{med:>10.2f}{low:>10.2f}   " + " ".join(f"{t:.2f}" for t in times))
    return med, low


def table(title: str, times_a: list[float], times_b: list[float]) -> None:
    print(f"{title:<22}{'median':>10}{'min':>10}   runs")
    med_a, min_a = summary("gradscope inspect", times_a)
    med_b, min_b = summary("baseline (weights)", times_b)
    print(f"{'ratio A/B':<22}{med_a / med_b:>10.2f}{min_a / min_b:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--profile", action="store_true", help="also time phases in-process")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached model and batch")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    ensure_cache(args.rebuild)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"A: {' '.join(['python', *gradscope_cmd()[1:]])} > /dev/null")
    print(f"B: {' '.join(['python', *baseline_cmd()[1:]])}")

    tmpdir = Path(tempfile.mkdtemp(prefix="gradscope_bench_"))
    json_path = tmpdir / "inspect.json"
    have_json = False
    baseline_norms: list[float] = []
    for round_ in range(args.warmup):
        a, _ = run_gradscope(json_path if not have_json else None)
        have_json = True
        b, _, norm = run_baseline()
        baseline_norms.append(norm)
        print(f"warm-up {round_ + 1}: gradscope {a:.2f} s, baseline {b:.2f} s", flush=True)

    times_a: list[float] = []
    times_b: list[float] = []
    cpu_a: list[float] = []
    cpu_b: list[float] = []
    for round_ in range(args.repeats):
        a, ca = run_gradscope(json_path if not have_json else None)
        have_json = True
        b, cb, norm = run_baseline()
        baseline_norms.append(norm)
        times_a.append(a)
        times_b.append(b)
        cpu_a.append(ca)
        cpu_b.append(cb)
        print(f"round {round_ + 1}: gradscope {a:.2f} s, baseline {b:.2f} s", flush=True)

    print()
    table("wall time (s)", times_a, times_b)
    print()
    table("CPU time, user+sys (s)", cpu_a, cpu_b)

    report = json.loads(json_path.read_text())
    ours = float(report["global_grad_norm"])
    theirs = baseline_norms[0]
    ok = math.isclose(ours, theirs, rel_tol=RTOL, abs_tol=0.0)
    spread = max(baseline_norms) / min(baseline_norms) - 1 if min(baseline_norms) > 0 else 0.0
    print()
    print(
        f"global norm: gradscope {ours!r}  baseline {theirs!r}  "
        f"rel diff {abs(ours - theirs) / abs(theirs):.2e}  "
        f"(rtol {RTOL:g}): {'OK' if ok else 'MISMATCH'}"
    )
    print(f"baseline norm spread over {len(baseline_norms)} runs: {spread:.2e}")
    json_path.unlink(missing_ok=True)
    tmpdir.rmdir()

    if args.profile:
        for side in ("gradscope", "baseline"):
            print()
            run_quiet([sys.executable, str(PROFILE), side, str(MODEL), str(BATCH)])
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
