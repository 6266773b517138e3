"""Two checkpoints with a loss barrier between them, for the README's landscape example.

The same small classifier (Dense -> BatchNormalization -> Dense, two spirals) trained
from two seeds: two different minima.  Writes ``a.keras``, ``b.keras`` and ``spirals.npz``
next to this file (a few KB each)::

    python docs/landscape/build.py
    gradscope landscape docs/landscape/a.keras -d docs/landscape/spirals.npz \\
        --to docs/landscape/b.keras --plot docs/landscape_barrier.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def spirals(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.random(rows)) * 3 * np.pi
    label = rng.integers(0, 2, rows)
    sign = np.where(label == 0, 1.0, -1.0)
    x = np.stack([sign * t * np.cos(t), sign * t * np.sin(t)], axis=1) / 10
    return (x + 0.02 * rng.normal(size=x.shape)).astype(np.float32), label


def train(seed: int, x: np.ndarray, y: np.ndarray) -> object:
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((2,), name="features"),
            keras.layers.Dense(32, activation="relu", name="hidden_1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(32, activation="relu", name="hidden_2"),
            keras.layers.Dense(2, name="logits"),
        ],
        name="spirals",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=32, epochs=60, verbose=0)
    return model


def main() -> None:
    x, y = spirals(512, seed=0)
    for name, seed in (("a", 1), ("b", 2)):
        model = train(seed, x, y)
        model.save(HERE / f"{name}.keras")  # type: ignore[attr-defined]
    test_x, test_y = spirals(256, seed=1)
    np.savez(HERE / "spirals.npz", x=test_x, y=test_y)


if __name__ == "__main__":
    main()
