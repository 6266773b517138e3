"""gradscope's top-2 Hessian eigenvalues against PyHessian's, on MobileNetV2 (alpha 0.35).

Both tools read the same ``.keras`` file and the same batch of 8:

* **gradscope**: ``gradscope hessian MODEL --data BATCH --block model --method lanczos
  --top-k 2 -f json``, run as a whole process and timed from spawn to exit.
* **PyHessian** (PyPI ``pyhessian``, PyTorch): a child process with ``KERAS_BACKEND=torch``
  loads the file with ``keras.saving.load_model`` (a ``torch.nn.Module`` under that backend),
  puts it in eval mode, and calls ``pyhessian.hessian(model, criterion, data=(x, y),
  cuda=False).eigenvalues(top_n=2)`` with Keras's categorical cross-entropy written in
  PyTorch. Its compute (the ``eigenvalues`` call) and the whole process are timed.
* **reference**: ``scipy.sparse.linalg.eigsh(which="LA", k=2)`` over gradscope's own
  Hessian-vector products (a float64 ``LinearOperator`` around ``HessianOperator.hvp``), in a
  TensorFlow-backend child process.

PyHessian and torch are not gradscope dependencies. Install them by hand (CPU torch first,
exactly this pin, so pip does not pull a CUDA build)::

    pip install torch==2.13.0
    pip install pyhessian --no-deps

    python bench/pyhessian_compare.py            # builds bench/.cache/mobilenetv2_035.* once
    python bench/pyhessian_compare.py --repeats 3 --rebuild
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
MODEL = CACHE / "mobilenetv2_035.keras"
BATCH = CACHE / "mobilenetv2_035_batch8.npz"
TOP_K = 2
TARGET_RATIO = 0.5

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


def pyhessian_child(model_path: str, batch_path: str, seed: int) -> None:
    """PyHessian on the Keras model under the torch backend; prints one JSON line."""
    import keras
    import numpy as np
    import torch
    from pyhessian import hessian

    # Count PyHessian's Hessian-vector products (its module binds the helper by name).
    module = sys.modules["pyhessian.hessian"]
    original_hvp = module.hessian_vector_product
    hvps = 0

    def counted_hvp(*args: Any) -> Any:
        nonlocal hvps
        hvps += 1
        return original_hvp(*args)

    module.hessian_vector_product = counted_hvp
    torch.manual_seed(seed)
    model = keras.saving.load_model(model_path)
    model.eval()  # PyHessian calls it too; Keras layers also default to training=False
    with np.load(batch_path) as data:
        x = torch.as_tensor(data["x"])
        y = torch.as_tensor(data["y"])

    def criterion(probabilities: Any, targets: Any) -> Any:
        # keras.losses.categorical_crossentropy on probabilities, mean over the batch.
        p = torch.clamp(probabilities, 1e-7, 1.0 - 1e-7)
        return -(targets * torch.log(p)).sum(dim=-1).mean()

    # BatchNorm must use its moving statistics: the default call must match training=False.
    with torch.no_grad():
        default_out = model(x)
        inference_out = model(x, training=False)
        loss = float(criterion(default_out, y))
    bn_gap = float((default_out - inference_out).abs().max())

    started = time.perf_counter()
    hessian_comp = hessian(model, criterion, data=(x, y), cuda=False)
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    eigenvalues, _ = hessian_comp.eigenvalues(top_n=TOP_K)
    compute_s = time.perf_counter() - started
    parameters = sum(p.numel() for p in hessian_comp.params)
    print(
        json.dumps(
            {
                "eigenvalues": [float(e) for e in eigenvalues],
                "setup_s": setup_s,
                "compute_s": compute_s,
                "hvps": hvps,
                "loss": loss,
                "bn_gap": bn_gap,
                "parameters": int(parameters),
            }
        )
    )


def reference_child(model_path: str, batch_path: str, seed: int) -> None:
    """eigsh(which="LA") over gradscope's HVPs in float64; prints one JSON line."""
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


def gradscope_run() -> tuple[dict[str, Any], float]:
    cmd = [
        sys.executable, "-m", "gradscope", "hessian", str(MODEL), "--data", str(BATCH),
        "--block", "model", "--method", "lanczos", "--top-k", str(TOP_K), "-f", "json",
    ]  # fmt: skip
    out, seconds = run_child(cmd, "tensorflow")
    return json.loads(out), seconds


