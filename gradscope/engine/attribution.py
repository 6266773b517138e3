"""Input attributions, each method one compiled function vectorized over examples.

**What is attributed.**  A floating-point model input is attributed itself.  An integer
input (token ids) has no gradient; it is attributed through the output of the layer
that embeds it: the innermost layer call that takes a tensor computed from that input
by integer ops only (casts, reshapes) and returns a float tensor.  That layer's
``call`` is patched on the instance during the trace (as :mod:`.capture` does), so the
forward pass is the one Keras runs, with the embedding output replaced by the point the
method evaluates.  Grad-CAM's point is the chosen layer's output, recorded the same way.

**Rows.**  Every row method (saliency, gradient × input, SmoothGrad, Integrated
Gradients) evaluates ``k`` variants of each of the ``B`` examples: the batch is tiled to
``k·B`` rows, step-major (row ``s·B + i`` is variant ``s`` of example ``i``), and the
point of each row is a transform of the example's value ``v``: ``v`` itself (k = 1),
``v + σ·ε`` (SmoothGrad, ``ε`` fed by the caller) or ``v' + α_s (v − v')`` (Integrated
Gradients).  One reverse pass gives every row's gradient at its point; the graph
returns their weighted sum over the ``k`` variants, per example.  It is traced on exact
shapes, so that its memory can be read off the trace before it runs
(:meth:`AttributionEngine.rows_peak_bytes`); the caller keeps the shapes fixed (a
chunk of variants padded with zero weights, a short last batch padded with copies), so
one trace serves the run.

**Targets.**  A class target's score is the chosen output at the class (per position of
a sequence output, summed).  The loss target's score is each example's own loss: the
batch loss is evaluated with the data's sample weights times a vector ``w`` of ones
that the tape watches, so ``∂L/∂w_r`` is row ``r``'s term of the loss.  For a
mean-reduced loss (every Keras loss by default) the row's loss is ``rows · ∂L/∂w_r``,
for a sum-reduced one ``∂L/∂w_r`` (:func:`loss_reduction` tells them apart from two
evaluations).  The gradient of the sum of the rows' scores is each row's own
gradient, since rows do not interact in inference mode.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .. import _keras_private, _tf
from ..errors import MismatchError, UsageError
from ..loading.signature import ModelSignature
from ..losses import LossSpec, regularization, total_loss
from .capture import LayerNode, patched_calls, read_elsewhere, separate, walk_layers

RowMethod = Literal["saliency", "gradient-x-input", "smoothgrad", "integrated-gradients"]
Reduction = Literal["mean", "sum"]

_CONVOLUTION = re.compile(r"^(Base)?(Depthwise|Separable)?Conv(\d+D)?(Transpose)?$")
"""Keras's convolution classes (``Conv2D``, ``SeparableConv1D``, ``BaseConv``, ...), by
the names along a layer's class hierarchy."""

EXACT = None
"""``free`` of a trace on its arguments' exact shapes (see ``_concrete_for``)."""

MAX_SOURCE_STEPS = 256
"""How many integer tensors back the search from a layer's argument to a model input
may look: far more than the casts and reshapes between an input and its embedding."""


@dataclass(frozen=True)
class TargetSpec:
    """What the score of a row is: the loss, or the output at ``flat_index`` (in
    ``tf.nest.flatten`` order of the model's outputs) at given classes, read from its
    cached logits when ``logits``."""

    kind: Literal["loss", "class"]
    flat_index: int = 0
    output: str | None = None
    logits: bool = False


@dataclass
class Point:
    """One attributed tensor, as found when the function was traced: the model input
    it belongs to, the layer whose output stands for it (``through``, integer inputs),
    and its per-example shape and dtype."""

    name: str
    through: str | None
    shape: tuple[int, ...]
    dtype: str


def is_convolution(layer: Any) -> bool:
    """Whether ``layer`` is a Keras convolution (any class along its hierarchy)."""
    return any(_CONVOLUTION.match(klass.__name__) for klass in type(layer).__mro__)


def _rows_of(tensor: Any) -> Any:
    tf = _tf.tensorflow()
    return tf.shape(tensor)[0]


