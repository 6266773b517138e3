"""``landscape``: every loss value against the model run at weights assigned by hand.

References share nothing with the compiled grid function: the weights of a point are
assigned to the variables with a plain loop, the model is called eagerly and its loss
computed by ``model.compute_loss``; several batches are averaged by rows by hand;
BatchNorm statistics are computed with numpy; Hessian eigenpairs come from a dense
Hessian built with two nested tapes.  Tolerances: float32 on both sides, in different
orders (graph vs eager), so ``RTOL = 1e-5`` on losses of order one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

import gradscope
from gradscope import _tf
from gradscope.commands.landscape.options import LandscapeOptions, parse_grid
from gradscope.engine.landscape import (
    MAX_POINTS_PER_CALL,
    Combination,
    LossSurface,
    filter_normalized,
)
from gradscope.errors import MismatchError, UsageError
from tests.reference import model_loss

RTOL = 1e-5
ROWS = 10


def _model(seed: int, *, bn: bool = False, units: int = 6) -> Any:
    keras = _tf.keras()
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((5,)), keras.layers.Dense(units, activation="tanh")]
    if bn:
        layers.append(keras.layers.BatchNormalization(momentum=0.9))
    layers.append(keras.layers.Dense(3))
    model = keras.Sequential(layers)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(seed: int = 1, rows: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 5)).astype(np.float32), rng.integers(0, 3, rows)


@contextmanager
def _assigned(variables: Sequence[Any], values: Sequence[np.ndarray]) -> Iterator[None]:
    """``values`` assigned to ``variables`` (a plain loop), the old values put back after."""
    saved = [np.array(v.numpy()) for v in variables]
    for variable, value in zip(variables, values, strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))
    try:
        yield
    finally:
        for variable, value in zip(variables, saved, strict=True):
            variable.assign(value)


def _direct_loss(
    model: Any, x: np.ndarray, y: np.ndarray, training: bool = False, batch: int | None = None
) -> float:
    """The loss by eager calls, the row-weighted mean over batches of ``batch`` rows;
    non-trainable state put back after each training-mode call."""
    size = batch or len(x)
    total = 0.0
    for start in range(0, len(x), size):
        xb, yb = x[start : start + size], y[start : start + size]
        with _assigned(
            model.non_trainable_variables, [v.numpy() for v in model.non_trainable_variables]
        ):
            value = float(model_loss(model, xb, yb, model(xb, training=training), training))
        total += value * len(xb) / len(x)
    return total


def _point(
    model: Any, directions: Sequence[Sequence[np.ndarray]], coordinates: Sequence[float]
) -> list[np.ndarray]:
    theta = [np.asarray(v.numpy(), np.float64) for v in model.trainable_variables]
    return [
        t + sum(c * d[i] for c, d in zip(coordinates, directions, strict=True))
        for i, t in enumerate(theta)
    ]


def _random_directions(
    model: Any, count: int, seed: int, include_biases: bool = False
) -> list[list[np.ndarray]]:
    weights = [np.asarray(v.numpy(), np.float64) for v in model.trainable_variables]
    rng = np.random.default_rng(seed)
    return [filter_normalized(weights, rng, include_biases) for _ in range(count)]


# -- values against direct evaluation ----------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "batch"), [("-1:1:5", None), ("-1:1:4,-0.5:0.5:3", None), ("-1:1:4,-0.5:0.5:3", 4)]
)
def test_random_grid_equals_loss_at_assigned_weights(grid: str, batch: int | None) -> None:
    """Every point of a 1-D or 2-D random landscape, one batch or three of 4, 4, 2 rows."""
    model = _model(0)
    x, y = _data()
    report = gradscope.landscape(
        model, x, y, options=LandscapeOptions(grid=grid, seed=3), batch_size=batch
    )
    directions = _random_directions(model, len(report.axes), seed=3)
    for point, value in zip(report.points(), report.losses, strict=True):
        with _assigned(model.trainable_variables, _point(model, directions, point)):
            expected = _direct_loss(model, x, y, batch=batch)
        assert value == pytest.approx(expected, rel=RTOL), point
    assert report.loss.value == pytest.approx(_direct_loss(model, x, y, batch=batch), rel=RTOL)


def test_training_mode_uses_batch_statistics_and_leaves_state() -> None:
    """--training on a BatchNorm model: every point normalizes with its batch's own
    statistics (reference: eager training-mode calls), and the moving statistics of the
    model are the same after the run."""
    model = _model(0, bn=True)
    x, y = _data()
    before = [np.array(v.numpy()) for v in model.non_trainable_variables]
    report = gradscope.landscape(
        model,
        x,
        y,
        training=True,
        options=LandscapeOptions(grid="-1:1:3,-1:1:3", seed=5),
        batch_size=4,
    )
    directions = _random_directions(model, 2, seed=5)
    for point, value in zip(report.points(), report.losses, strict=True):
        with _assigned(model.trainable_variables, _point(model, directions, point)):
            expected = _direct_loss(model, x, y, training=True, batch=4)
        assert value == pytest.approx(expected, rel=RTOL), point
    for variable, value in zip(model.non_trainable_variables, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert report.directions.statistics == "batch"


def test_weights_are_never_assigned() -> None:
    model = _model(0)
    x, y = _data()
    before = [np.array(v.numpy()) for v in model.variables]
    gradscope.landscape(model, x, y, options=LandscapeOptions(grid="-1:1:3"))
    for variable, value in zip(model.variables, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


# -- filter normalization ----------------------------------------------------------------


def test_filter_normalization_filter_by_filter() -> None:
    """Each filter (slice along the last axis) of a direction has the norm of the same
    filter of the weights; 1-D variables are zero, or one filter with --include-biases."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(4,)), rng.normal(size=(7, 5))]
    weights[0][..., 2] = 0.0  # a dead filter: its direction is zero
    direction = filter_normalized(weights, np.random.default_rng(1))
    for w, d in zip(weights, direction, strict=True):
        if w.ndim == 1:
            np.testing.assert_array_equal(d, 0.0)
            continue
        for j in range(w.shape[-1]):
            assert np.linalg.norm(d[..., j]) == pytest.approx(np.linalg.norm(w[..., j]), rel=1e-12)
    with_biases = filter_normalized(weights, np.random.default_rng(1), include_biases=True)
    assert np.linalg.norm(with_biases[1]) == pytest.approx(np.linalg.norm(weights[1]), rel=1e-12)
    assert np.count_nonzero(with_biases[1]) == 4
    # The kernels' directions do not depend on include_biases (same draws).
    np.testing.assert_array_equal(with_biases[2], direction[2])


