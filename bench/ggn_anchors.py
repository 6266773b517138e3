"""gradscope's Gauss-Newton (GGN) top eigenvalue and trace against the PyTorch anchors.

    python bench/ggn_anchors.py [--torch-python PATH] [--repeats 3] [--alpha 1.0] [--size 32]
                                [--batch 8] [--probes 30] [--lanczos-steps 30] [--rebuild]

One ``.keras`` file, one seeded batch, four answers:

* **gradscope** (TensorFlow): ``gradscope hessian MODEL --data BATCH --matrix ggn --block
  model --method lanczos --top-k 1 --trace -f json``, a whole process per run.
* **hessian-eigenthings** 1.0.0a5 and **curvlinops** 3.0.1 (PyTorch, CPU): children run with
  the Python of a separate venv (``--torch-python`` or ``$GGN_TORCH_PYTHON``; see
  bench/README.md) under ``KERAS_BACKEND=torch``, loading the same file with
  ``keras.saving.load_model``.  Without that venv the torch side is skipped with a message.
* **reference** (TensorFlow, float64, no gradscope code): the GGN of the mean cross-entropy
  taken at the logits, ``G = 1/N sum_n J_n^T H_n J_n`` with ``H_n = diag(p_n) - p_n p_n^T``.
  ``H_n = S_n S_n^T`` with ``S_n = diag(sqrt p_n) - p_n sqrt(p_n)^T``, so ``G = A^T A / N``
  where the ``N*C`` rows of ``A`` are ``S_n^T J_n``: per-example Jacobians of the logits
  (``GradientTape.jacobian``, one example at a time; BatchNorm is in inference mode, so
  examples are independent).  ``G``'s nonzero eigenvalues are those of the ``N*C x N*C``
  Gram matrix ``A A^T / N``: ``numpy.linalg.eigvalsh`` gives the top eigenvalue exactly,
  and ``trace(G) = ||A||_F^2 / N`` exactly, with no random probes and no Krylov tolerance.
  A second, matrix-free route checks the first: ``scipy.sparse.linalg.eigsh`` (ARPACK) over
  a hand-written GGN-vector product (``ForwardAccumulator`` JVP to the logits, the explicit
  softmax cross-entropy Hessian, tape VJP back).

The model is ``keras.applications.MobileNetV2(alpha, weights=None, input_shape=(size, size,
3), classes=10)`` compiled with ``categorical_crossentropy``.  Its final layer is a Dense
with a softmax: Keras computes the loss from the cached logits, and the GGN is taken at the
logits (``J = d logits / d theta``), as curvlinops and BackPACK do with ``CrossEntropyLoss``
on logits.  On the torch side a wrapper module returns those logits (all layers up to the
last Dense's input, then ``x @ kernel + bias``).

With ``weights=None`` and fresh BatchNorm statistics (mean 0, variance 1) the features
reaching the classifier are ~1e-11 in inference mode: every prediction is 0.1, and the GGN is
just the last bias's block (nine eigenvalues 0.1), a test any tool passes.  So before saving,
the BatchNorm moving statistics are set once to the statistics of a seeded calibration batch
(momentum 0 for one training-mode call, then the default momentum again): the same weights
with statistics that keep activations of order one, which gives a spectrum with structure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
CLASSES = 10
TORCH_PYTHON_ENV = "GGN_TORCH_PYTHON"
TORCH_TOOLS = ("eigenthings", "curvlinops")

BUILD_CODE = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
model_path, batch_path = sys.argv[1], sys.argv[2]
alpha, size = float(sys.argv[3]), int(sys.argv[4])
rows, classes = int(sys.argv[5]), int(sys.argv[6])
keras.utils.set_random_seed(0)
model = keras.applications.MobileNetV2(
    alpha=alpha, weights=None, input_shape=(size, size, 3), classes=classes
)
rng = np.random.default_rng(0)
calibration = rng.standard_normal((64, size, size, 3)).astype(np.float32)
norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
momenta = [l.momentum for l in norms]
for layer in norms:
    layer.momentum = 0.0  # moving statistics := this batch's statistics
model(calibration, training=True)
for layer, momentum in zip(norms, momenta):
    layer.momentum = momentum
model.compile(loss="categorical_crossentropy")
model.save(model_path)
x = rng.standard_normal((rows, size, size, 3)).astype(np.float32)
y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, size=rows)]
np.savez(batch_path, x=x, y=y)
"""


