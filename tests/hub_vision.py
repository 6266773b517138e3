"""Tiny keras_hub models (a BERT classifier, a ResNet backbone, a ViT image classifier)
saved as ``.keras`` files with a batch ``.npz``, for ``tests/test_hub_vision.py``.

Every model is built from a config with random weights (nothing is downloaded), seeded,
and kept tiny so that each gradscope command takes seconds:

* ``bert_classifier``: ``BertTextClassifier`` on a ``BertBackbone`` with 2 layers, hidden
  size 16 and 2 heads, ``preprocessor=None``; dict inputs ``token_ids``, ``padding_mask``
  and ``segment_ids`` of unknown length ``(None, None)``; the last two tokens of each row
  are padding.  Dropout 0.1 (backbone) and 0.1 (classifier head) for ``--training``.
* ``resnet_backbone``: a bare ``ResNetBackbone`` (a stem and one basic block, with
  BatchNormalization) with unknown image size ``(None, None, 3)``, run on 16x16 images;
  not compiled, so gradscope differentiates the sum of its outputs.
* ``vit_classifier``: ``ViTImageClassifier`` on a ``ViTBackbone`` (16x16 images, 8x8
  patches, one transformer block, hidden size 8), ``preprocessor=None``.

The classifiers are compiled explicitly with ``SparseCategoricalCrossentropy(
from_logits=True)`` (keras_hub's default for them too, but a test should not depend on a
default).  :func:`load_case` loads the saved file back as gradscope does and packs the
batch the way the model is called; :class:`SumOfOutputs` gives the bare backbone the loss
gradscope uses without a compiled loss, for the one-tape references.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradscope import _tf

ROWS = 4  # examples in every batch
CLASSES = 3
BERT_LENGTH = 8  # tokens per row, the last PADDED of them padding
PADDED = 2
VOCABULARY = 50
IMAGE = 16  # image side (pixels)


@dataclass(frozen=True)
class HubCase:
    """One saved model and batch, and what the tests need to know about them.

    ``rows`` are layer-output rows gradscope must report (checked against the probe
    reference with the others); ``small_vars`` two small variables for exact Hessian
    blocks; ``compiled`` whether the model has a compiled loss (else: sum of outputs);
    ``attention`` whether it has attention/``EinsumDense`` layers (``--per-sample`` on
    those needs the oneDNN fix of issue 10).  ``zero_grads`` are glob patterns of
    variables whose gradient is exactly zero in exact arithmetic, so that both sides
    hold only float32 rounding noise there: an attention key bias adds the same amount
    to every score of a query, which the softmax cancels.
    """

    name: str
    model_path: Path
    data_path: Path
    compiled: bool
    attention: bool
    rows: tuple[str, ...]
    small_vars: tuple[str, ...]
    batchnorm: bool = False
    dropout: bool = False
    zero_grads: tuple[str, ...] = ()


@dataclass
class Loaded:
    """A case's model (loaded back from its file) and its batch, packed for ``model(x)``."""

    model: Any
    x: Any  # a dict (BERT) or one array, as the model is called
    y: Any  # integer class ids, or None for the bare backbone
    input_names: list[str]  # names of the leaves of ``x`` in ``tf.nest.flatten`` order


