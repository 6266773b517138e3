"""gradscope's top-2 Hessian eigenvalues against PyHessian's and hessian-eigenthings', on
MobileNetV2 (alpha 0.35).

All tools read the same ``.keras`` file and the same batch of 8:

* **gradscope**: ``gradscope hessian MODEL --data BATCH --block model --method lanczos
  --top-k 2 -f json``, run as a whole process and timed from spawn to exit; its own
  in-process time of the block (the JSON's ``seconds``) is its "compute".
* **PyHessian** (PyPI ``pyhessian``, PyTorch): a child process with ``KERAS_BACKEND=torch``
  loads the file with ``keras.saving.load_model`` (a ``torch.nn.Module`` under that backend),
  puts it in eval mode, and calls ``pyhessian.hessian(model, criterion, data=(x, y),
  cuda=False).eigenvalues(top_n=2)`` with Keras's categorical cross-entropy written in
  PyTorch. Its compute (the ``eigenvalues`` call) and the whole process are timed.
* **hessian-eigenthings 1.0** (PyPI ``hessian-eigenthings``, PyTorch): a child process set
  up exactly as PyHessian's (same model loading, eval mode, same criterion) builds
  ``HessianOperator(model, [(x, y)], supervised_loss(criterion))`` over every parameter that
  requires a gradient (the trainable ones) and the one batch, and calls ``lanczos(operator,
  k=2, max_iter=40, which="LA", seed=SEED)``. Library defaults otherwise: operator
  ``method="autograd"`` (double backward), ``full_dataset=True`` (every product averages
  over all batches of the iterable: here the one batch), no parameter filter, no
  microbatching; ``lanczos`` ``tol=1e-4`` (only sets the ``converged`` flags: it always
  takes ``max_iter`` steps) and ``reorthogonalize=None`` (full reorthogonalization for
  ``max_iter <= 50``). Its compute (the ``lanczos`` call) and the whole process are timed;
  its products are counted by wrapping the operator's ``matvec``.
* **reference**: ``scipy.sparse.linalg.eigsh(which="LA", k=2)`` over gradscope's own
  Hessian-vector products (a float64 ``LinearOperator`` around ``HessianOperator.hvp``), in a
  TensorFlow-backend child process.

Each round runs the chosen tools in turn (A B C A B C ...); times are medians over rounds.

On a shared machine, torch's default (one intra-op thread per core) can stall: its OpenMP
threads wait at every parallel region for a peer that another process has descheduled.
Seen on 2 loaded cores: the same eigenthings product took 0.45 s with one thread and 0.5 to
27 s with two. ``--torch-threads N`` sets ``torch.set_num_threads(N)`` in the torch
children; the count is printed either way.

PyHessian, hessian-eigenthings and torch are not gradscope dependencies. Install them by
hand (CPU torch first, exactly this pin, so pip does not pull a CUDA build)::

    pip install torch==2.13.0
    pip install pyhessian --no-deps
    pip install hessian-eigenthings==1.0.0a5   # needs numpy, scipy, torch, tqdm

    python bench/pyhessian_compare.py            # builds bench/.cache/mobilenetv2_035.* once
    python bench/pyhessian_compare.py --repeats 5 --rebuild
    python bench/pyhessian_compare.py --tools gradscope eigenthings --skip-reference
    python bench/pyhessian_compare.py --torch-threads 1   # a loaded machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
MODEL = CACHE / "mobilenetv2_035.keras"
BATCH = CACHE / "mobilenetv2_035_batch8.npz"
TOP_K = 2
EIGENTHINGS_STEPS = 40  # the setting: Lanczos, which="LA", 40 iterations
TOOLS = ("gradscope", "pyhessian", "eigenthings")
LABELS = {
    "gradscope": "gradscope (Lanczos)",
    "pyhessian": "PyHessian (power iteration)",
    "eigenthings": f"eigenthings (Lanczos LA, {EIGENTHINGS_STEPS})",
    "reference": "reference (eigsh, LA)",
}
# gradscope's whole process against each tool's compute: the targets.
TARGETS = {"pyhessian": 0.5, "eigenthings": 1.0}

BUILD_CODE = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
model_path, batch_path = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(0)
model = keras.applications.MobileNetV2(
    alpha=0.35, weights=None, input_shape=(96, 96, 3), classes=10
)
model.compile(loss="categorical_crossentropy")
model.save(model_path)
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 96, 96, 3)).astype(np.float32)
y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, size=8)]
np.savez(batch_path, x=x, y=y)
"""


