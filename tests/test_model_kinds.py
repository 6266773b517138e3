"""gradscope on every kind of Keras model, against the one-tape-per-quantity reference.

Each case is a small seeded model: a subclassed model (custom layers holding sublayers,
saved to ``.keras`` and reloaded), recurrent layers with masking, an Embedding, TimeDistributed,
attention, normalization, dropout in training mode, shared layers, layers returning several
tensors, and mixed precision.  For each, gradscope's report (with ``keep_tensors=True``)
is checked against :func:`tests.reference.probe_reference`, which takes every quantity
with its own eager tape: each variable and each float input directly, each layer output
through a one-off replacement of that one layer's ``call`` that adds a watched zero to
the one output of the one call in question.  That shares nothing with gradscope's engine
(one traced tape over every layer's outputs at once), and it works where there is no
functional graph.

What is checked, per case: the loss value; the gradient of every trainable variable and
float input; the row paths of the layer outputs, in forward order, written by hand here
(``@N`` for the N-th call of a shared layer, ``:K`` for the K-th tensor a layer returns, a
note row for an RNN cell that runs inside the loop); every layer-output gradient and
value; and every statistic, against numpy float64 on the reference tensors and on
gradscope's own tensors.

Tolerances.  float32: ``RTOL32 = 1e-4`` relative to the tensor's largest entry, as in
``test_reference.py``: both sides are float32 computations of the same function (graph
vs eager), which may differ by rounding accumulated through the network.

float16 and bfloat16 (the mixed-precision cases): ``EXACT``, no tolerance.  gradscope's
step is a ``tf.function`` run with Grappler off (``gradscope/engine/gradients.py``), so
no op is fused, folded or reordered: it executes the very op sequence the reference
runs eagerly through the same Keras layers, the same CPU kernels on the same operands,
and each op's gradient is the same registered gradient function.  Neither side adds a
cast the other lacks (the layers cast the float32 variables to float16 or bfloat16 on both
sides; the loss is computed in float32 by the same ``compute_loss``).  Deterministic
kernels on equal inputs give equal bits, so every float16/bfloat16 layer output, its
gradient, the float32 variable and input gradients and the loss are equal (observed:
all equal, on every case).  A bound of some ulps would only hide a changed op order:
if a kernel or engine change ever breaks this, derive the bound from the change (a
float16 sum of ``n`` terms in another order moves by up to ``n * eps16 * sum|terms|``),
do not guess one.  Their statistics are float64 reductions of equal tensors in other
summation orders: ``STATS_RTOL``.

Statistics of gradscope's own tensors are float64 reductions: ``STATS_RTOL = 1e-9``.
Counts (zeros, non-finite entries, dead units) are exact.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradscope
from gradscope.commands.inspect.report import Report
from gradscope.engine.capture import LOOP_NOTE
from gradscope.errors import MismatchError
from gradscope.loading.signature import TensorSpec, model_signature
from tests.reference import (
    ReferenceGradients,
    assert_stats,
    compare,
    find_layer,
    numpy_dead_frac,
    probe_reference,
    probes_for,
)

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")

RTOL32 = 1e-4
EXACT = 0.0  # float16 and bfloat16 cases: equal bits (see the module docstring)
STATS_RTOL = 1e-9
B = 6  # rows per batch


@dataclass
class Kind:
    """One model kind: the model, its batch, and the layer-output rows it must get.

    ``rows`` is every layer-output row path in forward order; ``loop_rows`` those of
    them that are RNN cells (one note row each, no gradient).  ``x`` is packed as the
    model is called; ``input_names`` names its leaves in ``tf.nest.flatten`` order.
    """

    model: Any
    x: Any
    y: Any
    rows: list[str]
    input_names: list[str]
    loop_rows: list[str] = field(default_factory=list)
    training: bool = False
    rtol: float = RTOL32
    path: Path | None = None  # the saved .keras file, when saving is part of the case
    data: Path | None = None

    @property
    def stats_rtol(self) -> float:
        """Statistics are float64 reductions: never tighter than ``STATS_RTOL``."""
        return max(self.rtol, STATS_RTOL)

    @property
    def loss_rtol(self) -> float:
        """The loss is one float32 scalar: 1e-5, or exact for the exact cases."""
        return min(self.rtol, 1e-5)


@dataclass
class Checked:
    """A case with gradscope's report and the reference gradients."""

    name: str
    kind: Kind
    report: Report
    ref: ReferenceGradients


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


# -- 1. subclassed models -------------------------------------------------------------------