# --------------------------------------------------------------------------- shared


def cache_paths(alpha: float, size: int, rows: int) -> tuple[Path, Path]:
    stem = f"ggn_mobilenetv2_{alpha:g}_{size}"
    return CACHE / f"{stem}.keras", CACHE / f"{stem}_batch{rows}.npz"


def probe_vector(size: int, seed: int) -> Any:
    """The seeded vector both sides use for v^T G v and v^T H v (numpy's PCG64 is the same
    stream in both environments)."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal(size)


def variables_digest(model: Any) -> str:
    """Paths and shapes of the trainable variables in order: both sides must flatten the
    parameters the same way for the probe vector to mean the same direction."""
    text = ";".join(f"{v.path}:{tuple(v.shape)}" for v in model.trainable_variables)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def logits_parts(model: Any) -> tuple[Any, Any]:
    """The feature model (everything before the last Dense) and that Dense, whose
    activation must be softmax: the GGN is taken at the Dense's pre-activation."""
    import keras

    dense = model.layers[-1]
    activation = getattr(getattr(dense, "activation", None), "__name__", None)
    if not isinstance(dense, keras.layers.Dense) or activation != "softmax":
        raise SystemExit(
            "ggn_anchors: the model's last layer must be a Dense with a softmax activation. "
            f"Received: {type(dense).__name__} with activation {activation!r}"
        )
    return keras.Model(model.inputs, dense.input), dense


def emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = next((line for line in lines if not line.startswith("Exception encountered")), "")
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Keras bolds the message with ANSI codes
    return f"{type(exc).__name__}: {text[:220]}"


# --------------------------------------------------------------------------- reference


def float64_clone(model: Any) -> Any:
    """The same functional model with every layer in float64 and the float32 weights
    copied exactly: the reference evaluates the function those weights define without
    float32 rounding."""
    import keras

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = "float64"
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights([w.astype("float64") for w in model.get_weights()])
    return twin