def child_env(backend: str) -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["KERAS_BACKEND"] = backend
    return env


def run_child(cmd: list[str], backend: str) -> tuple[str, float]:
    """Run ``cmd``; return its stdout and its wall time. Its stderr is shown only on failure."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=child_env(backend), cwd=REPO, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return proc.stdout, seconds


def ensure_cache(rebuild: bool) -> None:
    if MODEL.exists() and BATCH.exists() and not rebuild:
        print(f"cached model: {MODEL.relative_to(REPO)}  batch: {BATCH.relative_to(REPO)}")
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    print("building MobileNetV2 (alpha 0.35, weights=None, 96x96x3, 10 classes) + a batch of 8")
    tmp_model = MODEL.with_name("tmp_" + MODEL.name)
    tmp_batch = BATCH.with_name("tmp_" + BATCH.name)
    run_child([sys.executable, "-c", BUILD_CODE, str(tmp_model), str(tmp_batch)], "tensorflow")
    tmp_model.replace(MODEL)
    tmp_batch.replace(BATCH)


# --------------------------------------------------------------------------- children


def keras_cce(probabilities: Any, targets: Any) -> Any:
    """``keras.losses.categorical_crossentropy`` on probabilities, mean over the batch."""
    import torch

    p = torch.clamp(probabilities, 1e-7, 1.0 - 1e-7)
    return -(targets * torch.log(p)).sum(dim=-1).mean()


def torch_model_and_batch(
    model_path: str, batch_path: str, seed: int, threads: int
) -> tuple[Any, Any, Any, dict[str, float]]:
    """The model under the torch backend (used as is, eval mode), the batch as tensors, and
    checks: the criterion's loss, how far the default call is from ``training=False``, and
    torch's intra-op threads (``threads``, or torch's default if 0)."""
    import keras
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = keras.saving.load_model(model_path)
    model.eval()  # PyHessian calls it too; Keras layers also default to training=False
    with np.load(batch_path) as data:
        x = torch.as_tensor(data["x"])
        y = torch.as_tensor(data["y"])
    # BatchNorm must use its moving statistics: the default call must match training=False.
    with torch.no_grad():
        default_out = model(x)
        inference_out = model(x, training=False)
        loss = float(keras_cce(default_out, y))
    bn_gap = float((default_out - inference_out).abs().max())
    checks = {"loss": loss, "bn_gap": bn_gap, "threads": torch.get_num_threads()}
    return model, x, y, checks


def pyhessian_child(model_path: str, batch_path: str, seed: int, threads: int) -> None:
    """PyHessian on the Keras model under the torch backend; prints one JSON line."""
    from pyhessian import hessian

    # Count PyHessian's Hessian-vector products (its module binds the helper by name).
    module: Any = sys.modules["pyhessian.hessian"]
    original_hvp = module.hessian_vector_product
    hvps = 0

    def counted_hvp(*args: Any) -> Any:
        nonlocal hvps
        hvps += 1
        return original_hvp(*args)

    module.hessian_vector_product = counted_hvp
    model, x, y, checks = torch_model_and_batch(model_path, batch_path, seed, threads)
    started = time.perf_counter()
    hessian_comp = hessian(model, keras_cce, data=(x, y), cuda=False)
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    eigenvalues, _ = hessian_comp.eigenvalues(top_n=TOP_K)
    compute_s = time.perf_counter() - started
    parameters = sum(p.numel() for p in hessian_comp.params)
    result = {
        "eigenvalues": [float(e) for e in eigenvalues],
        "setup_s": setup_s,
        "compute_s": compute_s,
        "hvps": hvps,
        "parameters": int(parameters),
    }
    print(json.dumps(result | checks))


def eigenthings_child(model_path: str, batch_path: str, seed: int, threads: int) -> None:
    """hessian-eigenthings 1.0 Lanczos (``which="LA"``, 40 steps) on the Keras model under
    the torch backend; prints one JSON line."""
    from hessian_eigenthings import HessianOperator, lanczos, supervised_loss

    model, x, y, checks = torch_model_and_batch(model_path, batch_path, seed, threads)
    started = time.perf_counter()
    # The dataloader is any iterable of batches; with full_dataset=True (the default) each
    # product averages over all of them: here the one (input, target) batch.
    operator = HessianOperator(model, [(x, y)], supervised_loss(keras_cce))
    setup_s = time.perf_counter() - started
    # Count the products: lanczos calls operator.matvec, which the instance attribute shadows.
    original_matvec = operator.matvec
    hvps = 0

    def counted_matvec(vector: Any) -> Any:
        nonlocal hvps
        hvps += 1
        return original_matvec(vector)

    operator.matvec = counted_matvec
    started = time.perf_counter()
    found = lanczos(operator, k=TOP_K, max_iter=EIGENTHINGS_STEPS, which="LA", seed=seed)
    compute_s = time.perf_counter() - started
    result = {
        "eigenvalues": [float(e) for e in found.eigenvalues],
        "residuals": [float(r) for r in found.residuals],
        "converged": [bool(c) for c in found.converged],
        "iterations": int(found.iterations),
        "setup_s": setup_s,
        "compute_s": compute_s,
        "hvps": hvps,
        "parameters": int(operator.size),
        "dtype": str(operator.dtype),
    }
    print(json.dumps(result | checks))


def reference_child(model_path: str, batch_path: str, seed: int, threads: int) -> None:
    """eigsh(which="LA") over gradscope's HVPs in float64; prints one JSON line.
    ``threads`` is for the torch children only."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    from gradscope import InspectOptions
    from gradscope.engine.hessian import HessianOperator
    from gradscope.loading.data import load_batch
    from gradscope.loading.models import load_model
    from gradscope.loading.signature import model_signature
    from gradscope.session import prepare_loss_and_batch

    model = load_model(Path(model_path)).model
    signature = model_signature(model)
    batch = load_batch(Path(batch_path), signature)
    spec, batch = prepare_loss_and_batch(model, signature, batch, InspectOptions())
    operator = HessianOperator(model, signature, spec, batch, model.trainable_variables)
    calls = 0

    def matvec(vector: Any) -> Any:
        nonlocal calls
        calls += 1
        return operator.hvp(np.asarray(vector, dtype=np.float64).ravel())

    linear = LinearOperator((operator.size, operator.size), matvec=matvec, dtype=np.float64)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    values, vectors = eigsh(
        linear, k=TOP_K, which="LA", tol=1e-8, ncv=20, v0=rng.standard_normal(operator.size)
    )
    seconds = time.perf_counter() - started
    order = np.argsort(values)[::-1]
    residuals = [
        float(np.linalg.norm(operator.hvp(vectors[:, i]) - values[i] * vectors[:, i]))
        / abs(float(values[i]))
        for i in order
    ]
    # Also the bottom of the spectrum: PyHessian's power iteration finds the largest |λ|.
    low, _ = eigsh(linear, k=1, which="SA", tol=1e-6, ncv=20, v0=rng.standard_normal(operator.size))
    print(
        json.dumps(
            {
                "eigenvalues": [float(values[i]) for i in order],
                "residuals": residuals,
                "min_eigenvalue": float(low[0]),
                "hvps": calls,
                "seconds": seconds,
                "loss": operator.loss_value(),
                "parameters": operator.size,
            }
        )
    )