@functools.cache
def subclassed_classes() -> dict[str, type]:
    """Custom classes, registered once so that the saved ``.keras`` files load back."""
    from gradscope import _tf

    keras = _tf.keras()
    register = keras.saving.register_keras_serializable(package="gradscope_tests")

    @register
    class ResidualBlock(keras.layers.Layer):  # type: ignore[misc]
        """A custom layer holding sublayers: ``norm(x + proj(inner(x)))``."""

        def __init__(self, units: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units = units
            self.inner = keras.layers.Dense(units, activation="tanh", name="inner")
            self.proj = keras.layers.Dense(units, name="proj")
            self.norm = keras.layers.LayerNormalization(name="norm")

        def call(self, x: Any) -> Any:
            return self.norm(x + self.proj(self.inner(x)))

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "units": self.units}

    @register
    class SubclassedNet(keras.Model):  # type: ignore[misc]
        """Layers in attributes and in a list, reached only inside ``call``."""

        def __init__(self, units: int = 4, classes: int = 3, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units, self.classes = units, classes
            self.stem = keras.layers.Dense(units, activation="relu", name="stem")
            self.blocks = [ResidualBlock(units, name=f"block_{i}") for i in range(2)]
            self.gate = keras.layers.Dense(units, activation="sigmoid", name="gate")
            self.head = keras.layers.Dense(classes, activation="softmax", name="head")

        def call(self, inputs: Any) -> Any:
            h = self.stem(inputs)
            for block in self.blocks:
                h = block(h)
            return self.head(h * self.gate(h))

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "units": self.units, "classes": self.classes}

    @register
    class SubclassedText(keras.Model):  # type: ignore[misc]
        """Dict inputs: integer token ids into an Embedding, and float features."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.embed = keras.layers.Embedding(20, 4, name="embed")
            self.pool = keras.layers.GlobalAveragePooling1D(name="pool")
            self.mix = keras.layers.Dense(3, activation="tanh", name="mix")
            self.score = keras.layers.Dense(1, name="score")

        def call(self, inputs: Any) -> Any:
            h = self.pool(self.embed(inputs["tokens"]))
            return self.score(self.mix(h) + inputs["features"])

    return {c.__name__: c for c in (ResidualBlock, SubclassedNet, SubclassedText)}


def _save(model: Any, folder: Path, arrays: dict[str, np.ndarray]) -> tuple[Path, Path]:
    path, data = folder / f"{model.name}.keras", folder / f"{model.name}.npz"
    model.save(path)
    np.savez(data, **arrays)  # type: ignore[arg-type]
    return path, data


def subclassed_net(keras: Any, folder: Path) -> Kind:
    keras.utils.set_random_seed(1)
    rng = _rng(1)
    x = _normal(rng, B, 4)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, B)]
    built = subclassed_classes()["SubclassedNet"](name="subclassed_net")
    built(x)
    built.compile(loss="categorical_crossentropy")
    path, data = _save(built, folder, {"x": x, "y": y})
    model = keras.saving.load_model(path)
    blocks = [f"block_{i}/{name}" for i in range(2) for name in ("inner", "proj", "norm")]
    rows = ["stem", *blocks[:3], "block_0", *blocks[3:], "block_1", "gate", "head"]
    return Kind(model, x, y, rows, ["inputs"], path=path, data=data)


def subclassed_text(keras: Any, folder: Path) -> Kind:
    keras.utils.set_random_seed(2)
    rng = _rng(2)
    x = {"tokens": rng.integers(0, 20, (B, 5)).astype(np.int32), "features": _normal(rng, B, 3)}
    y = _normal(rng, B, 1)
    built = subclassed_classes()["SubclassedText"](name="subclassed_text")
    built(x)
    built.compile(loss="mse")
    path, data = _save(built, folder, {**x, "y": y})
    model = keras.saving.load_model(path)
    names = ["features", "tokens"]  # tf.nest order: sorted keys
    return Kind(model, x, y, ["embed", "pool", "mix", "score"], names, path=path, data=data)


# -- 2. recurrent layers with masking ---------------------------------------------------------


def _padded_tokens(rng: np.random.Generator, vocab: int, steps: int) -> np.ndarray:
    """Ids in [1, vocab) with trailing zeros (padding): every row keeps 2..steps ids."""
    tokens = rng.integers(1, vocab, (B, steps)).astype(np.int32)
    for row, length in enumerate(rng.integers(2, steps + 1, B)):
        tokens[row, length:] = 0
    return tokens


RNN_KINDS = ("simple_rnn", "lstm", "gru", "bidirectional")


def recurrent(keras: Any, which: str) -> Kind:
    """Embedding(mask_zero=True) into an RNN: padded steps must get no gradient."""
    keras.utils.set_random_seed(3)
    rng = _rng(3)
    tokens = _padded_tokens(rng, 12, 7)
    inputs = keras.Input((7,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(12, 3, mask_zero=True, name="embed")(inputs)
    if which == "bidirectional":
        layer = keras.layers.Bidirectional(keras.layers.LSTM(4, name="lstm"), name="bi")
        loops = ["bi/forward_lstm/lstm_cell", "bi/backward_lstm/lstm_cell"]
        middle = [loops[0], "bi/forward_lstm", loops[1], "bi/backward_lstm", "bi"]
    else:
        cls = {"simple_rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}[which]
        layer = getattr(keras.layers, cls)(4, name="rnn")
        loops = [f"rnn/{which}_cell"]
        middle = [loops[0], "rnn"]
    out = keras.layers.Dense(1, name="out")(layer(embedded))
    model = keras.Model(inputs, out, name=which)
    model.compile(loss="mse")
    rows = ["embed", *middle, "out"]
    return Kind(model, tokens, _normal(rng, B, 1), rows, ["tokens"], loop_rows=loops)


def masked_sequence(keras: Any) -> Kind:
    """A Masking layer on zero-padded float steps, a GRU returning sequences: the loss is
    masked per step too (the mask travels to the output)."""
    keras.utils.set_random_seed(4)
    rng = _rng(4)
    x = _normal(rng, B, 5, 3)
    for row, length in enumerate(rng.integers(2, 6, B)):
        x[row, length:] = 0.0
    inputs = keras.Input((5, 3), name="steps")
    h = keras.layers.Masking(0.0, name="masking")(inputs)
    h = keras.layers.GRU(4, return_sequences=True, name="gru")(h)
    out = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inputs, out, name="masked_sequence")
    model.compile(loss="mse")
    rows = ["masking", "gru/gru_cell", "gru", "out"]
    return Kind(model, x, _normal(rng, B, 5, 1), rows, ["steps"], loop_rows=["gru/gru_cell"])


# -- 3. embedding --------------------------------------------------------------------------


def embedding(keras: Any) -> Kind:
    """Few distinct ids, many repeats: the IndexedSlices gradient has duplicate indices."""
    keras.utils.set_random_seed(5)
    rng = _rng(5)
    tokens = rng.choice(np.array([2, 3, 3, 7, 11, 11, 11, 28]), (B, 5)).astype(np.int32)
    inputs = keras.Input((5,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(30, 4, name="embed")(inputs)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    out = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inputs, out, name="embedding")
    model.compile(loss="mse")
    return Kind(model, tokens, _normal(rng, B, 1), ["embed", "pool", "out"], ["tokens"])


# -- 4. TimeDistributed, attention, LayerNormalization ---------------------------------------


def time_distributed(keras: Any) -> Kind:
    """TimeDistributed calls its Dense's ``call`` once per step: one row per step."""
    keras.utils.set_random_seed(6)
    rng = _rng(6)
    inputs = keras.Input((3, 4), name="steps")
    h = keras.layers.TimeDistributed(
        keras.layers.Dense(5, activation="tanh", name="dense"), name="td"
    )(inputs)
    h = keras.layers.LayerNormalization(name="norm")(h)
    out = keras.layers.Dense(2, name="out")(keras.layers.Flatten(name="flat")(h))
    model = keras.Model(inputs, out, name="time_distributed")
    model.compile(loss="mse")
    rows = ["td/dense@0", "td/dense@1", "td/dense@2", "td", "norm", "flat", "out"]
    return Kind(model, _normal(rng, B, 3, 4), _normal(rng, B, 2), rows, ["steps"])


