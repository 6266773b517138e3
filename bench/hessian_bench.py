"""Cost of gradscope's curvature machinery, on the sample CNN and on ResNet50.

For each model it reports:

* one forward evaluation of the loss, as the unit of work the other two are counted in;
* one Hessian-vector product (``HessianOperator.hvp``: back-over-back, compiled, from a
  float64 numpy vector to a float64 numpy vector) as a multiple of one compiled gradient
  step on the same batch (its gradients fetched to numpy), both in steady state, timed
  alternately, median of ``--repeats``;
* the HVPs Lanczos needs for the top eigenvalue of the whole model to a relative
  residual of 1e-3 (H is never formed);
* the time of one exact block of about 4096 parameters (four 32x32 sigmoid layers of the
  sample ``deep_sigmoid`` model, 4,224 parameters).

Run ``python bench/inspect_resnet50.py`` once first: it builds the cached ResNet50.

    python bench/hessian_bench.py [--repeats 5] [--skip-resnet]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from gradscope import InspectOptions, _tf
from gradscope.commands.hessian import HessianOptions, hessian_file
from gradscope.engine.hessian import HessianOperator
from gradscope.engine.spectral import lanczos
from gradscope.loading.data import load_batch
from gradscope.loading.models import load_model
from gradscope.loading.signature import model_signature
from gradscope.session import prepare_loss_and_batch

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "sample_models"
RESNET = (
    HERE / ".cache" / "resnet50_128_c10.keras",
    HERE / ".cache" / "resnet50_128_c10_batch8.npz",
)


def _alternating_medians(functions: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed alternately (A B A B ...) after one
    untimed call of each (the trace and the graph optimization)."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _gradient_step(operator: HessianOperator) -> Any:
    """One compiled gradient of the same loss with respect to the same variables."""
    tf = _tf.tensorflow()

    arguments = operator._arguments(operator.data.first)

    @tf.function
    def step() -> Any:
        with tf.GradientTape() as tape:
            loss = operator._loss(arguments)
        return tape.gradient(loss, operator.variables)

    return lambda: [g.numpy() for g in step()]


def _forward_pass(operator: HessianOperator) -> Any:
    """One compiled evaluation of the same loss (no gradient)."""
    tf = _tf.tensorflow()

    arguments = operator._arguments(operator.data.first)

    @tf.function
    def loss() -> Any:
        return operator._loss(arguments)

    return lambda: loss().numpy()


def measure(model_path: Path, data_path: Path, repeats: int) -> dict[str, float]:
    model = load_model(model_path).model
    signature = model_signature(model)
    batch = load_batch(data_path, signature)
    spec, batch = prepare_loss_and_batch(model, signature, batch, InspectOptions())
    operator = HessianOperator(model, signature, spec, batch, model.trainable_variables)
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(operator.size)
    medians = _alternating_medians(
        {
            "forward": _forward_pass(operator),
            "gradient": _gradient_step(operator),
            "hvp": lambda: operator.hvp(vector),
        },
        repeats,
    )
    gradient_seconds, hvp_seconds = medians["gradient"], medians["hvp"]
    started = time.perf_counter()
    result = lanczos(operator.hvp, operator.size, k=1, tol=1e-3, max_iter=100, rng=rng)
    lanczos_seconds = time.perf_counter() - started
    return {
        "parameters": operator.size,
        "forward_s": medians["forward"],
        "gradient_s": gradient_seconds,
        "hvp_s": hvp_seconds,
        "hvp_over_gradient": hvp_seconds / gradient_seconds,
        "lanczos_hvps": result.iterations,
        "lanczos_s": lanczos_seconds,
        "top_eigenvalue": float(result.eigenvalues[0]),
        "converged": float(result.converged),
    }


def exact_block_seconds() -> tuple[int, float]:
    """One exact block of about 4096 parameters, the whole ``hessian`` pipeline included."""
    layers = "dense_02,dense_03,dense_04,dense_05"
    options = HessianOptions(layers=layers, block="model", method="exact")
    started = time.perf_counter()
    report = hessian_file(
        SAMPLES / "deep_sigmoid.keras", SAMPLES / "deep_sigmoid.npz", options=options
    )
    return report.blocks[0].size, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    runs = {"cnn (sample)": (SAMPLES / "cnn.keras", SAMPLES / "cnn.npz")}
    if not args.skip_resnet and RESNET[0].exists():
        runs["ResNet50 128x128, batch 8"] = RESNET
    for name, (model_path, data_path) in runs.items():
        figures = measure(model_path, data_path, args.repeats)
        print(f"{name}: {figures['parameters']:,} parameters")
        forward = figures["forward_s"]
        print(
            f"  forward {forward:.3f} s, gradient step {figures['gradient_s']:.3f} s "
            f"({figures['gradient_s'] / forward:.2f} forwards), HVP {figures['hvp_s']:.3f} s "
            f"({figures['hvp_s'] / forward:.2f} forwards), ratio {figures['hvp_over_gradient']:.2f}"
        )
        print(
            f"  Lanczos top eigenvalue {figures['top_eigenvalue']:.6g} after "
            f"{figures['lanczos_hvps']} HVPs ({figures['lanczos_s']:.1f} s, "
            f"converged={bool(figures['converged'])})"
        )
    size, seconds = exact_block_seconds()
    print(f"exact block of {size:,} parameters (deep_sigmoid dense_02..05): {seconds:.2f} s")


if __name__ == "__main__":
    main()
