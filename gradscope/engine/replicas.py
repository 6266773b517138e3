"""One batch over several replicas (``tf.distribute``), with the single-device results.

A global batch of ``n`` rows, read once, is split into contiguous shares, replica
``r`` holding ``n_r`` rows (``n_r`` differ by at most one: 6 rows over 4 replicas are
2, 2, 1, 1), with ``strategy.experimental_distribute_values_from_function``.  Each
replica runs the same compiled step on its rows, and everything that leaves the step
is combined across the replicas inside the graph, by collective ops, so that it
equals what one device computes on the whole batch:

* **The loss.**  For a loss that is a mean over rows (every Keras loss with its default
  reduction), the batch loss is ``L = sum_r (n_r / n) L_r``: each replica
  differentiates its *share* ``(n_r / n) L_r``, and the shares, their gradients and
  their Hessian-vector products are summed across the replicas.  For the sum of the
  outputs (no loss), ``L = sum_r L_r``.  Inside a replica context Keras itself divides
  a mean-reduced loss by the number of replicas (Keras 3.15; 3.3.3 does not): that
  factor is measured once per run (:func:`measure_sharing`), not assumed, and undone,
  so an uneven split (the short last batch) is weighted exactly.
* **Weight gradients** are summed across the replicas (an all-reduce), so every replica
  holds the gradient of the whole batch and computes its statistics.
* **Input and layer-output statistics** are merged from the replicas' partial sums
  (:class:`AcrossReplicas`, a :class:`gradscope.stats.Reducer`): sums, entry counts,
  zero and finite counts, and extremes are combined, and the squares are centred on the
  mean of the whole batch before they are summed; dead units are those that are zero on
  every replica.

Every replica ends the step with the same numbers, and the first local replica's are
fetched.  Refused, because no row weighting can make them exact: a loss that is not a
mean (or a sum) over rows, a model output that carries a Keras mask (the loss is then
normalized by each replica's valid positions), and a batch with fewer rows than
replicas (a replica would get no rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _tf
from .._keras_private import keras_scales_replica_losses
from ..errors import UsageError
from ..loading.data import Batch
from ..loading.signature import ModelSignature
from ..losses import LossSpec, total_loss

RELATIVE_TOLERANCE = 1e-4
"""How close the measured loss factors must be to 1 or ``1 / replicas`` (float32)."""


class AcrossReplicas:
    """A :class:`gradscope.stats.Reducer` over the replicas of a ``tf.distribute`` step."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def sum(self, value: Any) -> Any:
        """The sum over the replicas (an all-reduce)."""
        tf = _tf.tensorflow()
        return self.context.all_reduce(tf.distribute.ReduceOp.SUM, value)

    def max(self, value: Any) -> Any:
        """The largest value over the replicas (collectives only sum: gather, then reduce)."""
        tf = _tf.tensorflow()
        return tf.reduce_max(self.context.all_gather(value[None], axis=0), axis=0)

    def min(self, value: Any) -> Any:
        """The smallest value over the replicas."""
        tf = _tf.tensorflow()
        return tf.reduce_min(self.context.all_gather(value[None], axis=0), axis=0)


def across_replicas() -> AcrossReplicas | None:
    """The reducer of the replica context this code is traced in; ``None`` outside one,
    or with a single replica (nothing to combine)."""
    tf = _tf.tensorflow()
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return AcrossReplicas(context)


@dataclass(frozen=True)
class LossSharing:
    """How a replica's loss relates to the loss of the whole batch (measured).

    ``summed``: the batch loss is the sum of the replicas' losses (the sum of outputs).
    Otherwise it is their row-weighted mean, and ``keras_scale`` is the factor Keras
    applied to the loss inside the replica context (``1 / replicas`` or 1).
    """

    summed: bool
    keras_scale: float = 1.0


