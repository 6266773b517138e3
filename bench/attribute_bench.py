"""Cost of ``gradscope attribute`` against the hand-written attribution a user would write.

Model: ``keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=10,
weights=None)``, seeded, built in-process (nothing is downloaded); a seeded batch of 16
images.  For each method (saliency, SmoothGrad with 16 samples, Integrated Gradients
with 32 steps, Grad-CAM), both sides attribute the predicted class:

* **gradscope**: :func:`gradscope.commands.attribute.attribute` with ``keep_tensors``,
  from the in-memory model and arrays to the report (summaries and top positions
  included), a new engine each call, so its tracing is timed;
* **baseline**: one new ``tf.function`` per call, written by hand the way the
  tf-keras-vis/Captum recipes do it but vectorized: the batch tiled over the steps or
  samples, one ``GradientTape``, the gradients reduced over steps, fetched to numpy.

Each pair runs alternately (A B A B ...) after one untimed call of each; the table gives
the median of ``--repeats`` (default 3) and the ratio gradscope/baseline.  The two
attributions are compared (``max |difference| / max |baseline|``) so that the timing is
of the same work.

    python bench/attribute_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gradscope import _tf
from gradscope.commands.attribute.options import AttributeOptions
from gradscope.commands.attribute.run import attribute, gauss_legendre

ROWS, SIZE, CLASSES = 16, 96, 10
SAMPLES, STEPS, NOISE, SEED = 16, 32, 0.15, 0


def _model() -> Any:
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=0.35, weights=None, classes=CLASSES
    )


def _scores(model: Any, x: Any, classes: Any) -> Any:
    tf = _tf.tensorflow()
    return tf.reduce_sum(model(x, training=False) * tf.one_hot(classes, CLASSES))


def baseline_rows(model: Any, x: np.ndarray, method: str) -> np.ndarray:
    """The hand-written attribution of the predicted class (see the module doc)."""
    tf = _tf.tensorflow()
    classes = np.argmax(model(x, training=False).numpy(), axis=1)
    if method == "integrated-gradients":
        alphas, weights = gauss_legendre(STEPS)
    elif method == "smoothgrad":
        alphas, weights = np.ones(SAMPLES), np.full(SAMPLES, 1.0 / SAMPLES)
    else:
        alphas, weights = np.ones(1), np.ones(1)
    noise = np.random.default_rng(SEED).standard_normal((len(alphas), *x.shape), np.float32)
    sigma = NOISE * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    k = len(alphas)

    @tf.function
    def step(x: Any, alphas: Any, weights: Any, noise: Any) -> Any:
        tiled = tf.tile(x[None], [k, 1, 1, 1, 1])
        if method == "integrated-gradients":
            points = tiled * tf.reshape(alphas, [k, 1, 1, 1, 1])
        elif method == "smoothgrad":
            points = tiled + tf.reshape(sigma, [1, -1, 1, 1, 1]) * noise
        else:
            points = tiled
        points = tf.reshape(points, [-1, SIZE, SIZE, 3])
        with tf.GradientTape() as tape:
            tape.watch(points)
            score = _scores(model, points, tf.tile(classes, [k]))
        grads = tf.reshape(tape.gradient(score, points), [k, -1, SIZE, SIZE, 3])
        return tf.tensordot(weights, grads, axes=[[0], [0]])

    out = step(x, alphas.astype(np.float32), weights.astype(np.float32), noise).numpy()
    return out * x if method == "integrated-gradients" else out


def baseline_gradcam(model: Any, x: np.ndarray) -> np.ndarray:
    """The Keras Grad-CAM recipe (keras.io), compiled: an extractor model, one tape."""
    tf = _tf.tensorflow()
    keras = _tf.keras()
    extractor = keras.Model(model.inputs, [model.get_layer("Conv_1").output, model.output])

    @tf.function
    def step(x: Any) -> Any:
        with tf.GradientTape() as tape:
            maps, probs = extractor(x, training=False)
            score = tf.reduce_sum(probs * tf.one_hot(tf.argmax(probs, axis=1), CLASSES))
        grads = tape.gradient(score, maps)
        weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        return tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))

    return np.asarray(step(x).numpy())


def gradscope_side(model: Any, x: np.ndarray, method: str) -> np.ndarray:
    extra: dict[str, Any] = {}
    if method == "integrated-gradients":
        extra = {"steps": STEPS}
    elif method == "smoothgrad":
        extra = {"samples": SAMPLES, "noise": NOISE}
    options = AttributeOptions(method=method, target="predicted", keep_tensors=True, **extra)
    report = attribute(model, x, seed=SEED, options=options)
    if report.tensors is None:
        raise RuntimeError("the report kept no tensors")
    return np.asarray(next(iter(report.tensors.attributions.values())))


def _alternating(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = _model()
    x = np.random.default_rng(1).uniform(-1, 1, size=(ROWS, SIZE, SIZE, 3)).astype(np.float32)
    print(f"MobileNetV2 (alpha 0.35, {SIZE}x{SIZE}), {ROWS} images, predicted class")
    print(f"{'method':<22}{'gradscope s':>12}{'baseline s':>12}{'ratio':>8}{'rel diff':>10}")
    for method in ("saliency", "smoothgrad", "integrated-gradients", "gradcam"):

        def ours(method: str = method) -> np.ndarray:
            return gradscope_side(model, x, method)

        def theirs(method: str = method) -> np.ndarray:
            if method == "gradcam":
                return baseline_gradcam(model, x)
            return baseline_rows(model, x, method)

        medians = _alternating({"gradscope": ours, "baseline": theirs}, args.repeats)
        a, b = ours(), theirs()
        diff = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
        ratio = medians["gradscope"] / medians["baseline"]
        print(
            f"{method:<22}{medians['gradscope']:>12.2f}{medians['baseline']:>12.2f}"
            f"{ratio:>8.2f}{diff:>10.1e}"
        )


if __name__ == "__main__":
    main()