def _compile(model: Any) -> None:
    keras = _tf.keras()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def bert_classifier(folder: Path, rng: np.random.Generator) -> HubCase:
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=BERT_LENGTH,
    )
    model = keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=CLASSES, preprocessor=None
    )
    _compile(model)
    mask = np.ones((ROWS, BERT_LENGTH), np.int32)
    mask[:, BERT_LENGTH - PADDED :] = 0
    tokens = rng.integers(1, VOCABULARY, (ROWS, BERT_LENGTH)).astype(np.int32) * mask
    segments = np.zeros((ROWS, BERT_LENGTH), np.int32)
    segments[:, BERT_LENGTH // 2 :] = 1
    segments *= mask
    arrays = {
        "token_ids": tokens,
        "padding_mask": mask,
        "segment_ids": segments,
        "y": rng.integers(0, CLASSES, ROWS).astype(np.int32),
    }
    layer = "bert_backbone/transformer_layer_1"
    rows = (
        "bert_backbone/token_embedding",
        f"{layer}/self_attention_layer/query",
        f"{layer}/self_attention_layer/attention_output",
        f"{layer}/self_attention_layer",
        layer,
        "bert_backbone/pooled_dense",
        "bert_backbone:0",
        "logits",
    )
    small = ("transformer_layer_1/self_attention_layer_norm/gamma", "logits/bias")
    return _save(folder, "bert_classifier", model, arrays, True, True, rows, small, dropout=True)


def resnet_backbone(folder: Path, rng: np.random.Generator) -> HubCase:
    import keras_hub

    # keras_hub requires 64 filters in the first stack; a 64-filter stem lets its first
    # basic block add the identity shortcut (stride 1).
    model = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
    )
    arrays = {"x": rng.normal(size=(ROWS, IMAGE, IMAGE, 3)).astype(np.float32)}
    rows = (
        "conv1_conv",
        "conv1_bn",
        "pool1_pool",
        "stack0_block0_1_bn",
        "stack0_block0_add",
        "stack0_block0_out",
    )
    small = ("conv1_bn/gamma", "stack0_block0_2_bn/beta")
    return _save(folder, "resnet_backbone", model, arrays, False, False, rows, small, bn=True)


def vit_classifier(folder: Path, rng: np.random.Generator) -> HubCase:
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(IMAGE, IMAGE, 3),
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
    )
    model = keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=CLASSES, preprocessor=None
    )
    _compile(model)
    arrays = {
        "x": rng.normal(size=(ROWS, IMAGE, IMAGE, 3)).astype(np.float32),
        "y": rng.integers(0, CLASSES, ROWS).astype(np.int32),
    }
    block = "vi_t_backbone/vit_encoder/transformer_block_1"
    rows = (
        "vi_t_backbone/vit_patching_and_embedding/patch_embedding",
        f"{block}/mha/query",
        f"{block}/mha",
        f"{block}/mlp/dropout@1",
        block,
        "vi_t_backbone",
        "predictions",
    )
    small = ("vit_encoder/transformer_block_1/ln_2/gamma", "predictions/bias")
    return _save(folder, "vit_classifier", model, arrays, True, True, rows, small)


def _save(
    folder: Path,
    name: str,
    model: Any,
    arrays: dict[str, np.ndarray],
    compiled: bool,
    attention: bool,
    rows: tuple[str, ...],
    small: tuple[str, ...],
    *,
    bn: bool = False,
    dropout: bool = False,
) -> HubCase:
    model_path, data_path = folder / f"{name}.keras", folder / f"{name}.npz"
    model.save(model_path)
    np.savez(data_path, **arrays)
    zero = ("*/key/bias",) if attention else ()
    return HubCase(name, model_path, data_path, compiled, attention, rows, small, bn, dropout, zero)


BUILDERS: dict[str, Callable[[Path, np.random.Generator], HubCase]] = {
    "bert_classifier": bert_classifier,
    "resnet_backbone": resnet_backbone,
    "vit_classifier": vit_classifier,
}


def build_case(name: str, folder: Path) -> HubCase:
    """Build, seed, save and describe one case (Keras's global seed is set to 0 first).

    Keras's session is cleared first, so automatic layer names (``bert_backbone``, not
    ``bert_backbone_1``) do not depend on what earlier tests built in this process.
    """
    keras = _tf.keras()
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    return BUILDERS[name](folder, np.random.default_rng(0))


def load_case(case: HubCase) -> Loaded:
    """The saved model, loaded as gradscope loads it (compiled loss restored), and its batch."""
    import keras_hub  # noqa: F401  (registers the keras_hub classes)

    from gradscope.loading.models import load_model

    _tf.keras().backend.clear_session()  # automatic names as in a fresh process
    model = load_model(case.model_path).model
    data = dict(np.load(case.data_path, allow_pickle=False))
    y = data.pop("y", None)
    if "x" in data:
        return Loaded(model, data["x"], y, [_input_name(model)])
    return Loaded(model, data, y, sorted(data))


