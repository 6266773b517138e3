"""The edge-of-stability story of issue 14, with a reference that shares nothing with gradscope.

A tiny regression MLP (6 inputs, 16 tanh units, 1 linear output, mean squared error) is
trained full-batch (the training batch is the probe batch, so the Hessian is the one of the
training loss) with ``keras.optimizers.SGD`` and a linear learning-rate warm-up
(``keras.optimizers.schedules.PolynomialDecay`` with ``power=1`` and a larger end rate).
Both runs are scaled by the *stable rate* ``2 / λmax`` of the untrained model:

* diverging run: the rate rises linearly from 0.65× to 3× the stable rate over the whole
  run (``WARMUP_STEPS == STEPS``, about +0.1× per step); the edge-of-stability ratio
  ``λmax · lr / 2`` climbs through 1 at step 3-4, and 8-13 steps later (as the rate
  passes about 2× the stable rate) the loss blows up more than 10× above its minimum;
* stable run: the same warm-up from 0.15× to only 0.5× the stable rate: the ratio stays
  near 0.5 and the loss only falls.

Each record is taken *after* an optimizer step ``s`` (``optimizer.iterations == s``): the
loss and ``λmax`` at the current weights, and ``lr = schedule(s)``, the rate of the *next*
step, the one whose stability ``λmax`` decides.

:func:`reference_sharpness` is a plain Lanczos iteration (full reorthogonalization, float64
numpy) over Hessian-vector products from two nested ``tf.GradientTape``.  The helpers
:func:`first_loss_blowup` and :func:`eos_crossing` are pure numpy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROWS, FEATURES, WIDTH = 32, 6, 16
STEPS = 24  # full-batch SGD steps (one epoch each: ``fit(..., epochs=STEPS)``)
WARMUP_STEPS = 24  # linear warm-up over the whole run
LANCZOS_STEPS = 20
# Steps from the first record with ratio >= 0.9 to the first loss 10x above the minimum so
# far, seeds 0-9: 8-13 recording every step, 8-14 every 2nd step (14: seed 5); seed 0: 8.
MAX_GAP_STEPS = 14


@dataclass(frozen=True)
class StoryRun:
    """A warm-up from ``start`` to ``end`` times the stable rate ``2 / λmax(init)``."""

    name: str
    start: float
    end: float

    def schedule(self, sharpness0: float) -> Any:
        """The Keras schedule: linear from ``start`` to ``end`` stable rates, then flat."""
        import keras

        stable = 2.0 / sharpness0
        return keras.optimizers.schedules.PolynomialDecay(
            initial_learning_rate=self.start * stable,
            decay_steps=WARMUP_STEPS,
            end_learning_rate=self.end * stable,
            power=1.0,
        )


DIVERGING = StoryRun("diverging", start=0.65, end=3.0)
STABLE = StoryRun("stable", start=0.15, end=0.5)


def story_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``ROWS`` float32 rows of ``y = sin(x·w / 2) + noise``, as in the regression sample."""
    rng = np.random.default_rng(1000 + seed)
    w = rng.normal(size=(FEATURES, 1))
    x = rng.normal(size=(ROWS, FEATURES)).astype("float32")
    y = (np.sin(x @ w / 2.0) + 0.05 * rng.normal(size=(ROWS, 1))).astype("float32")
    return x, y


