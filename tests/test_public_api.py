"""The public names: every one in ``gradscope.__all__`` resolves, and old paths still work.

The report field types, options objects, health and diff types are importable from
``gradscope`` itself; ``gradscope.report`` keeps exporting every report type (it is a
public module), and the modules that moved (``gradscope.api``, ``gradscope.render.table``)
forward their old names with a ``DeprecationWarning``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import gradscope
import gradscope.report
from gradscope.commands.diff.report import DiffReport
from gradscope.commands.inspect.report import Report
from gradscope.health import Health, Thresholds


def test_every_public_name_resolves_without_tensorflow() -> None:
    """``import gradscope`` and every name but the TensorFlow-bound entry points, in a
    fresh interpreter: none of them imports TensorFlow."""
    lazy = {"inspect", "inspect_file", "hessian", "hessian_file", "check", "check_file"}
    lazy |= {"landscape", "landscape_file", "attribute", "attribute_file"}
    names = [n for n in gradscope.__all__ if n not in lazy | {"GradientMonitor"}]
    code = (
        "import sys, gradscope\n"
        f"for name in {names!r}: getattr(gradscope, name)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", sorted(gradscope.__all__))
def test_public_name_resolves(name: str) -> None:
    assert getattr(gradscope, name) is not None


def test_report_field_types_are_the_report_modules_own() -> None:
    assert gradscope.DiffReport is DiffReport
    assert gradscope.Report is Report is gradscope.report.Report
    assert gradscope.Thresholds is Thresholds
    assert gradscope.Health is Health
    field_types = {f.name: f.type for f in dataclasses.fields(Report)}
    assert "per_sample" in field_types  # PerSampleReport, exported as gradscope.PerSampleReport
    assert gradscope.PerSampleReport.__module__ == "gradscope.commands.inspect.report"
    assert gradscope.HessianReport is gradscope.report.HessianReport


def test_gradient_monitor_is_the_keras_callback() -> None:
    from gradscope.keras import GradientMonitor

    assert gradscope.GradientMonitor is GradientMonitor


@pytest.mark.parametrize(
    ("old_module", "name", "new_home"),
    [
        ("gradscope.api", "batch_from_arrays", "gradscope.session"),
        ("gradscope.api", "inspect_file", "gradscope.commands.inspect.run"),
        ("gradscope.render.table", "format_table", "gradscope.commands.inspect.render"),
        ("gradscope.render.csv", "format_csv", "gradscope.commands.inspect.render"),
    ],
)
def test_moved_names_forward_with_a_warning(old_module: str, name: str, new_home: str) -> None:
    import importlib

    old = importlib.import_module(old_module)
    with pytest.warns(DeprecationWarning, match=f"{old_module} is deprecated: import {name}"):
        value = getattr(old, name)
    assert value is getattr(importlib.import_module(new_home), name)


def test_renamed_names_forward_under_their_new_name() -> None:
    """``gradscope.render.table.format_report`` is inspect's ``format_table`` now."""
    import gradscope.render.table as table
    from gradscope.commands.inspect.render import format_table

    with pytest.warns(DeprecationWarning, match="import format_table from"):
        assert table.format_report is format_table