def reference_child(model_path: str, batch_path: str, seed: int, dtype: str) -> None:
    """Exact top eigenvalue and trace from per-example Jacobians, plus an eigsh cross-check."""
    import keras
    import numpy as np
    import tensorflow as tf
    from scipy.sparse.linalg import LinearOperator, eigsh

    started = time.perf_counter()
    loaded = keras.saving.load_model(model_path, compile=False)
    digest = variables_digest(loaded)
    model = float64_clone(loaded) if dtype == "float64" else loaded
    features, dense = logits_parts(model)
    with np.load(batch_path) as data:
        x, y = data["x"].astype(dtype), data["y"].astype(dtype)
    variables = [v.value for v in model.trainable_variables]
    shapes = [tuple(v.shape) for v in variables]
    sizes = [int(np.prod(s)) for s in shapes]
    rows, classes = y.shape

    def logits(inputs: Any) -> Any:
        return tf.matmul(features(inputs, training=False), dense.kernel) + dense.bias

    @tf.function(reduce_retracing=True)
    def jacobian(example: Any) -> Any:
        with tf.GradientTape() as tape:
            z = logits(example)[0]
        return z, tape.jacobian(z, variables)

    a = np.empty((rows * classes, sum(sizes)))
    for n in range(rows):
        z, parts = jacobian(tf.constant(x[n : n + 1]))
        z = z.numpy().astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        root = np.sqrt(p)
        s = np.diag(root) - np.outer(p, root)  # S S^T = diag(p) - p p^T
        jac = np.concatenate([np.reshape(j.numpy(), (classes, -1)) for j in parts], axis=1)
        a[n * classes : (n + 1) * classes] = s.T @ jac.astype(np.float64)
    gram = a @ a.T / rows
    spectrum = np.linalg.eigvalsh(gram)[::-1]
    exact_s = time.perf_counter() - started

    vector = probe_vector(a.shape[1], seed)
    projected = a @ vector
    v_g_v = float(projected @ projected / rows)

    def split(flat: Any) -> list[Any]:
        offsets = np.cumsum([0, *sizes])
        return [tf.reshape(flat[offsets[i] : offsets[i + 1]], shapes[i]) for i in range(len(sizes))]

    xt, yt = tf.constant(x), tf.constant(y)

    @tf.function
    def ggn_product(flat: Any) -> Any:
        with tf.GradientTape() as tape:
            with tf.autodiff.ForwardAccumulator(variables, split(flat)) as accumulator:
                z = logits(xt)
            jv = accumulator.jvp(z)
        p = tf.nn.softmax(z)
        hjv = (p * jv - p * tf.reduce_sum(p * jv, -1, keepdims=True)) / rows
        grads = tape.gradient(z, variables, output_gradients=hjv)
        return tf.concat([tf.reshape(g, [-1]) for g in grads], 0)

    @tf.function
    def hessian_product(flat: Any) -> Any:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                z = logits(xt)
                loss = tf.reduce_mean(tf.reduce_logsumexp(z, -1) - tf.reduce_sum(yt * z, -1))
            grads = inner.gradient(loss, variables)
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, split(flat), strict=True)])
        return tf.concat([tf.reshape(h, [-1]) for h in outer.gradient(dot, variables)], 0), loss

    h_v, loss = hessian_product(tf.constant(vector, dtype=dtype))
    v_h_v = float(vector @ h_v.numpy())
    products = 0

    def matvec(flat: Any) -> Any:
        nonlocal products
        products += 1
        return ggn_product(tf.constant(np.ravel(flat), dtype=dtype)).numpy().astype(np.float64)

    operator = LinearOperator((a.shape[1], a.shape[1]), matvec=matvec, dtype=np.float64)
    started = time.perf_counter()
    values = eigsh(
        operator,
        k=1,
        which="LA",
        tol=1e-10,
        ncv=20,
        v0=np.random.default_rng(seed).standard_normal(a.shape[1]),
        return_eigenvectors=False,
    )
    eigsh_s = time.perf_counter() - started
    emit(
        {
            "dtype": dtype,
            "digest": digest,
            "parameters": int(a.shape[1]),
            "loss": float(loss),
            "top": float(spectrum[0]),
            "top5": [float(e) for e in spectrum[:5]],
            "trace": float(np.einsum("ij,ij->", a, a) / rows),
            "rank": int((spectrum > 1e-10 * spectrum[0]).sum()),
            "rows": int(a.shape[0]),
            "v_g_v": v_g_v,
            "v_h_v": v_h_v,
            "exact_s": exact_s,
            "eigsh_top": float(values[0]),
            "eigsh_products": products,
            "eigsh_s": eigsh_s,
        }
    )


# --------------------------------------------------------------------------- torch side


def torch_setup(model_path: str, batch_path: str) -> tuple[Any, Any, Any, Any]:
    """The Keras model under the torch backend, the batch as tensors, the class indices."""
    import keras
    import numpy as np
    import torch

    model = keras.saving.load_model(model_path, compile=False)
    with np.load(batch_path) as data:
        x, y = torch.as_tensor(data["x"]), torch.as_tensor(data["y"])
    return model, x, y, y.argmax(-1)


def keras_logits_module(model: Any) -> Any:
    """A ``torch.nn.Module`` whose parameters are the Keras model's trainable variables'
    own tensors and whose output is the logits.

    ``torch.func.functional_call`` swaps a module's registered parameters for the duration
    of a call.  Keras layers do not read those registrations: each reads its variable's own
    tensor.  This module reads its (possibly swapped) parameters and hands them to Keras
    through ``keras.StatelessScope``, the way Keras itself substitutes variable values, so
    the substitution reaches every layer.
    """
    import keras
    import torch

    features, dense = logits_parts(model)
    variables = list(model.trainable_variables)

    class KerasLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights_ = torch.nn.ParameterList([v.value for v in variables])

        def forward(self, inputs: Any) -> Any:
            mapping = list(zip(variables, self.weights_, strict=True))
            with keras.StatelessScope(state_mapping=mapping):
                hidden = features(inputs, training=False)
                return keras.ops.matmul(hidden, dense.kernel) + dense.bias

    return KerasLogits()


