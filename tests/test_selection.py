"""``--vars`` and ``--layers``: one selector with one meaning (gradscope.selection).

Pure unit tests on made-up names: every expected selection and message is written out by
hand, and every close-name ratio is computed by hand (ratio = 2·matches / total length).
"""

from __future__ import annotations

import pytest

from gradscope.errors import ExitCode, UsageError
from gradscope.selection import (
    CUTOFF,
    Selector,
    candidate_names,
    close_names,
    describe,
    output_layer_path,
    parse_selector,
    select,
)

# (variable path, owning layer path), as the commands would pass them.
MLP = [
    ("hidden_1/kernel", "hidden_1"),
    ("hidden_1/bias", "hidden_1"),
    ("hidden_2/kernel", "hidden_2"),
    ("hidden_2/bias", "hidden_2"),
    ("probs/kernel", "probs"),
    ("probs/bias", "probs"),
]
NESTED = [
    ("enc_dense_1/kernel", "encoder/enc_dense_1"),
    ("enc_dense_1/bias", "encoder/enc_dense_1"),
    ("enc_dense_2/kernel", "encoder/enc_dense_2"),
    ("head/kernel", "head"),
]
ENCODER = ["enc_dense_1/kernel", "enc_dense_1/bias", "enc_dense_2/kernel"]
DEEP_SIGMOID = [(f"dense_{i:02d}/kernel", f"dense_{i:02d}") for i in range(1, 11)] + [
    ("out/kernel", "out")
]

Item = tuple[str, str]


def _names(item: Item) -> tuple[str, str]:
    return item


def _vars(items: list[Item], text: str) -> list[str]:
    return [path for path, _ in select(items, _names, parse_selector("--vars", text))]


def _layers(items: list[Item], text: str) -> list[str]:
    return [path for path, _ in select(items, _names, None, parse_selector("--layers", text))]


def _error(items: list[Item], vars_text: str | None, layers_text: str | None) -> str:
    variables = parse_selector("--vars", vars_text)
    layers = parse_selector("--layers", layers_text)
    with pytest.raises(UsageError) as caught:
        select(items, _names, variables, layers)
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "\n" not in message
    assert "None" not in message
    return message


# -- parsing --------------------------------------------------------------------------------


def test_parse_strips_and_drops_empty_items() -> None:
    assert parse_selector("--vars", None) is None
    selector = parse_selector("--vars", " dense/* , ,kernel,, dense/* ")
    assert selector == Selector("--vars", " dense/* , ,kernel,, dense/* ", ("dense/*", "kernel"))


@pytest.mark.parametrize("text", ["", "   ", ",", " , ,"])
def test_blank_selector_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_selector("--layers", text)
    assert str(caught.value) == (
        "--layers: expected comma-separated globs, such as 'dense_1/*,kernel'. "
        f"Received: --layers={text!r}"
    )
    assert caught.value.exit_code == ExitCode.USAGE


def test_non_string_selector_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^--vars: expected a string .* Received: --vars=3$"):
        parse_selector("--vars", 3)


# -- names -------------------------------------------------------------------------------


def test_candidate_names() -> None:
    assert candidate_names("dense_1/kernel") == ("dense_1/kernel", "kernel")
    assert candidate_names("dense_1/kernel", "encoder/dense_1") == (
        "dense_1/kernel",
        "kernel",
        "encoder/dense_1",
        "dense_1",
    )
    assert candidate_names("probs") == ("probs",)
    assert candidate_names("probs/kernel", "probs") == ("probs/kernel", "kernel", "probs")


@pytest.mark.parametrize(
    ("row", "layer"),
    [
        ("dense_1", "dense_1"),
        ("dense_1@1", "dense_1"),
        ("lstm:0", "lstm"),
        ("encoder/rnn@12:1", "encoder/rnn"),
        ("odd@name", "odd@name"),
        ("x@", "x@"),
    ],
)
def test_output_layer_path(row: str, layer: str) -> None:
    assert output_layer_path(row) == layer


def test_describe_documents_both_options() -> None:
    assert "(dense_1/kernel)" in describe("--vars")
    assert "(kernel)" in describe("--vars")
    assert "layer's path or name (dense_1)" in describe("--vars")
    assert "(encoder/dense_1)" in describe("--layers")
    assert "kernel" not in describe("--layers")


# -- what --vars selects -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("probs/kernel", ["probs/kernel"]),  # a full path
        ("kernel", ["hidden_1/kernel", "hidden_2/kernel", "probs/kernel"]),  # a last name
        ("hidden_2", ["hidden_2/kernel", "hidden_2/bias"]),  # a layer selects its variables
        ("probs/*", ["probs/kernel", "probs/bias"]),  # the README's hessian example
        ("hidden_1/kernel,probs", ["hidden_1/kernel", "probs/kernel", "probs/bias"]),
        ("hidden_?/b*", ["hidden_1/bias", "hidden_2/bias"]),
        ("*_[!1]/*", ["hidden_2/kernel", "hidden_2/bias"]),
    ],
)
def test_vars_selects_in_model_order(text: str, expected: list[str]) -> None:
    assert _vars(MLP, text) == expected


def test_vars_matches_nested_layer_paths_and_names() -> None:
    assert _vars(NESTED, "encoder/*") == ENCODER
    assert _vars(NESTED, "enc_dense_1") == ["enc_dense_1/kernel", "enc_dense_1/bias"]
    # A glob is matched against whole names, never against a middle component.
    assert _error(NESTED, "dense_1", None).startswith("--vars 'dense_1': no trainable")


