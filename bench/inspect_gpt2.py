"""Wall time and peak memory of ``gradscope inspect`` on a GPT-2-size language model
versus a hand-written weight-gradient step.

    python bench/inspect_gpt2.py [--repeats N] [--warmup N] [--profile] [--workdir DIR]

The model is keras_hub's ``GPT2Backbone`` at GPT-2 "small" size (12 layers, hidden 768,
12 heads, intermediate 3072, vocabulary 50,257, max_sequence_length 1024: 124.4 M
parameters, random weights, nothing downloaded) in ``GPT2CausalLM(backbone,
preprocessor=None)``, compiled with ``SparseCategoricalCrossentropy(from_logits=True)``
and saved as ``.keras`` (about 500 MB), with a seeded batch of 4 x 64 tokens
(``token_ids``, ``padding_mask`` all ones, and ``y``: the next token).  Both are built by
a child process in a temporary directory, deleted at the end (``--workdir DIR`` builds
them there once and keeps them).  Then, alternately (A B A B ...), each a fresh process:

  A: python -m gradscope inspect MODEL --data BATCH --format json > /dev/null
  B: python bench/baseline_weight_grads.py MODEL BATCH --numpy

Each is measured from spawn to exit: wall time, CPU time (user+sys) and peak resident
memory (``ru_maxrss`` of that child alone, from ``os.wait4``).  The ``--warmup`` rounds
(default 1) are not counted; the warm-up gradscope JSON's ``global_grad_norm`` is
checked against the baseline's global norm (rtol 1e-4).  ``--profile`` then runs
bench/profile_phases.py for both sides.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from inspect_resnet50 import child_env, run_quiet, table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASELINE = HERE / "baseline_weight_grads.py"
PROFILE = HERE / "profile_phases.py"
MODEL_NAME = "gpt2_small_random.keras"
BATCH_NAME = "gpt2_batch4x64.npz"
RTOL = 1e-4

BUILD_CODE = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
import keras_hub
model_path, batch_path = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(0)
backbone = keras_hub.models.GPT2Backbone(
    vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
    intermediate_dim=3072, max_sequence_length=1024,
)
model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.save(model_path)
rng = np.random.default_rng(0)
tokens = rng.integers(0, 50257, size=(4, 65)).astype(np.int32)
np.savez(
    batch_path,
    token_ids=tokens[:, :-1],
    padding_mask=np.ones((4, 64), np.int32),
    y=tokens[:, 1:],
)
print(f"  {model.count_params():,} parameters")
"""


@dataclass(frozen=True)
class Measured:
    """One child process: wall seconds, CPU seconds (user+sys), peak RSS in GB, stdout."""

    wall: float
    cpu: float
    peak_gb: float
    stdout: str


def ensure_model(workdir: Path) -> tuple[Path, Path]:
    """The model and batch in ``workdir``, built (under temporary names, then renamed) if absent."""
    model, batch = workdir / MODEL_NAME, workdir / BATCH_NAME
    if model.exists() and batch.exists():
        print(f"model: {model}  batch: {batch}")
        return model, batch
    workdir.mkdir(parents=True, exist_ok=True)
    print("building GPT2CausalLM (12 layers, hidden 768, vocabulary 50,257) + a batch", flush=True)
    start = time.perf_counter()
    tmp_model = model.with_name("tmp_" + model.name)
    tmp_batch = batch.with_name("tmp_" + batch.name)
    run_quiet([sys.executable, "-c", BUILD_CODE, str(tmp_model), str(tmp_batch)])
    tmp_model.replace(model)
    tmp_batch.replace(batch)
    print(f"  built in {time.perf_counter() - start:.1f} s")
    return model, batch