def in_module_order(vector: Any, model: Any, params: list[Any]) -> Any:
    """``vector`` (laid out in ``model.trainable_variables`` order) re-laid out in the order
    of ``params``, the Keras variables' own tensors in some other order."""
    import numpy as np
    import torch

    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    starts = np.cumsum([0, *sizes])
    where = {id(v.value): i for i, v in enumerate(model.trainable_variables)}
    pieces = [vector[starts[where[id(p)]] : starts[where[id(p)] + 1]] for p in params]
    return torch.as_tensor(np.concatenate(pieces), dtype=torch.float32)


def counted(function: Callable[..., Any]) -> tuple[Callable[..., Any], list[int]]:
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return function(*args, **kwargs)

    return wrapper, calls


def diagnose_child(model_path: str, batch_path: str, seed: int) -> None:
    """What each PyTorch tool does with the Keras model as it is (no wrapper)."""
    import curvlinops
    import hessian_eigenthings as he
    import torch
    from torch.nn.functional import cross_entropy

    model, x, _, labels = torch_setup(model_path, batch_path)
    out: dict[str, Any] = {"digest": variables_digest(model)}
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        reference = model(x, training=False)
        zeros = {n: torch.zeros_like(p) for n, p in named.items()}
        swapped = torch.func.functional_call(model, zeros, (x,), {"training": False})
    out["functional_call_gap"] = float((swapped - reference).abs().max())
    out["parameters"] = sum(p.numel() for p in named.values())

    def log_probs(module: Any, batch: Any) -> Any:
        # The model outputs probabilities.  log p = z - logsumexp(z): the CE Hessian at
        # log p equals the one at z and annihilates the ones vector, so the GGN is the same.
        return torch.log(module(batch[0], training=False))

    def loss_of_output(output: Any, batch: Any) -> Any:
        return cross_entropy(output, batch[1])

    data = [(x, labels)]
    # The operators flatten in named_parameters() order (alphabetical by path here), not
    # in trainable_variables order: lay the probe vector out in theirs.
    vector = in_module_order(probe_vector(out["parameters"], seed), model, list(named.values()))
    ggn = he.GGNOperator(model, data, log_probs, loss_of_output)
    g_v = ggn.matvec(vector).detach()
    result = he.lanczos(ggn, k=1, max_iter=10, which="LA", seed=seed)
    out["eigenthings_ggn"] = {
        "norm_g_v": float(g_v.norm()),
        "v_g_v": float(vector @ g_v),
        "lanczos": [float(e) for e in result.eigenvalues],
        "iterations": result.iterations,
    }
    hessian = he.HessianOperator(
        model, data, lambda module, batch: loss_of_output(log_probs(module, batch), batch)
    )
    h_v = hessian.matvec(vector).detach()
    out["eigenthings_hessian"] = {"norm_h_v": float(h_v.norm()), "v_h_v": float(vector @ h_v)}

    class LogProbs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: Any) -> Any:
            return torch.log(self.model(inputs, training=False))

    wrapped = LogProbs()
    params = [p for p in wrapped.parameters() if p.requires_grad]
    logits_module = keras_logits_module(model)
    attempts: dict[str, Callable[[], Any]] = {
        "ggn": lambda: curvlinops.GGNLinearOperator(
            wrapped, torch.nn.CrossEntropyLoss(), params, data
        ),
        "ggn_unchecked_matvec": lambda: (
            curvlinops.GGNLinearOperator(
                wrapped, torch.nn.CrossEntropyLoss(), params, data, check_deterministic=False
            )
            @ vector
        ),
        "hessian": lambda: curvlinops.HessianLinearOperator(
            wrapped, torch.nn.CrossEntropyLoss(), params, data
        ),
        "ggn_logits_module_no_patch": lambda: curvlinops.GGNLinearOperator(
            logits_module, torch.nn.CrossEntropyLoss(), list(logits_module.parameters()), data
        ),
    }
    curv: dict[str, str] = {}
    for name, attempt in attempts.items():
        try:
            value = attempt()
        except (RuntimeError, ValueError, TypeError) as exc:
            curv[name] = first_line(exc)
        else:
            norm = float(value.norm()) if isinstance(value, torch.Tensor) else None
            curv[name] = f"no error (result norm {norm})"
    out["curvlinops"] = curv
    emit(out)


