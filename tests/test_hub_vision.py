"""gradscope on tiny keras_hub models (BERT classifier, ResNet backbone, ViT classifier)
against slow references that share nothing with its engine.

The models and batches come from ``tests/hub_vision.py`` (random weights, no download).
Each command runs on each model and each number is compared with an independent
computation:

* ``inspect`` (plain, ``--training``): :func:`tests.reference.probe_reference`, one eager
  tape per variable, float input and layer output (keras_hub layers are reached by a
  one-off patch of that layer's ``call``, so layers outside the functional graph count);
* ``inspect --batch-size``: the mean over the batches of the per-batch references;
* ``inspect --per-sample``: a loop of single-example tapes;
* ``hessian`` exact blocks: the Jacobian of a tape gradient (no ``pfor``);
* ``hessian --block model --method lanczos``: ARPACK (``scipy.sparse.linalg.eigsh``) on a
  linear operator whose product is a plain double-tape Hessian-vector product;
* ``check``: must pass, and its autodiff entries equal the reference gradient.

Tolerances: both sides compute the same float32 functions in different orders (a traced
graph versus eager ops, one tape versus many), so entries agree to ``RTOL=1e-4`` of the
tensor's largest entry (as in ``tests/test_reference.py``).  Lanczos stops at a relative
residual of ``1e-3``; a Ritz value's error is then far below ``1e-3`` of the eigenvalue.

``--per-sample`` on the attention models (BERT, ViT) runs as users run: gradscope
rewrites pfor's batched matmuls into shapes TF 2.21's oneDNN kernels compute correctly.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from typing import Any

import numpy as np
import pytest

import gradscope
from gradscope import HessianOptions
from gradscope.errors import ExitCode
from tests.cli_helpers import error_line, invoke
from tests.hub_vision import (
    BERT_LENGTH,
    BUILDERS,
    IMAGE,
    PADDED,
    ROWS,
    HubCase,
    Loaded,
    build_case,
    load_case,
    local_probes,
    loss_model,
    pack,
    variable_gradients,
)
from tests.reference import (
    ReferenceGradients,
    compare,
    probe_reference,
)

pytestmark = pytest.mark.slow

RTOL = 1e-4
#: A gradient that is zero in exact arithmetic (``HubCase.zero_grads``) holds float32
#: rounding noise, observed ~1e-13 of the largest gradient entry: both sides must stay
#: below this fraction of it.
NOISE = 1e-6


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request: Any, tmp_path_factory: Any) -> HubCase:
    return build_case(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def loaded(case: HubCase) -> Loaded:
    return load_case(case)


def _reference(
    loaded: Loaded, rows: list[str], training: bool = False, x: Any = None, y: Any = None
) -> ReferenceGradients:
    """Layer outputs and inputs: one tape each (:func:`probe_reference`); variables: one
    tape for all (:func:`variable_gradients`).  ``x``/``y`` default to the whole batch."""
    x, y = (loaded.x, loaded.y) if x is None else (x, y)
    ref = probe_reference(
        loss_model(loaded, variables=False),
        x,
        y,
        local_probes(loaded.model, rows),
        training=training,
        input_names=loaded.input_names,
    )
    ref.variables.update(variable_gradients(loaded, x, y, training))
    return ref


def _state(model: Any) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.non_trainable_variables]


def assert_matches_reference(
    case: HubCase,
    report: gradscope.Report,
    ref: ReferenceGradients,
    rows: tuple[str, ...] | None = None,
) -> None:
    """Loss, every variable, float input and layer-output gradient (or only ``rows``),
    within ``RTOL``."""
    assert report.loss.kind == ("compiled" if case.compiled else "sum_of_outputs")
    assert report.loss.value == pytest.approx(ref.loss, rel=1e-5, abs=1e-6)
    tensors = report.tensors
    assert tensors is not None
    assert set(tensors.variables) == set(ref.variables)
    for path in ref.variables:
        compare_gradient(case, ref, path, tensors.variables[path])
    # keras_hub backbones create an unnamed ``Input`` whenever they are built, so one
    # image input is ``input_layer``, ``input_layer_1``, ... depending on how many models
    # this process built before: compare inputs in order, not by name.
    assert len(tensors.inputs) == len(ref.inputs)
    for got, (name, expected) in zip(tensors.inputs.values(), ref.inputs.items(), strict=True):
        compare(got, expected, RTOL, f"{case.name} input {name}")
    got = set(tensors.activations) if rows is None else set(rows) & set(tensors.activations)
    assert got == set(ref.activations)
    for path, expected in ref.activations.items():
        compare(tensors.activations[path], expected, RTOL, f"{case.name} layer output {path}")


def is_zero(case: HubCase, path: str) -> bool:
    """Whether ``path``'s gradient is zero in exact arithmetic (see ``HubCase``)."""
    return any(fnmatch(path, pattern) for pattern in case.zero_grads)