# --------------------------------------------------------------------------- parent


@dataclass(frozen=True)
class Run:
    """One run of one tool: top-k eigenvalues (descending), products, times, raw output."""

    eigenvalues: list[float]
    hvps: int
    compute_s: float
    whole_s: float
    raw: dict[str, Any]


def gradscope_run() -> Run:
    cmd = [
        sys.executable, "-m", "gradscope", "hessian", str(MODEL), "--data", str(BATCH),
        "--block", "model", "--method", "lanczos", "--top-k", str(TOP_K), "-f", "json",
    ]  # fmt: skip
    out, seconds = run_child(cmd, "tensorflow")
    report = json.loads(out)
    block = report["blocks"][0]
    values = [float(v) for v in block["eigenvalues"]]
    return Run(values, int(block["iterations"]), float(block["seconds"]), seconds, report)


def child_json(
    kind: str, backend: str, seed: int, threads: int = 0
) -> tuple[dict[str, Any], float]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", kind, "--seed", str(seed),
        "--torch-threads", str(threads),
    ]  # fmt: skip
    out, seconds = run_child(cmd, backend)
    return json.loads(out.strip().splitlines()[-1]), seconds


def torch_run(tool: str, seed: int, threads: int) -> Run:
    """A PyHessian or eigenthings child; its eigenvalues sorted descending."""
    out, seconds = child_json(tool, "torch", seed, threads)
    values = sorted((float(v) for v in out["eigenvalues"]), reverse=True)
    return Run(values, int(out["hvps"]), float(out["compute_s"]), seconds, out)


