"""``attribute --plot`` / ``--html`` / ``--vocab``: the pictures of hand-built reports.

The reports are built by hand (numpy arrays and the report dataclasses), so each test
knows where the attribution is large and checks that the colour lands there: in the
PNG's pixels, in the HTML's token spans, and in a headless Chromium's screenshot of
the page.  The colours are checked against the documented hex values (RdBu's red
#b2182b and blue #2166ac), not against gradscope's own colour functions.
"""

from __future__ import annotations

import base64
import colorsys
import importlib.util
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradscope.commands.attribute.report import (
    AttributedInput,
    AttributeReport,
    AttributionTensors,
    ExampleAttribution,
    InputAttribution,
    MethodInfo,
    TargetInfo,
    Timing,
    TopPosition,
)
from gradscope.errors import DataLoadError, ExitCode, OutputError, UsageError
from gradscope.report import BatchInfo, LossInfo, ModelInfo

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="matplotlib is not installed (pip install 'gradscope[plot]')",
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RED = (0xB2, 0x18, 0x2B)
BLUE = (0x21, 0x66, 0xAC)
HOSTILE = "<script>alert(1)</script>"

# --------------------------------------------------------------------------- reports


def make_report(
    inputs: list[AttributedInput],
    attributions: dict[str, np.ndarray],
    feeds: dict[str, np.ndarray],
    *,
    method: str = "integrated-gradients",
    masks: dict[str, np.ndarray] | None = None,
    resized: np.ndarray | None = None,
    name: str = "toy",
    errors: tuple[float | None, ...] = (),
    notes: tuple[str, ...] = (),
) -> AttributeReport:
    """A report over ``len(attributions[...])`` examples, every field filled by hand."""
    count = len(next(iter(attributions.values())))
    examples = tuple(
        ExampleAttribution(
            index=10 + i,
            target=1,
            score=0.25 * (i + 1),
            inputs=tuple(
                InputAttribution(spec.name, 1.0, 2.0, 1.0, 1.0, 0, (TopPosition((2,), -0.75),))
                for spec in inputs
            ),
            baseline_score=0.0 if errors else None,
            completeness_error=errors[i] if errors else None,
        )
        for i in range(count)
    )
    return AttributeReport(
        model=ModelInfo(name, "Functional", "model.keras", "keras", 120, 4),
        batch=BatchInfo("synthetic", count, seed=0),
        loss=LossInfo(0.5, "compiled: categorical_crossentropy", "compiled"),
        method=MethodInfo(method, steps=16 if method == "integrated-gradients" else None),
        target=TargetInfo("class", 1, "probs"),
        inputs=tuple(inputs),
        examples=examples,
        seed=0,
        timing=Timing(0.1, count, count, 1),
        notes=notes,
        tensors=AttributionTensors(attributions, feeds, masks or {}, resized),
    )


IMAGE = AttributedInput("pixels", "image", (8, 8, 3), "float32", reduced_axis=2)


def image_report(
    attribution: np.ndarray, *, method: str = "integrated-gradients", name: str = "toy"
) -> AttributeReport:
    """One example: a constant 8x8 RGB image (drawn uniform grey) and ``attribution``."""
    image = np.full((1, 8, 8, 3), 0.3)
    return make_report(
        [IMAGE], {"pixels": attribution[None]}, {"pixels": image}, method=method, name=name
    )


def block(rows: slice, cols: slice, value: float | np.ndarray = 1.0) -> np.ndarray:
    """An 8x8x3 attribution, zero except ``value`` (per channel) on a block."""
    out = np.zeros((8, 8, 3))
    out[rows, cols, :] = value
    return out


TOKENS = AttributedInput("ids", "tokens", (5, 4), "int32", through="embedding", reduced_axis=1)
TOKEN_SUMS = np.array([0.1, -0.5, 1.0, 0.3, 100.0])
"""Each token's attribution summed over the embedding; the last token is padding."""


def token_report(
    name: str = "toy", vocabulary_ids: tuple[int, ...] = (3, 1, 4, 0, 2)
) -> AttributeReport:
    embedding = np.repeat((TOKEN_SUMS / 4)[:, None], 4, axis=1)[None]
    mask = np.array([[True, True, True, True, False]])
    return make_report(
        [TOKENS],
        {"ids": embedding},
        {"ids": np.array([vocabulary_ids])},
        masks={"ids": mask},
        name=name,
    )


# --------------------------------------------------------------------------- PNG helpers


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which a valid PNG holds first."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def decode(data: bytes) -> np.ndarray:
    """RGB pixels in [0, 1], decoded by matplotlib."""
    from matplotlib.image import imread

    return np.asarray(imread(io.BytesIO(data), format="png"))[..., :3]


