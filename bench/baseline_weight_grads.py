"""Reference: only the weight gradients of a saved Keras model, in one compiled step.

    python bench/baseline_weight_grads.py MODEL.keras BATCH.npz

What an engineer would write by hand: load the model and an ``x``/``y`` batch, trace one
``tf.function`` holding a ``GradientTape`` over the compiled loss, run it once and print
the global gradient norm (so the work cannot be optimized away).  bench/inspect_resnet50.py
times this whole process against ``gradscope inspect``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf


def main(model_path: str, batch_path: str) -> None:
    model = keras.models.load_model(model_path)
    with np.load(batch_path) as data:
        x = tf.convert_to_tensor(data["x"])
        y = tf.convert_to_tensor(data["y"])

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
        return tape.gradient(loss, model.trainable_variables)

    grads = step(x, y)
    print(f"global_norm {float(tf.linalg.global_norm(grads).numpy())!r}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/baseline_weight_grads.py MODEL.keras BATCH.npz")
    main(sys.argv[1], sys.argv[2])
