"""Every command on tiny keras_hub language models, against slow independent references.

The models (``tests/hub_language.py``): GPT-2, Gemma with LoRA, Llama and BART, built
from configs with random weights, saved as ``.keras`` with a padded ``.npz`` batch and a
``sample_weight`` that masks the padded targets.  gradscope runs as the CLI runs it
(``inspect_file``, ``hessian_file``, ``check_file`` on the files); the LoRA Gemma runs
in memory (``inspect``, ``hessian``, ``check``), since Keras merges LoRA adapters into
the kernels when it saves.

The references share nothing with gradscope's engine; each is an eager computation on
a separately loaded copy of the model (``hub_language.load``):

* gradients: one eager ``tf.GradientTape`` over ``model(x)`` and ``model.compute_loss``
  (with the sample weight), differentiated with respect to every trainable variable and
  to a watched zero added to every layer output (``tests.reference``'s one-off ``call``
  replacement, all probes in one pass: the derivative with respect to one added zero
  does not depend on the others, which are zero).  Its agreement with the
  one-tape-per-quantity :func:`tests.reference.probe_reference` was checked while
  writing these tests; one pass keeps the file within its time budget.
* training mode: the same, with ``training=True`` and the model's RNG seed state
  restored before the pass, so that dropout draws the masks gradscope's run drew.
* per-example norms: a loop of single-example tapes.
* Hessian blocks: the explicit Hessian of that variable, the jacobian of the tape
  gradient (``experimental_use_pfor=False``: a loop of reverse passes).
* whole-model Lanczos: numpy ``eigh`` of the explicit Hessian of all trainable
  variables, formed by a compiled jacobian of the gradient (a loop, no ``pfor``).
* ``check``: its autodiff entries against the reference gradient at the same index.

Tolerances: float32 on both sides, different op orders (graph vs eager), so gradient
entries agree to ``RTOL = 1e-4`` of the tensor's largest entry, as in
``test_reference.py``.  Hessian entries: ``1e-3`` of the largest (second-order terms
accumulate more rounding).  The Lanczos top eigenvalue: ``1e-3`` relative (Lanczos's
stopping rule is a residual of 1e-3 of max|λ|; the eigenvalue error is of the order of
the residual squared over the gap, far smaller).

Per-example gradients vectorize attention gradients with ``pfor``; gradscope rewrites
its batched matmuls into shapes that TensorFlow 2.21's oneDNN kernels compute correctly
(:mod:`gradscope.engine.pfor_matmul`), so these tests run as users run.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import gradscope
from gradscope.commands.inspect.report import Report
from gradscope.report import HessianReport
from tests import hub_language as hl
from tests.reference import Probe, _np64, _PerturbedCall, _State, compare

keras_hub = pytest.importorskip("keras_hub")

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer"),
]

RTOL = 1e-4
HESSIAN_RTOL = 1e-3
MODELS = list(hl.BUILDERS)
CAUSAL = ["gpt2", "gemma_lora", "llama"]

# Small variables for exact Hessian blocks (a scale, a bias, an adapter).
HESSIAN_VARS = {
    "gpt2": ["layer_norm/gamma", "transformer_layer_0/self_attention/query/bias"],
    "gemma_lora": [
        "decoder_block_0/attention/value/lora_kernel_b",
        "decoder_block_0/attention/query/lora_kernel_a",
    ],
    "llama": [
        "sequence_output_layernorm/scale",
        "transformer_layer_0/self_attention_layernorm/scale",
    ],
    "bart": ["transformer_decoder_layer_0/cross_attention/query/bias"],  # one: time
}
EXPLICIT_LIMIT = 1200
"""Largest model whose whole Hessian is formed as the Lanczos reference (BART, about
2,000 parameters, would take a minute; its top eigenpair is checked with one HVP)."""


# -- building and loading, once per session ---------------------------------------------------


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> dict[str, hl.HubModel]:
    """Every model of the corpus, built and saved once."""
    folder = tmp_path_factory.mktemp("hub_language")
    return {name: hl.build(name, folder) for name in MODELS}


@dataclass
class Subject:
    """One model under test: its files and batch, and the copy the references run on."""

    hub: hl.HubModel
    model: Any  # the reference copy (the in-memory model itself for LoRA)

    @property
    def name(self) -> str:
        return self.hub.name

    def inspect(self, **options: Any) -> Report:
        """gradscope inspect, from the files (in memory for the LoRA model)."""
        if self.hub.lora:
            arrays = self.hub
            return gradscope.inspect(
                arrays.model, arrays.inputs, arrays.y, sample_weight=arrays.sample_weight, **options
            )
        return gradscope.inspect_file(self.hub.path, self.hub.data, **options)

    def hessian(self, options: Any) -> HessianReport:
        if self.hub.lora:
            arrays = self.hub
            return gradscope.hessian(
                arrays.model, arrays.inputs, arrays.y, sample_weight=arrays.sample_weight,
                options=options,
            )  # fmt: skip
        return gradscope.hessian_file(self.hub.path, self.hub.data, options=options)

    def check(self) -> Any:
        if self.hub.lora:
            arrays = self.hub
            return gradscope.check(
                arrays.model, arrays.inputs, arrays.y, sample_weight=arrays.sample_weight
            )
        return gradscope.check_file(self.hub.path, self.hub.data)


_SUBJECTS: dict[str, Subject] = {}


@pytest.fixture(params=MODELS)
def subject(request: pytest.FixtureRequest, hub: dict[str, hl.HubModel]) -> Subject:
    """The model ``request.param``, with its reference copy (loaded once)."""
    name = request.param
    if name not in _SUBJECTS:
        built = hub[name]
        _SUBJECTS[name] = Subject(built, built.model if built.lora else hl.load(built))
    return _SUBJECTS[name]


# -- the reference ------------------------------------------------------------------------------


def _base(name: str) -> str:
    """A layer name without Keras's uniquifying suffix (``softmax_2`` -> ``softmax``)."""
    return re.sub(r"_\d+$", "", name)