def eigenthings_child(model_path: str, batch_path: str, seed: int, steps: int, probes: int) -> None:
    """hessian-eigenthings' GGNOperator on the logits module: Lanczos and Hutch++."""
    import hessian_eigenthings as he
    import torch
    from torch.nn.functional import cross_entropy

    model, x, _, labels = torch_setup(model_path, batch_path)
    module = keras_logits_module(model)
    operator = he.GGNOperator(
        module,
        [(x, labels)],
        lambda m, batch: m(batch[0]),
        lambda output, batch: cross_entropy(output, batch[1]),
    )
    vector = torch.as_tensor(probe_vector(operator.size, seed), dtype=torch.float32)
    v_g_v = float(vector @ operator.matvec(vector).detach())
    operator.matvec, calls = counted(operator.matvec)  # type: ignore[method-assign]
    started = time.perf_counter()
    result = he.lanczos(operator, k=1, max_iter=steps, which="LA", seed=seed)
    lanczos_s = time.perf_counter() - started
    lanczos_products = calls[0]
    started = time.perf_counter()
    trace = he.trace(operator, num_matvecs=probes, method="hutch++", seed=seed)
    trace_s = time.perf_counter() - started
    emit(
        {
            "digest": variables_digest(model),
            "top": float(result.eigenvalues[0]),
            "residual": float(result.residuals[0]) / abs(float(result.eigenvalues[0])),
            "converged": bool(result.converged[0]),
            "top_products": lanczos_products,
            "top_s": lanczos_s,
            "trace": trace.estimate,
            "trace_stderr": trace.stderr,
            "trace_products": calls[0] - lanczos_products,
            "trace_s": trace_s,
            "v_g_v": v_g_v,
        }
    )


def curvlinops_child(model_path: str, batch_path: str, seed: int, probes: int) -> None:
    """curvlinops' GGNLinearOperator on the logits module: eigsh and Hutch++."""
    import curvlinops
    import keras.src.backend.torch.nn as keras_torch_nn
    import numpy as np
    import torch
    from scipy.sparse.linalg import eigsh

    # Keras's torch conv puts inputs and kernels in channels_last memory format; under
    # torch.vmap (curvlinops vmaps its product over columns) that clone is not implemented
    # ("NYI: Tensor.clone(memory_format) inside vmap").  The layout is only a speed hint.
    keras_torch_nn._maybe_convert_to_channels_last = lambda tensor: tensor
    model, x, _, labels = torch_setup(model_path, batch_path)
    module = keras_logits_module(model)
    params = list(module.parameters())
    operator = curvlinops.GGNLinearOperator(
        module, torch.nn.CrossEntropyLoss(), params, [(x, labels)], check_deterministic=False
    )
    size = operator.shape[1]
    vector = torch.as_tensor(probe_vector(size, seed), dtype=torch.float32)
    v_g_v = float(vector @ (operator @ vector))
    scipy_operator = operator.to_scipy(dtype=np.float64)
    matvec, calls = counted(scipy_operator.matvec)
    scipy_operator.matvec = matvec  # type: ignore[method-assign]
    started = time.perf_counter()
    values = eigsh(
        scipy_operator,
        k=1,
        which="LA",
        tol=1e-6,
        ncv=20,
        v0=np.random.default_rng(seed).standard_normal(size),
        return_eigenvectors=False,
    )
    top_s = time.perf_counter() - started
    torch.manual_seed(seed)
    started = time.perf_counter()
    trace = float(curvlinops.hutchpp_trace(operator, num_matvecs=probes - probes % 3))
    trace_s = time.perf_counter() - started
    emit(
        {
            "digest": variables_digest(model),
            "top": float(values[0]),
            "top_products": calls[0],
            "top_s": top_s,
            "trace": trace,
            "trace_products": probes - probes % 3,
            "trace_s": trace_s,
            "v_g_v": v_g_v,
        }
    )


# --------------------------------------------------------------------------- parent