MHA_PARTS = ("query", "key", "value", "attention_output")


def attention(keras: Any) -> Kind:
    """Cross-attention with an attention mask (the last two memory steps masked for every
    query), then causal self-attention, then LayerNormalization."""
    keras.utils.set_random_seed(7)
    rng = _rng(7)
    query = keras.Input((4, 6), name="query")
    memory = keras.Input((5, 6), name="memory")
    mask = keras.Input((4, 5), dtype="bool", name="mask")
    cross = keras.layers.MultiHeadAttention(2, 3, name="cross")(query, memory, attention_mask=mask)
    selfatt = keras.layers.MultiHeadAttention(2, 3, name="self")(cross, cross, use_causal_mask=True)
    h = keras.layers.LayerNormalization(name="norm")(selfatt + query)
    out = keras.layers.Dense(1, name="out")(keras.layers.GlobalAveragePooling1D(name="pool")(h))
    model = keras.Model([query, memory, mask], out, name="attention")
    model.compile(loss="mse")
    masks = np.ones((B, 4, 5), dtype=bool)
    masks[:, :, 3:] = False
    x = [_normal(rng, B, 4, 6), _normal(rng, B, 5, 6), masks]
    rows = [f"cross/{p}" for p in MHA_PARTS] + ["cross"]
    rows += [f"self/{p}" for p in MHA_PARTS] + ["self", "norm", "pool", "out"]
    return Kind(model, x, _normal(rng, B, 1), rows, ["query", "memory", "mask"])


# -- 5. BatchNormalization and Dropout in training mode ---------------------------------------


def batchnorm_dropout(keras: Any) -> Kind:
    keras.utils.set_random_seed(8)
    rng = _rng(8)
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(8, name="dense")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(0.5, name="drop")(h)
    out = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inputs, out, name="batchnorm_dropout")
    model.compile(loss="mse")
    rows = ["dense", "bn", "drop", "out"]
    return Kind(model, _normal(rng, B, 4), _normal(rng, B, 1), rows, ["x"], training=True)


# -- 6. shared layers, and a layer handing on its input ---------------------------------------