def box(mask: np.ndarray, share: float = 0.0) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the rows and columns where more than ``share``
    of the pixels are in ``mask`` (stray antialiased text pixels do not count)."""
    rows = np.flatnonzero(mask.mean(axis=1) > share)
    cols = np.flatnonzero(mask.mean(axis=0) > share)
    assert rows.size, "no pixel matched"
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def near(pixels: np.ndarray, colour: tuple[float, float, float], tol: float = 0.02) -> np.ndarray:
    return np.all(np.abs(pixels - np.array(colour)) < tol, axis=-1)


def red(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] > 0.55) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.35)


def blue(pixels: np.ndarray) -> np.ndarray:
    return (
        (pixels[..., 2] > 0.5) & (pixels[..., 0] < 0.35) & (pixels[..., 2] - pixels[..., 0] > 0.3)
    )


def relative(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> np.ndarray:
    """``inner``'s edges as fractions of ``outer`` (rows, rows, columns, columns)."""
    top, bottom, left, right = outer
    height, width = bottom - top, right - left
    return np.array(
        [
            (inner[0] - top) / height,
            (inner[1] - top) / height,
            (inner[2] - left) / width,
            (inner[3] - left) / width,
        ]
    )


# The overlay's background: grey 0.35 + 0.5 * g, g = 0.5 for a constant image.
OVERLAY_GREY = (0.6, 0.6, 0.6)


# --------------------------------------------------------------------------- PNG


def test_png_is_valid_with_the_documented_size(tmp_path: Path) -> None:
    from gradscope.export.attribution_plot import plot_attributions

    images = np.random.default_rng(0).random((3, 8, 8, 3))
    attribution = np.random.default_rng(1).normal(size=(3, 8, 8, 3))
    report = make_report([IMAGE], {"pixels": attribution}, {"pixels": images})
    out = tmp_path / "attr.png"
    assert plot_attributions(report, out) == 3
    data = out.read_bytes()
    # 6 in wide (2 x 2.6 in images + 0.4 in); 3 rows of (2.6 + 0.35) in + 0.7 in; 120 dpi
    assert png_size(data) == (720, round(120 * (3 * 2.95 + 0.7)))
    assert decode(data).shape == (1146, 720, 3)


def test_png_colours_land_on_the_hot_blocks(tmp_path: Path) -> None:
    from gradscope.export.attribution_plot import plot_attributions

    attribution = block(slice(2, 4), slice(5, 7), 1.0) + block(slice(5, 8), slice(0, 2), -1.0)
    out = tmp_path / "hot.png"
    plot_attributions(image_report(attribution), out)
    pixels = decode(out.read_bytes())
    panel = box(near(pixels, OVERLAY_GREY), share=0.2)
    # the block's rows 2-4 and columns 5-7 of 8, within 3% of the panel
    np.testing.assert_allclose(
        relative(box(red(pixels)), panel), [2 / 8, 4 / 8, 5 / 8, 7 / 8], atol=0.03
    )
    np.testing.assert_allclose(
        relative(box(blue(pixels)), panel), [5 / 8, 8 / 8, 0 / 8, 2 / 8], atol=0.03
    )


def test_png_saliency_shows_magnitude_where_the_signed_sum_cancels(tmp_path: Path) -> None:
    from gradscope.export.attribution_plot import plot_attributions

    # +1, -1, 0 over the channels: the signed sum is 0, the sum of |a| is 2
    attribution = block(slice(1, 3), slice(1, 3), np.array([1.0, -1.0, 0.0]))
    attribution[6, 6, :] = -0.1  # a weak blue pixel elsewhere keeps the signed scale non-zero
    out = tmp_path / "saliency.png"
    plot_attributions(image_report(attribution, method="saliency"), out)
    pixels = decode(out.read_bytes())
    panel = box(near(pixels, OVERLAY_GREY), share=0.2)
    np.testing.assert_allclose(
        relative(box(red(pixels)), panel), [1 / 8, 3 / 8, 1 / 8, 3 / 8], atol=0.03
    )
    out = tmp_path / "gradient-x-input.png"
    plot_attributions(image_report(attribution, method="gradient-x-input"), out)
    assert not red(decode(out.read_bytes())).any()