@dataclass
class Tool:
    """One timed tool: its label, how to run it, and what its runs gave."""

    label: str
    run: Callable[[int], tuple[dict[str, Any], float]]
    wall: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def child_env(backend: str) -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["KERAS_BACKEND"] = backend
    return env


def run_child(cmd: list[str], backend: str) -> tuple[str, float]:
    """Run ``cmd``; its stdout and wall seconds.  Its stderr is shown only on failure."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=child_env(backend), cwd=REPO, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout, seconds


def last_json(out: str) -> dict[str, Any]:
    return dict(json.loads(out.strip().splitlines()[-1]))


def ensure_cache(args: argparse.Namespace) -> tuple[Path, Path]:
    model, batch = cache_paths(args.alpha, args.size, args.batch)
    if model.exists() and batch.exists() and not args.rebuild:
        print(f"cached model: {model.relative_to(REPO)}  batch: {batch.relative_to(REPO)}")
        return model, batch
    CACHE.mkdir(parents=True, exist_ok=True)
    print(
        f"building MobileNetV2 (alpha {args.alpha:g}, weights=None, {args.size}x{args.size}x3, "
        f"{CLASSES} classes, BatchNorm statistics of a seeded batch of 64) + a batch of "
        f"{args.batch}",
        flush=True,
    )
    tmp_model, tmp_batch = (p.with_name("tmp_" + p.name) for p in (model, batch))
    cmd = [sys.executable, "-c", BUILD_CODE, str(tmp_model), str(tmp_batch)]
    run_child([*cmd, str(args.alpha), str(args.size), str(args.batch), str(CLASSES)], "tensorflow")
    tmp_model.replace(model)
    tmp_batch.replace(batch)
    return model, batch


def torch_python(args: argparse.Namespace) -> str | None:
    """The torch venv's Python, or ``None`` (with the reason printed) when it is unusable."""
    path = args.torch_python or os.environ.get(TORCH_PYTHON_ENV)
    if not path:
        print(
            f"torch side skipped: give --torch-python or ${TORCH_PYTHON_ENV} (the Python of a "
            "venv with torch, keras, curvlinops-for-pytorch, hessian-eigenthings; "
            "bench/README.md)"
        )
        return None
    check = "import torch, keras, curvlinops, hessian_eigenthings, scipy"
    env = child_env("torch")
    proc = subprocess.run([path, "-c", check], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["not runnable"])[-1]
        print(f"torch side skipped: {path}: {last}")
        return None
    return str(path)


def gradscope_runner(model: Path, batch: Path, seed: int, probes: int) -> Callable[[int], Any]:
    def run(_: int) -> tuple[dict[str, Any], float]:
        cmd = [
            sys.executable, "-m", "gradscope", "hessian", str(model), "--data", str(batch),
            "--matrix", "ggn", "--block", "model", "--method", "lanczos", "--top-k", "1",
            "--trace", "--probes", str(probes), "--seed", str(seed), "-f", "json",
        ]  # fmt: skip
        out, seconds = run_child(cmd, "tensorflow")
        block = json.loads(out)["blocks"][0]
        report = {
            "top": float(block["eigenvalues"][0]),
            "trace": block.get("trace"),
            "trace_stderr": block.get("trace_stderr"),
            "iterations": block.get("iterations"),
            "residual": float(block["residuals"][0]) / abs(float(block["eigenvalues"][0])),
            "top_products": block.get("iterations"),
            "trace_products": probes,
            "converged": block.get("converged"),
            "compute_s": block.get("seconds"),
        }
        return report, seconds

    return run


def child_cmd(python: str, kind: str, args: argparse.Namespace) -> list[str]:
    return [
        python, str(Path(__file__).resolve()), "--child", kind, "--seed", str(args.seed),
        "--alpha", str(args.alpha), "--size", str(args.size), "--batch", str(args.batch),
        "--probes", str(args.probes), "--lanczos-steps", str(args.lanczos_steps),
    ]  # fmt: skip


def torch_runner(python: str, kind: str, args: argparse.Namespace) -> Callable[[int], Any]:
    def run(_: int) -> tuple[dict[str, Any], float]:
        out, seconds = run_child(child_cmd(python, kind, args), "torch")
        report = last_json(out)
        report["compute_s"] = report["top_s"] + report["trace_s"]
        return report, seconds

    return run