def test_report_names_the_zeroed_variables() -> None:
    model = _model(0)
    x, y = _data()
    report = gradscope.landscape(model, x, y, options=LandscapeOptions(grid="-1:1:3"))
    biases = tuple(v.path for v in model.trainable_variables if len(v.shape) == 1)
    assert report.directions.zeroed == biases
    assert report.directions.normalization == "filter"


# -- interpolation -----------------------------------------------------------------------


def test_interpolation_endpoints_and_midpoints() -> None:
    """alpha = 0 and 1 are each model's own loss (with its own BatchNorm statistics),
    computed independently; a point between is both the weights and the moving
    statistics interpolated."""
    a, b = _model(0, bn=True), _model(1, bn=True)
    x, y = _data()
    for model in (a, b):  # each model its own moving statistics
        model(x, training=True)
    report = gradscope.landscape(a, x, y, to=b, options=LandscapeOptions(grid="-0.5:1.5:9"))
    assert report.loss.value == pytest.approx(_direct_loss(a, x, y), rel=RTOL)
    assert report.other_loss == pytest.approx(_direct_loss(b, x, y), rel=RTOL)
    assert report.losses[2] == pytest.approx(_direct_loss(a, x, y), rel=RTOL)  # alpha = 0
    assert report.losses[6] == pytest.approx(_direct_loss(b, x, y), rel=RTOL)  # alpha = 1
    pairs = [(v, w) for v, w in zip(a.variables, b.variables, strict=True) if "float" in v.dtype]
    floats = [v for v, _ in pairs]
    for alpha, value in zip(report.axes[0].values, report.losses, strict=True):
        # Weights along the whole line; statistics held at the nearer model beyond it.
        trainable = {id(v) for v in a.trainable_variables}
        mixed = [
            (1 - t) * v.numpy() + t * w.numpy()
            for v, w in pairs
            for t in [alpha if id(v) in trainable else min(max(alpha, 0.0), 1.0)]
        ]
        with _assigned(floats, mixed):
            assert value == pytest.approx(_direct_loss(a, x, y), rel=RTOL), alpha
    assert report.directions.kind == "interpolation"
    assert report.directions.statistics == "interpolated"