def find_layer(model: Any, path: str) -> Any:
    """The layer at ``path`` in a copy of the model gradscope ran on.

    Layers Keras named automatically (``softmax_2``) get another number in another copy
    loaded into the same process, so a name without an exact match is matched without
    its number; it must then be the only such child.
    """
    layer = model
    for name in path.split("/"):
        children = list(layer._flatten_layers(include_self=False, recursive=False))
        matches = [c for c in children if c.name == name] or [
            c for c in children if _base(c.name) == _base(name)
        ]
        assert len(matches) == 1, f"{path}: {name} among {[c.name for c in children]}"
        layer = matches[0]
    return layer


def probes(model: Any, report: Report) -> list[Probe]:
    """One probe per layer-output row of ``report`` (``a/b@call:output``)."""
    found = []
    for row in report.activations:
        path, output = row.path.rsplit(":", 1) if ":" in row.path else (row.path, "0")
        path, call = path.rsplit("@", 1) if "@" in path else (path, "0")
        found.append(Probe(row.path, find_layer(model, path), int(call), int(output)))
    return found


@dataclass
class Reference:
    loss: float
    variables: dict[str, np.ndarray]
    activations: dict[str, np.ndarray]


def reference(subject: Subject, probe_list: list[Probe], training: bool = False) -> Reference:
    """The loss and the gradients of every variable and probed layer output: one eager
    tape over Keras's own forward pass, state restored before and after."""
    from gradscope import _tf

    tf = _tf.tensorflow()
    model, hub = subject.model, subject.hub
    state = _State(model)
    try:
        state.restore()
        with tf.GradientTape() as tape, contextlib.ExitStack() as stack:
            perturbed = [stack.enter_context(_PerturbedCall(p, tape)) for p in probe_list]
            y_pred = model(dict(hub.inputs), training=training)
            loss = model.compute_loss(
                x=dict(hub.inputs), y=hub.y, y_pred=y_pred, sample_weight=hub.sample_weight,
                training=training,
            )  # fmt: skip
        variables = list(model.trainable_variables)
        deltas = [p.delta for p in perturbed]
        grads = tape.gradient(loss, [variables, deltas])
    finally:
        state.restore()
    return Reference(
        float(loss),
        {v.path: _np64(g) for v, g in zip(variables, grads[0], strict=True) if g is not None},
        {p.probe.path: _np64(g) for p, g in zip(perturbed, grads[1], strict=True) if g is not None},
    )