def rel(value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return "-"
    return f"{abs(value - reference) / abs(reference):.1e}"


def number(value: float | None, spec: str = ".7g") -> str:
    return "-" if value is None else format(value, spec)


def time_tools(tools: list[Tool], repeats: int) -> None:
    """Run every tool ``repeats`` times, alternating (A B C A B C ...)."""
    for i in range(repeats):
        for tool in tools:
            if tool.error:
                continue
            try:
                tool.last, seconds = tool.run(i)
            except RuntimeError as exc:
                tool.error = str(exc).splitlines()[-1][:300]
                print(f"  {tool.label}: {tool.error}", flush=True)
                continue
            tool.wall.append(seconds)
            tool.compute.append(float(tool.last.get("compute_s") or 0.0))
            print(
                f"  run {i + 1} {tool.label:22} whole {seconds:6.1f} s, compute "
                f"{tool.compute[-1]:6.1f} s, top {tool.last['top']:.7g}, trace "
                f"{number(tool.last.get('trace'))}",
                flush=True,
            )


def print_diagnosis(diag: dict[str, Any], ref: dict[str, Any] | None) -> None:
    he_ggn, he_hess = diag["eigenthings_ggn"], diag["eigenthings_hessian"]
    print()
    print("The Keras model as it is, under KERAS_BACKEND=torch (no wrapper):")
    print(
        "  torch.func.functional_call with every trainable parameter replaced by zeros "
        f"changes the output by max |diff| = {diag['functional_call_gap']:.3g}: the "
        "substitution never reaches the Keras variables (layers read Variable._value, not "
        "the module's registered _torch_params)."
    )
    print(
        "  hessian-eigenthings 1.0.0a5 GGNOperator: ||G v|| = "
        f"{he_ggn['norm_g_v']:.6g}, v^T G v = {he_ggn['v_g_v']:.6g}, lanczos eigenvalues "
        f"{he_ggn['lanczos']} after {he_ggn['iterations']} step(s): every eigenvalue 0.0 "
        "(it takes J v with torch.func.jvp through functional_call, so J v = 0)."
    )
    ref_vhv = ref["v_h_v"] if ref else None
    print(
        f"  hessian-eigenthings HessianOperator works (autograd.grad on the parameters "
        f"themselves): v^T H v = {he_hess['v_h_v']:.7g} (reference {number(ref_vhv)}, rel. "
        f"{rel(he_hess['v_h_v'], ref_vhv)})"
    )
    for name, outcome in diag["curvlinops"].items():
        print(f"  curvlinops 3.0.1 {name}: {outcome}")


def print_table(tools: list[Tool], ref: dict[str, Any] | None, repeats: int) -> None:
    top_ref = ref["top"] if ref else None
    trace_ref = ref["trace"] if ref else None
    header = (
        f"{'tool':24}{'top eigenvalue':>16}{'rel. err':>10}{'trace':>16}{'rel. err':>10}"
        f"{'products':>12}{'whole s':>9}{'compute s':>11}"
    )
    print()
    print(header)
    print("-" * len(header))
    if ref:
        products = f"{ref['rows']} VJPs"
        print(
            f"{'reference (float64)':24}{ref['top']:>16.9g}{'-':>10}{ref['trace']:>16.9g}"
            f"{'-':>10}{products:>12}{'-':>9}{ref['exact_s']:>11.1f}"
        )
    for tool in tools:
        if not tool.wall:
            print(f"{tool.label:24}  not run: {tool.error or 'skipped'}")
            continue
        last = tool.last
        products = f"{last.get('top_products', last.get('iterations', '?'))}"
        products += f"+{last.get('trace_products', '?')}"
        print(
            f"{tool.label:24}{last['top']:>16.9g}{rel(last['top'], top_ref):>10}"
            f"{number(last.get('trace'), '.9g'):>16}{rel(last.get('trace'), trace_ref):>10}"
            f"{products:>12}{statistics.median(tool.wall):>9.1f}"
            f"{statistics.median(tool.compute):>11.1f}"
        )
    print(f"(times: median of {repeats} alternating runs; values: the last run)")


def print_notes(tools: list[Tool], ref: dict[str, Any] | None) -> None:
    print()
    if ref:
        print(
            f"reference: {ref['parameters']:,} parameters, loss {ref['loss']:.7g}, GGN rank "
            f"{ref['rank']} (= N*(C-1)), top 5 {', '.join(f'{e:.7g}' for e in ref['top5'])}; "
            f"eigsh over hand-written float64 GGN products: {ref['eigsh_top']:.10g} (rel. "
            f"{rel(ref['eigsh_top'], ref['top'])}, {ref['eigsh_products']} products, "
            f"{ref['eigsh_s']:.1f} s); v^T G v {ref['v_g_v']:.10g}"
        )
    for tool in tools:
        if not tool.wall:
            continue
        last = tool.last
        extra = ""
        if "v_g_v" in last and ref:
            extra = f"; v^T G v {last['v_g_v']:.8g} (rel. {rel(last['v_g_v'], ref['v_g_v'])})"
        if last.get("residual") is not None:
            extra += f"; relative residual {last['residual']:.1e}"
        if last.get("converged") is not None:
            extra += f", converged={last['converged']}"
        if last.get("trace_stderr") is not None:
            extra += f"; trace stderr {last['trace_stderr']:.3g}"
        print(f"{tool.label}: {extra.lstrip('; ')}")


def check_digests(ref: dict[str, Any] | None, others: list[dict[str, Any]]) -> None:
    digests = {d["digest"] for d in [*([ref] if ref else []), *others] if "digest" in d}
    if len(digests) > 1:
        sys.exit(f"the two backends order the trainable variables differently: {digests}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--torch-python", help=f"Python of the torch venv (${TORCH_PYTHON_ENV})")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each tool")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width")
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--batch", type=int, default=8, help="rows in the batch")
    parser.add_argument("--probes", type=int, default=30, help="Hutch++ products, every tool")
    parser.add_argument("--lanczos-steps", type=int, default=30, help="hessian-eigenthings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--only", choices=["gradscope", *TORCH_TOOLS], nargs="+")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached model")
    parser.add_argument(
        "--child", choices=["reference", "diagnose", *TORCH_TOOLS], help=argparse.SUPPRESS
    )
    return parser.parse_args()