def test_interpolation_refuses_another_architecture() -> None:
    x, y = _data()
    with pytest.raises(
        MismatchError,
        match=r"differ in architecture: trainable variable 0 .*\(5x6.*Received: .*\(5x7",
    ):
        gradscope.landscape(_model(0), x, y, to=_model(1, units=7))
    with pytest.raises(MismatchError, match=r"trainable variable 2 of MODEL is .*gamma"):
        gradscope.landscape(_model(0, bn=True, units=7), x, y, to=_model(1, units=7))


def test_interpolation_takes_one_axis_and_no_directions() -> None:
    x, y = _data()
    with pytest.raises(UsageError, match="one axis"):
        gradscope.landscape(
            _model(0), x, y, to=_model(1), options=LandscapeOptions(grid="0:1:3,0:1:3")
        )
    with pytest.raises(UsageError, match="--directions: not used with --to"):
        gradscope.landscape(
            _model(0), x, y, to=_model(1), options=LandscapeOptions(directions="random")
        )


# -- BatchNorm statistics recomputed -----------------------------------------------------


def test_recompute_bn_statistics_are_the_data_statistics() -> None:
    """At a point, BatchNorm's statistics are the row-weighted mean over the batches of
    each batch's mean and (biased) variance of the BatchNorm input, computed here with
    numpy at the point's weights; the loss is then the inference loss with them."""
    model = _model(0, bn=True)
    x, y = _data()
    report = gradscope.landscape(
        model,
        x,
        y,
        batch_size=4,
        options=LandscapeOptions(grid="-1:1:3", recompute_bn=True, seed=2),
    )
    directions = _random_directions(model, 1, seed=2)
    bn = model.layers[1]
    for (alpha,), value in zip(report.points(), report.losses, strict=True):
        kernel, bias, *_ = _point(model, directions, [alpha])
        hidden = np.tanh(x.astype(np.float64) @ kernel + bias)
        means, variances = np.zeros(6), np.zeros(6)
        for start in range(0, ROWS, 4):
            part = hidden[start : start + 4]
            means += part.mean(axis=0) * len(part) / ROWS
            variances += part.var(axis=0) * len(part) / ROWS
        with (
            _assigned(model.trainable_variables, _point(model, directions, [alpha])),
            _assigned([bn.moving_mean, bn.moving_variance], [means, variances]),
        ):
            expected = _direct_loss(model, x, y, batch=4)
        assert value == pytest.approx(expected, rel=1e-4), alpha
    assert report.directions.statistics == "recomputed"

    # The statistics themselves, read off the engine at one point.
    surface = _surface(model, x, y, directions, recompute_bn=True)
    mean, variance = surface.statistics(np.array([[0.5]]))
    kernel, bias, *_ = _point(model, directions, [0.5])
    hidden = np.tanh(x.astype(np.float64) @ kernel + bias)
    np.testing.assert_allclose(mean[0], hidden.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance[0], hidden.var(axis=0), rtol=1e-4, atol=1e-6)