def story_network(seed: int) -> Any:
    """The uncompiled MLP, its weights drawn from ``keras.utils.set_random_seed(seed)``."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,), name="x")
    hidden = keras.layers.Dense(WIDTH, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, name="prediction")(hidden)
    return keras.Model(inputs, outputs, name="eos_story")


def build_story_model(seed: int, run: StoryRun = DIVERGING) -> Any:
    """The MLP compiled with ``SGD(run.schedule(λmax at init))`` and ``loss="mse"``."""
    import keras

    model = story_network(seed)
    x, y = story_data(seed)
    sharpness0 = reference_sharpness(model, x, y)
    model.compile(optimizer=keras.optimizers.SGD(run.schedule(sharpness0)), loss="mse")
    return model


# -- reference sharpness -------------------------------------------------------------------


def _hvp_function(model: Any, x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``v -> H v`` for the mean squared error of ``model`` on ``(x, y)``, flat float64."""
    import tensorflow as tf

    variables = list(model.trainable_variables)
    shapes = [tuple(v.shape) for v in variables]
    sizes = [int(np.prod(s)) for s in shapes]
    xt, yt = tf.constant(x), tf.constant(y)

    @tf.function  # type: ignore[untyped-decorator]
    def hvp(vectors: list[Any]) -> Any:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = tf.reduce_mean(tf.square(yt - model(xt, training=True)))
            grads = inner.gradient(loss, variables)
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vectors, strict=True)])
        return outer.gradient(dot, variables)

    def matvec(flat: np.ndarray) -> np.ndarray:
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        vectors = [
            tf.constant(p.reshape(s), tf.float32) for p, s in zip(parts, shapes, strict=True)
        ]
        return np.concatenate([np.ravel(h.numpy()) for h in hvp(vectors)]).astype(np.float64)

    return matvec


def lanczos_max(matvec: Callable[[np.ndarray], np.ndarray], n: int, steps: int) -> float:
    """The largest Ritz value after ``steps`` Lanczos steps from a fixed random start."""
    basis = [np.random.default_rng(0).standard_normal(n)]
    basis[0] /= np.linalg.norm(basis[0])
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(min(steps, n)):
        w = matvec(basis[-1])
        alphas.append(float(w @ basis[-1]))
        for _ in range(2):  # full reorthogonalization, twice is enough
            q = np.stack(basis)
            w = w - q.T @ (q @ w)
        beta = float(np.linalg.norm(w))
        if len(alphas) == min(steps, n) or beta < 1e-10:
            break
        betas.append(beta)
        basis.append(w / beta)
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    return float(np.linalg.eigvalsh(t)[-1])


class SharpnessProbe:
    """``λmax`` of the MSE Hessian of ``model`` on ``(x, y)`` at the current weights.

    The Hessian-vector product is traced once per probe, so call the same probe at every
    record of a run.
    """

    def __init__(self, model: Any, x: np.ndarray, y: np.ndarray, steps: int = LANCZOS_STEPS):
        self.matvec = _hvp_function(model, x, y)
        self.n = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        self.steps = steps

    def __call__(self) -> float:
        return lanczos_max(self.matvec, self.n, self.steps)


def reference_sharpness(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """λmax of the Hessian of the mean squared error of ``model`` on ``(x, y)``."""
    return SharpnessProbe(model, x, y)()


def current_learning_rate(optimizer: Any) -> float:
    """The rate of the optimizer's *next* step: a schedule evaluated at ``iterations``
    (Keras 3's ``optimizer.learning_rate`` does that evaluation)."""
    return float(optimizer.learning_rate)


# -- story criteria (pure numpy) -----------------------------------------------------------


def first_loss_blowup(losses: Sequence[float] | np.ndarray, factor: float = 10.0) -> int | None:
    """Index of the first record whose loss exceeds ``factor`` times the minimum of the
    records before it (a non-finite loss counts as a blow-up); ``None`` if there is none."""
    values = np.asarray(losses, dtype=np.float64)
    for i in range(1, len(values)):
        if not np.isfinite(values[i]) or values[i] > factor * np.min(values[:i]):
            return i
    return None


def eos_crossing(ratios: Sequence[float] | np.ndarray, tol: float = 0.1) -> int | None:
    """Index of the first record whose edge-of-stability ratio is at least ``1 - tol``;
    ``None`` if there is none.  (The caller checks that this ratio is also ``<= 1 + tol``,
    i.e. that the ratio *reached* 1 rather than jumping past it, and that it is not the
    first record.)"""
    values = np.asarray(ratios, dtype=np.float64)
    hits = np.flatnonzero(values >= 1.0 - tol)
    return int(hits[0]) if hits.size else None
