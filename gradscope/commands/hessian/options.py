"""What ``hessian`` computes: the one validated options object of the command.

:class:`HessianOptions` validates every field when it is built, with Keras-style
messages (``Received: method='lanczoss'; expected one of auto, exact, lanczos``), so a
Python user and the CLI meet the same rules.  Its field defaults are the only defaults:
the CLI reads them off the dataclass (:func:`defaults`) instead of declaring its own.

This module imports neither TensorFlow nor the engine, so the CLI can read the defaults
and the choices at import time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from ... import validation
from ...engine.step_memory import default_max_memory
from ...selection import parse_selector

if TYPE_CHECKING:
    from ...engine.gauss_newton import Matrix
    from ...engine.hessian import HvpMode

Granularity = Literal["variable", "layer", "model"]
Method = Literal["auto", "exact", "lanczos"]

BLOCKS: tuple[str, ...] = get_args(Granularity)
"""``block``: one Hessian block per variable, per layer, or one for the whole selection."""

METHODS: tuple[str, ...] = get_args(Method)
"""``method``: exact blocks, matrix-free Lanczos, or exact when it fits ``max_memory``."""

MATRICES: tuple[str, ...] = ("hessian", "ggn", "fisher", "empirical-fisher")
"""``matrix``: the Hessian, the generalized Gauss-Newton matrix, the Monte Carlo Fisher or
the empirical Fisher (:mod:`gradscope.engine.gauss_newton`)."""

MAX_MC_SAMPLES = 256
"""Every draw of the Fisher's targets is a loss evaluation in the product's graph."""

HVP_MODES: tuple[str, ...] = ("reverse", "forward")
"""``hvp``: back-over-back or forward-over-back products
(:data:`gradscope.engine.hessian.HvpMode`)."""

DEFAULT_SEED = 0
"""The seed when neither ``HessianOptions.seed`` nor the ``seed=`` of the call is given."""


@dataclass(frozen=True)
class HessianOptions:
    """What to compute: selection, granularity, method and the matrix-free settings.

    ``seed`` seeds everything random in a run: the synthetic batch (when there is no
    data), dropout, and the random probes of Lanczos, Hutch++ and the density.  ``None``
    means the ``seed=`` of :func:`~gradscope.hessian` / :func:`~gradscope.hessian_file`,
    or :data:`DEFAULT_SEED` (see :func:`resolve_seed`).

    Every field is checked here; a bad value raises :class:`~gradscope.errors.UsageError`.
    """

    variables: str | None = None
    layers: str | None = None
    block: Granularity = "variable"
    method: Method = "auto"
    top_k: int = 3
    trace: bool = False
    density: bool = False
    max_memory: int = field(default_factory=default_max_memory)
    tol: float = 1e-3
    max_iter: int = 100
    probes: int = 99
    seed: int | None = None
    cross: bool = False
    eigenvectors: bool = False
    hvp: HvpMode = "reverse"
    matrix: Matrix = "hessian"
    mc_samples: int = 1
    diagonal: bool = False
    jit: bool = False
    """Compile the products with XLA (``jit_compile``).  Off by default: on a CPU XLA
    was measured no faster and far slower to compile, and on a model with max pooling
    its products differ from TensorFlow's kernels by 1e-3, so they would not agree with
    the exact blocks (see the README)."""

    def __post_init__(self) -> None:
        """Refuse a bad field with one line that names it and what it received."""
        parse_selector("--vars", self.variables)
        parse_selector("--layers", self.layers)
        validation.one_of("block", self.block, BLOCKS)
        validation.one_of("method", self.method, METHODS)
        validation.integer("top_k", self.top_k, minimum=1)
        for name in ("trace", "density", "cross", "eigenvectors"):
            validation.flag(name, getattr(self, name))
        validation.integer("max_memory", self.max_memory, minimum=1)
        validation.positive_number("tol", self.tol)
        validation.integer("max_iter", self.max_iter, minimum=1)
        validation.integer("probes", self.probes, minimum=1)
        validation.optional_integer("seed", self.seed, minimum=0)
        validation.one_of("hvp", self.hvp, HVP_MODES)
        validation.one_of("matrix", self.matrix, MATRICES)
        validation.integer("mc_samples", self.mc_samples, minimum=1, maximum=MAX_MC_SAMPLES)
        validation.flag("diagonal", self.diagonal)
        validation.flag("jit", self.jit)


def defaults() -> dict[str, Any]:
    """Each field's default, by field name; ``max_memory`` is left out, since its default
    is computed from this machine's memory when the options are built.

    The CLI's option defaults come from here, so the library defines them once.
    """
    return {
        item.name: item.default
        for item in dataclasses.fields(HessianOptions)
        if item.default is not dataclasses.MISSING
    }


def resolve_seed(options: HessianOptions | None, seed: int | None) -> tuple[HessianOptions, int]:
    """``options`` with the run's one seed filled in, and that seed.

    The seed is ``options.seed`` or ``seed``, else :data:`DEFAULT_SEED`.  The two are the
    same setting given twice; when both are given they must agree, or the synthetic
    batch and the random probes would follow different seeds.
    """
    return validation.resolve_seed(options, seed, HessianOptions, DEFAULT_SEED)


__all__ = [
    "BLOCKS",
    "DEFAULT_SEED",
    "HVP_MODES",
    "MATRICES",
    "MAX_MC_SAMPLES",
    "METHODS",
    "Granularity",
    "HessianOptions",
    "Method",
    "defaults",
    "resolve_seed",
]