def loss_share(loss: Any, rows: Any, sharing: LossSharing | None) -> Any:
    """This replica's share of the batch loss: the shares of all replicas sum to the
    loss one device computes on the whole batch.  ``rows`` is this replica's row count;
    ``loss`` itself outside a replica context."""
    tf = _tf.tensorflow()
    reducer = across_replicas()
    if reducer is None or sharing is None or sharing.summed:
        return loss
    local = tf.cast(rows, loss.dtype)
    return loss * (local / (reducer.sum(local) * tf.cast(sharing.keras_scale, loss.dtype)))


def leading_rows(inputs: Any) -> Any:
    """The rows of a replica's batch: the leading dimension of its first input."""
    tf = _tf.tensorflow()
    return tf.shape(tf.nest.flatten(inputs)[0])[0]


class Replicas:
    """A ``tf.distribute.Strategy`` with the batch splitting and step running gradscope needs."""

    def __init__(self, strategy: Any, sharing: LossSharing) -> None:
        self.strategy = strategy
        self.sharing = sharing
        self._compiled: dict[Any, Any] = {}

    @property
    def count(self) -> int:
        """Replicas in sync, over every worker."""
        return int(self.strategy.num_replicas_in_sync)

    def check_rows(self, rows: int, what: str) -> None:
        """Refuse a batch with fewer rows than replicas: a replica would get none."""
        if rows < self.count:
            raise UsageError(
                f"{what}: every batch needs at least as many rows as replicas, so that "
                f"each replica gets one; expected >= {self.count} rows. Received: {rows} "
                "rows (choose another --batch-size or --limit, or fewer --replicas)"
            )

    def shares(self, rows: int) -> list[int]:
        """Each replica's rows of a batch of ``rows``: contiguous, balanced (sizes
        differ by at most one), in replica order."""
        base, extra = divmod(rows, self.count)
        return [base + (1 if replica < extra else 0) for replica in range(self.count)]

    def distribute(self, batch: Batch, with_targets: bool) -> tuple[Any, Any, Any]:
        """``batch`` split across the replicas: per-replica inputs, targets, weights.

        The arrays are read once; each replica gets a contiguous, balanced share of the
        rows (:meth:`shares`), on every worker the share of its own replicas.  Not
        ``experimental_distribute_dataset``: its rebatching gives ``ceil(n / replicas)``
        rows to the first replicas and can leave the last ones empty (6 rows over 4
        replicas: 2, 2, 2, 0), and Keras's loss of an empty batch is not a scalar.
        """
        tf = _tf.tensorflow()
        self.check_rows(batch.size, batch.info.path or "the batch")
        element: dict[str, Any] = {"inputs": dict(batch.inputs)}
        if batch.targets is not None and with_targets:
            element["targets"] = dict(batch.targets)
        if batch.sample_weight is not None:
            element["weight"] = batch.sample_weight
        bounds = np.cumsum([0, *self.shares(batch.size)])

        def share(context: Any) -> Any:
            replica = context.replica_id_in_sync_group
            start, stop = int(bounds[replica]), int(bounds[replica + 1])
            return tf.nest.map_structure(lambda array: array[start:stop], element)

        values = self.strategy.experimental_distribute_values_from_function(share)
        return values["inputs"], values.get("targets"), values.get("weight")

    def _outer(self, function: Callable[..., Any], reduce: bool) -> Any:
        """One compiled function that runs ``function`` on every replica (cached)."""
        tf = _tf.tensorflow()
        key = (function, reduce)
        if key not in self._compiled:

            def outer(*args: Any) -> Any:
                result = self.strategy.run(function, args=args)
                if not reduce:
                    return result
                return tf.nest.map_structure(
                    lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None),
                    result,
                )

            self._compiled[key] = tf.function(outer, autograph=False)
        return self._compiled[key]

    def run_first(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """``function`` on every replica; the first local replica's results (every
        replica's are the same when ``function`` combines them itself)."""
        tf = _tf.tensorflow()
        result = self._outer(function, reduce=False)(*args)
        return tf.nest.map_structure(
            lambda v: self.strategy.experimental_local_results(v)[0], result
        )

    def run_summed(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """``function`` on every replica, its results summed over the replicas."""
        return self._outer(function, reduce=True)(*args)


def _probe_rows(batch: Batch, rows: int) -> Batch:
    """The first ``rows`` rows of ``batch`` (the loss-sharing probes run on them)."""
    take = {name: array[:rows] for name, array in batch.inputs.items()}
    targets = None if batch.targets is None else {k: v[:rows] for k, v in batch.targets.items()}
    weight = None if batch.sample_weight is None else batch.sample_weight[:rows]
    return Batch(take, targets, weight, batch.info)


def _twice(arrays: Any) -> Any:
    """Every array of a nested structure with its rows repeated once."""
    tf = _tf.tensorflow()
    return tf.nest.map_structure(lambda a: np.concatenate([a, a]), arrays)


def _masked_output(outputs: Any) -> bool:
    tf = _tf.tensorflow()
    return any(getattr(t, "_keras_mask", None) is not None for t in tf.nest.flatten(outputs))


def measure_sharing(
    strategy: Any, model: Any, signature: ModelSignature, spec: LossSpec, batch: Batch
) -> LossSharing:
    """How this model's loss splits over the replicas of ``strategy``, measured on the
    first rows of ``batch`` (in inference mode, outside the timed work).

    Two probes: the loss of the rows against the loss of the rows repeated (a mean over
    rows is unchanged, anything else is refused), and the loss computed inside a replica
    context against the same loss on one device (Keras's factor, 1 or ``1 / replicas``;
    anything else is refused).
    """
    if spec.kind == "sum_of_outputs":
        return LossSharing(summed=True)
    tf = _tf.tensorflow()
    probe = _probe_rows(batch, min(batch.size, 2))
    outputs = model(signature.pack_inputs(dict(probe.inputs)), training=False)
    if _masked_output(outputs):
        raise UsageError(
            "--strategy: the model's outputs carry a Keras mask, so its loss is normalized "
            "by the valid positions of each replica's rows and cannot be split exactly; "
            "use --strategy default"
        )
    predictions = tf.nest.map_structure(lambda t: np.asarray(t), outputs)
    y_true = None if probe.targets is None else signature.pack_outputs(dict(probe.targets))
    arguments = (probe.inputs, y_true, predictions, probe.sample_weight)

    def loss_of(inputs: Any, targets: Any, predicted: Any, weight: Any) -> Any:
        packed = signature.pack_inputs(dict(inputs))
        return total_loss(spec, model, packed, targets, predicted, weight, False)

    single = tf.function(loss_of, autograph=False)
    once = float(single(*arguments))
    twice = float(single(*(None if a is None else _twice(a) for a in arguments)))
    if not np.isclose(twice, once, rtol=RELATIVE_TOLERANCE, atol=1e-12):
        raise UsageError(
            f"--strategy: {spec.source} is not a mean over rows (its value on the same rows "
            f"repeated is {twice:.6g}, not {once:.6g}), so the replicas' losses cannot be "
            "weighted exactly; use --strategy default"
        )
    replicated = Replicas(strategy, LossSharing(summed=False))
    in_replica = float(replicated.run_first(loss_of, arguments))
    return LossSharing(summed=False, keras_scale=_keras_scale(in_replica, once, strategy))


def _keras_scale(in_replica: float, single: float, strategy: Any) -> float:
    """Keras's factor on a replica's loss: ``in_replica / single``, which must be 1 or
    ``1 / replicas`` (an exact zero loss tells nothing: then Keras's own rule is used)."""
    replicas = int(strategy.num_replicas_in_sync)
    if single == 0.0:
        return 1.0 / replicas if keras_scales_replica_losses() else 1.0
    for scale in (1.0, 1.0 / replicas):
        if np.isclose(in_replica, single * scale, rtol=RELATIVE_TOLERANCE):
            return scale
    raise UsageError(
        f"--strategy: inside a replica context the loss is {in_replica:.6g} where one device "
        f"gives {single:.6g}; expected the same or 1/{replicas} of it, so the replicas' "
        "losses cannot be combined exactly; use --strategy default"
    )