def test_png_gradcam_draws_the_resized_map_over_the_image(tmp_path: Path) -> None:
    from gradscope.export.attribution_plot import plot_attributions

    spec = AttributedInput(
        "conv", "feature_map", (2, 2, 4), "float32", reduced_axis=2, overlay="pixels"
    )
    small = np.zeros((1, 2, 2, 4))
    small[0, 0, 0, :] = 1.0  # the small map is hot top-left: must not be what is drawn
    resized = np.zeros((1, 8, 8))
    resized[0, 4:8, 4:8] = 3.0  # the resized map is hot bottom-right
    report = make_report(
        [spec],
        {"conv": small},
        {"pixels": np.full((1, 8, 8, 3), 0.3)},
        method="gradcam",
        resized=resized,
    )
    out = tmp_path / "cam.png"
    plot_attributions(report, out)
    pixels = decode(out.read_bytes())
    # jet's low end (0, 0, 0.5) at opacity 0.35 over grey 0.6
    cold = (0.65 * 0.6, 0.65 * 0.6, 0.65 * 0.6 + 0.35 * 0.5)
    panel = box(near(pixels, cold), share=0.2)
    hot = (pixels[..., 0] > 0.4) & (pixels[..., 1] < 0.2) & (pixels[..., 2] < 0.2)
    np.testing.assert_allclose(relative(box(hot), panel), [0.5, 1.0, 0.5, 1.0], atol=0.03)


def test_png_draws_every_other_kind(tmp_path: Path) -> None:
    from gradscope.export.attribution_plot import plot_attributions

    rng = np.random.default_rng(2)
    inputs = [
        TOKENS,
        AttributedInput("table", "tabular", (40,), "float32"),
        AttributedInput("steps", "sequence", (6, 5), "float32"),
        AttributedInput("conv1d", "feature_map", (9, 4), "float32", reduced_axis=1),
    ]
    attributions = {
        "ids": rng.normal(size=(2, 5, 4)),
        "table": rng.normal(size=(2, 40)),
        "steps": rng.normal(size=(2, 6, 5)),
        "conv1d": rng.normal(size=(2, 9, 4)),
    }
    feeds = {"ids": rng.integers(0, 9, (2, 5))}
    report = make_report(inputs, attributions, feeds, masks={"ids": np.ones((2, 5), bool)})
    out = tmp_path / "all.png"
    assert plot_attributions(report, out, vocabulary=["a", "b"]) == 2
    pixels = decode(out.read_bytes())
    assert red(pixels).sum() > 100
    assert blue(pixels).sum() > 100


def test_png_draws_at_most_max_examples(tmp_path: Path) -> None:
    from gradscope.export.attribution_plot import plot_attributions

    attribution = np.random.default_rng(3).normal(size=(12, 8, 8, 3))
    report = make_report([IMAGE], {"pixels": attribution}, {"pixels": attribution})
    assert plot_attributions(report, tmp_path / "a.png", max_examples=2) == 2
    assert plot_attributions(report, tmp_path / "b.png", max_examples=4) == 4
    short = png_size((tmp_path / "a.png").read_bytes())[1]
    tall = png_size((tmp_path / "b.png").read_bytes())[1]
    assert tall - short == round(120 * 2 * 2.95)


def test_png_refusals(tmp_path: Path) -> None:
    from gradscope.export.attribution_plot import plot_attributions

    report = image_report(block(slice(0, 1), slice(0, 1)))
    bare = AttributeReport(**{**report.__dict__, "tensors": None})
    with pytest.raises(UsageError, match=r"keep_tensors=True"):
        plot_attributions(bare, tmp_path / "x.png")
    with pytest.raises(UsageError, match=r"max_examples"):
        plot_attributions(report, tmp_path / "x.png", max_examples=0)
    with pytest.raises(OutputError, match=r"\.png"):
        plot_attributions(report, tmp_path / "x.jpg")
    (tmp_path / "old.png").write_bytes(b"old")
    with pytest.raises(OutputError, match=r"--force"):
        plot_attributions(report, tmp_path / "old.png")
    assert plot_attributions(report, tmp_path / "old.png", force=True) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"]


# --------------------------------------------------------------------------- HTML helpers


