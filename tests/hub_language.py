"""Tiny keras_hub language models, built from configs: a test corpus nobody here designed.

Each model is a real keras_hub task (``GPT2CausalLM``, ``GemmaCausalLM`` with LoRA,
``LlamaCausalLM``, ``BartSeq2SeqLM``) with random, seeded weights (nothing is
downloaded), no preprocessor, dropout > 0 (so that ``--training`` changes something),
compiled explicitly with ``SparseCategoricalCrossentropy(from_logits=True)`` (what
keras_hub's own ``compile(loss="auto")`` picks), and saved as ``.keras``.  Its batch is
an ``.npz`` shaped as keras_hub's preprocessors produce it: ``token_ids`` and
``padding_mask`` (right padding, rows of different lengths), targets ``y`` = the next
tokens, and a ``sample_weight`` that is 0 where the *target* is padding (for a causal
LM: ``x = ids[:, :-1]``, ``y = ids[:, 1:]``, ``sample_weight = mask[:, 1:]``, as
``CausalLMPreprocessor`` does; for seq2seq the same on the decoder side).

Sizes are tiny (vocabulary 32, hidden 8, one layer, 10 tokens, 6 rows) so that every
command runs in seconds and the whole-model Hessian (about a thousand parameters) can
be formed explicitly as a reference.

keras_hub's LoRA does not survive ``.keras`` saving: Keras merges the adapters into the
kernels when it saves (``EinsumDense.save_own_variables``), and a keras_hub backbone is
rebuilt from its constructor arguments, so the file loads back as a plain model whose
kernels are all trainable.  The LoRA model is therefore also kept in memory
(:attr:`HubModel.model`), for the Python API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 32
HIDDEN = 8
INTERMEDIATE = 16
SEQ = 10
ROWS = 6
DROPOUT = 0.1
LORA_RANK = 2
LENGTHS = (11, 11, 8, 6, 9, 4)  # tokens per row before the shift (SEQ + 1 = no padding)
ENCODER_LENGTHS = (10, 7, 10, 5, 8, 9)


@dataclass
class HubModel:
    """One built model: its files, its batch (as saved) and the in-memory model."""

    name: str
    path: Path
    data: Path
    arrays: dict[str, np.ndarray]
    model: Any
    lora: bool = False

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """The model's inputs, by name (every array but the targets and weights)."""
        return {k: v for k, v in self.arrays.items() if k not in ("y", "sample_weight")}

    @property
    def y(self) -> np.ndarray:
        return self.arrays["y"]

    @property
    def sample_weight(self) -> np.ndarray:
        return self.arrays["sample_weight"]

    @property
    def padding_mask(self) -> np.ndarray:
        """The padding mask of the sequence the loss is computed on (decoder side)."""
        key = "decoder_padding_mask" if "decoder_padding_mask" in self.arrays else "padding_mask"
        return self.arrays[key]


def _causal_arrays(rng: np.random.Generator, lengths: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Right-padded token ids shifted as ``CausalLMPreprocessor`` shifts them."""
    full = rng.integers(1, VOCAB, size=(ROWS, SEQ + 1))
    mask = np.arange(SEQ + 1)[None, :] < np.asarray(lengths)[:, None]
    full = np.where(mask, full, 0).astype(np.int32)
    return {
        "token_ids": full[:, :-1],
        "padding_mask": mask[:, :-1].astype(np.int32),
        "y": full[:, 1:],
        "sample_weight": mask[:, 1:].astype(np.float32),
    }


def _seq2seq_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    encoder = _causal_arrays(rng, ENCODER_LENGTHS)
    decoder = _causal_arrays(rng, LENGTHS)
    return {
        "encoder_token_ids": encoder["token_ids"],
        "encoder_padding_mask": encoder["padding_mask"],
        "decoder_token_ids": decoder["token_ids"],
        "decoder_padding_mask": decoder["padding_mask"],
        "y": decoder["y"],
        "sample_weight": decoder["sample_weight"],
    }


def _gpt2(hub: Any) -> Any:
    backbone = hub.models.GPT2Backbone(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_heads=2,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        dropout=DROPOUT,
        max_sequence_length=SEQ,
    )
    return hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _gemma_lora(hub: Any) -> Any:
    backbone = hub.models.GemmaBackbone(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        head_dim=4,
        dropout=DROPOUT,
    )
    backbone.enable_lora(rank=LORA_RANK)
    model = hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    # lora_kernel_b starts at zero (so the adapted model equals the base model); give
    # it values, as after some fine-tuning, so that every LoRA gradient is non-trivial.
    rng = np.random.default_rng(1)
    for variable in model.trainable_variables:
        if variable.path.endswith("lora_kernel_b"):
            variable.assign(0.3 * rng.normal(size=variable.shape).astype(np.float32))
    return model


def _llama(hub: Any) -> Any:
    backbone = hub.models.LlamaBackbone(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        dropout=DROPOUT,
    )
    return hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def _bart(hub: Any) -> Any:
    backbone = hub.models.BartBackbone(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_heads=2,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        dropout=DROPOUT,
        max_sequence_length=SEQ,
    )
    return hub.models.BartSeq2SeqLM(backbone=backbone, preprocessor=None)


BUILDERS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "gpt2": (_gpt2, False),
    "gemma_lora": (_gemma_lora, True),
    "llama": (_llama, False),
    "bart": (_bart, False),
}
"""name -> (builder, whether the model has LoRA adapters)."""


def compile_like_hub(model: Any) -> None:
    """The loss keras_hub's ``compile(loss="auto")`` chooses, given explicitly."""
    from gradscope import _tf

    keras = _tf.keras()
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )


def build(name: str, folder: Path, seed: int = 0) -> HubModel:
    """Build model ``name`` (seeded), save it and its batch into ``folder``."""
    import keras_hub

    from gradscope import _tf

    _tf.keras().utils.set_random_seed(seed)
    builder, lora = BUILDERS[name]
    model = builder(keras_hub)
    compile_like_hub(model)
    rng = np.random.default_rng(seed)
    arrays = _seq2seq_arrays(rng) if name == "bart" else _causal_arrays(rng, LENGTHS)
    path, data = folder / f"{name}.keras", folder / f"{name}.npz"
    model.save(path)
    np.savez(data, **arrays)
    return HubModel(name, path, data, arrays, model, lora)


def load(hub_model: HubModel, seed: int = 0) -> Any:
    """A fresh copy of the saved model, compiled as it was (keras_hub tasks override
    ``compile``, so Keras does not restore their compile config on load).

    Keras's random state is seeded first, as gradscope's ``--seed`` (default 0) does
    before it loads: the dropout layers' seed states are drawn when the model is
    rebuilt, so the copy then draws the dropout masks gradscope's run draws.
    """
    import keras_hub  # noqa: F401  (registers the classes the file names)

    from gradscope import _tf

    keras = _tf.keras()
    keras.utils.set_random_seed(seed)
    model = keras.saving.load_model(hub_model.path, compile=False)
    compile_like_hub(model)
    return model