def test_recompute_bn_refuses_training_mode() -> None:
    x, y = _data()
    with pytest.raises(UsageError, match="--recompute-bn: has no effect with --training"):
        gradscope.landscape(
            _model(0, bn=True), x, y, training=True, options=LandscapeOptions(recompute_bn=True)
        )


# -- one trace -----------------------------------------------------------------------------


def _surface(
    model: Any, x: np.ndarray, y: np.ndarray, directions: Any, **kwargs: Any
) -> LossSurface:
    from gradscope.commands.inspect.options import InspectOptions
    from gradscope.loading.signature import model_signature
    from gradscope.session import batch_from_arrays, prepare_loss_and_batch

    signature = model_signature(model)
    batch = batch_from_arrays(signature, x, y)
    spec, batch = prepare_loss_and_batch(
        model, signature, batch, InspectOptions(None, False, 0, ROWS)
    )
    variables = tuple(model.trainable_variables)
    base = tuple(np.asarray(v.numpy(), np.float64) for v in variables)
    return LossSurface(
        model,
        signature,
        spec,
        batch,
        Combination(variables, base, tuple(map(tuple, directions))),
        **kwargs,
    )


def test_one_trace_for_a_whole_grid_over_uneven_batches() -> None:
    """9 x 9 points (two calls of unequal length) over batches of 4, 4 and 2 rows: one trace."""
    assert MAX_POINTS_PER_CALL < 81
    model = _model(0)
    x, y = _data()
    report = gradscope.landscape(
        model, x, y, batch_size=4, options=LandscapeOptions(grid="-1:1:9,-1:1:9")
    )
    assert report.timing.traces == 1
    assert report.timing.points == 81


# -- eigen directions --------------------------------------------------------------------


def _dense_hessian(model: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    tf = _tf.tensorflow()
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            loss = model_loss(model, x, y, model(x, training=False), False)
        grads = inner.gradient(loss, variables)
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
    rows = outer.jacobian(flat, variables)
    return np.concatenate([np.reshape(r.numpy(), (flat.shape[0], -1)) for r in rows], axis=1)


def test_eigen_directions_have_the_hessian_curvature() -> None:
    """The eigenvalues are the dense Hessian's top two, and the loss along each unit
    eigenvector curves by its eigenvalue (second difference at step h)."""
    model = _model(0)
    x, y = _data()
    h = 0.02
    report = gradscope.landscape(
        model,
        x,
        y,
        options=LandscapeOptions(
            grid=f"{-h}:{h}:3,{-h}:{h}:3", directions="eigen", tol=1e-6, max_iter=200
        ),
    )
    hessian = _dense_hessian(model, x, y)
    top = np.linalg.eigvalsh(0.5 * (hessian + hessian.T))[::-1][:2]
    assert report.directions.eigenvalues is not None
    np.testing.assert_allclose(report.directions.eigenvalues, top, rtol=1e-3)
    grid = report.loss_grid()
    curvature_x = (grid[0, 1] - 2 * grid[1, 1] + grid[2, 1]) / h**2
    curvature_y = (grid[1, 0] - 2 * grid[1, 1] + grid[1, 2]) / h**2
    assert curvature_x == pytest.approx(top[0], rel=2e-2)
    assert curvature_y == pytest.approx(top[1], rel=2e-2)


def test_eigen_directions_of_the_gauss_newton_matrix() -> None:
    """``matrix="ggn"``: the directions are the GGN's top eigenvectors (its exact block,
    itself checked against an explicit J^T H_L J in test_curvature_matrices.py), and the
    report names the matrix."""
    model = _model(0)
    x, y = _data()
    options = LandscapeOptions(
        grid="-0.01:0.01:3", directions="eigen", tol=1e-7, max_iter=200, matrix="ggn"
    )
    report = gradscope.landscape(model, x, y, options=options)
    exact = gradscope.hessian(
        model, x, y, options=gradscope.HessianOptions(matrix="ggn", block="model", method="exact")
    ).blocks[0]
    assert exact.eigenvalues_all is not None
    assert report.directions.matrix == "ggn"
    assert report.directions.eigenvalues is not None
    np.testing.assert_allclose(
        report.directions.eigenvalues, exact.eigenvalues_all[::-1][:1], rtol=1e-4
    )


# -- the grid syntax ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("-1:1", "does not have three fields"),
        ("a:1:3", "START 'a' is not a number"),
        ("-1:1:1", "NUM '1' is not an integer >= 2"),
        ("-1:1:2.5", "NUM '2.5'"),
        ("1:-1:3", "START 1 is not below STOP -1"),
        ("-1:1:3,-1:1:3,-1:1:3", "3 axes"),
        ("-1:1:1000,-1:1:1000", "1,000,000 points"),
        ("-1:inf:3", "not finite"),
        ("", "no axis"),
    ],
)
def test_bad_grid_is_one_line(text: str, why: str) -> None:
    with pytest.raises(UsageError) as caught:
        LandscapeOptions(grid=text)
    message = str(caught.value)
    assert why in message
    assert message.endswith(f"Received: {text!r}")
    assert "\n" not in message


