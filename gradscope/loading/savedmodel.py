"""TensorFlow SavedModel directories, wrapped as a Keras model gradscope can differentiate.

Keras 3's ``load_model`` reads only ``.keras`` and ``.h5`` files; it is tried first all the
same, so a future Keras that reads SavedModels is used as is.  Otherwise the directory's
serving signature (``serving_default``, or its only signature) becomes one
``keras.layers.TFSMLayer``, called on ``keras.Input`` tensors built from the signature
(names, shapes, dtypes), inside a Functional ``keras.Model`` whose outputs are the
signature's named outputs.  The layer tracks the very ``tf.Variable`` objects the saved
graph reads, so the gradient engine differentiates them like any weight.

What a SavedModel cannot give: its internal layers (the graph is opaque, so the only
layer-output row is the signature's own outputs), a compiled loss (the loss is the sum of
the outputs, or ``--loss NAME`` with targets), and a training mode (the serving graph runs
in inference mode).  The notes returned with the model say so.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from .. import _tf
from ..errors import ModelLoadError, first_line, received

SAVED_MODEL_FILE = "saved_model.pb"
DEFAULT_ENDPOINT = "serving_default"
LAYER_OUTPUTS_NOTE = (
    "SavedModel: per-layer output gradients are unavailable (the saved graph hides its "
    "layers); only the signature's outputs are reported as layer outputs."
)
NO_VARIABLES_NOTE = (
    "SavedModel: the serving signature reads no trainable variables; only input "
    "gradients are reported."
)


def load_savedmodel(path: Path, *, safe_mode: bool = True) -> tuple[Any, tuple[str, ...]]:
    """The SavedModel in ``path`` as a built Keras model, and notes for the report."""
    model = _try_keras_load(path, safe_mode)
    if model is not None:
        return model, ()
    layer = _signature_layer(path)
    model = _functional_model(layer, path)
    notes = [LAYER_OUTPUTS_NOTE]
    if not model.trainable_variables:
        notes.append(NO_VARIABLES_NOTE)
    return model, tuple(notes)


def _try_keras_load(path: Path, safe_mode: bool) -> Any:
    """Keras's own loader; Keras 3 refuses SavedModel directories, so ``None`` is expected."""
    keras = _tf.keras()
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=safe_mode)
    except ValueError:  # "File format not supported": fall back to the serving signature
        return None


@cache
def _layer_class() -> type[Any]:
    """A ``TFSMLayer`` taking a dict of named inputs, built on first use (Keras is lazy)."""
    keras = _tf.keras()
    tf = _tf.tensorflow()

    class TFSMSignatureLayer(keras.layers.TFSMLayer):  # type: ignore[misc, name-defined]
        """Calls a serving signature with keyword arguments, one per named input.

        ``TFSMLayer.call`` passes its inputs positionally, which a signature with several
        named inputs does not accept.  Inputs keep the signature's dtypes (no autocast to
        float32), and their gradients keep a static shape: the gradient of a loaded
        function loses its batch dimension, and gradscope's statistics want shapes.
        Variables are named ``<layer>/<saved name>`` like the weights of any layer (``/``
        in the saved name becomes ``_``, and a name taken twice gets a ``_1`` suffix).
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._convert_input_args = False

        def _add_existing_weight(self, weight: Any) -> None:
            name = _unique(weight.name.split(":")[0].replace("/", "_"), self.weights)
            with keras.name_scope(self.name, caller=self):
                variable = keras.Variable(
                    initializer=weight,
                    trainable=weight.trainable,
                    dtype=weight.dtype,
                    shape=weight.shape,
                    name=name,
                )
            self._track_variable(variable)

        def call(self, inputs: dict[str, Any], training: bool = False) -> Any:
            specs = input_specs(self)
            arguments = {
                name: _shaped_gradient(tf.cast(inputs[name], specs[name].dtype)) for name in specs
            }
            return self.call_endpoint_fn(**arguments)

    return TFSMSignatureLayer


def _unique(name: str, variables: list[Any]) -> str:
    """``name``, or ``name_1``, ``name_2``... when a variable already has it."""
    taken = {variable.name for variable in variables}
    candidate, index = name, 0
    while candidate in taken:
        index += 1
        candidate = f"{name}_{index}"
    return candidate


def _shaped_gradient(tensor: Any) -> Any:
    """``tensor`` itself, whose gradient gets the tensor's static shape back."""
    tf = _tf.tensorflow()
    if not tensor.dtype.is_floating:
        return tensor

    @tf.custom_gradient  # type: ignore[untyped-decorator, misc]
    def identity(value: Any) -> Any:
        def gradient(upstream: Any) -> Any:
            return tf.ensure_shape(upstream, value.shape)

        return tf.identity(value), gradient

    return identity(tensor)


