"""Every use of a private Keras API in gradscope, in one module.

Keras 3 has no public equivalent for what these functions read or build: the recursive
list of a layer's sublayers, the ``CompileLoss`` object that ``compile`` makes, the loss
wrapper that turns a loss function into a ``Loss``, the attributes Keras attaches to
tensors (mask, cached logits, producing layer), a layer's call nodes and Keras's global
state (dtype policy, seed generator).  Everything else in gradscope uses public Keras.

Each function names the Keras versions it was checked on and the private name it relies
on.  ``tests/test_keras_private.py`` exercises every hook against the installed Keras, so
an upgrade that renames or changes one fails there, with the hook's name, before it can
mislead a report.  CI runs those tests on the newest Keras and on the oldest supported
one (``ci/min-versions.txt``).

Checked on: Keras 3.3.3 (the oldest supported, shipped with TensorFlow 2.16) and
Keras 3.15.1.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from . import _tf

# Attributes Keras attaches to a tensor and reads downstream: the mask (``_keras_mask``)
# and, on a softmax/sigmoid output, the logits a crossentropy reads instead of the
# probabilities (``_keras_logits``).  Checked on Keras 3.3.3 and 3.15.1.
TENSOR_ATTRIBUTES = ("_keras_mask", "_keras_logits")


def flatten_layers(layer: Any, *, recursive: bool = True) -> list[Any]:
    """The sublayers Keras tracks below ``layer`` (not ``layer`` itself); ``[]`` for an
    object that is not a Keras layer.

    ``recursive=False`` gives the direct children only.  ``Model.layers`` is public but
    lists only a model's own layers, and a plain ``Layer`` has no public list at all.
    Relies on ``Layer._flatten_layers(include_self, recursive)``; checked on Keras 3.3.3
    and 3.15.1.
    """
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return []
    return list(flatten(include_self=False, recursive=recursive))


def compile_loss(model: Any) -> Any | None:
    """The ``CompileLoss`` that ``model.compile(loss=...)`` built, or ``None``.

    Calling it as ``compile_loss(y_true, y_pred, sample_weight)`` gives the data loss
    alone (per-output losses and loss weights, no regularization).  Relies on
    ``Trainer._compile_loss``; checked on Keras 3.3.3 and 3.15.1.
    """
    return getattr(model, "_compile_loss", None)


def loss_weights(model: Any) -> Any:
    """The ``loss_weights`` given to ``compile`` (a number, list, dict or ``None``).

    ``get_compile_config()`` would serialize the optimizer and every custom loss to get
    it.  Relies on ``CompileLoss._user_loss_weights``; checked on Keras 3.3.3 and 3.15.1.
    """
    return getattr(compile_loss(model), "_user_loss_weights", None)


def _wrapper_class() -> Any:
    _tf.keras()  # quiet import first
    from keras.src.losses.losses import LossFunctionWrapper

    return LossFunctionWrapper


@functools.cache
def _wrapper_takes_dtype() -> bool:
    return "dtype" in inspect.signature(_wrapper_class().__init__).parameters


def loss_function_wrapper(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    reduction: str = "sum_over_batch_size",
    dtype: str | None = None,
    **fn_kwargs: Any,
) -> Any:
    """``fn`` wrapped in a ``Loss`` exactly as ``compile`` wraps a loss function (rank
    alignment of target and output, reduction, sample weights), computing in ``dtype``
    (Keras's ``floatx`` when ``None``).

    Relies on ``keras.src.losses.losses.LossFunctionWrapper``, not exported.  Keras 3.3.3
    takes no ``dtype`` argument (extra keywords go to ``fn``), so there the plain
    ``Loss.dtype`` attribute is set after construction; Keras 3.15.1 takes ``dtype``.
    """
    wrapper_class = _wrapper_class()
    if dtype is None or _wrapper_takes_dtype():
        extra = {} if dtype is None else {"dtype": dtype}
        return wrapper_class(fn, reduction=reduction, name=name, **extra, **fn_kwargs)
    wrapper = wrapper_class(fn, reduction=reduction, name=name, **fn_kwargs)
    wrapper.dtype = dtype
    return wrapper


def wrapped_function(loss: Any) -> tuple[Callable[..., Any], dict[str, Any]] | None:
    """``(fn, keyword arguments)`` of a loss made by :func:`loss_function_wrapper` (or by
    Keras from a function), ``None`` for any other loss.

    Relies on ``LossFunctionWrapper.fn`` and ``._fn_kwargs``; checked on Keras 3.3.3 and
    3.15.1.
    """
    if not isinstance(loss, _wrapper_class()):
        return None
    return loss.fn, dict(getattr(loss, "_fn_kwargs", {}))


def has_cached_logits(tensor: Any) -> bool:
    """Whether Keras attached logits to ``tensor`` (a softmax/sigmoid output), which its
    crossentropy then reads instead of ``tensor``.  Relies on ``_keras_logits``; checked
    on Keras 3.3.3 and 3.15.1."""
    return hasattr(tensor, "_keras_logits")


def cached_logits(tensor: Any) -> Any:
    """The logits Keras attached to ``tensor`` (see :func:`has_cached_logits`), or
    ``None``.  Relies on ``_keras_logits``; checked on Keras 3.3.3 and 3.15.1."""
    return getattr(tensor, "_keras_logits", None)


def keras_mask(tensor: Any) -> Any:
    """The mask Keras attached to ``tensor`` (``Embedding(mask_zero=True)`` and layers
    that propagate it), or ``None``.  Relies on ``_keras_mask``; checked on Keras 3.3.3
    and 3.15.1."""
    return getattr(tensor, "_keras_mask", None)


def copy_tensor_attributes(source: Any, target: Any) -> None:
    """Carry the mask and cached logits Keras attached to ``source`` over to ``target``
    (a ``tf.identity`` of it), so that downstream layers and the loss read them as from
    ``source``.  Relies on :data:`TENSOR_ATTRIBUTES`."""
    for attribute in TENSOR_ATTRIBUTES:
        value = getattr(source, attribute, None)
        if value is not None:
            setattr(target, attribute, value)


def producing_layer_name(tensor: Any) -> str | None:
    """The name of the layer (operation) that produced a symbolic Keras tensor, or
    ``None``.  Relies on ``KerasTensor._keras_history.operation``; checked on Keras 3.3.3
    and 3.15.1."""
    history = getattr(tensor, "_keras_history", None)
    name = getattr(getattr(history, "operation", None), "name", None)
    return None if name is None else str(name)


def call_inputs(layer: Any) -> list[list[Any]]:
    """The symbolic input tensors of each call of ``layer`` in a functional graph.

    ``layer.input`` is public but refuses a layer called more than once.  Relies on
    ``Operation._inbound_nodes`` and ``Node.input_tensors``; checked on Keras 3.3.3 and
    3.15.1.
    """
    return [
        list(getattr(node, "input_tensors", [])) for node in getattr(layer, "_inbound_nodes", [])
    ]


def _global_state() -> Any:
    _tf.keras()
    from keras.src.backend.common import global_state

    return global_state


def global_attribute(name: str) -> Any:
    """Keras's global attribute ``name`` as stored, ``None`` when unset.

    ``keras.config.dtype_policy()`` would create and cache a policy when none is set; the
    callers need to put back "unset" exactly.  Relies on
    ``keras.src.backend.common.global_state`` and its attribute names ``"dtype_policy"``
    and ``"global_seed_generator"``; checked on Keras 3.3.3 and 3.15.1.
    """
    return _global_state().get_global_attribute(name, None)


def set_global_attribute(name: str, value: Any) -> None:
    """Store ``value`` as Keras's global attribute ``name`` (``None`` unsets it).  See
    :func:`global_attribute`."""
    _global_state().set_global_attribute(name, value)


def scale_loss_for_distribution(value: Any) -> Any:
    """``value`` scaled as Keras scales the regularization losses it adds in
    ``compute_loss``: divided by the number of replicas inside a ``tf.distribute``
    replica context, on the Keras versions that scale a replica's loss at all.

    Keras 3.15.1 divides a mean-reduced ``Loss`` and the regularization losses of
    ``compute_loss`` by the number of replicas in sync (``reduce_values`` and
    ``Trainer._aggregate_additional_loss``, through
    ``keras.src.losses.loss.scale_loss_for_distribution``); Keras 3.3.3 scales neither
    and has no such function, so ``value`` is returned unchanged there.
    """
    scale = getattr(_loss_module(), "scale_loss_for_distribution", None)
    return value if scale is None else scale(value)


def keras_scales_replica_losses() -> bool:
    """Whether this Keras divides a replica's mean-reduced loss by the number of
    replicas (see :func:`scale_loss_for_distribution`): True on 3.15.1, False on 3.3.3."""
    return hasattr(_loss_module(), "scale_loss_for_distribution")


def _loss_module() -> Any:
    _tf.keras()
    from keras.src.losses import loss as loss_module

    return loss_module