def shared(keras: Any) -> Kind:
    """``shared`` called twice; ``drop`` (Dropout, inference) returns its input tensor
    itself, which ``add`` also reads directly: the ``drop`` row is only the part of the
    gradient that flows through ``drop``, not the total at that tensor."""
    keras.utils.set_random_seed(9)
    rng = _rng(9)
    inputs = keras.Input((4,), name="x")
    layer = keras.layers.Dense(4, activation="tanh", name="shared")
    first = layer(inputs)
    second = layer(first)
    skip = keras.layers.Dropout(0.5, name="drop")(first)
    out = keras.layers.Dense(1, name="out")(keras.layers.Add(name="add")([second, skip]))
    model = keras.Model(inputs, out, name="shared")
    model.compile(loss="mse")
    rows = ["shared@0", "shared@1", "drop", "add", "out"]
    return Kind(model, _normal(rng, B, 4), _normal(rng, B, 1), rows, ["x"])


def softmax_then_passthrough(keras: Any) -> Kind:
    """A softmax head followed by a layer that returns its input (``Activation("linear")``):
    the loss must still read Keras's cached logits (some rows are saturated, so the
    clipped probabilities would give a different loss), and both rows get the gradient
    of the loss as a function of the probabilities."""
    keras.utils.set_random_seed(15)
    rng = _rng(15)
    inputs = keras.Input((4,), name="x")
    probs = keras.layers.Dense(3, activation="softmax", name="probs")
    out = keras.layers.Activation("linear", name="linear")(probs(inputs))
    model = keras.Model(inputs, out, name="softmax_then_passthrough")
    model.compile(loss="categorical_crossentropy")
    _set_dense(probs, 40.0 * rng.normal(size=(4, 3)))
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, B)]
    return Kind(model, _normal(rng, B, 4), y, ["probs", "linear"], ["x"])


# -- 7. layers returning several tensors -------------------------------------------------------


@functools.cache
def multi_output_classes() -> tuple[type, type]:
    from gradscope import _tf

    keras = _tf.keras()

    class TwoWay(keras.layers.Layer):  # type: ignore[misc]
        """Returns ``(a, tanh(a))``: the second output is computed from the first."""

        def call(self, x: Any) -> Any:
            a = x * 2.0
            return (a, keras.ops.tanh(a))

    class Halves(keras.layers.Layer):  # type: ignore[misc]
        """Returns a list of two slices."""

        def call(self, x: Any) -> Any:
            return [x[:, :2], x[:, 2:]]

    return TwoWay, Halves


def several_outputs(keras: Any) -> Kind:
    """A tuple, a list, MHA's (output, scores) and LSTM's (output, h, c) outputs."""
    keras.utils.set_random_seed(10)
    rng = _rng(10)
    two_way, halves = multi_output_classes()
    x_in = keras.Input((4,), name="x")
    seq_in = keras.Input((3, 4), name="seq")
    h = keras.layers.Dense(4, name="dense")(x_in)
    a, b = two_way(name="two_way")(h)
    c, d = halves(name="halves")(h)
    mha = keras.layers.MultiHeadAttention(2, 2, name="mha")
    att, scores = mha(seq_in, seq_in, return_attention_scores=True)
    (softmax,) = [
        layer.name
        for layer in mha._flatten_layers(include_self=False, recursive=False)
        if isinstance(layer, keras.layers.Softmax)
    ]  # named "softmax", or "softmax_<n>" after other models made some
    seq, state_h, state_c = keras.layers.LSTM(3, return_state=True, name="lstm")(att)
    flat_scores = keras.layers.Flatten(name="flat")(scores)
    merged = keras.layers.Concatenate(name="cat")([a, b, c, d, seq, state_h, state_c, flat_scores])
    out = keras.layers.Dense(1, name="out")(merged)
    model = keras.Model([x_in, seq_in], out, name="several_outputs")
    model.compile(loss="mse")
    # In the order Keras runs the graph (the attention branch first).
    rows = ["mha/query", "mha/key", "mha/value", f"mha/{softmax}", "mha/attention_output"]
    rows += ["mha:0", "mha:1", "dense", "two_way:0", "two_way:1", "halves:0", "halves:1"]
    rows += ["lstm/lstm_cell", "lstm:0", "lstm:1", "lstm:2", "flat", "cat", "out"]
    x = [_normal(rng, B, 4), _normal(rng, B, 3, 4)]
    return Kind(model, x, _normal(rng, B, 1), rows, ["x", "seq"], loop_rows=["lstm/lstm_cell"])


# -- 8. mixed precision ---------------------------------------------------------------------


