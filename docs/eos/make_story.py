"""Record the README's edge-of-stability story and draw its dashboards.

    python docs/eos/make_story.py            # writes docs/eos/{diverging,stable}.{jsonl,png}

The two runs of ``tests/eos_story.py`` (the same model, data and schedules the test
``tests/test_eos_monitor.py`` checks): full-batch SGD on a 6-16-1 tanh regression MLP,
its learning rate warming up linearly to 3x (diverging) or to 0.5x (stable) the stable
rate ``2 / λmax`` of the untrained model, recorded every 2nd step by ``GradientMonitor``
with the ``full`` instruments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent.parent / "tests"))

from eos_story import DIVERGING, STABLE, STEPS, build_story_model, story_data  # noqa: E402

import gradscope  # noqa: E402
from gradscope.export.dashboard_plot import plot_dashboard  # noqa: E402
from gradscope.keras import GradientMonitor  # noqa: E402


def main() -> None:
    os.chdir(HERE)  # the plots' titles name the files relative to this folder
    x, y = story_data(0)
    for run in (DIVERGING, STABLE):
        model = build_story_model(0, run)
        path = Path(f"{run.name}.jsonl")
        monitor = GradientMonitor(
            (x, y),
            every_n_batches=2,
            every_n_epochs=None,
            instruments="full",
            jsonl=path,
            verbose=False,
        )
        model.fit(
            x, y, batch_size=len(x), epochs=STEPS, shuffle=False, verbose=0, callbacks=[monitor]
        )
        report = gradscope.dashboard(path)
        plot_dashboard(report, f"{run.name}.png", force=True)
        print(f"{run.name}: docs/eos/{path}, docs/eos/{run.name}.png")


if __name__ == "__main__":
    main()