def test_grid_values_include_both_ends() -> None:
    (axis,) = parse_grid("-0.25:1.25:31")
    values = axis.values()
    assert values[0] == -0.25
    assert values[-1] == 1.25
    assert values[5] == 0.0
    assert values[25] == 1.0


# -- the report's contracts ----------------------------------------------------------------


def test_json_contract() -> None:
    model = _model(0)
    x, y = _data()
    report = gradscope.landscape(model, x, y, options=LandscapeOptions(grid="-1:1:3,-1:1:2"))
    data = json.loads(report.to_json())
    assert data["schema"] == "gradscope.landscape/1"
    assert set(data) >= {
        "schema", "model", "batch", "loss", "training", "seed", "grid", "losses",
        "minimum", "other_loss", "directions", "timing",
    }  # fmt: skip
    assert data["grid"]["shape"] == [3, 2]
    assert [a["name"] for a in data["grid"]["axes"]] == ["x", "y"]
    assert np.asarray(data["losses"]).shape == (3, 2)
    np.testing.assert_array_equal(np.asarray(data["losses"]), report.loss_grid())
    assert data["minimum"]["loss"] == min(report.losses)
    assert set(data["directions"]) == {
        "kind", "seed", "normalization", "include_biases", "variables", "zeroed",
        "statistics", "eigenvalues", "to", "matrix",
    }  # fmt: skip
    assert data["timing"]["traces"] == 1


def test_csv_one_row_per_point() -> None:
    from gradscope.render import render

    model = _model(0)
    x, y = _data()
    report = gradscope.landscape(model, x, y, options=LandscapeOptions(grid="-1:1:3,-1:1:2"))
    lines = render(report, "csv").splitlines()
    assert lines[0] == "x,y,loss"
    rows = [tuple(map(float, line.split(","))) for line in lines[1:]]
    expected = [(*p, v) for p, v in zip(report.points(), report.losses, strict=True)]
    assert rows == expected


def test_table_has_the_curve_sparkline() -> None:
    from gradscope.render import render

    model = _model(0)
    x, y = _data()
    report = gradscope.landscape(model, x, y, options=LandscapeOptions(grid="-1:1:5"))
    text = render(report, "table", width=120)
    curve = next(line for line in text.splitlines() if line.startswith("curve"))
    spark = curve.split()[-1]
    assert len(spark) == 5
    lowest = int(np.argmin(report.losses))
    assert spark[lowest] == "▁"
    assert spark[int(np.argmax(report.losses))] == "█"
