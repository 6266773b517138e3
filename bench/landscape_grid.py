"""A 21 x 21 loss landscape of ResNet50: gradscope's compiled grid against a plain loop.

The model is ``keras.applications.ResNet50(weights=None)`` on 32x32x3 inputs, 10 classes,
a batch of 8 rows (sparse categorical crossentropy), with two random filter-normalized
directions (``gradscope landscape --grid -1:1:21,-1:1:21``).  Two ways to get the loss at
a point:

* gradscope: :class:`gradscope.engine.landscape.LossSurface`, one compiled function
  traced once, each call a loop inside the graph over a chunk of points, the weights
  substituted through ``keras.StatelessScope`` (never assigned);
* baseline, the hand-written loop: ``model.set_weights(theta + a d1 + b d2)`` then
  ``model.evaluate(x, y)`` for each point.

Both run side by side, alternating, ``--repeats`` rounds (median reported): gradscope on
one row of the grid (21 points) a round, the baseline on ``--baseline-points`` points of
that row (a subset: every point costs the same).  The losses of the points both
computed are checked to agree (rtol 1e-4).  ``--full`` also times the whole 441-point
grid through ``gradscope.landscape`` once, and checks it traced once.

    python bench/landscape_grid.py [--repeats 3] [--baseline-points 5] [--full]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from gradscope import LandscapeOptions, _tf
from gradscope.commands.inspect.options import InspectOptions
from gradscope.engine.landscape import Combination, LossSurface, filter_normalized
from gradscope.loading.signature import model_signature
from gradscope.session import batch_from_arrays, prepare_loss_and_batch

ROWS = 8
AXIS = np.linspace(-1.0, 1.0, 21)


def _model_and_batch() -> tuple[Any, np.ndarray, np.ndarray]:
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
    model.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((ROWS, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, ROWS)
    return model, x, y


def _surface(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[LossSurface, list[Any]]:
    signature = model_signature(model)
    batch = batch_from_arrays(signature, x, y)
    spec, batch = prepare_loss_and_batch(
        model, signature, batch, InspectOptions(None, False, 0, ROWS)
    )
    variables = tuple(model.trainable_variables)
    theta = tuple(np.asarray(v.numpy(), np.float64) for v in variables)
    rng = np.random.default_rng(0)
    directions = [filter_normalized(theta, rng) for _ in range(2)]
    combination = Combination(variables, theta, tuple(tuple(d) for d in directions))
    return LossSurface(model, signature, spec, batch, combination), [theta, *directions]


def _baseline(model: Any, x: np.ndarray, y: np.ndarray, arrays: list[Any], points: Any) -> Any:
    """The hand-written loop: set every weight, evaluate, for each point."""
    theta, d1, d2 = arrays
    trainable = {id(v) for v in model.trainable_variables}
    fixed = {id(v): v.numpy() for v in model.weights if id(v) not in trainable}
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    losses = []
    for a, b in points:
        weights = [
            (theta[index[id(v)]] + a * d1[index[id(v)]] + b * d2[index[id(v)]]).astype(np.float32)
            if id(v) in index
            else fixed[id(v)]
            for v in model.weights
        ]
        model.set_weights(weights)
        losses.append(model.evaluate(x, y, batch_size=ROWS, verbose=0))
    model.set_weights(
        [theta[index[id(v)]] if id(v) in index else fixed[id(v)] for v in model.weights]
    )
    return np.asarray(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-points", type=int, default=5)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()

    model, x, y = _model_and_batch()
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    print(f"ResNet50 32x32x3, {params:,} trainable parameters, batch of {ROWS} rows")
    started = time.perf_counter()
    surface, arrays = _surface(model, x, y)
    row = np.stack([np.full_like(AXIS, 0.5), AXIS], axis=1)  # the row x = 0.5 of the grid
    first = surface.losses(row)
    print(f"gradscope: build + trace + first 21 points: {time.perf_counter() - started:.1f}s")
    subset = row[np.linspace(0, 20, args.baseline_points).round().astype(int)]
    reference = _baseline(model, x, y, arrays, subset)  # warm-up (builds evaluate's function)
    mine_rows = [int(np.argmin(np.abs(AXIS - b))) for _, b in subset]
    np.testing.assert_allclose(first[mine_rows], reference, rtol=1e-4)
    print(f"losses agree at {len(subset)} points (rtol 1e-4): {np.round(reference, 4)}")

    ours, theirs = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        surface.losses(row)
        ours.append((time.perf_counter() - t) / len(row))
        t = time.perf_counter()
        _baseline(model, x, y, arrays, subset)
        theirs.append((time.perf_counter() - t) / len(subset))
    mine, base = statistics.median(ours), statistics.median(theirs)
    print(
        f"per point, median of {args.repeats}: gradscope {1000 * mine:.1f} ms, "
        f"set_weights + evaluate {1000 * base:.1f} ms: x{base / mine:.2f}"
    )
    print(
        f"  gradscope rounds {[round(1000 * s, 1) for s in ours]} ms, "
        f"baseline rounds {[round(1000 * s, 1) for s in theirs]} ms"
    )
    print(f"traces of the grid function: {surface.traces}")
    if args.full:
        import gradscope

        t = time.perf_counter()
        report = gradscope.landscape(
            model, x, y, options=LandscapeOptions(grid="-1:1:21,-1:1:21", seed=0)
        )
        print(
            f"full 21x21 grid through gradscope.landscape: {time.perf_counter() - t:.1f}s, "
            f"{report.timing.points} points, {report.timing.traces} trace, "
            f"{1000 * report.timing.seconds / report.timing.points:.1f} ms a point all in"
        )


if __name__ == "__main__":
    main()