class Page(HTMLParser):
    """Every start tag of a page with its attributes, and its text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self._open: list[dict[str, str]] = []
        self.spans: list[tuple[dict[str, str], str]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.tags.append((tag, found))
        if tag == "span" and "tok" in found.get("class", "").split():
            self._open.append(found)

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._open:
            self.spans.append((self._open[-1], data))

    def all(self, tag: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.tags if name == tag]


def background(style: str) -> tuple[int, int, int]:
    colour = next(p for p in style.split(";") if p.startswith("background:")).split("#")[1]
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


def saturation(rgb: tuple[int, int, int]) -> float:
    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[1]


def between(share: float, end: tuple[int, int, int]) -> tuple[float, ...]:
    """The colour ``share`` of the way from white to ``end``."""
    return tuple(255 + share * (c - 255) for c in end)


# --------------------------------------------------------------------------- HTML


def test_html_embeds_its_images_as_png_data_uris(tmp_path: Path) -> None:
    from gradscope.export.attribution_html import write_html

    attribution = block(slice(2, 4), slice(5, 7), 1.0)
    out = tmp_path / "page.html"
    assert write_html(image_report(attribution), out) == 1
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    images = page.all("img")
    assert len(images) == 1
    prefix = "data:image/png;base64,"
    assert images[0]["src"].startswith(prefix)
    data = base64.b64decode(images[0]["src"][len(prefix) :], validate=True)
    pixels = decode(data)
    panel = box(near(pixels, OVERLAY_GREY), share=0.2)
    np.testing.assert_allclose(
        relative(box(red(pixels)), panel), [2 / 8, 4 / 8, 5 / 8, 7 / 8], atol=0.03
    )
    assert "http:" not in text
    assert "https:" not in text
    assert [tag for tag, _ in page.tags if tag in ("script", "link", "iframe", "object")] == []


def test_html_token_colours_follow_the_attribution(tmp_path: Path) -> None:
    from gradscope.export.attribution_html import write_html

    vocabulary = ["zero", "one", "two", "three", "four"]
    out = tmp_path / "tokens.html"
    write_html(token_report(), out, vocabulary=vocabulary)
    page = Page(out.read_text(encoding="utf-8"))
    assert [label for _, label in page.spans] == ["three", "one", "four", "zero", "two"]
    real = [(attrs, label) for attrs, label in page.spans if "pad" not in attrs["class"]]
    values = [float(attrs["data-value"]) for attrs, _ in real]
    np.testing.assert_allclose(values, TOKEN_SUMS[:4], rtol=1e-5)
    colours = [background(attrs["style"]) for attrs, _ in real]
    # padding (100.0) is out of the scale: the largest real token (1.0) is the full red
    for colour, value in zip(colours, values, strict=True):
        end = RED if value > 0 else BLUE
        np.testing.assert_allclose(colour, between(abs(value) / 1.0, end), atol=1)
    by_value = np.argsort(np.abs(values))
    by_saturation = np.argsort([saturation(c) for c in colours])
    np.testing.assert_array_equal(by_value, by_saturation)


def test_html_greys_padding(tmp_path: Path) -> None:
    from gradscope.export.attribution_html import write_html

    out = tmp_path / "tokens.html"
    write_html(token_report(), out)
    page = Page(out.read_text(encoding="utf-8"))
    padding = [attrs for attrs, _ in page.spans if "pad" in attrs["class"].split()]
    assert len(padding) == 1
    assert "data-value" not in padding[0]
    assert "style" not in padding[0]
    assert "padding" in padding[0]["title"]


def test_html_escapes_every_report_string(tmp_path: Path) -> None:
    from gradscope.export.attribution_html import write_html

    report = token_report(name=HOSTILE)
    report = AttributeReport(**{**report.__dict__, "notes": (HOSTILE,)})
    out = tmp_path / "hostile.html"
    write_html(report, out, vocabulary=["<img src=x onerror=alert(2)>", "<b>", "a", "b", HOSTILE])
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert page.all("script") == []
    assert page.all("img") == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert HOSTILE not in text
    assert HOSTILE in "".join(page.text)


def test_html_header_examples_and_completeness(tmp_path: Path) -> None:
    from gradscope.export.attribution_html import write_html

    table = AttributedInput("table", "tabular", (40,), "float32")
    values = np.arange(40, dtype=float)[None].repeat(3, axis=0) - 20.5
    report = make_report(
        [table],
        {"table": values},
        {"table": values},
        errors=(0.05, 0.002, None),
        notes=("a note",),
    )
    out = tmp_path / "table.html"
    assert write_html(report, out, max_examples=2) == 2
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    words = " ".join(page.text)
    assert "integrated-gradients: steps 16" in words
    assert "class 1 of probs" in words
    assert "a note" in words
    assert "the first 2 of 3 examples" in words
    warned = [attrs for attrs in page.all("span") if attrs.get("class") == "warn"]
    assert len(warned) == 1
    assert "completeness error 5.00%" in words
    assert "completeness error 0.20%" in words
    assert "example 12" not in words
    # 30 rows of features a table (largest |value| first), and the 10 left out
    cells = [t for t in page.text if t.startswith("feature ")]
    assert cells[:4] == ["feature 0", "feature 1", "feature 2", "feature 39"]
    assert cells.count("feature 19") == 0
    assert "+ 10 more features" in words
    assert "(2) -0.75" in words.replace("  ", " ")


def test_html_refuses_a_report_without_arrays(tmp_path: Path) -> None:
    from gradscope.export.attribution_html import write_html

    report = token_report()
    bare = AttributeReport(**{**report.__dict__, "tensors": None})
    with pytest.raises(UsageError, match=r"--html: the report holds no attribution arrays"):
        write_html(bare, tmp_path / "x.html")
    with pytest.raises(OutputError, match=r"\.html or \.htm"):
        write_html(report, tmp_path / "x.txt")
    assert list(tmp_path.iterdir()) == []


def chromium() -> str | None:
    return shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.mark.skipif(chromium() is None, reason="no headless Chromium on this machine")
def test_html_renders_its_colours_in_chromium(tmp_path: Path) -> None:
    from gradscope.export.attribution_html import write_html

    attribution = block(slice(2, 4), slice(5, 7), 1.0) + block(slice(5, 8), slice(0, 2), -1.0)
    report = make_report(
        [IMAGE, TOKENS],
        {"pixels": attribution[None], "ids": np.repeat((TOKEN_SUMS / 4)[:, None], 4, axis=1)[None]},
        {"pixels": np.full((1, 8, 8, 3), 0.3), "ids": np.array([[1, 2, 3, 4, 0]])},
        masks={"ids": np.array([[True, True, True, True, False]])},
    )
    page = tmp_path / "page.html"
    write_html(report, page)
    shot = tmp_path / "shot.png"
    command: list[str] = [
        str(chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=60, check=True, cwd=tmp_path)
    pixels = decode(shot.read_bytes())
    strong_red = near(pixels, tuple(c / 255 for c in RED), tol=0.1)  # type: ignore[arg-type]
    strong_blue = blue(pixels)
    # the image's red block (a 2x2 of 8x8 in a ~200 px panel) and the "four" token
    assert strong_red.sum() > 400
    assert strong_blue.sum() > 400


# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_lines_are_tokens(tmp_path: Path) -> None:
    from gradscope.export.vocabulary import read_vocabulary

    path = tmp_path / "vocab.txt"
    path.write_bytes("\ufeff[PAD]\r\n the\n\nnaïve\n".encode())
    assert read_vocabulary(path) == ("[PAD]", " the", "", "naïve")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (None, r"no such file"),
        (b"", r"the file is empty"),
        (b"ok\nbad \xff\n", r"not UTF-8 text \(line 2\).*Received: byte 0xff at offset 7"),
        ("dir", r"is a directory"),
    ],
)
def test_vocabulary_refusals(tmp_path: Path, content: Any, pattern: str) -> None:
    from gradscope.export.vocabulary import read_vocabulary

    path = tmp_path / "vocab.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataLoadError, match=pattern) as caught:
        read_vocabulary(path)
    assert caught.value.exit_code == ExitCode.DATA
    assert "\n" not in str(caught.value)


def test_vocabulary_refuses_a_huge_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradscope.export import vocabulary

    monkeypatch.setattr(vocabulary, "MAX_BYTES", 8)
    path = tmp_path / "vocab.txt"
    path.write_text("a\nb\nc\nd\ne\n", encoding="utf-8")
    with pytest.raises(DataLoadError, match=r"too large.*Received: 10 bytes"):
        vocabulary.read_vocabulary(path)


def test_long_token_sequences_are_capped_in_the_png_and_whole_in_the_html(
    tmp_path: Path,
) -> None:
    from gradscope.export.attribution_html import write_html
    from gradscope.export.attribution_plot import plot_attributions

    spec = AttributedInput("ids", "tokens", (300, 2), "int32", through="emb", reduced_axis=1)
    attribution = np.random.default_rng(4).normal(size=(1, 300, 2))
    # ids of the wrong length (an engine slip): the tokens are labelled by position
    report = make_report([spec], {"ids": attribution}, {"ids": np.zeros((1, 7), int)})
    out = tmp_path / "long.png"
    plot_attributions(report, out)
    # 12 tokens of 0.7 in a line; 20 lines of 0.32 in + 0.7 in, + 0.35 in + 0.7 in
    assert png_size(out.read_bytes()) == (round(120 * 8.4), round(120 * (0.7 + 6.4 + 1.05)))
    page_path = tmp_path / "long.html"
    write_html(report, page_path)
    page = Page(page_path.read_text(encoding="utf-8"))
    assert [label for _, label in page.spans] == [str(i) for i in range(300)]