def reference_run(seed: int) -> Run:
    out, seconds = child_json("reference", "tensorflow", seed)
    return Run(out["eigenvalues"], int(out["hvps"]), float(out["seconds"]), seconds, out)


def run_tool(tool: str, seed: int, threads: int) -> Run:
    return gradscope_run() if tool == "gradscope" else torch_run(tool, seed, threads)


def rel_errors(values: list[float], reference: list[float]) -> list[float]:
    return [abs(v - r) / abs(r) for v, r in zip(values, reference, strict=True)]


def fmt(values: list[float], spec: str = ".6g") -> str:
    return ", ".join(format(v, spec) for v in values)


def run_line(i: int, tool: str, seed: int, run: Run) -> str:
    seeded = "" if tool == "gradscope" else f", seed {seed}"
    return (
        f"  run {i + 1} {tool:12} whole {run.whole_s:6.1f} s  compute {run.compute_s:6.1f} s  "
        f"{run.hvps:4d} HVPs{seeded}: {fmt(run.eigenvalues)}"
    )


def rounds(tools: list[str], repeats: int, seed: int, threads: int) -> dict[str, list[Run]]:
    """``repeats`` rounds, each running every tool once in turn (A B C A B C ...)."""
    runs: dict[str, list[Run]] = {tool: [] for tool in tools}
    for i in range(repeats):
        for tool in tools:
            run = run_tool(tool, seed + i, threads)
            runs[tool].append(run)
            print(run_line(i, tool, seed + i, run), flush=True)
    return runs


def median_compute(runs: list[Run]) -> float:
    return statistics.median(run.compute_s for run in runs)


def median_whole(runs: list[Run]) -> float:
    return statistics.median(run.whole_s for run in runs)


def print_checks(runs: dict[str, list[Run]]) -> None:
    """Loss and parameter count on each side, and the BatchNorm mode under torch."""
    parts = []
    if "gradscope" in runs:
        report = runs["gradscope"][-1].raw
        block = report["blocks"][0]
        parts.append(
            f"gradscope loss {report['loss']['value']:.7g} ({report['loss']['source']}), "
            f"{block['size']:,} params"
        )
    for tool in ("pyhessian", "eigenthings"):
        if tool in runs:
            out = runs[tool][-1].raw
            parts.append(
                f"{tool} criterion {out['loss']:.7g}, {out['parameters']:,} params, "
                f"{out['threads']} torch thread(s), default call vs training=False "
                f"max |diff| {out['bn_gap']:.1e}"
            )
    print("MobileNetV2 alpha 0.35, 96x96x3, batch 8")
    for part in parts:
        print(f"  {part}")