@contextlib.contextmanager
def global_policy(keras: Any, name: str) -> Iterator[None]:
    """Keras's global dtype policy set to ``name``, and always put back."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def mixed_global(keras: Any) -> Kind:
    """The global policy ``mixed_float16``: float16 activations, float32 variables; the
    last layer is float32, as Keras recommends."""
    keras.utils.set_random_seed(11)
    rng = _rng(11)
    with global_policy(keras, "mixed_float16"):
        inputs = keras.Input((4,), name="x")
        h = keras.layers.Dense(8, activation="relu", name="dense")(inputs)
        h = keras.layers.LayerNormalization(name="norm")(h)
        h = keras.layers.Dense(3, name="proj")(h)
        out = keras.layers.Dense(1, dtype="float32", name="out")(h)
        model = keras.Model(inputs, out, name="mixed_global")
    model.compile(loss="mse")
    rows = ["dense", "norm", "proj", "out"]
    return Kind(model, _normal(rng, B, 4), _normal(rng, B, 1), rows, ["x"], rtol=EXACT)


def mixed_per_layer(keras: Any) -> Kind:
    """A float32 model with one ``dtype="mixed_float16"`` layer in the middle."""
    keras.utils.set_random_seed(12)
    rng = _rng(12)
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(6, activation="tanh", name="dense")(inputs)
    h = keras.layers.Dense(5, activation="relu", dtype="mixed_float16", name="half")(h)
    out = keras.layers.Dense(2, name="out")(h)
    model = keras.Model(inputs, out, name="mixed_per_layer")
    model.compile(loss="mse")
    rows = ["dense", "half", "out"]
    return Kind(model, _normal(rng, B, 4), _normal(rng, B, 2), rows, ["x"], rtol=EXACT)


def mixed_bfloat16(keras: Any) -> Kind:
    """One ``dtype="mixed_bfloat16"`` layer: bfloat16 activations, reduced in float32."""
    keras.utils.set_random_seed(16)
    rng = _rng(16)
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(5, activation="relu", dtype="mixed_bfloat16", name="half")(inputs)
    out = keras.layers.Dense(2, name="out")(h)
    model = keras.Model(inputs, out, name="mixed_bfloat16")
    model.compile(loss="mse")
    return Kind(model, _normal(rng, B, 4), _normal(rng, B, 2), ["half", "out"], ["x"], rtol=EXACT)


def _set_dense(layer: Any, kernel: np.ndarray) -> None:
    layer.kernel.assign(kernel.astype(np.float32))
    layer.bias.assign(np.zeros(layer.bias.shape, np.float32))


def float16_value_overflow(keras: Any) -> Kind:
    """``big`` overflows float16 (|x W| > 65504 in some rows): ±inf activations, which
    ``tanh`` brings back to ±1, so the loss stays finite.  ``wide`` stays finite, but its
    norm (> 65504) does not fit a float16."""
    keras.utils.set_random_seed(13)
    rng = _rng(13)
    x = rng.uniform(-1.0, 1.0, (B, 4)).astype(np.float32)
    x[:2] = np.abs(x[:2]) + 0.7  # rows 0 and 1: sum(x) > 2.8, so 3e4 * sum(x) overflows
    x[2] = [0.1, -0.2, 0.1, 0.3]  # row 2: far below the limit
    inputs = keras.Input((4,), name="x")
    big = keras.layers.Dense(3, dtype="mixed_float16", name="big")
    wide = keras.layers.Dense(8, dtype="mixed_float16", name="wide")
    squashed = keras.layers.Activation("tanh", dtype="mixed_float16", name="squash")(big(inputs))
    shrunk = keras.layers.Rescaling(1e-4, dtype="mixed_float16", name="shrink")(wide(inputs))
    merged = keras.layers.Concatenate(dtype="mixed_float16", name="cat")([squashed, shrunk])
    out = keras.layers.Dense(1, name="out")(merged)
    model = keras.Model(inputs, out, name="float16_value_overflow")
    model.compile(loss="mse")
    _set_dense(big, np.full((4, 3), 3e4))
    _set_dense(wide, 6e3 * np.sign(rng.normal(size=(4, 8))))
    rows = ["wide", "big", "squash", "shrink", "cat", "out"]  # in the order Keras runs them
    return Kind(model, x, _normal(rng, B, 1), rows, ["x"], rtol=EXACT)


def float16_grad_overflow(keras: Any) -> Kind:
    """Finite float16 activations whose gradient overflows float16: ``out`` (float32)
    multiplies ``amp`` by 300 and the loss is large, so d loss / d amp ~ 1e7 > 65504."""
    keras.utils.set_random_seed(14)
    rng = _rng(14)
    inputs = keras.Input((4,), name="x")
    pre = keras.layers.Dense(4, dtype="mixed_float16", name="pre")
    amp = keras.layers.Dense(4, dtype="mixed_float16", name="amp")
    final = keras.layers.Dense(1, name="out")
    model = keras.Model(inputs, final(amp(pre(inputs))), name="float16_grad_overflow")
    model.compile(loss="mse")
    _set_dense(amp, 300.0 * np.eye(4))
    _set_dense(final, np.full((4, 1), 300.0))
    rows = ["pre", "amp", "out"]
    return Kind(model, _normal(rng, B, 4), np.zeros((B, 1), np.float32), rows, ["x"], rtol=EXACT)


# -- running the cases ----------------------------------------------------------------------

Builder = Callable[[Any, Path], Kind]

CASES: dict[str, Builder] = {
    "subclassed_net": subclassed_net,
    "subclassed_text": subclassed_text,
    **{
        f"rnn_{which}": functools.partial(lambda keras, folder, w: recurrent(keras, w), w=which)
        for which in RNN_KINDS
    },
    "masked_sequence": lambda keras, folder: masked_sequence(keras),
    "embedding": lambda keras, folder: embedding(keras),
    "time_distributed": lambda keras, folder: time_distributed(keras),
    "attention": lambda keras, folder: attention(keras),
    "batchnorm_dropout": lambda keras, folder: batchnorm_dropout(keras),
    "shared": lambda keras, folder: shared(keras),
    "softmax_then_passthrough": lambda keras, folder: softmax_then_passthrough(keras),
    "several_outputs": lambda keras, folder: several_outputs(keras),
    "mixed_global": lambda keras, folder: mixed_global(keras),
    "mixed_per_layer": lambda keras, folder: mixed_per_layer(keras),
    "mixed_bfloat16": lambda keras, folder: mixed_bfloat16(keras),
    "float16_value_overflow": lambda keras, folder: float16_value_overflow(keras),
    "float16_grad_overflow": lambda keras, folder: float16_grad_overflow(keras),
}


def run_gradscope(kind: Kind) -> Report:
    """gradscope on the case: from the saved files when there are some, as the CLI does."""
    if kind.path is not None:
        return gradscope.inspect_file(
            kind.path, kind.data, training=kind.training, keep_tensors=True
        )
    return gradscope.inspect(kind.model, kind.x, kind.y, training=kind.training, keep_tensors=True)


def run_reference(kind: Kind) -> ReferenceGradients:
    probes = probes_for(kind.model, [row for row in kind.rows if row not in kind.loop_rows])
    return probe_reference(
        kind.model,
        kind.x,
        kind.y,
        probes,
        training=kind.training,
        input_names=kind.input_names,
    )


@pytest.fixture(scope="module", params=list(CASES))
def checked(request, keras, tmp_path_factory) -> Checked:  # type: ignore[no-untyped-def]
    kind = CASES[request.param](keras, tmp_path_factory.mktemp(request.param))
    report = run_gradscope(kind)
    return Checked(request.param, kind, report, run_reference(kind))


def _tensors(checked: Checked) -> Any:
    tensors = checked.report.tensors
    assert tensors is not None
    return tensors


# -- what every case must get right ---------------------------------------------------------


def test_loss_value(checked: Checked) -> None:
    assert checked.report.loss.kind == "compiled"
    rel = checked.kind.loss_rtol
    assert checked.report.loss.value == pytest.approx(checked.ref.loss, rel=rel, abs=0.0)


def test_variable_gradients(checked: Checked) -> None:
    """Every trainable variable: the tensor, its statistics, rows touched (embeddings)."""
    tensors, ref, rtol = _tensors(checked), checked.ref, checked.kind.rtol
    rows = {row.path: row for row in checked.report.variables}
    assert set(tensors.variables) == set(ref.variables) == set(rows)
    for path, expected in ref.variables.items():
        what = f"{checked.name} variable {path}"
        compare(tensors.variables[path], expected, rtol, what)
        assert_stats(rows[path].grad, expected, checked.kind.stats_rtol, what)
        assert_stats(rows[path].grad, tensors.variables[path], STATS_RTOL, what)
        assert rows[path].rows_touched == ref.rows_touched.get(path), what


def test_input_gradients(checked: Checked) -> None:
    """Every float input has its gradient; integer and boolean inputs say they have none."""
    tensors, ref, rtol = _tensors(checked), checked.ref, checked.kind.rtol
    assert set(tensors.inputs) == set(ref.inputs)
    for row in checked.report.inputs:
        what = f"{checked.name} input {row.name}"
        if row.name not in ref.inputs:
            assert row.grad is None, what
            assert row.note, what
            assert np.dtype(row.dtype).kind != "f", what
            continue
        compare(tensors.inputs[row.name], ref.inputs[row.name], rtol, what)
        assert_stats(row.grad, ref.inputs[row.name], checked.kind.stats_rtol, what)
        assert_stats(row.grad, tensors.inputs[row.name], STATS_RTOL, what)


def test_layer_output_rows(checked: Checked) -> None:
    """Row paths in forward order; RNN cells get one note row without statistics."""
    rows = checked.report.activations
    assert [row.path for row in rows] == checked.kind.rows
    for row in rows:
        if row.path in checked.kind.loop_rows:
            assert row.note == LOOP_NOTE, row
            assert row.grad is None, row
            assert row.value is None, row
            assert row.layer_class.endswith("Cell"), row
        else:
            assert row.grad is not None, row
            assert row.note is None, row
        probe = probes_for(checked.kind.model, [row.path])[0]
        assert (row.layer, row.layer_class) == (probe.layer.name, type(probe.layer).__name__)
        assert (row.call, row.output) == (probe.call, probe.output), row


def test_variable_rows_name_the_layer_holding_them(checked: Checked) -> None:
    """Each variable row's ``layer`` is the path of the deepest layer holding it."""
    model = checked.kind.model
    for row in checked.report.variables:
        (variable,) = [v for v in model.trainable_variables if v.path == row.path]
        layer = find_layer(model, row.layer)
        assert any(v is variable for v in layer.trainable_variables), row
        children = layer._flatten_layers(include_self=False, recursive=False)
        assert not any(any(v is variable for v in c.trainable_variables) for c in children)