def noise_floor(values: Any) -> float:
    """``NOISE`` times the largest absolute entry of all ``values`` (arrays)."""
    return NOISE * max(float(np.max(np.abs(v))) for v in values)


def compare_gradient(case: HubCase, ref: ReferenceGradients, path: str, actual: Any) -> None:
    """A variable's gradient equals the reference within ``RTOL``; one that is zero in
    exact arithmetic is rounding noise on both sides."""
    expected, what = ref.variables[path], f"{case.name} variable {path}"
    if not is_zero(case, path):
        compare(actual, expected, RTOL, what)
        return
    floor = noise_floor(ref.variables.values())
    assert np.max(np.abs(expected)) <= floor, what
    assert np.max(np.abs(np.asarray(actual))) <= floor, what


def _rows_with_gradient(report: gradscope.Report) -> list[str]:
    return [row.path for row in report.activations if row.grad is not None]


# -- inspect -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(case: HubCase, loaded: Loaded) -> tuple[gradscope.Report, ReferenceGradients]:
    report = gradscope.inspect_file(case.model_path, case.data_path, keep_tensors=True)
    rows = [row.path for row in report.activations]
    return report, _reference(loaded, rows)


def test_inspect_matches_the_reference(case: HubCase, plain: Any) -> None:
    """Every gradient of the saved model on its batch, as ``gradscope inspect`` computes
    it, equals the one-tape-per-quantity reference; the named keras_hub rows are there."""
    report, ref = plain
    assert_matches_reference(case, report, ref)
    assert set(case.rows) <= set(_rows_with_gradient(report))


def test_bert_padding_gets_no_gradient(case: HubCase, plain: Any) -> None:
    """Padded tokens are masked out of attention and the classifier reads the first token
    only, so the embedding output at padded positions has exactly zero gradient."""
    if case.name != "bert_classifier":
        pytest.skip("BERT only")
    report, ref = plain
    assert report.tensors is not None
    path = "bert_backbone/token_embedding"
    for grad in (report.tensors.activations[path], ref.activations[path]):
        assert grad.shape == (ROWS, BERT_LENGTH, 16)
        assert np.all(grad[:, BERT_LENGTH - PADDED :] == 0)
        assert np.all(np.any(grad[:, : BERT_LENGTH - PADDED] != 0, axis=-1))


def test_inspect_training_mode(case: HubCase, loaded: Loaded) -> None:
    """``--training``: dropout and BatchNorm batch statistics in the forward pass; the
    reference restores the same seed states before each of its passes.  The model's
    moving statistics and seed states are left as they were."""
    model = loaded.model
    before = _state(model)
    report = gradscope.inspect(model, loaded.x, loaded.y, training=True, keep_tensors=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, _state(model), strict=True))
    ref = _reference(loaded, list(case.rows), training=True)
    assert_matches_reference(case, report, ref, rows=case.rows)
    inference = variable_gradients(loaded, loaded.x, loaded.y, training=False)
    if case.batchnorm or case.dropout:  # training mode really changed the gradient
        path = next(iter(ref.variables))
        assert not np.allclose(ref.variables[path], inference[path], rtol=1e-3)
    if case.batchnorm:  # and a training pass would have moved the statistics
        model(loaded.x, training=True)
        assert not all(np.array_equal(a, b) for a, b in zip(before, _state(model), strict=True))
        for variable, value in zip(model.non_trainable_variables, before, strict=True):
            variable.assign(value)