def run_as_child(args: argparse.Namespace) -> None:
    model, batch = (str(p) for p in cache_paths(args.alpha, args.size, args.batch))
    if args.child == "reference":
        reference_child(model, batch, args.seed, args.reference_dtype)
    elif args.child == "diagnose":
        diagnose_child(model, batch, args.seed)
    elif args.child == "eigenthings":
        eigenthings_child(model, batch, args.seed, args.lanczos_steps, args.probes)
    else:
        curvlinops_child(model, batch, args.seed, args.probes)


def main() -> None:
    args = parse_args()
    if args.child:
        run_as_child(args)
        return
    model, batch = ensure_cache(args)
    python = torch_python(args)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    ref: dict[str, Any] | None = None
    if not args.skip_reference:
        cmd = [*child_cmd(sys.executable, "reference", args), "--reference-dtype"]
        out, _ = run_child([*cmd, args.reference_dtype], "tensorflow")
        ref = last_json(out)
        print(f"reference: top {ref['top']:.10g}, trace {ref['trace']:.10g}", flush=True)
    diag: dict[str, Any] | None = None
    if python:
        diag = last_json(run_child(child_cmd(python, "diagnose", args), "torch")[0])
    tools = [Tool("gradscope (TF)", gradscope_runner(model, batch, args.seed, args.probes))]
    if python:
        tools.append(Tool("hessian-eigenthings", torch_runner(python, "eigenthings", args)))
        tools.append(Tool("curvlinops", torch_runner(python, "curvlinops", args)))
    tools = [t for t in tools if not args.only or any(o in t.label for o in args.only)]
    time_tools(tools, args.repeats)
    check_digests(ref, [diag or {}, *(t.last for t in tools)])
    if diag:
        print_diagnosis(diag, ref)
    print_table(tools, ref, args.repeats)
    print_notes(tools, ref)


if __name__ == "__main__":
    main()
