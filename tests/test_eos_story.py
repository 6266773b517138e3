"""The issue-14 edge-of-stability story, checked without gradscope (``tests/eos_story.py``).

Both runs are recorded after every optimizer step by a small callback: the loss on the
training batch and ``λmax`` of its Hessian at the current weights (plain Lanczos over
nested-tape Hessian-vector products), and the learning rate of the next step.  The
diverging run's ratio ``λmax · lr / 2`` must reach 1 (±10%) from below at most
``MAX_GAP_STEPS`` steps before the first loss more than 10× the minimum so far; the
stable run's ratio must stay below 1 and its loss must never rise 10×.  Recording every
2nd step (what ``every_n_batches=2`` would see) must tell the same story.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eos_story import (
    DIVERGING,
    MAX_GAP_STEPS,
    STABLE,
    STEPS,
    SharpnessProbe,
    StoryRun,
    build_story_model,
    current_learning_rate,
    eos_crossing,
    first_loss_blowup,
    reference_sharpness,
    story_data,
    story_network,
)

SEED = 0
TOL = 0.1


def _recorder(x: np.ndarray, y: np.ndarray) -> Any:
    """A callback recording ``(step, loss, λmax, lr)`` after every optimizer step."""
    import keras

    class Recorder(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[tuple[int, float, float, float]] = []
            self.probe: SharpnessProbe | None = None

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.probe = SharpnessProbe(self.model, x, y)

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            assert self.probe is not None
            optimizer = self.model.optimizer
            step = int(optimizer.iterations.numpy())
            loss = float(np.mean((y - self.model(x).numpy()) ** 2))
            rate = current_learning_rate(optimizer)
            self.rows.append((step, loss, self.probe(), rate))

    return Recorder()


def _record(run: StoryRun) -> np.ndarray:
    """Rows ``(step, loss, λmax, lr, ratio)`` of one full-batch run of ``STEPS`` steps."""
    x, y = story_data(SEED)
    model = build_story_model(SEED, run)
    recorder = _recorder(x, y)
    model.fit(x, y, batch_size=len(x), epochs=STEPS, shuffle=False, verbose=0, callbacks=[recorder])
    rows = np.array(recorder.rows, dtype=np.float64)
    ratio = rows[:, 2] * rows[:, 3] / 2.0
    return np.asarray(np.column_stack([rows, ratio]), dtype=np.float64)


@pytest.fixture(scope="module")
def diverging() -> np.ndarray:
    return _record(DIVERGING)


@pytest.fixture(scope="module")
def stable() -> np.ndarray:
    return _record(STABLE)


def _every(rows: np.ndarray, k: int) -> np.ndarray:
    """The records an every-``k``-steps monitor would make (steps k, 2k, ...)."""
    keep: np.ndarray = rows[rows[:, 0] % k == 0]
    return keep


# -- the reference itself ------------------------------------------------------------------


def test_reference_sharpness_matches_the_explicit_hessian() -> None:
    import tensorflow as tf

    x, y = story_data(SEED)
    model = story_network(SEED)
    variables = model.trainable_variables

    @tf.function  # type: ignore[untyped-decorator]
    def hessian() -> Any:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = tf.reduce_mean(tf.square(y - model(x)))
            grads = inner.gradient(loss, variables)
            flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
        blocks = outer.jacobian(flat, variables)
        return tf.concat([tf.reshape(b, [tf.size(flat), -1]) for b in blocks], 1)

    matrix = hessian().numpy().astype(np.float64)
    expected = np.linalg.eigvalsh((matrix + matrix.T) / 2.0)[-1]
    assert reference_sharpness(model, x, y) == pytest.approx(expected, rel=1e-4)


def test_schedule_starts_and_ends_at_the_stated_multiples_of_the_stable_rate() -> None:
    x, y = story_data(SEED)
    sharpness0 = reference_sharpness(story_network(SEED), x, y)
    schedule = DIVERGING.schedule(sharpness0)
    first = float(schedule(0)) * sharpness0 / 2.0
    last = float(schedule(STEPS)) * sharpness0 / 2.0
    assert (first, last) == pytest.approx((DIVERGING.start, DIVERGING.end), rel=1e-5)


def test_model_starts_at_the_schedule_start() -> None:
    x, y = story_data(SEED)
    sharpness0 = reference_sharpness(story_network(SEED), x, y)
    model = build_story_model(SEED, DIVERGING)
    rate = current_learning_rate(model.optimizer)
    assert rate == pytest.approx(DIVERGING.start * 2.0 / sharpness0, rel=1e-5)


# -- the pure helpers ----------------------------------------------------------------------


def test_first_loss_blowup_compares_with_the_minimum_so_far() -> None:
    assert first_loss_blowup([1.0, 0.1, 0.5, 0.99, 1.01]) == 4


def test_first_loss_blowup_counts_a_nan() -> None:
    assert first_loss_blowup([1.0, 0.9, float("nan")]) == 2


def test_first_loss_blowup_none_for_a_falling_loss() -> None:
    assert first_loss_blowup([1.0, 0.5, 0.25]) is None


def test_eos_crossing_is_the_first_ratio_within_tolerance_of_one() -> None:
    assert eos_crossing([0.5, 0.8, 0.95, 1.2, 0.7]) == 2


def test_eos_crossing_none_below_the_band() -> None:
    assert eos_crossing([0.5, 0.89]) is None


# -- the story -----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
def test_diverging_run_reaches_the_edge_just_before_the_loss_blows_up(
    diverging: np.ndarray, k: int
) -> None:
    rows = _every(diverging, k)
    crossing = eos_crossing(rows[:, 4], tol=TOL)
    blowup = first_loss_blowup(rows[:, 1])
    assert crossing is not None
    assert blowup is not None
    assert crossing >= 1  # an earlier record was below 1 - TOL: the ratio *reaches* 1
    assert rows[crossing, 4] <= 1.0 + TOL
    assert 0 < rows[blowup, 0] - rows[crossing, 0] <= MAX_GAP_STEPS


@pytest.mark.parametrize("k", [1, 2])
def test_stable_run_stays_below_the_edge_and_its_loss_never_blows_up(
    stable: np.ndarray, k: int
) -> None:
    rows = _every(stable, k)
    assert np.max(rows[:, 4]) < 1.0
    assert first_loss_blowup(rows[:, 1]) is None