def child_json(kind: str, backend: str, seed: int) -> tuple[dict[str, Any], float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--seed", str(seed)]
    out, seconds = run_child(cmd, backend)
    return json.loads(out.strip().splitlines()[-1]), seconds


def rel_errors(values: list[float], reference: list[float]) -> list[float]:
    return [abs(v - r) / abs(r) for v, r in zip(values, reference, strict=True)]


def fmt(values: list[float], spec: str = ".6g") -> str:
    return ", ".join(format(v, spec) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each tool")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--child", choices=["pyhessian", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "pyhessian":
        pyhessian_child(str(MODEL), str(BATCH), args.seed)
        return
    if args.child == "reference":
        reference_child(str(MODEL), str(BATCH), args.seed)
        return

    ensure_cache(args.rebuild)
    gs_times, ph_whole, ph_compute, ph_setup = [], [], [], []
    gs: dict[str, Any] = {}
    ph: dict[str, Any] = {}
    for i in range(args.repeats):  # alternate A B A B ...
        gs, seconds = gradscope_run()
        gs_times.append(seconds)
        ph, seconds = child_json("pyhessian", "torch", args.seed + i)
        ph_whole.append(seconds)
        ph_compute.append(ph["compute_s"])
        ph_setup.append(ph["setup_s"])
        print(
            f"  run {i + 1}: gradscope {gs_times[-1]:.1f} s  pyhessian whole {seconds:.1f} s "
            f"(compute {ph['compute_s']:.1f} s, {ph.get('hvps', '?')} HVPs, "
            f"seed {args.seed + i}: {fmt(ph['eigenvalues'])})",
            flush=True,
        )
    block = gs["blocks"][0]
    gs_vals = [float(v) for v in block["eigenvalues"]]
    ph_vals = sorted((float(v) for v in ph["eigenvalues"]), reverse=True)

    ref: dict[str, Any] | None = None
    if not args.skip_reference:
        ref, ref_seconds = child_json("reference", "tensorflow", args.seed)

    gs_s = statistics.median(gs_times)
    ph_c = statistics.median(ph_compute)
    ph_w = statistics.median(ph_whole)
    print()
    print(f"MobileNetV2 alpha 0.35, 96x96x3, batch 8: {block['size']:,} trainable parameters")
    print(
        f"loss: gradscope {gs['loss']['value']:.7g} ({gs['loss']['source']}), "
        f"PyHessian criterion {ph['loss']:.7g}; PyHessian params {ph['parameters']:,}; "
        f"torch default call vs training=False max |diff| {ph['bn_gap']:.1e}"
    )
    print()
    print(f"{'':28}{'top-2 eigenvalues':>30}{'rel. error vs reference':>30}")
    ref_vals = ref["eigenvalues"] if ref else None
    rows = [("gradscope (Lanczos)", gs_vals), ("PyHessian (power iteration)", ph_vals)]
    if ref_vals:
        rows.append(("reference (eigsh, LA)", ref_vals))
    for name, values in rows:
        errors = fmt(rel_errors(values, ref_vals), ".2e") if ref_vals else "-"
        print(f"{name:28}{fmt(values):>30}{errors:>30}")
    print()
    print(
        f"gradscope: {block['iterations']} Lanczos steps, converged={block['converged']}, "
        f"residuals {fmt(block['residuals'], '.1e')}, in-process {block['seconds']:.1f} s"
    )
    print(
        f"PyHessian (last run): {ph.get('hvps', '?')} HVPs (power iteration, maxIter=100 per "
        f"eigenvalue, tol=1e-3 on successive Rayleigh quotients)"
    )
    if ref:
        print(
            f"reference: {ref['hvps']} HVPs in {ref['seconds']:.1f} s, relative residuals "
            f"{fmt(ref['residuals'], '.1e')}; smallest eigenvalue {ref['min_eigenvalue']:.6g}; "
            f"loss {ref['loss']:.7g}; child process {ref_seconds:.1f} s"
        )
    print()
    print(f"timings (median of {args.repeats}):")
    print(f"  gradscope whole process            {gs_s:8.1f} s")
    print(f"  PyHessian setup (backward, graph)  {statistics.median(ph_setup):8.1f} s")
    print(f"  PyHessian compute (eigenvalues)    {ph_c:8.1f} s")
    print(f"  PyHessian whole process            {ph_w:8.1f} s")
    ratio = gs_s / ph_c
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(
        f"  gradscope whole / PyHessian compute {ratio:7.2f}  ({verdict} target <= {TARGET_RATIO})"
    )
    print(f"  gradscope whole / PyHessian whole   {gs_s / ph_w:7.2f}")


if __name__ == "__main__":
    main()