def input_specs(layer: Any) -> dict[str, Any]:
    """The signature's named inputs, sorted by name: ``{name: tf.TensorSpec}``.

    A signature is a protobuf map, with no order of its own; sorting keeps the model's
    inputs (and the report's rows) in the same order on every load.
    """
    _, kwargs = layer.call_endpoint_fn.structured_input_signature
    return dict(sorted(kwargs.items()))


def _signature_layer(path: Path) -> Any:
    """The serving signature as a layer: ``serving_default``, or the only signature."""
    cls = _layer_class()
    try:
        return cls(str(path), call_endpoint=DEFAULT_ENDPOINT, name=DEFAULT_ENDPOINT)
    except ValueError as exc:
        if "endpoint" not in str(exc):
            raise ModelLoadError(f"{path}: cannot load the SavedModel: {first_line(exc)}") from exc
    except Exception as exc:  # a corrupt or incompatible SavedModel: anything can fail
        raise ModelLoadError(f"{path}: cannot load the SavedModel: {first_line(exc)}") from exc
    endpoint = _only_signature(path)
    return cls(str(path), call_endpoint=endpoint, name=_safe_name(endpoint))


def _only_signature(path: Path) -> str:
    """The name of the SavedModel's single signature, or a one-line error."""
    signatures = sorted(_tf.tensorflow().saved_model.load(str(path)).signatures)
    if len(signatures) == 1:
        return str(signatures[0])
    if not signatures:
        raise ModelLoadError(
            f"{path}: the SavedModel has no serving signature; gradscope calls the model "
            "through one (save it with model.export(dir), or tf.saved_model.save(obj, "
            "dir, signatures=fn))."
        )
    raise ModelLoadError(
        f"{path}: the SavedModel has no '{DEFAULT_ENDPOINT}' signature and several others; "
        f"expected one to call. {received(signatures)}"
    )


def _safe_name(text: str) -> str:
    """``text`` as a Keras object name: word characters only."""
    return re.sub(r"\W", "_", text) or "saved_model"


def _keras_input(name: str, spec: Any, path: Path) -> Any:
    keras = _tf.keras()
    if spec.shape.rank is None:
        raise ModelLoadError(
            f"{path}: signature input {name!r} has an unknown rank; gradscope needs the "
            "shape of every input (at least its rank)."
        )
    return keras.Input(batch_shape=tuple(spec.shape.as_list()), dtype=spec.dtype.name, name=name)


def _functional_model(layer: Any, path: Path) -> Any:
    """``keras.Model(inputs, layer(inputs))`` with one Input per signature input."""
    keras = _tf.keras()
    inputs = {name: _keras_input(name, spec, path) for name, spec in input_specs(layer).items()}
    if not inputs:
        raise ModelLoadError(f"{path}: the serving signature takes no inputs.")
    try:
        outputs = layer(inputs)
    except Exception as exc:  # the saved graph failed on symbolic inputs of its own specs
        raise ModelLoadError(
            f"{path}: the serving signature cannot be called: {first_line(exc)}"
        ) from exc
    outputs = dict(sorted(outputs.items())) if isinstance(outputs, dict) else {"output_0": outputs}
    model_inputs = next(iter(inputs.values())) if len(inputs) == 1 else inputs
    return keras.Model(model_inputs, outputs, name=_safe_name(path.resolve().name))