def floor(ref: Reference) -> float:
    """Rounding noise of the reference: float32 eps x its largest gradient entry.

    Some gradients are exactly 0 in exact arithmetic (a key bias: softmax ignores a
    constant added to every score) and are float32 noise around 0 on both sides; they
    are compared in absolute terms, below this floor.
    """
    largest = max(float(np.max(np.abs(g))) for g in ref.variables.values())
    return float(np.finfo(np.float32).eps) * largest


def close(actual: Any, expected: np.ndarray, noise: float, what: str) -> None:
    """``compare`` at ``RTOL`` of the tensor's largest entry, or of the noise floor."""
    if float(np.max(np.abs(expected))) * RTOL < noise:
        np.testing.assert_allclose(actual, expected, rtol=0, atol=noise, err_msg=what)
    else:
        compare(actual, expected, RTOL, what)


def assert_matches(report: Report, ref: Reference, what: str) -> None:
    """Loss, every variable gradient and statistic, every layer-output gradient."""
    tensors = report.tensors
    assert tensors is not None
    assert report.loss.kind == "compiled"
    assert report.loss.value == pytest.approx(ref.loss, rel=1e-5), what
    assert set(tensors.variables) == set(ref.variables), what
    rows = {row.path: row for row in report.variables}
    noise = floor(ref)
    for path, expected in ref.variables.items():
        close(tensors.variables[path], expected, noise, f"{what} variable {path}")
        grad = rows[path].grad
        assert grad is not None
        assert grad.l2 == pytest.approx(np.linalg.norm(expected), rel=RTOL, abs=noise), path
    assert set(tensors.activations) == set(ref.activations), what
    for path, expected in ref.activations.items():
        compare(tensors.activations[path], expected, RTOL, f"{what} layer output {path}")
    squares = sum(float(np.sum(g * g)) for g in ref.variables.values())
    assert report.global_grad_norm == pytest.approx(np.sqrt(squares), rel=RTOL)


_PLAIN: dict[str, tuple[Report, Reference]] = {}


def plain(subject: Subject) -> tuple[Report, Reference]:
    """gradscope inspect (raw tensors kept) and its reference, once per model."""
    if subject.name not in _PLAIN:
        report = subject.inspect(keep_tensors=True)
        _PLAIN[subject.name] = (report, reference(subject, probes(subject.model, report)))
    return _PLAIN[subject.name]


# -- inspect ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_inspect(subject: Subject) -> None:
    """Every variable and layer-output gradient equals the eager reference."""
    report, ref = plain(subject)
    assert_matches(report, ref, subject.name)
    assert report.training is False


@pytest.mark.slow
def test_inspect_training(subject: Subject) -> None:
    """Training mode: dropout is active (the loss changes), and with the same seed state
    the gradients are those of the reference's pass with the same masks."""
    report = subject.inspect(keep_tensors=True, training=True)
    ref = reference(subject, probes(subject.model, report), training=True)
    assert_matches(report, ref, f"{subject.name} training")
    assert report.training is True
    inference, _ = plain(subject)
    assert abs(report.loss.value - inference.loss.value) > 1e-4, "dropout had no effect"


@pytest.mark.slow
def test_inspect_batch_size(subject: Subject) -> None:
    """Batches of 2 rows: the row-weighted mean of the batch gradients is the gradient of
    the whole batch (the loss divides by rows x tokens), so equals the reference."""
    report = subject.inspect(keep_tensors=True, batch_size=2)
    _, ref = plain(subject)
    assert report.batches is not None
    assert report.batches.count == hl.ROWS // 2
    tensors = report.tensors
    assert tensors is not None
    assert set(tensors.variables) == set(ref.variables)
    for path, expected in ref.variables.items():
        what = f"{subject.name} mean gradient {path}"
        close(tensors.variables[path], expected, floor(ref), what)