def _input_name(model: Any) -> str:
    return str(model.inputs[0]._keras_history.operation.name)


def pack(loaded: Loaded, rows: slice) -> Any:
    """The batch's inputs restricted to ``rows``, packed like ``loaded.x``."""
    if isinstance(loaded.x, dict):
        return {key: value[rows] for key, value in loaded.x.items()}
    return loaded.x[rows]


class LossModel:
    """The loaded model, seen by the tape references through what they use of it.

    ``compute_loss`` is the model's own, or with ``sum_of_outputs`` the sum of its
    outputs (what gradscope differentiates when there is no compiled loss).  With
    ``variables=False`` it has no trainable variables, so that
    :func:`tests.reference.probe_reference` computes only input and layer-output
    gradients (the variables then come from :func:`variable_gradients`, one tape for all,
    which is much faster on these models than one tape per variable).  Calls, layers and
    state are the wrapped model's own, so probes patching its layers act here too.
    """

    def __init__(self, model: Any, *, sum_of_outputs: bool, variables: bool = True) -> None:
        self.model = model
        self.sum_of_outputs = sum_of_outputs
        self.trainable_variables = list(model.trainable_variables) if variables else []

    def __call__(self, x: Any, training: bool = False) -> Any:
        return self.model(x, training=training)

    def compute_loss(self, **kwargs: Any) -> Any:
        if not self.sum_of_outputs:
            return self.model.compute_loss(**kwargs)
        tf = _tf.tensorflow()
        return tf.add_n([tf.reduce_sum(t) for t in tf.nest.flatten(kwargs["y_pred"])])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def loss_model(loaded: Loaded, *, variables: bool = True) -> LossModel:
    """The object whose ``compute_loss`` is what gradscope differentiates for this case."""
    return LossModel(loaded.model, sum_of_outputs=loaded.y is None, variables=variables)


def variable_gradients(loaded: Loaded, x: Any, y: Any, training: bool) -> dict[str, np.ndarray]:
    """Every trainable variable's gradient from one eager tape, float64 numpy.

    The model's state (BatchNorm statistics, dropout seeds) is restored afterwards.
    """
    tf = _tf.tensorflow()
    model = loss_model(loaded)
    state = [np.array(v.numpy()) for v in model.non_trainable_variables]
    try:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=training)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=training)
        grads = tape.gradient(loss, model.trainable_variables)
    finally:
        for variable, value in zip(model.non_trainable_variables, state, strict=True):
            variable.assign(value)
    return {
        v.path: np.asarray(tf.convert_to_tensor(g).numpy(), np.float64)
        for v, g in zip(model.trainable_variables, grads, strict=True)
        if g is not None
    }


def local_probes(model: Any, rows: list[str]) -> list[Any]:
    """Probes for gradscope's row paths on ``model``, another load of the same file.

    Keras names unnamed layers from a process-wide counter (``softmax_4`` inside an
    attention layer, ``input_layer_2``), so a path segment is matched exactly, or else
    by the one child with that name up to its ``_<n>`` suffix.  Each probe keeps
    gradscope's row path.
    """
    from tests.reference import Probe

    probes = []
    for row in rows:
        path, output = row.rsplit(":", 1) if ":" in row else (row, "0")
        path, call = path.rsplit("@", 1) if "@" in path else (path, "0")
        layer = model
        for name in path.split("/"):
            layer = _child(layer, name, row)
        probes.append(Probe(row, layer, int(call), int(output)))
    return probes


def _child(layer: Any, name: str, row: str) -> Any:
    children = list(layer._flatten_layers(include_self=False, recursive=False))
    exact = [child for child in children if child.name == name]
    stem = re.sub(r"_\d+$", "", name)
    loose = [child for child in children if re.sub(r"_\d+$", "", child.name) == stem]
    matches = exact or loose
    if len(matches) != 1:
        raise KeyError(f"{row}: {len(matches)} children named like {name!r} in {layer.name}")
    return matches[0]