def print_table(runs: dict[str, list[Run]], ref: Run | None) -> None:
    """Per tool: eigenvalues and HVPs of its last run, errors, median times."""
    print(
        f"{'':29}{'top-2 eigenvalues':>22}{'rel. error vs reference':>24}"
        f"{'HVPs':>6}{'compute s':>11}{'whole s':>8}"
    )
    rows = [(LABELS[tool], tool_runs[-1], tool_runs) for tool, tool_runs in runs.items()]
    if ref is not None:
        rows.append((LABELS["reference"], ref, [ref]))
    for label, last, tool_runs in rows:
        errors = fmt(rel_errors(last.eigenvalues, ref.eigenvalues), ".2e") if ref else "-"
        print(
            f"{label:29}{fmt(last.eigenvalues):>22}{errors:>24}{last.hvps:6d}"
            f"{median_compute(tool_runs):11.1f}{median_whole(tool_runs):8.1f}"
        )
    print("  eigenvalues, errors and HVPs: last run; times: medians over runs")
    print("  gradscope's compute: its in-process block time (the JSON's `seconds`)")


def print_details(runs: dict[str, list[Run]], ref: Run | None) -> None:
    if "gradscope" in runs:
        block = runs["gradscope"][-1].raw["blocks"][0]
        print(
            f"gradscope: {block['iterations']} Lanczos steps, converged={block['converged']}, "
            f"residuals {fmt(block['residuals'], '.1e')}"
        )
    if "pyhessian" in runs:
        setup = statistics.median(run.raw["setup_s"] for run in runs["pyhessian"])
        print(
            f"PyHessian: power iteration, maxIter=100 per eigenvalue, tol=1e-3 on successive "
            f"Rayleigh quotients; setup (forward, backward with graph) {setup:.1f} s"
        )
    if "eigenthings" in runs:
        out = runs["eigenthings"][-1].raw
        setup = statistics.median(run.raw["setup_s"] for run in runs["eigenthings"])
        print(
            f"eigenthings: {out['iterations']} Lanczos steps ({out['dtype']}, full "
            f"reorthogonalization), residuals |beta*s| {fmt(out['residuals'], '.1e')}, "
            f"converged at tol 1e-4: {out['converged']}; operator setup {setup:.2f} s"
        )
    if ref is not None:
        out = ref.raw
        print(
            f"reference: relative residuals {fmt(out['residuals'], '.1e')}; smallest "
            f"eigenvalue {out['min_eigenvalue']:.6g}; loss {out['loss']:.7g}"
        )


def print_ratios(runs: dict[str, list[Run]]) -> None:
    """gradscope's whole process against the others' compute (the targets) and whole."""
    if "gradscope" not in runs:
        return
    gs_whole = median_whole(runs["gradscope"])
    for tool, target in TARGETS.items():
        if tool not in runs:
            continue
        ratio = gs_whole / median_compute(runs[tool])
        name = LABELS[tool].split()[0]
        whole = gs_whole / median_whole(runs[tool])
        verdict = f"{'meets' if ratio <= target else 'misses'} target <= {target}"
        print(f"  {f'gradscope whole / {name} compute':40}{ratio:6.2f}  ({verdict})")
        print(f"  {f'gradscope whole / {name} whole':40}{whole:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; times are medians")
    parser.add_argument(
        "--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="tools to run, in order"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached model")
    parser.add_argument("--seed", type=int, default=0, help="torch tools: seed + round")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch children's threads (0: default)"
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](str(MODEL), str(BATCH), args.seed, args.torch_threads)
        return

    ensure_cache(args.rebuild)
    runs = rounds(list(dict.fromkeys(args.tools)), args.repeats, args.seed, args.torch_threads)
    ref = None if args.skip_reference else reference_run(args.seed)
    print()
    print_checks(runs)
    print()
    print_table(runs, ref)
    print()
    print_details(runs, ref)
    print()
    note = "" if args.repeats >= 3 else "; fewer than 3 runs: not a timing result"
    print(f"ratios (medians of {args.repeats}{note}):")
    print_ratios(runs)


CHILDREN = {
    "pyhessian": pyhessian_child,
    "eigenthings": eigenthings_child,
    "reference": reference_child,
}

if __name__ == "__main__":
    main()