def per_example_reference(subject: Subject) -> tuple[list[str], np.ndarray]:
    """``[examples, variables]`` gradient norms, one eager tape per example."""
    from gradscope import _tf

    tf = _tf.tensorflow()
    model, hub = subject.model, subject.hub
    variables = list(model.trainable_variables)
    rows = []
    for i in range(hl.ROWS):
        x = {k: v[i : i + 1] for k, v in hub.inputs.items()}
        with tf.GradientTape() as tape:
            loss = model.compute_loss(
                x=x, y=hub.y[i : i + 1], y_pred=model(x, training=False),
                sample_weight=hub.sample_weight[i : i + 1],
            )  # fmt: skip
        grads = tape.gradient(loss, variables)
        rows.append([np.linalg.norm(_np64(g)) for g in grads])
    return [v.path for v in variables], np.array(rows)


@pytest.mark.slow
def test_inspect_per_sample(subject: Subject) -> None:
    """The per-example norms' spread and largest examples equal a loop of tapes."""
    report = subject.inspect(per_sample=True)
    paths, norms = per_example_reference(subject)
    total = np.sqrt((norms**2).sum(axis=1))
    section = report.per_sample
    assert section is not None
    assert section.examples == hl.ROWS
    rows = {row.path: row for row in section.variables}
    for row, values in [(section.total, total)] + [
        (rows[p], norms[:, j]) for j, p in enumerate(paths)
    ]:
        spread = row.norms
        assert spread.min == pytest.approx(values.min(), rel=RTOL, abs=1e-9), row.path
        assert spread.median == pytest.approx(np.median(values), rel=RTOL, abs=1e-9), row.path
        assert spread.max == pytest.approx(values.max(), rel=RTOL, abs=1e-9), row.path
        np.testing.assert_allclose(row.top_norms, values[list(row.top)], rtol=RTOL, atol=1e-9)
    assert section.total.top[0] == int(np.argmax(total))


# -- padding --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", CAUSAL)
def test_padding_gets_exactly_zero_gradient(name: str, hub: dict[str, hl.HubModel]) -> None:
    """With the sample weight masking padded targets, every padded position of the
    embedding output has a gradient of exactly 0 (causal and padding masks give its
    key/value zero attention weight; its own loss term has weight 0); the positions
    whose target counts do not."""
    subject = Subject(hub[name], None)
    report, _ = _PLAIN.get(name) or (subject.inspect(keep_tensors=True), None)
    tensors = report.tensors
    assert tensors is not None
    (path,) = [p for p in tensors.activations if p.endswith("/token_embedding@0")]
    grad = tensors.activations[path]
    padded = hub[name].padding_mask == 0
    assert padded.any()
    assert grad.shape[:2] == padded.shape
    assert np.all(grad[padded] == 0.0), f"{name}: padded positions got a gradient"
    counted = hub[name].sample_weight > 0
    assert np.all(np.abs(grad[counted]).max(axis=-1) > 0), f"{name}: counted positions"


# -- LoRA -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lora_rows_are_the_adapters_and_name_their_kernel(hub: dict[str, hl.HubModel]) -> None:
    """Gemma with LoRA: only the trainable adapters are reported (the frozen kernels are
    not), and each names the kernel it adapts, in JSON and table."""
    model = hub["gemma_lora"].model
    report, _ = plain(Subject(hub["gemma_lora"], model))
    trainable = {v.path for v in model.trainable_variables}
    assert {row.path for row in report.variables} == trainable
    assert all("/lora_kernel_" in path for path in trainable)
    frozen = {v.path for v in model.non_trainable_variables}
    for row in report.variables:
        adapted = row.path.rsplit("/", 1)[0] + "/kernel"
        assert row.adapts == adapted, row
        assert adapted in frozen, row
        assert row.to_dict()["adapts"] == adapted
    assert len(report.variables) == 4


