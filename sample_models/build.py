"""Build the sample Keras models and data batches used by gradscope's tests and docs.

Regenerate everything from the repository root with::

    python sample_models/build.py

``--out DIR`` writes the files to ``DIR`` instead (the committed legacy Keras 2 pair is
copied there when tf_keras is not installed).  The minimum-versions CI step uses it: a
``.keras`` file saved by a newer Keras does not load in an older one, so the samples are
rebuilt with the oldest supported Keras before the tests run on them.

All outputs are written next to this script and are committed to the repository,
so gradscope's tests never need to run this script (or TensorFlow training) themselves.
Re-run it only when you change a model definition below, then commit the new files.

Everything is seeded (``keras.utils.set_random_seed`` plus NumPy generators with fixed
seeds), so re-running on the same machine/TF build reproduces the same weights and data
(bit-identical in our checks). A ``.keras`` file whose only differences would be the save
timestamp and object ids is left untouched, so an unchanged model does not show up in git.

Files written (model + data batch):

* ``mlp.keras`` / ``mlp.npz``                  Dense classifier, categorical crossentropy
* ``cnn.keras`` / ``cnn.npz``                  small CNN with BatchNorm + Dropout, sparse CE
* ``text_lstm.keras`` / ``text_lstm.npz``      Embedding(mask_zero) + LSTM, binary CE
* ``multi_io.keras`` / ``multi_io.npz``        2 inputs / 2 outputs, loss weights, L2 reg
* ``nested.keras`` / ``nested.npz``            Functional "encoder" model nested in another
* ``deep_sigmoid.keras`` / ``deep_sigmoid.npz`` untrained 10-layer sigmoid MLP
  (vanishing gradients)
* ``legacy_keras2.h5`` / ``legacy_keras2.npz`` legacy HDF5 Sequential saved by Keras 2
  (``tf_keras``), categorical crossentropy; built in a subprocess (``build.py --legacy-only``)
  and skipped, keeping the committed files, if tf_keras is not installed (it is the
  ``samples`` extra: ``pip install -e '.[samples]'``)
* ``regression_keras3.h5`` / ``regression_keras3.npz`` Keras 3 model saved in legacy HDF5
  format with ``loss="mse"``; Keras 3.15 cannot rebuild that alias on
  ``load_model(path)`` (compile=True), only ``compile=False`` works

Data batch conventions (``.npz`` written with ``np.savez``, numeric arrays only):
single-input/single-output models use keys ``x`` and ``y``; multi-input/multi-output models
use the model's input names and output names as keys. Float inputs are float32, token ids
int32. Batches have 32 rows (16 for the CNN).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN reorders float ops (and logs about it); turn it off for quieter, steadier results.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE  # set by --out
SEED = 0


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C++-level log lines (e.g. the CUDA stub notice) printed while TF loads."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            sys.stderr.flush()
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _report(path: Path, verb: str = "wrote", note: str = "") -> None:
    size = path.stat().st_size
    suffix = f"  ({note})" if note else ""
    print(f"{verb} {path.name:<24} {size:>9,d} bytes  {size / 1024:6.1f} KB{suffix}", flush=True)


def _normalized_keras_archive(path: Path) -> dict[str, object]:
    """Contents of a .keras zip minus what changes on every save even if the model doesn't:
    ``date_saved`` in metadata.json and the id()-based ``shared_object_id`` in config.json."""
    ids: dict[int, int] = {}

    def renumber(obj):
        if isinstance(obj, dict):
            return {
                k: ids.setdefault(v, len(ids)) if k == "shared_object_id" else renumber(v)
                for k, v in obj.items()
            }
        if isinstance(obj, list):
            return [renumber(v) for v in obj]
        return obj

    out: dict[str, object] = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            if name == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                out[name] = meta
            elif name == "config.json":
                out[name] = renumber(json.loads(data))
            else:
                out[name] = data
    return out


def _save_keras(model, path: Path) -> None:
    """model.save(path), but keep an existing file if only timestamps/object ids would change,
    so regenerating does not dirty the committed .keras files for nothing."""
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    try:
        unchanged = path.exists() and (
            _normalized_keras_archive(path) == _normalized_keras_archive(tmp)
        )
    except (OSError, ValueError, zipfile.BadZipFile):
        unchanged = False
    if unchanged:
        tmp.unlink()
        _report(path, verb="kept ", note="unchanged apart from save timestamp/object ids")
    else:
        os.replace(tmp, path)
        _report(path)


def _save_npz(name: str, **arrays: np.ndarray) -> None:
    path = OUT_DIR / name
    for key, arr in arrays.items():
        assert isinstance(arr, np.ndarray) and arr.dtype != object, key
    np.savez(path, **arrays)
    _report(path)


def _fit_kwargs():
    return dict(verbose=0, shuffle=True)


# --------------------------------------------------------------------------- Keras 3 models


def build_mlp(keras):
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(101)
    n_features, n_classes = 20, 3
    centers = rng.normal(0.0, 1.5, size=(n_classes, n_features))

    def make(n):
        labels = rng.integers(0, n_classes, size=n)
        x = centers[labels] + rng.normal(0.0, 1.0, size=(n, n_features))
        y = np.eye(n_classes)[labels]
        return x.astype("float32"), y.astype("float32")

    x_train, y_train = make(1024)
    x_batch, y_batch = make(32)

    inputs = keras.Input(shape=(n_features,), name="features")
    h = keras.layers.Dense(64, activation="relu", name="hidden_1")(inputs)
    h = keras.layers.Dense(32, activation="relu", name="hidden_2")(h)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probs")(h)
    model = keras.Model(inputs, outputs, name="mlp")
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=5, batch_size=32, **_fit_kwargs())

    path = OUT_DIR / "mlp.keras"
    _save_keras(model, path)
    _save_npz("mlp.npz", x=x_batch, y=y_batch)


def build_cnn(keras):
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(202)
    n_classes = 10
    # Class k = a faint stripe texture on a noisy 28x28 image: classes 0-4 are horizontal
    # stripes 1..5 px wide, classes 5-9 the same stripes vertically. Texture (unlike
    # position) survives GlobalAveragePooling, so the CNN can learn a little in 2 epochs.
    grid = np.arange(28)

    def make(n):
        labels = rng.integers(0, n_classes, size=n)
        x = rng.normal(0.0, 0.5, size=(n, 28, 28, 1))
        for i, k in enumerate(labels):
            width = 1 + k % 5
            phase = rng.integers(0, 2 * width)
            stripes = (((grid + phase) // width) % 2).astype("float64")
            pattern = stripes[:, None] if k < 5 else stripes[None, :]
            x[i, :, :, 0] += np.broadcast_to(pattern, (28, 28))
        return x.astype("float32"), labels.astype("int32")

    x_train, y_train = make(1024)
    x_batch, y_batch = make(16)

    inputs = keras.Input(shape=(28, 28, 1), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv_1")(inputs)
    h = keras.layers.BatchNormalization(name="bn_1")(h)
    h = keras.layers.MaxPooling2D(name="pool_1")(h)
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv_2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.Dropout(0.3, name="dropout")(h)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="class_probs")(h)
    model = keras.Model(inputs, outputs, name="cnn")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=2, batch_size=32, **_fit_kwargs())

    path = OUT_DIR / "cnn.keras"
    _save_keras(model, path)
    _save_npz("cnn.npz", x=x_batch, y=y_batch)


def build_text_lstm(keras):
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(303)
    vocab, seq_len = 500, 24

    def make(n):
        # Token ids in [1, 500), trailing zero padding (id 0 is masked). Label: "positive"
        # when low-id tokens (< 250) outnumber high-id tokens.
        lengths = rng.integers(6, seq_len + 1, size=n)
        x = np.zeros((n, seq_len), dtype="int32")
        for i, length in enumerate(lengths):
            x[i, :length] = rng.integers(1, vocab, size=length)
        valid = x > 0
        low = ((x < 250) & valid).sum(axis=1)
        high = ((x >= 250) & valid).sum(axis=1)
        y = (low > high).astype("float32").reshape(n, 1)
        return x, y

    x_train, y_train = make(1024)
    x_batch, y_batch = make(32)
    # Guarantee the sample batch actually contains padding and both labels.
    assert (x_batch == 0).any() and 0 < y_batch.sum() < len(y_batch)

    inputs = keras.Input(shape=(seq_len,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(vocab, 16, mask_zero=True, name="embedding")(inputs)
    h = keras.layers.LSTM(16, name="lstm")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="prob_positive")(h)
    model = keras.Model(inputs, outputs, name="text_lstm")
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=5, batch_size=32, **_fit_kwargs())

    path = OUT_DIR / "text_lstm.keras"
    _save_keras(model, path)
    _save_npz("text_lstm.npz", x=x_batch, y=y_batch)


def build_multi_io(keras):
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(404)
    w_cat = rng.normal(size=(20, 3))
    w_score = rng.normal(size=(20, 1)) / np.sqrt(20)

    def make(n):
        img = rng.normal(size=(n, 16)).astype("float32")
        meta = rng.uniform(-1.0, 1.0, size=(n, 4)).astype("float32")
        both = np.concatenate([img, meta], axis=1)
        category = np.eye(3, dtype="float32")[np.argmax(both @ w_cat, axis=1)]
        score = (both @ w_score + 0.1 * rng.normal(size=(n, 1))).astype("float32")
        return img, meta, category, score

    img_tr, meta_tr, cat_tr, score_tr = make(512)
    img_b, meta_b, cat_b, score_b = make(32)

    image_features = keras.Input(shape=(16,), name="image_features")
    metadata = keras.Input(shape=(4,), name="metadata")
    a = keras.layers.Dense(
        16,
        activation="relu",
        kernel_regularizer=keras.regularizers.L2(1e-3),
        name="image_dense",
    )(image_features)
    b = keras.layers.Dense(8, activation="relu", name="meta_dense")(metadata)
    h = keras.layers.Concatenate(name="concat")([a, b])
    h = keras.layers.Dense(16, activation="relu", name="trunk")(h)
    category = keras.layers.Dense(3, activation="softmax", name="category")(h)
    score = keras.layers.Dense(1, name="score")(h)
    # Plain lists (the common form): model.output_names == ["category", "score"], and the
    # dict-valued loss / loss_weights / data below are matched to inputs/outputs by name.
    model = keras.Model(
        inputs=[image_features, metadata], outputs=[category, score], name="multi_io"
    )
    model.compile(
        optimizer="adam",
        loss={"category": "categorical_crossentropy", "score": "mse"},
        loss_weights={"category": 1.0, "score": 0.5},
    )
    model.fit(
        {"image_features": img_tr, "metadata": meta_tr},
        {"category": cat_tr, "score": score_tr},
        epochs=5,
        batch_size=32,
        **_fit_kwargs(),
    )

    path = OUT_DIR / "multi_io.keras"
    _save_keras(model, path)
    assert sorted(model.output_names) == ["category", "score"], model.output_names
    _save_npz(
        "multi_io.npz",
        image_features=img_b,
        metadata=meta_b,
        category=cat_b,
        score=score_b,
    )


def build_nested(keras):
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(505)
    w = rng.normal(size=(12, 4)) / np.sqrt(12)

    def make(n):
        x = rng.normal(size=(n, 12)).astype("float32")
        y = (np.tanh(x @ w) + 0.05 * rng.normal(size=(n, 4))).astype("float32")
        return x, y

    x_train, y_train = make(512)
    x_batch, y_batch = make(32)

    enc_in = keras.Input(shape=(12,), name="encoder_input")
    e = keras.layers.Dense(16, activation="relu", name="enc_dense_1")(enc_in)
    e = keras.layers.Dense(8, activation="relu", name="enc_dense_2")(e)
    encoder = keras.Model(enc_in, e, name="encoder")

    inputs = keras.Input(shape=(12,), name="x")
    h = encoder(inputs)
    outputs = keras.layers.Dense(4, name="head")(h)
    model = keras.Model(inputs, outputs, name="nested")
    model.compile(optimizer="adam", loss="mse")
    model.fit(x_train, y_train, epochs=5, batch_size=32, **_fit_kwargs())

    path = OUT_DIR / "nested.keras"
    _save_keras(model, path)
    _save_npz("nested.npz", x=x_batch, y=y_batch)


def build_deep_sigmoid(keras):
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(606)
    x = rng.normal(size=(32, 16)).astype("float32")
    y = (x[:, :8].sum(axis=1, keepdims=True) > 0).astype("float32")

    inputs = keras.Input(shape=(16,), name="x")
    h = inputs
    for i in range(1, 11):
        h = keras.layers.Dense(32, activation="sigmoid", name=f"dense_{i:02d}")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
    model = keras.Model(inputs, outputs, name="deep_sigmoid")
    # Deliberately NOT trained: the freshly initialised (glorot_uniform) sigmoid stack shows
    # the textbook vanishing-gradient profile (dense_01 gets a tiny fraction of the gradient).
    model.compile(optimizer="sgd", loss="binary_crossentropy")

    path = OUT_DIR / "deep_sigmoid.keras"
    _save_keras(model, path)
    _save_npz("deep_sigmoid.npz", x=x, y=y)


def build_regression_keras3_h5(keras):
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(808)
    w = rng.normal(size=(6, 1))

    def make(n):
        x = rng.normal(size=(n, 6)).astype("float32")
        y = (np.sin(x @ w / 2.0) + 0.05 * rng.normal(size=(n, 1))).astype("float32")
        return x, y

    x_train, y_train = make(512)
    x_batch, y_batch = make(32)

    inputs = keras.Input(shape=(6,), name="x")
    h = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, name="prediction")(h)
    model = keras.Model(inputs, outputs, name="regression_keras3")
    model.compile(optimizer="adam", loss="mse")
    model.fit(x_train, y_train, epochs=5, batch_size=32, **_fit_kwargs())

    path = OUT_DIR / "regression_keras3.h5"
    if path.exists():
        path.unlink()
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # hide the (expected) "HDF5 is legacy" warning
    try:
        model.save(path)  # legacy HDF5 format, chosen by the .h5 suffix
    finally:
        absl_logger.setLevel(level)
    _report(path)
    _save_npz("regression_keras3.npz", x=x_batch, y=y_batch)


# ----------------------------------------------------------------- legacy Keras 2 (tf_keras)


def build_legacy_keras2() -> None:
    """Build legacy_keras2.h5 with tf_keras (Keras 2). Runs in its own process."""
    with _quiet_stderr():
        import tensorflow as tf
        import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    tf.random.set_seed(SEED)
    rng = np.random.default_rng(707)
    w = rng.normal(size=(8, 2))

    def make(n):
        x = rng.normal(size=(n, 8)).astype("float32")
        labels = np.argmax(x @ w + 0.3 * rng.normal(size=(n, 2)), axis=1)
        y = np.eye(2, dtype="float32")[labels]  # one-hot, 2 classes
        return x, y

    x_train, y_train = make(512)
    x_batch, y_batch = make(32)

    model = tf_keras.Sequential(
        [
            tf_keras.Input(shape=(8,), name="x"),
            tf_keras.layers.Dense(16, activation="relu", name="hidden"),
            tf_keras.layers.Dense(2, activation="softmax", name="output"),
        ],
        name="legacy_keras2",
    )
    # Full loss name on purpose: Keras 3 can rebuild "categorical_crossentropy" from the HDF5
    # training_config, but not the "mse" alias (see regression_keras3.h5 for that case).
    # No metrics: Keras 3 rebuilds tf_keras' MeanMetricWrapper with a string `fn`, which then
    # crashes evaluate() with "TypeError: 'str' object is not callable".
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)

    path = OUT_DIR / "legacy_keras2.h5"
    if path.exists():
        path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the (expected) "HDF5 is legacy" warning
        model.save(path)  # HDF5, chosen by the .h5 suffix
    _report(path)
    _save_npz("legacy_keras2.npz", x=x_batch, y=y_batch)


def _run_legacy_subprocess() -> None:
    try:
        import importlib.util

        have_tf_keras = importlib.util.find_spec("tf_keras") is not None
    except (ImportError, ValueError):
        have_tf_keras = False
    if not have_tf_keras:
        if OUT_DIR != HERE:
            for name in ("legacy_keras2.h5", "legacy_keras2.npz"):
                shutil.copyfile(HERE / name, OUT_DIR / name)
                _report(OUT_DIR / name, verb="copied")
            return
        print(
            "skipped legacy_keras2.h5 / legacy_keras2.npz: tf_keras is not installed "
            "(pip install -e '.[samples]'; existing files left in place)",
            flush=True,
        )
        return
    # tf_keras (Keras 2) and Keras 3 share TensorFlow state; keep them in separate processes.
    script = str(Path(__file__).resolve())
    result = subprocess.run([sys.executable, script, "--legacy-only", "--out", str(OUT_DIR)])
    if result.returncode != 0:
        raise SystemExit(f"building legacy_keras2.h5 failed (exit code {result.returncode})")


# ---------------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    global OUT_DIR
    if "--out" in argv:
        OUT_DIR = Path(argv[argv.index("--out") + 1]).resolve()
        OUT_DIR.mkdir(parents=True, exist_ok=True)
    if "--legacy-only" in argv:
        build_legacy_keras2()
        return 0

    start = time.perf_counter()
    with _quiet_stderr():
        import keras
        import tensorflow as tf  # noqa: F401  (make sure the TF backend is initialised quietly)

    if keras.backend.backend() != "tensorflow":
        print(f"warning: Keras backend is {keras.backend.backend()!r}, expected 'tensorflow'")

    for builder in (
        build_mlp,
        build_cnn,
        build_text_lstm,
        build_multi_io,
        build_nested,
        build_deep_sigmoid,
        build_regression_keras3_h5,
    ):
        builder(keras)
        keras.backend.clear_session()

    _run_legacy_subprocess()
    print(f"done in {time.perf_counter() - start:.1f} s -> {OUT_DIR}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
