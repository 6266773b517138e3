"""The README's edge-of-stability story, told by ``GradientMonitor`` and ``gradscope dashboard``.

The two runs of ``tests/eos_story.py`` (full-batch SGD whose learning rate warms up to 3x,
or to only 0.5x, the stable rate ``2 / λmax`` of the untrained model) are recorded every
2nd step with ``instruments=["sharpness"]`` into JSON Lines, read back through the
dashboard's reader.  The recorded ``λmax`` must equal the reference Lanczos of
``eos_story`` (nested tapes, no gradscope) at the same weights; in the diverging run the
edge-of-stability ratio must reach 1 (±10%) from below within a few records
(``MAX_GAP_STEPS`` steps: 4 records here) before the probe loss first exceeds 10x its
minimum, and in the stable run it must stay below 1 with no such loss increase.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eos_story import (
    DIVERGING,
    MAX_GAP_STEPS,
    STABLE,
    STEPS,
    SharpnessProbe,
    StoryRun,
    build_story_model,
    eos_crossing,
    first_loss_blowup,
    story_data,
)

from gradscope.commands.dashboard.reader import read_run
from gradscope.commands.dashboard.run import dashboard

EVERY, TOL = 2, 0.1


def _record(run: StoryRun, folder: Path, keras: Any) -> tuple[Path, dict[int, float]]:
    """Train ``run`` with the monitor, and the reference λmax after every recorded step."""
    from gradscope.keras import GradientMonitor

    x, y = story_data(0)
    model = build_story_model(0, run)
    path = folder / f"{run.name}.jsonl"
    monitor = GradientMonitor(
        (x, y),
        every_n_batches=EVERY,
        every_n_epochs=None,
        instruments=["sharpness"],
        jsonl=path,
        verbose=False,
    )
    probe = SharpnessProbe(model, x, y)
    reference: dict[int, float] = {}

    class Reference(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            step = int(self.model.optimizer.iterations.numpy())
            if step % EVERY == 0:
                reference[step] = probe()

    model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=STEPS,
        shuffle=False,
        verbose=0,
        callbacks=[monitor, Reference()],
    )
    return path, reference


@pytest.fixture(scope="module")
def runs(keras, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("eos")
    return {run.name: _record(run, folder, keras) for run in (DIVERGING, STABLE)}


def _series(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    records = read_run(path).records
    steps = np.array([r.fit.step for r in records])
    losses = np.array([np.nan if r.report.loss is None else r.report.loss for r in records])
    sharpness = [r.instruments["sharpness"] for r in records]
    return (
        steps,
        losses,
        np.array([s.eos_ratio for s in sharpness]),
        np.array([s.lambda_max for s in sharpness]),
    )


def test_recorded_sharpness_equals_the_reference_until_the_blowup(runs) -> None:  # type: ignore[no-untyped-def]
    for path, reference in runs.values():
        steps, losses, _, lambdas = _series(path)
        assert list(steps) == list(range(EVERY, STEPS + 1, EVERY))
        end = first_loss_blowup(losses) or len(steps)
        for step, value in zip(steps[:end], lambdas[:end], strict=True):
            assert value == pytest.approx(reference[int(step)], rel=1e-3)


def test_diverging_run_reaches_the_edge_a_few_records_before_the_loss_blows_up(runs) -> None:  # type: ignore[no-untyped-def]
    steps, losses, ratios, _ = _series(runs["diverging"][0])
    crossing = eos_crossing(ratios, tol=TOL)
    blowup = first_loss_blowup(losses)
    assert crossing is not None
    assert blowup is not None
    assert crossing >= 1  # an earlier record was below 0.9: the ratio reaches 1 from below
    assert abs(ratios[crossing] - 1.0) <= TOL
    assert 0 < steps[blowup] - steps[crossing] <= MAX_GAP_STEPS
    assert blowup - crossing <= MAX_GAP_STEPS // EVERY


def test_stable_run_stays_below_the_edge(runs) -> None:  # type: ignore[no-untyped-def]
    _, losses, ratios, _ = _series(runs["stable"][0])
    assert np.max(ratios) < 1.0
    assert first_loss_blowup(losses) is None


def test_the_dashboard_shows_the_sharpness_against_two_over_lr(runs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    from gradscope.export.dashboard_plot import plot_dashboard

    path = runs["diverging"][0]
    report = dashboard(path)
    _, _, ratios, lambdas = _series(path)
    assert list(report.get("sharpness.lambda_max").values) == pytest.approx(list(lambdas))
    assert list(report.get("sharpness.eos_ratio").values) == pytest.approx(list(ratios))
    result = plot_dashboard(report, tmp_path / "story.png")
    assert "sharpness" in result.plotted