def test_layer_output_gradients(checked: Checked) -> None:
    """Each layer output's gradient, its statistics, and the output's own statistics."""
    tensors, ref, rtol = _tensors(checked), checked.ref, checked.kind.rtol
    rows = {row.path: row for row in checked.report.activations}
    probed = [path for path in checked.kind.rows if path not in checked.kind.loop_rows]
    assert set(tensors.activations) == set(ref.activations) == set(probed)
    for path in probed:
        row, what = rows[path], f"{checked.name} layer output {path}"
        compare(tensors.activations[path], ref.activations[path], rtol, what)
        assert_stats(row.grad, ref.activations[path], checked.kind.stats_rtol, what)
        assert_stats(row.grad, tensors.activations[path], STATS_RTOL, what)
        value = ref.values[path]
        assert row.shape == value.shape, what
        assert row.dtype == ref.dtypes[path] == tensors.activations[path].dtype.name, what
        assert_stats(row.value, value, checked.kind.stats_rtol, f"{what} value")
        assert row.value is not None
        assert row.value.dead_frac == numpy_dead_frac(value), f"{what} dead units"


def test_global_grad_norm(checked: Checked) -> None:
    squares = sum(float(np.sum(g * g)) for g in checked.ref.variables.values())
    if np.isfinite(squares):
        want = float(np.sqrt(squares))
        rel = checked.kind.stats_rtol
        assert checked.report.global_grad_norm == pytest.approx(want, rel=rel)
    else:
        assert not np.isfinite(checked.report.global_grad_norm)


