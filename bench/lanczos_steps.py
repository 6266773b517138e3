"""How many Hessian-vector products Lanczos needs for the top-2 eigenvalues, step by step.

    python bench/pyhessian_compare.py --tools gradscope --skip-reference   # builds the model
    python bench/lanczos_steps.py [--steps 60] [--seed 0]

On the MobileNetV2 file of ``bench/pyhessian_compare.py`` (alpha 0.35, 96 px, batch 8),
it runs gradscope's fully reorthogonalized Lanczos (``spectral._lanczos_tridiagonal``, the
iteration ``gradscope hessian --method lanczos`` uses) for ``--steps`` products without
stopping, then, for every step ``j``, eigen-decomposes the leading ``T_j`` and prints the
relative error of its top-2 Ritz values against those of the last step (converged far
below 1e-6), and whether gradscope's stopping rule (every wanted Ritz pair with residual
at most ``tol * max|theta|``, ``tol = 1e-3``; with and without the smallest pair) would
have stopped there.  It answers issue 15's question whether block or thick-restart
Lanczos could reach the top-2 to 1e-3 in fewer products: both build their subspace from
the same products, and an unrestarted, fully reorthogonalized Krylov space of ``j``
products is the best any of them can do with ``j`` products; what can change is when the
iteration stops.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
MODEL = HERE / ".cache" / "mobilenetv2_035.keras"
BATCH = HERE / ".cache" / "mobilenetv2_035_batch8.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not MODEL.exists():
        raise SystemExit(f"{MODEL} is missing: run bench/pyhessian_compare.py once first")

    from gradscope import InspectOptions
    from gradscope.engine import spectral
    from gradscope.engine.hessian import HessianOperator
    from gradscope.loading.data import load_batch
    from gradscope.loading.models import load_model
    from gradscope.loading.signature import model_signature
    from gradscope.session import prepare_loss_and_batch

    model = load_model(MODEL).model
    signature = model_signature(model)
    batch = load_batch(BATCH, signature)
    spec, batch = prepare_loss_and_batch(model, signature, batch, InspectOptions())
    operator = HessianOperator(model, signature, spec, batch, model.trainable_variables)
    start = np.random.default_rng(args.seed).standard_normal(operator.size)
    alphas, betas, _ = spectral._lanczos_tridiagonal(operator.hvp, start, args.steps, None)
    final = spectral._ritz(alphas, betas).values[::-1][:2]
    print(f"{operator.size:,} parameters; top-2 after {alphas.size} steps: {final}")
    print(" step   rel. error of the top-2          stop (top-2)  stop (top-2 + smallest)")
    first: dict[str, int] = {}
    for step in range(2, alphas.size + 1):
        ritz = spectral._ritz(alphas[:step], betas[:step])
        errors = np.abs(ritz.values[::-1][:2] - final) / np.abs(final)
        top = spectral._ritz_converged(ritz, 2, 1e-3, False)
        both = spectral._ritz_converged(ritz, 2, 1e-3, True)
        for name, reached in (
            ("1e-3", bool(errors.max() <= 1e-3)),
            ("1e-5", bool(errors.max() <= 1e-5)),
            ("rule, top-2", top),
            ("rule, top-2 + smallest", both),
        ):
            if reached and name not in first:
                first[name] = step
        print(
            f" {step:4d}   {errors[0]:.1e} {errors[1]:.1e}                {top!s:5}         {both}"
        )
    for name, step in first.items():
        print(f"first step with {name}: {step}")


if __name__ == "__main__":
    main()
