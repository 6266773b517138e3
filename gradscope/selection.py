"""What ``--vars`` and ``--layers`` select: one meaning in every command.

``inspect``, ``hessian`` and ``check`` read both options the same way, through this module:

* A selector is a comma-separated list of globs (``fnmatch`` rules: ``*``, ``?``, ``[seq]``,
  ``[!seq]``; case-sensitive; ``*`` also matches ``/``).  Whitespace around each glob is
  dropped and empty items are ignored; a selector with no glob at all (``''``, ``' , '``) is
  a usage error.  An item is selected when any of the globs matches it.
* ``--layers`` globs match a layer's path (``encoder/dense_1``) or its last name
  (``dense_1``).  A layer output called ``dense_1@1`` or ``lstm:0`` belongs to the layer
  ``dense_1`` or ``lstm``.
* ``--vars`` globs match a variable's path (``dense_1/kernel``) or its last name
  (``kernel``), and also the path or last name of the layer that owns it, so
  ``--vars dense_1`` selects every variable of the layer ``dense_1``.
* Given both options, an item is selected when it matches both.
* Every glob must match something.  The first glob that matches nothing is a usage error
  (exit 2) naming that glob, with up to :data:`MAX_CLOSE` close names: the names whose path
  or last name has a :class:`difflib.SequenceMatcher` ratio of at least :data:`CUTOFF` with
  the glob (the cutoff of :func:`difflib.get_close_matches`, which every other close-name
  hint in gradscope uses), or else the first :data:`MAX_KNOWN` names there are.

Messages are one line, Keras style, and quote what the user typed, never a Python ``None``
(``--vars 'kernl': no trainable variable matches. Close names: dense/kernel. Received:
--vars='kernl'``).

Pure Python (``fnmatch``, ``difflib``): the commands pass in the names, so this module never
touches a model.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from .errors import UsageError, received

Option = Literal["--vars", "--layers"]
T = TypeVar("T")

#: Smallest :class:`difflib.SequenceMatcher` ratio of a close name (difflib's default).
CUTOFF = 0.6
#: Most close names a "matches nothing" message lists.
MAX_CLOSE = 3
#: Most names listed when none is close.
MAX_KNOWN = 8

_HELP: dict[str, str] = {
    "--vars": (
        "Only variables matching these comma-separated globs: a variable path "
        "(dense_1/kernel) or name (kernel), or its layer's path or name (dense_1)."
    ),
    "--layers": (
        "Only layers matching these comma-separated globs: a layer path "
        "(encoder/dense_1) or name (dense_1)."
    ),
}

# A layer output's row path: the layer path, then ``@N`` for call N, ``:K`` for output K.
_OUTPUT_PATH = re.compile(r"(?P<layer>.+?)(?:@\d+)?(?::\d+)?")


def describe(option: Option) -> str:
    """One-line help for ``option``, the same text in every command's ``--help``."""
    return _HELP[option]


def last_name(path: str) -> str:
    """The last ``/``-separated component of ``path`` (``dense_1/kernel`` -> ``kernel``)."""
    return path.rsplit("/", 1)[-1]


def candidate_names(path: str, layer_path: str | None = None) -> tuple[str, ...]:
    """The names a glob is matched against: ``path`` and its last name, then, when given,
    ``layer_path`` and its last name (without repeats, in that order).

    A variable's ``--vars`` names are ``candidate_names(variable.path, layer_path)``; a
    layer's ``--layers`` names are ``candidate_names(layer_path)``.
    """
    names = [path, last_name(path)]
    if layer_path is not None:
        names += [layer_path, last_name(layer_path)]
    return tuple(dict.fromkeys(names))


def output_layer_path(row_path: str) -> str:
    """The layer path of a layer-output row path (``dense_1@1`` or ``lstm:0`` -> the layer)."""
    match = _OUTPUT_PATH.fullmatch(row_path)
    return match.group("layer") if match else row_path


