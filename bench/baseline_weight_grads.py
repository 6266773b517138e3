"""Reference: only the weight gradients of a saved Keras model, in one compiled step.

    python bench/baseline_weight_grads.py MODEL.keras BATCH.npz [--numpy]

What an engineer would write by hand: load the model and a batch, trace one
``tf.function`` holding a ``GradientTape`` over the compiled loss, run it once and print
the global gradient norm (so the work cannot be optimized away).  The batch holds ``x``
and ``y`` (a single-input model) or one array per model input, named after the input,
and ``y``.  With ``--numpy`` every gradient is fetched to a numpy array, as a script that
wants the gradients does, and the norm is taken there (in float64); without it the norm
is taken in TensorFlow.  bench/inspect_resnet50.py (without ``--numpy``) and
bench/inspect_gpt2.py (with it) time this whole process against ``gradscope inspect``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

TARGET_KEY = "y"


def load_xy(batch_path: str) -> tuple[object, object]:
    """``(x, y)`` tensors from an ``.npz``: ``x`` itself, or a dict of the other keys."""
    with np.load(batch_path) as data:
        y = tf.convert_to_tensor(data[TARGET_KEY])
        if "x" in data.files:
            return tf.convert_to_tensor(data["x"]), y
        names = [key for key in data.files if key != TARGET_KEY]
        return {key: tf.convert_to_tensor(data[key]) for key in names}, y


def main(model_path: str, batch_path: str, to_numpy: bool) -> None:
    model = keras.models.load_model(model_path)
    x, y = load_xy(batch_path)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
        return tape.gradient(loss, model.trainable_variables)

    grads = step(x, y)
    if to_numpy:
        arrays = [np.asarray(tf.convert_to_tensor(g)) for g in grads]
        norm = float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))
    else:
        norm = float(tf.linalg.global_norm(grads).numpy())
    print(f"global_norm {norm!r}")


if __name__ == "__main__":
    args = sys.argv[1:]
    numpy_flag = "--numpy" in args
    args = [a for a in args if a != "--numpy"]
    if len(args) != 2:
        sys.exit("usage: python bench/baseline_weight_grads.py MODEL.keras BATCH.npz [--numpy]")
    main(args[0], args[1], numpy_flag)