def test_globs_are_case_sensitive() -> None:
    message = _error(MLP, "Probs", None)
    assert message == (
        "--vars 'Probs': no trainable variable matches. Close names: probs. "
        "Received: --vars='Probs'"
    )


# -- what --layers selects ---------------------------------------------------------------


def test_layers_select_by_layer_path_or_last_name() -> None:
    assert _layers(NESTED, "encoder/*") == ENCODER
    assert _layers(NESTED, "enc_dense_2,head") == ["enc_dense_2/kernel", "head/kernel"]
    expected = ["dense_01/kernel", "dense_05/kernel", "dense_09/kernel", "dense_10/kernel"]
    # the README's debugging-story example
    assert _layers(DEEP_SIGMOID, "dense_0[159],dense_10,out") == [*expected, "out/kernel"]


def test_layers_never_match_variable_names() -> None:
    message = _error(MLP, None, "kernel")
    assert message.startswith("--layers 'kernel': no layer with trainable variables matches.")


def test_layer_output_rows_belong_to_their_layer() -> None:
    rows = [("dense_1@0", "dense_1"), ("dense_1@1", "dense_1"), ("lstm:0", "lstm")]
    outputs = [(path, output_layer_path(path)) for path, _ in rows]
    assert outputs == rows
    assert _layers(outputs, "dense_1") == ["dense_1@0", "dense_1@1"]
    assert _layers(outputs, "lstm") == ["lstm:0"]


def test_both_options_select_the_intersection() -> None:
    assert _vars(MLP, "kernel") != []
    variables = parse_selector("--vars", "kernel")
    layers = parse_selector("--layers", "hidden_*")
    chosen = select(MLP, _names, variables, layers)
    assert [path for path, _ in chosen] == ["hidden_1/kernel", "hidden_2/kernel"]
    assert _error(MLP, "hidden_1/*", "probs") == (
        "--vars and --layers: no trainable variable matches both. "
        "Received: --vars='hidden_1/*', --layers='probs'"
    )


def test_no_selector_selects_everything() -> None:
    assert select(MLP, _names) == MLP
    assert select([], _names) == []


# -- globs that match nothing --------------------------------------------------------------


def test_the_unmatched_glob_is_named_not_the_whole_option() -> None:
    message = _error(MLP, "probs,zzz_nothing", None)
    assert message.startswith("--vars 'zzz_nothing': no trainable variable matches. Known names:")
    assert message.endswith("Received: --vars='probs,zzz_nothing'")


def test_close_names_for_a_misspelt_last_name() -> None:
    # 'kernl' against 'kernel': 5 matching letters of 11, ratio 10/11; against the full
    # path 'hidden_1/kernel' only 10/20. All three kernels tie, listed in name order.
    assert _error(MLP, "kernl", None) == (
        "--vars 'kernl': no trainable variable matches. "
        "Close names: hidden_1/kernel, hidden_2/kernel, probs/kernel. Received: --vars='kernl'"
    )
    message = _error(MLP, "hiden_1/kernel", None)
    assert message.startswith("--vars 'hiden_1/kernel': no trainable variable matches.")
    assert "Close names: hidden_1/kernel, hidden_2/kernel" in message


# 'abcd' against 'abcxyz': 'abc' matches, ratio 2·3/10 = 0.6, exactly the cutoff;
# against 'abcxyzw' 2·3/11 ≈ 0.545 (close under check's former 0.5 cutoff); against
# 'abxyzw' 2·2/10 = 0.4 (close under hessian's former 0.4 cutoff).
BOUNDARY = [("abcxyz/w", "abcxyz"), ("abcxyzw/w", "abcxyzw"), ("abxyzw/w", "abxyzw")]


@pytest.mark.parametrize(("vars_text", "layers_text"), [("abcd", None), (None, "abcd")])
def test_one_cutoff_for_vars_and_layers(vars_text: str | None, layers_text: str | None) -> None:
    assert CUTOFF == 0.6
    message = _error(BOUNDARY, vars_text, layers_text)
    assert " Close names: abcxyz. Received: " in message


def test_close_names_are_ranked_and_capped() -> None:
    # 'dense_1' vs 'dense_1x' 14/15, vs 'dense_12' 14/15, vs 'dense_2' 12/14, vs
    # 'dense_22' 12/15 = 0.8, vs 'xense_9' 10/14.
    known = ["xense_9", "dense_22", "dense_2", "dense_12", "dense_1x"]
    assert close_names("dense_1", known) == ["dense_12", "dense_1x", "dense_2"]
    assert close_names("dense_1", ["a/b/dense_2"]) == ["a/b/dense_2"]  # by last name
    assert close_names("qqq", known) == []


def test_without_close_names_the_first_known_names_are_listed() -> None:
    message = _error(DEEP_SIGMOID, None, "zzz*")
    layers = ", ".join(f"dense_{i:02d}" for i in range(1, 9))
    assert message == (
        "--layers 'zzz*': no layer with trainable variables matches. "
        f"Known names: {layers}, ... (11 in all). Received: --layers='zzz*'"
    )
    assert _error([], "kernel", None) == (
        "--vars 'kernel': no trainable variable matches. There are none. Received: --vars='kernel'"
    )


def test_messages_use_the_callers_nouns() -> None:
    layers = parse_selector("--layers", "nope")
    with pytest.raises(UsageError, match=r"^--layers 'nope': no layer matches\. Known names: a\."):
        select([("a", "a")], _names, None, layers, layer_what="layer")