# -- 1. subclassed models --------------------------------------------------------------------


def _case(name: str, keras: Any, folder: Path) -> Kind:
    return CASES[name](keras, folder)


def test_subclassed_signature_from_build_shapes(keras, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A subclassed model has no ``inputs``: names, shapes and dtypes come from the shapes
    it was built with (kept in the .keras file); token ids feeding an Embedding are int32."""
    net = _case("subclassed_net", keras, tmp_path)
    assert getattr(net.model, "inputs", None) is None
    signature = model_signature(net.model)
    assert signature.inputs == (TensorSpec("inputs", (None, 4), "float32"),)
    assert signature.outputs == (TensorSpec("output_0", (None, 3), "float32"),)
    assert (signature.input_structure, signature.output_structure) == ("single", "single")
    text = model_signature(_case("subclassed_text", keras, tmp_path).model)
    assert text.inputs == (
        TensorSpec("tokens", (None, 5), "int32"),
        TensorSpec("features", (None, 3), "float32"),
    )
    assert text.input_structure == "dict"


def test_subclassed_models_on_a_synthetic_batch(keras, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No data: the synthetic batch follows the signature (ids below the vocabulary)."""
    for name in ("subclassed_net", "subclassed_text"):
        kind = _case(name, keras, tmp_path)
        assert kind.path is not None
        report = gradscope.inspect_file(kind.path)
        assert report.batch.source == "synthetic"
        assert np.isfinite(report.loss.value)
        assert [row.path for row in report.activations] == kind.rows
        assert all(row.grad is not None for row in report.activations)


def test_a_subclassed_model_never_built_is_refused(keras) -> None:  # type: ignore[no-untyped-def]
    model = subclassed_classes()["SubclassedNet"](name="never_built")
    with pytest.raises(MismatchError, match="built"):
        gradscope.inspect(model)


# -- 2. masking ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", RNN_KINDS)
def test_padded_steps_get_no_gradient(keras, which) -> None:  # type: ignore[no-untyped-def]
    """Embedding(mask_zero=True): the padded positions' embedding outputs get exactly zero
    gradient (the RNN skips masked steps), and so does the padding id's row of the table,
    while every real token's position gets some gradient."""
    kind = recurrent(keras, which)
    report = run_gradscope(kind)
    tensors = report.tensors
    assert tensors is not None
    grad = tensors.activations["embed"]
    padded = kind.x == 0
    assert padded.any()
    assert not padded.all()
    assert np.all(grad[padded] == 0)
    assert np.all(np.any(grad[~padded] != 0, axis=-1))
    assert np.all(tensors.variables["embed/embeddings"][0] == 0)


def test_masking_layer_padded_steps_get_no_gradient(keras) -> None:  # type: ignore[no-untyped-def]
    kind = masked_sequence(keras)
    tensors = run_gradscope(kind).tensors
    assert tensors is not None
    padded = np.all(kind.x == 0, axis=-1)
    assert padded.any()
    assert not padded.all()
    grads = [tensors.inputs["steps"], tensors.activations["masking"], tensors.activations["gru"]]
    for grad in grads:
        assert np.all(grad[padded] == 0)
        assert np.all(np.any(grad[~padded] != 0, axis=-1))


# -- 3. embedding --------------------------------------------------------------------------


def test_embedding_rows_touched_and_summed_duplicates(keras) -> None:  # type: ignore[no-untyped-def]
    """rows_touched = distinct ids; the table's gradient is the embedding output's gradient
    summed per id (np.add.at, float64), so duplicate ids add up."""
    kind = embedding(keras)
    report = run_gradscope(kind)
    tensors = report.tensors
    assert tensors is not None
    (row,) = [r for r in report.variables if r.path == "embed/embeddings"]
    distinct = np.unique(kind.x)
    assert distinct.size < kind.x.size  # duplicates present
    assert row.rows_touched == distinct.size
    out_grad = np.asarray(tensors.activations["embed"], np.float64)
    dense = np.zeros((30, 4))
    np.add.at(dense, kind.x.ravel(), out_grad.reshape(-1, 4))
    compare(tensors.variables["embed/embeddings"], dense, 1e-6, "embedding table")
    assert row.grad is not None
    assert row.grad.l2 == pytest.approx(float(np.linalg.norm(dense)), rel=1e-6)
    assert row.grad.zero_frac == pytest.approx(1 - distinct.size / 30)


# -- 4. attention ----------------------------------------------------------------------------


def test_masked_memory_steps_get_no_gradient(keras) -> None:  # type: ignore[no-untyped-def]
    """Memory steps masked for every query take no part in attention: zero gradient."""
    kind = attention(keras)
    tensors = run_gradscope(kind).tensors
    assert tensors is not None
    memory = tensors.inputs["memory"]
    assert np.all(memory[:, 3:] == 0)
    assert np.all(np.any(memory[:, :3] != 0, axis=-1))


# -- 5. training mode ------------------------------------------------------------------------


def _state(model: Any) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.non_trainable_variables]