def run_measured(cmd: list[str], workdir: Path) -> Measured:
    """Run ``cmd`` to completion; its own rusage comes from ``os.wait4`` on its pid.

    stdout and stderr go to files, not pipes, so that nothing but ``wait4`` reaps the
    child (a pipe could fill up while we wait).
    """
    out_path, err_path = workdir / "child.out", workdir / "child.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=child_env(), cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text(errors="replace")
    if proc.returncode != 0:
        sys.stderr.write(err_path.read_text(errors="replace"))
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    # ru_maxrss is in kilobytes on Linux.
    return Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1e6, stdout)


def gradscope_cmd(model: Path, batch: Path) -> list[str]:
    data = ["--data", str(batch), "--format", "json"]
    return [sys.executable, "-m", "gradscope", "inspect", str(model), *data]


def baseline_cmd(model: Path, batch: Path) -> list[str]:
    return [sys.executable, str(BASELINE), str(model), str(batch), "--numpy"]


def baseline_norm(measured: Measured) -> float:
    for line in measured.stdout.splitlines():
        if line.startswith("global_norm "):
            return float(line.split()[1])
    sys.exit(f"baseline printed no global norm: {measured.stdout!r}")


def check_norms(gradscope_json: str, norms: list[float]) -> bool:
    """gradscope's ``global_grad_norm`` against the baseline's first norm (rtol 1e-4)."""
    ours = float(json.loads(gradscope_json)["global_grad_norm"])
    theirs = norms[0]
    ok = math.isclose(ours, theirs, rel_tol=RTOL, abs_tol=0.0)
    print(
        f"global norm: gradscope {ours!r}  baseline {theirs!r}  "
        f"rel diff {abs(ours - theirs) / abs(theirs):.2e}  (rtol {RTOL:g}): "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    print(f"baseline norm spread over {len(norms)} runs: {max(norms) / min(norms) - 1:.2e}")
    return ok


def run_rounds(
    model: Path, batch: Path, workdir: Path, warmup: int, repeats: int
) -> tuple[list[Measured], list[Measured], str, list[float]]:
    """Warm-up rounds, then ``repeats`` timed rounds of A then B."""
    gradscope_json = ""
    norms: list[float] = []
    runs_a: list[Measured] = []
    runs_b: list[Measured] = []
    for round_ in range(warmup + repeats):
        a = run_measured(gradscope_cmd(model, batch), workdir)
        gradscope_json = gradscope_json or a.stdout
        b = run_measured(baseline_cmd(model, batch), workdir)
        norms.append(baseline_norm(b))
        label = f"warm-up {round_ + 1}" if round_ < warmup else f"round {round_ - warmup + 1}"
        print(
            f"{label}: gradscope {a.wall:.1f} s (CPU {a.cpu:.1f} s, {a.peak_gb:.2f} GB), "
            f"baseline {b.wall:.1f} s (CPU {b.cpu:.1f} s, {b.peak_gb:.2f} GB)",
            flush=True,
        )
        if round_ >= warmup:
            runs_a.append(a)
            runs_b.append(b)
    return runs_a, runs_b, gradscope_json, norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--profile", action="store_true", help="also time phases in-process")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="build the model here once and keep it"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gradscope_gpt2_"))
    try:
        model, batch = ensure_model(workdir)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        print(f"A: python {' '.join(gradscope_cmd(model, batch)[1:])} > /dev/null")
        print(f"B: python {' '.join(baseline_cmd(model, batch)[1:])}")
        runs_a, runs_b, gradscope_json, norms = run_rounds(
            model, batch, workdir, args.warmup, args.repeats
        )
        print()
        table("wall time (s)", [m.wall for m in runs_a], [m.wall for m in runs_b])
        print()
        table("CPU time, user+sys (s)", [m.cpu for m in runs_a], [m.cpu for m in runs_b])
        print()
        table("peak RSS (GB)", [m.peak_gb for m in runs_a], [m.peak_gb for m in runs_b])
        print()
        ok = check_norms(gradscope_json, norms)
        if args.profile:
            for side, extra in (("gradscope", []), ("baseline", ["--numpy"])):
                print()
                run_quiet([sys.executable, str(PROFILE), side, str(model), str(batch), *extra])
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