def _tile(tensor: Any, k: Any) -> Any:
    """``tensor`` repeated ``k`` times along the batch axis, step-major."""
    tf = _tf.tensorflow()
    multiples = tf.concat([[k], tf.ones([tf.rank(tensor) - 1], tf.int32)], axis=0)
    return tf.tile(tensor, multiples)


def _split(rows: Any, k: Any) -> Any:
    """``k·B`` rows as ``[k, B, ...]``."""
    tf = _tf.tensorflow()
    shape = tf.shape(rows)
    return tf.reshape(rows, tf.concat([[k, shape[0] // k], shape[1:]], axis=0))


def _merge(split: Any) -> Any:
    """``[k, B, ...]`` back to ``k·B`` rows."""
    tf = _tf.tensorflow()
    shape = tf.shape(split)
    return tf.reshape(split, tf.concat([[shape[0] * shape[1]], shape[2:]], axis=0))


def _per_example(tensor: Any, op: Callable[..., Any]) -> Any:
    """``op`` over every axis but the first (``[B]`` from ``[B, ...]``)."""
    tf = _tf.tensorflow()
    return op(tf.reshape(tensor, [tf.shape(tensor)[0], -1]), axis=1)


def _wide(tensor: Any) -> Any:
    """Float64 stays float64; every other float is reduced in float32."""
    tf = _tf.tensorflow()
    return tensor if tensor.dtype == tf.float64 else tf.cast(tensor, tf.float32)


def _integer_source(tensor: Any, sources: Mapping[str, Any]) -> str | None:
    """The model input (by name) that ``tensor`` is computed from by integer ops only,
    or ``None``.  ``sources`` maps input names to their graph tensors."""
    tf = _tf.tensorflow()
    by_name = {t.name: name for name, t in sources.items()}
    frontier, seen = [tensor], 0
    while frontier and seen < MAX_SOURCE_STEPS:
        current = frontier.pop()
        seen += 1
        found = by_name.get(getattr(current, "name", None))
        if found is not None:
            return found
        op = getattr(current, "op", None)
        for parent in getattr(op, "inputs", ()):
            if parent.dtype.is_integer or parent.dtype == tf.bool:
                frontier.append(parent)
    return None


def _first_argument(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    if args:
        return args[0]
    return kwargs.get("inputs", next(iter(kwargs.values()), None))


Transform = Callable[[str, Any, Callable[[Any], Any]], Any]
"""``(input name, embedding output, embed)`` -> the point; ``embed(ids)`` runs the same
layer call on other ids (Integrated Gradients' baseline)."""


class _Embeddings:
    """During one trace: replace, at the innermost layer call that embeds each integer
    input, that call's output by ``transform`` of it, and record the point."""

    def __init__(self, nodes: list[LayerNode], sources: Mapping[str, Any], transform: Transform):
        self.nodes = nodes
        self.sources = dict(sources)
        self.transform = transform
        self.points: dict[str, Any] = {}
        self.through: dict[str, str] = {}
        self.also: dict[str, list[str]] = {}
        self.graph: Any = None

    @contextlib.contextmanager
    def active(self, tape: Any) -> Iterator[None]:
        self.graph = _tf.tensorflow().compat.v1.get_default_graph()

        def wrap(original: Callable[..., Any], node: LayerNode) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                before = len(self.points)
                outputs = original(*args, **kwargs)
                if len(self.points) > before or not self.sources:
                    return outputs  # a call inside this one embedded the ids
                return self._substitute(outputs, original, node, tape, (args, kwargs))

            return call

        with patched_calls(self.nodes, wrap):
            yield

    def _substitute(
        self, outputs: Any, original: Callable[..., Any], node: LayerNode, tape: Any, call: Any
    ) -> Any:
        tf = _tf.tensorflow()
        args, kwargs = call
        argument = _first_argument(args, kwargs)
        if not (tf.is_tensor(argument) and tf.is_tensor(outputs)):
            return outputs
        if not (argument.dtype.is_integer and outputs.dtype.is_floating):
            return outputs
        if tf.compat.v1.get_default_graph() is not self.graph:
            return outputs  # inside a loop body: not differentiable from here
        name = _integer_source(argument, self.sources)
        if name is None:
            return outputs
        if name in self.points:
            self.also.setdefault(name, []).append(node.path)
            return outputs

        def embed(ids: Any) -> Any:
            return original(ids, *args[1:], **kwargs) if args else original(ids, **kwargs)

        point = self.transform(name, outputs, embed)
        _keras_private.copy_tensor_attributes(outputs, point)
        tape.watch(point)
        self.points[name] = point
        self.through[name] = node.path
        return point


class _LayerOutputs:
    """During one trace: record (and watch) the outputs of some layers, in call order,
    each separated from other readers as :mod:`.capture` does."""

    def __init__(self, nodes: list[LayerNode]) -> None:
        self.nodes = nodes
        self.outputs: list[tuple[LayerNode, Any]] = []
        self.calls: dict[int, int] = {}

    @contextlib.contextmanager
    def active(self, tape: Any) -> Iterator[None]:
        tf = _tf.tensorflow()
        graph = tf.compat.v1.get_default_graph()

        def wrap(original: Callable[..., Any], node: LayerNode) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                outputs = original(*args, **kwargs)
                self.calls[id(node.layer)] = self.calls.get(id(node.layer), 0) + 1
                usable = tf.is_tensor(outputs) and outputs.dtype.is_floating
                if not usable or tf.compat.v1.get_default_graph() is not graph:
                    return outputs
                inputs = {id(t) for t in tf.nest.flatten((args, kwargs)) if tf.is_tensor(t)}
                if read_elsewhere(outputs, [], inputs):
                    outputs = separate(outputs)
                tape.watch(outputs)
                self.outputs.append((node, outputs))
                return outputs

            return call

        with patched_calls(self.nodes, wrap):
            yield


@dataclass
class Trace:
    """What the last trace found: the attributed points, integer inputs nothing embeds,
    other layers that embed an input already attributed, and Grad-CAM's layer."""

    points: dict[str, Point] = field(default_factory=dict)
    unembedded: list[str] = field(default_factory=list)
    also: dict[str, list[str]] = field(default_factory=dict)
    layer: LayerNode | None = None
    layer_shape: tuple[int, ...] = ()
    channel_axis: int = -1


def _class_score(y: Any, classes: Any) -> Any:
    """Per row: ``y`` at ``classes`` (one class per row, or per position of a sequence
    output), summed over the positions."""
    tf = _tf.tensorflow()
    picked = y * tf.one_hot(classes, tf.shape(y)[-1], dtype=y.dtype)
    return _per_example(_wide(picked), tf.reduce_sum)


def _sum_of_outputs(y_pred: Any) -> Any:
    tf = _tf.tensorflow()
    flat = [t for t in tf.nest.flatten(y_pred) if t.dtype.is_floating]
    return tf.add_n([_per_example(_wide(t), tf.reduce_sum) for t in flat])


class AttributionEngine:
    """The compiled functions of one model, loss, target and method.

    ``forward`` evaluates the real examples (scores, predicted classes, each example's
    loss term, the model's loss); ``rows`` the row methods' variants of them; ``gradcam``
    Grad-CAM.  ``reduction`` is how the loss combines its per-example terms (see the
    module docstring); it only matters for the loss target.
    """

    def __init__(
        self,
        model: Any,
        signature: ModelSignature,
        loss: LossSpec,
        target: TargetSpec,
        *,
        method: str,
        noise: float = 0.0,
        reduction: Reduction = "mean",
        layer: LayerNode | None = None,
    ) -> None:
        tf = _tf.tensorflow()
        self.model = model
        self.signature = signature
        self.loss = loss
        self.target = target
        self.method = method
        self.noise = float(noise)
        self.reduction: Reduction = reduction
        self.nodes = walk_layers(model)
        self.layer = layer
        self.integer_inputs = [s.name for s in signature.inputs if not s.is_float]
        self.trace = Trace()
        self._forward_fn = tf.function(self._forward, autograph=False)
        self._rows_fn = tf.function(self._rows, autograph=False)
        self._gradcam_fn = tf.function(self._gradcam, autograph=False)
        self._concrete: dict[str, Any] = {}

    # -- shared pieces of the traced functions ---------------------------------------

    @property
    def traces(self) -> int:
        """How many times the compiled functions were traced, in all."""
        functions = (self._forward_fn, self._rows_fn, self._gradcam_fn)
        return sum(int(f.experimental_get_tracing_count()) for f in functions)

    def _targets(self, targets: Any, k: Any) -> Any:
        if targets is None or not self.loss.needs_targets:
            return None
        return self.signature.pack_outputs({name: _tile(t, k) for name, t in targets.items()})

    def _scores(
        self, packed: Any, y_pred: Any, y_true: Any, probe: Any, classes: Any, data_weight: Any
    ) -> tuple[Any, Any | None]:
        """``(objective, per-row scores)``: for the loss target with a real loss the
        scores come from the tape (``None`` here) and the objective is the loss."""
        tf = _tf.tensorflow()
        if self.target.kind == "class":
            y = tf.nest.flatten(y_pred)[self.target.flat_index]
            if self.target.logits:
                logits = _keras_private.cached_logits(y)
                if logits is None:
                    raise MismatchError(
                        f"--logits: output {self.target.output!r} was not computed by a "
                        "softmax or sigmoid that keeps its logits; expected such an "
                        "output. Received: a plain output (drop --logits)"
                    )
                y = logits
            scores = _class_score(y, classes)
            return tf.reduce_sum(scores), scores
        if not self.loss.needs_targets:
            scores = _sum_of_outputs(y_pred)
            return tf.reduce_sum(scores), scores
        weight = self._loss_weights(probe, data_weight, y_pred)
        value = total_loss(self.loss, self.model, packed, y_true, y_pred, weight, False)
        return value, None

    @staticmethod
    def _loss_weights(probe: Any, data_weight: Any, y_pred: Any) -> Any:
        """The sample weights the loss is evaluated with: the data's own (per example
        or per token) times the probe ``w`` (one entry per row), shaped so that Keras
        broadcasts ``w_r`` over row ``r``'s loss values (whose rank is the output's
        rank less one: a loss reduces the last axis)."""
        tf = _tf.tensorflow()

        def shaped(rank: int) -> Any:
            return tf.reshape(probe, [-1] + [1] * (max(rank, 1) - 1))

        if data_weight is not None:
            weight = tf.cast(data_weight, probe.dtype)
            return weight * shaped(len(weight.shape))
        flat = tf.nest.flatten(y_pred)
        ranks = [len(t.shape) - 1 for t in flat]
        if len(set(ranks)) == 1:
            return shaped(ranks[0])
        return tf.nest.pack_sequence_as(y_pred, [shaped(rank) for rank in ranks])

    def _row_scores(self, scores: Any, weight_gradient: Any, rows: Any) -> tuple[Any, Any]:
        """``(per-row scores, gradient scale)``: a class target's scores as they are (scale
        1); for the loss, each row's loss term ``∂L/∂w_r`` times the factor that makes it
        the row's own loss (the rows for a mean reduction, else 1), which also scales
        the gradients of the objective ``L``."""
        tf = _tf.tensorflow()
        if scores is not None:
            return scores, tf.ones([], tf.float32)
        scale = tf.cast(rows, tf.float32) if self.reduction == "mean" else tf.ones([], tf.float32)
        return weight_gradient * scale, scale

    def _model_outputs(self, inputs: Mapping[str, Any]) -> Any:
        return self.model(self.signature.pack_inputs(inputs), training=False)

    # -- forward: the real examples --------------------------------------------------

    def _forward(
        self, inputs: dict[str, Any], targets: Any, data_weight: Any, fill: Any
    ) -> dict[str, Any]:
        tf = _tf.tensorflow()
        rows = _rows_of(next(iter(inputs.values())))
        weight = tf.ones([rows], tf.float32)
        sources = {name: inputs[name] for name in self.integer_inputs}
        embeddings = _Embeddings(self.nodes, sources, lambda name, value, embed: value)
        with tf.GradientTape() as tape:
            tape.watch(weight)
            with embeddings.active(tape):
                y_pred = self._model_outputs(inputs)
            y_true = self._targets(targets, 1)
            packed = self.signature.pack_inputs(inputs)
            if self.loss.needs_targets:
                sample_weight = self._loss_weights(weight, data_weight, y_pred)
                loss = total_loss(
                    self.loss, self.model, packed, y_true, y_pred, sample_weight, False
                )
            else:
                loss = tf.reduce_sum(_sum_of_outputs(y_pred))
            reg, _ = regularization(self.model)
        shares = tape.gradient(loss, weight) if self.loss.needs_targets else None
        result: dict[str, Any] = {
            "loss": tf.cast(loss, tf.float64),
            "regularization": tf.cast(reg, tf.float64),
            "shares": tf.zeros([rows], tf.float32) if shares is None else shares,
            "sums": _sum_of_outputs(y_pred),
            "embedded": {name: _wide(t) for name, t in embeddings.points.items()},
        }
        if self.target.kind == "class":
            y = tf.nest.flatten(y_pred)[self.target.flat_index]
            predicted = tf.argmax(y, axis=-1, output_type=tf.int32)
            chosen = tf.where(fill < 0, predicted, tf.fill(tf.shape(predicted), fill))
            result["classes"] = chosen
            result["scores"] = self._scores(packed, y_pred, y_true, weight, chosen, None)[1]
        result["masks"] = {
            name: mask
            for name, point in embeddings.points.items()
            if (mask := _keras_private.keras_mask(point)) is not None
        }
        self._note_points(embeddings, inputs)
        return result

    def _note_points(self, embeddings: _Embeddings, inputs: Mapping[str, Any]) -> None:
        """Record, at trace time, what is attributed (see :class:`Trace`)."""
        points: dict[str, Point] = {}
        for spec in self.signature.inputs:
            if spec.is_float:
                tensor = inputs[spec.name]
                points[spec.name] = Point(spec.name, None, _static(tensor), tensor.dtype.name)
            elif spec.name in embeddings.points:
                tensor = embeddings.points[spec.name]
                through = embeddings.through[spec.name]
                points[spec.name] = Point(spec.name, through, _static(tensor), tensor.dtype.name)
        self.trace.points = points
        self.trace.unembedded = [n for n in self.integer_inputs if n not in embeddings.points]
        self.trace.also = dict(embeddings.also)

    def forward(
        self, inputs: Mapping[str, np.ndarray], targets: Any, data_weight: Any, fill: int
    ) -> dict[str, Any]:
        """:meth:`_forward` on a batch, as numpy: the loss, each example's loss term
        (``shares``), the sums of the outputs and the embedding outputs; for a class
        target the classes (the predicted ones when ``fill`` is negative, else ``fill``
        everywhere) and the scores at them."""
        arguments = (dict(inputs), targets, data_weight, np.asarray(fill, np.int32))
        return _numpy(self._call("forward", self._forward_fn, arguments, (1, 1, 1, 0)))

    # -- rows: saliency, gradient x input, SmoothGrad, Integrated Gradients -----------

    def _point_transform(
        self, alphas: Any, noise: Any, bases: Any, base_ids: Any, record: dict[str, Any]
    ) -> Callable[[str, Any, Callable[[Any], Any]], Any]:
        """The method's transform of an example's value into its ``k`` points."""
        tf = _tf.tensorflow()
        k = tf.shape(alphas)[0]

        def transform(name: str, rows: Any, embed: Callable[[Any], Any]) -> Any:
            split = _split(rows, k)
            value = split[0]
            record.setdefault("values", {})[name] = _wide(value)
            if self.method == "integrated-gradients":
                if bases is not None and name in bases:
                    base = tf.cast(bases[name], value.dtype)
                elif base_ids is not None and name in base_ids:
                    base = embed(base_ids[name])
                else:
                    base = tf.zeros_like(value)
                record.setdefault("bases", {})[name] = _wide(base)
                shape = tf.concat([[k], tf.ones([tf.rank(value)], tf.int32)], axis=0)
                alpha = tf.reshape(tf.cast(alphas, value.dtype), shape)
                split = base[None] + alpha * (split - base[None])
            elif self.method == "smoothgrad":
                spread = _per_example(value, tf.reduce_max) - _per_example(value, tf.reduce_min)
                sigma = self.noise * spread
                shape = tf.concat([[1, -1], tf.ones([tf.rank(value) - 1], tf.int32)], axis=0)
                split = split + tf.reshape(sigma, shape) * tf.cast(noise[name], value.dtype)
            return _merge(split)

        return transform

    def _rows(
        self,
        inputs: dict[str, Any],
        targets: Any,
        data_weight: Any,
        classes: Any,
        alphas: Any,
        step_weights: Any,
        noise: Any,
        bases: Any,
        base_ids: Any,
    ) -> dict[str, Any]:
        tf = _tf.tensorflow()
        k = tf.shape(alphas)[0]
        tiled = {name: _tile(t, k) for name, t in inputs.items()}
        rows = _rows_of(next(iter(tiled.values())))
        weight = tf.ones([rows], tf.float32)
        record: dict[str, Any] = {}
        transform = self._point_transform(alphas, noise, bases, base_ids, record)
        sources = {name: tiled[name] for name in self.integer_inputs}
        embeddings = _Embeddings(self.nodes, sources, transform)
        with tf.GradientTape() as tape:
            tape.watch(weight)
            points = {}
            for spec in self.signature.inputs:
                if spec.is_float:
                    points[spec.name] = transform(spec.name, tiled[spec.name], lambda ids: ids)
                    tape.watch(points[spec.name])
            with embeddings.active(tape):
                y_pred = self._model_outputs({**tiled, **points})
            y_true = self._targets(targets, k)
            packed = self.signature.pack_inputs({**tiled, **points})
            tiled_classes = None if classes is None else _tile(classes, k)
            tiled_weight = None if data_weight is None else _tile(data_weight, k)
            objective, scores = self._scores(
                packed, y_pred, y_true, weight, tiled_classes, tiled_weight
            )
        points.update(embeddings.points)
        grads = tape.gradient(
            objective, {"points": points, "weight": weight},
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )  # fmt: skip
        scores, scale = self._row_scores(scores, grads["weight"], rows)
        weighted = {}
        for name, gradient in grads["points"].items():
            gradient = _wide(gradient) * tf.cast(scale, _wide(gradient).dtype)
            weights = tf.cast(step_weights, gradient.dtype)
            weighted[name] = tf.tensordot(weights, _split(gradient, k), axes=[[0], [0]])
        self._note_points(embeddings, inputs)
        return {
            "gradients": weighted,
            "scores": _split(tf.cast(scores, tf.float64), k),
            "values": record.get("values", {}),
            "bases": record.get("bases", {}),
        }

    def rows(self, arguments: Sequence[Any]) -> dict[str, Any]:
        """:meth:`_rows` on ``(inputs, targets, data_weight, classes, alphas,
        step_weights, noise, bases, base_ids)``, as numpy (traced on these exact
        shapes, once: :meth:`rows_peak_bytes` of the same shapes made that trace)."""
        return _numpy(self._call("rows", self._rows_fn, tuple(arguments), EXACT))

    def rows_peak_bytes(self, arguments: Sequence[Any]) -> int:
        """The traced peak memory of one :meth:`rows` call on arrays shaped like
        ``arguments`` (traced, not run; the trace a call of those shapes then uses)."""
        return self._peak_bytes("rows", self._rows_fn, tuple(arguments))

    # -- Grad-CAM -------------------------------------------------------------------

    def _gradcam(
        self, inputs: dict[str, Any], targets: Any, data_weight: Any, classes: Any, size: Any
    ) -> dict[str, Any]:
        tf = _tf.tensorflow()
        rows = _rows_of(next(iter(inputs.values())))
        weight = tf.ones([rows], tf.float32)
        candidates = (
            [self.layer] if self.layer is not None else
            [n for n in self.nodes if is_convolution(n.layer)]
        )  # fmt: skip
        recorder = _LayerOutputs(candidates)
        with tf.GradientTape() as tape:
            tape.watch(weight)
            with recorder.active(tape):
                y_pred = self._model_outputs(inputs)
            y_true = self._targets(targets, 1)
            packed = self.signature.pack_inputs(inputs)
            objective, scores = self._scores(packed, y_pred, y_true, weight, classes, data_weight)
        maps = self._gradcam_layer(recorder)
        grads = tape.gradient(
            objective, {"maps": maps, "weight": weight},
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )  # fmt: skip
        scores, scale = self._row_scores(scores, grads["weight"], rows)
        gradient = _wide(grads["maps"]) * tf.cast(scale, _wide(grads["maps"]).dtype)
        cam = gradcam_map(_wide(maps), gradient, self.trace.channel_axis)
        resized = tf.zeros([0])
        if size is not None and len(cam.shape) == 3:
            resized = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]
        return {"cam": cam, "resized": resized, "scores": tf.cast(scores, tf.float64)}

    def _gradcam_layer(self, recorder: _LayerOutputs) -> Any:
        """The Grad-CAM layer's output (the layer goes to :attr:`trace`): the named layer,
        else the last convolution called; refused unless called once, with a spatial
        output."""
        usable = [(n, t) for n, t in recorder.outputs if len(t.shape) >= 3]
        if not usable:
            raise UsageError(_no_map_message(self.layer, recorder))
        node, tensor = usable[-1]
        calls = recorder.calls.get(id(node.layer), 0)
        if calls != 1:
            raise UsageError(
                f"--layer {node.path}: Grad-CAM needs a layer called once per forward "
                f"pass; expected 1 call. Received: {calls} calls (a shared layer)"
            )
        channels_first = getattr(node.layer, "data_format", None) == "channels_first"
        self.trace.layer = node
        self.trace.layer_shape = _static(tensor)
        self.trace.channel_axis = 1 if channels_first else len(tensor.shape) - 1
        return tensor

    def gradcam(
        self,
        inputs: Mapping[str, np.ndarray],
        targets: Any,
        data_weight: Any,
        classes: Any,
        size: Any,
    ) -> dict[str, Any]:
        """:meth:`_gradcam` on a batch, as numpy; ``size`` is ``(height, width)`` to
        resize the maps to, or ``None``."""
        arguments = self._gradcam_arguments(inputs, targets, data_weight, classes, size)
        return _numpy(self._call("gradcam", self._gradcam_fn, arguments, EXACT))

    def gradcam_peak_bytes(
        self,
        inputs: Mapping[str, np.ndarray],
        targets: Any,
        data_weight: Any,
        classes: Any,
        size: Any,
    ) -> int:
        """The traced peak memory of :meth:`gradcam` on these shapes (traced, not run)."""
        arguments = self._gradcam_arguments(inputs, targets, data_weight, classes, size)
        return self._peak_bytes("gradcam", self._gradcam_fn, arguments)

    @staticmethod
    def _gradcam_arguments(
        inputs: Mapping[str, np.ndarray], targets: Any, data_weight: Any, classes: Any, size: Any
    ) -> tuple[Any, ...]:
        size_arg = None if size is None else np.asarray(size, np.int32)
        return (dict(inputs), targets, data_weight, classes, size_arg)

    # -- calling: traces by shape ------------------------------------------------------

    def _concrete_for(
        self, key: str, function: Any, arguments: tuple[Any, ...], free: tuple[int, ...] | None
    ) -> Any:
        """``function``'s trace for ``arguments``: on their exact shapes (``free`` is
        ``None``) or with the first ``free[i]`` dimensions of argument ``i`` unknown,
        so that every batch size shares one trace.  Traced on first use."""
        specs = _relaxed(arguments, free or (0,) * len(arguments))
        signature = f"{key}:{specs!r}"
        if signature not in self._concrete:
            self._concrete[signature] = function.get_concrete_function(*specs)
        return self._concrete[signature]

    def _peak_bytes(self, key: str, function: Any, arguments: tuple[Any, ...]) -> int:
        from .step_memory import peak_live_bytes

        return peak_live_bytes(self._concrete_for(key, function, arguments, EXACT).graph)

    def _call(
        self,
        key: str,
        function: Any,
        arguments: tuple[Any, ...],
        free: tuple[int, ...] | None,
    ) -> Any:
        """Run :meth:`_concrete_for`'s trace on ``arguments``."""
        tf = _tf.tensorflow()
        concrete = self._concrete_for(key, function, arguments, free)
        tensors = tf.nest.map_structure(
            lambda a: None if a is None else tf.convert_to_tensor(a), arguments
        )
        return concrete(*tensors)


def gradcam_map(maps: Any, gradient: Any, channel_axis: int) -> Any:
    """Grad-CAM: the feature maps weighted by their gradient's spatial mean per channel,
    summed over channels, then ReLU (Selvaraju et al. 2017, eq. 1-2)."""
    tf = _tf.tensorflow()
    rank = len(maps.shape)
    spatial = [axis for axis in range(1, rank) if axis != channel_axis]
    weights = tf.reduce_mean(gradient, axis=spatial, keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * maps, axis=channel_axis))


def _no_map_message(layer: LayerNode | None, recorder: _LayerOutputs) -> str:
    if layer is not None:
        shapes = [tuple(t.shape) for _, t in recorder.outputs]
        found = f"output shape {shapes[0]}" if shapes else "no float output in the forward pass"
        return (
            f"--layer {layer.path}: Grad-CAM needs a layer whose output has spatial axes "
            f"(batch, ..., channels). Received: {found}"
        )
    return (
        "--method gradcam: the model has no convolution layer with a spatial output; "
        "expected one, or --layer NAME of a layer with output (batch, ..., channels). "
        "Received: no convolution called in the forward pass"
    )


def _static(tensor: Any) -> tuple[int, ...]:
    """The per-example shape of a traced tensor (unknown dimensions as -1)."""
    return tuple(-1 if d is None else int(d) for d in tensor.shape[1:])


def _relaxed(arguments: tuple[Any, ...], free: tuple[int, ...]) -> list[Any]:
    """TensorSpecs for ``arguments``, the first ``free[i]`` dimensions of argument ``i``
    unknown (one for a batch, two for SmoothGrad's noise ``[steps, examples, ...]``)."""
    tf = _tf.tensorflow()

    def relax(argument: Any, count: int) -> Any:
        def spec(array: Any) -> Any:
            shape: list[int | None] = list(np.shape(array))
            shape[: min(count, len(shape))] = [None] * min(count, len(shape))
            return tf.TensorSpec(shape, tf.as_dtype(np.asarray(array).dtype))

        return None if argument is None else tf.nest.map_structure(spec, argument)

    return [relax(a, n) for a, n in zip(arguments, free, strict=True)]


def _numpy(result: Any) -> dict[str, Any]:
    """A traced function's result dictionary, its tensors as numpy."""
    tf = _tf.tensorflow()
    converted: dict[str, Any] = tf.nest.map_structure(
        lambda t: None if t is None else t.numpy(), result
    )
    return converted


def loss_reduction(shares_once: np.ndarray, shares_twice: np.ndarray) -> Reduction | None:
    """How a loss combines its examples' terms, from each example's term in a batch
    (``shares_once``) and in the same batch given twice (``shares_twice``, the first
    copy): halved for a mean, equal for a sum, else ``None`` (the terms interact)."""
    reference = np.abs(shares_once).max(initial=0.0)
    if reference == 0.0:
        return "mean"
    scale = max(reference, 1e-30)
    for reduction, ratio in (("mean", 0.5), ("sum", 1.0)):
        if np.abs(shares_twice - ratio * shares_once).max() <= 1e-4 * scale:
            return reduction  # type: ignore[return-value]
    return None


__all__ = [
    "AttributionEngine",
    "Point",
    "TargetSpec",
    "Trace",
    "gradcam_map",
    "is_convolution",
    "loss_reduction",
]
