"""The CLI on every sample model against one eager ``tf.GradientTape``.

CI runs this file, ``tests/test_reference.py`` and ``tests/test_keras_private.py`` a second
time in a fresh environment holding the oldest tensorflow, keras and numpy that
``pyproject.toml`` allows (``ci/min-versions.txt``, see ``.ci/run``), on samples rebuilt by
that Keras (``sample_models/build.py --out DIR``, pointed at by ``GRADSCOPE_SAMPLE_DIR``):
a ``.keras`` file saved by a newer Keras does not load in an older one.

Each command runs in-process through the CLI and its JSON is compared with a reference
that shares nothing with gradscope's engine: the compiled loss and every variable gradient
from one eager tape, and the exact Hessian of one small variable from two nested tapes.
Tolerances: float32 on both sides, in different orders (graph vs eager), so entries may
differ by float32 rounding accumulated through the network, ``RTOL = 1e-4`` of the largest
entry; ``check`` differentiates a float64 copy by finite differences, within the same bound
of the float32 tape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, SAMPLE_MODELS, SAMPLE_PAIRS

from gradscope import _tf
from tests.cli_helpers import invoke
from tests.reference import load_sample, model_loss

RTOL = 1e-4
HESSIAN_MAX_SIZE = 64  # entries of the variable whose Hessian the tapes build


@dataclass
class Truth:
    """A sample's files and what the eager tapes give on them."""

    model: Path
    data: Path
    loss: float
    gradients: dict[str, np.ndarray]
    hessian_path: str
    hessian: np.ndarray


def _dense(gradient: Any) -> np.ndarray:
    tf = _tf.tensorflow()
    return np.asarray(tf.convert_to_tensor(gradient).numpy(), dtype=np.float64)


def _tape_truth(model_path: Path, data_path: Path) -> Truth:
    tf = _tf.tensorflow()
    sample = load_sample(model_path, data_path)
    model, x, y = sample.model, sample.x, sample.y
    variables = list(model.trainable_variables)
    with tf.GradientTape() as tape:
        loss = model_loss(model, x, y, model(x, training=False), training=False)
    gradients = tape.gradient(loss, variables)
    # The last variable is the output layer's (a bias in every sample): small and reached
    # by the loss through every output path.
    last = variables[-1]
    assert int(np.prod(last.shape)) <= HESSIAN_MAX_SIZE, last.path
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            inner_loss = model_loss(model, x, y, model(x, training=False), training=False)
        gradient = inner.gradient(inner_loss, last)
    size = int(np.prod(last.shape))
    jacobian = outer.jacobian(gradient, last, experimental_use_pfor=False)
    hessian = np.reshape(_dense(jacobian), (size, size))
    return Truth(
        model_path,
        data_path,
        float(loss),
        {v.path: _dense(g) for v, g in zip(variables, gradients, strict=True) if g is not None},
        last.path,
        hessian,
    )


@pytest.fixture(scope="module", params=sorted(SAMPLE_PAIRS))
def truth(request: pytest.FixtureRequest) -> Truth:
    model_file, data_file = SAMPLE_PAIRS[request.param]
    return _tape_truth(SAMPLE_MODELS / model_file, SAMPLE_MODELS / data_file)


def _json(*args: object) -> dict[str, Any]:
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_inspect_loss_and_every_variable_gradient(truth: Truth) -> None:
    report = _json("inspect", truth.model, "--data", truth.data)
    assert report["loss"]["value"] == pytest.approx(truth.loss, rel=1e-5)
    rows = {row["path"]: row for row in report["variables"]}
    assert set(truth.gradients) <= set(rows)
    scale = max(float(np.max(np.abs(g))) for g in truth.gradients.values())
    for path, gradient in truth.gradients.items():
        grad = rows[path]["grad"]
        assert grad["l2"] == pytest.approx(np.linalg.norm(gradient), abs=RTOL * scale), path
        assert grad["max_abs"] == pytest.approx(np.max(np.abs(gradient)), abs=RTOL * scale), path
    total = np.sqrt(sum(float(np.sum(g**2)) for g in truth.gradients.values()))
    assert report["global_grad_norm"] == pytest.approx(total, rel=RTOL)


@pytest.mark.slow
def test_hessian_block_of_the_last_variable(truth: Truth) -> None:
    size = truth.hessian.shape[0]
    report = _json(
        "hessian", truth.model, "--data", truth.data, "--vars", truth.hessian_path,
        "--method", "exact", "--top-k", size,
    )  # fmt: skip
    (block,) = report["blocks"]
    assert block["vars"] == [truth.hessian_path]
    expected = np.linalg.eigvalsh((truth.hessian + truth.hessian.T) / 2)[::-1]
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(block["eigenvalues"], expected, rtol=0, atol=RTOL * scale)
    assert block["trace"] == pytest.approx(float(np.trace(truth.hessian)), abs=RTOL * scale)


@pytest.mark.slow
def test_check_finite_differences_equal_the_tape(truth: Truth) -> None:
    report = _json("check", truth.model, "--data", truth.data, "--vars", truth.hessian_path)
    assert report["passed"] is True
    (row,) = report["variables"]
    gradient = truth.gradients[truth.hessian_path]
    scale = float(np.max(np.abs(gradient)))
    assert row["checked"] == gradient.size  # a small variable: every entry
    for coordinate in row["coordinates"]:
        expected = gradient[tuple(coordinate["index"])]
        assert coordinate["numeric"] == pytest.approx(expected, abs=RTOL * scale)
        assert coordinate["autodiff"] == pytest.approx(expected, abs=RTOL * scale)


def _release(version: str) -> tuple[int, ...]:
    """``"3.10"`` and ``"3.10.0"`` alike: the release numbers without trailing zeros."""
    parts = [int(part) for part in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def test_ci_pins_are_the_declared_floors() -> None:
    """ci/min-versions.txt pins every runtime dependency at the floor pyproject.toml
    declares, so the min-versions CI step tests what the package promises."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors: dict[str, str] = {}
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        name, found, version = requirement.partition(">=")
        if found:
            floors[name.strip().lower()] = version.strip()
    lines = (REPO / "ci" / "min-versions.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line.strip() and not line.startswith("#"))
    for name, pin in pins.items():
        assert name in floors, f"ci/min-versions.txt pins {name}, pyproject.toml has no floor"
        assert _release(pin) == _release(floors[name]), (
            f"{name}: ci/min-versions.txt pins {pin}, pyproject.toml says >={floors[name]}"
        )
    runtime = {d.partition(">=")[0].strip().lower() for d in project["dependencies"]}
    assert runtime <= set(pins), f"not pinned in ci/min-versions.txt: {runtime - set(pins)}"