# -- hessian --------------------------------------------------------------------------------------


def explicit_hessian(subject: Subject, variables: list[Any]) -> np.ndarray:
    """The Hessian of the loss over ``variables`` (flattened, concatenated): the jacobian
    of the tape gradient, a compiled loop of reverse passes (no ``pfor``)."""
    from gradscope import _tf

    tf = _tf.tensorflow()
    model, hub = subject.model, subject.hub
    inputs = {k: tf.constant(v) for k, v in hub.inputs.items()}
    y, weight = tf.constant(hub.y), tf.constant(hub.sample_weight)

    @tf.function
    def hessian() -> Any:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = model.compute_loss(
                    x=inputs, y=y, y_pred=model(inputs, training=False), sample_weight=weight
                )
            grads = inner.gradient(loss, variables)
            flat = tf.concat([tf.reshape(tf.convert_to_tensor(g), [-1]) for g in grads], 0)
        blocks = outer.jacobian(flat, variables, experimental_use_pfor=False)
        size = flat.shape[0]
        return tf.concat([tf.reshape(b, [size, -1]) for b in blocks], 1)

    return np.asarray(hessian().numpy(), np.float64)


@pytest.mark.slow
def test_hessian_variable_blocks(subject: Subject) -> None:
    """Exact per-variable blocks equal the explicit Hessian of that variable."""
    selected = HESSIAN_VARS[subject.name]
    report = subject.hessian(gradscope.HessianOptions(variables=",".join(selected), top_k=3))
    assert sorted(block.vars for block in report.blocks) == sorted((p,) for p in selected)
    by_path = {v.path: v for v in subject.model.trainable_variables}
    both = explicit_hessian(subject, [by_path[path] for path in selected])  # one trace
    offsets = np.cumsum([0] + [int(np.prod(by_path[path].shape)) for path in selected])
    for block in report.blocks:
        (path,) = block.vars
        start, stop = offsets[selected.index(path)], offsets[selected.index(path) + 1]
        want = both[start:stop, start:stop]
        assert block.method == "exact"
        assert block.matrix is not None
        compare(block.matrix, want, HESSIAN_RTOL, f"{subject.name} hessian {path}")
        eigenvalues = np.linalg.eigvalsh((want + want.T) / 2)
        scale = float(np.max(np.abs(eigenvalues)))
        np.testing.assert_allclose(
            block.eigenvalues, eigenvalues[::-1][:3], rtol=HESSIAN_RTOL, atol=HESSIAN_RTOL * scale
        )
        trace_tol = HESSIAN_RTOL * scale * want.shape[0]
        assert block.trace == pytest.approx(np.trace(want), abs=trace_tol)


@pytest.mark.slow
def test_hessian_whole_model_lanczos(subject: Subject) -> None:
    """The whole model's top Hessian eigenvalue by Lanczos equals numpy's on the explicit
    Hessian of every trainable variable."""
    options = gradscope.HessianOptions(block="model", method="lanczos", top_k=1, eigenvectors=True)
    (block,) = subject.hessian(options).blocks
    variables = list(subject.model.trainable_variables)
    assert block.method == "lanczos"
    assert block.size == sum(int(np.prod(v.shape)) for v in variables)
    assert block.converged
    assert block.eigenvectors is not None
    top = block.eigenvalues[0]
    vector = np.asarray(block.eigenvectors[:, 0], np.float64)
    product = reference_hvp(subject, variables, vector)
    assert float(vector @ product) == pytest.approx(top, rel=HESSIAN_RTOL)
    assert np.linalg.norm(product - top * vector) <= 2e-3 * abs(top)
    if block.size <= EXPLICIT_LIMIT:
        want = explicit_hessian(subject, variables)
        assert top == pytest.approx(np.linalg.eigvalsh((want + want.T) / 2)[-1], rel=HESSIAN_RTOL)


