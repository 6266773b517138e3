"""Cost of the ways around oneDNN's broadcast batch-matmul defect in ``--per-sample``.

    python bench/per_sample_onednn.py                 # 5 alternating rounds, oneDNN on
    python bench/per_sample_onednn.py --rounds 3 --models bert

For each model (a small keras_hub BERT built from a config, and the sample ``cnn`` and
``mlp``), in one process with ``TF_ENABLE_ONEDNN_OPTS=1`` set before TensorFlow loads,
it times one steady-state per-example run (after a warm-up that traces) of:

* ``rewrite``: gradscope's default: pfor with its batched matmuls/einsums vectorized as
  2-D or rank-3 products (gradscope/engine/pfor_matmul.py);
* ``pfor``: pfor's own converters (broadcast rank-4 matmuls: the shapes oneDNN corrupts
  memory on; only with ``--unsafe-pfor``, since it can crash on AVX-512 CPUs);
* ``map_fn``: the engine's ``tf.map_fn`` fallback (per-example shapes, no vectorization);
* ``baseline``: hand-written: one ``tf.function`` with a ``GradientTape`` over
  ``model.compute_loss`` on the whole batch (the batch gradient, not per-example): the
  least work any gradient step does.

The options run alternately (A B C A B C ...), ``--rounds`` times; the table gives the
median time of each and its ratio to the baseline's median.  Each option's norms are
checked against ``rewrite``'s (rtol 1e-4) before anything is timed.  ``--child`` also
times the other way to scope the switch: a child process with ``TF_ENABLE_ONEDNN_OPTS=0``
running ``gradscope inspect --per-sample`` (TensorFlow reads the variable once per
process, so a process is the smallest scope), whole process, median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gradscope import _tf  # noqa: E402
from gradscope.engine import per_sample as engine_module  # noqa: E402
from gradscope.loading.data import Batch  # noqa: E402
from gradscope.loading.signature import model_signature  # noqa: E402
from gradscope.losses import resolve_loss  # noqa: E402
from gradscope.report import BatchInfo  # noqa: E402

SAMPLES = REPO / "sample_models"


def bert(keras: Any) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """keras_hub BertTextClassifier: 2 layers, hidden 64, 32 tokens, batch 32."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=1000,
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        intermediate_dim=128,
        max_sequence_length=32,
    )
    model = keras_hub.models.BertTextClassifier(backbone, 3, preprocessor=None)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(0, 1000, (32, 32)).astype("int32"),
        "padding_mask": np.ones((32, 32), "int32"),
        "segment_ids": np.zeros((32, 32), "int32"),
    }
    return model, inputs, rng.integers(0, 3, 32)


def sample(name: str, keras: Any) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    model = keras.models.load_model(SAMPLES / f"{name}.keras")
    with np.load(SAMPLES / f"{name}.npz") as data:
        return model, {model_signature(model).input_names[0]: data["x"]}, data["y"]


def load(name: str, keras: Any) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    return bert(keras) if name == "bert" else sample(name, keras)


def runners(model: Any, inputs: dict[str, np.ndarray], y: np.ndarray, unsafe: bool) -> Any:
    """name -> a function running one per-example pass (or the baseline) and returning
    its norms (``None`` for the baseline)."""
    tf = _tf.tensorflow()
    signature = model_signature(model)
    spec = resolve_loss(model, signature.output_names, None, True)
    size = len(y)
    info = BatchInfo("file", size, path=None, has_targets=True)
    batch = Batch(inputs, {signature.output_names[0]: y}, None, info)
    engines = {"rewrite": engine_module.PerSampleEngine(model, signature, spec)}
    if unsafe:
        saved = engine_module.attach_converters, engine_module.risky_matmuls
        engine_module.attach_converters = lambda ops: []  # type: ignore[assignment]
        engine_module.risky_matmuls = lambda graph: []  # type: ignore[assignment]
        engines["pfor"] = engine_module.PerSampleEngine(model, signature, spec)
        engines["pfor"].run(batch)  # traced now, with pfor's own converters
        engine_module.attach_converters, engine_module.risky_matmuls = saved
    engines["map_fn"] = engine_module.PerSampleEngine(model, signature, spec, vectorize=False)
    x = signature.pack_inputs({k: tf.convert_to_tensor(v) for k, v in inputs.items()})
    y_true = signature.pack_outputs({signature.output_names[0]: tf.convert_to_tensor(y)})

    @tf.function
    def baseline_step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False))
        return tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables))

    def baseline() -> None:
        baseline_step(x, y_true).numpy()

    out: dict[str, Any] = {name: (lambda e=e: e.run(batch).norms) for name, e in engines.items()}
    out["baseline"] = baseline
    return out


def child_seconds(name: str, keras: Any) -> float:
    """Whole-process time of ``gradscope inspect --per-sample`` with oneDNN off."""
    with tempfile.TemporaryDirectory() as tmp:
        model, inputs, y = load(name, keras)
        model_path, data_path = Path(tmp) / "m.keras", Path(tmp) / "d.npz"
        model.save(model_path)
        np.savez(data_path, y=y, **inputs)
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", PYTHONPATH=str(REPO))
        start = time.perf_counter()
        command = ["inspect", str(model_path), "-d", str(data_path), "--per-sample", "-q"]
        subprocess.run(
            [sys.executable, "-m", "gradscope", *command, "-f", "json"],
            env=env,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start


def bench(name: str, rounds: int, unsafe: bool, child: bool) -> None:
    keras = _tf.keras()
    model, inputs, y = load(name, keras)
    run = runners(model, inputs, y, unsafe)
    reference = run["rewrite"]()
    for option, function in run.items():
        norms = function()  # warm-up: traces
        if norms is not None:
            np.testing.assert_allclose(norms, reference, rtol=1e-4, atol=1e-7, err_msg=option)
    times: dict[str, list[float]] = {option: [] for option in run}
    if child:
        times["child (oneDNN off)"] = []
    for _ in range(rounds):
        for option, function in run.items():
            start = time.perf_counter()
            function()
            times[option].append(time.perf_counter() - start)
        if child:
            times["child (oneDNN off)"].append(child_seconds(name, keras))
    base = statistics.median(times["baseline"])
    print(f"\n{name}: {len(y)} examples, {rounds} rounds, oneDNN on")
    print(f"{'option':<20} {'median (ms)':>12} {'× baseline':>11}")
    for option, values in times.items():
        median = statistics.median(values)
        print(f"{option:<20} {1000 * median:>12.1f} {median / base:>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default="bert,cnn,mlp")
    parser.add_argument(
        "--unsafe-pfor", action="store_true", help="also time pfor's own converters"
    )
    parser.add_argument("--child", action="store_true", help="also time a oneDNN-off child process")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error(f"--rounds must be at least 3 (a median). Received: {args.rounds}")
    from tensorflow.python.util import _pywrap_util_port

    print(f"oneDNN enabled: {_pywrap_util_port.IsMklEnabled()}")
    for name in args.models.split(","):
        bench(name, args.rounds, args.unsafe_pfor, args.child)


if __name__ == "__main__":
    main()
