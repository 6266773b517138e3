"""The README's Python example runs, and its numbers agree with the report it prints."""

from __future__ import annotations

import re

import numpy as np
from conftest import REPO


def _python_blocks() -> list[str]:
    """The Python blocks of the README's "Use it from Python" section (the pipeline
    section's blocks read a CSV file and are run by ``test_pipelines.py``)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use it from Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_example_runs() -> None:
    blocks = _python_blocks()
    assert blocks, "the README has a Python example"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    report = namespace["report"]
    kernel_grad = namespace["kernel_grad"]
    kernel_path = namespace["model"].layers[0].kernel.path  # type: ignore[attr-defined]
    row = next(r for r in report.variables if r.path == kernel_path)  # type: ignore[attr-defined]
    assert np.isclose(np.linalg.norm(kernel_grad.astype(np.float64)), row.grad.l2, rtol=1e-9)  # type: ignore[attr-defined]