def _glob_matches(pattern: str, names: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


@dataclass(frozen=True)
class Selector:
    """The parsed value of one ``--vars`` or ``--layers`` option."""

    option: str
    """The option as the user knows it (``--vars``), for messages."""
    text: str
    """The value exactly as received, for the ``Received: ...`` tail."""
    patterns: tuple[str, ...]
    """The globs: stripped, non-empty, without repeats, in the order given."""

    def matches(self, *names: str) -> bool:
        """Whether any glob matches any of an item's ``names`` (see :func:`candidate_names`)."""
        return any(_glob_matches(pattern, names) for pattern in self.patterns)

    def received(self) -> str:
        """``--vars='kernl'``: the option and its value as typed."""
        return f"{self.option}={self.text!r}"


def parse_selector(option: str, text: object) -> Selector | None:
    """Parse an option value: ``None`` selects everything (returns ``None``).

    Raises :class:`UsageError` for a value that is not a string or holds no glob.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise UsageError(
            f"{option}: expected a string of comma-separated globs. "
            f"{received(f'{option}={text!r}')}"
        )
    patterns = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not patterns:
        raise UsageError(
            f"{option}: expected comma-separated globs, such as 'dense_1/*,kernel'. "
            f"{received(f'{option}={text!r}')}"
        )
    return Selector(option, text, patterns)


def close_names(pattern: str, known: Iterable[str]) -> list[str]:
    """Up to :data:`MAX_CLOSE` of ``known`` whose path or last name is close to ``pattern``,
    closest first (ties in name order)."""
    scored = []
    for name in set(known):
        score = max(_ratio(pattern, candidate) for candidate in candidate_names(name))
        if score >= CUTOFF:
            scored.append((-score, name))
    return [name for _, name in sorted(scored)[:MAX_CLOSE]]


def _ratio(pattern: str, name: str) -> float:
    # The same comparison as difflib.get_close_matches(pattern, [name]).
    matcher = difflib.SequenceMatcher(None, name, pattern)
    if matcher.real_quick_ratio() < CUTOFF or matcher.quick_ratio() < CUTOFF:
        return 0.0
    return matcher.ratio()


def _hint(pattern: str, known: Iterable[str]) -> str:
    names = sorted(set(known))
    close = close_names(pattern, names)
    if close:
        return f"Close names: {', '.join(close)}."
    if not names:
        return "There are none."
    more = f", ... ({len(names)} in all)" if len(names) > MAX_KNOWN else ""
    return f"Known names: {', '.join(names[:MAX_KNOWN])}{more}."


def require_each_matches(
    selector: Selector, names: Sequence[tuple[str, ...]], known: Iterable[str], what: str
) -> None:
    """Raise :class:`UsageError` for the first glob matching none of ``names``.

    ``names`` holds each item's candidate names; ``known`` the names the hint may suggest
    (paths); ``what`` says what the glob should have matched (``trainable variable``).
    """
    for pattern in selector.patterns:
        if not any(_glob_matches(pattern, item) for item in names):
            raise UsageError(
                f"{selector.option} {pattern!r}: no {what} matches. "
                f"{_hint(pattern, known)} {received(selector.received())}"
            )


def select(
    items: Sequence[T],
    names_of: Callable[[T], tuple[str, str]],
    variables: Selector | None = None,
    layers: Selector | None = None,
    *,
    what: str = "trainable variable",
    layer_what: str = "layer with trainable variables",
) -> list[T]:
    """The ``items`` selected by ``--vars`` (``variables``) and ``--layers`` (``layers``).

    ``names_of(item)`` gives the item's path and its layer's path.  Every glob must match
    some item, and with both selectors some item must match both; otherwise
    :class:`UsageError`, whose message calls the items ``what`` and their layers
    ``layer_what``.  With neither selector every item is selected, in order.
    """
    paths = [names_of(item) for item in items]
    var_names = [candidate_names(path, layer) for path, layer in paths]
    layer_names = [candidate_names(layer) for _, layer in paths]
    layer_paths = [layer for _, layer in paths]
    if variables is not None:
        known = [path for path, _ in paths] + layer_paths
        require_each_matches(variables, var_names, known, what)
    if layers is not None:
        require_each_matches(layers, layer_names, layer_paths, layer_what)
    chosen = [
        item
        for item, v_names, l_names in zip(items, var_names, layer_names, strict=True)
        if (variables is None or variables.matches(*v_names))
        and (layers is None or layers.matches(*l_names))
    ]
    if not chosen and variables is not None and layers is not None:
        raise UsageError(
            f"{variables.option} and {layers.option}: no {what} matches both. "
            f"{received(f'{variables.received()}, {layers.received()}')}"
        )
    return chosen