def test_training_mode_uses_dropout_and_batch_statistics_then_restores(keras) -> None:  # type: ignore[no-untyped-def]
    """The reference (same seed states, restored before each of its passes) already
    agrees with gradscope in training mode; here: dropout really dropped units, the
    gradients differ from inference mode, a second run is identical, and BatchNorm's
    moving statistics and the dropout seed state are left as they were."""
    kind = batchnorm_dropout(keras)
    before = _state(kind.model)
    paths = [v.path for v in kind.model.non_trainable_variables]
    assert any("moving_mean" in p for p in paths)
    assert any("seed" in p for p in paths)
    first = run_gradscope(kind)
    after = _state(kind.model)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    second = run_gradscope(kind)
    inference = gradscope.inspect(kind.model, kind.x, kind.y, keep_tensors=True)
    assert first.tensors is not None
    assert second.tensors is not None
    assert inference.tensors is not None
    drop = {row.path: row for row in first.activations}["drop"]
    assert drop.value is not None
    assert 0.2 < drop.value.zero_frac < 0.8
    kernel = first.tensors.variables["dense/kernel"]
    np.testing.assert_array_equal(kernel, second.tensors.variables["dense/kernel"])
    assert not np.allclose(kernel, inference.tensors.variables["dense/kernel"], rtol=1e-2)


def test_a_passthrough_after_softmax_keeps_the_logits_loss(keras) -> None:  # type: ignore[no-untyped-def]
    """The loss is Keras's logits-path crossentropy: with saturated rows it exceeds what
    probabilities clipped at 1e-7 can give (-log 1e-7 = 16.1 per row)."""
    kind = softmax_then_passthrough(keras)
    report = run_gradscope(kind)
    assert report.loss.value > 16.2
    rows = {row.path: row for row in report.activations}
    assert rows["probs"].grad is not None
    assert rows["linear"].grad is not None


# -- 8. mixed precision ---------------------------------------------------------------------


def test_mixed_precision_dtypes_and_policy_restored(keras) -> None:  # type: ignore[no-untyped-def]
    """float16 activations and their gradients are reported as float16; variables stay
    float32; the global policy is what it was before the model was built."""
    before = keras.mixed_precision.dtype_policy().name
    kind = mixed_global(keras)
    assert keras.mixed_precision.dtype_policy().name == before != "mixed_float16"
    report = run_gradscope(kind)
    tensors = report.tensors
    assert tensors is not None
    dtypes = {row.path: row.dtype for row in report.activations}
    assert dtypes == {"dense": "float16", "norm": "float16", "proj": "float16", "out": "float32"}
    assert {tensors.activations[p].dtype.name for p in ("dense", "norm", "proj")} == {"float16"}
    assert {row.dtype for row in report.variables} == {"float32"}


def test_float16_overflow_is_counted_and_statistics_are_wide(keras) -> None:  # type: ignore[no-untyped-def]
    """Overflowed float16 activations show up as non-finite counts (with infinite norms),
    and a finite float16 tensor whose norm exceeds 65504 gets that norm exactly: the
    statistics are reduced in float32/float64, never in float16."""
    kind = float16_value_overflow(keras)
    report = run_gradscope(kind)
    rows = {row.path: row for row in report.activations}
    big, wide = rows["big"].value, rows["wide"].value
    assert big is not None
    assert wide is not None
    assert big.nonfinite == 6  # rows 0 and 1, three units each
    assert big.l2 == np.inf
    assert big.max_abs == np.inf
    assert wide.nonfinite == 0
    assert 65504 < wide.l2 < np.inf
    assert np.isfinite(report.loss.value)
    kind = float16_grad_overflow(keras)
    report = run_gradscope(kind)
    rows = {row.path: row for row in report.activations}
    amp = rows["amp"]
    assert amp.value is not None
    assert amp.value.nonfinite == 0
    assert amp.grad is not None
    assert amp.grad.nonfinite > 0
    assert np.isfinite(report.loss.value)
