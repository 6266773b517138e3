"""The README's Python example runs, and the numbers it prints are the gradients of its
model's mean squared error, from a one-tape reference written here.

The reference is one eager ``tf.GradientTape`` over ``model(x)`` and
``mean((model(x) - y)**2)`` written out (the example compiles ``loss="mse"`` and has no
regularizer).  Tolerance ``RTOL = 1e-5``: the forward and backward ops are the same
float32 kernels on both sides (gradscope runs its step with Grappler off); only the loss
differs in rounding (Keras takes the mean per row and then over the batch, the
reference one mean over the 32 entries), so the cotangent at the output differs by at
most about ``32 * eps32 = 3.8e-6`` of its size, and the gradients, linear in it, by
that fraction.  A 1% error, or a loss off by a constant factor, is far outside it.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from conftest import REPO

from tests.reference import compare, one_tape_gradients

RTOL = 1e-5


def _python_blocks() -> list[str]:
    """The Python blocks of the README's "Use it from Python" section (the pipeline
    section's blocks read a CSV file and are run by ``test_pipelines.py``)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use it from Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_example_prints_the_tape_gradients(tf: Any, capsys: Any) -> None:
    """The printed loss and global norm, each printed row's path, gradient norm and
    norm ratio ``|g| / |w|`` (``None`` for the zero-initialized biases), and the
    ``kernel_grad`` array, against the tape."""
    blocks = _python_blocks()
    assert blocks, "the README has a Python example"
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    target = tf.constant(y)
    ref = one_tape_gradients(model, x, lambda pred: tf.reduce_mean(tf.square(pred - target)))
    grads = {path: g for path, g in ref.variables.items() if g is not None}
    assert len(grads) == len(ref.variables) == 4  # two kernels, two biases

    loss, norm = (float(word) for word in printed[0].split())
    assert loss == pytest.approx(ref.loss, rel=RTOL)
    assert norm == pytest.approx(np.sqrt(sum(np.sum(g * g) for g in grads.values())), rel=RTOL)

    rows = [line.split() for line in printed[1:]]
    assert [row[0] for row in rows] == list(grads)
    weights = {v.path: np.asarray(v.numpy(), np.float64) for v in model.trainable_variables}
    for path, l2, ratio in rows:
        want = float(np.linalg.norm(grads[path]))
        assert float(l2) == pytest.approx(want, rel=RTOL), path
        weight = float(np.linalg.norm(weights[path]))
        if weight == 0:
            assert ratio == "None", path
        else:
            assert float(ratio) == pytest.approx(want / weight, rel=RTOL), path

    kernel_path = model.layers[0].kernel.path
    compare(namespace["kernel_grad"], grads[kernel_path], RTOL, "kernel_grad")