def test_inspect_batch_size(case: HubCase, loaded: Loaded) -> None:
    """``--batch-size 2``: the mean of the two half-batch gradients."""
    report = gradscope.inspect_file(
        case.model_path, case.data_path, batch_size=ROWS // 2, keep_tensors=True
    )
    halves = [slice(0, ROWS // 2), slice(ROWS // 2, ROWS)]
    refs = [
        _reference(loaded, [], x=pack(loaded, rows), y=None if loaded.y is None else loaded.y[rows])
        for rows in halves
    ]
    assert report.batch.size == ROWS
    assert report.tensors is not None
    assert set(report.tensors.variables) == set(refs[0].variables)
    mean = ReferenceGradients(loss=(refs[0].loss + refs[1].loss) / 2, regularization=0.0)
    for path in refs[0].variables:
        mean.variables[path] = (refs[0].variables[path] + refs[1].variables[path]) / 2
        compare_gradient(case, mean, path, report.tensors.variables[path])
    assert report.loss.value == pytest.approx(mean.loss, rel=1e-5)


# -- inspect --per-sample --------------------------------------------------------------------


def per_example_norms(loaded: Loaded) -> dict[str, np.ndarray]:
    """``{variable: [norm of example i's gradient]}``, one eager tape per example."""
    from gradscope import _tf

    tf = _tf.tensorflow()
    model = loss_model(loaded)
    norms: dict[str, list[float]] = {v.path: [] for v in model.trainable_variables}
    for i in range(ROWS):
        x = pack(loaded, slice(i, i + 1))
        y = None if loaded.y is None else loaded.y[i : i + 1]
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
        grads = tape.gradient(loss, model.trainable_variables)
        for variable, grad in zip(model.trainable_variables, grads, strict=True):
            dense = np.asarray(tf.convert_to_tensor(grad).numpy(), np.float64)
            norms[variable.path].append(float(np.linalg.norm(dense)))
    return {path: np.array(values) for path, values in norms.items()}


def _json(args: list[object]) -> dict[str, Any]:
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def _check_per_sample(case: HubCase, loaded: Loaded) -> None:
    args = ["inspect", case.model_path, "--data", case.data_path, "--per-sample", "-f", "json"]
    data = _json(args)
    section = data["per_sample"]
    expected = per_example_norms(loaded)
    assert section["examples"] == ROWS
    assert [row["path"] for row in section["variables"]] == list(expected)
    floor = noise_floor(expected.values())
    for row in section["variables"]:
        got = np.zeros(ROWS)
        assert sorted(entry["index"] for entry in row["top"]) == list(range(ROWS))
        for entry in row["top"]:
            got[entry["index"]] = entry["norm"]
        want = expected[row["path"]]
        if is_zero(case, row["path"]):
            assert want.max() <= floor, row["path"]
            assert got.max() <= floor, row["path"]
            continue
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=row["path"])
    total = np.sqrt(sum(norms**2 for norms in expected.values()))
    got_total = np.zeros(ROWS)
    for entry in section["total"]["top"]:
        got_total[entry["index"]] = entry["norm"]
    np.testing.assert_allclose(got_total, total, rtol=RTOL)


def test_per_sample_resnet(tmp_path_factory: Any) -> None:
    """Per-example norms of the ResNet backbone (unknown image size, BatchNorm)."""
    case = build_case("resnet_backbone", tmp_path_factory.mktemp("per_sample_resnet"))
    _check_per_sample(case, load_case(case))


@pytest.mark.parametrize("name", ["bert_classifier", "vit_classifier"])
def test_per_sample_attention(name: str, tmp_path_factory: Any) -> None:
    """Per-example norms of the attention models, with oneDNN on as users run."""
    case = build_case(name, tmp_path_factory.mktemp(f"per_sample_{name}"))
    _check_per_sample(case, load_case(case))


# -- hessian ---------------------------------------------------------------------------------


def explicit_hessian(loaded: Loaded, path: str) -> np.ndarray:
    """The Hessian block of one variable: the Jacobian of a tape gradient, no ``pfor``."""
    from gradscope import _tf

    tf = _tf.tensorflow()
    model = loss_model(loaded)
    (variable,) = [v for v in model.trainable_variables if v.path == path]
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            y_pred = model(loaded.x, training=False)
            loss = model.compute_loss(x=loaded.x, y=loaded.y, y_pred=y_pred, training=False)
        grad = inner.gradient(loss, variable)
    jacobian = outer.jacobian(grad, variable, experimental_use_pfor=False)
    size = int(np.prod(variable.shape))
    return np.asarray(jacobian.numpy(), np.float64).reshape(size, size)


def test_hessian_exact_blocks(case: HubCase, loaded: Loaded) -> None:
    """Exact blocks of two small variables equal the explicit tape Hessian."""
    options = HessianOptions(variables=",".join(case.small_vars), method="exact")
    report = gradscope.hessian_file(case.model_path, case.data_path, options=options)
    blocks = {block.vars: block for block in report.blocks}
    assert set(blocks) == {(path,) for path in case.small_vars}
    for path in case.small_vars:
        block = blocks[(path,)]
        expected = explicit_hessian(loaded, path)
        assert block.method == "exact"
        assert block.matrix is not None
        compare(block.matrix, expected, RTOL, f"{case.name} hessian {path}")
        symmetric = (expected + expected.T) / 2
        spectrum = np.linalg.eigvalsh(symmetric)
        scale = float(np.max(np.abs(spectrum)))
        top = spectrum[::-1][: len(block.eigenvalues)]
        np.testing.assert_allclose(block.eigenvalues, top, rtol=RTOL, atol=RTOL * scale)
        assert block.min_eigenvalue == pytest.approx(spectrum[0], rel=RTOL, abs=RTOL * scale)
        assert block.trace == pytest.approx(np.trace(expected), rel=RTOL, abs=RTOL * scale)


def reference_top_eigenvalue(loaded: Loaded) -> float:
    """The algebraically largest eigenvalue of the whole-model Hessian, by ARPACK on
    double-tape Hessian-vector products (float32 products, float64 Lanczos).  The product
    is a plain back-over-back tape, compiled once with ``tf.function`` for speed."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    from gradscope import _tf

    tf = _tf.tensorflow()
    model = loss_model(loaded)
    variables = list(model.trainable_variables)
    sizes = [int(np.prod(v.shape)) for v in variables]
    x = tf.nest.map_structure(tf.convert_to_tensor, loaded.x)

    @tf.function(reduce_retracing=True)
    def product(flat: Any) -> Any:
        tangents = [
            tf.reshape(part, v.shape)
            for part, v in zip(tf.split(flat, sizes), variables, strict=True)
        ]
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                y_pred = model(x, training=False)
                loss = model.compute_loss(x=x, y=loaded.y, y_pred=y_pred, training=False)
            grads = inner.gradient(loss, variables)
            dot = tf.add_n(
                [
                    tf.reduce_sum(tf.convert_to_tensor(g) * t)
                    for g, t in zip(grads, tangents, strict=True)
                ]
            )
        products = outer.gradient(dot, variables)
        return tf.concat([tf.reshape(tf.convert_to_tensor(p), [-1]) for p in products], 0)

    def hvp(vector: np.ndarray) -> np.ndarray:
        flat = tf.constant(np.asarray(vector, np.float32).ravel())
        return np.asarray(product(flat).numpy(), np.float64)

    n = sum(sizes)
    operator = LinearOperator((n, n), matvec=hvp, dtype=np.float64)
    start = np.random.default_rng(1).standard_normal(n)
    (value,) = eigsh(operator, k=1, which="LA", v0=start, tol=1e-6, return_eigenvectors=False)
    return float(value)


def test_hessian_whole_model_lanczos(case: HubCase, loaded: Loaded) -> None:
    """``hessian --block model --method lanczos``: the top eigenvalue of the whole model."""
    data = _json(
        [
            "hessian", case.model_path, "--data", case.data_path,
            "--block", "model", "--method", "lanczos", "--top-k", "1", "-f", "json",
        ]
    )  # fmt: skip
    (block,) = data["blocks"]
    assert block["size"] == sum(int(np.prod(v.shape)) for v in loaded.model.trainable_variables)
    assert block["method"] == "lanczos"
    assert block["converged"] is True
    expected = reference_top_eigenvalue(loaded)
    assert block["eigenvalues"][0] == pytest.approx(expected, rel=1e-3)


# -- check -----------------------------------------------------------------------------------


def test_check_passes_and_agrees_with_the_reference(case: HubCase, plain: Any) -> None:
    """``check`` passes on every variable and float input, and the autodiff derivative
    it compared is the reference gradient at that entry."""
    _, ref = plain
    result = invoke("check", case.model_path, "--data", case.data_path, "-f", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert data["failed"] == []
    rows = data["variables"] + data["inputs"]
    assert len(data["variables"]) == len(ref.variables)
    for row in rows:
        if row["passed"] is None:  # integer inputs (token ids, masks) have no gradient
            assert row["kind"] == "input", row
            assert row["note"], row
            continue
        assert row["passed"] is True, row
        if row["kind"] == "variable":
            expected = ref.variables[row["path"]]
        else:  # the one image input (named by Keras's counter: compare it by position)
            (expected,) = ref.inputs.values()
        scale = float(np.max(np.abs(expected)))
        if is_zero(case, row["path"]):
            scale = noise_floor(ref.variables.values()) / RTOL
        for entry in row["coordinates"]:
            want = expected[tuple(entry["index"])]
            assert entry["autodiff"] == pytest.approx(want, rel=RTOL, abs=RTOL * scale), row


# -- no batch: sizes the model does not fix are never invented ----------------------------------


def test_synthetic_batch_needs_fixed_sizes(case: HubCase) -> None:
    """Without ``--data``, a model whose inputs have unknown sizes (BERT's sequence length,
    the ResNet's image size) is refused in one line naming the input; the ViT, whose
    image size is fixed, gets a synthetic batch of that size."""
    if case.name == "vit_classifier":
        data = _json(["inspect", case.model_path, "-f", "json"])
        assert data["batch"]["synthetic"] is True
        (row,) = data["inputs"]
        assert row["shape"][1:] == [IMAGE, IMAGE, 3]
        return
    message = error_line(["inspect", case.model_path], ExitCode.MISMATCH)
    name = "token_ids" if case.name == "bert_classifier" else "input_layer"
    assert f"model input '{name}" in message, message
    assert "unknown dimensions" in message, message
    assert "--data" in message