def reference_hvp(subject: Subject, variables: list[Any], vector: np.ndarray) -> np.ndarray:
    """``H @ vector`` by an eager double tape (reverse over reverse)."""
    from gradscope import _tf

    tf = _tf.tensorflow()
    model, hub = subject.model, subject.hub
    pieces, start = [], 0
    for v in variables:
        size = int(np.prod(v.shape))
        pieces.append(tf.constant(vector[start : start + size].reshape(v.shape), v.dtype))
        start += size
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = model.compute_loss(
                x=dict(hub.inputs), y=hub.y, y_pred=model(dict(hub.inputs), training=False),
                sample_weight=hub.sample_weight,
            )  # fmt: skip
        grads = [tf.convert_to_tensor(g) for g in inner.gradient(loss, variables)]
        dot = tf.add_n([tf.reduce_sum(g * p) for g, p in zip(grads, pieces, strict=True)])
    products = outer.gradient(dot, variables)
    return np.concatenate([_np64(p).ravel() for p in products])


# -- check ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_check_passes_and_agrees_with_the_reference(subject: Subject) -> None:
    """``check`` passes, and the gradient it checked is the reference gradient."""
    report = subject.check()
    assert report.passed, [row.path for row in report.failed]
    _, ref = plain(subject)
    assert {row.path for row in report.variables} == set(ref.variables)
    noise = floor(ref)
    for row in report.variables:
        expected = ref.variables[row.path]
        scale = max(float(np.max(np.abs(expected))), noise / RTOL)
        assert row.checked > 0, row.path
        for coordinate in row.coordinates:
            assert coordinate.autodiff == pytest.approx(
                expected[coordinate.index], abs=RTOL * scale
            ), (row.path, coordinate.index)


# -- LoRA rows on plain Keras layers (fast) ------------------------------------------------------


def test_lora_rows_of_keras_layers(keras: Any) -> None:
    """Dense, EinsumDense, Conv1D and Embedding with LoRA: the adapter rows name the frozen
    weight they adapt, in the report, its JSON, the table's note and the CSV; other rows
    have no ``adapts``."""
    from gradscope.commands.inspect.render import format_csv, variable_note

    keras.utils.set_random_seed(0)
    tokens = keras.Input((4,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(10, 6, name="emb")(tokens)
    h = keras.layers.Conv1D(6, 2, name="conv")(h)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    h = keras.layers.Dense(5, name="dense")(h)
    out = keras.layers.EinsumDense("ab,bc->ac", output_shape=3, bias_axes="c", name="ed")(h)
    model = keras.Model(tokens, out)
    for name in ("emb", "conv", "dense", "ed"):
        model.get_layer(name).enable_lora(2)
    model.compile(loss="mse")
    rng = np.random.default_rng(0)
    report = gradscope.inspect(
        model, rng.integers(0, 10, (8, 4)), rng.normal(size=(8, 3)).astype(np.float32)
    )
    frozen = {"emb": "emb/embeddings", "conv": "conv/kernel", "dense": "dense/kernel"}
    frozen["ed"] = "ed/kernel"
    assert {v.path for v in model.non_trainable_variables} == set(frozen.values())
    adapts = {row.path: row.adapts for row in report.variables}
    assert set(adapts) == {v.path for v in model.trainable_variables}
    for path, adapted in adapts.items():
        layer, variable = path.split("/")
        if variable.startswith("lora_"):
            assert adapted == frozen[layer], path
        else:
            assert adapted is None, path
    rows = {row.path: row for row in report.variables}
    assert rows["dense/lora_kernel_a"].to_dict()["adapts"] == "dense/kernel"
    assert "adapts" not in rows["dense/bias"].to_dict()
    assert variable_note(rows["emb/lora_embeddings_b"]) == "LoRA of emb/embeddings"
    assert variable_note(rows["dense/bias"]) is None
    text = format_csv(report)
    lines = {line.split(",")[1]: line for line in text.splitlines()[1:]}
    assert lines["ed/lora_kernel_b"].endswith(",ed/kernel")
    assert lines["ed/bias"].endswith(",")
